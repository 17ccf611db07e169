"""ros2 launch sonata_ros perception.launch.py input_topic:=/points [checkpoint:=... head:=... device:=cuda domain:=...]

Starts the sonata_perception node with config/perception.yaml (or params_file:=...), and over it
inputs_file:=... when given (several LiDARs: see multi_lidar.launch.py). The checkpoint, head, device,
domain, precision and cuda_graphs arguments override the params file only when given (an empty
argument keeps the file's value). Real time on a GPU: device:=cuda precision:=bf16 cuda_graphs:=true, with
dds_profile:=<share>/config/fastdds_large_messages.xml (a 64-beam cloud spends ~8.5 ms in transit
instead of ~20 ms with Fast DDS's defaults, benchmarks/dds_latency.py).
The node's input `~/input/pointcloud` is remapped to input_topic; its outputs are
`/sonata_perception/output/{segmentation,embeddings,embedding_rgb}`.

managed:=true starts the lifecycle variant: it waits unconfigured for a lifecycle manager (or
`ros2 lifecycle set /sonata_perception configure`, then `activate`); restarted after code 70 (only an
active node exits so), it configures and activates itself, or exits with code 1 if it cannot.

The node is restarted, respawn_delay seconds later, when it exits with code 70 (respawn:=false to stop
that): it does so after `exit_after_internal_errors` consecutive internal errors, such as a sticky CUDA
error that only a fresh process clears. Any other exit is final: a node that cannot start (a missing
checkpoint, a bad parameter: code 1) would fail the same way again, and a stopped one was meant to stop.
Boolean arguments take true/false (1/0, yes/no): a typo stops the launch rather than meaning false.
dds_profile:=<file.xml> gives the node's process a Fast DDS profile (shared memory for ~3 MB clouds
under best-effort QoS; the driver that publishes the clouds needs it too, see the file).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, TimerAction
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

ARGUMENTS = {
    "input_topic": ("/points", "PointCloud2 topic to segment"),
    "params_file": (
        os.path.join(get_package_share_directory("sonata_ros"), "config", "perception.yaml"),
        "Node parameters (YAML)",
    ),
    "inputs_file": ("", "Multi-LiDAR parameters (YAML) applied over params_file; empty: one input"),
    "checkpoint": ("", "Encoder checkpoint; empty keeps the params file's (default: shipped demo model)"),
    "head": ("", "Linear head checkpoint, or 'none'; empty keeps the params file's"),
    "device": ("", "auto | cpu | cuda; empty keeps the params file's"),
    "domain": ("", "indoor | outdoor | object (e.g. outdoor for Utonia or concerto_large_outdoor on LiDAR)"),
    "precision": ("", "fp32 | fp16 | bf16 (bf16 on a GPU); empty keeps the params file's"),
    "cuda_graphs": ("", "true | false: replay the encoder from CUDA graphs (device cuda); empty keeps the file's"),
    "use_sim_time": ("false", "Use /clock (bag replay)"),
    "log_level": ("info", "debug | info | warn | error"),
    "managed": ("false", "true: the lifecycle node (starts unconfigured; a lifecycle manager drives it)"),
    "respawn": ("true", "Restart the node when it exits with code 70 (it does on repeated internal errors)"),
    "respawn_delay": ("2.0", "Seconds before a restart"),
    "dds_profile": (
        "",
        "Fast DDS XML profile for the node's process (e.g. <share>/config/fastdds_large_messages.xml); "
        "empty keeps the environment's",
    ),
}
OVERRIDES = ("checkpoint", "head", "device", "domain", "precision", "cuda_graphs")
BOOLEAN_OVERRIDES = ("cuda_graphs",)  # a bool parameter refuses the string "true"
EXIT_INTERNAL_ERRORS = 70  # sonata_ros.perception_node's exit code after repeated internal errors
TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


def _perception_node(context):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = _overrides(value)
    managed = _flag(value, "managed")
    files = [value["params_file"], *([value["inputs_file"]] if value["inputs_file"] else [])]

    def node(restarted: bool):  # a fresh action for every start: an action runs once
        return (LifecycleNode if managed else Node)(
            package="sonata_ros",
            executable="sonata_perception",
            name="sonata_perception",
            namespace="",
            output="screen",
            parameters=[*files, overrides],
            remappings=[("~/input/pointcloud", value["input_topic"])],
            arguments=[*_node_flags(managed, restarted), "--ros-args", "--log-level", value["log_level"]],
            additional_env=_dds_environment(value["dds_profile"]),
        )

    return _supervised(node, _flag(value, "respawn"), _seconds(value, "respawn_delay"))


def _node_flags(managed: bool, restarted: bool) -> list[str]:
    """The node's own arguments: a managed node restarted after code 70 (which only an active node exits
    with) brings itself back up; a lifecycle manager without a bond would not notice the new process."""
    if not managed:
        return []
    return ["--managed", "--activate"] if restarted else ["--managed"]


def _supervised(start, respawn: bool, delay: float, restarted: bool = False) -> list:
    """The node `start(restarted)` makes and, with `respawn`, a handler that starts a fresh one `delay` s
    after it exits with code 70 (launch's own respawn restarts after any exit, a failed start every
    `delay` s)."""
    node = start(restarted)
    if not respawn:
        return [node]

    def on_exit(event, _context):
        if not _restarts(event.returncode):
            return []
        return [TimerAction(period=delay, actions=_supervised(start, respawn, delay, restarted=True))]

    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))]


def _restarts(returncode: int) -> bool:
    """Whether an exit calls for a fresh process: only the node's giving up after internal errors."""
    return returncode == EXIT_INTERNAL_ERRORS


def _overrides(value: dict[str, str]) -> dict[str, object]:
    """The parameters the arguments set over the params files: the given OVERRIDES, bools typed as such."""
    overrides: dict[str, object] = {name: value[name] for name in OVERRIDES if value[name]}
    for name in BOOLEAN_OVERRIDES:
        if name in overrides:
            overrides[name] = _flag(value, name)
    overrides["use_sim_time"] = _flag(value, "use_sim_time")
    return overrides


def _flag(value: dict[str, str], name: str) -> bool:
    """A boolean argument; anything but true/false (1/0, yes/no) stops the launch with its name, where
    a typo such as managed:=ture would silently mean false."""
    text = value[name].lower()
    if text not in TRUE + FALSE:
        raise ValueError(f"{name}:={value[name]!r}: expected true or false")
    return text in TRUE


def _seconds(value: dict[str, str], name: str) -> float:
    """A non-negative duration argument, or the launch stops with its name."""
    try:
        seconds = float(value[name])
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"{name}:={value[name]!r}: expected seconds >= 0")
    return seconds


def _dds_environment(profile: str) -> dict[str, str]:
    """Both variable names: FASTDDS_ is read by Fast DDS 3 (Kilted, Rolling), FASTRTPS_ by 2.x (Humble, Jazzy)."""
    if not profile:
        return {}
    if not os.path.isfile(profile):
        raise FileNotFoundError(f"dds_profile {profile!r} is not a file")
    return {"FASTDDS_DEFAULT_PROFILES_FILE": profile, "FASTRTPS_DEFAULT_PROFILES_FILE": profile}


def generate_launch_description():
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=text)
        for name, (default, text) in ARGUMENTS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_perception_node)])
