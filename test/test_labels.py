"""Label sets load by name, map raw ids like the datasets' official maps, and refuse bad files."""

from __future__ import annotations

import numpy as np
import pytest

from sonata_model.io.labels import LabelSetError, available_label_sets, load_label_set


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
    assert nus.map_raw(np.array([0, 31])).tolist() == [-1, -1]
    scannet = load_label_set("scannet20")
    assert scannet.names[0] == "wall" and scannet.names[-1] == "otherfurniture"
    assert scannet.map_raw(np.array([39, 13])).tolist() == [19, -1]


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
    with pytest.raises(LabelSetError, match="available"):
        load_label_set("no_such_set")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nclasses: [{name: a, color: [1, 2]}]\n")
    with pytest.raises(LabelSetError, match="colour"):
        load_label_set(bad)
    bad.write_text("name: bad\nclasses: [{name: a, color: [1, 2, 3]}]\nlearning_map: {5: 3}\n")
    with pytest.raises(LabelSetError, match="learning_map"):
        load_label_set(bad)
