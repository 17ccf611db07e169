"""Sonata self-distillation (Sonata-v1m1): student, EMA teacher, prototype heads, the three losses.

Per batch: the teacher encodes the two global views; the student encodes the masked global views and
the local views. Features are compared at stage 2 (upcast of stages 4, 3, 2: coarse levels, which
the paper uses against the "geometric shortcut"), between points matched by original coordinates:
- mask loss: masked view vs the same view seen whole by the teacher;
- roll-mask loss: masked view vs the other global view of the scene;
- unmask loss: local views vs the first global view.
Targets are Sinkhorn-Knopp-centred teacher prototype scores; the loss is the cross-entropy with the
student's log-softmax, averaged per view, then over views.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..configs import EncoderConfig
from ..encoder import SonataEncoder
from ..grid import pack_keys
from ..point import Point
from ..pooling import upcast
from .heads import PrototypeHead
from .matching import match_points
from .sinkhorn import sinkhorn_knopp
from .views import PretrainBatch, ViewBatch


@dataclass(frozen=True)
class DistillConfig:
    """Loss, head and schedule settings; defaults are the reference's (pretrain-sonata-v1m1-0-base)."""

    head_hidden_channels: int = 4096
    head_embed_channels: int = 256
    head_num_prototypes: int = 4096
    mask_size_start: float = 0.1
    mask_size_base: float = 0.4
    mask_ratio_start: float = 0.3
    mask_ratio_base: float = 0.7
    mask_jitter: float = 0.01
    teacher_temp_start: float = 0.04
    teacher_temp_base: float = 0.07
    warmup_ratio: float = 0.05
    student_temp: float = 0.1
    mask_loss_weight: float = 2 / 8
    roll_mask_loss_weight: float = 2 / 8
    unmask_loss_weight: float = 4 / 8
    momentum_base: float = 0.994
    momentum_final: float = 1.0
    match_max_distance: float = 0.32
    upcast_level: int = 2


@dataclass(frozen=True)
class StepValues:
    """The scheduled values of one step."""

    mask_size: float
    mask_ratio: float
    teacher_temp: float


class SonataDistiller(nn.Module):
    """Student (encoder + mask/unmask heads) trained against an EMA teacher of the same shape."""

    def __init__(self, encoder_config: EncoderConfig, config: DistillConfig) -> None:
        super().__init__()
        self.config = config
        head_in = sum(encoder_config.enc_channels[config.upcast_level :])
        head = dict(
            hidden_channels=config.head_hidden_channels,
            embed_channels=config.head_embed_channels,
            num_prototypes=config.head_num_prototypes,
        )
        self.student = nn.ModuleDict(
            {
                "backbone": SonataEncoder(encoder_config),
                "mask_head": PrototypeHead(head_in, **head),
                "unmask_head": PrototypeHead(head_in, **head),
            }
        )
        self.teacher = copy.deepcopy(self.student)
        teacher_backbone = SonataEncoder(encoder_config.replace(drop_path=0.0))
        teacher_backbone.load_state_dict(self.student["backbone"].state_dict())
        self.teacher["backbone"] = teacher_backbone
        self.teacher.requires_grad_(False)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, every parameter."""
        teacher = list(self.teacher.parameters())
        student = list(self.student.parameters())
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - momentum)

    def forward(self, batch: PretrainBatch, values: StepValues) -> dict[str, Tensor]:
        config = self.config
        views_per_sample = len(batch.global_views.offset) // batch.num_samples
        if views_per_sample != 2:
            raise ValueError(f"the roll-mask loss needs 2 global views per sample, got {views_per_sample}")
        global_point = _point(batch.global_views)
        transform = self.student["backbone"].config.transform()  # coord is in model units: mask in metres
        with torch.no_grad():
            metres = global_point.coord / transform.scale
            mask = cube_mask(metres, global_point.offset, values.mask_size, values.mask_ratio)
            masked_point = _masked_point(global_point, mask, config.mask_jitter * transform.scale, transform.grid)
            teacher_levels = self.teacher["backbone"](global_point)
            teacher_feat = upcast(teacher_levels, config.upcast_level)
            teacher_level = teacher_levels[config.upcast_level]

        student_levels = self.student["backbone"](masked_point)
        student_level = student_levels[config.upcast_level]
        mask_pred = self.student["mask_head"](upcast(student_levels, config.upcast_level))
        with torch.no_grad():
            mask_target = self.teacher["mask_head"](teacher_feat)
        same_view = list(range(len(global_point.offset)))
        rolled = [v ^ 1 for v in same_view]  # (s, g0) <-> (s, g1)
        mask_loss, mask_matched = self._loss(student_level, mask_pred, teacher_level, mask_target, same_view, values)
        roll_loss, _ = self._loss(student_level, mask_pred, teacher_level, mask_target, rolled, values)

        local_levels = self.student["backbone"](_point(batch.local_views))
        local_level = local_levels[config.upcast_level]
        unmask_pred = self.student["unmask_head"](upcast(local_levels, config.upcast_level))
        with torch.no_grad():
            unmask_target = self.teacher["unmask_head"](teacher_feat)
        local_per_sample = len(batch.local_views.offset) // batch.num_samples
        principal = [2 * (v // local_per_sample) for v in range(len(batch.local_views.offset))]
        unmask_loss, unmask_matched = self._loss(
            local_level, unmask_pred, teacher_level, unmask_target, principal, values
        )
        loss = (
            config.mask_loss_weight * mask_loss
            + config.roll_mask_loss_weight * roll_loss
            + config.unmask_loss_weight * unmask_loss
        )
        return {
            "loss": loss,
            "mask_loss": mask_loss.detach(),
            "roll_mask_loss": roll_loss.detach(),
            "unmask_loss": unmask_loss.detach(),
            "matched_fraction": torch.stack((mask_matched, unmask_matched)).mean(),
            "masked_fraction": mask.float().mean(),
        }

    def _loss(
        self,
        student: Point,
        pred: Tensor,
        teacher: Point,
        target_scores: Tensor,
        key_cloud: list[int],
        values: StepValues,
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy between Sinkhorn targets at matched teacher points and student predictions,
        averaged per student view, then over views; and the matched fraction of student points."""
        pairs = match_points(
            student.origin_coord,
            student.offset,
            teacher.origin_coord,
            teacher.offset,
            self.config.match_max_distance,
            key_cloud,
        )
        matched = pred.new_tensor(pairs.shape[0] / max(1, student.num_points), dtype=torch.float32)
        if pairs.shape[0] == 0:
            return pred.sum() * 0.0, matched
        target = sinkhorn_knopp(target_scores[pairs[:, 1]], values.teacher_temp)
        log_prob = F.log_softmax(pred[pairs[:, 0]].float() / self.config.student_temp, dim=-1)
        per_point = -(target * log_prob).sum(dim=-1)
        view = student.batch[pairs[:, 0]]
        num_views = student.batch_size
        total = per_point.new_zeros(num_views).index_add_(0, view, per_point)
        count = per_point.new_zeros(num_views).index_add_(0, view, torch.ones_like(per_point))
        present = count > 0
        return (total[present] / count[present]).mean(), matched


