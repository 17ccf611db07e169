"""`sonata_perception`: PointCloud2 in, labelled clouds and embeddings out.

    ros2 launch sonata_ros perception.launch.py input_topic:=/points
    python -m sonata_ros.perception_node --ros-args --params-file config/perception.yaml
    python -m sonata_ros.perception_node --managed --ros-args ...     # lifecycle node, starts unconfigured
    python -m sonata_ros.perception_node --managed --activate ...     # lifecycle node, brings itself up

Subscription callbacks only store the newest cloud of each input (`FrameSync`); a worker thread takes
a set (one cloud, or with `input_topics` the clouds of several LiDARs), merges them, runs ONE forward
and publishes, so the executor never waits for inference and clouds that arrive while the worker is
busy replace the pending ones (counted as dropped). Outputs nobody subscribes to are not computed;
with no subscriber at all, no inference runs. Bad input is logged (throttled), counted in /diagnostics
and skipped. After `exit_after_internal_errors` consecutive internal errors (a sticky CUDA error, say)
the node exits with code 70 so that the launch file's `respawn` starts a fresh process.

The plain node configures and activates itself at start. The managed one follows the ROS 2 life cycle:
configure reads the parameters, loads and warms up the model; activate subscribes and starts the
worker; deactivate stops taking clouds and finishes the one in flight; cleanup releases the model.
With `--activate` it configures and activates itself at start (or exits with code 1 when it cannot,
like the plain node) and a manager takes it from there: the launch file restarts a managed node that
way, since only an active node exits with code 70 and a lifecycle manager without a bond would not
notice the new process.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

import sonata_model as sm
from sonata_model.domains import InputTransform
from sonata_model.embedding_pca import EmbeddingPCA
from sonata_model.grid import AXIS_LIMIT
from sonata_model.io.labels import UNKNOWN, LabelSetError
from sonata_model.io.pointcloud2 import structured_view, xyz_points
from sonata_model.io.segmentation_cloud import class_ids
from sonata_model.segmenter import input_domain

from . import typed_parameters
from .allocator import OutsizedFrameTrim, fix_malloc_thresholds
from .frame_sync import FrameSync
from .gc_policy import freeze_startup_objects, thaw
from .health import INTERNAL_ERROR, Health, HealthLimits
from .inputs import (
    SINGLE_INPUT_TOPIC,
    WARN_EVERY_S,
    Crop,
    InputRejected,
    InputSpec,
    MergedCloud,
    Needs,
    SensorCloud,
    check_input_names,
    decode_input,
    extrinsic,
    merge,
)
from .messages import embedding_cloud, packed_palette, rgb_cloud, segmentation_cloud
from .model_loading import load_model, warm_up
from .params import PARAMETERS, SENSOR_PARAMETERS, Param
from .shutdown import init_ros, spin_until_stopped

NODE_NAME = "sonata_perception"
EXIT_INTERNAL_ERRORS = 70  # EX_SOFTWARE: the node gave up after consecutive internal errors
WORKER_JOIN_S = 60.0  # deactivate waits this long for the frame in flight
CONFIGURE_ERRORS = (  # a bad file or parameter: DomainError too (a ValueError); a parameter of the wrong type
    sm.CheckpointError,
    sm.ConfigError,
    LabelSetError,
    ValueError,
    OSError,
    InvalidParameterTypeException,
)


@dataclass(frozen=True)
class Wanted:
    """Which outputs have subscribers."""

    segmentation: bool
    inputs: dict[str, bool]  # per-input segmentation (multi-LiDAR)
    embeddings: bool
    rgb: bool

    def any(self) -> bool:
        return self.segmentation or any(self.inputs.values()) or self.embeddings or self.rgb


@dataclass(frozen=True)
class OutputFrame:
    """Header and shape of an output cloud that is not an input message (the merged cloud)."""

    header: Header
    height: int = 1


class Perception:
    """What the plain and the managed node share: configure, activate, deactivate, release, and the
    worker that turns a set of input clouds into outputs. Mixed into an rclpy `Node`."""

    READ_ONLY = True  # parameters can change only while a managed node is unconfigured

    # ------------------------------------------------------------------------------ parameters

    def _declare_parameter(self, param: Param, name: str | None = None) -> None:
        typed_parameters.declare(self, name or param.name, param.default, param.description, self.READ_ONLY)

    def _parameter(self, param: Param, name: str | None = None):
        return typed_parameters.value(self, name or param.name, param.default)

    def _read_parameters(self) -> dict:
        for param in PARAMETERS:
            self._declare_parameter(param)
        return {param.name: self._parameter(param) for param in PARAMETERS}

    def _input_specs(self, p: dict) -> list[InputSpec]:
        """The single input, or one per `input_topics` entry with its `sensors.<name>.*` parameters."""
        if not p["input_topics"]:
            rotation, translation = extrinsic(
                p["sensor_to_base_translation"], p["sensor_to_base_rotation"], "sensor_to_base"
            )
            return [InputSpec("", SINGLE_INPUT_TOPIC, rotation, translation, p["frame_id"], p["intensity_scale"])]
        check_input_names(p["input_topics"], p["input_names"])
        specs = []
        for topic, name in zip(p["input_topics"], p["input_names"], strict=True):
            for param in SENSOR_PARAMETERS:
                self._declare_parameter(param, f"sensors.{name}.{param.name}")
            value = {param.name: self._parameter(param, f"sensors.{name}.{param.name}") for param in SENSOR_PARAMETERS}
            rotation, translation = extrinsic(value["translation"], value["rotation"], f"sensors.{name}")
            specs.append(InputSpec(name, topic, rotation, translation, value["frame_id"], value["intensity_scale"]))
        return specs

    # ------------------------------------------------------------------------------ life cycle

    def _configure(self) -> None:
        """Read the parameters, load and warm up the model, create the publishers."""
        self.fatal: str | None = None
        self.p = p = self._read_parameters()
        self.inputs = self._input_specs(p)
        self.multi = bool(p["input_topics"])
        if p["missing_intensity"] not in ("zeros", "reject"):
            raise ValueError(f"missing_intensity must be zeros or reject, got {p['missing_intensity']!r}")
        reliability = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
        if p["input_reliability"] not in reliability:
            raise ValueError(f"input_reliability must be best_effort or reliable, got {p['input_reliability']!r}")
        if p["sync_timeout_ms"] < 0 or p["stale_after_ms"] <= 0:
            raise ValueError("sync_timeout_ms must be >= 0 and stale_after_ms > 0")
        self.health = Health(_health_limits(p), inputs=tuple(spec.name for spec in self.inputs) if self.multi else ())
        self._load_model(p)
        # Serialization encodes grid coordinates below AXIS_LIMIT: points farther out cannot be segmented.
        reach = (AXIS_LIMIT - 2) * self.segmenter.transform.voxel_size / 2
        self.crop = Crop(p["min_range"], p["max_range"], np.asarray(p["crop_box"], np.float64), reach)
        keys = self.segmenter.feature_keys
        self.needs = Needs(
            "strength" in keys,
            p["missing_intensity"] == "reject",
            "color" in keys and self.segmenter.transform.needs_colour,
        )
        self._qos_in = QoSProfile(
            depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability[p["input_reliability"]]
        )
        self._create_publishers()
        self._frozen_objects = freeze_startup_objects()  # full collections no longer walk the model
        intensity = "" if "strength" in keys else " (intensity is not an input of this model)"
        merged = f", {len(self.inputs)} inputs merged in {p['base_frame']}" if self.multi else ""
        self.get_logger().info(
            f"ready: {self.model_description} on {self.segmenter.device} ({p['precision']}), "
            f"{self.segmenter.transform.describe()}, features {','.join(keys)}{intensity}, labels {self.labels.name}"
            f"{merged}"
        )

    def _load_model(self, p: dict) -> None:
        """The segmenter on its device, warmed up, its forwards counted; labels and embedding PCA."""
        if p["cpu_threads"] < 0:
            raise ValueError(f"cpu_threads must be 0 (torch's default) or a thread count, got {p['cpu_threads']}")
        if p["cpu_threads"]:
            torch.set_num_threads(p["cpu_threads"])
        model = load_model(p["checkpoint"], p["head"], p["label_set"])
        if model.warning:
            self.get_logger().warning(model.warning)
        encoder = model.encoder
        if p["feature_keys"]:
            keys = tuple(k.strip() for k in p["feature_keys"].split(","))
            encoder.config = encoder.config.replace(feature_keys=keys)
        self.segmenter = sm.Segmenter(
            encoder,
            model.head,
            device=p["device"],
            precision=p["precision"],
            attention=p["attention"],
            normals=p["normals"] or None,
            transform=_input_transform(encoder.config, input_domain(p["domain"], model.head), p["grid_size"]),
            buckets=sm.SizeBuckets() if p["cuda_graphs"] else None,
            cuda_graphs=p["cuda_graphs"],
        )
        warm_up(self.segmenter)
        self._forwards_at_start = self.segmenter.forwards
        self._warn_about_domain(p["checkpoint"])
        if p["embedding_dim"] == 0:
            width = encoder.config.head_channels
            self.get_logger().warning(
                f"embedding_dim 0: ~/output/embeddings carries all {width} channels ({4 * width} bytes) per voxel, "
                "hundreds of MB per LiDAR frame; embedding_dim: 32 publishes the principal components"
            )
        self.labels = model.label_set
        self.palette = packed_palette(self.labels.colors)
        stored = EmbeddingPCA.from_meta(encoder.meta)
        self.pca = None if stored is None else stored.to(self.segmenter.device)
        self._pca_samples: list[torch.Tensor] = []
        self.model_description = model.description

    def _create_publishers(self) -> None:
        qos = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.out_segmentation = self.create_publisher(PointCloud2, "~/output/segmentation", qos)
        self.out_inputs = (
            {spec.name: self.create_publisher(PointCloud2, spec.output_topic, qos) for spec in self.inputs}
            if self.multi
            else {}
        )
        self.out_embeddings = self.create_publisher(PointCloud2, "~/output/embeddings", qos)
        self.out_embedding_rgb = self.create_publisher(PointCloud2, "~/output/embedding_rgb", qos)
        self.out_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def _activate(self) -> None:
        """Subscribe to the inputs and start the worker and the reporting timers."""
        self.sync: FrameSync[PointCloud2] = FrameSync(len(self.inputs), self.p["sync_timeout_ms"] / 1e3)
        self._heap = OutsizedFrameTrim()
        self.input_subscriptions = [
            self.create_subscription(
                PointCloud2, spec.topic, lambda msg, index=index: self._on_cloud(index, msg), self._qos_in
            )
            for index, spec in enumerate(self.inputs)
        ]
        self._report_timers = [
            self.create_timer(self.p["diagnostics_period_s"], self._publish_diagnostics),
            self.create_timer(self.p["log_period_s"], self._log_status),
        ]
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="sonata_inference", daemon=True)
        self._worker.start()

    def _deactivate(self) -> None:
        """Take no more clouds; the clouds received are finished and published before this returns."""
        for subscription in self.input_subscriptions:
            self.destroy_subscription(subscription)
        self.input_subscriptions = []
        self._stop.set()
        self.sync.close()
        self._worker.join(timeout=WORKER_JOIN_S)
        if self._worker.is_alive():
            self.get_logger().error(f"the frame in flight did not finish within {WORKER_JOIN_S:g} s")
        for timer in self._report_timers:
            self.destroy_timer(timer)
        self._report_timers = []

    def _release(self) -> None:
        """Drop the model and the publishers; the device memory goes back to the driver."""
        for name in ("out_segmentation", "out_embeddings", "out_embedding_rgb", "out_diagnostics"):
            publisher = self.__dict__.pop(name, None)
            if publisher is not None:
                self.destroy_publisher(publisher)
        for publisher in self.__dict__.pop("out_inputs", {}).values():
            self.destroy_publisher(publisher)
        for name in ("segmenter", "pca", "_pca_samples"):
            self.__dict__.pop(name, None)
        thaw()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------ setup helpers

    def _warn_about_domain(self, checkpoint: str) -> None:
        """Released files do not say their domain; a name that does but disagrees deserves a word."""
        name = os.path.basename(checkpoint).lower()
        for domain in ("outdoor", "indoor"):
            if domain in name and self.segmenter.domain != domain:
                self.get_logger().warning(
                    f"{os.path.basename(checkpoint)} looks like a{'n' * (domain[0] in 'io')} {domain} model but runs "
                    f"with domain {self.segmenter.domain!r}: pass domain:={domain} if that is what it was trained on"
                )

    # ------------------------------------------------------------------------------ runtime

    def _wanted(self) -> Wanted:
        return Wanted(
            self.out_segmentation.get_subscription_count() > 0,
            {name: publisher.get_subscription_count() > 0 for name, publisher in self.out_inputs.items()},
            self.out_embeddings.get_subscription_count() > 0,
            self.out_embedding_rgb.get_subscription_count() > 0,
        )

    def _on_cloud(self, index: int, msg: PointCloud2) -> None:
        self.health.input_received(self.inputs[index].name)
        if not self._wanted().any():
            self.health.frame_idle()
            return
        if self.sync.put(index, msg):
            self.health.frame_dropped()

    def _work(self) -> None:
        while True:
            clouds = self.sync.take(timeout=0.5)
            if clouds is None:
                if self._stop.is_set():  # deactivated, and what was received is done
                    return
                continue
            failure = self._attempt(clouds)
            size = sum(len(msg.data) for msg in clouds if msg is not None)
            del clouds
            self._heap.after_frame(size)
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

    def _attempt(self, clouds: list[PointCloud2 | None]) -> tuple[str, str] | None:
        """Process one set of clouds; (reason, detail) if it failed. The exception, whose traceback holds
        the failed frame's tensors, does not outlive this call."""
        try:
            self._process(clouds)
        except InputRejected as exc:
            return exc.reason, exc.detail
        except torch.cuda.OutOfMemoryError as exc:
            return "out_of_memory", str(exc).splitlines()[0]
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return INTERNAL_ERROR, f"{type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})"
        return None

    def _reject(self, reason: str, detail: str) -> None:
        self.health.frame_rejected(reason, detail)
        self.get_logger().warning(f"frame skipped ({reason}): {detail}", throttle_duration_sec=WARN_EVERY_S)

    def _process(self, clouds: list[PointCloud2 | None]) -> None:
        """decode -> merge -> one forward -> labels back to every input point -> messages -> publish."""
        stages = _Stages()
        wanted = self._wanted()
        sensors = self._decode_inputs(clouds)
        merged = merge(sensors, self.p["max_points"], self.get_logger())
        stages.mark("decode")
        result = self._segment(sensors, merged, stages)
        stages.restart()  # the forward's stages are the segmenter's own timings
        point_class, point_probability = _point_labels(merged, result)
        # each message goes out once built: the labelled clouds do not wait for the embeddings
        for publisher, out in self._messages(sensors, merged, result, point_class, point_probability, wanted):
            stages.mark("messages")
            publisher.publish(out)
            stages.mark("publish")
        stages.mark("messages")
        stamp = max(_stamp_ns(s.msg) for s in sensors)
        self.health.frame_done(stages.ms, (self.get_clock().now().nanoseconds - stamp) / 1e6)

    def _decode_inputs(self, clouds: list[PointCloud2 | None]) -> list[SensorCloud]:
        """The usable inputs of this set. Missing, stale and rejected inputs of a multi-LiDAR set are
        skipped and counted per input; when none is left the set is rejected with the first input's reason."""
        newest = max(_stamp_ns(msg) for msg in clouds if msg is not None)
        stale_ns = self.p["stale_after_ms"] * 1e6
        sensors: list[SensorCloud] = []
        rejections: list[tuple[InputSpec, str, str]] = []  # strings only: no exception outlives its handler
        for spec, msg in zip(self.inputs, clouds, strict=True):
            if msg is None:
                self.health.input_skipped(spec.name, "missing")
            elif self.multi and newest - _stamp_ns(msg) > stale_ns:
                late_ms = (newest - _stamp_ns(msg)) / 1e6
                self.health.input_skipped(
                    spec.name, "stale", f"{spec.prefix}stamped {late_ms:.0f} ms before the newest"
                )
            else:
                try:
                    sensors.append(decode_input(msg, spec, self.needs, self.crop, self.get_logger()))
                except InputRejected as exc:
                    rejections.append((spec, exc.reason, exc.detail))
        for spec, reason, detail in rejections if self.multi else ():  # each input's count says why
            self.health.input_skipped(spec.name, "rejected", f"{reason}: {detail}")
        if not sensors:
            raise InputRejected(*rejections[0][1:])
        for _, reason, detail in rejections:  # the set goes on with the other inputs
            self.get_logger().warning(f"input skipped ({reason}): {detail}", throttle_duration_sec=WARN_EVERY_S)
        return sensors

    def _segment(
        self, sensors: list[SensorCloud], merged: MergedCloud, stages: _Stages
    ) -> sm.SegmentationResult | None:
        """ONE forward over the merged cloud's selected points (None when no point is selected)."""
        if len(merged.selected) == 0:
            return None
        cloud, selected = merged.cloud, merged.selected
        optional = {
            k: getattr(cloud, k)[selected] if getattr(cloud, k) is not None else None
            for k in ("color", "normal", "strength")
        }
        lacking = [s.spec.prefix for s in sensors if s.decoded.strength is None]
        if self.needs.strength and lacking:
            self.get_logger().warning(
                f"{''.join(lacking)}cloud has no intensity: the model reads strength 0 and labels less accurately "
                "(missing_intensity: reject refuses such clouds)",
                throttle_duration_sec=WARN_EVERY_S * 12,
            )
            if optional["strength"] is None:
                optional["strength"] = np.zeros(len(selected), np.float32)
        viewpoint = np.concatenate(  # each point's sensor in the base frame, which estimated normals face
            [np.broadcast_to(s.spec.translation, (len(s.base), 3)) for s in sensors]
        )[selected]
        rejection = None
        try:
            result = self.segmenter(cloud.coord[selected], viewpoint=viewpoint, **optional)
        except sm.NothingInRangeError:
            transform = self.segmenter.transform
            rejection = InputRejected(
                "out_of_range",
                f"no point inside the {transform.domain} domain's range {transform.range_box} (metres, base frame): "
                "is the cloud in the right frame and unit?",
            )
        if rejection is not None:  # raised out here: a raise inside `except` would tie the frame into a cycle
            raise rejection
        stages.add("voxelize", result.timings_ms["prepare"] + result.timings_ms["voxelize"])
        stages.add("encoder", result.timings_ms["encoder"])
        stages.add("head", result.timings_ms["head"])
        return result

    def _messages(self, sensors, merged, result, point_class, point_probability, wanted: Wanted) -> Iterator[tuple]:
        """(publisher, message) of every wanted output, built one at a time, the labelled clouds first. One
        input: its cloud, every point in its frame. Several: the merged cloud in the base frame, and each
        input's cloud in its own frame."""
        if self.multi:
            newest = max(sensors, key=lambda s: _stamp_ns(s.msg)).msg.header.stamp
            frame = OutputFrame(Header(stamp=newest, frame_id=self.p["base_frame"]))
            cloud, xyz = merged.cloud, merged.cloud.coord
            if wanted.segmentation:
                message = segmentation_cloud(frame.header, xyz, point_class, point_probability, self.palette, 1)
                yield self.out_segmentation, message
            for sensor, start in zip(sensors, merged.starts, strict=False):
                if wanted.inputs[sensor.spec.name]:
                    points = _input_points(sensor, point_class, point_probability, start)
                    message = segmentation_cloud(sensor.msg.header, *points, self.palette, sensor.msg.height)
                    yield self.out_inputs[sensor.spec.name], message
        else:
            (sensor,) = sensors
            frame, cloud = sensor.msg, sensor.decoded
            xyz, class_id, probability = _input_points(sensor, point_class, point_probability, 0)
            if wanted.segmentation:
                message = segmentation_cloud(frame.header, xyz, class_id, probability, self.palette, frame.height)
                yield self.out_segmentation, message
        if result is not None and (wanted.embeddings or wanted.rgb):
            yield from self._embedding_messages(
                frame, cloud, merged.selected, result, xyz, wanted.embeddings, wanted.rgb
            )

    def _embedding_messages(
        self, msg, cloud, selected, result, xyz, want_embeddings: bool, want_rgb: bool
    ) -> Iterator[tuple]:
        """The embeddings cloud (D principal components per voxel, or all channels) and the PCA-colour
        cloud, projected on the device without building the full upcast (except for D = 0)."""
        dim = self.p["embedding_dim"]
        if (want_rgb or dim > 0) and self.pca is None:
            voxels = result.num_voxels
            sample = torch.arange(0, voxels, max(1, voxels // 20000), device=self.segmenter.device)
            self._pca_samples.append(result.embedding_rows(sample).cpu())
            if len(self._pca_samples) < self.p["pca_frames"]:
                return
            self.pca = EmbeddingPCA.fit(torch.cat(self._pca_samples), max(3, dim)).to(self.segmenter.device)
            self._pca_samples.clear()
            self.get_logger().info(f"embedding PCA basis fitted on {self.p['pca_frames']} frames and fixed")
        projected = None
        if want_embeddings:
            projected = result.project_embedding(*self.pca.linear(dim)) if dim > 0 else result.embedding_tensor.float()
            centres = cloud.coord[selected][result.voxel_index]
            yield self.out_embeddings, embedding_cloud(msg.header, centres, projected.cpu().numpy())
        if want_rgb:
            first = projected if projected is not None and dim >= 3 else result.project_embedding(*self.pca.linear(3))
            voxel_rgb = self.pca.rgb(first).cpu().numpy()
            rgb = np.full((cloud.num_input_points, 3), 128, np.uint8)
            segmented = result.voxel_of_point >= 0
            rgb[np.flatnonzero(cloud.valid)[selected][segmented]] = voxel_rgb[result.voxel_of_point[segmented]]
            yield self.out_embedding_rgb, rgb_cloud(msg.header, xyz, rgb, msg.height)

    # ------------------------------------------------------------------------------ reporting

    def _publish_diagnostics(self) -> None:
        extra = {
            "model": self.model_description,
            "device": str(self.segmenter.device),
            "label_set": self.labels.name,
            "input_publishers": str(sum(s.get_publisher_count() for s in self.input_subscriptions)),
            "encoder_forwards": str(self.segmenter.forwards - self._forwards_at_start),
            "torch_threads": str(torch.get_num_threads()),
            "heap_trims": str(self._heap.trims),  # memory handed back after outsized frames
            "gc_frozen_objects": str(self._frozen_objects),  # never walked by a collection (gc_policy)
        }
        if self.segmenter.graphed is not None:  # each capture is one slow frame: a new size bucket
            extra["cuda_graph_captures"] = str(self.segmenter.graphed.captures)
        if self.multi:
            extra.update(
                {
                    f"input_{spec.name}_publishers": str(s.get_publisher_count())
                    for spec, s in zip(self.inputs, self.input_subscriptions, strict=False)
                }
            )
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

    def report_exit(self, timeout_s: float = 2.0) -> None:
        """Publish the final (ERROR) diagnostics and wait until they are delivered, before exiting."""
        self._publish_diagnostics()
        self.out_diagnostics.wait_for_all_acked(rclpy.duration.Duration(seconds=timeout_s))


class PerceptionNode(Perception, Node):
    """The plain node: configured and active from construction to `stop()`."""

    def __init__(self, **kwargs) -> None:
        Node.__init__(self, NODE_NAME, **kwargs)
        self._configure()
        self._activate()

    def stop(self) -> None:
        self._deactivate()


class ManagedPerceptionNode(Perception, LifecycleNode):
    """The lifecycle node: starts unconfigured; parameters take changes only while unconfigured."""

    READ_ONLY = False

    def __init__(self, **kwargs) -> None:
        LifecycleNode.__init__(self, NODE_NAME, **kwargs)
        self.fatal = None
        self.lifecycle_state = "unconfigured"  # unconfigured | inactive | active | finalized
        self._declare_sensor_parameters(self._read_parameters()["input_names"])
        self.add_on_set_parameters_callback(self._only_while_unconfigured)
        self.add_post_set_parameters_callback(self._on_parameters_set)

    def _declare_sensor_parameters(self, names: list[str]) -> None:
        """`sensors.<name>.*` of the inputs `names`, so that a manager can set them before configure."""
        for name in names:
            for param in SENSOR_PARAMETERS:
                self._declare_parameter(param, f"sensors.{name}.{param.name}")

    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        """Inputs named after start (a manager setting `input_names`) get their sensor parameters too."""
        for parameter in parameters:
            if parameter.name == "input_names" and isinstance(parameter.value, list | tuple):
                self._declare_sensor_parameters([str(name) for name in parameter.value])

    def _only_while_unconfigured(self, parameters: list[Parameter]) -> SetParametersResult:
        if self.lifecycle_state == "unconfigured":
            return SetParametersResult(successful=True)
        return SetParametersResult(
            successful=False,
            reason=f"parameters are read at configure; the node is {self.lifecycle_state}: clean it up first",
        )

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as exc:  # any reason at all: the manager gets FAILURE, the log says why
            reason = str(exc) if isinstance(exc, CONFIGURE_ERRORS) else f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {reason}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        self.lifecycle_state = "active"
        self.get_logger().info("active: taking clouds")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self.lifecycle_state = "inactive"
        self.get_logger().info("inactive: no clouds taken")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.lifecycle_state = "unconfigured"
        self.get_logger().info("unconfigured: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        self.lifecycle_state = "finalized"
        self.get_logger().info("finalized")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        self.lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def bring_up(self) -> bool:
        """Configure, then activate, through the node's own transitions (as a manager would); whether
        the node is active (a failed configure is logged with its reason)."""
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()
        return self.lifecycle_state == "active"

    def stop(self) -> None:
        """Whatever the state: deactivate and release what is there."""
        if self.lifecycle_state == "active":
            self._deactivate()
        if self.lifecycle_state in ("active", "inactive"):
            self._release()


class _Stages:
    """Milliseconds per processing stage, for /diagnostics."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self._since = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.add(name, (now - self._since) * 1e3)
        self._since = now

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + ms

    def restart(self) -> None:
        self._since = time.perf_counter()


def _point_labels(merged: MergedCloud, result: sm.SegmentationResult | None) -> tuple[np.ndarray, np.ndarray]:
    """(class id uint8, probability float32) of every point of the merged cloud; 255 / 0 where not segmented
    (cropped, subsampled away, or outside the domain's range: label -1)."""
    count = len(merged.cloud.coord)
    class_id, probability = np.full(count, UNKNOWN, np.uint8), np.zeros(count, np.float32)
    if result is not None and result.labels is not None:
        class_id[merged.selected] = class_ids(result.labels)
        probability[merged.selected] = result.probability
    return class_id, probability


def _input_points(sensor: SensorCloud, point_class: np.ndarray, point_probability: np.ndarray, start: int) -> tuple:
    """(xyz, class id, probability) of every point of one input, in its frame and order, from the labels of
    the merged cloud's rows `start`, `start + 1`, ... (its valid points)."""
    msg, decoded = sensor.msg, sensor.decoded
    rows = np.flatnonzero(decoded.valid)
    class_id = np.full(decoded.num_input_points, UNKNOWN, np.uint8)
    probability = np.zeros(decoded.num_input_points, np.float32)
    class_id[rows] = point_class[start : start + len(rows)]
    probability[rows] = point_probability[start : start + len(rows)]
    return xyz_points(structured_view(msg).reshape(-1)), class_id, probability


def _stamp_ns(msg: PointCloud2) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def _health_limits(p: dict) -> HealthLimits:
    if p["health_window_s"] <= 0 or p["input_timeout_s"] <= 0:
        raise ValueError("health_window_s and input_timeout_s must be > 0")
    fractions = (p["rejected_warn_fraction"], p["input_skipped_warn_fraction"])
    if not all(0 <= f <= 1 for f in fractions) or p["exit_after_internal_errors"] < 0:
        raise ValueError(
            "rejected_warn_fraction and input_skipped_warn_fraction must be in [0, 1] and "
            "exit_after_internal_errors >= 0"
        )
    return HealthLimits(
        budget_ms=p["processing_budget_ms"],
        late_frames_error=p["late_frames_error"],
        window_s=p["health_window_s"],
        input_timeout_s=p["input_timeout_s"],
        rejected_warn_fraction=p["rejected_warn_fraction"],
        skipped_warn_fraction=p["input_skipped_warn_fraction"],
        exit_after=p["exit_after_internal_errors"],
    )


def _input_transform(config: sm.EncoderConfig, domain: str | None, grid_size: float) -> InputTransform:
    """The checkpoint's transform for `domain` (None: its own), with the voxel size overridden if > 0."""
    transform = config.transform(domain)
    if grid_size > 0:
        transform = transform.replace(grid=grid_size * transform.scale)
    return transform


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=NODE_NAME, description="Sonata semantic segmentation of PointCloud2.")
    parser.add_argument("--managed", action="store_true", help="a lifecycle node: starts unconfigured")
    parser.add_argument("--activate", action="store_true", help="with --managed: configure and activate at start")
    options = parser.parse_args(rclpy.utilities.remove_ros_args(sys.argv if args is None else args)[1:])
    if options.activate and not options.managed:
        parser.error("--activate is for the managed node (--managed); the plain node is active from the start")
    fix_malloc_thresholds()  # before the first frame: a flat RSS without page faults on every frame
    stop = init_ros(args)
    try:
        node = ManagedPerceptionNode() if options.managed else PerceptionNode()
    except CONFIGURE_ERRORS as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        return 1
    if options.activate and not node.bring_up():  # no manager would notice a node left unconfigured
        rclpy.logging.get_logger(NODE_NAME).fatal("cannot start: configure failed")
        node.destroy_node()
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
