"""Bags written with rosbags read back equal; truncated and corrupt bags yield their good frames."""

from __future__ import annotations

import numpy as np
import pytest

from sonata_model.io.bags import BagError, BagWriter, iter_bag_frames, list_pointcloud_topics
from sonata_model.io.frame import Frame
from sonata_model.io.sources import BagSource, SkippingSource, open_source
from sonata_model.synth.drive import generate_drive


@pytest.fixture(scope="module")
def drive():
    return list(generate_drive("vlp16", frames=3, seed=7))


def bag_path(tmp_path, fmt):
    return tmp_path / ("run.bag" if fmt == "bag1" else "run")


@pytest.mark.parametrize("fmt", ["mcap", "db3", "bag1"])
def test_round_trip_in_velodyne_layout(tmp_path, drive, fmt):
    path = bag_path(tmp_path, fmt)
    with BagWriter(path, format=fmt, topic="/velodyne_points", layout="velodyne") as writer:
        for frame in drive:
            writer.write(frame)
    assert list_pointcloud_topics(path) == {"/velodyne_points": len(drive)}
    frames = iter_bag_frames(path)
    read = list(frames)
    assert frames.report.frames == len(drive) and not frames.report.skipped
    for original, back in zip(drive, read, strict=True):
        np.testing.assert_array_equal(back.coord, original.coord)
        np.testing.assert_allclose(back.strength, original.strength, atol=1e-6)
        assert back.stamp_ns == original.stamp_ns and back.frame_id == "lidar"


def test_ouster_layout_is_organized_and_reads_back_the_same_points(tmp_path):
    frame = next(iter(generate_drive("os128", frames=1, seed=1)))
    path = tmp_path / "ouster"
    with BagWriter(path, format="mcap", topic="/ouster/points", layout="ouster") as writer:
        writer.write(frame)
    back = next(iter(iter_bag_frames(path, "/ouster/points")))
    order = np.lexsort(frame.coord.T)
    np.testing.assert_array_equal(back.coord[np.lexsort(back.coord.T)], frame.coord[order])


def test_random_access_source_and_topic_errors(tmp_path, drive):
    path = tmp_path / "run"
    with BagWriter(path, topic="/points") as writer:
        for frame in drive:
            writer.write(frame)
    source = open_source(f"bag:{path}:/points")
    assert isinstance(source, BagSource) and len(source) == 3
    np.testing.assert_array_equal(source[2].coord, drive[2].coord)
    np.testing.assert_array_equal(source[0].coord, drive[0].coord)
    with pytest.raises(BagError, match="no PointCloud2 topic '/other'"):
        list(iter_bag_frames(path, "/other"))
    with pytest.raises(BagError, match="bag not found"):
        list(iter_bag_frames(tmp_path / "absent"))


def test_truncated_mcap_yields_the_good_frames(tmp_path, drive):
    path = tmp_path / "run.mcap"
    with BagWriter(tmp_path / "full", format="mcap", topic="/points") as writer:
        for k, frame in enumerate(drive * 3):
            writer.write(frame, stamp_ns=frame.stamp_ns + k * 10**9)
    mcap = next((tmp_path / "full").glob("*.mcap"))
    data = mcap.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    frames = iter_bag_frames(path)
    read = list(frames)
    assert 0 < len(read) < 9
    assert "recovered by a linear scan" in frames.report.truncated
    np.testing.assert_array_equal(read[0].coord, drive[0].coord)


def test_malformed_message_between_good_ones_is_skipped_and_counted(tmp_path, drive):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types = store.types
    path = tmp_path / "bad"
    good = tmp_path / "good"
    with BagWriter(good, topic="/points") as writer:
        writer.write(drive[0])
    reader_frame = next(iter(iter_bag_frames(good)))
    assert isinstance(reader_frame, Frame)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/points", "sensor_msgs/msg/PointCloud2", typestore=store)
        from rosbags.highlevel import AnyReader

        with AnyReader([good], default_typestore=store) as reader:
            _, stamp, raw = next(reader.messages())
        writer.write(connection, stamp, raw)
        msg = store.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
        short = types["sensor_msgs/msg/PointCloud2"](
            header=msg.header,
            height=1,
            width=msg.width,
            fields=msg.fields,
            is_bigendian=False,
            point_step=msg.point_step,
            row_step=msg.row_step,
            data=msg.data[:100],
            is_dense=False,
        )
        writer.write(connection, stamp + 1, store.serialize_cdr(short, "sensor_msgs/msg/PointCloud2"))
        writer.write(connection, stamp + 2, b"\x00\x01garbage")
        writer.write(connection, stamp + 3, raw)
    frames = iter_bag_frames(path)
    read = list(frames)
    assert len(read) == 2
    assert sum(frames.report.skipped.values()) == 2
    assert any("data has 100 bytes" in reason for reason in frames.report.skipped)
    source = SkippingSource(open_source(f"bag:{path}"))
    assert [f is None for f in (source[i] for i in range(len(source)))] == [False, True, True, False]
    assert sum(source.skipped.values()) == 2
