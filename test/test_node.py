"""The perception node in its own process, over real DDS: outputs, bad input, back-pressure, soak, shutdown."""

from __future__ import annotations

import signal
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import DISCOVERY_TIMEOUT_S, NodeProcess, node_parameters, spin_until
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Empty, Header

import sonata_model as sm
from sonata_model.io.bags import frame_arrays
from sonata_model.io.frame import Frame
from sonata_model.io.pointcloud2 import LAYOUT_POINT_STEP, LAYOUTS, decode, pack_points, structured_view, to_message
from sonata_model.profiling import count_ops
from sonata_model.synth.drive import generate_drive

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
OUT = "/sonata_perception/output"


@pytest.fixture(scope="module")
def node(model_files):
    encoder, head = model_files
    process = NodeProcess(
        "sonata_ros.perception_node",
        [
            "--params-file",
            "config/perception.yaml",
            *node_parameters(
                encoder,
                head,
                frame_id="lidar",
                max_points=150000,
                pca_frames=1,
                missing_intensity="reject",
                cpu_threads=1,
            ),
            "-r",
            "~/input/pointcloud:=/test/points",
        ],
    )
    process.wait_for_line("ready:")
    yield process
    if process.process.poll() is None:
        assert process.stop(signal.SIGINT) == 0
    assert "Traceback" not in process.output


