"""Velodyne packets (`velodyne_msgs/VelodyneScan`) to point clouds, decoded as the ROS drivers decode them.

Many robots record the LiDAR's raw packets rather than its clouds (several times smaller). This module
turns them into frames without a driver: each 1206-byte packet holds 12 blocks of 32 returns (distance
u16, intensity u8) with the block's azimuth; a return's point follows from its laser's calibrated
elevation and azimuth offset, and from the azimuth interpolated between blocks by firing time. Frames
are whole revolutions cut where the azimuth passes `scan_phase`, by the rule of TIER IV's Nebula driver
(Autoware's): a packet that wraps past the phase ends a frame, and its points already past the phase
(up to a quarter turn) start the next one. The arithmetic is float32 as the driver's, so the points equal
Nebula's own decoding of the same packets (`test/test_velodyne.py` checks real recorded packets against
the clouds Nebula publishes for them).

Decoded: VLP-16 (and Puck variants, with their calibration file) and VLS-128 (Alpha Prime), single and
dual return. Built-in calibrations are the factory tables of the VLP-16 and VLS-128 manuals (the drivers'
default VLP16.yaml / VLS128.yaml); a unit's own file in velodyne_pointcloud's YAML format replaces them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import yaml

PACKET_BYTES = 1206
BLOCKS = 12
CHANNELS = 32  # returns per block
BLOCK_BYTES = 100
RETURN_MODE_BYTE, PRODUCT_BYTE = 1204, 1205
DUAL_RETURN = 57
VLP16_FORMAT, VLS128_FORMAT = "vlp16", "vls128"
PRODUCTS = {0x22: ("VLP-16", VLP16_FORMAT), 0x24: ("Puck Hi-Res", VLP16_FORMAT), 0xA1: ("VLS-128", VLS128_FORMAT)}
UNSUPPORTED_PRODUCTS = {0x21: "HDL-32E", 0x28: "VLP-32C", 0x31: "Velarray"}
BANK_HEADERS = (0xEEFF, 0xDDFF, 0xCCFF, 0xBBFF)  # VLS-128 laser banks 0-31, 32-63, 64-95, 96-127
OVERFLOW_GAP_S = 0.05  # the driver drops points carried into the next frame across a longer gap
CARRIED_SPAN_DEG = 90  # how far past the phase a frame's trailing points are carried into the next

# VLP-16 firing timing (manual): 16 lasers 2.304 us apart, two firing sequences per block.
_VLP16_LASER_US, _VLP16_FIRING_US = np.float32(2.304), np.float32(55.296)
_VLP16_BLOCK_US = np.float32(110.592)
# VLS-128: 8 lasers fire together, 16 firing groups 2.665 us apart per 53.3 us sequence (a pause after 8).
_VLS128_GROUP_US, _VLS128_SEQUENCE_US, _VLS128_PACKET_OFFSET_US = 2.665, 53.3, 8.7
_VLS128_DISTANCE_M = np.float32(0.004)

_VLP16_ELEVATION_DEG = (-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15)
# fmt: off
_VLS128_ELEVATION_DEG = (  # by laser id (user manual)
    -11.742, -1.99, 3.4, -5.29, -0.78, 4.61, -4.08, 1.31, -6.5, -1.11, 4.28, -4.41, 0.1, 6.48, -3.2, 2.19,
    -3.86, 1.53, -9.244, -1.77, 2.74, -5.95, -0.56, 4.83, -2.98, 2.41, -6.28, -0.89, 3.62, -5.07, 0.32, 7.58,
    -0.34, 5.18, -3.64, 1.75, -25.0, -2.43, 2.96, -5.73, 0.54, 9.7, -2.76, 2.63, -7.65, -1.55, 3.84, -4.85,
    3.18, -5.51, -0.12, 5.73, -4.3, 1.09, -16.042, -2.21, 4.06, -4.63, 0.76, 15.0, -3.42, 1.97, -6.85, -1.33,
    -5.62, -0.23, 5.43, -3.53, 0.98, -19.582, -2.32, 3.07, -4.74, 0.65, 11.75, -2.65, 1.86, -7.15, -1.44, 3.95,
    -2.1, 3.29, -5.4, -0.01, 4.5, -4.19, 1.2, -13.565, -1.22, 4.17, -4.52, 0.87, 6.08, -3.31, 2.08, -6.65,
    1.42, -10.346, -1.88, 3.51, -6.06, -0.67, 4.72, -3.97, 2.3, -6.39, -1.0, 4.39, -5.18, 0.21, 6.98, -3.09,
    4.98, -3.75, 1.64, -8.352, -2.54, 2.85, -5.84, -0.45, 8.43, -2.87, 2.52, -6.17, -1.66, 3.73, -4.96, 0.43,
)
# fmt: on
_VLS128_AZIMUTH_OFFSET_DEG = (-6.354, -4.548, -2.732, -0.911, 0.911, 2.732, 4.548, 6.354)  # laser id % 8


class VelodyneError(ValueError):
    """Packets this module cannot decode (bad size, mixed sensors) or a calibration file it cannot read."""


class UnsupportedSensorError(VelodyneError):
    """A sensor whose packets are not decoded here, or not without the unit's calibration file."""


