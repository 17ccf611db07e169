"""The node's inputs: which clouds it takes, how each is checked and cropped, and how they merge.

One input (`~/input/pointcloud`) by default; with `input_topics` several LiDARs, each with a name and a
static sensor -> base extrinsic. Each cloud is decoded in its own layout and intensity scale, moved
into the base frame and cropped; the kept points of all inputs become ONE cloud (one voxel grid, so
overlapping sensors share voxels) for one forward. Labels come back per point of the merged cloud and
from there to every point of every input, in its own frame and order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sonata_model.geometry import all_columns, quaternion_matrix, row_norms
from sonata_model.io.pointcloud2 import DecodedCloud, MissingFieldError, PointCloudError, decode

SINGLE_INPUT_TOPIC = "~/input/pointcloud"
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
SATURATION_WARN_FRACTION = 0.01
WARN_EVERY_S = 5.0


class InputRejected(Exception):
    """A cloud the node cannot segment, with the reason counted in /diagnostics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class InputSpec:
    """One input: its topic, the sensor -> base extrinsic, and what it must look like."""

    name: str  # "" for the single default input
    topic: str
    rotation: np.ndarray  # (3, 3) float32
    translation: np.ndarray  # (3,) float32
    frame_id: str = ""  # expected header.frame_id; empty accepts any
    intensity_scale: float = 0.0  # 0: per field

    def __post_init__(self) -> None:
        if not self.intensity_scale >= 0:  # NaN too
            what = f"sensors.{self.name}.intensity_scale" if self.name else "intensity_scale"
            raise ValueError(f"{what} must be >= 0 (0: per field), got {self.intensity_scale}")

    @property
    def is_identity(self) -> bool:
        """The sensor frame is the base frame (the points need no transform)."""
        return not self.translation.any() and np.array_equal(self.rotation, np.eye(3))

    @property
    def output_topic(self) -> str:
        return f"~/output/{self.name}/segmentation"

    @property
    def prefix(self) -> str:
        """What log lines and rejection details say about this input ("" for the single input)."""
        return f"input {self.name}: " if self.name else ""