class Conversation:
    """Publishes clouds to the node named `name` and collects its outputs and diagnostics."""

    def __init__(self, client, name: str = "sonata_perception", input_topic: str = "/test/points") -> None:
        self.client, self.name = client, name
        self.publisher = client.create_publisher(PointCloud2, input_topic, RELIABLE)
        self.segmentation: dict[tuple[int, int], PointCloud2] = {}
        self.diagnostics: dict[str, str] = {}
        self.subscriptions = [
            client.create_subscription(PointCloud2, f"/{name}/output/segmentation", self._on_segmentation, RELIABLE),
            client.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10),
        ]
        self.stamp = 0

    def _on_segmentation(self, msg: PointCloud2) -> None:
        self.segmentation[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{self.name}: segmentation":
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["level"] = status.level
                self.diagnostics["message"] = status.message

    def stamped(self, msg: PointCloud2, frame_id: str = "lidar") -> PointCloud2:
        self.stamp += 1
        now = self.client.get_clock().now().to_msg()
        msg.header = Header(stamp=now, frame_id=frame_id)
        return msg

    def ask(self, msg: PointCloud2, timeout: float = 30.0) -> PointCloud2:
        """Publish until the node answers this very message (the first may precede discovery)."""
        msg = self.stamped(msg)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        deadline = time.monotonic() + timeout
        while key not in self.segmentation:
            assert time.monotonic() < deadline, "no segmentation answer"
            self.publisher.publish(msg)
            end = time.monotonic() + 2.0
            while key not in self.segmentation and time.monotonic() < end:
                rclpy.spin_once(self.client, timeout_sec=0.05)
        return self.segmentation.pop(key)

    def counter(self, key: str) -> int:
        return int(self.diagnostics.get(key, 0))

    def close(self) -> None:
        for subscription in self.subscriptions:
            self.client.destroy_subscription(subscription)
        self.client.destroy_publisher(self.publisher)


@pytest.fixture(scope="module")
def talk(client, node):
    conversation = Conversation(client)
    spin_until(
        client,
        lambda: conversation.publisher.get_subscription_count() > 0,
        DISCOVERY_TIMEOUT_S,
        "the node's subscription",
    )
    return conversation


@contextmanager
def own_node(client, name: str, encoder, head, **parameters) -> Iterator[tuple[NodeProcess, Conversation]]:
    """A node of its own, named `name` (input /`name`/points), with `parameters`: (its process, a conversation
    with it) once it subscribes; stopped with SIGINT after, and its output free of tracebacks."""
    process = NodeProcess(
        "sonata_ros.perception_node",
        [
            *node_parameters(encoder, head, **parameters),
            *("-r", f"~/input/pointcloud:=/{name}/points", "-r", f"__node:={name}"),
        ],
    )
    try:
        process.wait_for_line("ready:")
        talk = Conversation(client, name=name, input_topic=f"/{name}/points")
        spin_until(
            client, lambda: talk.publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S, "the node's subscription"
        )
        yield process, talk
        talk.close()
    finally:
        if process.process.poll() is None:
            assert process.stop(signal.SIGINT) == 0
    assert "Traceback" not in process.output


@pytest.fixture(scope="module")
def frame() -> Frame:
    return next(iter(generate_drive("vlp16", frames=1, seed=2)))


def cloud(frame: Frame, layout: str) -> PointCloud2:
    arrays, height = frame_arrays(frame, layout)
    return to_message(
        pack_points(LAYOUTS[layout], arrays, height=height, point_step=LAYOUT_POINT_STEP[layout]),
        PointCloud2,
        PointField,
        Header(),
    )


def expected_segmentation(model_files, msg: PointCloud2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, winning-class probabilities) of the valid points by the same model in this process, and the
    validity mask."""
    encoder, head = model_files
    segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu")
    decoded = decode(msg)
    result = segmenter(decoded.coord, strength=decoded.strength)
    return result.labels, result.probability, decoded.valid


@pytest.mark.parametrize("layout", ["velodyne", "ouster", "autoware_xyzirc"])
def test_every_input_point_gets_a_label_in_the_specified_layout(talk, model_files, layout):
    source = next(iter(generate_drive("os128" if layout == "ouster" else "vlp16", frames=1, seed=4)))
    msg = cloud(source, layout)
    answer = talk.ask(msg)
    assert answer.header.frame_id == "lidar" and (answer.height, answer.width) == (msg.height, msg.width)
    assert [(f.name, f.datatype, f.count) for f in answer.fields] == [
        ("x", 7, 1),
        ("y", 7, 1),
        ("z", 7, 1),
        ("class_id", 2, 1),
        ("probability", 7, 1),
        ("rgb", 7, 1),
    ]
    view = structured_view(answer).reshape(-1)
    labels, probability, valid = expected_segmentation(model_files, msg)
    assert (view["class_id"][~valid] == 255).all() and (view["probability"][~valid] == 0).all()
    same = view["class_id"][valid] == labels
    assert same.mean() > 0.999
    # the published probability is the winning class's softmax, not any other number in [1/C, 1]
    np.testing.assert_allclose(view["probability"][valid][same], probability[same], atol=1e-4)
    assert np.ptp(probability) > 0.3  # a test that tells confident points from doubtful ones
    np.testing.assert_array_equal(view["x"][valid], structured_view(msg).reshape(-1)["x"][valid])
    if layout == "ouster":
        assert (~valid).sum() > 1000  # zero returns were kept as points, labelled unknown


def test_the_cpu_forward_runs_on_the_threads_it_is_given(talk, frame):
    """cpu_threads: 1 (torch's default here is one per core, 2) holds the node's forward to one thread."""
    talk.ask(cloud(frame, "velodyne"))
    spin_until(talk.client, lambda: "torch_threads" in talk.diagnostics, 10, "the node's diagnostics")
    assert talk.diagnostics["torch_threads"] == "1"


def test_the_configured_node_is_out_of_the_garbage_collectors_walks(talk, frame):
    """What the node holds once configured (torch, the model, rclpy: well over 10k objects) is frozen, so
    a full collection set off by a frame walks only that frame's objects (sonata_ros.gc_policy)."""
    talk.ask(cloud(frame, "velodyne"))
    spin_until(talk.client, lambda: "gc_frozen_objects" in talk.diagnostics, 10, "the node's diagnostics")
    assert talk.counter("gc_frozen_objects") > 10_000


def test_saturating_intensity_is_segmented_and_reported(talk, node, frame):
    """Ouster's xyzi point type carries signal photons (thousands) as float intensity: /255 saturates."""
    photons = {"x": frame.coord[:, 0], "y": frame.coord[:, 1], "z": frame.coord[:, 2]}
    photons["intensity"] = (frame.strength * 4000).astype(np.float32)
    msg = to_message(pack_points(LAYOUTS["xyzi"], photons, point_step=32), PointCloud2, PointField, Header())
    assert talk.ask(msg).width == frame.num_points
    line = node.wait_for_line("values are above the scale and saturate", timeout=10)
    assert "'intensity'" in line and "set intensity_scale" in line


def test_embeddings_are_published_only_to_subscribers(talk, client, node, frame):
    assert "PCA basis fitted" not in node.output  # nobody asked for embedding colours yet
    received = {}
    subscriptions = [
        client.create_subscription(
            PointCloud2, f"{OUT}/{name}", lambda m, name=name: received.setdefault(name, m), RELIABLE
        )
        for name in ("embeddings", "embedding_rgb")
    ]
    spin_until(
        client, lambda: all(s.get_publisher_count() for s in subscriptions), DISCOVERY_TIMEOUT_S, "embedding publishers"
    )
    deadline = time.monotonic() + 30
    while len(received) < 2 and time.monotonic() < deadline:
        talk.ask(cloud(frame, "velodyne"))
    embeddings, rgb = received["embeddings"], received["embedding_rgb"]
    field = next(f for f in embeddings.fields if f.name == "embedding")
    assert field.count == 32  # the default: 32 principal components, not the 160 channels of the upcast
    assert embeddings.width < frame.num_points  # one row per voxel
    values = structured_view(embeddings).reshape(-1)["embedding"]
    variance = values.var(axis=0)
    assert variance[0] > variance[5] > variance[31] > 0  # principal components, by decreasing variance
    assert rgb.width == frame.num_points and [f.name for f in rgb.fields] == ["x", "y", "z", "rgb"]
    node.wait_for_line("PCA basis fitted", timeout=5)
    for subscription in subscriptions:
        client.destroy_subscription(subscription)


def test_without_a_head_the_node_publishes_every_embedding_channel_and_no_label(client, model_files, frame):
    """head: none and embedding_dim: 0: the embeddings cloud holds the encoder's whole upcast, one point per
    voxel (its first input point); the segmentation has every point unknown (255, probability 0)."""
    encoder, _ = model_files
    with own_node(client, "headless", encoder, "none", embedding_dim=0) as (_, talk):
        received = []
        subscription = client.create_subscription(PointCloud2, "/headless/output/embeddings", received.append, RELIABLE)
        spin_until(client, subscription.get_publisher_count, DISCOVERY_TIMEOUT_S, "the node's embeddings")
        msg = cloud(frame, "velodyne")
        answer = structured_view(talk.ask(msg)).reshape(-1)
        assert (answer["class_id"] == 255).all() and (answer["probability"] == 0).all()
        spin_until(client, lambda: bool(received), 10, "the embeddings")
        embeddings = received[-1]
        decoded = decode(msg)
        expected = sm.Segmenter(sm.load(encoder), None, device="cpu")(decoded.coord, strength=decoded.strength)
        field = next(f for f in embeddings.fields if f.name == "embedding")
        assert field.count == sm.load(encoder).config.head_channels  # every channel
        view = structured_view(embeddings).reshape(-1)
        np.testing.assert_allclose(view["embedding"], expected.embedding, atol=1e-4)
        np.testing.assert_array_equal(np.stack([view[a] for a in "xyz"], axis=1), decoded.coord[expected.voxel_index])
        client.destroy_subscription(subscription)


def test_the_labelled_cloud_does_not_wait_for_the_embeddings(client, model_files, frame):
    """Each output goes out once it is built, the labelled cloud first: a frame's segmentation reaches its
    subscriber while the same frame's embedding colours are still being made (held here, in the node's
    own process, until the test releases them; RViz's config subscribes to both)."""
    encoder, head = model_files
    name = "held_perception"
    held = NodeProcess(
        "test/held_embeddings_perception.py",
        [
            *node_parameters(encoder, head, pca_frames=1),
            *("-r", f"__node:={name}", "-r", f"~/input/pointcloud:=/{name}/points"),
        ],
    )
    held.wait_for_line("ready:")
    talk = Conversation(client, name, f"/{name}/points")
    colours: dict[tuple[int, int], PointCloud2] = {}
    rgb = client.create_subscription(
        PointCloud2,
        f"/{name}/output/embedding_rgb",
        lambda m: colours.setdefault((m.header.stamp.sec, m.header.stamp.nanosec), m),
        RELIABLE,
    )
    release = client.create_publisher(Empty, f"/{name}/release", RELIABLE)
    try:
        spin_until(
            client,
            lambda: min(
                talk.publisher.get_subscription_count(), rgb.get_publisher_count(), release.get_subscription_count()
            ),
            DISCOVERY_TIMEOUT_S,
            "the held node's topics",
        )
        answer = talk.ask(cloud(frame, "velodyne"), timeout=30)  # the colours are held for 60 s
        assert answer.width == frame.num_points
        assert not colours
        release.publish(Empty())
        key = (answer.header.stamp.sec, answer.header.stamp.nanosec)
        spin_until(client, lambda: key in colours, 30, "the frame's embedding colours once released")
        assert colours[key].width == frame.num_points
    finally:
        client.destroy_subscription(rgb)
        client.destroy_publisher(release)
        talk.close()
        assert held.stop(signal.SIGINT) == 0, held.output
    assert "Traceback" not in held.output


def test_the_node_reads_a_frame_s_labels_from_the_device_once(model_files, frame):
    """A copy from the device makes the host wait on a GPU: the node's per-point labelling copies the
    labels and the probabilities once each (SegmentationResult keeps what it copied)."""
    from sonata_ros.perception_node import _point_labels

    encoder, head = model_files
    selected = np.arange(0, frame.num_points, 2)  # every other point went to the model
    segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu")
    result = segmenter(frame.coord[selected], strength=frame.strength[selected])
    merged = SimpleNamespace(cloud=SimpleNamespace(coord=frame.coord), selected=selected)  # the fields it reads
    with count_ops() as reads:
        class_id, probability = _point_labels(merged, result)
    assert reads.syncs["copy_to_host"] == 2
    np.testing.assert_array_equal(class_id[selected], np.where(result.labels >= 0, result.labels, 255))
    np.testing.assert_array_equal(probability[selected], result.probability)
    assert (class_id[1::2] == 255).all() and (probability[1::2] == 0).all()  # not segmented


def wait_counter(talk, key: str, at_least: int, timeout: float = 20.0) -> None:
    spin_until(talk.client, lambda: talk.counter(key) >= at_least, timeout, f"diagnostics {key} >= {at_least}")


def test_the_input_is_subscribed_and_the_outputs_published_with_the_documented_reliability(talk, client):
    """input_reliability (reliable here; the best-effort default is test_node_transport's), outputs reliable."""
    spin_until(client, lambda: client.get_publishers_info_by_topic(f"{OUT}/segmentation"), 10, "the output")
    assert [i.qos_profile.reliability for i in client.get_subscriptions_info_by_topic("/test/points")] == [
        ReliabilityPolicy.RELIABLE
    ]
    for topic in ("segmentation", "embeddings", "embedding_rgb"):
        (info,) = client.get_publishers_info_by_topic(f"{OUT}/{topic}")
        assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE, topic


def test_diagnostics_time_every_stage_and_name_the_model(talk, frame, model_files):
    stages = ("decode_ms", "voxelize_ms", "encoder_ms", "head_ms", "messages_ms", "publish_ms", "latency_ms_p50")

    def timed() -> bool:
        return all(float(talk.diagnostics.get(key, 0)) > 0 for key in stages)

    deadline = time.monotonic() + 30
    while not timed():  # the window's means fall to 0 once frames stop: keep them coming
        assert time.monotonic() < deadline, f"diagnostics without every stage: {talk.diagnostics}"
        talk.ask(cloud(frame, "velodyne"))
        spin_until(talk.client, lambda: talk.counter("frames_processed") > 0, 10, "a processed frame")
    assert float(talk.diagnostics["encoder_ms"]) > float(talk.diagnostics["head_ms"])
    assert talk.diagnostics["model"] == str(model_files[0]) and talk.diagnostics["input_publishers"] == "1"
    assert talk.diagnostics["label_set"] == "synthetic" and talk.diagnostics["device"] == "cpu"


def test_the_plain_node_s_parameters_are_read_only(talk, client):
    """Changing the model, device or crop means restarting the plain node (the managed one takes changes
    while unconfigured: test_node_lifecycle)."""
    service = client.create_client(SetParameters, "/sonata_perception/set_parameters")
    assert service.wait_for_service(timeout_sec=DISCOVERY_TIMEOUT_S)
    request = SetParameters.Request(parameters=[Parameter("max_range", value=5.0).to_parameter_msg()])
    future = service.call_async(request)
    rclpy.spin_until_future_complete(client, future, timeout_sec=10)
    (result,) = future.result().results
    assert not result.successful and "read-only" in result.reason
    client.destroy_client(service)


def test_bad_input_is_counted_and_good_frames_still_answered(talk, frame):
    good = cloud(frame, "velodyne")
    short = cloud(frame, "velodyne")
    short.data = short.data[:100]
    no_x = cloud(frame, "velodyne")
    no_x.fields = [f for f in no_x.fields if f.name != "x"]
    nan = Frame(coord=np.full((500, 3), np.nan, np.float32), strength=np.zeros(500, np.float32))
    empty = Frame(coord=np.zeros((0, 3), np.float32), strength=np.zeros(0, np.float32))
    no_intensity = to_message(
        pack_points(None, {"x": frame.coord[:, 0], "y": frame.coord[:, 1], "z": frame.coord[:, 2]}),
        PointCloud2,
        PointField,
        Header(),
    )
    cases = [
        (short, "rejected_malformed"),
        (no_x, "rejected_malformed"),
        (cloud(nan, "velodyne"), "rejected_no_valid_points"),
        (cloud(empty, "velodyne"), "rejected_empty"),
        (no_intensity, "rejected_missing_field"),
    ]
    for bad, counter in cases:
        before = talk.counter(counter)
        talk.publisher.publish(talk.stamped(bad))
        wait_counter(talk, counter, before + 1)
        assert talk.diagnostics["last_error"].startswith(counter.removeprefix("rejected_") + ": ")
        assert talk.ask(good).width == frame.num_points  # and the node still answers
    before = talk.counter("rejected_wrong_frame")
    talk.publisher.publish(talk.stamped(cloud(frame, "velodyne"), frame_id="camera"))
    wait_counter(talk, "rejected_wrong_frame", before + 1)
    assert talk.diagnostics["last_error"] == "wrong_frame: frame_id 'camera', expected 'lidar'"


def test_clouds_over_max_points_are_subsampled_not_dropped(talk, node):
    frames = list(generate_drive("hdl64", frames=2, seed=3))
    big = Frame(coord=np.concatenate([f.coord for f in frames]), strength=np.concatenate([f.strength for f in frames]))
    assert big.num_points > 150000
    answer = structured_view(talk.ask(cloud(big, "velodyne"))).reshape(-1)
    labelled = (answer["class_id"] != 255).sum()
    assert labelled == 150000 and len(answer) == big.num_points
    node.wait_for_line("over max_points", timeout=5)


def test_back_pressure_drops_frames_and_bounds_latency(talk, frame):
    msg = cloud(frame, "velodyne")
    dropped_before, processed_before = talk.counter("frames_dropped"), talk.counter("frames_processed")
    sent = []
    for _ in range(40):  # far faster than the node can segment
        msg = talk.stamped(msg)
        sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        talk.publisher.publish(msg)
        rclpy.spin_once(talk.client, timeout_sec=0.005)
    spin_until(talk.client, lambda: sent[-1] in talk.segmentation, 30, "the newest frame's answer")
    newest_latency_ms = (talk.client.get_clock().now().nanoseconds - sent[-1][0] * 10**9 - sent[-1][1]) / 1e6
    answered = sum(key in talk.segmentation for key in sent)
    wait_counter(talk, "frames_processed", processed_before + answered)
    spin_until(talk.client, lambda: talk.counter("frames_dropped") > dropped_before, 10, "dropped frames counted")
    processed = talk.counter("frames_processed") - processed_before
    assert answered <= processed < 40
    # The newest frame waits at most for the one being processed, then for its own processing; a queue
    # would make it wait for every frame before it (40 x the processing time).
    processing = float(talk.diagnostics["processing_ms_mean"])
    print(f"back-pressure: {processed} of 40 processed, {processing:.0f} ms each, newest {newest_latency_ms:.0f} ms")
    assert newest_latency_ms < 3 * processing + 500


def test_resident_memory_does_not_grow_over_hundreds_of_frames(talk, node):
    small = next(iter(generate_drive("vlp16", frames=1, seed=5)))
    small = Frame(coord=small.coord[:3000], strength=small.strength[:3000])
    msg = cloud(small, "velodyne")
    process = psutil.Process(node.process.pid)
    for _ in range(40):
        talk.ask(msg)
    baseline = process.memory_info().rss
    for _ in range(300):
        talk.ask(msg)
    growth_mib = (process.memory_info().rss - baseline) / 2**20
    assert growth_mib < 25, f"resident memory grew by {growth_mib:.1f} MiB over 300 frames"


def test_no_inference_without_subscribers(client, model_files):
    encoder, head = model_files
    idle = NodeProcess(
        "sonata_ros.perception_node",
        [
            *node_parameters(encoder, head),
            "-r",
            "__node:=idle_perception",
            "-r",
            "~/input/pointcloud:=/test/idle",
        ],
    )
    idle.wait_for_line("ready:")
    publisher = client.create_publisher(PointCloud2, "/test/idle", RELIABLE)
    seen: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("idle_perception"):
                seen.update({kv.key: kv.value for kv in status.values})

    subscription = client.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    spin_until(client, lambda: publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S, "idle node subscription")
    msg = cloud(next(iter(generate_drive("vlp16", frames=1, seed=1))), "velodyne")

    def published_and_counted() -> bool:
        msg.header = Header(stamp=client.get_clock().now().to_msg(), frame_id="lidar")
        publisher.publish(msg)
        return int(seen.get("frames_idle", 0)) >= 3

    spin_until(client, published_and_counted, 30, "idle frames counted")
    assert seen["frames_processed"] == "0"
    assert idle.stop(signal.SIGTERM) == 0, idle.output  # clean shutdown on SIGTERM too
    assert "Traceback" not in idle.output
    client.destroy_subscription(subscription)
    client.destroy_publisher(publisher)


def test_the_mount_and_the_crop_change_what_the_model_sees_not_the_output(client, model_files, frame):
    """sensor_to_base_*: the model sees the cloud in the base frame, the output stays in the input frame.
    min_range / max_range (from the sensor) and crop_box (base frame): the points they leave out get 255,
    the others the model's labels for the kept points in the base frame."""
    encoder, head = model_files
    translation, half = np.array([0.5, -0.2, 1.8]), float(np.sqrt(0.5))  # mounted 1.8 m up, turned 90 degrees left
    box = np.array([-20.0, -15.0, -5.0, 20.0, 15.0, 5.0])
    extra = {
        "sensor_to_base_translation": translation.tolist(),
        "sensor_to_base_rotation": [0.0, 0.0, half, half],
        "min_range": 7.0,
        "max_range": 40.0,
        "crop_box": box.tolist(),
    }
    with own_node(client, "mounted", encoder, head, **extra) as (_, talk):
        msg = cloud(frame, "velodyne")
        answer = structured_view(talk.ask(msg)).reshape(-1)
        decoded = decode(msg)
        sensor = decoded.coord.astype(np.float64)
        base = sensor @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T + translation
        distance = np.linalg.norm(sensor, axis=1)
        in_box = ((base >= box[:3]) & (base <= box[3:])).all(axis=1)
        kept = (distance >= 7.0) & (distance <= 40.0) & in_box
        assert (distance < 7.0).any() and (distance > 40.0).any() and (~in_box & (distance <= 40.0)).any()

        np.testing.assert_array_equal(np.stack([answer[a] for a in "xyz"], axis=1), decoded.coord)  # input frame
        segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu")
        labels = segmenter(base[kept].astype(np.float32), strength=decoded.strength[kept]).labels
        expected = np.full(len(sensor), 255)
        expected[kept] = np.where(labels >= 0, labels, 255)
        assert (answer["class_id"][decoded.valid] == 255).sum() == (expected == 255).sum()
        assert np.mean(answer["class_id"][decoded.valid] == expected) > 0.999
        assert len(np.unique(expected[kept])) > 1


def test_the_voxel_size_and_the_intensity_scale_are_the_configured_ones(client, model_files, frame):
    """grid_size (metres) replaces the checkpoint's voxel size and intensity_scale the driver's intensity
    scale: the labels are those of the model with both, not with the defaults."""
    encoder, head = model_files
    with own_node(client, "tuned", encoder, head, grid_size=0.3, intensity_scale=100.0) as (_, talk):
        msg = cloud(frame, "velodyne")  # float intensity 0-255
        answer = structured_view(talk.ask(msg)).reshape(-1)["class_id"]
        intensity = structured_view(msg).reshape(-1)["intensity"]
        model, model_head = sm.load(encoder), sm.load_head(head)
        default = model.config.transform()
        tuned = sm.Segmenter(model, model_head, device="cpu", transform=default.replace(grid=0.3 * default.scale))
        expected = tuned(frame.coord, strength=np.minimum(intensity / 100.0, 1.0).astype(np.float32)).labels
        assert np.mean(answer == expected) > 0.999
        as_shipped = sm.Segmenter(model, model_head, device="cpu")(frame.coord, strength=intensity / 255.0).labels
        assert np.mean(answer == as_shipped) < 0.9  # the parameters changed what the model saw


def test_a_head_fitted_under_another_domain_sets_the_node_s_transform(client, model_files, tmp_path):
    """With `domain` unset the node runs the transform the head was fitted under (sonata-probe --domain),
    not the encoder's default (indoor for the test model), so the head sees the features it was fitted on."""
    encoder, head = model_files
    outdoor = sm.load_head(head)
    outdoor.domain = "outdoor"
    outdoor_head = sm.save_head(tmp_path / "outdoor_head.pth", outdoor)
    with own_node(client, "outdoor_head", encoder, outdoor_head) as (process, _):
        assert "domain outdoor" in process.wait_for_line("ready:")


def test_decimal_parameters_take_whole_numbers(client, model_files, frame):
    """`max_range: 50` and a crop box of integers, as people write them in YAML, are 50.0 m and a box."""
    encoder, head = model_files
    box = [-20, -15, -5, 20, 15, 5]
    with own_node(client, "whole", encoder, head, max_range=50, crop_box=box) as (_, talk):
        answer = structured_view(talk.ask(cloud(frame, "velodyne"))).reshape(-1)
        distance = np.linalg.norm(frame.coord, axis=1)
        inside = (frame.coord >= box[:3]).all(axis=1) & (frame.coord <= box[3:]).all(axis=1) & (distance <= 50)
        assert (answer["class_id"][~inside] == 255).all() and (answer["class_id"][inside] != 255).mean() > 0.99


def test_missing_checkpoint_is_a_clear_fatal_error(tmp_path):
    missing = tmp_path / "absent.pth"
    process = NodeProcess("sonata_ros.perception_node", ["-p", f"checkpoint:={missing}", "-r", "__node:=doomed"])
    assert process.process.wait(timeout=60) == 1
    assert f"checkpoint not found: {missing}" in process.output and "Traceback" not in process.output


def test_a_head_fitted_on_another_encoder_is_a_fatal_error_naming_both_files(tmp_path, model_files):
    encoder, _ = model_files
    other = sm.save_head(tmp_path / "other_head.pth", sm.LinearHead(64, 13, label_set="synthetic"))
    process = NodeProcess("sonata_ros.perception_node", [*node_parameters(encoder, other), "-r", "__node:=mismatched"])
    assert process.process.wait(timeout=60) == 1
    channels = sm.load(encoder).config.head_channels
    assert f"head {other} reads 64 channels but the encoder ({encoder}) gives {channels}" in process.output
    assert "Traceback" not in process.output


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"missing_intensity": "guess"}, "missing_intensity must be zeros or reject, got 'guess'"),
        ({"input_reliability": "sometimes"}, "input_reliability must be best_effort or reliable, got 'sometimes'"),
        ({"cpu_threads": -1}, "cpu_threads must be 0 (torch's default) or a thread count, got -1"),
        ({"intensity_scale": -255.0}, "intensity_scale must be >= 0 (0: per field), got -255.0"),
        ({"max_points": 2.5}, "max_points"),  # a whole-number parameter given a decimal
        ({"rejected_warn_fraction": 1.5}, "must be in [0, 1]"),
        ({"sensor_to_base_rotation": [0.0, 0.0, 0.0, 0.0]}, "sensor_to_base: translation needs [x, y, z] and"),
        ({"input_topics": ["/a", "/b"], "input_names": ["a"]}, "input_names needs one name per input_topics entry"),
    ],
)
def test_a_bad_parameter_is_a_fatal_error_saying_which_and_why(model_files, parameters, message):
    encoder, head = model_files
    process = NodeProcess(
        "sonata_ros.perception_node", [*node_parameters(encoder, head, **parameters), "-r", "__node:=misconfigured"]
    )
    assert process.process.wait(timeout=60) == 1
    assert message in process.output and "Traceback" not in process.output


