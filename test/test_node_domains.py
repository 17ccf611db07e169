"""The node runs the authors' newer encoders on LiDAR: a Utonia-layout checkpoint (RoPE attention,
coordinates only) with `domain:=outdoor` labels a Velodyne cloud over DDS, multipath under the road
left unknown; a cloud with no point in the outdoor range is bad input, not an internal error."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from ros_helpers import DISCOVERY_TIMEOUT_S, NodeProcess, node_parameters, spin_until, write_test_model
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from test_node import Conversation, cloud, own_node, wait_counter

import sonata_model as sm
from sonata_model.io.frame import Frame
from sonata_model.io.pointcloud2 import decode, pack_points, structured_view, to_message
from sonata_model.synth.drive import generate_drive

CLASSES = 13


@pytest.fixture(scope="module")
def utonia_files(tmp_path_factory):
    """A small Utonia-shaped encoder written as the authors' files are ({config, state_dict}, the RoPE
    buffers in the state dict, no project fields) and a 13-class head over its 486-channel upcast."""
    directory = tmp_path_factory.mktemp("utonia")
    config = sm.get_config("utonia_tiny", enc_depths=(1, 1, 1, 1, 1), enc_patch_size=(128,) * 5)
    torch.manual_seed(0)
    encoder = sm.SonataEncoder(config)
    released = {k: v for k, v in config.to_dict().items() if k not in ("feature_keys", "domain", "grid_size")}
    released.pop("coord_scale")
    torch.save({"config": released, "state_dict": encoder.state_dict()}, directory / "utonia.pth")
    head = sm.LinearHead(config.head_channels, CLASSES, label_set="synthetic")
    with torch.no_grad():
        head.seg_head.weight.normal_(0, 1.0)
    return directory / "utonia.pth", sm.save_head(directory / "head.pth", head)


def test_utonia_checkpoint_labels_a_velodyne_cloud_outdoors(utonia_files, client):
    encoder, head = utonia_files
    node = NodeProcess(
        "sonata_ros.perception_node",
        [*node_parameters(encoder, head, domain="outdoor"), "-r", "~/input/pointcloud:=/utonia/points"],
    )
    try:
        ready = node.wait_for_line("ready:")
        assert "domain outdoor, scale 0.2, voxel 0.05" in ready and "intensity is not an input" in ready
        talk = Conversation(client, input_topic="/utonia/points")
        spin_until(
            client, lambda: talk.publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S, "the node's subscription"
        )
        frame = next(iter(generate_drive("vlp16", frames=1, seed=3)))
        multipath = np.array([[5.0, 1.0, -20.0], [-8.0, 3.0, -12.5], [2.0, -9.0, -6.0]], np.float32)
        frame = Frame(
            coord=np.concatenate([frame.coord, multipath]),
            strength=np.concatenate([frame.strength, np.full(3, 0.2, np.float32)]),
            extra={k: np.concatenate([v, v[:3]]) for k, v in frame.extra.items()},
        )
        msg = cloud(frame, "velodyne")
        answer = structured_view(talk.ask(msg)).reshape(-1)
        decoded = decode(msg)
        segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu", domain="outdoor")
        expected = segmenter(decoded.coord).labels  # coordinates only: colour and normals are zeros
        assert len(answer) == frame.num_points
        assert (answer["class_id"][-3:] == 255).all()  # our multipath points: outside the outdoor range
        inside = segmenter.transform.inside(torch.from_numpy(decoded.coord)).numpy()
        assert ((answer["class_id"][decoded.valid] < CLASSES) == inside).all()  # every point in range labelled ...
        assert (
            np.mean(answer["class_id"][decoded.valid] == np.where(expected < 0, 255, expected)) > 0.999
        )  # ... as here
    finally:
        if node.process.poll() is None:
            assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output


def test_clouds_outside_the_domain_s_range_are_rejected_as_bad_input_and_the_node_lives_on(utonia_files, client):
    """A cloud in the wrong frame or unit (here: every point 20 m under an outdoor model's sensor, as a
    map-frame cloud with real elevations would be) is counted under `out_of_range` with what to check, and
    never as an internal error: more of them than `exit_after_internal_errors` leave the node serving."""
    encoder, head = utonia_files
    with own_node(client, "below", encoder, head, domain="outdoor", exit_after_internal_errors=2) as (_, talk):
        frame = next(iter(generate_drive("vlp16", frames=1, seed=5)))
        below = Frame(coord=frame.coord - np.float32([0, 0, 20]), strength=frame.strength, extra=frame.extra)
        for count in range(1, 4):
            talk.publisher.publish(talk.stamped(cloud(below, "velodyne")))
            wait_counter(talk, "rejected_out_of_range", count)
        assert talk.diagnostics["last_error"].startswith("out_of_range: no point inside the outdoor domain's range")
        assert "right frame and unit" in talk.diagnostics["last_error"]
        assert talk.counter("rejected_internal_error") == 0
        assert talk.ask(cloud(frame, "velodyne")).width == frame.num_points  # still serving


def test_a_cloud_without_intensity_is_labelled_with_zero_strength_by_default(tmp_path, client):
    """Most Hesai / Velodyne frames from some drivers carry x, y, z only: the node labels them (strength 0,
    warned) instead of rejecting them, unless missing_intensity: reject."""
    encoder, head = write_test_model(tmp_path)
    with own_node(client, "xyz", encoder, head) as (node, talk):
        frame = next(iter(generate_drive("vlp16", frames=1, seed=4)))
        xyz = {axis: frame.coord[:, i] for i, axis in enumerate("xyz")}
        msg = to_message(pack_points(None, xyz), PointCloud2, PointField, Header())
        answer = structured_view(talk.ask(msg)).reshape(-1)
        segmenter = sm.Segmenter(sm.load(encoder), sm.load_head(head), device="cpu")
        expected = segmenter(frame.coord, strength=np.zeros(frame.num_points, np.float32)).labels
        assert np.mean(answer["class_id"] == expected) > 0.999
        node.wait_for_line("cloud has no intensity", timeout=5)
