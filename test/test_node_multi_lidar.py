"""Several LiDARs, one forward, over real DDS (node, drivers and client in separate processes).

Two sensors in different driver layouts and intensity encodings (a Velodyne in front, an organized
Ouster turned backwards) are merged in the base frame: the merged labels are those of a single-cloud run
on the merged cloud, each input gets back exactly its points in its frame, and every merged frame is ONE
encoder forward. Stale and malformed inputs are skipped and counted; three `sim_lidar` processes keep
the node fed until one goes silent, and the node goes on with the other two under a diagnostics WARN.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import NodeProcess, node_parameters, spin_until
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

import sonata_model as sm
from sonata_model.geometry import quaternion_matrix
from sonata_model.io.pointcloud2 import decode, structured_view
from sonata_ros.sim_lidar import cloud_message, mounted_drive

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
YAW_180 = [0.0, 0.0, 1.0, 0.0]
YAW_90 = [0.0, 0.0, 0.7071068, 0.7071068]
# name: synthetic sensor, driver layout, mount on the base [x, y, z, qx, qy, qz, qw], field of view
TWO = {
    "front": ("vlp16", "velodyne", [1.2, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0], 200.0),
    "rear": ("os128", "ouster", [-1.0, 0.1, 0.2, *YAW_180], 150.0),
}
FRONT_INTENSITY_SCALE = 100.0  # the front driver's own scale; the rear's reflectivity is read / 255


def sensor_parameters(sensors: dict, **scales: float) -> dict:
    values = {"input_topics": [f"/fleet/{name}" for name in sensors], "input_names": list(sensors)}
    for name, (_, _, pose, _) in sensors.items():
        values[f"sensors.{name}.translation"] = pose[:3]
        values[f"sensors.{name}.rotation"] = pose[3:]
        values[f"sensors.{name}.frame_id"] = f"{name}_lidar"
    values.update({f"sensors.{name}.intensity_scale": scale for name, scale in scales.items()})
    return values


@pytest.fixture(scope="module")
def two_lidar_node(model_files):
    encoder, head = model_files
    parameters = sensor_parameters(TWO, front=FRONT_INTENSITY_SCALE)
    process = NodeProcess(
        "sonata_ros.perception_node",
        node_parameters(encoder, head, sync_timeout_ms=3000.0, stale_after_ms=300.0, **parameters),
    )
    assert "2 inputs merged in base_link" in process.wait_for_line("ready:")
    yield process
    if process.process.poll() is None:
        assert process.stop(signal.SIGINT) == 0
    assert "Traceback" not in process.output


class Fleet:
    """The drivers' side (one publisher per sensor) and a listener to every output of the node."""

    def __init__(
        self, client, names: list[str], topic: str = "/fleet/{}", publish: bool = True, node: str = "sonata_perception"
    ) -> None:
        self.client, self.node = client, node
        out = f"/{node}/output"
        self.publishers = (
            {name: client.create_publisher(PointCloud2, topic.format(name), RELIABLE) for name in names}
            if publish
            else {}
        )
        self.merged: dict[tuple[int, int], PointCloud2] = {}
        self.answers: dict[str, dict[tuple[int, int], PointCloud2]] = {name: {} for name in names}
        self.diagnostics: dict[str, str] = {}
        self.subscriptions = [
            client.create_subscription(PointCloud2, f"{out}/segmentation", self._on_merged, RELIABLE),
            client.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10),
        ] + [
            client.create_subscription(
                PointCloud2, f"{out}/{name}/segmentation", lambda m, name=name: self._on_answer(name, m), RELIABLE
            )
            for name in names
        ]

    def _on_merged(self, msg: PointCloud2) -> None:
        self.merged[key(msg)] = msg

    def _on_answer(self, name: str, msg: PointCloud2) -> None:
        self.answers[name][key(msg)] = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{self.node}: segmentation":
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["level"] = status.level
                self.diagnostics["message"] = status.message

    def ask(self, clouds: dict[str, PointCloud2], ages_ms: dict[str, float], answered: list[str]) -> tuple:
        """Publish one cloud per sensor, stamped `ages_ms` ago, and wait for the merged answer (stamped as the
        newest) and the per-input answers of `answered`."""
        now = self.client.get_clock().now().nanoseconds
        for name, msg in clouds.items():
            stamp = now - int(ages_ms.get(name, 0.0) * 1e6)
            msg.header = Header(frame_id=f"{name}_lidar")
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        for name, msg in clouds.items():
            self.publishers[name].publish(msg)
        newest = key(max(clouds.values(), key=lambda m: key(m)))

        def done() -> bool:
            return newest in self.merged and all(key(clouds[n]) in self.answers[n] for n in answered)

        spin_until(self.client, done, 60, "the merged and per-input answers")
        return self.merged.pop(newest), {n: self.answers[n].pop(key(clouds[n])) for n in answered}

    def counter(self, name: str) -> int:
        return int(self.diagnostics.get(name, 0))

    def wait_diagnostics(self, condition, what: str, timeout: float = 20.0) -> None:
        spin_until(self.client, lambda: bool(self.diagnostics) and condition(self.diagnostics), timeout, what)

    def close(self) -> None:
        for subscription in self.subscriptions:
            self.client.destroy_subscription(subscription)
        for publisher in self.publishers.values():
            self.client.destroy_publisher(publisher)


