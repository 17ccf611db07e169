"""`sonata_perception`: PointCloud2 in, labelled clouds and embeddings out.

    ros2 launch sonata_ros perception.launch.py input_topic:=/points
    python -m sonata_ros.perception_node --ros-args --params-file config/perception.yaml

The subscription callback only stores the newest cloud in a depth-1 mailbox; a worker thread decodes,
runs the model and publishes, so the executor never waits for inference and frames that arrive while
the worker is busy replace the pending one (counted as dropped). Outputs nobody subscribes to are not
computed; with no subscriber at all, no inference runs. Bad input is logged (throttled), counted in
/diagnostics and skipped. After `exit_after_internal_errors` consecutive internal errors (a sticky CUDA
error, say) the node exits with code 70 so that the launch file's `respawn` starts a fresh process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

import sonata_model as sm
from sonata_model.domains import InputTransform
from sonata_model.embedding_pca import EmbeddingPCA
from sonata_model.geometry import quaternion_matrix
from sonata_model.grid import AXIS_LIMIT
from sonata_model.io.labels import UNKNOWN, LabelSetError
from sonata_model.io.pointcloud2 import MissingFieldError, PointCloudError, decode, structured_view

from .health import INTERNAL_ERROR, Health, HealthLimits
from .mailbox import Mailbox
from .messages import embedding_cloud, packed_palette, rgb_cloud, segmentation_cloud
from .model_loading import load_model
from .params import PARAMETERS
from .shutdown import init_ros, spin_until_stopped

NODE_NAME = "sonata_perception"
WARN_EVERY_S = 5.0
EXIT_INTERNAL_ERRORS = 70  # EX_SOFTWARE: the node gave up after consecutive internal errors
SATURATION_WARN_FRACTION = 0.01


class PerceptionNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.p = self._declare_parameters()
        model = load_model(self.p["checkpoint"], self.p["head"], self.p["label_set"])
        if model.warning:
            self.get_logger().warning(model.warning)
        encoder = model.encoder
        if self.p["feature_keys"]:
            keys = tuple(k.strip() for k in self.p["feature_keys"].split(","))
            encoder.config = encoder.config.replace(feature_keys=keys)
        if self.p["missing_intensity"] not in ("zeros", "reject"):
            raise ValueError(f"missing_intensity must be zeros or reject, got {self.p['missing_intensity']!r}")
        self.segmenter = sm.Segmenter(
            encoder,
            model.head,
            device=self.p["device"],
            precision=self.p["precision"],
            attention=self.p["attention"],
            normals=self.p["normals"] or None,
            transform=_input_transform(encoder.config, self.p["domain"], self.p["grid_size"]),
        )
        self._warn_about_domain(self.p["checkpoint"])
        if self.p["embedding_dim"] == 0:
            width = encoder.config.head_channels
            self.get_logger().warning(
                f"embedding_dim 0: ~/output/embeddings carries all {width} channels ({4 * width} bytes) per voxel, "
                "hundreds of MB per LiDAR frame; embedding_dim: 32 publishes the principal components"
            )
        self.labels = model.label_set
        self.palette = packed_palette(self.labels.colors)
        self.rotation, self.translation = _transform(
            self.p["sensor_to_base_translation"], self.p["sensor_to_base_rotation"]
        )
        self.pca = EmbeddingPCA.from_meta(encoder.meta)
        self._pca_samples: list[torch.Tensor] = []
        self.health = Health(_health_limits(self.p))
        # Serialization encodes grid coordinates below AXIS_LIMIT: points farther out cannot be segmented.
        self.reach = (AXIS_LIMIT - 2) * self.segmenter.transform.voxel_size / 2
        self.fatal: str | None = None
        self.model_description = model.description

        reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
        if self.p["input_reliability"] not in reliability:
            raise ValueError(f"input_reliability must be best_effort or reliable, got {self.p['input_reliability']!r}")
        qos_in = QoSProfile(
            depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability[self.p["input_reliability"]]
        )
        qos_out = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.out_segmentation = self.create_publisher(PointCloud2, "~/output/segmentation", qos_out)
        self.out_embeddings = self.create_publisher(PointCloud2, "~/output/embeddings", qos_out)
        self.out_embedding_rgb = self.create_publisher(PointCloud2, "~/output/embedding_rgb", qos_out)
        self.out_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.mailbox: Mailbox[PointCloud2] = Mailbox()
        self.input = self.create_subscription(PointCloud2, "~/input/pointcloud", self._on_cloud, qos_in)
        self.create_timer(self.p["diagnostics_period_s"], self._publish_diagnostics)
        self.create_timer(self.p["log_period_s"], self._log_status)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="sonata_inference", daemon=True)
        self._worker.start()
        keys = self.segmenter.feature_keys
        intensity = "" if "strength" in keys else " (intensity is not an input of this model)"
        self.get_logger().info(
            f"ready: {self.model_description} on {self.segmenter.device} ({self.p['precision']}), "
            f"{self.segmenter.transform.describe()}, features {','.join(keys)}{intensity}, labels {self.labels.name}"
        )

    # ------------------------------------------------------------------------------------------- setup

    def _warn_about_domain(self, checkpoint: str) -> None:
        """Released files do not say their domain; a name that does but disagrees deserves a word."""
        name = os.path.basename(checkpoint).lower()
        for domain in ("outdoor", "indoor"):
            if domain in name and self.segmenter.domain != domain:
                self.get_logger().warning(
                    f"{os.path.basename(checkpoint)} looks like a{'n' * (domain[0] in 'io')} {domain} model but runs "
                    f"with domain {self.segmenter.domain!r}: pass domain:={domain} if that is what it was trained on"
                )

    def _declare_parameters(self) -> dict:
        values = {}
        for param in PARAMETERS:
            descriptor = ParameterDescriptor(description=param.description, read_only=True)
            values[param.name] = self.declare_parameter(param.name, param.default, descriptor).value
        return values

    # ------------------------------------------------------------------------------------------ runtime

    def _wanted(self) -> tuple[bool, bool, bool]:
        return (
            self.out_segmentation.get_subscription_count() > 0,
            self.out_embeddings.get_subscription_count() > 0,
            self.out_embedding_rgb.get_subscription_count() > 0,
        )

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.health.input_received()
        if not any(self._wanted()):
            self.health.frame_idle()
            return
        if self.mailbox.put(msg):
            self.health.frame_dropped()

    def _work(self) -> None:
        while not self._stop.is_set():
            msg = self.mailbox.take(timeout=0.5)
            if msg is None:
                continue
            failure = self._attempt(msg)
            del msg
            if failure is None:
                continue
            reason, detail = failure
            if reason == INTERNAL_ERROR and not self.context.ok():  # shutting down: nothing left to publish to
                return
            if reason == "out_of_memory":
                torch.cuda.empty_cache()  # only now: until _attempt returned, its traceback held the frame's tensors
            self._reject(reason, detail)
            if self.health.must_exit:
                self.fatal = f"{self.health.consecutive_internal_errors} consecutive internal errors; last: {detail}"
                self.get_logger().fatal(f"exiting: {self.fatal}")
                return

    def _attempt(self, msg: PointCloud2) -> tuple[str, str] | None:
        """Process one frame; (reason, detail) if it failed. The exception, whose traceback holds the
        failed frame's tensors, does not outlive this call."""
        try:
            self._process(msg)
        except torch.cuda.OutOfMemoryError as exc:
            return "out_of_memory", str(exc).splitlines()[0]
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return INTERNAL_ERROR, f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
        return None

    def _reject(self, reason: str, detail: str) -> None:
        self.health.frame_rejected(reason, detail)
        self.get_logger().warning(f"frame skipped ({reason}): {detail}", throttle_duration_sec=WARN_EVERY_S)

    def _process(self, msg: PointCloud2) -> None:
        clock = time.perf_counter
        start = clock()
        stages: dict[str, float] = {}
        want_segmentation, want_embeddings, want_rgb = self._wanted()
        if self.p["frame_id"] and msg.header.frame_id != self.p["frame_id"]:
            self._reject("wrong_frame", f"frame_id {msg.header.frame_id!r}, expected {self.p['frame_id']!r}")
            return
        keys = self.segmenter.feature_keys
        try:
            cloud = decode(
                msg,
                intensity_scale=self.p["intensity_scale"] or None,
                need_strength="strength" in keys and self.p["missing_intensity"] == "reject",
                need_color="color" in keys and self.segmenter.transform.needs_colour,
            )
        except MissingFieldError as exc:
            self._reject("missing_field", str(exc))
            return
        except PointCloudError as exc:
            self._reject("malformed", str(exc))
            return
        if cloud.num_input_points == 0:
            self._reject("empty", "cloud has no points")
            return
        if len(cloud.coord) == 0:
            self._reject("no_valid_points", f"all {cloud.num_input_points} points are NaN, inf or zero")
            return
        with np.errstate(over="ignore", invalid="ignore"):  # huge finite coordinates overflow to inf: out of reach
            base = cloud.coord @ self.rotation.T + self.translation
            in_reach = np.abs(base).max(axis=1) <= self.reach
            if not in_reach.any():
                self._reject(
                    "no_valid_points",
                    f"all {cloud.num_input_points} points are NaN, inf, zero or farther than {self.reach:.0f} m",
                )
                return
            if not in_reach.all():
                self.get_logger().warning(
                    f"{np.count_nonzero(~in_reach)} points farther than {self.reach:.0f} m are not segmented",
                    throttle_duration_sec=WARN_EVERY_S,
                )
            selected = np.flatnonzero(in_reach & self._crop(cloud.coord, base))
        if cloud.strength_clipped > SATURATION_WARN_FRACTION * len(cloud.coord):
            self.get_logger().warning(
                f"{100 * cloud.strength_clipped / len(cloud.coord):.0f}% of the {cloud.strength_field!r} values are "
                "above the scale and saturate: set intensity_scale (README: driver layouts)",
                throttle_duration_sec=WARN_EVERY_S,
            )
        if len(selected) > self.p["max_points"]:
            self.get_logger().warning(
                f"{len(selected)} points over max_points={self.p['max_points']}: subsampled",
                throttle_duration_sec=WARN_EVERY_S,
            )
            selected = selected[np.linspace(0, len(selected) - 1, self.p["max_points"]).astype(np.int64)]
        stages["decode"] = (clock() - start) * 1e3

        num = cloud.num_input_points
        class_id = np.full(num, UNKNOWN, np.uint8)
        probability = np.zeros(num, np.float32)
        result = None
        if len(selected):
            optional = {
                k: getattr(cloud, k)[selected] if getattr(cloud, k) is not None else None
                for k in ("color", "normal", "strength")
            }
            if "strength" in keys and optional["strength"] is None:
                self.get_logger().warning(
                    "cloud has no intensity: the model reads strength 0 and labels less accurately "
                    "(missing_intensity: reject refuses such clouds)",
                    throttle_duration_sec=WARN_EVERY_S * 12,
                )
                optional["strength"] = np.zeros(len(selected), np.float32)
            result = self.segmenter(base[selected], viewpoint=self.translation, **optional)  # sensor in base
            stages["voxelize"] = result.timings_ms["prepare"] + result.timings_ms["voxelize"]
            stages["encoder"] = result.timings_ms["encoder"]
            stages["head"] = result.timings_ms["head"]
            rows = np.flatnonzero(cloud.valid)[selected]
            if result.labels is not None:  # -1: outside the domain's range (e.g. multipath under the road)
                class_id[rows] = np.where(result.labels >= 0, result.labels, UNKNOWN).astype(np.uint8)
                probability[rows] = result.probability

        encode_start = clock()
        view = structured_view(msg).reshape(-1)
        xyz = np.stack([view[a].astype(np.float32) for a in "xyz"], axis=1)
        outgoing = []
        if want_segmentation:
            outgoing.append(
                (
                    self.out_segmentation,
                    segmentation_cloud(msg.header, xyz, class_id, probability, self.palette, msg.height),
                )
            )
        if result is not None and (want_embeddings or want_rgb):
            outgoing += self._embedding_messages(msg, cloud, selected, result, xyz, want_embeddings, want_rgb)
        stages["encode"] = (clock() - encode_start) * 1e3
        publish_start = clock()
        for publisher, out in outgoing:
            publisher.publish(out)
        stages["publish"] = (clock() - publish_start) * 1e3
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        latency_ms = (self.get_clock().now().nanoseconds - stamp) / 1e6
        self.health.frame_done(stages, latency_ms)

    def _crop(self, sensor: np.ndarray, base: np.ndarray) -> np.ndarray:
        keep = np.ones(len(sensor), bool)
        distance = np.linalg.norm(sensor, axis=1)
        if self.p["min_range"] > 0:
            keep &= distance >= self.p["min_range"]
        if self.p["max_range"] > 0:
            keep &= distance <= self.p["max_range"]
        box = np.asarray(self.p["crop_box"], np.float64)
        if box.any():
            keep &= np.all((base >= box[:3]) & (base <= box[3:]), axis=1)
        return keep

    def _embedding_messages(self, msg, cloud, selected, result, xyz, want_embeddings: bool, want_rgb: bool) -> list:
        """The embeddings cloud (D principal components per voxel, or all channels) and the PCA-colour
        cloud, projected on the device without building the full upcast (except for D = 0)."""
        dim = self.p["embedding_dim"]
        if (want_rgb or dim > 0) and self.pca is None:
            voxels = len(result.voxel_index)
            self._pca_samples.append(result.embedding_rows(torch.arange(0, voxels, max(1, voxels // 20000))).cpu())
            if len(self._pca_samples) < self.p["pca_frames"]:
                return []
            self.pca = EmbeddingPCA.fit(torch.cat(self._pca_samples), max(3, dim))
            self._pca_samples.clear()
            self.get_logger().info(f"embedding PCA basis fitted on {self.p['pca_frames']} frames and fixed")
        out, projected = [], None
        if want_embeddings:
            projected = result.project_embedding(*self.pca.linear(dim)) if dim > 0 else result.embedding_tensor.float()
            centres = cloud.coord[selected][result.voxel_index]
            out.append((self.out_embeddings, embedding_cloud(msg.header, centres, projected.cpu().numpy())))
        if want_rgb:
            first = projected if projected is not None and dim >= 3 else result.project_embedding(*self.pca.linear(3))
            voxel_rgb = self.pca.rgb(first).cpu().numpy()
            rgb = np.full((cloud.num_input_points, 3), 128, np.uint8)
            segmented = result.voxel_of_point >= 0
            rgb[np.flatnonzero(cloud.valid)[selected][segmented]] = voxel_rgb[result.voxel_of_point[segmented]]
            out.append((self.out_embedding_rgb, rgb_cloud(msg.header, xyz, rgb, msg.height)))
        return out

    # -------------------------------------------------------------------------------------- reporting

    def _publish_diagnostics(self) -> None:
        extra = {
            "model": self.model_description,
            "device": str(self.segmenter.device),
            "label_set": self.labels.name,
            "input_publishers": str(self.input.get_publisher_count()),
        }
        self.out_diagnostics.publish(
            self.health.diagnostics(
                self.get_clock().now().to_msg(),
                f"{self.get_name()}: segmentation",
                self.get_fully_qualified_name(),
                extra,
            )
        )

    def _log_status(self) -> None:
        s = self.health.snapshot()
        self.get_logger().info(
            f"{s['rate_hz']:.1f} Hz, processing {s['processing_ms_mean']:.1f} ms, latency p50 "
            f"{s['latency_ms_p50']:.1f} ms, processed {s['frames_processed']}, dropped {s['frames_dropped']}, "
            f"rejected {s['frames_rejected']}"
        )

    def stop(self) -> None:
        self._stop.set()
        self.mailbox.close()
        self._worker.join(timeout=10.0)

    def report_exit(self, timeout_s: float = 2.0) -> None:
        """Publish the final (ERROR) diagnostics and wait until they are delivered, before exiting."""
        self._publish_diagnostics()
        self.out_diagnostics.wait_for_all_acked(rclpy.duration.Duration(seconds=timeout_s))


def _health_limits(p: dict) -> HealthLimits:
    if p["health_window_s"] <= 0 or p["input_timeout_s"] <= 0:
        raise ValueError("health_window_s and input_timeout_s must be > 0")
    if not 0 <= p["rejected_warn_fraction"] <= 1 or p["exit_after_internal_errors"] < 0:
        raise ValueError("rejected_warn_fraction must be in [0, 1] and exit_after_internal_errors >= 0")
    return HealthLimits(
        budget_ms=p["processing_budget_ms"],
        late_frames_error=p["late_frames_error"],
        window_s=p["health_window_s"],
        input_timeout_s=p["input_timeout_s"],
        rejected_warn_fraction=p["rejected_warn_fraction"],
        exit_after=p["exit_after_internal_errors"],
    )


def _input_transform(config: sm.EncoderConfig, domain: str, grid_size: float) -> InputTransform:
    """The checkpoint's transform for `domain` (empty: its own), with the voxel size overridden if > 0."""
    transform = config.transform(domain or None)
    if grid_size > 0:
        transform = transform.replace(grid=grid_size * transform.scale)
    return transform


def _transform(translation, quaternion) -> tuple[np.ndarray, np.ndarray]:
    if len(quaternion) != 4 or len(translation) != 3 or not any(quaternion):
        raise ValueError(
            "sensor_to_base_translation needs [x, y, z] and sensor_to_base_rotation a non-zero quaternion [x, y, z, w]"
        )
    rotation = quaternion_matrix(*(float(v) for v in quaternion))
    return rotation.astype(np.float32), np.asarray(translation, np.float32)


def main(args: list[str] | None = None) -> int:
    stop = init_ros(args)
    try:
        node = PerceptionNode()
    except (sm.CheckpointError, sm.ConfigError, LabelSetError, ValueError, OSError) as exc:  # DomainError too
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin_until_stopped(executor, stop, until=lambda: node.fatal is not None)
        if node.fatal is not None:
            node.report_exit()
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return EXIT_INTERNAL_ERRORS if node.fatal is not None else 0


if __name__ == "__main__":
    sys.exit(main())
