"""Each real scan of ../shared/real/, published in its own driver's PointCloud2 layout through the
perception node (its own process, real DDS), comes back with a label for every point, in order.

The node runs a tiny random-weight model that takes coordinates only, with 1 m voxels: the test is
about the input path (layouts, field types, point counts, validity), not about what the labels are,
and coordinates only let the x, y, z-only driver clouds be segmented at all (a model that takes
strength rejects a cloud without intensity as `missing_field`).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
from ros_helpers import NodeProcess, spin_until
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from test_node import Conversation, node_parameters

import sonata_model as sm
from sonata_model.io.pcd import read_packed
from sonata_model.io.pointcloud2 import (
    LAYOUT_POINT_STEP,
    LAYOUTS,
    PackedPoints,
    pack_points,
    structured_view,
    to_message,
)
from sonata_ros.messages import packed_palette, segmentation_cloud

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real"
NEBULA = REAL / "nebula-driver-frames" / "pcd"
NUSCENES = "nuscenes-kitti-mmdet3d-demo/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951.pcd.bin"
CLASSES = 13
UNKNOWN = 255

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real scans not here: {REAL} is absent")


def kitti_cloud() -> PackedPoints:
    """The SemanticKITTI scan as KITTI-to-ROS converters publish it: x, y, z, intensity float32, point_step 16."""
    points = np.fromfile(REAL / "semantickitti-spvnas-000000" / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
    packed = pack_points(None, dict(zip(("x", "y", "z", "intensity"), points.T, strict=True)))
    assert packed.point_step == 16
    return packed


def nuscenes_cloud() -> PackedPoints:
    """The nuScenes HDL-32E sweep in its driver's (velodyne_pointcloud) layout: intensity 0-255 and ring."""
    points = np.fromfile(REAL / NUSCENES, np.float32).reshape(-1, 5)
    arrays = {"x": points[:, 0], "y": points[:, 1], "z": points[:, 2], "intensity": points[:, 3]}
    arrays["ring"] = points[:, 4].astype(np.uint16)
    return pack_points(LAYOUTS["velodyne"], arrays, point_step=LAYOUT_POINT_STEP["velodyne"])


CLOUDS = {
    "semantickitti_000000": kitti_cloud,
    "nuscenes_lidar_top": nuscenes_cloud,
    **{path.stem: (lambda path=path: read_packed(path)) for path in sorted(NEBULA.glob("*.pcd"))},
}


def assert_every_point_labelled(
    sent: PointCloud2, answer: PointCloud2, num_classes: int, exempt: np.ndarray | None = None
) -> None:
    """`answer` holds every point of `sent`, in order; valid ones have a class, invalid ones 255.

    Valid: finite and not all-zero coordinates (what the node segments). `exempt` (bool per point)
    marks valid points that may be 255 too, e.g. outside the model's documented input range.
    """
    sent_view, answer_view = (structured_view(m).reshape(-1) for m in (sent, answer))
    assert (answer.height, answer.width) == (sent.height, sent.width)
    xyz = np.stack([sent_view[a].astype(np.float32) for a in "xyz"], axis=1)
    np.testing.assert_array_equal(np.stack([answer_view[a] for a in "xyz"], axis=1), xyz)
    valid = np.isfinite(xyz).all(axis=1) & (xyz != 0).any(axis=1)
    class_id = answer_view["class_id"]
    assert (class_id[~valid] == UNKNOWN).all()
    must_label = valid if exempt is None else valid & ~exempt
    unlabelled = np.flatnonzero(must_label & (class_id >= num_classes))
    assert unlabelled.size == 0, f"{unlabelled.size} valid points without a class, e.g. rows {unlabelled[:5]}"
    if exempt is not None:
        assert np.isin(class_id[valid & exempt], [*range(num_classes), UNKNOWN]).all()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = sm.get_config("tiny", in_channels=3, feature_keys=("coord",), grid_size=1.0, coord_scale=0.2)
    head = sm.LinearHead(config.head_channels, CLASSES, label_set="synthetic")
    with torch.no_grad():
        head.seg_head.weight.normal_(0, 1.0)
    return sm.save_encoder(directory / "encoder.pth", sm.SonataEncoder(config)), sm.save_head(
        directory / "head.pth", head
    )