def key(msg: PointCloud2) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def xyz_of(msg: PointCloud2) -> np.ndarray:
    view = structured_view(msg).reshape(-1)
    return np.stack([view[a] for a in "xyz"], axis=1)


def in_base(
    msg: PointCloud2, pose: list[float], intensity_scale: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid points in the base frame, their strength, the validity mask) computed here, as a user would."""
    decoded = decode(msg, intensity_scale=intensity_scale)
    rotation = quaternion_matrix(*pose[3:]).astype(np.float32)
    return decoded.coord @ rotation.T + np.asarray(pose[:3], np.float32), decoded.strength, decoded.valid


@pytest.fixture(scope="module")
def fleet(client, two_lidar_node):
    fleet = Fleet(client, list(TWO))
    fleet.wait_diagnostics(lambda d: d.get("input_publishers") == "2", "the node's subscriptions to both sensors")
    yield fleet
    fleet.close()


def two_clouds(frame_index: int = 0) -> dict[str, PointCloud2]:
    return {
        name: cloud_message(mounted_drive(sensor, frame_index + 1, 5, pose, fov)[frame_index], layout)[0]
        for name, (sensor, layout, pose, fov) in TWO.items()
    }


def test_two_lidars_are_segmented_as_one_merged_cloud_in_one_forward(fleet, model_files):
    clouds = two_clouds()
    assert clouds["rear"].height == 128 and clouds["front"].height == 1  # organized Ouster, flat Velodyne
    merged, answers = fleet.ask(clouds, {"front": 0.0, "rear": 30.0}, answered=["front", "rear"])

    # the merged cloud: both sensors' valid points in the base frame, stamped as the newest input
    assert merged.header.frame_id == "base_link" and key(merged) == key(clouds["front"])
    parts = [in_base(clouds[n], TWO[n][2], FRONT_INTENSITY_SCALE if n == "front" else None) for n in TWO]
    expected_xyz = np.concatenate([p[0] for p in parts])
    merged_view = structured_view(merged).reshape(-1)
    assert len(merged_view) == len(expected_xyz) == sum(len(p[0]) for p in parts)
    np.testing.assert_allclose(xyz_of(merged), expected_xyz, atol=1e-5)

    # its labels are those of one single-cloud run on the merged cloud (one voxel grid for both sensors)
    encoder, head = model_files
    segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu")
    result = segmenter(xyz_of(merged), strength=np.concatenate([p[1] for p in parts]))
    expected = np.where(result.labels >= 0, result.labels, 255)
    same = merged_view["class_id"] == expected
    assert same.mean() > 0.999
    np.testing.assert_allclose(merged_view["probability"][same], result.probability[same], atol=1e-4)
    # ... and not those of each sensor alone: overlapping sensors share voxels
    front_alone = segmenter(parts[0][0], strength=parts[0][1])
    assert len(front_alone.voxel_index) + len(segmenter(parts[1][0], strength=parts[1][1]).voxel_index) > len(
        result.voxel_index
    )

    # each input gets back exactly its points, in its frame, order and shape, with the merged labels
    start = 0
    for (name, msg), (_, _, valid) in zip(clouds.items(), parts, strict=True):
        answer = answers[name]
        assert answer.header.frame_id == f"{name}_lidar" and (answer.height, answer.width) == (msg.height, msg.width)
        np.testing.assert_array_equal(xyz_of(answer), xyz_of(msg).astype(np.float32))
        view = structured_view(answer).reshape(-1)
        count = int(valid.sum())
        np.testing.assert_array_equal(view["class_id"][valid], merged_view["class_id"][start : start + count])
        assert (view["class_id"][~valid] == 255).all()
        start += count
    assert (~parts[1][2]).sum() > 1000  # the Ouster's empty cells came back as points, labelled unknown

    # one encoder forward per merged frame, counted inside the node
    fleet.ask(two_clouds(1), {"front": 10.0, "rear": 0.0}, answered=["front", "rear"])
    fleet.wait_diagnostics(lambda d: int(d["frames_processed"]) >= 2, "two frames processed")
    assert fleet.counter("encoder_forwards") == fleet.counter("frames_processed") == 2
    assert fleet.counter("input_front_received") == fleet.counter("input_rear_received") == 2


def test_stale_and_malformed_inputs_are_skipped_and_counted(fleet):
    clouds = two_clouds()
    merged, _ = fleet.ask(clouds, {"front": 0.0, "rear": 1000.0}, answered=["front"])
    assert merged.width == int(decode(clouds["front"]).valid.sum())  # the front alone
    assert key(clouds["rear"]) not in fleet.answers["rear"]
    fleet.wait_diagnostics(lambda d: d["input_rear_stale"] == "1", "the stale rear cloud counted")
    assert fleet.diagnostics["last_error"].startswith("stale: input rear: stamped 1000 ms before the newest")

    clouds = two_clouds()
    clouds["rear"].data = clouds["rear"].data[:100]
    merged, _ = fleet.ask(clouds, {"front": 0.0, "rear": 5.0}, answered=["front"])
    assert merged.width == int(decode(clouds["front"]).valid.sum())
    fleet.wait_diagnostics(lambda d: d["input_rear_rejected"] == "1", "the malformed rear cloud counted")
    assert fleet.diagnostics["last_error"].startswith("rejected: malformed: input rear: ")
    assert fleet.counter("frames_rejected") == 0  # the frames went on with the front

    clouds = two_clouds()  # both malformed: the set is rejected, and each input's count says why
    now = fleet.client.get_clock().now().to_msg()
    for name, msg in clouds.items():
        msg.data = msg.data[:100]
        msg.header = Header(stamp=now, frame_id=f"{name}_lidar")
        fleet.publishers[name].publish(msg)
    fleet.wait_diagnostics(
        lambda d: (d["input_front_rejected"], d["input_rear_rejected"]) == ("1", "2") and d["frames_rejected"] != "0",
        "the set rejected and both inputs counted",
    )
    assert fleet.diagnostics["rejected_malformed"] == fleet.diagnostics["frames_rejected"]


THREE = {
    "front": ("vlp16", "velodyne", [1.2, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0], 200.0),
    "rear": ("hdl32", "hesai", [-1.0, 0.0, 0.2, *YAW_180], 200.0),
    "left": ("vlp16", "autoware_xyzirc", [0.0, 0.8, 0.1, *YAW_90], 120.0),
}


def start_sim_lidar(name: str) -> NodeProcess:
    sensor, layout, pose, fov = THREE[name]
    return NodeProcess(
        "sonata_ros.sim_lidar",
        [
            *("-r", f"__node:=sim_{name}", "-r", f"~/points:=/fleet3/{name}"),
            *ros_parameters(
                sensor=sensor,
                layout=layout,
                pose=pose,
                fov_deg=fov,
                frames=2,
                seed=9,
                rate_hz=4.0,
                frame_id=f"{name}_lidar",
            ),
        ],
    )


def ros_parameters(**values) -> list[str]:
    return [arg for name, value in values.items() for arg in ("-p", f"{name}:={value}")]


def test_three_sim_lidars_then_one_goes_silent(client, model_files):
    """Three sim_lidar processes at 4 Hz; the node merges them (one forward each), then one stops and the
    node goes on with the other two after sync_timeout_ms (300 ms, over the 250 ms period, so that a set
    of three live sensors always completes), saying so on /diagnostics."""
    encoder, head = model_files
    parameters = sensor_parameters(THREE)
    parameters["input_topics"] = [f"/fleet3/{name}" for name in THREE]
    node = NodeProcess(
        "sonata_ros.perception_node",
        [
            *node_parameters(
                encoder, head, sync_timeout_ms=300.0, health_window_s=2.0, processing_budget_ms=60000.0, **parameters
            ),
            *("-r", "__node:=fleet3_perception"),
        ],
    )
    sims = {name: start_sim_lidar(name) for name in THREE}
    inputs = Fleet(client, list(THREE), publish=False, node="fleet3_perception")
    recorded: dict[str, dict] = {name: {} for name in THREE}
    taps = [
        client.create_subscription(
            PointCloud2, f"/fleet3/{name}", lambda m, name=name: recorded[name].__setitem__(key(m), m), RELIABLE
        )
        for name in THREE
    ]
    try:
        node.wait_for_line("ready:")
        spin_until(
            client,
            lambda: all(recorded[n].keys() & inputs.answers[n].keys() for n in THREE),
            90,
            "answers to clouds seen here too, for all three inputs",
        )
        for name in THREE:  # each answer is its input, point for point
            stamp, answer = next((k, a) for k, a in inputs.answers[name].items() if k in recorded[name])
            np.testing.assert_array_equal(xyz_of(answer), xyz_of(recorded[name][stamp]))
            assert answer.header.frame_id == f"{name}_lidar"
        inputs.wait_diagnostics(lambda d: int(d["frames_processed"]) >= 3, "three merged frames")
        forwards, processed = int(inputs.diagnostics["encoder_forwards"]), int(inputs.diagnostics["frames_processed"])
        assert processed <= forwards <= processed + 1  # one per frame of three (+1: a forward not yet counted done)

        inputs.wait_diagnostics(lambda d: d["level"] == DiagnosticStatus.OK, "all three inputs flowing", timeout=30)
        assert sims["left"].stop(signal.SIGINT) == 0
        inputs.wait_diagnostics(
            lambda d: d["level"] == DiagnosticStatus.WARN and "input left skipped" in d["message"],
            "a WARN about the silent input",
            timeout=30,
        )
        assert inputs.diagnostics["message"].endswith("last: missing")
        # a left cloud still in flight when the WARN came goes out with the next merged frame
        drained = len(inputs.merged) + 1
        spin_until(client, lambda: len(inputs.merged) >= drained, 30, "one merged frame after the WARN")
        merged_before = len(inputs.merged)
        answers_before = {name: len(inputs.answers[name]) for name in THREE}
        spin_until(
            client,
            lambda: (
                len(inputs.merged) >= merged_before + 2 and len(inputs.answers["front"]) >= answers_before["front"] + 2
            ),
            30,
            "merged frames after the left LiDAR stopped",
        )
        assert len(inputs.answers["left"]) == answers_before["left"]
        assert int(inputs.diagnostics["input_left_missing"]) >= 2
        forwards, processed = int(inputs.diagnostics["encoder_forwards"]), int(inputs.diagnostics["frames_processed"])
        assert processed <= forwards <= processed + 1
    finally:
        for tap in taps:
            client.destroy_subscription(tap)
        inputs.close()
        for sim in sims.values():
            if sim.process.poll() is None:
                sim.stop(signal.SIGINT)
        if node.process.poll() is None:
            assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output


def test_the_shipped_two_lidar_params_file_configures_the_node(client, model_files):
    """config/multi_lidar.yaml (nested sensors.<name>.* keys) over perception.yaml, as multi_lidar.launch.py
    gives them: two subscriptions, two per-input outputs, the extrinsics as written."""
    encoder, head = model_files
    params = [*("--params-file", "config/perception.yaml", "--params-file", "config/multi_lidar.yaml")]
    node = NodeProcess(
        "sonata_ros.perception_node", [*params, *node_parameters(encoder, head), "-r", "__node:=shipped_fleet"]
    )
    drivers = {name: client.create_publisher(PointCloud2, f"/{name}_lidar/points", RELIABLE) for name in TWO}
    getter = client.create_client(GetParameters, "/shipped_fleet/get_parameters")
    try:
        assert "2 inputs merged in base_link" in node.wait_for_line("ready:")
        spin_until(client, lambda: all(p.get_subscription_count() == 1 for p in drivers.values()), 30, "subscriptions")
        assert getter.wait_for_service(timeout_sec=30)
        names = ["sensors.rear.rotation", "sensors.rear.translation", "sensors.front.frame_id"]
        future = getter.call_async(GetParameters.Request(names=names))
        spin_until(client, future.done, 30, "the parameters")
        rotation, translation, frame_id = future.result().values
        assert list(rotation.double_array_value) == [0.0, 0.0, 1.0, 0.0]
        assert list(translation.double_array_value) == [-1.0, 0.0, 0.6]
        assert frame_id.string_value == "front_lidar"
        spin_until(
            client,
            lambda: "/shipped_fleet/output/rear/segmentation" in dict(client.get_topic_names_and_types()),
            30,
            "the per-input output",
        )
    finally:
        client.destroy_client(getter)
        for publisher in drivers.values():
            client.destroy_publisher(publisher)
        assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output
