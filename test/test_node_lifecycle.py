"""The managed (lifecycle) node over real DDS: another process drives it through the standard lifecycle
services (`~/change_state`, `~/get_state`) and its parameter service.

No cloud is taken before activate or after deactivate (the input subscription exists only while
active), a bad checkpoint fails configure with its reason and leaves the node unconfigured, parameters
change only while unconfigured, deactivate finishes the frame in flight, cleanup releases the model and
the outputs, configure-activate works again after cleanup, and shutdown is clean from any state.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.node import NodeNameNonExistentError
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import NodeProcess, node_parameters, spin_until
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from test_node import cloud

from sonata_model.io.frame import Frame
from sonata_model.synth.drive import generate_drive

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
NAME = "managed_perception"


class Manager:
    """What a lifecycle manager does: transitions and parameters through the node's services."""

    def __init__(self, client, name: str) -> None:
        self.client, self.name = client, name
        self.change = client.create_client(ChangeState, f"/{name}/change_state")
        self.get = client.create_client(GetState, f"/{name}/get_state")
        self.parameters = client.create_client(SetParameters, f"/{name}/set_parameters")
        for service in (self.change, self.get, self.parameters):
            assert service.wait_for_service(timeout_sec=60), f"{service.srv_name} not offered"

    def _call(self, service, request, timeout: float = 120.0):
        future = service.call_async(request)
        spin_until(self.client, future.done, timeout, f"{service.srv_name} to answer")
        return future.result()

    def transition(self, label: str) -> bool:
        request = ChangeState.Request()
        request.transition.label = label
        return self._call(self.change, request).success

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def set(self, **values) -> list:
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        return self._call(self.parameters, request).results

    def close(self) -> None:
        for service in (self.change, self.get, self.parameters):
            self.client.destroy_client(service)


class Traffic:
    """A LiDAR publishing to the node, and a listener to its segmentation and diagnostics."""

    def __init__(self, client, topic: str) -> None:
        self.client = client
        self.publisher = client.create_publisher(PointCloud2, topic, RELIABLE)
        self.answers: dict[tuple[int, int], PointCloud2] = {}
        self.diagnostics: dict[str, str] = {}
        self.output = client.create_subscription(
            PointCloud2, f"/{NAME}/output/segmentation", lambda m: self.answers.__setitem__(key(m), m), RELIABLE
        )
        self.status = client.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{NAME}: segmentation":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def send(self, msg: PointCloud2) -> tuple[int, int]:
        msg.header = Header(stamp=self.client.get_clock().now().to_msg(), frame_id="lidar")
        self.publisher.publish(msg)
        return key(msg)

    def ask(self, msg: PointCloud2) -> PointCloud2:
        stamp = self.send(msg)
        spin_until(self.client, lambda: stamp in self.answers, 60, "the node's answer")
        return self.answers.pop(stamp)

    def unanswered_for(self, msg: PointCloud2, seconds: float) -> bool:
        """Publish `msg` and spin `seconds`: True when no answer came (the node takes no clouds)."""
        stamp = self.send(msg)
        try:
            spin_until(self.client, lambda: stamp in self.answers, seconds, "an answer")
        except AssertionError:
            return True
        return False

    def close(self) -> None:
        self.client.destroy_subscription(self.output)
        self.client.destroy_subscription(self.status)
        self.client.destroy_publisher(self.publisher)


def key(msg: PointCloud2) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def start_managed(name: str, activate: bool = False, **parameters) -> NodeProcess:
    args = [f"{k}:={v}" for k, v in {"device": "cpu", "input_reliability": "reliable", **parameters}.items()]
    return NodeProcess(
        "sonata_ros.perception_node",
        [
            *(a for arg in args for a in ("-p", arg)),
            "-r",
            f"__node:={name}",
            "-r",
            f"~/input/pointcloud:=/{name}/points",
        ],
        args=("--managed", "--activate") if activate else ("--managed",),
    )


