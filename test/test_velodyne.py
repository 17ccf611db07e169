"""Velodyne packet bags read as frames: real recorded packets decode to the clouds TIER IV's Nebula driver
publishes for them (point for point), and synthetic packets of a known scene decode to that scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag1 import Writer as Rosbag1Writer
from rosbags.rosbag2 import StoragePlugin, Writer

from sonata_model.io.bag_recovery import Salvage
from sonata_model.io.bags import BagError, BagSource, _typestore, iter_bag_frames, list_pointcloud_topics
from sonata_model.io.pcd import read_pcd
from sonata_model.io.sources import open_source
from sonata_model.io.velodyne import (
    BUILTIN_CALIBRATIONS,
    RevolutionCutter,
    UnsupportedSensorError,
    VelodyneCalibration,
    VelodyneError,
    decode_packets,
)
from sonata_model.io.velodyne_bags import VELODYNE_SCAN, scan_from_cdr, scan_packets

NEBULA = Path(__file__).resolve().parents[1].parent / "shared" / "real" / "nebula-driver-frames"
needs_nebula = pytest.mark.skipif(not NEBULA.is_dir(), reason=f"real packets not here: {NEBULA} is absent")
STORE = _typestore()
VLP16_ELEVATION = np.radians([-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15])


def nebula_revolution(bag: str, pcd_stamp_ns: int):
    """The revolution Nebula's decoder test compares with its PCD: the one completed while decoding the
    message received at `pcd_stamp_ns`, with the test's settings (packet stamps in whole seconds, cloud
    angles 0-359 degrees)."""
    cutter = RevolutionCutter(cloud_angle_deg=(0, 359))
    (storage,) = (NEBULA / "bags" / bag).glob("*.db3")
    for message in Salvage(storage):
        packets, seconds = scan_packets(STORE.deserialize_cdr(message.data, message.msgtype))
        revolutions = list(cutter.feed(packets, np.floor(seconds)))
        if message.timestamp == pcd_stamp_ns:
            assert len(revolutions) == 1
            return revolutions[0]
    raise AssertionError(f"no message received at {pcd_stamp_ns}")


def assert_within_ulps(ours: np.ndarray, reference: np.ndarray, ulps: int = 2) -> None:
    """Equal to float32 rounding: the driver's cosf / sinf and numpy's may differ in the last bit."""
    assert ours.shape == reference.shape
    excess = np.abs(ours - reference) - ulps * np.spacing(np.abs(reference))
    assert excess.max() <= 0, f"{np.count_nonzero(excess > 0)} coordinates differ by more than {ulps} ulps"


@needs_nebula
@pytest.mark.parametrize(
    "bag, pcd",
    [("vlp16", "vlp16_1673400472138016708.pcd"), ("vls128", "vls128_1585897255376374245.pcd")],
)
def test_real_packets_decode_to_the_drivers_cloud_point_for_point(bag, pcd):
    reference = read_pcd(NEBULA / "pcd" / pcd)
    revolution = nebula_revolution(bag, int(pcd.split("_")[1].removesuffix(".pcd")))
    assert_within_ulps(revolution.xyz, reference.coord)
    if "ring" in reference.extra:  # the VLP-16 PCD carries Nebula's full point type
        np.testing.assert_array_equal(revolution.ring, reference.extra["ring"])
        np.testing.assert_array_equal(revolution.intensity, np.round(reference.strength * 255))  # u8 / 255


@needs_nebula
def test_a_real_packet_bag_reads_as_revolutions_streamed_and_at_random():
    assert list_pointcloud_topics(NEBULA / "bags" / "vlp16") == {"/velodyne_packets": 4}
    streamed = iter_bag_frames(NEBULA / "bags" / "vlp16")
    frames = list(streamed)
    assert streamed.report.frames == 3 and not streamed.report.skipped
    source = open_source(f"bag:{NEBULA / 'bags' / 'vlp16'}")
    assert isinstance(source, BagSource) and source.packet_topic and len(source) == len(frames)
    for k, frame in enumerate(frames):
        again = source[k]
        np.testing.assert_array_equal(again.coord, frame.coord)
        np.testing.assert_array_equal(again.extra["ring"], frame.extra["ring"])
        assert frame.name == again.name == f"vlp16#{k}" and frame.frame_id == "velodyne"
        azimuth = np.degrees(np.arctan2(frame.coord[:, 1], frame.coord[:, 0])) % 360
        assert np.histogram(azimuth, bins=36, range=(0, 360))[0].min() > 0  # a whole turn
        assert 0.098 < frame.extra["time"].max() < 0.102  # 10 Hz
    stamps = np.diff([f.stamp_ns for f in frames]) * 1e-9
    np.testing.assert_allclose(stamps, 0.1, atol=0.002)
    # the VLS-128 bag's metadata leaves the serialization format empty (an older rosbag2): rosbags refuses
    # the folder, its one storage file opens on its own, at random too
    vls = open_source(f"bag:{NEBULA / 'bags' / 'vls128'}")
    assert len(vls) == 3 and all(205_000 < vls[k].num_points < 215_000 for k in range(3))
    assert np.percentile(np.linalg.norm(vls[0].coord, axis=1), 50) > 10  # an outdoor street, not the lab


# --- synthetic packets of a known scene ------------------------------------------------------------


def vlp16_packets(
    revolutions: float, *, dual: bool = False, product: int = 0x22, start_deg: float = 123.0, rate_hz: float = 10.0
):
    """VLP-16 packets of a sensor inside a cylinder of radius 10 m (every laser returns), and their stamps.

    Range is 10 m / cos(elevation); intensity is the laser id * 10. In dual mode each firing sends its
    last return (block 2k) and its strongest (2k + 1): the strongest is 1 m closer on odd lasers and
    identical (dropped by drivers) on even ones.
    """
    block_s = 110.592e-6  # two firings of the 16 lasers
    steps_per_packet = 6 if dual else 12  # dual mode sends each firing's returns in two blocks
    per_turn = 1 / rate_hz / block_s
    count = int(np.ceil(revolutions * per_turn / steps_per_packet))
    packets = np.zeros((count, 1206), np.uint8)
    rng = 10.0 / np.cos(VLP16_ELEVATION)
    raw_last = np.round(rng / 0.002).astype(np.uint16)
    raw_strong = np.where(np.arange(16) % 2 == 1, raw_last - 500, raw_last)
    for p in range(count):
        for b in range(12):
            sequence = p * steps_per_packet + (b // 2 if dual else b)
            azimuth = round((start_deg + 360 * sequence / per_turn) * 100) % 36000
            block = packets[p, b * 100 : (b + 1) * 100]
            block[0:2] = (0xFF, 0xEE)
            block[2:4] = (azimuth & 0xFF, azimuth >> 8)
            raw = raw_strong if dual and b % 2 else raw_last
            returns = block[4:].reshape(32, 3)
            both = np.tile(raw, 2)
            returns[:, 0], returns[:, 1], returns[:, 2] = both & 0xFF, both >> 8, np.tile(np.arange(16) * 10, 2)
    packets[:, 1204] = 57 if dual else 55
    packets[:, 1205] = product
    seconds = 1000.0 + np.arange(count) * steps_per_packet * block_s
    return packets, seconds


def test_synthetic_packets_decode_to_the_scene_they_describe():
    packets, seconds = vlp16_packets(0.1)
    points = decode_packets(packets, seconds)
    assert len(points.xyz) == len(packets) * 12 * 32  # every return, none dropped
    radius = np.hypot(points.xyz[:, 0], points.xyz[:, 1])
    np.testing.assert_allclose(radius, 10.0, atol=0.002)  # 2 mm range steps
    laser = points.intensity // 10
    np.testing.assert_allclose(np.arctan2(points.xyz[:, 2], radius), VLP16_ELEVATION[laser], atol=1e-4)
    np.testing.assert_array_equal(points.ring, np.argsort(np.argsort(VLP16_ELEVATION))[laser])
    # the sensor turns clockwise seen from above: azimuth 123 deg (the first block) lies right-rear
    first = points.xyz[0]
    np.testing.assert_allclose(np.degrees(np.arctan2(-first[1], first[0])) % 360, 123.0, atol=0.01)
    assert np.all(np.diff(points.time) >= -1e-9) and points.time[0] >= seconds[0]


def test_revolutions_are_whole_turns_and_a_stream_split_anywhere_cuts_the_same():
    packets, seconds = vlp16_packets(3.5)
    whole = list(RevolutionCutter().feed(packets, seconds))
    assert len(whole) == 2  # the first, started mid-turn, and the last, unfinished, are not frames
    for revolution in whole:
        azimuth = np.degrees(np.arctan2(-revolution.xyz[:, 1], revolution.xyz[:, 0])) % 360
        assert azimuth.min() < 0.5 and azimuth.max() > 359.5
        assert abs(len(revolution.xyz) - 32 * 0.1 / 110.592e-6) < 2 * 32  # 10 Hz: 904 blocks of 32 returns
    cutter, pieces = RevolutionCutter(), []
    for chunk in np.array_split(np.arange(len(packets)), [7, 8, 150, 151, 152, 400]):
        pieces += cutter.feed(packets[chunk], seconds[chunk])
    assert [r.end_packet for r in pieces] == [r.end_packet for r in whole]
    for a, b in zip(pieces, whole, strict=True):
        np.testing.assert_array_equal(a.xyz, b.xyz)


def test_a_gap_in_the_packets_drops_the_points_carried_over_it():
    packets, seconds = vlp16_packets(2.5)
    (intact,) = RevolutionCutter().feed(packets, seconds)
    first_cut = int(np.flatnonzero(np.diff(packets[:, 2].astype(int) | packets[:, 3].astype(int) << 8) < 0)[0])
    delayed = seconds.copy()
    delayed[first_cut + 1 :] += 0.2  # the packets after the first cut arrive 0.2 s late (some were lost)
    (gapped,) = RevolutionCutter().feed(packets, delayed)
    carried = len(intact.xyz) - len(gapped.xyz)
    assert 0 < carried < 12 * 32  # the cut packet's points past the phase
    np.testing.assert_array_equal(gapped.xyz, intact.xyz[carried:])


def test_dual_return_keeps_distinct_second_returns_only():
    single = decode_packets(*vlp16_packets(0.05))
    dual = decode_packets(*vlp16_packets(0.05, dual=True))
    firings = len(vlp16_packets(0.05, dual=True)[0]) * 6 * 2
    assert len(dual.xyz) == firings * 16 + firings * 8  # every last return, the 8 distinct strongest
    assert len(single.xyz) > 0
    closer = np.hypot(dual.xyz[:, 0], dual.xyz[:, 1]) < 9.5
    assert set(np.unique(dual.intensity[closer] // 10)) == set(range(1, 16, 2))


def test_a_bad_block_ends_its_packet_and_unknown_sensors_fail_fast(tmp_path):
    packets, seconds = vlp16_packets(0.02)
    packets[0, 500:502] = (0x12, 0x34)  # block 5's header
    decoded = decode_packets(packets, seconds)
    assert np.count_nonzero(decoded.packet == 0) == 5 * 32 and np.count_nonzero(decoded.packet == 1) == 12 * 32
    with pytest.raises(UnsupportedSensorError, match=r"0x28 \(VLP-32C\).*decode them with velodyne_pointcloud"):
        decode_packets(*vlp16_packets(0.02, product=0x28))
    with pytest.raises(UnsupportedSensorError, match="need the unit's calibration file"):
        decode_packets(*vlp16_packets(0.02, product=0x24))
    hires = VelodyneCalibration.from_degrees(np.linspace(-10, 10, 16))
    assert len(decode_packets(*vlp16_packets(0.02, product=0x24), hires).xyz) > 0
    bag = write_packet_bag(tmp_path / "vlp32", [vlp16_packets(0.3, product=0x28)])
    with pytest.raises(BagError, match="VLP-32C"):
        list(iter_bag_frames(bag))


def write_packet_bag(path, runs, topic="/velodyne_packets", ros1=False):
    """A rosbag2 (mcap) or ROS 1 bag of VelodyneScan messages, one per (packets, seconds) run."""
    store = _typestore(ros1)
    scan, packet_type = store.types[VELODYNE_SCAN], store.types["velodyne_msgs/msg/VelodynePacket"]
    time_type, header_type = store.types["builtin_interfaces/msg/Time"], store.types["std_msgs/msg/Header"]
    writer = Rosbag1Writer(path) if ros1 else Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    serialize = store.serialize_ros1 if ros1 else store.serialize_cdr
    with writer:
        connection = writer.add_connection(topic, VELODYNE_SCAN, typestore=store)
        for packets, seconds in runs:
            stamps = [time_type(sec=int(s), nanosec=round((s % 1) * 1e9) % 10**9) for s in seconds]
            header = {"stamp": stamps[-1], "frame_id": "velodyne"} | ({"seq": 0} if ros1 else {})
            msg = scan(
                header=header_type(**header),
                packets=[packet_type(stamp=t, data=d) for t, d in zip(stamps, packets, strict=True)],
            )
            writer.write(connection, int(seconds[-1] * 1e9), serialize(msg, VELODYNE_SCAN))
    return path


def test_cdr_scans_are_read_in_place_as_deserializing_reads_them(tmp_path):
    packets, seconds = vlp16_packets(0.3)
    bag = write_packet_bag(tmp_path / "drive", [(packets, seconds)])
    with AnyReader([bag], default_typestore=STORE) as reader:
        ((_, _, raw),) = list(reader.messages())
    frame_id, in_place, stamps = scan_from_cdr(raw)
    expected = scan_packets(STORE.deserialize_cdr(raw, VELODYNE_SCAN))
    assert frame_id == "velodyne" and in_place.base is not None  # a view of the message
    np.testing.assert_array_equal(in_place, expected[0])
    np.testing.assert_array_equal(stamps, expected[1])
    with pytest.raises(VelodyneError, match="too short for its"):
        scan_from_cdr(bytes(raw)[:-100])


def test_ros1_packet_bags_read_as_rosbag2_ones(tmp_path):
    packets, seconds = vlp16_packets(2.2)
    runs = [(packets[k : k + 40], seconds[k : k + 40]) for k in range(0, len(packets), 40)]
    ros1 = list(iter_bag_frames(write_packet_bag(tmp_path / "drive.bag", runs, ros1=True)))
    ros2 = list(iter_bag_frames(write_packet_bag(tmp_path / "drive", runs)))
    assert len(ros1) == len(ros2) == 1
    np.testing.assert_array_equal(ros1[0].coord, ros2[0].coord)
    np.testing.assert_array_equal(ros1[0].extra["time"], ros2[0].extra["time"])


def test_a_packet_bag_is_a_frame_source_for_training(tmp_path):
    packets, seconds = vlp16_packets(4.2)
    runs = [(packets[k : k + 76], seconds[k : k + 76]) for k in range(0, len(packets), 76)]  # ~one per turn
    bag = write_packet_bag(tmp_path / "drive", runs)
    streamed = list(iter_bag_frames(bag))
    expected = list(RevolutionCutter().feed(packets, seconds))
    assert len(streamed) == len(expected) == 3
    source = open_source(f"bag:{bag}")
    assert len(source) == 3
    for k in (2, 0, -2):
        np.testing.assert_array_equal(source[k].coord, expected[k].xyz)
        np.testing.assert_array_equal(source[k].coord, streamed[k].coord)
    assert source[1].strength.max() == pytest.approx(150 / 255)
    assert BUILTIN_CALIBRATIONS[0x22].distance_resolution == 0.002


def test_sonata_extract_turns_a_packet_bag_into_frame_folders(tmp_path):
    from sonata_model.train.extract import main as extract

    packets, seconds = vlp16_packets(3.2)
    runs = [(packets[k : k + 50], seconds[k : k + 50]) for k in range(0, len(packets), 50)]
    bag = write_packet_bag(tmp_path / "drive", runs)
    assert extract(["--data", f"bag:{bag}", "--out", str(tmp_path / "frames"), "--workers", "1"]) == 0
    frames = open_source(f"frames:{tmp_path / 'frames'}")
    expected = list(RevolutionCutter().feed(packets, seconds))
    assert len(frames) == len(expected) == 2
    for k, revolution in enumerate(expected):
        np.testing.assert_array_equal(frames[k].coord, revolution.xyz)
        np.testing.assert_array_equal(frames[k].strength, revolution.intensity / np.float32(255))


def test_a_units_calibration_file_replaces_the_factory_table(tmp_path):
    elevation = np.linspace(-10, 10, 16)  # a Puck Hi-Res: its packets say 0x24 and carry no table
    lasers = [
        {"laser_id": k, "vert_correction": float(np.radians(e)), "rot_correction": 0.0, "dist_correction": 0.1}
        for k, e in enumerate(elevation)
    ]
    path = tmp_path / "hires.yaml"
    path.write_text(yaml.safe_dump({"num_lasers": 16, "distance_resolution": 0.002, "lasers": lasers[::-1]}))
    packets, seconds = vlp16_packets(2.0, product=0x24)
    bag = write_packet_bag(tmp_path / "hires", [(packets, seconds)])
    with pytest.raises(BagError, match="need the unit's calibration file"):
        list(iter_bag_frames(bag))
    (frame,) = iter_bag_frames(bag, velodyne_calibration=path)
    laser = np.round(frame.strength * 255).astype(int) // 10
    radius = np.linalg.norm(frame.coord, axis=1)
    np.testing.assert_allclose(radius, 10.0 / np.cos(VLP16_ELEVATION[laser]) + 0.1, atol=0.002)  # range + 0.1 m
    np.testing.assert_allclose(np.degrees(np.arcsin(frame.coord[:, 2] / radius)), elevation[laser], atol=1e-3)
    np.testing.assert_array_equal(frame.extra["ring"], laser)  # the table rises with the laser id
    path.write_text("lasers: [{laser_id: 3}]")
    with pytest.raises(VelodyneError, match=f"calibration {path}: laser ids must be 0..0"):
        VelodyneCalibration.load(path)


def test_a_lost_message_breaks_the_stream_and_no_revolution_is_pieced_across_it(tmp_path):
    packets, seconds = vlp16_packets(6.2)
    runs = [(packets[k : k + 40], seconds[k : k + 40]) for k in range(0, len(packets), 40)]
    bag = write_packet_bag(tmp_path / "drive", runs)
    with AnyReader([bag], default_typestore=STORE) as reader:
        messages = [(t, bytes(raw)) for _, t, raw in reader.messages()]
    damaged = tmp_path / "damaged"
    with Writer(damaged, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/velodyne_packets", VELODYNE_SCAN, typestore=STORE)
        for k, (t, raw) in enumerate(messages):
            writer.write(connection, t, raw[:100] if k == 6 else raw)  # message 6 cut short
    before = list(RevolutionCutter().feed(packets[: 6 * 40], seconds[: 6 * 40]))
    after = list(RevolutionCutter().feed(packets[7 * 40 :], seconds[7 * 40 :]))
    streamed = iter_bag_frames(damaged)
    frames = list(streamed)
    assert streamed.report.skipped == {"malformed VelodyneScan": 1}
    source = BagSource(damaged)
    assert len(frames) == len(source) == len(before) + len(after) >= 3
    for k, revolution in enumerate(before + after):
        np.testing.assert_array_equal(frames[k].coord, revolution.xyz)
        np.testing.assert_array_equal(source[k].coord, revolution.xyz)
