"""ros2 launch sonata_ros perception.launch.py input_topic:=/points [checkpoint:=... head:=... device:=cuda]

Starts the sonata_perception node with config/perception.yaml (or params_file:=...). The checkpoint,
head and device arguments override the params file only when given (an empty argument keeps the
file's value). The node's input `~/input/pointcloud` is remapped to input_topic; its outputs are
`/sonata_perception/output/{segmentation,embeddings,embedding_rgb}`.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = {
    "input_topic": ("/points", "PointCloud2 topic to segment"),
    "params_file": (
        os.path.join(get_package_share_directory("sonata_ros"), "config", "perception.yaml"),
        "Node parameters (YAML)",
    ),
    "checkpoint": ("", "Encoder checkpoint; empty keeps the params file's (default: shipped demo model)"),
    "head": ("", "Linear head checkpoint, or 'none'; empty keeps the params file's"),
    "device": ("", "auto | cpu | cuda; empty keeps the params file's"),
    "use_sim_time": ("false", "Use /clock (bag replay)"),
    "log_level": ("info", "debug | info | warn | error"),
}
OVERRIDES = ("checkpoint", "head", "device")


def _perception_node(context):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {name: value[name] for name in OVERRIDES if value[name]}
    overrides["use_sim_time"] = value["use_sim_time"].lower() in ("true", "1", "yes")
    return [
        Node(
            package="sonata_ros",
            executable="sonata_perception",
            name="sonata_perception",
            output="screen",
            parameters=[value["params_file"], overrides],
            remappings=[("~/input/pointcloud", value["input_topic"])],
            arguments=["--ros-args", "--log-level", value["log_level"]],
        )
    ]


def generate_launch_description():
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=text)
        for name, (default, text) in ARGUMENTS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_perception_node)])
