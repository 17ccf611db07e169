"""Dataset readers and writers: values read back equal, specs parse, bad files fail naming the file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sonata_model.io.datasets import DatasetError, FrameFolder, FrameFolderWriter, write_kitti
from sonata_model.io.frame import Frame
from sonata_model.io.labels import load_label_set
from sonata_model.io.ply import PlyError
from sonata_model.io.scannet import vertex_normals
from sonata_model.io.sources import SkippingSource, SourceSpecError, open_source, parse_spec
from sonata_model.synth.drive import generate_drive


@pytest.fixture(scope="module")
def drive():
    frames = list(generate_drive("vlp16", frames=2, seed=3))
    segment = frames[1].segment.copy()
    segment[::7] = -1  # some unlabelled points
    frames[1] = replace(frames[1], segment=segment)
    return frames


def test_semantic_kitti_round_trip_of_the_synthetic_world(tmp_path, drive):
    assert write_kitti(tmp_path, "04", iter(drive)) == 2
    source = open_source(f"kitti:{tmp_path}:seq04")
    assert len(source) == 2 and source.label_set.name == "synthetic"
    for back, original in zip((source[0], source[1]), drive, strict=True):
        np.testing.assert_array_equal(back.coord, original.coord)
        np.testing.assert_array_equal(back.strength, original.strength)
        np.testing.assert_array_equal(back.segment, original.segment)  # ignore (-1) included
        np.testing.assert_array_equal(back.instance, original.instance)
        np.testing.assert_array_equal(back.pose, original.pose)
    assert source[1].name == "04/000001"


def test_semantic_kitti_official_ids_and_camera_frame_poses(tmp_path):
    labels = load_label_set("semantic_kitti")
    car, road = labels.names.index("car"), labels.names.index("road")
    frame = Frame(
        coord=np.arange(12, dtype=np.float32).reshape(4, 3),
        strength=np.array([0.0, 0.25, 0.5, 1.0], np.float32),
        segment=np.array([road, car, -1, car], np.int32),
        instance=np.array([0, 7, 0, 9], np.int32),
    )
    write_kitti(tmp_path, "00", [frame], label_set=labels)
    raw = np.fromfile(tmp_path / "sequences/00/labels/000000.label", dtype=np.uint32)
    np.testing.assert_array_equal(raw & 0xFFFF, [40, 10, 0, 10])  # road, car, unlabeled
    np.testing.assert_array_equal(raw >> 16, [0, 7, 0, 9])
    # a recorded label file uses other raw ids of the same classes: moving-car, lane-marking, other-structure
    np.array([252 | 3 << 16, 60, 52, 0], np.uint32).tofile(tmp_path / "sequences/00/labels/000000.label")
    # poses.txt is in the camera frame; calib.txt's Tr (velodyne -> camera) turns it into velodyne poses
    velo_pose = np.array([[0, -1, 0, 5.0], [1, 0, 0, -2.0], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    tr = np.array([[0, -1, 0, 0.1], [0, 0, -1, -0.2], [1, 0, 0, 0.3], [0, 0, 0, 1]], dtype=np.float64)
    camera_pose = tr @ velo_pose @ np.linalg.inv(tr)
    np.savetxt(tmp_path / "sequences/00/poses.txt", camera_pose[:3].reshape(1, 12))
    (tmp_path / "sequences/00/calib.txt").write_text(
        "P0: " + " ".join(["0"] * 12) + "\nTr: " + " ".join(map(str, tr[:3].reshape(-1))) + "\n"
    )
    back = open_source(f"kitti:{tmp_path}", label_set="semantic_kitti")[0]
    np.testing.assert_array_equal(back.segment, [car, road, -1, -1])
    np.testing.assert_array_equal(back.instance, [3, 0, 0, 0])
    np.testing.assert_allclose(back.pose, velo_pose, atol=1e-12)


def test_kitti_bad_files_name_the_file_and_problem(tmp_path, drive):
    write_kitti(tmp_path, "00", drive)
    scan = tmp_path / "sequences/00/velodyne/000000.bin"
    scan.write_bytes(scan.read_bytes()[:-4])
    source = open_source(f"kitti:{tmp_path}")
    with pytest.raises(DatasetError, match=r"000000\.bin: \d+ bytes is not a whole number of \(x, y, z"):
        source[0]
    poses = tmp_path / "sequences/00/poses.txt"
    poses.write_text(poses.read_text().splitlines()[0] + "\n")
    source = open_source(f"kitti:{tmp_path}")  # poses are read on opening
    with pytest.raises(DatasetError, match=r"poses\.txt: 1 poses, none for 000001\.bin"):
        source[1]
    labels = tmp_path / "sequences/00/labels/000001.label"
    labels.write_bytes(labels.read_bytes()[:-8])
    with pytest.raises(DatasetError, match=rf"000001\.label: {drive[1].num_points - 2} labels for"):
        source[1]
    with pytest.raises(DatasetError, match=r"sequences \['07'\] not found \(available: \['00'\]\)"):
        open_source(f"kitti:{tmp_path}:07")
    with pytest.raises(DatasetError, match=r"nowhere/sequences: missing"):
        open_source(f"kitti:{tmp_path}/nowhere")
    (tmp_path / "label_set.txt").write_text("no_such_set\n")
    with pytest.raises(DatasetError, match=r"label_set\.txt: label set 'no_such_set' not found"):
        open_source(f"kitti:{tmp_path}")


def write_nuscenes(root, points, labels):
    """A format-true nuScenes tree: scan, lidarseg label file and the two devkit tables that pair them."""
    (root / "samples/LIDAR_TOP").mkdir(parents=True)
    (root / "lidarseg/v1.0-mini").mkdir(parents=True)
    (root / "v1.0-mini").mkdir()
    points.tofile(root / "samples/LIDAR_TOP/scan0.pcd.bin")
    labels.tofile(root / "lidarseg/v1.0-mini/tok0_lidarseg.bin")
    sample_data = [
        {"token": "tok0", "filename": "samples/LIDAR_TOP/scan0.pcd.bin", "timestamp": 1533151603547590},
        {"token": "cam0", "filename": "samples/CAM_FRONT/img0.jpg", "timestamp": 1533151603512404},
    ]
    (root / "v1.0-mini/sample_data.json").write_text(json.dumps(sample_data))
    lidarseg = [{"token": "ls0", "sample_data_token": "tok0", "filename": "lidarseg/v1.0-mini/tok0_lidarseg.bin"}]
    (root / "v1.0-mini/lidarseg.json").write_text(json.dumps(lidarseg))


def test_nuscenes_lidarseg_tables_pair_scans_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    points = np.c_[rng.normal(size=(50, 3)), rng.uniform(0, 255, 50), rng.integers(0, 32, 50)].astype(np.float32)
    labels = np.r_[2, 17, 24, 0, rng.integers(0, 32, 46)].astype(np.uint8)
    write_nuscenes(tmp_path, points, labels)
    source = open_source(f"nuscenes:{tmp_path}:v1.0-mini")
    assert len(source) == 1 and source.label_set.name == "nuscenes"
    frame = source[0]
    np.testing.assert_array_equal(frame.coord, points[:, :3])
    np.testing.assert_allclose(frame.strength, points[:, 3] / 255, rtol=1e-6)
    np.testing.assert_array_equal(frame.extra["ring"], points[:, 4])
    names = source.label_set.names
    assert [names[t] for t in frame.segment[:3]] == ["pedestrian", "car", "driveable_surface"]
    assert frame.segment[3] == -1  # noise
    assert frame.stamp_ns == 1533151603547590000 and frame.name == "scan0.pcd.bin"
    (tmp_path / "lidarseg/v1.0-mini/tok0_lidarseg.bin").write_bytes(labels[:-1].tobytes())
    with pytest.raises(DatasetError, match=r"tok0_lidarseg\.bin: 49 labels for 50 points"):
        source[0]
    sample_data = json.loads((tmp_path / "v1.0-mini/sample_data.json").read_text())
    sample_data[0]["timestamp"] = "1533151603.547590"  # seconds as text: not the devkit's integer microseconds
    (tmp_path / "v1.0-mini/sample_data.json").write_text(json.dumps(sample_data))
    with pytest.raises(DatasetError, match=r"sample_data\.json: timestamp '1533151603\.547590' is not microseconds"):
        open_source(f"nuscenes:{tmp_path}:v1.0-mini")
    (tmp_path / "v1.0-mini/sample_data.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"lidarseg\.json: token tok0 not in sample_data"):
        open_source(f"nuscenes:{tmp_path}:v1.0-mini")
    with pytest.raises(DatasetError, match=r"v1.0-trainval/lidarseg\.json: cannot read"):
        open_source(f"nuscenes:{tmp_path}")


def test_frame_folders_read_back_equal_and_resume(tmp_path, drive):
    writer = FrameFolderWriter(tmp_path, label_set="synthetic")
    assert writer.write(drive[0]) is True
    assert writer.write(drive[0]) is False  # already there: resume skips it
    writer.write(replace(drive[1], name="seq/000001"))  # names may hold sub-folders
    writer.finish()
    source = open_source(f"frames:{tmp_path}")
    assert len(source) == 2 and source.label_set.name == "synthetic"
    assert json.loads((tmp_path / "index.json").read_text())["frames"] == ["000000", "seq/000001"]
    for back, original in zip((source[0], source[1]), drive, strict=True):
        for key in ("coord", "strength", "segment", "instance", "pose"):
            np.testing.assert_array_equal(getattr(back, key), getattr(original, key))
        assert (back.stamp_ns, back.frame_id) == (original.stamp_ns, original.frame_id)
    assert isinstance(source[0].coord, np.memmap)
    assert open_source(f"frames:{tmp_path}", label_set="semantic_kitti").label_set.name == "semantic_kitti"
    with pytest.raises(DatasetError, match="cannot be a relative folder path"):
        writer.write(replace(drive[0], name="../escape"))


def test_an_interrupted_frame_write_leaves_no_frame(tmp_path, drive, monkeypatch):
    saved, real_save = [], np.save

    def save_then_interrupt(path, array):
        if len(saved) == 2:
            raise KeyboardInterrupt  # the user stops an extraction mid-frame
        saved.append(path)
        real_save(path, array)

    with monkeypatch.context() as patch:
        patch.setattr(np, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            FrameFolderWriter(tmp_path).write(drive[0])
    assert not (tmp_path / drive[0].name).exists() and list(tmp_path.iterdir()) == []
    writer = FrameFolderWriter(tmp_path)
    assert writer.write(drive[0]) is True
    writer.finish()
    np.testing.assert_array_equal(FrameFolder(tmp_path)[0].segment, drive[0].segment)


def test_frame_folder_bad_files_name_the_file_and_are_skipped_for_training(tmp_path, drive):
    writer = FrameFolderWriter(tmp_path)
    for frame in drive:
        writer.write(frame)
    writer.finish()
    folder = FrameFolder(tmp_path)
    second = tmp_path / drive[1].name
    np.save(second / "segment.npy", np.zeros(3, np.int32))
    with pytest.raises(DatasetError, match=rf"segment\.npy: shape \(3,\), expected \({drive[1].num_points}\)"):
        folder[1]
    np.save(second / "segment.npy", np.zeros(drive[1].num_points, np.int64))
    with pytest.raises(DatasetError, match=r"segment\.npy: dtype int64, expected int32"):
        folder[1]
    np.save(second / "coord.npy", np.zeros((5, 2), np.float32))
    with pytest.raises(DatasetError, match=r"coord\.npy: shape \(5, 2\), expected \(N, 3\)"):
        folder[1]
    (tmp_path / drive[0].name / "coord.npy").unlink()
    with pytest.raises(DatasetError, match=r"000000/coord\.npy: missing"):
        folder[0]
    skipping = SkippingSource(open_source(f"frames:{tmp_path}"))
    assert [skipping[i] for i in range(len(skipping))] == [None, None]
    assert skipping.skipped == {"DatasetError": 2}
    (tmp_path / "index.json").write_text('{"frames": 3}')
    with pytest.raises(DatasetError, match=r"index\.json: malformed"):
        FrameFolder(tmp_path)


def test_spec_parsing():
    assert parse_spec("bag:/data/run1.mcap:/points") == ("bag", "/data/run1.mcap", "/points")
    assert parse_spec("bag:/data/run1.mcap") == ("bag", "/data/run1.mcap", None)
    assert parse_spec("kitti:/d/semkitti:00,01") == ("kitti", "/d/semkitti", "00,01")
    assert parse_spec("kitti:/d/semkitti:seq00,01") == ("kitti", "/d/semkitti", "seq00,01")
    assert parse_spec("kitti:/d/semkitti") == ("kitti", "/d/semkitti", None)
    assert parse_spec("nuscenes:/d/nus:v1.0-mini") == ("nuscenes", "/d/nus", "v1.0-mini")
    assert parse_spec("frames:/d/x:y") == ("frames", "/d/x:y", None)
    assert parse_spec("pcd:/d/x:y.pcd") == ("pcd", "/d/x:y.pcd", None)
    for bad in ("bag", "tiff:/x", "frames:", "/data/run1.mcap"):
        with pytest.raises(SourceSpecError, match="KIND:PATH"):
            parse_spec(bad)


def pointcept_scene(folder, n: int, seed: int, labels: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One scene in Pointcept's preprocessed layout (its dtypes: float32, uint8, int64 labels)."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    arrays = {
        "coord": rng.uniform(0, 5, (n, 3)).astype(np.float32),
        "color": rng.integers(0, 256, (n, 3)).astype(np.uint8),
        "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True),
        **(labels or {}),
    }
    folder.mkdir(parents=True)
    for key, value in arrays.items():
        np.save(folder / f"{key}.npy", value)
    return arrays


def test_pointcept_scannet_scenes_read_with_their_labels_and_splits(tmp_path):
    labelled = {
        "segment20": np.array([-1, 0, 19, 5] * 25, dtype=np.int64),
        "segment200": np.arange(100, dtype=np.int64),
        "instance": np.array([-1, 0, 3, 3] * 25, dtype=np.int64),
    }
    train = pointcept_scene(tmp_path / "train" / "scene0000_00", 100, 0, labelled)
    pointcept_scene(tmp_path / "val" / "scene0011_00", 80, 1, labelled | {k: v[:80] for k, v in labelled.items()})
    pointcept_scene(tmp_path / "test" / "scene0707_00", 60, 2)  # the test split has no labels

    source = open_source(f"pointcept:{tmp_path}:train")
    assert len(source) == 1 and source.label_set.name == "scannet20"
    frame = source[0]
    assert frame.name == "train/scene0000_00"
    np.testing.assert_array_equal(frame.coord, train["coord"])
    np.testing.assert_array_equal(frame.color, train["color"])
    np.testing.assert_array_equal(frame.normal, train["normal"])
    assert frame.segment.dtype == np.int32
    np.testing.assert_array_equal(frame.segment, labelled["segment20"])  # train ids already: not remapped
    np.testing.assert_array_equal(frame.instance, labelled["instance"] + 1)  # 0 = no instance here

    every = open_source(f"pointcept:{tmp_path}")
    assert [f.name for f in (every[i] for i in range(len(every)))] == [
        "test/scene0707_00",
        "train/scene0000_00",
        "val/scene0011_00",
    ]
    assert every[0].segment is None and len(every[2].segment) == 80
    two = open_source(f"pointcept:{tmp_path}:train,val")
    assert [two[i].name for i in range(len(two))] == ["train/scene0000_00", "val/scene0011_00"]


def test_pointcept_s3dis_like_scenes_need_their_label_set(tmp_path):
    segment = np.array([0, 12, 3, -1] * 10, dtype=np.int16)
    pointcept_scene(tmp_path / "Area_5" / "office_1", 40, 3, {"segment": segment})
    assert open_source(f"pointcept:{tmp_path}:Area_5")[0].segment is None  # no label set: unlabelled
    labels = load_label_set("scannet20")  # 20 classes: ids 0..19 are in range
    labels = replace(labels, name="s3dis_like")
    frame = open_source(f"pointcept:{tmp_path}:Area_5", label_set=labels)[0]
    np.testing.assert_array_equal(frame.segment, segment)


def test_pointcept_bad_files_name_the_file_and_problem(tmp_path):
    scene = tmp_path / "train" / "scene0000_00"
    pointcept_scene(scene, 50, 0, {"segment20": np.full(50, 20, dtype=np.int64)})
    source = open_source(f"pointcept:{tmp_path}")
    with pytest.raises(DatasetError, match=r"segment20\.npy: label 20 outside \[-1, 20\)"):
        source[0]
    np.save(scene / "segment20.npy", np.zeros(50, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"segment20\.npy: dtype float32, expected an integer type"):
        source[0]
    np.save(scene / "segment20.npy", np.zeros(49, dtype=np.int64))
    with pytest.raises(DatasetError, match=r"segment20\.npy: shape \(49,\), expected \(50\)"):
        source[0]
    np.save(scene / "coord.npy", np.zeros((50, 3), dtype=np.float64))
    with pytest.raises(DatasetError, match=r"coord\.npy: dtype float64, expected float32"):
        source[0]
    with pytest.raises(DatasetError, match="no such split folder"):
        open_source(f"pointcept:{tmp_path}:val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no scene folder"):
        open_source(f"pointcept:{tmp_path / 'empty'}")
    assert parse_spec(f"pointcept:{tmp_path}:train,val") == ("pointcept", str(tmp_path), "train,val")


def write_ply(path, vertex: dict[str, np.ndarray], faces: np.ndarray | None = None, order: str = "<") -> None:
    """A binary PLY as ScanNet writes it: vertex scalars, then uchar-counted int triangles."""
    names = {"f4": "float", "u1": "uchar", "u2": "ushort", "i4": "int"}
    dtype = np.dtype([(k, order + v.dtype.str[1:]) for k, v in vertex.items()])
    records = np.empty(len(next(iter(vertex.values()))), dtype)
    for key, value in vertex.items():
        records[key] = value
    fmt = "binary_little_endian" if order == "<" else "binary_big_endian"
    header = ["ply", f"format {fmt} 1.0", "comment test", f"element vertex {len(records)}"]
    header += [f"property {names[v.dtype.str[1:]]} {k}" for k, v in vertex.items()]
    body = records.tobytes()
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
        face_records = np.empty(len(faces), np.dtype([("n", "u1"), ("i", order + "i4", (faces.shape[1],))]))
        face_records["n"], face_records["i"] = faces.shape[1], faces
        body += face_records.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join([*header, "end_header"]) + "\n").encode() + body)


def square_mesh() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A unit square in the z = 0 plane (two counter-clockwise triangles) and a lone vertex above it."""
    coord = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 2]], np.float32)
    vertex = {"x": coord[:, 0], "y": coord[:, 1], "z": coord[:, 2]}
    vertex |= {c: np.arange(5, dtype=np.uint8) * (i + 1) for i, c in enumerate(("red", "green", "blue", "alpha"))}
    return vertex, np.array([[0, 1, 2], [0, 2, 3]])