def test_lifecycle_transitions_driven_from_another_process(client, model_files, tmp_path):
    encoder, head = model_files
    missing = tmp_path / "absent.pth"
    node = start_managed(NAME, checkpoint=missing, head=head, diagnostics_period_s=0.2)
    manager = Manager(client, NAME)
    traffic = Traffic(client, f"/{NAME}/points")
    small = next(iter(generate_drive("vlp16", frames=1, seed=3)))
    msg = cloud(Frame(coord=small.coord[:4000], strength=small.strength[:4000]), "velodyne")
    frames = list(generate_drive("hdl64", frames=2, seed=3))
    big = cloud(
        Frame(coord=np.concatenate([f.coord for f in frames]), strength=np.concatenate([f.strength for f in frames])),
        "velodyne",
    )
    try:
        assert manager.state() == "unconfigured" and "ready:" not in node.output
        assert traffic.publisher.get_subscription_count() == 0  # nothing takes clouds

        # a bad checkpoint fails configure with its reason; the node stays unconfigured
        assert manager.transition("configure") is False
        assert f"checkpoint not found: {missing}" in node.wait_for_line("configure failed:")
        assert manager.state() == "unconfigured"

        # parameters are read at configure: set while unconfigured, then configure works
        assert all(r.successful for r in manager.set(checkpoint=str(encoder), head=str(head)))
        assert manager.transition("configure") is True
        assert manager.state() == "inactive" and "ready:" in node.output
        refused = manager.set(checkpoint=str(missing))[0]
        assert not refused.successful and "clean it up first" in refused.reason
        spin_until(client, lambda: traffic.output.get_publisher_count() == 1, 20, "the node's output publisher")
        assert traffic.publisher.get_subscription_count() == 0 and traffic.unanswered_for(msg, 1.0)

        # active: clouds are taken and answered
        assert manager.transition("activate") is True and manager.state() == "active"
        spin_until(client, lambda: traffic.publisher.get_subscription_count() == 1, 20, "the input subscription")
        assert traffic.ask(msg).width == msg.width

        # deactivate while a big frame is in flight: it is finished and published, then nothing is taken
        before = int(traffic.diagnostics.get("frames_received", 0))
        in_flight = traffic.send(big)
        spin_until(client, lambda: int(traffic.diagnostics.get("frames_received", 0)) > before, 30, "the big cloud")
        assert manager.transition("deactivate") is True and manager.state() == "inactive"
        spin_until(client, lambda: in_flight in traffic.answers, 30, "the frame in flight")
        assert traffic.answers.pop(in_flight).width == big.width
        spin_until(client, lambda: traffic.publisher.get_subscription_count() == 0, 20, "the subscription gone")
        assert traffic.unanswered_for(msg, 1.0)

        # cleanup releases the model and the outputs; configure + activate work again
        assert manager.transition("cleanup") is True and manager.state() == "unconfigured"
        node.wait_for_line("unconfigured: model released")
        spin_until(client, lambda: traffic.output.get_publisher_count() == 0, 20, "the outputs gone")
        assert manager.transition("configure") is True and manager.transition("activate") is True
        assert node.output.count("ready:") == 2
        spin_until(client, lambda: traffic.publisher.get_subscription_count() == 1, 20, "the input subscription")
        assert traffic.ask(msg).width == msg.width

        # shutdown from active: finalized, nothing left; the process ends cleanly on SIGINT
        assert manager.transition("shutdown") is True and manager.state() == "finalized"
        spin_until(client, lambda: traffic.output.get_publisher_count() == 0, 20, "the outputs gone")
        assert traffic.publisher.get_subscription_count() == 0
    finally:
        manager.close()
        traffic.close()
        if node.process.poll() is None:
            assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output


@pytest.mark.parametrize("steps", [[], ["configure"]], ids=["from_unconfigured", "from_inactive"])
def test_shutdown_is_clean_from_every_state(client, model_files, steps):
    encoder, head = model_files
    name = f"managed_{len(steps)}"
    node = start_managed(name, checkpoint=encoder, head=head)
    manager = Manager(client, name)
    try:
        for step in steps:
            assert manager.transition(step) is True
        assert manager.transition("shutdown") is True and manager.state() == "finalized"
    finally:
        manager.close()
        assert node.stop(signal.SIGTERM) == 0
    assert "Traceback" not in node.output and "finalized" in node.output


