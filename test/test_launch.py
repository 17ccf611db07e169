"""The launch file, the params file and the node's declared parameters agree (no ROS launch needed)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from sonata_ros.params import PARAMETER_NAMES, PARAMETERS, SENSOR_PARAMETERS
from sonata_ros.perception_node import EXIT_INTERNAL_ERRORS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "perception.launch.py"
MULTI_LAUNCH = ROOT / "launch" / "multi_lidar.launch.py"
PROFILE = ROOT / "config" / "fastdds_large_messages.xml"


def literal(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node.value
    raise AssertionError(f"{name} not found in {LAUNCH}")


def test_params_file_declares_exactly_the_node_parameters_with_their_types():
    text = (ROOT / "config" / "perception.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert list(values) == list(PARAMETER_NAMES)
    lines = text.splitlines()
    for param in PARAMETERS:
        assert type(values[param.name]) is type(param.default), param.name
        assert values[param.name] == param.default, param.name
        line = next(k for k, line in enumerate(lines) if line.strip().startswith(f"{param.name}:"))
        assert lines[line - 1].strip() == f"# {param.description}", param.name  # the comment above it


def parameter_rows(params, prefix: str = "") -> list[str]:
    """The README table rows of `params`: name, default as JSON, description (`|` escaped)."""
    return [
        f"| `{prefix}{p.name}` | `{json.dumps(p.default)}` | {p.description.replace('|', chr(92) + '|')} |"
        for p in params
    ]


def test_the_readme_parameter_tables_say_what_the_node_declares():
    readme = (ROOT / "README.md").read_text().splitlines()
    for rows in (parameter_rows(PARAMETERS), parameter_rows(SENSOR_PARAMETERS, "sensors.<name>.")):
        assert rows[0] in readme, f"README has no row {rows[0]!r}"
        start = readme.index(rows[0])
        assert readme[start : start + len(rows)] == rows, "README's parameter table differs from sonata_ros/params.py"


def test_launch_file_compiles_and_its_arguments_fit_the_node():
    source = LAUNCH.read_text()
    tree = ast.parse(source)
    compile(tree, str(LAUNCH), "exec")
    arguments = literal(tree, "ARGUMENTS")
    names = [key.value for key in arguments.keys]
    assert names == [
        "input_topic",
        "params_file",
        "inputs_file",
        "checkpoint",
        "head",
        "device",
        "domain",
        "precision",
        "cuda_graphs",
        "use_sim_time",
        "log_level",
        "managed",
        "respawn",
        "respawn_delay",
        "dds_profile",
    ]
    overrides = [element.value for element in literal(tree, "OVERRIDES").elts]
    assert set(overrides) <= set(PARAMETER_NAMES)  # every override is a real parameter
    assert '("~/input/pointcloud", value["input_topic"])' in source
    assert 'executable="sonata_perception"' in source and "generate_launch_description" in source
    setup = (ROOT / "setup.py").read_text()
    assert '"sonata_perception = sonata_ros.perception_node:main"' in setup
    assert "launch/*.launch.py" in setup and "config/*.yaml" in setup and "config/*.xml" in setup


def node_keywords(tree: ast.Module) -> dict[str, ast.expr]:
    """The keywords of the one node action: a lifecycle node when managed, else a plain one."""
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == "LifecycleNode if managed else Node"
    ]
    assert len(calls) == 1
    return {k.arg: k.value for k in calls[0].keywords}


def launch_function(tree: ast.Module, name: str, namespace: dict):
    """A function of the launch file, run for real (the launch packages are not installed here)."""
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module([function], []), str(LAUNCH), "exec"), namespace)
    return namespace[name]


def test_argument_overrides_reach_the_node_with_the_parameters_types():
    """`device:=cuda precision:=bf16 cuda_graphs:=true` (the real-time GPU setting) gives the node a
    string, a string and a bool: a bool parameter set to the string "true" would stop the node."""
    tree = ast.parse(LAUNCH.read_text())
    constants = {name: ast.literal_eval(literal(tree, name)) for name in ("OVERRIDES", "BOOLEAN_OVERRIDES")}
    constants |= {name: ast.literal_eval(literal(tree, name)) for name in ("TRUE", "FALSE")}
    overrides = launch_function(tree, "_overrides", {**constants, "_flag": launch_function(tree, "_flag", constants)})
    defaults = {param.name: param.default for param in PARAMETERS}
    assert set(constants["BOOLEAN_OVERRIDES"]) == {n for n in constants["OVERRIDES"] if type(defaults[n]) is bool}
    empty = {name: "" for name in constants["OVERRIDES"]} | {"use_sim_time": "false"}
    assert overrides(empty) == {"use_sim_time": False}  # an empty argument keeps the params file's value
    given = overrides(empty | {"device": "cuda", "precision": "bf16", "cuda_graphs": "True", "use_sim_time": "true"})
    assert given == {"device": "cuda", "precision": "bf16", "cuda_graphs": True, "use_sim_time": True}
    assert all(type(given[name]) is type(defaults[name]) for name in constants["OVERRIDES"] if name in given)
    assert overrides(empty | {"cuda_graphs": "false"})["cuda_graphs"] is False
    with pytest.raises(ValueError, match="cuda_graphs:='maybe': expected true or false"):
        overrides(empty | {"cuda_graphs": "maybe"})


def test_boolean_and_duration_arguments_refuse_typos():
    """managed:=ture, respawn:=flase or use_sim_time:=treu stop the launch naming the argument (a typo
    read as false would start the plain node, never restart it, or ignore /clock); so does a
    respawn_delay that is not a duration."""
    tree = ast.parse(LAUNCH.read_text())
    constants = {name: ast.literal_eval(literal(tree, name)) for name in ("TRUE", "FALSE")}
    flag = launch_function(tree, "_flag", dict(constants))
    seconds = launch_function(tree, "_seconds", {})
    for text, expected in (("true", True), ("True", True), ("1", True), ("yes", True), ("false", False), ("0", False)):
        assert flag({"managed": text}, "managed") is expected
    for name, typo in (("managed", "ture"), ("respawn", "flase"), ("use_sim_time", "treu"), ("managed", "")):
        with pytest.raises(ValueError, match=f"{name}:={typo!r}: expected true or false"):
            flag({name: typo}, name)
    assert seconds({"respawn_delay": "2.5"}, "respawn_delay") == 2.5
    assert seconds({"respawn_delay": "0"}, "respawn_delay") == 0.0
    for bad in ("2s", "-1", "nan", ""):
        with pytest.raises(ValueError, match=f"respawn_delay:={bad!r}: expected seconds >= 0"):
            seconds({"respawn_delay": bad}, "respawn_delay")
    assert "managed = _flag(value, 'managed')" in ast.unparse(tree)  # respawn's: in the respawn test


def test_managed_chooses_the_lifecycle_node_with_the_same_executable():
    tree = ast.parse(LAUNCH.read_text())
    keywords = node_keywords(tree)
    assert ast.unparse(keywords["executable"]) == "'sonata_perception'"
    assert ast.unparse(keywords["namespace"]) == "''"  # launch_ros' LifecycleNode requires one
    assert ast.unparse(keywords["arguments"]) == (
        "[*_node_flags(managed, restarted), '--ros-args', '--log-level', value['log_level']]"
    )
    flags = launch_function(tree, "_node_flags", {})  # run for real
    assert flags(False, False) == flags(False, True) == []  # the plain node is active from the start
    assert flags(True, False) == ["--managed"]  # waits unconfigured for its manager
    assert flags(True, True) == ["--managed", "--activate"]  # restarted after code 70: it was active
    source = ast.unparse(tree)
    assert "node = start(restarted)" in source
    assert "actions=_supervised(start, respawn, delay, restarted=True)" in source
    assert ast.unparse(keywords["parameters"]) == "[*files, overrides]"  # inputs_file over params_file


def test_multi_lidar_launch_file_and_params_example_fit_the_node():
    tree = ast.parse(MULTI_LAUNCH.read_text())
    compile(tree, str(MULTI_LAUNCH), "exec")
    source = MULTI_LAUNCH.read_text()
    assert '"perception.launch.py"' in source and '"multi_lidar.yaml"' in source
    assert '{"inputs_file": LaunchConfiguration("inputs_file")}' in source
    values = yaml.safe_load((ROOT / "config" / "multi_lidar.yaml").read_text())["/**"]["ros__parameters"]
    sensors = values.pop("sensors")
    assert set(values) <= set(PARAMETER_NAMES)
    assert len(values["input_topics"]) == len(values["input_names"]) == 2
    assert list(sensors) == values["input_names"]
    for name, sensor in sensors.items():
        assert list(sensor) == [p.name for p in SENSOR_PARAMETERS], name
        assert len(sensor["translation"]) == 3 and len(sensor["rotation"]) == 4


def test_the_node_is_respawned_after_internal_errors_only_and_gets_the_dds_profile_by_option():
    source = LAUNCH.read_text()
    tree = ast.parse(source)
    arguments = literal(tree, "ARGUMENTS")
    defaults = {
        key.value: value.elts[0].value
        for key, value in zip(arguments.keys, arguments.values, strict=True)
        if isinstance(value.elts[0], ast.Constant)  # params_file's default is computed at launch
    }
    assert defaults["respawn"] == "true" and float(defaults["respawn_delay"]) > 0 and defaults["dds_profile"] == ""
    keywords = node_keywords(tree)
    assert "respawn" not in keywords  # launch's own respawn would restart a node that cannot start, forever
    assert "_supervised(node, _flag(value, 'respawn'), _seconds(value, 'respawn_delay'))" in ast.unparse(tree)
    # only the node's giving up after internal errors calls for a fresh process (run for real)
    assert ast.literal_eval(literal(tree, "EXIT_INTERNAL_ERRORS")) == EXIT_INTERNAL_ERRORS
    restarts = launch_function(tree, "_restarts", {"EXIT_INTERNAL_ERRORS": EXIT_INTERNAL_ERRORS})
    assert restarts(EXIT_INTERNAL_ERRORS) and not any(restarts(code) for code in (0, 1, -2, -15))
    assert ast.unparse(keywords["additional_env"]) == "_dds_environment(value['dds_profile'])"
    # the environment function, run for real: both Fast DDS generations' variables, a missing file refused
    dds_environment = launch_function(tree, "_dds_environment", {"os": os})
    assert dds_environment("") == {}
    assert dds_environment(str(PROFILE)) == {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE),
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(PROFILE),
    }
    with pytest.raises(FileNotFoundError, match=r"absent\.xml"):
        dds_environment("/absent.xml")


def test_the_shipped_dds_profile_is_a_default_shared_memory_profile_with_room_for_large_clouds():
    root = ElementTree.parse(PROFILE).getroot()
    ns = {"dds": "http://www.eprosima.com"}
    transports = {
        t.findtext("dds:transport_id", namespaces=ns): t for t in root.iterfind(".//dds:transport_descriptor", ns)
    }
    shm = [t for t in transports.values() if t.findtext("dds:type", namespaces=ns) == "SHM"]
    assert len(shm) == 1 and int(shm[0].findtext("dds:segment_size", namespaces=ns)) >= 8 * 3_000_000
    assert any(t.findtext("dds:type", namespaces=ns) == "UDPv4" for t in transports.values())  # discovery
    participant = root.find(".//dds:participant", ns)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext(".//dds:useBuiltinTransports", namespaces=ns) == "false"
    used = [e.text for e in participant.iterfind(".//dds:userTransports/dds:transport_id", ns)]
    assert sorted(used) == sorted(transports)


def test_package_manifest_declares_runtime_dependencies():
    manifest = (ROOT / "package.xml").read_text()
    for dependency in ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch_ros", "python3-numpy"):
        assert f"<exec_depend>{dependency}</exec_depend>" in manifest
    assert "<build_type>ament_python</build_type>" in manifest