@dataclass(frozen=True)
class VelodyneCalibration:
    """Per-laser corrections, indexed by laser id: elevation and azimuth offset (rad), range offset (m)."""

    elevation: np.ndarray  # (L,) float32
    azimuth_offset: np.ndarray  # (L,) float32
    distance_offset: np.ndarray  # (L,) float32
    distance_resolution: float = 0.002  # metres per range count (VLP-16; the VLS-128 format fixes 4 mm)

    @property
    def ring(self) -> np.ndarray:
        """Ring of each laser: 0 for the lowest elevation upwards, as drivers number them."""
        ring = np.empty(len(self.elevation), np.uint16)
        ring[np.argsort(self.elevation, kind="stable")] = np.arange(len(self.elevation))
        return ring

    @classmethod
    def from_degrees(cls, elevation, azimuth_offset=None, distance_resolution: float = 0.002) -> VelodyneCalibration:
        elevation = np.radians(np.asarray(elevation, np.float64))
        offset = np.zeros_like(elevation) if azimuth_offset is None else np.radians(np.asarray(azimuth_offset))
        zeros = np.zeros(len(elevation), np.float32)
        return cls(elevation.astype(np.float32), offset.astype(np.float32), zeros, distance_resolution)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VelodyneCalibration:
        """A velodyne_pointcloud / Nebula calibration YAML (`lasers` with laser_id, vert_correction,
        rot_correction, dist_correction; `distance_resolution`)."""
        try:
            with open(path) as file:
                doc = yaml.safe_load(file)
            lasers = sorted(doc["lasers"], key=lambda laser: int(laser["laser_id"]))
            ids = [int(laser["laser_id"]) for laser in lasers]
            if ids != list(range(len(lasers))):
                raise ValueError(f"laser ids must be 0..{len(lasers) - 1}, got {ids}")
            column = {
                k: np.array([float(laser.get(k, 0.0)) for laser in lasers], np.float32)
                for k in ("vert_correction", "rot_correction", "dist_correction")
            }
            resolution = float(doc.get("distance_resolution", 0.002))
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise VelodyneError(f"calibration {path}: {exc}") from exc
        return cls(column["vert_correction"], column["rot_correction"], column["dist_correction"], resolution)


BUILTIN_CALIBRATIONS = {
    0x22: VelodyneCalibration.from_degrees(_VLP16_ELEVATION_DEG),
    0xA1: VelodyneCalibration.from_degrees(
        _VLS128_ELEVATION_DEG, np.tile(_VLS128_AZIMUTH_OFFSET_DEG, 16), distance_resolution=0.004
    ),
}


