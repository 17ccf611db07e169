"""The benchmark scripts the README quotes still run and print what they promise.

Benchmarks are not timed here (their numbers come from `--record` runs on a stated machine); these
runs only keep the scripts rerunnable, as the README tells users to do: each runs in its own process
on a tiny input and its JSON is checked for values that hold on any machine. (roofline.py once broke
silently when a signature it calls changed.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_benchmark(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=BENCHMARKS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    assert result["command"].startswith(script)
    return result


def test_encoder_benchmark_counts_a_sync_free_forward_and_one_plan_read():
    result = run_benchmark("encoder.py", "--config", "tiny", "--points", "3000", "--repeats", "1", "--warmup", "0")
    voxels = result["voxels_per_stage"]
    assert 0 < voxels[0] <= 3000 and voxels == sorted(voxels, reverse=True)
    assert result["total"]["median_ms"] > 0
    assert result["ops"]["forward"]["syncs"] == 0
    assert result["ops"]["forward_gpu_shape"]["syncs"] == 0
    assert result["ops"]["plan_gpu_shape"]["syncs_by_kind"] == {"copy_to_host": 1}


def test_roofline_floor_is_below_the_measured_frame():
    result = run_benchmark("roofline.py", "--config", "tiny", "--points", "3000", "--repeats", "1")
    assert result["gflop_total"] == pytest.approx(sum(result["gflop"].values()), abs=0.02)
    assert result["floor_ms"] <= result["floor_with_attention_ms"] <= result["frame_ms"]["median_ms"]
    assert result["frame_over_floor"] >= 1


def test_codec_benchmark_decodes_without_warnings():
    result = run_benchmark("codec.py", "--points", "5000", "--repeats", "2")
    assert result["points"] > 4000
    assert 0 < result["decode_only"]["median_ms"] <= result["decode_mask_output_message"]["median_ms"]
    assert result["node_warnings"] == []


def test_buckets_benchmark_counts_signatures_per_growth():
    result = run_benchmark("buckets.py", "--frames", "3", "--growths", "1.25", "2.0")
    assert [g["growth"] for g in result["growths"]] == [1.25, 2.0]
    assert all(1 <= g["distinct_signatures"] <= 3 for g in result["growths"])


def test_gc_pauses_benchmark_freezes_the_long_lived_objects():
    result = run_benchmark("gc_pauses.py", "--config", "tiny", "--points", "3000", "--frames", "3")
    assert result["frozen_objects"] > 1000
    walked = {key: result[key]["walked_by_a_full_collection"] for key in ("as_it_is", "after_freeze")}
    assert walked["after_freeze"] < walked["as_it_is"] / 100


def test_node_latency_benchmark_times_every_frame_through_a_real_node():
    result = run_benchmark("node_latency.py", "--config", "tiny", "--frames", "3", "--warmup", "1")
    assert result["dropped"] == 0 and result["latency_ms"]["n"] == 3
    stages = result["stage_mean_ms"]
    assert {"decode", "voxelize", "encoder", "head", "publish"} <= set(stages)
    assert result["latency_ms"]["min_ms"] >= stages["encoder"] * 0.8  # end to end holds the forward


def test_vs_reference_pair_ratios_cancel_drift_that_moves_both_frames_of_a_pair():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from vs_reference import pair_ratios
    finally:
        sys.path.remove(str(BENCHMARKS))
    # the host slows down 2x halfway: both sides' frames slow alike, each pair's ratio stays 3.5
    reference, ours = [7.0, 7.0, 14.0, 14.0], [2.0, 2.0, 4.0, 4.0]
    assert pair_ratios(reference, ours) == {"q25": 3.5, "median": 3.5, "q75": 3.5}
    assert pair_ratios([8.0, 6.0, 10.0], [2.0, 2.0, 2.0]) == {"q25": 3.5, "median": 4.0, "q75": 4.5}


@pytest.mark.skipif(not (BENCHMARKS.parent.parent / "shared" / "real").is_dir(), reason="../shared/real is absent")
def test_velodyne_benchmark_reads_the_real_packet_bag():
    bag = BENCHMARKS.parent.parent / "shared" / "real" / "nebula-driver-frames" / "bags" / "vlp16"
    result = run_benchmark("velodyne.py", "--bag", str(bag), "--repeats", "1")
    assert (result["sensor"], result["messages"], result["revolutions"]) == ("VLP-16", 4, 3)
    assert 14_000 < result["points_per_revolution"] < 15_500
    assert result["decode_ms"]["median_ms"] > 0 and result["first_frame_ms"]["median_ms"] > 0