@pytest.fixture(scope="module")
def talk(model_files):
    encoder, head = model_files
    node = NodeProcess(
        "sonata_ros.perception_node",
        [
            "--params-file",
            "config/perception.yaml",
            *node_parameters(encoder, head, pca_frames=1),
            "-r",
            "~/input/pointcloud:=/test/points",
        ],
    )
    node.wait_for_line("ready:")
    rclpy.init()
    client = rclpy.create_node("real_frames_client")
    conversation = Conversation(client)
    spin_until(client, lambda: conversation.publisher.get_subscription_count() > 0, 30, "the node's subscription")
    yield conversation
    client.destroy_node()
    rclpy.try_shutdown()
    if node.process.poll() is None:
        assert node.stop(signal.SIGINT) == 0
    assert "Traceback" not in node.output and "frame skipped" not in node.output


@needs_real
@pytest.mark.parametrize("name", sorted(CLOUDS))
def test_every_point_of_a_real_frame_comes_back_labelled(talk, name):
    msg = to_message(CLOUDS[name](), PointCloud2, PointField, Header())
    answer = talk.ask(msg, timeout=120)
    assert_every_point_labelled(msg, answer, CLASSES)
    assert answer.width * answer.height == msg.width * msg.height > 14_000


@needs_real
def test_dropouts_in_a_real_frame_come_back_unknown(talk):
    """The VLP-16 frame with returns lost as a driver reports them: NaN rows and all-zero rows."""
    packed = read_packed(NEBULA / "vlp16_1673400472138016708.pcd")
    points = packed.data.view(np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "itemsize": 32}))
    points = points.copy()
    points["x"][:5] = np.nan
    points["y"][100:103] = np.inf
    points["x"][200:210] = points["y"][200:210] = points["z"][200:210] = 0
    packed.data = points.view(np.uint8)
    msg = to_message(packed, PointCloud2, PointField, Header())
    answer = talk.ask(msg, timeout=120)
    assert_every_point_labelled(msg, answer, CLASSES)
    class_id = structured_view(answer).reshape(-1)["class_id"]
    assert np.flatnonzero(class_id == UNKNOWN).tolist() == [*range(5), *range(100, 103), *range(200, 210)]


def test_the_check_fails_on_a_missing_label_or_a_reordered_point_unless_exempt():
    xyz = np.array([[1, 2, 3], [4, 5, 6], [np.nan, 0, 0], [0, 0, 0]], np.float32)
    sent = to_message(pack_points(None, dict(zip("xyz", xyz.T, strict=True))), PointCloud2, PointField, Header())
    palette = packed_palette(np.zeros((CLASSES, 3), np.uint8))

    def answer(class_id, order=(0, 1, 2, 3)):
        ids = np.array(class_id, np.uint8)
        return segmentation_cloud(Header(), xyz[list(order)], ids, np.ones(4, np.float32), palette, 1)

    assert_every_point_labelled(sent, answer([3, 12, UNKNOWN, UNKNOWN]), CLASSES)
    with pytest.raises(AssertionError, match="1 valid points without a class"):
        assert_every_point_labelled(sent, answer([3, UNKNOWN, UNKNOWN, UNKNOWN]), CLASSES)
    assert_every_point_labelled(sent, answer([3, UNKNOWN, UNKNOWN, UNKNOWN]), CLASSES, np.array([0, 1, 0, 0], bool))
    with pytest.raises(AssertionError):
        assert_every_point_labelled(sent, answer([3, 12, 0, UNKNOWN]), CLASSES)  # an invalid point got a class
    with pytest.raises(AssertionError):
        assert_every_point_labelled(sent, answer([3, 12, UNKNOWN, UNKNOWN], order=(1, 0, 2, 3)), CLASSES)
