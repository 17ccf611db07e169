"""`Segmenter`: numpy cloud in, one label per input point out — the inference path the node runs.

The input transform is the encoder family's reference transform for the chosen `domain`
(`sonata_model.domains`: range box, scale, centre rule, grid sampling; colour / 255; zeros for a
missing modality where the domain allows; features concatenated in the checkpoint's `feature_keys`
order), with the representative of each voxel chosen deterministically. Points outside the domain's
range get label -1 (the node publishes 255, unknown). Everything after the host->device copy stays on
the device: the frame plan (`sonata_model.plan`: voxels, levels, orders, patches, neighbours; the one
host sync of a frame, to learn its sizes), the encoder forward over it, the head. Results are copied
back on demand, so the large per-voxel embedding costs nothing unless it is read.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .attention import resolve_attention
from .checkpoint import LinearHead
from .configs import FEATURE_CHANNELS
from .domains import InputTransform
from .encoder import SonataEncoder
from .graphs import GraphedForward
from .grid import voxel_grid
from .normals import NORMAL_MODES, estimate_normals
from .onednn import native_bf16
from .plan import EmptyCloudError, FramePlan, SizeBuckets, build_plan
from .point import Point
from .pooling import linear_upcast, upcast
from .sparse_conv import default_backend

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class NothingInRangeError(ValueError):
    """A cloud of the batch has no point inside the domain's range (or no valid point at all)."""

    def __init__(self, message: str, clouds: list[int]) -> None:
        super().__init__(message)
        self.clouds = clouds


@dataclass
class Cloud:
    """Per-point inputs of one cloud (numpy); only `coord` is required. Every value must be finite (a
    NaN would spread through attention to its whole patch): drop such points first.

    `viewpoint`: the sensor's position in the cloud's frame, (3,) or one per point (N, 3) for clouds
    merged from several sensors (default: the origin), which estimated normals face.
    """

    coord: np.ndarray  # (N, 3)
    color: np.ndarray | None = None  # (N, 3) in 0-255, integer or float
    normal: np.ndarray | None = None  # (N, 3)
    strength: np.ndarray | None = None  # (N,) or (N, 1) in [0, 1]
    viewpoint: np.ndarray | None = None