def _rotation_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuth (rad), cosine and sine per 0.01 degree, in float32 as the drivers tabulate them."""
    radians = np.radians(0.01 * np.arange(36000)).astype(np.float32)
    wide = radians.astype(np.float64)
    return radians, np.cos(wide).astype(np.float32), np.sin(wide).astype(np.float32)


_RADIANS, _COS, _SIN = _rotation_tables()


@dataclass
class DecodedPackets:
    """The points of a run of packets in firing order, and each packet's first and last block azimuth."""

    xyz: np.ndarray  # (N, 3) float32, ROS convention (x forward, y left, z up)
    intensity: np.ndarray  # (N,) uint8
    ring: np.ndarray  # (N,) uint16
    azimuth: np.ndarray  # (N,) float32 rad: the firing's azimuth as the sensor counts it (clockwise)
    time: np.ndarray  # (N,) float64 seconds (packet stamp + firing offset)
    packet: np.ndarray  # (N,) int64 index of the point's packet in the run
    first_azimuth: np.ndarray  # (P,) int64, 0.01 deg
    last_azimuth: np.ndarray  # (P,) int64, 0.01 deg


def packet_product(packets: np.ndarray) -> int:
    """The sensor's product id (factory byte) of a run of packets; raises VelodyneError if unsupported."""
    if packets.ndim != 2 or packets.shape[1] != PACKET_BYTES:
        raise VelodyneError(f"Velodyne packets are {PACKET_BYTES} bytes; got an array of shape {packets.shape}")
    products = np.unique(packets[:, PRODUCT_BYTE]) if len(packets) else np.array([0x22])
    if len(products) != 1:
        raise VelodyneError(f"packets of several sensors on one topic (product ids {[hex(p) for p in products]})")
    product = int(products[0])
    if product not in PRODUCTS:
        name = UNSUPPORTED_PRODUCTS.get(product, "unknown sensor")
        raise UnsupportedSensorError(
            f"product id {product:#04x} ({name}): only {', '.join(n for n, _ in PRODUCTS.values())} packets are "
            "decoded here; decode them with velodyne_pointcloud or Nebula and record its PointCloud2"
        )
    return product


