"""sonata-extract turns a bag into frame folders, resumably; sonata-plot draws a run's curves."""

from __future__ import annotations

import numpy as np

from sonata_model.io.bags import BagWriter
from sonata_model.io.sources import open_source
from sonata_model.synth.drive import generate_drive
from sonata_model.train.extract import extract
from sonata_model.train.extract import main as extract_main
from sonata_model.train.plot import main as plot_main
from sonata_model.train.pretrain import METRICS


def test_extract_writes_every_frame_and_resumes(tmp_path):
    frames = list(generate_drive("vlp16", frames=5, seed=2))
    with BagWriter(tmp_path / "run1", format="mcap", topic="/points") as writer:
        for frame in frames:
            writer.write(frame)
    out = tmp_path / "extracted"
    first = extract(f"bag:{tmp_path / 'run1'}:/points", out, workers=2, every=2)
    assert first["written"] == 3  # frames 0, 2, 4
    source = open_source(f"frames:{out}")
    assert len(source) == 3
    np.testing.assert_array_equal(source[1].coord, frames[2].coord)
    np.testing.assert_allclose(source[1].strength, frames[2].strength, atol=1e-6)
    (out / "run1_000004" / "coord.npy").unlink()  # a damaged frame is written again
    assert extract_main(["--data", f"bag:{tmp_path / 'run1'}:/points", "--out", str(out), "--every", "1"]) == 0
    again = open_source(f"frames:{out}")
    assert len(again) == 5
    np.testing.assert_array_equal(again[4].coord, frames[4].coord)
    resumed = extract(f"bag:{tmp_path / 'run1'}:/points", out, workers=1)
    assert resumed["already there"] == 5 and resumed["written"] == 0  # nothing left to do


def test_a_second_source_with_the_same_name_is_refused_not_taken_as_extracted(tmp_path, capsys):
    out = tmp_path / "extracted"
    for folder, seed in (("a", 2), ("b", 3)):  # two recordings both called run.mcap
        with BagWriter(tmp_path / folder / "run", format="mcap", topic="/points") as writer:
            for frame in generate_drive("vlp16", frames=2, seed=seed):
                writer.write(frame)
    assert extract(f"bag:{tmp_path / 'a' / 'run'}", out, workers=1)["written"] == 2
    assert extract_main(["--data", f"bag:{tmp_path / 'b' / 'run'}", "--out", str(out), "--workers", "1"]) == 1
    assert "run_000000 holds bag:" in capsys.readouterr().err
    assert extract(f"bag:{tmp_path / 'a' / 'run'}", out, workers=1)["already there"] == 2  # the same one resumes


def test_extract_keeps_the_labels_under_the_sources_or_the_named_label_set(tmp_path):
    from test_datasets import pointcept_scene

    scannet = {"segment20": np.array([-1, 0, 19, 4] * 10, dtype=np.int64)}
    pointcept_scene(tmp_path / "scannet" / "train" / "scene0000_00", 40, 0, scannet)
    extract(f"pointcept:{tmp_path / 'scannet'}", tmp_path / "a", workers=1)  # the source's own set
    frames = open_source(f"frames:{tmp_path / 'a'}")
    assert frames.label_set.name == "scannet20"
    np.testing.assert_array_equal(frames[0].segment, scannet["segment20"])

    segment = np.array([0, 1, 1, -1] * 10, dtype=np.int16)
    pointcept_scene(tmp_path / "s3dis" / "Area_1" / "office_1", 40, 1, {"segment": segment})
    label_set = tmp_path / "two.yaml"
    label_set.write_text(
        "name: two\nignore_index: -1\nclasses: [{name: a, color: [0, 0, 0]}, {name: b, color: [9, 9, 9]}]\n"
    )
    out = tmp_path / "b"
    assert (
        extract_main(["--data", f"pointcept:{tmp_path / 's3dis'}", "--out", str(out), "--label-set", str(label_set)])
        == 0
    )
    frames = open_source(f"frames:{out}")
    assert frames.label_set.name == "two"
    np.testing.assert_array_equal(frames[0].segment, segment)


def test_plot_draws_the_metrics_pretraining_writes_and_names_a_bad_file(tmp_path, capsys):
    rows = [",".join(METRICS)]  # the columns sonata-pretrain writes
    rows += [",".join(str(s if k == "step" else 5 - s / 10) for k in METRICS) for s in range(1, 11)]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert plot_main([str(tmp_path / "metrics.csv")]) == 0  # by default next to the CSV
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    rows[3] = rows[3].replace("4.7", "", 1)  # step 3 (line 4 of the file) without its loss
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert plot_main([str(tmp_path / "metrics.csv")]) == 1
    assert "metrics.csv: line 4, column loss: '' is not a number" in capsys.readouterr().err
    assert plot_main([str(tmp_path / "absent.csv")]) == 1
    assert "absent.csv: cannot read" in capsys.readouterr().err