@dataclass
class SegmentationResult:
    """Per-point labels and per-voxel embeddings of one cloud. The per-point and per-voxel arrays are copied
    from the device on first access and then kept (each copy makes the host wait for a GPU); the
    embedding is copied on every access (it can be hundreds of MB)."""

    timings_ms: dict[str, float]
    _voxel_of_point: Tensor = field(repr=False)  # (N,) this cloud's voxel of each point, -1 outside the range
    _voxel_index: Tensor = field(repr=False)  # (M,) this cloud's point kept for each voxel
    _labels: Tensor | None = field(repr=False)
    _probability: Tensor | None = field(repr=False)
    _features: _Features = field(repr=False)  # the batch's encoder levels
    _voxels: slice = field(repr=False)  # this cloud's rows among the batch's voxels

    @property
    def num_voxels(self) -> int:
        """M, the voxels of this cloud (no device copy)."""
        return self._voxels.stop - self._voxels.start

    @functools.cached_property
    def voxel_of_point(self) -> np.ndarray:
        """(N,) int64 index into the voxels of every input point; -1: outside the domain's range."""
        return self._voxel_of_point.cpu().numpy()

    @functools.cached_property
    def voxel_index(self) -> np.ndarray:
        """(M,) int64 input point chosen to represent each voxel (the lowest index in it)."""
        return self._voxel_index.cpu().numpy()

    @functools.cached_property
    def labels(self) -> np.ndarray | None:
        """(N,) int64 class of every input point, -1 outside the domain's range (None without a head)."""
        return None if self._labels is None else self._labels.cpu().numpy()

    @functools.cached_property
    def probability(self) -> np.ndarray | None:
        """(N,) float32 softmax probability of the winning class (None without a head)."""
        return None if self._probability is None else self._probability.cpu().numpy()

    @property
    def embedding(self) -> np.ndarray:
        """(M, C) float32 per-voxel features: the head's input (all-level upcast)."""
        return self.embedding_tensor.float().cpu().numpy()

    @property
    def embedding_tensor(self) -> Tensor:
        """The (M, C) embedding on the device (the full upcast, built on first access, then kept)."""
        return self._features.full()[self._voxels]

    def project_embedding(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """(M, D) float32 `embedding @ weight.T + bias` on the device, without building the (M, C) upcast."""
        return self._features.project(weight, bias)[self._voxels]

    def embedding_rows(self, rows: Tensor) -> Tensor:
        """(R, C) float32 embedding of the voxels `rows` only (e.g. a sample to fit a PCA basis on)."""
        return self._features.rows(rows.to(self._features.device) + self._voxels.start)


@dataclass
class PreparedBatch:
    """A batch of clouds ready for the encoder: its plan and level 0's input features, on the device."""

    plan: FramePlan
    feat: Tensor  # (C_0, in_channels) encoder input of level 0's rows
    voxel_of_point: Tensor  # (N,) level-0 row of every input point (concatenated clouds); -1 outside the range
    counts: list[int]  # input points per cloud

    @property
    def voxel_index(self) -> Tensor:
        """(M,) input row (concatenated clouds) kept for each voxel: the lowest index in it."""
        level = self.plan.levels[0]
        return self.plan.representative[: level.num_voxels]

    @property
    def point(self) -> Point:
        """The voxels (level 0's real rows) with their encoder input."""
        level = self.plan.levels[0]
        m = level.num_voxels
        return Point(coord=level.coord[:m], grid_coord=level.grid_coord[:m], feat=self.feat[:m], offset=level.offset)


def input_domain(domain: str | None, head: LinearHead | None) -> str | None:
    """`domain`, else the one `head` was fitted under (sonata-probe --domain), else None: the checkpoint's."""
    return domain or (head.domain if head is not None else None)


class Segmenter:
    """Runs encoder (+ optional linear head) on numpy clouds, one label per input point.

    `domain` ("indoor" | "outdoor" | "object"; default: the one the head was fitted under, else the
    checkpoint's: `input_domain`) selects the encoder family's input transform; `transform` replaces it
    entirely. Feature keys come from the checkpoint.
    `normals`: what to feed checkpoints that need normals when a cloud has none ("estimate": PCA over
    neighbouring voxels on the device, facing the cloud's viewpoint; or "zeros"; default: "estimate"
    indoors, "zeros" elsewhere). `attention`: "auto" (flash_attn on CUDA in half precision when
    installed, else sdpa), "sdpa" or "flash". `buckets`: round every level's row count up to a shared
    capacity (`plan.SizeBuckets`), so that frames of similar size share shapes (CUDA graphs, compiled
    forwards); the padding rows change no output. `cuda_graphs` (CUDA, with buckets and the torch
    sparse conv): replay the encoder forward from one captured CUDA graph per bucket
    (`graphs.GraphedForward`). `forwards` counts the encoder forwards run (eager or replayed).
    """

    def __init__(
        self,
        encoder: SonataEncoder,
        head: LinearHead | None = None,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        normals: str | None = None,
        domain: str | None = None,
        transform: InputTransform | None = None,
        attention: str = "auto",
        buckets: SizeBuckets | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if self.device.type == "cpu" and precision == "bf16" and not native_bf16():
            warnings.warn(
                "precision bf16 on a CPU without AVX-512 BF16 or AMX: emulated, it may run slower than fp32 "
                "(measure with benchmarks/encoder.py --precision bf16)",
                stacklevel=2,
            )
        config = encoder.config
        self.transform = transform or config.transform(input_domain(domain, head))
        normals = normals or self.transform.default_normals
        if normals not in NORMAL_MODES:
            raise ValueError(f"normals must be one of {NORMAL_MODES}, got {normals!r}")
        if head is not None and head.in_channels != config.head_channels:
            raise ValueError(
                f"head reads {head.in_channels} channels but the encoder's upcast has {config.head_channels}"
            )
        self.attention = resolve_attention(attention, self.device, precision)
        self.encoder = encoder.to(self.device).eval()
        self.head = None if head is None else head.to(self.device).eval()
        self.precision = precision
        self.normals = normals
        self.buckets = buckets
        self.config = config
        self.forwards = 0
        self.graphed = None
        if cuda_graphs:
            _check_graphable(self.device, buckets, encoder.sparse_backend or default_backend())
            self.graphed = GraphedForward(self.encoder, None if precision == "fp32" else PRECISIONS[precision])

    @property
    def feature_keys(self) -> tuple[str, ...]:
        return self.config.feature_keys

    @property
    def domain(self) -> str:
        return self.transform.domain

    def __call__(
        self,
        coord: np.ndarray,
        color: np.ndarray | None = None,
        normal: np.ndarray | None = None,
        strength: np.ndarray | None = None,
        viewpoint: np.ndarray | None = None,
    ) -> SegmentationResult:
        return self.segment_batch([Cloud(coord, color, normal, strength, viewpoint)])[0]

    @torch.inference_mode()
    def segment_batch(self, clouds: Sequence[Cloud]) -> list[SegmentationResult]:
        """Several clouds in one forward (e.g. several LiDARs); each result equals the cloud alone."""
        timer = StageTimer(self.device)
        prepared = self.prepare(clouds, timer)
        with self._autocast():
            levels = self.encode(prepared)
            timer.mark("encoder")
            logits = None
            if self.head is not None:
                logits = linear_upcast(levels, self.head.seg_head.weight, self.head.seg_head.bias)
        features = _Features(levels, self._autocast)
        labels = probability = None
        if logits is not None:
            probability, labels = most_likely(logits)
            inside = prepared.voxel_of_point >= 0
            voxel = prepared.voxel_of_point.clamp(min=0)
            labels = torch.where(inside, labels[voxel], -1)
            probability = torch.where(inside, probability[voxel], 0.0)
        timer.mark("head")
        return self._split(prepared, labels, probability, features, timer.finish())

    def encode(self, prepared: PreparedBatch) -> list[Point]:
        """The encoder's levels (real rows) for a prepared batch (call under `_autocast` and no grad)."""
        forward = self.encoder.forward_plan if self.graphed is None else self.graphed
        levels = forward(prepared.plan, prepared.feat)
        self.forwards += 1
        return prepared.plan.points(levels)

    def prepare(self, clouds: Sequence[Cloud], timer: StageTimer | None = None) -> PreparedBatch:
        """The domain's input transform and the frame plan, on the device (see `PreparedBatch`)."""
        timer = timer or StageTimer(self.device)
        coord, feat, counts = self._inputs(clouds)
        timer.mark("prepare")
        coord, feat = self._to_device(coord), self._to_device(feat)
        num_clouds = len(counts)
        batch = torch.repeat_interleave(
            torch.arange(num_clouds, device=self.device),
            self._to_device(np.array(counts, np.int64)),
            output_size=coord.shape[0],
        )
        inside = None if self.transform.range_box is None else self.transform.inside(coord)
        model_coord = self.transform.to_model(coord, batch, num_clouds, inside)
        grid = voxel_grid(model_coord, batch, num_clouds, self.transform.grid, inside, self.transform.grid_origin)
        backend = self.encoder.sparse_backend or default_backend()
        try:
            plan = build_plan(
                self.config,
                model_coord,
                grid,
                batch,
                num_clouds,
                voxelize=True,
                valid=inside,
                attention=self.attention,
                sparse_backend=backend,
                buckets=self.buckets,
                grid_size=self.transform.grid,
                conv_pairs=self.device.type == "cpu" and self.buckets is None and backend == "torch",
            )
        except EmptyCloudError as error:
            raise NothingInRangeError(
                f"cloud(s) {error.clouds} have no point inside the {self.transform.domain} domain's range "
                f"{self.transform.range_box} (metres, sensor frame): is the cloud in the right frame and unit?",
                error.clouds,
            ) from None
        level = plan.levels[0]
        if self.transform.centre == "xy_after_grid":
            plan.shift_coords(self.transform.after_grid_shift(level.coord[: level.num_voxels], level.offset))
        other = feat[plan.representative]
        if self._estimates_normals(clouds):
            other = self._with_estimated_normals(other, coord[plan.representative], plan, clouds)
        timer.mark("voxelize")
        return PreparedBatch(plan, self._voxel_features(level.coord, other), plan.voxel_of_member, counts)

    def _estimates_normals(self, clouds: Sequence[Cloud]) -> bool:
        return "normal" in self.feature_keys and self.normals == "estimate" and any(c.normal is None for c in clouds)

    def _with_estimated_normals(self, other: Tensor, coord: Tensor, plan: FramePlan, clouds: Sequence[Cloud]) -> Tensor:
        """`other` with the normal columns of clouds given none replaced by normals estimated on the voxels."""
        level = plan.levels[0]
        m = level.num_voxels
        batch = level.batch[:m]
        viewpoint = self._to_device(
            np.concatenate(
                [
                    np.broadcast_to(np.zeros(3) if c.viewpoint is None else c.viewpoint, (len(c.coord), 3))
                    for c in clouds
                ]
            ).astype(np.float32)
        )[plan.representative[:m]]  # a merged cloud's points each face their own sensor
        normal = estimate_normals(coord[:m], level.grid_coord[:m], batch, viewpoint)
        lacking = self._to_device(np.array([c.normal is None for c in clouds]))[batch]
        keys = [k for k in self.feature_keys if k != "coord"]
        column = sum(FEATURE_CHANNELS[k] for k in keys[: keys.index("normal")])
        given = other[:, column : column + 3]
        estimated = torch.cat((torch.where(lacking[:, None], normal, given[:m]), given[m:]))
        return torch.cat((other[:, :column], estimated, other[:, column + 3 :]), dim=1)

    def _inputs(self, clouds: Sequence[Cloud]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Concatenated coords and per-point features in the checkpoint's feature order."""
        if not clouds:
            raise ValueError("no cloud to segment: pass at least one")
        coords, feats, counts = [], [], []
        for i, cloud in enumerate(clouds):
            coord = np.asarray(cloud.coord, dtype=np.float32)
            if coord.ndim != 2 or coord.shape[1] != 3:
                raise ValueError(f"cloud {i}: coord must be (N, 3), got {coord.shape}")
            if len(coord) == 0:
                raise ValueError(f"cloud {i} is empty")
            if not np.isfinite(coord).all():
                raise ValueError(f"cloud {i}: coord has NaN or inf; drop invalid points first")
            if cloud.viewpoint is not None and np.shape(cloud.viewpoint) not in ((3,), (len(coord), 3)):
                raise ValueError(
                    f"cloud {i}: viewpoint must be (3,) or ({len(coord)}, 3), got {np.shape(cloud.viewpoint)}"
                )
            coords.append(coord)
            columns = [self._feature(cloud, key, coord, i) for key in self.feature_keys if key != "coord"]
            feats.append(np.concatenate(columns, axis=1) if columns else np.empty((len(coord), 0), np.float32))
            counts.append(len(coord))
        return np.concatenate(coords), np.concatenate(feats), counts

    def _voxel_features(self, coord: Tensor, other: Tensor) -> Tensor:
        """Encoder input in `feature_keys` order: the model coordinates and the other features."""
        parts, column = [], 0
        for key in self.feature_keys:
            if key == "coord":
                parts.append(coord)
            else:
                width = FEATURE_CHANNELS[key]
                parts.append(other[:, column : column + width])
                column += width
        return torch.cat(parts, dim=1)

    def _feature(self, cloud: Cloud, key: str, coord: np.ndarray, i: int) -> np.ndarray:
        n = len(coord)
        if key == "color":
            if cloud.color is None and self.transform.needs_colour:
                raise ValueError(f"cloud {i}: this checkpoint needs colour (0-255) and none was given")
            if cloud.color is None:
                return np.zeros((n, 3), np.float32)
            return _column(cloud.color, 3, n, "color", i) / np.float32(255.0)
        if key == "normal":  # missing normals: zeros, or estimated on the voxels after grid sampling
            return np.zeros((n, 3), np.float32) if cloud.normal is None else _column(cloud.normal, 3, n, "normal", i)
        if key == "strength":
            if cloud.strength is None:
                raise ValueError(f"cloud {i}: this checkpoint needs strength (intensity in [0, 1]) and none was given")
            return _column(cloud.strength, 1, n, "strength", i)
        raise ValueError(f"unknown feature key {key!r}")

    def _to_device(self, array: np.ndarray) -> Tensor:
        """`array` on the device without making the host wait (CUDA: from pinned memory; a blocking upload
        would wait for the device's queued work)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cpu":
            return tensor
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _autocast(self) -> AbstractContextManager:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def _split(self, prepared: PreparedBatch, labels, probability, features, timings) -> list[SegmentationResult]:
        level = prepared.plan.levels[0]
        point_ends, voxel_ends = np.cumsum(prepared.counts), np.cumsum(level.counts)
        results = []
        for b, count in enumerate(prepared.counts):
            p0, p1 = int(point_ends[b]) - count, int(point_ends[b])
            v0, v1 = int(voxel_ends[b]) - level.counts[b], int(voxel_ends[b])
            voxel = prepared.voxel_of_point[p0:p1]
            results.append(
                SegmentationResult(
                    timings_ms=timings,
                    _voxel_of_point=torch.where(voxel >= 0, voxel - v0, -1),
                    _voxel_index=prepared.plan.representative[v0:v1] - p0,
                    _labels=None if labels is None else labels[p0:p1],
                    _probability=None if probability is None else probability[p0:p1],
                    _features=features,
                    _voxels=slice(v0, v1),
                )
            )
        return results


class _Features:
    """The encoder levels of one batch and what is read from them: the full all-level upcast (built on
    first use, then kept), linear projections of it and rows of it (neither builds the full upcast)."""

    def __init__(self, levels: list[Point], autocast: Callable[[], AbstractContextManager]) -> None:
        self.levels, self.autocast, self._full = levels, autocast, None

    @property
    def device(self) -> torch.device:
        return self.levels[0].feat.device

    @torch.inference_mode()
    def full(self) -> Tensor:
        if self._full is None:
            with self.autocast():
                self._full = upcast(self.levels)
        return self._full

    @torch.inference_mode()
    def project(self, weight: Tensor, bias: Tensor | None) -> Tensor:
        with self.autocast():
            return linear_upcast(
                self.levels, weight.to(self.device), None if bias is None else bias.to(self.device)
            ).float()

    @torch.inference_mode()
    def rows(self, rows: Tensor) -> Tensor:
        with self.autocast():
            return upcast(self.levels, rows=rows).float()


def most_likely(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(probability, class) of each row's most likely class under softmax: the first largest logit, and
    1 / sum(exp(logit - largest)). Computed over a (classes, rows) copy: a CPU reduces a dozen classes
    along the last dimension row by row, 3-4x slower than across rows (softmax + max: 12 vs 4 ms on a
    59k-voxel frame)."""
    columns = logits.float().t().contiguous()
    largest, label = columns.max(dim=0)
    return columns.sub_(largest).exp_().sum(dim=0).reciprocal_(), label


def _column(values: np.ndarray, width: int, n: int, name: str, i: int) -> np.ndarray:
    """(n, width) float32 of a per-point input, checked: its shape ((n,) also for width 1; a transposed
    (width, n) array is refused, not reshaped), finite values (one NaN would spread through attention to
    the whole patch), and colour in 0-255 (Open3D keeps colours as floats in 0-1)."""
    given = np.asarray(values)
    if given.shape not in ([(n, width), (n,)] if width == 1 else [(n, width)]):
        raise ValueError(f"cloud {i}: {name} must be ({n}, {width}), got {given.shape}")
    array = given.astype(np.float32, copy=False).reshape(n, width)
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array).all(axis=1)))
        raise ValueError(f"cloud {i}: {name} of {bad} points is NaN or inf; drop those points or zero the values")
    if name == "color" and np.issubdtype(given.dtype, np.floating) and 0 < array.max() <= 1:
        raise ValueError(f"cloud {i}: color is 0-255; these floats are all within 0-1 (Open3D's scale): x 255")
    return array


def _check_graphable(device: torch.device, buckets: SizeBuckets | None, backend: str) -> None:
    """CUDA graphs replay fixed shapes on a GPU: a CUDA device, size buckets, the torch sparse conv."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device, the segmenter runs on {device}")
    if buckets is None:
        raise ValueError("cuda_graphs needs size buckets (buckets=SizeBuckets()): exact plans rarely repeat a shape")
    if backend != "torch":
        raise ValueError(f"cuda_graphs needs the torch sparse conv, not {backend!r} (it builds its pairs on the host)")


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda when available, else cpu; a cuda request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available (use 'cpu' or 'auto')")
    return device


class StageTimer:
    """Wall time per stage; on CUDA with events, read once at the end (no sync between stages)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.names: list[str] = []
        self.marks: list = [self._now()]

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, name: str) -> None:
        self.names.append(name)
        self.marks.append(self._now())

    def finish(self) -> dict[str, float]:
        if self.cuda:
            self.marks[-1].synchronize()
            spans = [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:], strict=False)]
        else:
            spans = [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return dict(zip(self.names, spans, strict=True))
