"""Bags written with rosbags read back equal; damaged bags yield their good frames and say what was lost."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from sonata_model.io.bags import (
    BagError,
    BagSource,
    BagWriter,
    NoPointCloudError,
    iter_bag_frames,
    list_pointcloud_topics,
)
from sonata_model.io.frame import Frame
from sonata_model.io.sources import SkippingSource, open_source
from sonata_model.synth.drive import generate_drive

ROS2 = get_typestore(Stores.ROS2_JAZZY)
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"


@pytest.fixture(scope="module")
def drive():
    return list(generate_drive("vlp16", frames=3, seed=7))


def write_bag(path, frames, fmt="mcap", topic="/points", layout="velodyne", spacing_ns=0):
    with BagWriter(path, format=fmt, topic=topic, layout=layout) as writer:
        for k, frame in enumerate(frames):
            writer.write(frame, stamp_ns=frame.stamp_ns + k * spacing_ns)
    return path


def raw_messages(path):
    with AnyReader([path], default_typestore=ROS2) as reader:
        return [(c, t, bytes(raw)) for c, t, raw in reader.messages()]


def assert_same_frame(back, original):
    np.testing.assert_array_equal(back.coord, original.coord)
    np.testing.assert_allclose(back.strength, original.strength, atol=1e-6)
    np.testing.assert_array_equal(back.extra["ring"], original.extra["ring"])
    np.testing.assert_array_equal(back.extra["time"], original.extra["time"])


@pytest.mark.parametrize("fmt", ["mcap", "db3", "bag1"])
def test_round_trip_in_velodyne_layout(tmp_path, drive, fmt):
    path = write_bag(tmp_path / ("run.bag" if fmt == "bag1" else "run"), drive, fmt, "/velodyne_points")
    assert list_pointcloud_topics(path) == {"/velodyne_points": 3}
    frames = iter_bag_frames(path)
    read = list(frames)
    assert frames.report.frames == 3 and not frames.report.skipped and frames.report.truncated is None
    for k, (back, original) in enumerate(zip(read, drive, strict=True)):
        assert_same_frame(back, original)
        assert (back.stamp_ns, back.frame_id, back.name) == (original.stamp_ns, "lidar", f"{path.name}#{k}")


def test_ouster_clouds_are_organized_like_the_driver_and_read_back_the_same_points(tmp_path):
    frame = next(iter(generate_drive("os128", frames=1, seed=1)))
    path = write_bag(tmp_path / "ouster", [frame], topic="/ouster/points", layout="ouster")
    ((_, _, raw),) = raw_messages(path)
    msg = ROS2.deserialize_cdr(raw, POINTCLOUD2)
    assert (msg.height, msg.width, msg.point_step) == (128, 1024, 48)
    back = next(iter_bag_frames(path, "/ouster/points"))
    order, back_order = np.lexsort(frame.coord.T), np.lexsort(back.coord.T)
    np.testing.assert_array_equal(back.coord[back_order], frame.coord[order])
    np.testing.assert_array_equal(back.extra["ring"][back_order], frame.extra["ring"][order])
    np.testing.assert_allclose(back.extra["time"][back_order], frame.extra["time"][order], atol=1e-8)


def test_random_access_matches_sequential_reading(tmp_path, drive):
    path = write_bag(tmp_path / "run", drive)
    source = open_source(f"bag:{path}:/points")
    assert isinstance(source, BagSource) and len(source) == 3 and source.label_set is None
    for i in (2, 0, -1):
        assert_same_frame(source[i], drive[i])
    assert source[-1].name == "run#2"
    with pytest.raises(IndexError):
        source[3]


def test_random_access_tells_apart_messages_of_one_stamp(tmp_path, drive):
    """Frames without stamps (PCD files, datasets) written into one bag all share stamp 0."""
    source = BagSource(write_bag(tmp_path / "unstamped", [Frame(f.coord, f.strength) for f in drive]), None)
    assert len(source) == 3
    for k in (2, 0, 1):
        np.testing.assert_array_equal(source[k].coord, drive[k].coord)


def test_topic_choice_and_errors(tmp_path, drive):
    single = write_bag(tmp_path / "single", drive[:1])
    ((_, stamp, raw),) = raw_messages(single)
    two = tmp_path / "two"
    with Writer(two, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic in ("/front/points", "/rear/points"):
            writer.write(writer.add_connection(topic, POINTCLOUD2, typestore=ROS2), stamp, raw)
    with pytest.raises(BagError, match=r"name a topic; point topics are \['/front/points', '/rear/points'\]"):
        next(iter_bag_frames(two))
    assert_same_frame(next(iter_bag_frames(two, "/rear/points")), drive[0])
    with pytest.raises(BagError, match="no point topic '/other'"):
        BagSource(single, "/other")
    with pytest.raises(BagError, match="bag not found"):
        next(iter_bag_frames(tmp_path / "absent"))
    (tmp_path / "notes.mcap").write_text("not a bag")
    with pytest.raises(BagError, match="cannot open bag"):
        next(iter_bag_frames(tmp_path / "notes.mcap"))


def test_a_bag_without_pointcloud2_fails_at_once_saying_what_it_holds(tmp_path):
    path = tmp_path / "chatter"
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=ROS2)
        writer.write(
            connection, 1, ROS2.serialize_cdr(ROS2.types["std_msgs/msg/String"](data="hi"), "std_msgs/msg/String")
        )
    expected = (
        r"no sensor_msgs/msg/PointCloud2 \(or velodyne_msgs/msg/VelodyneScan\) topic; "
        r"the bag holds /chatter \(std_msgs/msg/String\)$"
    )
    for read in (lambda: open_source(f"bag:{path}"), lambda: next(iter_bag_frames(path))):
        with pytest.raises(NoPointCloudError, match=expected):
            read()
    assert list_pointcloud_topics(path) == {}
    # a driver's packet bag that rosbags cannot even open (empty serialization format, as recorded by
    # some Nebula versions): its metadata still says what it holds, and it is not "salvaged"
    metadata = path / "metadata.yaml"
    text = metadata.read_text().replace("std_msgs/msg/String", "pandar_msgs/msg/PandarScan")
    metadata.write_text(text.replace("serialization_format: cdr", "serialization_format: ''"))
    with pytest.raises(AnyReaderError, match="Serialization format"):
        AnyReader([path], default_typestore=ROS2).open()
    for read in (lambda: open_source(f"bag:{path}"), lambda: next(iter_bag_frames(path))):
        with pytest.raises(NoPointCloudError, match=r"PandarScan messages are raw sensor packets, not points: decode"):
            read()


def test_cut_mcap_yields_the_frames_before_the_cut(tmp_path, drive):
    full = write_bag(tmp_path / "full", drive * 3, spacing_ns=10**9)
    data = next(full.glob("*.mcap")).read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames = iter_bag_frames(cut)
    read = list(frames)
    assert 0 < len(read) < 9 and frames.report.frames == len(read)
    for k, back in enumerate(read):
        assert_same_frame(back, drive[k % 3])
    assert "read front to back: file ends inside a record" in frames.report.truncated
    assert list_pointcloud_topics(cut) == {"/points": len(read)}
    with pytest.raises(BagError, match="front to back"):
        BagSource(cut)


def test_db3_without_metadata_or_cut_yields_its_frames(tmp_path, drive):
    path = write_bag(tmp_path / "run", drive * 3, fmt="db3", spacing_ns=10**9)
    (path / "metadata.yaml").rename(tmp_path / "metadata.yaml")  # a killed recorder writes none
    frames = iter_bag_frames(path)  # its one storage file opens on its own, indexed
    assert len(list(frames)) == 9 and frames.report.truncated is None
    assert_same_frame(BagSource(path)[4], drive[1])
    (tmp_path / "metadata.yaml").rename(path / "metadata.yaml")
    db3 = next(path.glob("*.db3"))
    data = db3.read_bytes()
    db3.write_bytes(data[: int(len(data) * 0.6)])
    frames = iter_bag_frames(path)
    read = list(frames)
    assert 3 <= len(read) < 9  # each message is ~1/9 of the file
    for k, back in enumerate(read):
        assert_same_frame(back, drive[k % 3])
    assert "SQLite" in frames.report.truncated


def ros1_record(fields: dict[str, bytes], body: bytes) -> bytes:
    """One ROS 1 bag record: header length, `name=value` fields, body length, body."""
    header = b"".join(struct.pack("<I", len(k) + 1 + len(v)) + k.encode() + b"=" + v for k, v in fields.items())
    return struct.pack("<I", len(header)) + header + struct.pack("<I", len(body)) + body


def test_cut_ros1_bag_yields_the_frames_before_the_cut(tmp_path, drive):
    complete = write_bag(tmp_path / "complete.bag", drive * 2, fmt="bag1", spacing_ns=10**9)
    data = complete.read_bytes()
    cut = tmp_path / "cut.bag"
    cut.write_bytes(data[: int(len(data) * 0.9)])  # the index at the end is gone, and part of the last chunk
    frames = iter_bag_frames(cut)
    read = list(frames)
    assert 0 < len(read) < 6 and "read front to back: file ends inside a record" in frames.report.truncated
    for k, back in enumerate(read):
        assert_same_frame(back, drive[k % 3])
        assert back.stamp_ns == drive[k % 3].stamp_ns + k * 10**9
    assert list_pointcloud_topics(cut) == {"/points": len(read)}


def test_ros1_messages_without_their_connection_record_are_reported(tmp_path, drive):
    """A bag whose first chunk (holding the connection record) is lost: nothing can be decoded."""
    with AnyReader([write_bag(tmp_path / "complete.bag", drive, fmt="bag1")]) as reader:
        raws = [bytes(raw) for _, _, raw in reader.messages()]
    time = struct.pack("<II", 1, 0)
    records = b"".join(ros1_record({"op": b"\x02", "conn": bytes(4), "time": time}, raw) for raw in raws)
    chunk = ros1_record({"op": b"\x05", "compression": b"none", "size": struct.pack("<I", len(records))}, records)
    header = ros1_record({"op": b"\x03", "index_pos": bytes(8), "conn_count": bytes(4), "chunk_count": bytes(4)}, b"")
    orphan = tmp_path / "orphan.bag"
    orphan.write_bytes(b"#ROSBAG V2.0\n" + header + chunk)
    with pytest.raises(BagError, match=r"no PointCloud2 message is left \(3 messages lost their connection record"):
        next(iter_bag_frames(orphan))


def test_bad_messages_between_good_ones_are_skipped_and_counted(tmp_path, drive):
    ((_, stamp, raw),) = raw_messages(write_bag(tmp_path / "good", drive[:1]))
    msg = ROS2.deserialize_cdr(raw, POINTCLOUD2)
    short = ROS2.types[POINTCLOUD2](**{**msg.__dict__, "data": msg.data[:100]})
    path = tmp_path / "bad"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/points", POINTCLOUD2, typestore=ROS2)
        writer.write(connection, stamp, raw)
        writer.write(connection, stamp + 1, ROS2.serialize_cdr(short, POINTCLOUD2))
        writer.write(connection, stamp + 2, b"\x00\x01garbage")
        writer.write(connection, stamp + 3, raw)
    frames = iter_bag_frames(path)
    assert [f.name for f in frames] == ["bad#0", "bad#3"]
    assert frames.report.skipped == {"malformed PointCloud2": 1, "undecodable message": 1}
    assert "message 1: data has 100 bytes" in frames.report.first_error["malformed PointCloud2"]
    source = SkippingSource(open_source(f"bag:{path}"))
    assert [source[i] is None for i in range(len(source))] == [False, True, True, False]
    assert source.skipped == {"PointCloudError": 1, "BagError": 1}
    assert_same_frame(source[3], drive[0])


def test_the_typestores_are_built_once():
    """Registering message types costs ~0.1 s; random access opens the bag once per frame."""
    from sonata_model.io.bags import _typestore

    assert _typestore() is _typestore() and _typestore(ros1=True) is _typestore(ros1=True)
    assert "velodyne_msgs/msg/VelodyneScan" in _typestore().types
