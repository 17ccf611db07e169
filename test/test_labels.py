"""Label sets load by name, map raw ids like the datasets' official maps, and refuse bad files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import sonata_model
from sonata_model.io.labels import LABEL_SETS, LabelSetError, available_label_sets, load_label_set


def test_shipped_label_sets_load_with_expected_sizes():
    sizes = {name: load_label_set(name).num_classes for name in available_label_sets()}
    assert sizes == {"nuscenes": 16, "scannet20": 20, "semantic_kitti": 19, "synthetic": 13}


def test_semantic_kitti_learning_map():
    labels = load_label_set("semantic_kitti")
    raw = np.array([0, 10, 252, 40, 60, 44, 52, 81, 259, 1000])
    train = labels.map_raw(raw)
    names = [labels.names[t] if t >= 0 else None for t in train]
    assert names == [None, "car", "car", "road", "road", "parking", None, "traffic-sign", "other-vehicle", None]


def test_nuscenes_and_scannet_maps():
    nus = load_label_set("nuscenes")
    assert [nus.names[t] for t in nus.map_raw(np.array([2, 17, 24, 30]))] == [
        "pedestrian",
        "car",
        "driveable_surface",
        "vegetation",
    ]
    assert nus.map_raw(np.array([0, 31, 200])).tolist() == [-1, -1, -1]
    scannet = load_label_set("scannet20")
    assert scannet.names == (
        "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
        "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture",
    )  # fmt: skip
    assert scannet.map_raw(np.array([39, 13, 1, 2])).tolist() == [19, -1, 0, 1]


def test_synthetic_set_keeps_raw_ids_as_train_ids():
    labels = load_label_set("synthetic")
    assert labels.names == (
        "road", "sidewalk", "terrain", "building", "fence", "vegetation", "trunk", "pole", "traffic-sign", "car",
        "truck", "person", "bicyclist",
    )  # fmt: skip
    assert labels.learning_map is None
    assert labels.map_raw(np.array([0, 12, 13, 65535], np.uint32)).tolist() == [0, 12, -1, -1]
    train = np.array([0, 12, -1, 5], np.int32)
    np.testing.assert_array_equal(labels.map_raw(labels.raw_ids(train)), train)


def test_raw_ids_invert_the_learning_map():
    labels = load_label_set("semantic_kitti")
    train = np.arange(-1, labels.num_classes)
    raw = labels.raw_ids(train)
    assert raw[:3].tolist() == [0, 10, 11]  # unlabeled, car, bicycle: the smallest raw id of each class
    np.testing.assert_array_equal(labels.map_raw(raw), train)
    with pytest.raises(ValueError, match=r"train ids \[19\] are neither 0..18 nor ignore_index -1"):
        labels.raw_ids(np.array([3, 19]))
    with pytest.raises(ValueError, match="raw ids must be >= 0"):
        labels.map_raw(np.array([-3]))


def test_palette_gives_grey_for_unknown():
    labels = load_label_set("synthetic")
    palette = labels.palette()
    assert palette.shape == (256, 3)
    assert tuple(palette[0]) == tuple(labels.colors[0]) and tuple(palette[255]) == (128, 128, 128)
    assert len({tuple(c) for c in labels.colors}) == labels.num_classes  # distinct colours


def test_load_by_path_and_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\nclasses: [{name: a, color: [1, 2, 3]}, {name: b, color: [4, 5, 6]}]\n")
    assert load_label_set(good).names == ("a", "b")
    with pytest.raises(LabelSetError, match=r"'no_such_set' not found; available: \['nuscenes', 'scannet20', "):
        load_label_set("no_such_set")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nclasses: [{name: a, color: [1, 2]}]\n")
    with pytest.raises(LabelSetError, match="colour"):
        load_label_set(bad)
    bad.write_text("name: bad\nclasses: [{name: a, color: [1, 2, 3]}]\nlearning_map: {5: 3}\n")
    with pytest.raises(LabelSetError, match=r"learning_map entries \{5: 3\}"):
        load_label_set(bad)
    bad.write_text("name: bad\nclasses: [{name: a, color: [1, 2, 3]}]\nlearning_map: {-2: 0}\n")
    with pytest.raises(LabelSetError, match=r"raw ids must be 0..65535"):
        load_label_set(bad)
    one_class = "name: bad\nclasses: [{name: a, color: [1, 2, 3]}]\n"
    for tail, message in [
        ("learning_map: {car: 0}", "learning_map must map integer raw ids to integer train ids"),
        ("learning_map: [0, 1]", "learning_map must map integer raw ids to integer train ids"),
        ("learning_map: {0: 1.7}", "learning_map must map integer raw ids to integer train ids"),
        ("learning_map: {0: null}", "learning_map must map integer raw ids to integer train ids"),
        ("ignore_index: 255", "ignore_index must be -1"),
    ]:
        bad.write_text(one_class + tail + "\n")
        with pytest.raises(LabelSetError, match=message):
            load_label_set(bad)
    bad.write_text("name: bad\nclasses: [{name: a, color: [1, 2, 3]}, {name: a, color: [4, 5, 6]}]\n")
    with pytest.raises(LabelSetError, match="class names must be distinct"):
        load_label_set(bad)


def test_label_sets_are_package_data_of_the_library_and_no_share_directory_is_searched(tmp_path, monkeypatch):
    """The library finds its sets next to its code (pip, colcon or a checkout alike); a ROS package's
    share directory, under the prefix or the ament index, is never looked at."""
    assert LABEL_SETS.parent == Path(sonata_model.__file__).parent
    assert available_label_sets() == ["nuscenes", "scannet20", "semantic_kitti", "synthetic"]
    share = tmp_path / "share/sonata_ros/config/labels"
    share.mkdir(parents=True)
    (share / "from_share.yaml").write_text("name: from_share\nclasses: [{name: thing, color: [1, 2, 3]}]\n")
    (tmp_path / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (tmp_path / "share/ament_index/resource_index/packages/sonata_ros").touch()
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    with pytest.raises(LabelSetError, match="'from_share' not found"):
        load_label_set("from_share")
    assert load_label_set(share / "from_share.yaml").names == ("thing",)  # a path is always read


def test_translate_maps_classes_by_name_and_ignores_the_rest():
    kitti, synthetic = load_label_set("semantic_kitti"), load_label_set("synthetic")
    train = np.array([kitti.names.index(n) for n in ("road", "bicycle", "car", "trunk")] + [kitti.ignore_index])
    mapped = kitti.translate(train, synthetic)
    assert mapped.tolist() == [synthetic.names.index("road"), -1, synthetic.names.index("car"), 6, -1]
    shared = [n for n in kitti.names if n in synthetic.names]
    assert len(shared) == 13  # every synthetic class has its SemanticKITTI namesake
