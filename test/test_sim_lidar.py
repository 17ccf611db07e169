"""The simulated LiDAR's bad options end it at start with exit 1 and what is wrong, not a traceback;
a decimal option takes a whole number."""

from __future__ import annotations

import pytest
from ros_helpers import NodeProcess


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("rate_hz:=0.0", "rate_hz must be > 0 and frames >= 1, got 0.0"),
        ("frames:=-2", "rate_hz must be > 0 and frames >= 1, got 10.0 and -2"),
        ("reliability:=relaible", "reliability must be reliable or best_effort, got 'relaible'"),
        ("bag:=/nowhere/run.mcap", "/nowhere/run.mcap"),
        ("fov_deg:=wide", "parameter fov_deg must be a number, got 'wide'"),
    ],
)
def test_a_bad_option_is_a_clear_fatal_error(option, message):
    process = NodeProcess("sonata_ros.sim_lidar", ["-p", option, "-r", "__node:=bad_sim"])
    assert process.process.wait(timeout=60) == 1
    assert message in process.output and "Traceback" not in process.output


def test_a_decimal_option_takes_a_whole_number():
    process = NodeProcess("sonata_ros.sim_lidar", ["-p", "fov_deg:=180", "-p", "count:=1", "-r", "__node:=half_sim"])
    assert process.process.wait(timeout=60) == 0
    assert "published 1 clouds" in process.output and "Traceback" not in process.output
