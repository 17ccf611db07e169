"""The GPU run's scripts and the uploads they rely on: each script parses; each upload's cuda tests collect
with only what that upload carries (core: spconv, no ROS, no rosbags; node: ROS, no spconv), as on the
accelerator machine (scripts/gpu_prepare.sh, scripts/gpu_check.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "geometry_msgs", "lifecycle_msgs", "rosbags")


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_script_parses(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_gpu_check_refuses_an_unknown_option_with_its_usage():
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--fast"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "usage:" in done.stderr


def collect_without(test_file: str, missing: tuple[str, ...], tmp_path: Path) -> subprocess.CompletedProcess:
    """`pytest --collect-only -m cuda test_file` where importing any of `missing` fails, as it does on the
    device when the upload does not carry it."""
    for name in missing:
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text(f"raise ImportError('{name} is not in this upload')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    return subprocess.run([*command, test_file], cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def test_the_core_uploads_cuda_tests_collect_without_ros(tmp_path):
    done = collect_without("test/test_cuda.py", ROS_MODULES, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "test_cuda.py::test_the_segmenter_replays_one_graph_per_bucket_and_equals_eager" in done.stdout


def test_the_node_uploads_cuda_tests_collect_without_spconv(tmp_path):
    done = collect_without("test/test_cuda_node.py", ("spconv", "rosbags"), tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "test_cuda_node.py::test_the_node_on_the_gpu_labels_every_frame_as_the_model_does_here" in done.stdout


def test_gpu_check_reports_each_step_as_it_ends_even_one_that_times_out(tmp_path):
    """On the device a command is killed at 10 minutes and only $OUT comes back: every step runs under
    STEP_TIMEOUT and the summary and the logs' archive are in $OUT after each one."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "STEP_TIMEOUT": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    command = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--part", "node"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 1  # a step failed
    summary = (tmp_path / "summary.log").read_text()
    steps = ("pytest_cuda_node", "dds_latency", "node_latency")
    for step in steps:
        assert f"== {step}:" in summary
    assert summary.count("FAILED (timed out after 1 s") == len(steps), summary
    with tarfile.open(tmp_path / "gpu_check.tar.gz") as archive:
        names = archive.getnames()
    assert "gpu_check/node_latency.log" in names and "gpu_check/summary.log" in names
