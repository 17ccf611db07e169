"""Installs the ament_python package `sonata_ros` and the ROS-free library `sonata_model`.

Works with `colcon build` (on a ROS 2 install, or with colcon from PyPI) and with `pip install -e .` in a
plain virtualenv. The library's label sets and the node's demo model are package data (found next to the
code); share/sonata_ros gets what launch files, RViz and users reach by path: launch files, parameters,
the RViz config, the label sets, the pretraining configs and the demo model.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sonata_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["sonata_model", "sonata_model.*", "sonata_ros", "sonata_ros.*"]),
    package_data={"sonata_model": ["labels/*.yaml"], "sonata_ros": ["models/*.pth", "models/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/pretrain", glob("config/pretrain/*.yaml")),
        (f"share/{PACKAGE}/config/labels", glob("sonata_model/labels/*.yaml")),
        (f"share/{PACKAGE}/models", glob("sonata_ros/models/*.pth") + glob("sonata_ros/models/*.json")),
    ],
    install_requires=["setuptools", "numpy", "pyyaml"],
    python_requires=">=3.10",
    zip_safe=False,
    maintainer="sonata_ros maintainers",
    maintainer_email="maintainers@sonata-ros.dev",
    description="Sonata / PTv3 semantic perception for ROS 2, with offline pretraining and probing.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sonata_perception = sonata_ros.perception_node:main",
            "sonata_sim_lidar = sonata_ros.sim_lidar:main",
            "sonata_demo = sonata_ros.demo:main",
            "sonata-synth = sonata_model.synth.cli:main",
            "sonata-pretrain = sonata_model.train.pretrain:main",
            "sonata-extract = sonata_model.train.extract:main",
            "sonata-probe = sonata_model.train.probe:main",
            "sonata-eval = sonata_model.train.evaluate:main",
            "sonata-segment = sonata_model.train.segment:main",
            "sonata-plot = sonata_model.train.plot:main",
        ]
    },
)