def decode_packets(
    packets: np.ndarray,
    seconds: np.ndarray,
    calibration: VelodyneCalibration | None = None,
    *,
    min_range: float = 0.3,
    max_range: float = 300.0,
    cloud_angle_deg: tuple[int, int] = (0, 360),
) -> DecodedPackets:
    """Points of (P, 1206) uint8 packets stamped `seconds` (P,), in the drivers' order and float32 arithmetic.

    `calibration` defaults to the product's factory table. Returns outside (min_range, max_range) metres
    or outside `cloud_angle_deg` (the drivers' cloud_min_angle / cloud_max_angle) are dropped, as are empty
    returns and, in dual-return mode, second returns equal to the first.
    """
    product = packet_product(packets)
    fmt = PRODUCTS[product][1]
    if calibration is None:
        if product not in BUILTIN_CALIBRATIONS:
            raise UnsupportedSensorError(f"{PRODUCTS[product][0]} packets need the unit's calibration file")
        calibration = BUILTIN_CALIBRATIONS[product]
    lasers = 128 if fmt == VLS128_FORMAT else 16
    if len(calibration.elevation) != lasers:
        raise UnsupportedSensorError(
            f"{PRODUCTS[product][0]} packets need {lasers} lasers; the calibration has {len(calibration.elevation)}"
        )
    count = len(packets)
    blocks = packets[:, : BLOCKS * BLOCK_BYTES].reshape(count, BLOCKS, BLOCK_BYTES)
    header = blocks[:, :, 0].astype(np.int64) | blocks[:, :, 1].astype(np.int64) << 8
    rotation = blocks[:, :, 2].astype(np.int64) | blocks[:, :, 3].astype(np.int64) << 8
    returns = blocks[:, :, 4:].reshape(count, BLOCKS, CHANNELS, 3)
    raw = returns[..., 0].astype(np.uint16) | returns[..., 1].astype(np.uint16) << 8
    intensity = returns[..., 2]
    dual = packets[:, RETURN_MODE_BYTE] == DUAL_RETURN
    azimuth, turn = _block_azimuths(rotation, dual, fmt)
    layout = _vls128_layout if fmt == VLS128_FORMAT else _vlp16_layout
    valid_block, laser, turned, offset_s, distance = layout(header, turn, raw, dual, calibration)
    distance = np.where(distance > 1e-6, distance + calibration.distance_offset[laser], distance)

    # the other return of the same firing (dual mode pairs blocks 0-1, 2-3, ...)
    block_index = np.arange(BLOCKS)
    partner = np.where(block_index % 2 == 1, block_index - 1, block_index + 1)
    repeated = dual[:, None, None] & (block_index % 2 == 1)[None, :, None] & (raw == raw[:, partner])
    keep = valid_block[:, :, None] & (raw != 0) & ~repeated
    keep &= (distance.astype(np.float64) > min_range) & (distance.astype(np.float64) < max_range)
    corrected = (azimuth[:, :, None].astype(np.float32) + turned).astype(np.float64) - (
        calibration.azimuth_offset[laser].astype(np.float64) * 180.0 / np.pi * 100
    )
    corrected = corrected.astype(np.float32)
    corrected = np.where(corrected < 0, corrected + np.float32(36000), corrected)
    cell = (np.floor(corrected.astype(np.float64) + 0.5).astype(np.int64) & 0xFFFF) % 36000
    low, high = (100 * a for a in cloud_angle_deg)
    if low < high:
        keep &= ((azimuth >= low) & (azimuth <= high))[:, :, None] & (cell >= low) & (cell <= high)
    elif low == high:
        keep[:] = False
    else:
        keep &= (cell <= high) | (cell >= low)

    distance, cell, laser = distance[keep], cell[keep], laser[keep]
    elevation = calibration.elevation.astype(np.float64)
    xy = distance * np.cos(elevation).astype(np.float32)[laser]
    z = distance * np.sin(elevation).astype(np.float32)[laser]
    xyz = np.stack([xy * _COS[cell], -(xy * _SIN[cell]), z], axis=1)
    packet = np.broadcast_to(np.arange(count)[:, None, None], keep.shape)[keep]
    seconds = np.asarray(seconds, np.float64)
    return DecodedPackets(
        xyz=xyz.astype(np.float32),
        intensity=intensity[keep],
        ring=calibration.ring[laser],
        azimuth=_RADIANS[cell],
        time=seconds[packet] + np.broadcast_to(offset_s, keep.shape)[keep],
        packet=packet.astype(np.int64),
        first_azimuth=rotation[:, 0],
        last_azimuth=rotation[:, BLOCKS - 1],
    )


