"""`sonata-segment`: every frame of a recording labelled into a bag, as the node would label it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

import sonata_model as sm
from sonata_model.io.bags import BagWriter
from sonata_model.io.datasets import FrameFolderWriter
from sonata_model.io.frame import Frame
from sonata_model.io.labels import load_label_set
from sonata_model.io.pointcloud2 import structured_view, unpack_rgb
from sonata_model.io.segmentation_cloud import class_ids
from sonata_model.synth.drive import generate_drive
from sonata_model.train import segment
from sonata_model.train.segment import NODE_TOPIC, main

ROS2 = get_typestore(Stores.ROS2_JAZZY)
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny outdoor LiDAR encoder (coord + strength) and a 13-class head fitted under 'synthetic'."""
    directory = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), domain="outdoor")
    encoder = sm.save_encoder(directory / "encoder.pth", sm.SonataEncoder(config))
    head = sm.LinearHead(config.head_channels, 13, list(load_label_set("synthetic").names), "synthetic")
    with torch.no_grad():
        head.seg_head.weight.normal_(0, 1.0)
    return encoder, sm.save_head(directory / "head.pth", head)


@pytest.fixture(scope="module")
def drive():
    """Three VLP-16 sweeps and one cloud 20 m under the sensor (outside the outdoor range: not segmented)."""
    frames = list(generate_drive("vlp16", frames=3, seed=7))
    last = frames[-1]
    below = Frame(last.coord - np.float32([0, 0, 20]), last.strength, stamp_ns=last.stamp_ns + 10**8)
    return [*frames, below]


def labelled_clouds(path) -> list:
    with AnyReader([path], default_typestore=ROS2) as reader:
        assert [c.topic for c in reader.connections] == [NODE_TOPIC]
        return [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]


@pytest.mark.parametrize("fmt", ["mcap", "bag1"])
def test_every_frame_is_written_labelled_as_the_segmenter_labels_it(tmp_path, model, drive, fmt, capsys):
    encoder, head = model
    recording = tmp_path / ("run.bag" if fmt == "bag1" else "run")
    with BagWriter(recording, format=fmt, topic="/points") as writer:
        for frame in drive:
            writer.write(frame)
    out = tmp_path / ("labelled.bag" if fmt == "bag1" else "labelled")
    args = ["--encoder", str(encoder), "--head", str(head), "--data", f"bag:{recording}", "--out", str(out)]
    assert main([*args, "--format", fmt, "--device", "cpu"]) == 0
    report = capsys.readouterr().out
    assert "4 frames written, 0 unreadable skipped, 1 without a point in the model's range" in report

    segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu")
    colours = load_label_set("synthetic").palette()
    written = labelled_clouds(out)
    assert len(written) == len(drive)
    for (time_ns, msg), frame in zip(written, drive, strict=True):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert time_ns == stamp == frame.stamp_ns and msg.header.frame_id == "lidar"
        points = structured_view(msg).reshape(-1)
        assert [f.name for f in msg.fields] == ["x", "y", "z", "class_id", "probability", "rgb"]
        np.testing.assert_array_equal(np.stack([points[a] for a in "xyz"], axis=1), frame.coord)
        if frame is drive[-1]:  # nothing in range: every point unknown
            assert (points["class_id"] == 255).all() and (points["probability"] == 0).all()
            continue
        expected = segmenter(frame.coord, strength=frame.strength)
        np.testing.assert_array_equal(points["class_id"], np.where(expected.labels >= 0, expected.labels, 255))
        np.testing.assert_allclose(points["probability"], expected.probability, atol=1e-6)
        np.testing.assert_array_equal(unpack_rgb(points["rgb"]), colours[points["class_id"]])
        assert len(np.unique(points["class_id"])) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recording.name, out.name])  # no staging left


