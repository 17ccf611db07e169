"""/diagnostics over real DDS, the node in its own process: each level (STALE, OK, WARN, ERROR) reached
the way a deployment reaches it, and the exit (code 70) after consecutive internal errors."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from ros_helpers import DISCOVERY_TIMEOUT_S, NodeProcess, node_parameters, spin_until
from test_node import Conversation, cloud

from sonata_model.io.frame import Frame
from sonata_model.synth.drive import generate_drive

OK, WARN, ERROR, STALE = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR, DiagnosticStatus.STALE


@pytest.fixture(scope="module")
def small():
    frame = next(iter(generate_drive("vlp16", frames=1, seed=7)))
    return cloud(Frame(coord=frame.coord[:3000], strength=frame.strength[:3000]), "velodyne")


def start(model_files, name: str, script: str = "sonata_ros.perception_node", **parameters) -> NodeProcess:
    encoder, head = model_files
    node = NodeProcess(
        script,
        [
            *node_parameters(encoder, head, frame_id="lidar", diagnostics_period_s=0.1, **parameters),
            *("-r", f"__node:={name}", "-r", f"~/input/pointcloud:=/{name}/points"),
        ],
    )
    node.wait_for_line("ready:")
    return node


def wait_level(talk: Conversation, level: bytes, timeout: float = 30.0, while_waiting=None, until=None) -> str:
    """The diagnostics message once the level is `level` (and `until(diagnostics)` holds, when given);
    `while_waiting()` runs between spins."""
    deadline = time.monotonic() + timeout
    while talk.diagnostics.get("level") != level or (until is not None and not until(talk.diagnostics)):
        assert time.monotonic() < deadline, f"level {level!r} not reached; last: {talk.diagnostics}"
        if while_waiting is not None:
            while_waiting()
        rclpy.spin_once(talk.client, timeout_sec=0.05)
    return talk.diagnostics["message"]


def stop(node: NodeProcess, talk: Conversation) -> None:
    talk.close()
    if node.process.poll() is None:
        assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output


def test_stale_ok_warn_error_and_stale_again(client, model_files, small):
    node = start(model_files, "health_states", health_window_s=2.0, input_timeout_s=1.0, rejected_warn_fraction=0.2)
    talk = Conversation(client, "health_states", "/health_states/points")
    try:
        assert wait_level(talk, STALE) == "no input since start (timeout 1 s)"
        spin_until(
            client, lambda: talk.publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S, "the node's subscription"
        )
        answer = talk.ask(small)
        assert answer.width == small.width
        # A report sent while the first frame was still in the encoder is OK with no frame processed yet
        # (the answer can overtake it): wait for one that counts the processed frames.
        processed = lambda d: int(d["frames_processed"]) > 0  # noqa: E731
        assert wait_level(talk, OK, while_waiting=lambda: talk.ask(small), until=processed) == "ok"
        assert float(talk.diagnostics["rate_hz"]) > 0

        def good_and_foreign() -> None:
            talk.ask(small)
            talk.publisher.publish(talk.stamped(small, frame_id="camera"))

        message = wait_level(talk, WARN, while_waiting=good_and_foreign)
        assert "frames rejected in the last 2 s; last: wrong_frame" in message
        assert 0.2 < float(talk.diagnostics["rejected_fraction"]) < 1

        def foreign() -> None:
            talk.publisher.publish(talk.stamped(small, frame_id="camera"))
            end = time.monotonic() + 0.1
            while time.monotonic() < end:
                rclpy.spin_once(client, timeout_sec=0.02)

        message = wait_level(talk, ERROR, while_waiting=foreign)
        assert message.startswith("all ") and "frames rejected in the last 2 s; last: wrong_frame" in message
        assert talk.diagnostics["rate_hz"] == "0.000"  # the processed frames have aged out of the window
        message = wait_level(talk, STALE)  # nothing sent any more
        assert message.startswith("no input for ")
    finally:
        stop(node, talk)


def test_processing_time_over_budget_warns_then_errors(client, model_files, small):
    node = start(model_files, "health_budget", processing_budget_ms=0.001, late_frames_error=3, input_timeout_s=60.0)
    talk = Conversation(client, "health_budget", "/health_budget/points")
    try:
        spin_until(
            client, lambda: talk.publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S, "the node's subscription"
        )
        talk.ask(small)
        message = wait_level(talk, WARN)
        assert message.startswith("mean processing") and message.endswith("over the 0.001 ms budget")
        assert talk.diagnostics["consecutive_late_frames"] == "1"
        talk.ask(small)
        talk.ask(small)
        assert wait_level(talk, ERROR) == "3 consecutive frames over budget"
    finally:
        stop(node, talk)


def test_consecutive_internal_errors_end_the_process_with_code_70(client, model_files, small):
    node = start(model_files, "health_faulty", script="test/faulty_perception.py", exit_after_internal_errors=3)
    talk = Conversation(client, "health_faulty", "/health_faulty/points")
    try:
        spin_until(
            client, lambda: talk.publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S, "the node's subscription"
        )
        assert talk.ask(small).width == small.width  # the first frame works
        deadline = time.monotonic() + 60
        while node.process.poll() is None:
            assert time.monotonic() < deadline, "the node did not exit"
            talk.publisher.publish(talk.stamped(small))
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                rclpy.spin_once(client, timeout_sec=0.02)
        assert node.process.wait() == 70
        fatal = node.wait_for_line("exiting: 3 consecutive internal errors", timeout=1)
        assert "RuntimeError: CUDA error: an illegal memory access was encountered (simulated)" in fatal
        spin_until(client, lambda: talk.diagnostics.get("level") == ERROR, 5, "the final diagnostics")
        assert talk.diagnostics["message"].startswith("3 consecutive internal errors, exiting: internal_error:")
        assert talk.diagnostics["rejected_internal_error"] == "3"
        assert np.isclose(float(talk.diagnostics["frames_processed"]), 1)
    finally:
        stop(node, talk)
