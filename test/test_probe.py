"""Linear probing and evaluation on a tiny labelled synthetic set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sonata_model as sm
from sonata_model.io.datasets import FrameFolderWriter
from sonata_model.io.frame import IGNORE_LABEL
from sonata_model.io.labels import load_label_set
from sonata_model.io.sources import open_source
from sonata_model.synth.drive import generate_drive
from sonata_model.train.evaluate import Scores, confusion_matrix
from sonata_model.train.evaluate import main as eval_main
from sonata_model.train.probe import ProbeSettings, choose_frames, class_weights, fit_head
from sonata_model.train.probe import main as probe_main


def labelled_frames(root, frames: int, seed: int) -> str:
    writer = FrameFolderWriter(root, label_set="synthetic")
    for frame in generate_drive("vlp16", frames=frames, seed=seed):
        writer.write(frame)
    writer.finish()
    return f"frames:{root}"


def test_probe_and_eval_produce_scores_and_a_consistent_confusion_matrix(tmp_path):
    torch.manual_seed(0)
    config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), grid_size=0.15, coord_scale=0.2)
    encoder_path = sm.save_encoder(tmp_path / "encoder.pth", sm.SonataEncoder(config))
    train = labelled_frames(tmp_path / "train", 2, seed=1)
    val = labelled_frames(tmp_path / "val", 1, seed=2)
    assert (
        probe_main(
            [
                "--encoder",
                str(encoder_path),
                "--data",
                train,
                "--out",
                str(tmp_path / "head.pth"),
                "--steps",
                "150",
                "--points",
                "4000",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    head = sm.load_head(tmp_path / "head.pth")
    assert head.num_classes == 13 and head.label_set == "synthetic" and head.class_names[0] == "road"
    assert (
        eval_main(
            [
                "--encoder",
                str(encoder_path),
                "--head",
                str(tmp_path / "head.pth"),
                "--data",
                val,
                "--report",
                str(tmp_path / "report"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert 0.0 <= report["miou"] <= 1.0 and 0.0 <= report["accuracy"] <= 1.0
    confusion = np.asarray(report["confusion"])
    labels = open_source(val)[0].segment
    counts = np.bincount(labels[labels != IGNORE_LABEL], minlength=13)
    assert np.array_equal(confusion.sum(axis=1), counts)  # every labelled point scored exactly once
    assert report["accuracy"] > counts.max() / counts.sum() - 0.05  # at least the majority class's share
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 10_000


def test_confusion_matrix_ignores_unlabelled_points_and_counts_missing_predictions_as_misses():
    truth = np.array([0, 1, 1, IGNORE_LABEL, 2, 2])
    predicted = np.array([0, 1, 2, 1, 2, -1])  # the last point got no label (outside the domain's range)
    expected = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    assert np.array_equal(confusion_matrix(truth, predicted, 3), expected)
    scores = Scores.empty(["a", "b", "c"])
    scores.add(truth, predicted)
    np.testing.assert_allclose(scores.iou, [1.0, 0.5, 1 / 3])  # c: 1 hit, 1 missed, 1 false positive
    assert scores.accuracy == 3 / 5


def test_probe_and_eval_read_pointcept_scenes_under_a_named_label_set(tmp_path):
    """S3DIS-style scenes (`segment.npy`) carry no label set of their own: `--label-set` names it."""
    from test_datasets import pointcept_scene

    rng = np.random.default_rng(0)
    for split, seed in (("Area_1", 1), ("Area_5", 2)):
        coord = rng.uniform(0, 4, (3000, 3)).astype(np.float32)
        segment = (coord[:, 2] > 2).astype(np.int64)  # two classes: low and high
        pointcept_scene(tmp_path / "data" / split / "office_1", 3000, seed, {"segment": segment, "coord": coord})
    torch.manual_seed(0)
    encoder_path = sm.save_encoder(tmp_path / "encoder.pth", sm.SonataEncoder(sm.get_config("tiny")))
    label_set = tmp_path / "low_high.yaml"
    label_set.write_text(
        "name: low_high\nignore_index: -1\nclasses:\n  - {name: low, color: [0, 0, 255]}\n"
        "  - {name: high, color: [255, 0, 0]}\n"
    )
    common = ["--encoder", str(encoder_path), "--device", "cpu", "--label-set", str(label_set)]
    train, val = f"pointcept:{tmp_path / 'data'}:Area_1", f"pointcept:{tmp_path / 'data'}:Area_5"
    assert probe_main([*common, "--data", train, "--out", str(tmp_path / "head.pth"), "--steps", "100"]) == 0
    head = sm.load_head(tmp_path / "head.pth")
    assert head.label_set == "low_high" and head.class_names == ["low", "high"]
    report_dir = str(tmp_path / "r")
    assert eval_main([*common, "--head", str(tmp_path / "head.pth"), "--data", val, "--report", report_dir]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert np.asarray(report["confusion"]).sum() == 3000  # every point of the held-out scene scored


def test_eval_maps_a_source_labelled_in_other_classes_onto_the_head_s_by_name(tmp_path, capsys):
    """A head fitted under SemanticKITTI's 19 classes scored on frames labelled in the synthetic world's 13:
    each label is read as the head's class of the same name (no id is taken for another class's), the
    synthetic classes without a namesake are left out; no class in common is refused."""
    torch.manual_seed(0)
    config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), grid_size=0.15, coord_scale=0.2)
    encoder_path = sm.save_encoder(tmp_path / "encoder.pth", sm.SonataEncoder(config))
    kitti = load_label_set("semantic_kitti")
    head = sm.LinearHead(config.head_channels, kitti.num_classes, list(kitti.names), "semantic_kitti")
    head_path = sm.save_head(tmp_path / "kitti_head.pth", head)
    val = labelled_frames(tmp_path / "val", 1, seed=2)
    args = ["--encoder", str(encoder_path), "--head", str(head_path), "--device", "cpu"]
    assert eval_main([*args, "--data", val, "--report", str(tmp_path / "report")]) == 0
    assert "labels in 'synthetic' mapped by name onto the head's classes (13 in common" in capsys.readouterr().out
    confusion = np.asarray(json.loads((tmp_path / "report" / "report.json").read_text())["confusion"])
    synthetic = load_label_set("synthetic")
    truth = open_source(val)[0].segment
    for name in ("road", "car", "vegetation"):  # each counted under its namesake's row, wherever that is
        assert confusion[kitti.names.index(name)].sum() == np.count_nonzero(truth == synthetic.names.index(name))
    assert confusion.sum() == np.count_nonzero(truth != IGNORE_LABEL)

    other = tmp_path / "other.yaml"
    other.write_text(
        "name: other\nclasses:\n  - {name: floor, color: [0, 0, 255]}\n  - {name: wall, color: [9, 9, 9]}\n"
    )
    with pytest.raises(SystemExit):
        eval_main([*args, "--data", val, "--label-set", str(other), "--report", str(tmp_path / "r2")])
    assert "shares no class name with the head's" in capsys.readouterr().err


def test_a_head_probed_under_another_domain_brings_it_to_the_segmenter(tmp_path):
    """sonata-probe --domain records the transform the head was fitted under; a Segmenter (eval, segment,
    the node) given no domain of its own uses it, not the encoder's default; an explicit one still wins."""
    torch.manual_seed(0)
    config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), grid_size=0.15, coord_scale=0.2)
    assert config.default_domain == "indoor"
    encoder_path = sm.save_encoder(tmp_path / "encoder.pth", sm.SonataEncoder(config))
    train = labelled_frames(tmp_path / "train", 1, seed=1)
    args = ["--encoder", str(encoder_path), "--data", train, "--out", str(tmp_path / "head.pth"), "--device", "cpu"]
    assert probe_main([*args, "--steps", "5", "--domain", "outdoor"]) == 0
    head = sm.load_head(tmp_path / "head.pth")
    assert head.domain == "outdoor"
    encoder = sm.load(encoder_path)
    assert sm.Segmenter(encoder, head, device="cpu").domain == "outdoor"
    assert sm.Segmenter(encoder, head, device="cpu", domain="indoor").domain == "indoor"
    assert sm.Segmenter(encoder, None, device="cpu").domain == "indoor"