def test_unstamped_frames_come_10_hz_apart_frames_without_intensity_get_zeros_bad_ones_are_skipped(
    tmp_path, model, drive
):
    encoder, head = model
    folder = FrameFolderWriter(tmp_path / "frames", label_set="synthetic")
    folder.write(Frame(drive[0].coord, drive[0].strength, stamp_ns=0, name="f0"))
    folder.write(Frame(drive[1].coord, None, stamp_ns=0, name="f1"))  # x, y, z only
    folder.finish()
    out = tmp_path / "from_frames"
    labels = load_label_set("synthetic")
    segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu")
    report = segment.segment_recording(segmenter, f"frames:{tmp_path / 'frames'}", out, labels)
    assert report.written == 2 and report.class_points.sum() == sum(f.num_points for f in drive[:2])
    written = labelled_clouds(out)
    assert [t for t, _ in written] == [0, 100_000_000]
    assert report.without_intensity == 1  # labelled with strength 0, as the node does by default
    expected = segmenter(drive[1].coord, strength=np.zeros(drive[1].num_points, np.float32)).labels
    np.testing.assert_array_equal(structured_view(written[1][1])["class_id"].reshape(-1), class_ids(expected))

    recording = tmp_path / "damaged"  # a good cloud, a garbage message, a good cloud
    with BagWriter(tmp_path / "one", topic="/points") as writer:
        writer.write(drive[0])
    with AnyReader([tmp_path / "one"], default_typestore=ROS2) as reader:
        ((_, stamp, raw),) = list(reader.messages())
    with Writer(recording, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/points", POINTCLOUD2, typestore=ROS2)
        for k, payload in enumerate((raw, b"\x00\x01garbage", raw)):
            writer.write(connection, stamp + k, payload)
    report = segment.segment_recording(segmenter, f"bag:{recording}", tmp_path / "out", labels)
    assert (report.written, report.skipped) == (2, 1)


def test_the_first_frames_in_db3_coloured_by_another_label_set(tmp_path, model, drive, capsys):
    encoder, head = model
    recording = tmp_path / "run"
    with BagWriter(recording, topic="/points") as writer:
        for frame in drive[:3]:
            writer.write(frame)
    colours = tmp_path / "mine.yaml"  # the synthetic classes, every one drawn in (k, 2k, 3k)
    synthetic = load_label_set("synthetic").names
    colours.write_text(
        "name: mine\nclasses:\n"
        + "".join(f"  - {{name: {n}, color: [{k}, {2 * k}, {3 * k}]}}\n" for k, n in enumerate(synthetic))
    )
    out = tmp_path / "labelled"
    args = ["--encoder", str(encoder), "--head", str(head), "--data", f"bag:{recording}", "--out", str(out)]
    assert main([*args, "--frames", "2", "--format", "db3", "--label-set", str(colours), "--device", "cpu"]) == 0
    assert next(out.glob("*.db3")).is_file()
    written = labelled_clouds(out)
    assert [t for t, _ in written] == [f.stamp_ns for f in drive[:2]]
    points = structured_view(written[0][1]).reshape(-1)
    k = points["class_id"].astype(np.int64)
    expected = np.where((k < len(synthetic))[:, None], np.stack([k, 2 * k, 3 * k], axis=1), 128)  # 255: grey
    np.testing.assert_array_equal(unpack_rgb(points["rgb"]), expected.astype(np.uint8))
    report = capsys.readouterr().out.splitlines()[2:]  # after the bag's name and the totals
    shares = {line.rsplit(maxsplit=2)[0].strip(): float(line.split()[-2]) for line in report}
    counts = np.bincount(np.concatenate([structured_view(m)["class_id"].ravel() for _, m in written]), minlength=256)
    names = [*synthetic, *[""] * (255 - len(synthetic)), "(not segmented)"]
    assert shares == {n: round(100 * c / counts.sum(), 1) for n, c in zip(names, counts, strict=True) if c}


def test_an_existing_out_is_refused_and_a_failed_run_leaves_no_bag(tmp_path, model, drive, monkeypatch, capsys):
    encoder, head = model
    recording = tmp_path / "run"
    with BagWriter(recording, topic="/points") as writer:
        for frame in drive[:3]:
            writer.write(frame)
    args = ["--encoder", str(encoder), "--head", str(head), "--data", f"bag:{recording}", "--device", "cpu"]
    assert main([*args, "--out", str(recording)]) == 1
    assert "exists: remove it or choose another --out" in capsys.readouterr().err

    calls = []
    original = sm.Segmenter.segment_batch

    def fails_on_the_second_frame(self, clouds):  # an injected failure mid-run (e.g. the process is stopped)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, clouds)

    monkeypatch.setattr(sm.Segmenter, "segment_batch", fails_on_the_second_frame)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path / "labelled")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # neither the bag nor its staging folder


def test_a_head_without_a_label_set_needs_one_named(tmp_path, model, capsys):
    encoder, _ = model
    head = sm.save_head(tmp_path / "bare.pth", sm.LinearHead(sm.load(encoder).config.head_channels, 13))
    args = ["--encoder", str(encoder), "--head", str(head), "--data", f"frames:{tmp_path}", "--out", "o"]
    assert main(args) == 1
    assert "the head names no label set: pass one" in capsys.readouterr().err