def test_cuda_graphs_on_a_cpu_node_is_a_clear_fatal_error():
    process = NodeProcess(
        "sonata_ros.perception_node", ["-p", "device:=cpu", "-p", "cuda_graphs:=true", "-r", "__node:=graphless"]
    )
    assert process.process.wait(timeout=60) == 1
    assert "cuda_graphs needs a CUDA device" in process.output and "Traceback" not in process.output


class OutOfMemoryOnce:
    """SIMULATED CUDA out-of-memory (no GPU here): the first call holds the frame's tensor, as a real
    forward does when the allocator gives up, and raises what torch raises on a full GPU; later calls run
    the real Segmenter."""

    def __init__(self, segmenter) -> None:
        self._segmenter, self.failed_frame = segmenter, None

    def __getattr__(self, name):
        return getattr(self._segmenter, name)

    def __call__(self, coord, **kwargs):
        if self.failed_frame is None:
            frame_tensor = torch.from_numpy(coord).clone()
            self.failed_frame = weakref.ref(frame_tensor)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self._segmenter(coord, **kwargs)


def test_out_of_memory_on_one_frame_is_counted_and_the_node_keeps_serving(client, model_files, frame, monkeypatch):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from sonata_ros.perception_node import PerceptionNode

    encoder, head = model_files
    node = PerceptionNode(
        namespace="oom",
        parameter_overrides=[
            Parameter("checkpoint", value=str(encoder)),
            Parameter("head", value=str(head)),
            Parameter("device", value="cpu"),
        ],
    )
    node.segmenter = OutOfMemoryOnce(node.segmenter)
    # empty_cache can only return memory whose tensors are gone: record whether the failed frame's are
    freed_when_emptying: list[bool] = []
    monkeypatch.setattr(
        torch.cuda, "empty_cache", lambda: freed_when_emptying.append(node.segmenter.failed_frame() is None)
    )
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    answers: list[PointCloud2] = []
    subscription = client.create_subscription(
        PointCloud2, "/oom/sonata_perception/output/segmentation", answers.append, RELIABLE
    )
    publisher = client.create_publisher(PointCloud2, "/oom/sonata_perception/input/pointcloud", RELIABLE)
    msg = cloud(frame, "velodyne")

    def spin_both_until(condition, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            executor.spin_once(timeout_sec=0.02)
            rclpy.spin_once(client, timeout_sec=0.02)

    try:
        spin_both_until(lambda: node.out_segmentation.get_subscription_count() > 0, "output subscription")
        spin_both_until(lambda: publisher.get_subscription_count() > 0, "input subscription")
        publisher.publish(msg)
        spin_both_until(lambda: node.health.snapshot().get("rejected_out_of_memory") == 1, "the OOM to be counted")
        assert "out of memory" in node.health.snapshot()["last_error"]
        assert freed_when_emptying == [True]
        publisher.publish(msg)
        spin_both_until(lambda: answers, "an answer after the OOM")
        assert len(decode(answers[0]).coord) == len(decode(msg).coord)
        assert node.health.snapshot()["frames_processed"] == 1
    finally:
        client.destroy_subscription(subscription)
        client.destroy_publisher(publisher)
        node.stop()
        executor.remove_node(node)
        node.destroy_node()
