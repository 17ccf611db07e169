"""The launch file, the params file and the node's declared parameters agree (no ROS launch needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from sonata_ros.params import PARAMETER_NAMES, PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "perception.launch.py"


def literal(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node.value
    raise AssertionError(f"{name} not found in {LAUNCH}")


def test_params_file_declares_exactly_the_node_parameters_with_their_types():
    values = yaml.safe_load((ROOT / "config" / "perception.yaml").read_text())["/**"]["ros__parameters"]
    assert list(values) == list(PARAMETER_NAMES)
    for param in PARAMETERS:
        assert type(values[param.name]) is type(param.default), param.name
        assert values[param.name] == param.default, param.name


def test_launch_file_compiles_and_its_arguments_fit_the_node():
    source = LAUNCH.read_text()
    tree = ast.parse(source)
    compile(tree, str(LAUNCH), "exec")
    arguments = literal(tree, "ARGUMENTS")
    names = [key.value for key in arguments.keys]
    assert names == ["input_topic", "params_file", "checkpoint", "head", "device", "use_sim_time", "log_level"]
    overrides = [element.value for element in literal(tree, "OVERRIDES").elts]
    assert set(overrides) <= set(PARAMETER_NAMES)  # every override is a real parameter
    assert '("~/input/pointcloud", value["input_topic"])' in source
    assert 'executable="sonata_perception"' in source and "generate_launch_description" in source
    setup = (ROOT / "setup.py").read_text()
    assert '"sonata_perception = sonata_ros.perception_node:main"' in setup
    assert "launch/*.launch.py" in setup and "config/*.yaml" in setup


def test_package_manifest_declares_runtime_dependencies():
    manifest = (ROOT / "package.xml").read_text()
    for dependency in ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch_ros", "python3-numpy"):
        assert f"<exec_depend>{dependency}</exec_depend>" in manifest
    assert "<build_type>ament_python</build_type>" in manifest