def test_frames_k_takes_k_frames_spread_over_the_source():
    source = list(range(30))  # anything with a length
    chosen = choose_frames(source, 4, seed=1)
    assert len(set(chosen)) == 4 and all(0 <= i < 30 for i in chosen)
    assert min(np.diff(chosen)) >= 7  # spread over the recording, not the first four
    assert choose_frames(source, 4, seed=1) == chosen  # the same frames for the same seed
    assert choose_frames(source, 0, seed=1) == choose_frames(source, 50, seed=1) == list(range(30))


def test_class_weights_follow_each_class_share():
    labels = torch.tensor([0] * 90 + [1] * 10)
    np.testing.assert_allclose(class_weights(labels, 3, "sqrt-inverse").numpy(), [0.5, 1.5, 0.0], atol=1e-4)
    np.testing.assert_allclose(class_weights(labels, 3, "inverse").numpy(), [0.2, 1.8, 0.0], atol=1e-4)
    assert class_weights(labels, 3, "none") is None
    with pytest.raises(ValueError, match="class weighting must be one of"):
        class_weights(labels, 3, "balanced")


def test_a_weighted_head_finds_the_rare_class_an_unweighted_one_overlooks():
    """Two overlapping clusters, 95 : 5 (cars are about a percent of a LiDAR frame's voxels)."""
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(9500, 2, generator=generator)
    rare = torch.randn(500, 2, generator=generator) + 1.5
    features, labels = torch.cat([common, rare]), torch.tensor([0] * 9500 + [1] * 500)
    recall = {}
    for weighting in ("none", "sqrt-inverse", "inverse"):
        settings = ProbeSettings(batch_points=2048, class_weights=weighting)
        head = fit_head(features, labels, 2, settings, torch.device("cpu"))
        with torch.no_grad():
            predicted = head(features).argmax(1)
        recall[weighting] = float((predicted[labels == 1] == 1).float().mean())
    assert recall["none"] < 0.2 and 0.5 < recall["sqrt-inverse"] < recall["inverse"]