def test_the_plain_node_stays_the_default(client, model_files):
    encoder, head = model_files
    node = NodeProcess("sonata_ros.perception_node", [*node_parameters(encoder, head), "-r", "__node:=plain"])
    try:
        node.wait_for_line("ready:")
        services: set[str] = set()

        def discovered() -> bool:
            try:
                services.update(n for n, _ in client.get_service_names_and_types_by_node("plain", "/"))
            except NodeNameNonExistentError:  # listed by name before its graph entry arrived here
                return False
            return "/plain/set_parameters" in services

        spin_until(client, discovered, 30, "the plain node's services")
        assert "/plain/get_state" not in services and "/plain/change_state" not in services
    finally:
        assert node.stop(signal.SIGINT) == 0


def test_the_inputs_named_at_start_take_their_sensor_parameters_before_configure(client, model_files):
    """A managed multi-LiDAR node: a lifecycle manager sets an input's extrinsic while unconfigured, also
    for an input it names itself after start."""
    encoder, head = model_files
    name = "managed_fleet"
    node = start_managed(name, checkpoint=encoder, head=head, input_topics="['/a', '/b']", input_names="[front, rear]")
    try:
        manager = Manager(client, name)  # waits for its services
        assert manager.state() == "unconfigured"
        (result,) = manager.set(**{"sensors.front.translation": [1.2, 0.0, 0.3]})
        assert result.successful, result.reason
        # an input named later by the manager gets its sensor parameters too, read at configure
        assert all(
            r.successful for r in manager.set(input_topics=["/a", "/b", "/c"], input_names=["front", "rear", "roof"])
        )
        (result,) = manager.set(**{"sensors.roof.translation": [0.0, 0.0]})  # a typo the configure catches
        assert result.successful, result.reason
        assert manager.transition("configure") is False
        assert "sensors.roof" in node.wait_for_line("configure failed:")
        assert manager.set(**{"sensors.roof.translation": [0.0, 0.0, 1.9]})[0].successful
        assert manager.transition("configure") is True and manager.state() == "inactive"
        manager.close()
    finally:
        if node.process.poll() is None:
            assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output


def test_a_managed_node_started_with_activate_brings_itself_up_and_stays_managed(client, model_files):
    """`--managed --activate` (how the launch file restarts a managed node after code 70): active and
    answering without a manager, and a manager can still take it down and up again."""
    encoder, head = model_files
    name = NAME  # the name Traffic listens under
    node = start_managed(name, activate=True, checkpoint=encoder, head=head)
    traffic = Traffic(client, f"/{name}/points")
    manager = None
    try:
        node.wait_for_line("active: taking clouds")
        manager = Manager(client, name)
        assert manager.state() == "active"
        frame = next(iter(generate_drive("vlp16", frames=1, seed=5)))
        message = cloud(Frame(coord=frame.coord[:4000], strength=frame.strength[:4000]), "velodyne")
        spin_until(client, lambda: traffic.publisher.get_subscription_count() == 1, 20, "the input subscription")
        spin_until(client, lambda: traffic.output.get_publisher_count() == 1, 20, "the node's output publisher")
        assert traffic.ask(message).width == message.width
        assert manager.transition("deactivate") is True and manager.state() == "inactive"
        assert manager.transition("activate") is True and manager.state() == "active"
    finally:
        traffic.close()
        if manager is not None:
            manager.close()
        assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output


def test_a_managed_node_that_cannot_bring_itself_up_exits_with_the_reason(tmp_path):
    """`--managed --activate` whose configure fails exits with code 1 and why, as the plain node does,
    rather than waiting unconfigured for a manager that would never notice it."""
    node = start_managed("managed_down", activate=True, checkpoint=tmp_path / "absent.pth")
    assert node.process.wait(timeout=60) == 1
    assert f"checkpoint not found: {tmp_path / 'absent.pth'}" in node.output
    assert "cannot start: configure failed" in node.output and "Traceback" not in node.output


def test_activate_without_managed_is_refused():
    node = NodeProcess("sonata_ros.perception_node", ["-r", "__node:=not_managed"], args=("--activate",))
    assert node.process.wait(timeout=60) == 2
    assert "--activate is for the managed node (--managed)" in node.output
