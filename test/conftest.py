"""Fixtures the node tests share: the test model's files and an rclpy client node, once per module."""

from __future__ import annotations

import pytest
from ros_helpers import write_test_model


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The tiny LiDAR encoder and 13-class head of `ros_helpers.write_test_model`."""
    return write_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def client(request):
    """An rclpy node in the test process (named after the test module) that talks to the node under test."""
    import rclpy

    rclpy.init()
    node = rclpy.create_node(f"{request.module.__name__.rpartition('.')[2]}_client")
    yield node
    node.destroy_node()
    rclpy.try_shutdown()