def _block_azimuths(rotation: np.ndarray, dual: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Each block's azimuth and how far the sensor turns during it (0.01 deg), as the drivers take them:
    the next firing's block minus this one; a packet's last block turns as much as the one before it, the
    block that ends a packet's firings not at all."""
    block_index = np.arange(BLOCKS)
    step = 1 + dual[:, None].astype(np.int64)  # dual mode sends each firing in two blocks
    azimuth = np.take_along_axis(rotation, np.minimum(np.where(block_index == 0, 0, block_index + step - 1), 11), 1)
    following = np.take_along_axis(rotation, np.minimum(block_index + step, 11), 1)
    turn = (36000 + following - azimuth) % 36000
    measured = block_index < BLOCKS - step
    last_turn = np.take_along_axis(turn, (BLOCKS - 1 - step), 1)
    final_block = BLOCKS - 1 - (4 if fmt == VLS128_FORMAT else 1) * dual[:, None]
    turn = np.where(measured, turn, np.where(block_index == final_block, 0, last_turn)).astype(np.float32)
    return azimuth, turn


def _vls128_layout(
    header: np.ndarray, turn: np.ndarray, raw: np.ndarray, dual: np.ndarray, calibration: VelodyneCalibration
) -> tuple[np.ndarray, ...]:
    """VLS-128 blocks: a bank header (lasers 0-31 ... 96-127) each; 8 lasers fire together. Returns each
    return's block validity, laser, turn since the block's azimuth, time offset (s) and distance (m)."""
    block_index = np.arange(BLOCKS)
    bank = np.full(header.shape, -1)
    for k, value in enumerate(BANK_HEADERS):
        bank[header == value] = k
    valid_block = np.cumprod(bank >= 0, axis=1).astype(bool) & (block_index < BLOCKS - 4 * dual[:, None])
    laser = bank[:, :, None] * 32 + np.arange(CHANNELS)
    group = laser // 8
    fraction = np.float32(_VLS128_GROUP_US) / np.float32(_VLS128_SEQUENCE_US)
    turned = turn[:, :, None] * (fraction * (group + group // 8).astype(np.float32))
    offset_s = (
        _VLS128_SEQUENCE_US * (block_index // 4)[None, :, None]
        + _VLS128_GROUP_US * (group + laser // 64)
        - _VLS128_PACKET_OFFSET_US
    ) * 1e-6
    distance = raw.astype(np.float32) * _VLS128_DISTANCE_M
    return valid_block, np.where(laser >= 0, laser, 0), turned, offset_s, distance


def _vlp16_layout(
    header: np.ndarray, turn: np.ndarray, raw: np.ndarray, dual: np.ndarray, calibration: VelodyneCalibration
) -> tuple[np.ndarray, ...]:
    """VLP-16 blocks: two firings of the 16 lasers each, all under the upper-bank header."""
    block_index = np.arange(BLOCKS)
    valid_block = np.cumprod(header == BANK_HEADERS[0], axis=1).astype(bool)
    laser = np.broadcast_to(np.arange(CHANNELS) % 16, raw.shape)
    firing = np.arange(CHANNELS) // 16
    firing_us = (np.arange(CHANNELS) % 16).astype(np.float32) * _VLP16_LASER_US + firing.astype(np.float32) * (
        _VLP16_FIRING_US
    )
    turned = turn[:, :, None] * firing_us / _VLP16_BLOCK_US
    sequence = np.where(dual[:, None], block_index - block_index % 2, 2 * block_index)[:, :, None] + firing
    offset_s = 55.296e-6 * sequence + 2.304e-6 * (np.arange(CHANNELS) % 16)
    distance = raw.astype(np.float32) * np.float32(calibration.distance_resolution)
    return valid_block, laser, turned, offset_s, distance


@dataclass
class Revolution:
    """One frame cut from a packet stream: its points and the index of the packet that ended it."""

    xyz: np.ndarray  # (N, 3) float32
    intensity: np.ndarray  # (N,) uint8
    ring: np.ndarray  # (N,) uint16
    time: np.ndarray  # (N,) float64 seconds, absolute
    stamp: float  # seconds: the stamp of the packet of the first point
    end_packet: int  # stream index of the packet whose wrap ended the frame


def wrap_cuts(
    first_azimuth: np.ndarray,
    last_azimuth: np.ndarray,
    phase: int,
    previous_first: int | None = None,
    previous_was_cut: bool = False,
) -> tuple[list[int], int | None]:
    """Indices of the packets that end a revolution, from their first and last block azimuths (0.01 deg).

    A packet ends one when its azimuth wraps past `phase` inside it or it starts below the packet before
    it; the packet right after an end never does. `previous_*` continue a stream: the phased first azimuth
    of the packet before these and whether it ended a revolution. Returns the cuts and the value of
    `previous_first` for the next run.
    """
    if len(first_azimuth) == 0:
        return [], previous_first
    first = (36000 + np.asarray(first_azimuth, np.int64) - phase) % 36000
    last = (36000 + np.asarray(last_azimuth, np.int64) - phase) % 36000
    before = np.concatenate([[first[0] if previous_first is None else previous_first], first[:-1]])
    wraps = (last < first) | (first < before)
    if previous_first is None:
        wraps[0] = False
    cuts: list[int] = []
    for p in np.flatnonzero(wraps):  # one per revolution
        if (p == 0 and previous_was_cut) or (cuts and cuts[-1] == p - 1):
            continue
        cuts.append(int(p))
    return cuts, int(first[-1])


_POINT_FIELDS = ("xyz", "intensity", "ring", "azimuth", "time", "packet", "stamp")


class RevolutionCutter:
    """Cuts a stream of packet runs into revolutions at `scan_phase_deg`, as Nebula's driver does.

    A packet ends a frame when its azimuth wraps past the phase inside it, or starts below the previous
    packet's (never the packet right after a frame's end); the frame's trailing points that are already
    up to a quarter turn past the phase go to the next frame, unless more than 0.05 s pass before the next
    packet. The first frame of a stream starts mid-turn and is not yielded.
    """

    def __init__(
        self, calibration: VelodyneCalibration | None = None, *, scan_phase_deg: float = 0.0, **decode_options
    ):
        self.calibration, self.decode_options = calibration, decode_options
        self.phase = round(scan_phase_deg * 100)
        self.phase_rad = np.radians(scan_phase_deg)
        self.packets_seen = 0
        self.previous_first: int | None = None  # the last packet's first azimuth minus the phase
        self.previous_was_cut = False
        self.started = False  # the pending points began at a cut
        self.carried_until: int | None = None  # last packet of carried points awaiting the gap check
        self.pending = {name: None for name in _POINT_FIELDS}

    def feed(self, packets: np.ndarray, seconds: np.ndarray) -> Iterator[Revolution]:
        """Decode the next (P, 1206) packets stamped `seconds` (P,) and yield the revolutions they complete."""
        count = len(packets)
        if count == 0:
            return
        seconds = np.asarray(seconds, np.float64)
        decoded = decode_packets(packets, seconds, self.calibration, **self.decode_options)
        offset = self.packets_seen
        self.packets_seen += count
        if self.carried_until is not None:
            self._check_gap(seconds[0])
        self._append(decoded, offset, seconds)
        cuts, self.previous_first = wrap_cuts(
            decoded.first_azimuth, decoded.last_azimuth, self.phase, self.previous_first, self.previous_was_cut
        )
        for p in cuts:
            revolution = self._cut(offset + p)
            if revolution is not None:
                yield revolution
            if p + 1 < count:
                self._check_gap(seconds[p + 1])
        self.previous_was_cut = bool(cuts) and cuts[-1] == count - 1

    def _append(self, decoded: DecodedPackets, offset: int, seconds: np.ndarray) -> None:
        new = {
            "xyz": decoded.xyz,
            "intensity": decoded.intensity,
            "ring": decoded.ring,
            "azimuth": decoded.azimuth,
            "time": decoded.time,
            "packet": decoded.packet + offset,
            "stamp": seconds[decoded.packet],
        }
        for name, values in new.items():
            held = self.pending[name]
            self.pending[name] = values if held is None else np.concatenate([held, values])

    def _take(self, stop: int) -> dict[str, np.ndarray]:
        taken = {name: values[:stop] for name, values in self.pending.items()}
        self.pending = {name: values[stop:] for name, values in self.pending.items()}
        return taken

    def _cut(self, end_packet: int) -> Revolution | None:
        """End the pending frame at packet `end_packet`, carrying its trailing points past the phase."""
        end = int(np.searchsorted(self.pending["packet"], end_packet, side="right"))
        past = np.degrees(2 * np.pi + self.pending["azimuth"][:end].astype(np.float64) - self.phase_rad)
        kept = np.flatnonzero(past.astype(np.int64) % 360 >= CARRIED_SPAN_DEG)
        points = self._take(int(kept[-1]) + 1 if len(kept) else 0)
        self.carried_until = end_packet if end - len(points["packet"]) > 0 else None
        complete, self.started = self.started, True
        if not complete or len(points["packet"]) == 0:
            return None
        return Revolution(
            points["xyz"], points["intensity"], points["ring"], points["time"], float(points["stamp"][0]), end_packet
        )

    def _check_gap(self, next_packet_seconds: float) -> None:
        """Drop the carried points when the next packet comes more than 0.05 s after them (packets lost)."""
        carried = int(np.searchsorted(self.pending["packet"], self.carried_until, side="right"))
        if carried and next_packet_seconds - self.pending["time"][0] > OVERFLOW_GAP_S:
            self._take(carried)
        self.carried_until = None
