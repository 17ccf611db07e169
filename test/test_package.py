"""The package stands on its own: setup.py names only files that exist, and `colcon build` (colcon from
PyPI, requirements-dev.txt) of a copy of the repository in a temporary workspace installs the launch
files, parameters, RViz config, label sets and demo model into share/sonata_ros and both Python packages
into the install space, importable from there with nothing of the source tree on the path."""

from __future__ import annotations

import os
import runpy
import shlex
import shutil
import subprocess
import sys
from glob import glob
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
NOT_PACKAGED = (".git", ".venv", "build", "install", "log", "__pycache__", "*.egg-info", ".*_cache", "outputs", "runs")


def setup_arguments(monkeypatch) -> dict:
    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    return captured


def test_setup_packages_only_files_that_exist(monkeypatch):
    arguments = setup_arguments(monkeypatch)
    for package, patterns in arguments["package_data"].items():
        for pattern in patterns:
            assert glob(str(ROOT / package / pattern)), f"package_data {package}: {pattern} matches nothing"
    for destination, files in arguments["data_files"]:
        assert files, f"nothing to install into {destination}"
        for file in files:
            assert (ROOT / file).is_file(), f"{destination}: {file} does not exist"
    assert {"sonata_model", "sonata_model.io", "sonata_ros"} <= set(arguments["packages"])


def test_colcon_build_installs_a_package_that_stands_on_its_own(tmp_path):
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.is_file():
        pytest.skip(f"colcon is not installed next to {sys.executable} (pip install -r requirements-dev.txt)")
    source = tmp_path / "src" / "sonata_ros"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_PACKAGED))
    env = {**os.environ, "PATH": f"{colcon.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    build = subprocess.run(
        [str(colcon), "build", "--event-handlers", "console_cohesion+"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "1 package finished" in build.stdout

    install = tmp_path / "install" / "sonata_ros"
    share = install / "share" / "sonata_ros"
    expected = [
        "package.xml",
        "launch/perception.launch.py",
        "launch/multi_lidar.launch.py",
        "config/perception.yaml",
        "config/multi_lidar.yaml",
        "config/sonata.rviz",
        "config/fastdds_large_messages.xml",
        "config/pretrain/lidar.yaml",
        "models/demo_encoder.pth",
        "models/demo_head.pth",
        *(f"config/labels/{name}.yaml" for name in ("nuscenes", "scannet20", "semantic_kitti", "synthetic")),
    ]
    missing = [path for path in expected if not (share / path).is_file()]
    assert not missing, f"not installed into {share}: {missing}"
    assert (install / "share/ament_index/resource_index/packages/sonata_ros").is_file()
    assert (share / "models/demo_encoder.pth").stat().st_size == (
        ROOT / "sonata_ros/models/demo_encoder.pth"
    ).stat().st_size
    perception = install / "lib" / "sonata_ros" / "sonata_perception"
    assert os.access(perception, os.X_OK)

    # from the install space alone: the packages, the library's label sets, the node's demo model, the share
    check = (
        "import sonata_ros, sonata_model\n"
        "from ament_index_python.packages import get_package_share_directory\n"
        "from sonata_model.io.labels import load_label_set\n"
        "from sonata_ros.model_loading import DEMO_ENCODER\n"
        "print(sonata_ros.__file__, sonata_model.__file__, DEMO_ENCODER.is_file(),\n"
        "      load_label_set('semantic_kitti').num_classes, get_package_share_directory('sonata_ros'))\n"
    )
    script = f". {tmp_path / 'install' / 'setup.bash'} && python -c {shlex.quote(check)} && {perception} --help"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = subprocess.run(["bash", "-c", script], cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    first, help_text = run.stdout.split("\n", 1)
    ros_file, model_file, demo_found, kitti_classes, share_found = first.split()
    assert ros_file.startswith(str(install)) and model_file.startswith(str(install)), first
    assert demo_found == "True" and kitti_classes == "19" and share_found == str(share)
    assert "--managed" in help_text
