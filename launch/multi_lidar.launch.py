"""ros2 launch sonata_ros multi_lidar.launch.py [inputs_file:=my_lidars.yaml] [managed:=true device:=cuda ...]

Several LiDARs, one forward: perception.launch.py with inputs_file:=config/multi_lidar.yaml (a front
and a rear LiDAR on base_link) unless another file is given. The node merges the inputs' newest clouds
in `base_frame` and segments them together; it publishes the merged cloud on
`/sonata_perception/output/segmentation` and each input's cloud, in its own frame and order, on
`/sonata_perception/output/<name>/segmentation`. Every argument of perception.launch.py applies.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


def generate_launch_description():
    share = get_package_share_directory("sonata_ros")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "inputs_file",
                default_value=os.path.join(share, "config", "multi_lidar.yaml"),
                description="input_topics, input_names, sensors.<name>.* and base_frame (YAML)",
            ),
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(os.path.join(share, "launch", "perception.launch.py")),
                launch_arguments={"inputs_file": LaunchConfiguration("inputs_file")}.items(),
            ),
        ]
    )
