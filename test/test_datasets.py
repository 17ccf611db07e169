"""Dataset readers and writers: values read back equal, specs parse, bad files fail with their name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sonata_model.io.datasets import DatasetError, FrameFolder, FrameFolderWriter, write_kitti
from sonata_model.io.sources import SkippingSource, SourceSpecError, open_source, parse_spec
from sonata_model.synth.drive import generate_drive


@pytest.fixture(scope="module")
def drive():
    return list(generate_drive("vlp16", frames=2, seed=3))


def test_semantic_kitti_round_trip_with_learning_map(tmp_path, drive):
    write_kitti(tmp_path, "04", iter(drive))
    source = open_source(f"kitti:{tmp_path}:04")
    assert len(source) == 2 and source.label_set.name == "semantic_kitti"
    frame = source[1]
    np.testing.assert_array_equal(frame.coord, drive[1].coord)
    np.testing.assert_allclose(frame.strength, drive[1].strength)
    np.testing.assert_allclose(frame.pose, drive[1].pose, atol=1e-6)
    # synthetic ids written as raw ids, then mapped through SemanticKITTI's map: raw 0 (road) -> ignore
    assert (frame.segment[drive[1].segment == 0] == -1).all()
    np.testing.assert_array_equal(frame.instance, drive[1].instance)


def test_kitti_bad_files_name_the_file(tmp_path, drive):
    write_kitti(tmp_path, "00", iter(drive[:1]))
    scan = tmp_path / "sequences/00/velodyne/000000.bin"
    scan.write_bytes(scan.read_bytes()[:-4])
    with pytest.raises(DatasetError, match=r"000000\.bin"):
        open_source(f"kitti:{tmp_path}")[0]
    with pytest.raises(DatasetError, match=r"sequences \['07'\] not found"):
        open_source(f"kitti:{tmp_path}:07")


def test_nuscenes_lidarseg_tables_pair_scans_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "samples/LIDAR_TOP").mkdir(parents=True)
    (tmp_path / "lidarseg/v1.0-mini").mkdir(parents=True)
    (tmp_path / "v1.0-mini").mkdir()
    points = np.c_[rng.normal(size=(50, 3)), rng.uniform(0, 255, 50), rng.integers(0, 32, 50)].astype(np.float32)
    points.tofile(tmp_path / "samples/LIDAR_TOP/scan0.pcd.bin")
    labels = rng.integers(0, 32, 50).astype(np.uint8)
    labels.tofile(tmp_path / "lidarseg/v1.0-mini/tok0_lidarseg.bin")
    (tmp_path / "v1.0-mini/sample_data.json").write_text(
        json.dumps([{"token": "tok0", "filename": "samples/LIDAR_TOP/scan0.pcd.bin"}])
    )
    (tmp_path / "v1.0-mini/lidarseg.json").write_text(
        json.dumps([{"sample_data_token": "tok0", "filename": "lidarseg/v1.0-mini/tok0_lidarseg.bin"}])
    )
    source = open_source(f"nuscenes:{tmp_path}:v1.0-mini")
    frame = source[0]
    np.testing.assert_array_equal(frame.coord, points[:, :3])
    np.testing.assert_allclose(frame.strength, points[:, 3] / 255, rtol=1e-6)
    np.testing.assert_array_equal(frame.segment, source.label_set.map_raw(labels))


def test_frame_folders_are_atomic_resumable_and_checked(tmp_path, drive):
    writer = FrameFolderWriter(tmp_path, label_set="synthetic")
    assert writer.write(drive[0]) is True
    assert writer.write(drive[0]) is False  # already there: resume skips it
    writer.write(drive[1])
    (tmp_path / ".000009.abandoned").mkdir()  # what an interrupted write leaves: ignored
    writer.finish()
    source = open_source(f"frames:{tmp_path}")
    assert len(source) == 2 and source.label_set.name == "synthetic"
    for original, back in zip(drive, (source[0], source[1]), strict=True):
        np.testing.assert_array_equal(back.coord, original.coord)
        np.testing.assert_array_equal(back.segment, original.segment)
        np.testing.assert_array_equal(back.pose, original.pose)
    np.save(tmp_path / drive[1].name / "segment.npy", np.zeros(3, np.int32))
    with pytest.raises(DatasetError, match=r"segment.npy: shape \(3,\)"):
        FrameFolder(tmp_path)[1]
    skipping = SkippingSource(open_source(f"frames:{tmp_path}"))
    assert skipping[1] is None and skipping[0] is not None and skipping.skipped == {"DatasetError": 1}


def test_spec_parsing():
    assert parse_spec("bag:/data/run1.mcap:/points") == ("bag", "/data/run1.mcap", "/points")
    assert parse_spec("bag:/data/run1.mcap") == ("bag", "/data/run1.mcap", None)
    assert parse_spec("kitti:/d/semkitti:00,01") == ("kitti", "/d/semkitti", "00,01")
    assert parse_spec("nuscenes:/d/nus:v1.0-mini") == ("nuscenes", "/d/nus", "v1.0-mini")
    assert parse_spec("frames:/d/x:y") == ("frames", "/d/x:y", None)
    for bad in ("bag", "tiff:/x", "frames:"):
        with pytest.raises(SourceSpecError, match="KIND:PATH"):
            parse_spec(bad)
