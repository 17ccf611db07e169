"""Linear probing and evaluation on a tiny labelled synthetic set."""

from __future__ import annotations

import json

import numpy as np
import torch

import sonata_model as sm
from sonata_model.io.datasets import FrameFolderWriter
from sonata_model.io.frame import IGNORE_LABEL
from sonata_model.io.sources import open_source
from sonata_model.synth.drive import generate_drive
from sonata_model.train.evaluate import Scores, confusion_matrix
from sonata_model.train.evaluate import main as eval_main
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