def _point(views: ViewBatch) -> Point:
    return Point(
        coord=views.coord,
        grid_coord=views.grid_coord,
        feat=views.feat,
        offset=views.offset,
        origin_coord=views.origin_coord,
    )


@torch.no_grad()
def cube_mask(coord: Tensor, offset: Tensor, size: float, ratio: float) -> Tensor:
    """(N,) bool: points in a random `ratio` of the `size`-metre cubes tiling each view."""
    point = Point(coord=coord, grid_coord=coord, feat=coord, offset=offset)
    batch = point.batch
    low = coord.new_full((len(offset), 3), torch.inf).scatter_reduce(
        0, batch.unsqueeze(1).expand_as(coord), coord, "amin"
    )
    cell = torch.div(coord - low[batch], size, rounding_mode="floor").long()
    _, cluster = torch.unique(pack_keys(cell, batch), return_inverse=True)
    num_cells = int(cluster.max()) + 1
    chosen = torch.randperm(num_cells, device=coord.device)[: int(num_cells * ratio)]
    return torch.isin(cluster, chosen)


@torch.no_grad()
def _masked_point(point: Point, mask: Tensor, jitter: float, grid: float) -> Point:
    """The global views with the mask and jittered positions for the masked points.

    The jitter moves masked points, possibly into neighbouring voxels, as in the reference; a masked
    point whose new voxel is taken by another point of its view keeps its own voxel (no duplicates).
    Grid coordinates are floor(coord / grid) minus a per-view constant (coord and grid in model units),
    so the voxel a point moves to follows from its position inside its voxel.
    """
    noise = torch.randn_like(point.coord[mask]).mul_(jitter).clamp_(-2 * jitter, 2 * jitter)
    coord = point.coord.clone()
    coord[mask] += noise
    scaled = point.coord[mask] / grid
    step = torch.floor(scaled - torch.floor(scaled) + noise / grid).long()
    moved = point.grid_coord.clone()
    moved[mask] = (moved[mask] + step).clamp_(min=0)
    grid = _resolve_collisions(moved, point.grid_coord, mask, point.batch)
    return Point(
        coord=coord, grid_coord=grid, feat=point.feat, offset=point.offset, origin_coord=point.origin_coord, mask=mask
    )


def _resolve_collisions(moved: Tensor, original: Tensor, mask: Tensor, batch: Tensor) -> Tensor:
    grid = moved
    while True:
        keys = pack_keys(grid, batch)
        _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        clash = (counts[inverse] > 1) & mask & (grid != original).any(dim=1)
        if not bool(clash.any()):
            return grid
        grid = torch.where(clash.unsqueeze(1), original, grid)