def test_a_vertex_normal_weights_its_triangles_by_area():
    """A vertex shared by a big floor triangle and a small wall triangle: its normal leans to the floor by
    the ratio of their areas (an unweighted mean of the two unit normals would be at 45 degrees)."""
    coord = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 0], [0, 0, 1], [0, -1, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 4, 3]])  # floor, area 8, normal +z; wall in x = 0, area 0.5, normal -x
    normal = vertex_normals(coord, faces, Path("mesh.ply"))
    expected = np.array([-0.5, 0.0, 8.0]) / np.hypot(0.5, 8.0)
    np.testing.assert_allclose(normal[0], expected, atol=1e-6)
    np.testing.assert_allclose(normal[1], [0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("order", ["<", ">"])
def test_scannet_meshes_read_as_points_with_normals_and_mapped_labels(tmp_path, order):
    vertex, faces = square_mesh()
    scene = tmp_path / "scans" / "scene0000_00"
    write_ply(scene / "scene0000_00_vh_clean_2.ply", vertex, faces, order)
    nyu40 = np.array([1, 2, 40, 39, 33], np.uint16)  # wall, floor, otherprop (not a class), otherfurniture, toilet
    write_ply(scene / "scene0000_00_vh_clean_2.labels.ply", {**vertex, "label": nyu40}, faces, order)
    write_ply(tmp_path / "scans_test" / "scene0707_00" / "scene0707_00_vh_clean_2.ply", vertex, faces, order)

    source = open_source(f"scannet:{tmp_path}")
    assert len(source) == 2 and source.label_set.name == "scannet20"
    frame = source[0]
    assert frame.name == "scene0000_00"
    np.testing.assert_array_equal(frame.coord[:, 0], vertex["x"])
    np.testing.assert_array_equal(frame.color[:, 2], vertex["blue"])
    np.testing.assert_allclose(frame.normal[:4], np.tile([0, 0, 1], (4, 1)), atol=1e-6)
    np.testing.assert_array_equal(frame.normal[4], [0, 0, 0])  # in no triangle
    np.testing.assert_array_equal(frame.segment, [0, 1, -1, 19, 16])
    assert source[1].segment is None and source[1].name == "scene0707_00"


def test_scannet_bad_meshes_name_the_file_and_problem(tmp_path):
    vertex, faces = square_mesh()
    mesh = tmp_path / "scans" / "scene0000_00" / "scene0000_00_vh_clean_2.ply"
    write_ply(mesh, vertex, faces)
    source = open_source(f"scannet:{tmp_path}")
    mesh.write_bytes(mesh.read_bytes()[:-10])
    with pytest.raises(PlyError, match=r"vh_clean_2\.ply: truncated: 2 face records"):
        source[0]
    write_ply(mesh, vertex, np.array([[0, 1, 2, 3]]))
    with pytest.raises(PlyError, match="faces must be triangles"):
        source[0]
    write_ply(mesh, vertex, np.array([[0, 1, 7]]))
    with pytest.raises(DatasetError, match=r"a face names a vertex outside 0\.\.4"):
        source[0]
    mesh.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(PlyError, match=r"format 'format ascii 1\.0' not supported"):
        source[0]
    mesh.write_bytes(b"not a mesh")
    with pytest.raises(PlyError, match="not a PLY file"):
        source[0]
    with pytest.raises(DatasetError, match="no ScanNet mesh"):
        open_source(f"scannet:{tmp_path / 'scans' / 'nothing'}")
