"""Which model and label set the node runs: the configured files, `head: none`, and the label set's
resolution (the parameter, else the head's, else 'synthetic'), with the mismatches named."""

from __future__ import annotations

import pytest

import sonata_model as sm
from sonata_model.io.labels import LabelSetError
from sonata_ros.model_loading import load_model


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    return sm.save_encoder(tmp_path_factory.mktemp("model") / "encoder.pth", sm.SonataEncoder(sm.get_config("tiny")))


def head_file(directory, encoder_file, classes: int, label_set: str | None):
    channels = sm.load(encoder_file).config.head_channels
    return sm.save_head(
        directory / f"head_{classes}_{label_set}.pth", sm.LinearHead(channels, classes, label_set=label_set)
    )


def test_the_label_set_is_the_parameter_s_else_the_head_s_else_synthetic(tmp_path, encoder_file):
    kitti_head = head_file(tmp_path, encoder_file, 19, "semantic_kitti")
    assert load_model(str(encoder_file), str(kitti_head), "").label_set.name == "semantic_kitti"
    assert (
        load_model(str(encoder_file), str(head_file(tmp_path, encoder_file, 13, None)), "").label_set.name
        == "synthetic"
    )
    custom = tmp_path / "mine.yaml"
    classes = "".join(f"  - {{name: c{k}, color: [{k}, 0, 0]}}\n" for k in range(20))
    custom.write_text(f"name: mine\nignore_index: -1\nclasses:\n{classes}")
    loaded = load_model(str(encoder_file), str(kitti_head), str(custom))
    assert loaded.label_set.name == "mine" and loaded.label_set.names[0] == "c0"


def test_a_label_set_file_without_colours_says_what_a_class_needs(tmp_path, encoder_file):
    custom = tmp_path / "plain.yaml"
    custom.write_text("name: plain\nclasses:\n  - {name: ground}\n  - {name: thing}\n")
    with pytest.raises(LabelSetError, match=r"class 0 is \{'name': 'ground'\}; each class needs \{name: ..., color"):
        load_model(str(encoder_file), "none", str(custom))


def test_head_none_runs_the_encoder_alone(encoder_file):
    loaded = load_model(str(encoder_file), "none", "")
    assert loaded.head is None and loaded.label_set.name == "synthetic" and loaded.warning is None


def test_a_head_with_more_classes_than_its_label_set_is_refused(tmp_path, encoder_file):
    with pytest.raises(ValueError, match="head predicts 19 classes but label set 'synthetic' has 13"):
        load_model(str(encoder_file), str(head_file(tmp_path, encoder_file, 19, None)), "synthetic")