def extrinsic(translation, quaternion, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rotation (3, 3), translation (3,)) float32 of a static transform; ValueError naming `what`."""
    if len(quaternion) != 4 or len(translation) != 3 or not any(quaternion):
        raise ValueError(f"{what}: translation needs [x, y, z] and rotation a non-zero quaternion [x, y, z, w]")
    rotation = quaternion_matrix(*(float(v) for v in quaternion))
    return rotation.astype(np.float32), np.asarray(translation, np.float32)


def check_input_names(topics: list[str], names: list[str]) -> None:
    if len(names) != len(topics):
        raise ValueError(f"input_names needs one name per input_topics entry: {len(names)} names, {len(topics)} topics")
    for name in names:
        if not NAME.fullmatch(name):
            raise ValueError(f"input name {name!r}: letters, digits and '_', starting with a letter")
    if len(set(names)) != len(names):
        raise ValueError(f"input_names must be distinct, got {names}")


@dataclass(frozen=True)
class Crop:
    """Which valid points of a cloud go to the model."""

    min_range: float  # sensor frame; 0 disables
    max_range: float  # sensor frame; 0 disables
    box: np.ndarray  # (6,) base frame [xmin, ymin, zmin, xmax, ymax, zmax]; all zeros disables
    reach: float  # farther along any base axis is beyond the serialization's grid

    def narrow(self, mask: np.ndarray, sensor: np.ndarray, base: np.ndarray) -> np.ndarray:
        """`mask` of the points, and-ed in place with the crop's tests; a test that is off costs nothing
        (the default crops nothing, and the node decodes every frame)."""
        if self.min_range > 0 or self.max_range > 0:
            distance = row_norms(sensor)
            if self.min_range > 0:
                mask &= distance >= self.min_range
            if self.max_range > 0:
                mask &= distance <= self.max_range
        if self.box.any():
            mask &= all_columns((base >= self.box[:3]) & (base <= self.box[3:]))
        return mask


@dataclass(frozen=True)
class Needs:
    """What the model reads, for decoding."""

    strength: bool  # the model reads strength
    reject_without_strength: bool  # missing_intensity: reject
    colour: bool  # the model needs real colour (indoor)


@dataclass
class SensorCloud:
    """One decoded input: its message, its valid points, those points in the base frame, the kept ones."""

    spec: InputSpec
    msg: object  # sensor_msgs/PointCloud2
    decoded: DecodedCloud
    base: np.ndarray  # (V, 3) float32, the valid points in the base frame
    selected: np.ndarray  # rows of the valid points that go to the model


def decode_input(msg, spec: InputSpec, needs: Needs, crop: Crop, logger) -> SensorCloud:
    """Check, decode, move to the base frame and crop one cloud; InputRejected when nothing can be used."""
    if spec.frame_id and msg.header.frame_id != spec.frame_id:
        raise InputRejected("wrong_frame", f"{spec.prefix}frame_id {msg.header.frame_id!r}, expected {spec.frame_id!r}")
    rejection = None
    try:
        cloud = decode(
            msg,
            intensity_scale=spec.intensity_scale or None,
            need_strength=needs.strength and needs.reject_without_strength,
            need_color=needs.colour,
        )
    except MissingFieldError as exc:
        rejection = InputRejected("missing_field", f"{spec.prefix}{exc}")
    except PointCloudError as exc:
        rejection = InputRejected("malformed", f"{spec.prefix}{exc}")
    if rejection is not None:  # raised out here: a raise inside `except` would tie the message into a cycle
        raise rejection
    if cloud.num_input_points == 0:
        raise InputRejected("empty", f"{spec.prefix}cloud has no points")
    if len(cloud.coord) == 0:
        raise InputRejected("no_valid_points", f"{spec.prefix}all {cloud.num_input_points} points are NaN, inf or zero")
    with np.errstate(over="ignore", invalid="ignore"):  # huge finite coordinates overflow to inf: out of reach
        base = cloud.coord if spec.is_identity else cloud.coord @ spec.rotation.T + spec.translation
        in_reach = all_columns(np.abs(base) <= crop.reach)
    if not in_reach.any():
        raise InputRejected(
            "no_valid_points",
            f"{spec.prefix}all {cloud.num_input_points} points are NaN, inf, zero or farther than {crop.reach:.0f} m",
        )
    if not in_reach.all():
        logger.warning(
            f"{spec.prefix}{np.count_nonzero(~in_reach)} points farther than {crop.reach:.0f} m are not segmented",
            throttle_duration_sec=WARN_EVERY_S,
        )
    if needs.strength and cloud.strength_clipped > SATURATION_WARN_FRACTION * len(cloud.coord):
        logger.warning(
            f"{spec.prefix}{100 * cloud.strength_clipped / len(cloud.coord):.0f}% of the {cloud.strength_field!r} "
            "values are above the scale and saturate: set intensity_scale (README: driver layouts)",
            throttle_duration_sec=WARN_EVERY_S,
        )
    with np.errstate(over="ignore", invalid="ignore"):  # distances of huge coordinates overflow: out of reach
        selected = np.flatnonzero(crop.narrow(in_reach, cloud.coord, base))
    return SensorCloud(spec, msg, cloud, base, selected)


@dataclass
class MergedCloud:
    """The valid points of every input in the base frame, one after the other, as one cloud."""

    cloud: DecodedCloud  # features concatenated; normals rotated into the base frame
    selected: np.ndarray  # rows of `cloud` that go to the model
    starts: np.ndarray  # (inputs + 1,) first row of each input in `cloud`, then the total


def merge(sensors: list[SensorCloud], max_points: int, logger) -> MergedCloud:
    """One cloud of all inputs' valid points; at most `max_points` of them selected (every k-th)."""
    counts = [len(s.base) for s in sensors]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    selected = _join([s.selected + start if start else s.selected for start, s in zip(starts, sensors, strict=False)])
    if len(selected) > max_points:
        logger.warning(
            f"{len(selected)} points over max_points={max_points}: subsampled", throttle_duration_sec=WARN_EVERY_S
        )
        selected = selected[np.linspace(0, len(selected) - 1, max_points).astype(np.int64)]
    decoded = [s.decoded for s in sensors]
    normals = [
        None if d.normal is None else d.normal @ s.spec.rotation.T for d, s in zip(decoded, sensors, strict=True)
    ]
    cloud = DecodedCloud(
        coord=_join([s.base for s in sensors]),
        strength=_concatenate([d.strength for d in decoded], counts, (), np.float32),
        strength_field=None,
        strength_clipped=sum(d.strength_clipped for d in decoded),
        color=_concatenate([d.color for d in decoded], counts, (3,), np.uint8),
        normal=_join(normals) if all(n is not None for n in normals) else None,
        valid=np.ones(int(starts[-1]), bool),
        num_input_points=int(starts[-1]),
    )
    return MergedCloud(cloud, selected, starts)


def _concatenate(parts: list[np.ndarray | None], counts: list[int], shape: tuple, dtype) -> np.ndarray | None:
    """The inputs' values one after the other, zeros for an input without them; None when none has them."""
    if all(p is None for p in parts):
        return None
    return _join([np.zeros((n, *shape), dtype) if p is None else p for p, n in zip(parts, counts, strict=True)])


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenated; one input's array as it is (a single cloud is not copied)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
