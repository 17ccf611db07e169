"""The perception node's parameters: one table for the node, config/perception.yaml and the launch file.

The plain node declares them read-only (changing the model, device or crop means restarting it, as the
deployed LiDAR segmentation nodes do); the managed (lifecycle) node reads them at configure and takes
changes only while unconfigured. Each input of a multi-LiDAR node (`input_names`) also has the
`sensors.<name>.*` parameters of `SENSOR_PARAMETERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str


PARAMETERS: tuple[Param, ...] = (
    Param(
        "checkpoint",
        "",
        "Encoder checkpoint (.pth): released Sonata, a training checkpoint or the project's "
        "own. Empty: the demo model shipped with the package.",
    ),
    Param(
        "head",
        "",
        "Linear head checkpoint (released format). Empty: the shipped demo head when the "
        "checkpoint is the shipped model; 'none': embeddings only.",
    ),
    Param("device", "auto", "auto | cpu | cuda ('auto' uses CUDA when available)."),
    Param(
        "precision",
        "fp32",
        "fp32 | fp16 | bf16 (autocast). On a CPU, bf16 pays off where it has AVX-512 BF16 or AMX "
        "(1.5x fp32 for the 108M encoder on such a Xeon); fp32 elsewhere.",
    ),
    Param(
        "cpu_threads",
        0,
        "Torch threads of the CPU forward; 0: torch's default (one per core). The node shares the robot's "
        "cores with the driver and the rest of the stack: 1 or 2 leave them theirs.",
    ),
    Param(
        "attention",
        "auto",
        "auto | sdpa | flash: the attention kernel. auto uses flash_attn on CUDA in fp16 / bf16 when it is installed, "
        "else torch's scaled_dot_product_attention.",
    ),
    Param(
        "cuda_graphs",
        False,
        "On CUDA: plan frames in size buckets and replay the encoder forward from one CUDA graph per bucket "
        "(the first frame of a bucket captures it; the host then launches one graph instead of ~550 kernels).",
    ),
    Param(
        "domain",
        "",
        "indoor | outdoor | object: the encoder family's input transform (outdoor: LiDAR in the sensor frame, "
        "z up). Empty uses the one the head was fitted under (sonata-probe --domain), else the checkpoint's "
        "(Sonata / Concerto: indoor; Utonia and this project's LiDAR models: outdoor).",
    ),
    Param("grid_size", 0.0, "Voxel size in metres; 0 uses the domain's."),
    Param(
        "feature_keys",
        "",
        "Comma-separated input features (e.g. 'coord,strength'); empty uses the "
        "checkpoint's. Must give the checkpoint's channel count.",
    ),
    Param(
        "normals",
        "",
        "For models that take normals when the cloud has none: estimate | zeros; empty: estimate indoors, "
        "zeros in the other domains.",
    ),
    Param(
        "missing_intensity",
        "zeros",
        "For models that read intensity when a cloud has none (x, y, z only): zeros (labelled, less accurately; "
        "warned) | reject.",
    ),
    Param("label_set", "", "Label set name or YAML path; empty uses the head's, else 'synthetic'."),
    Param("input_reliability", "best_effort", "QoS reliability of the input subscription: best_effort | reliable."),
    Param("frame_id", "", "Single input: expected header.frame_id; empty accepts any. Others are rejected."),
    Param(
        "intensity_scale",
        0.0,
        "Divide the strength field (reflectivity if present, else intensity) by this to get [0, 1]; 0 picks "
        "per field: reflectivity / 255, intensity u8 / 255, u16 / 65535, float / 255.",
    ),
    Param("min_range", 0.0, "Points closer to the sensor are not segmented (class 255); 0 disables."),
    Param("max_range", 0.0, "Points farther from the sensor are not segmented (class 255); 0 disables."),
    Param(
        "crop_box",
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        "[xmin, ymin, zmin, xmax, ymax, zmax] in the base frame; points outside get class 255; all zeros disables.",
    ),
    Param(
        "max_points",
        300000,
        "Clouds with more points to segment (valid, after the crop) are subsampled deterministically, evenly "
        "spaced; the rest get class 255.",
    ),
    Param(
        "sensor_to_base_translation",
        [0.0, 0.0, 0.0],
        "Single input: static sensor -> base translation [x, y, z] (m), applied to the model input only.",
    ),
    Param(
        "sensor_to_base_rotation",
        [0.0, 0.0, 0.0, 1.0],
        "Single input: static sensor -> base rotation quaternion [x, y, z, w].",
    ),
    Param(
        "input_topics",
        [],
        "Multi-LiDAR: PointCloud2 topics merged in the base frame and segmented in one forward; empty: the "
        "single input ~/input/pointcloud.",
    ),
    Param(
        "input_names",
        [],
        "Multi-LiDAR: a name per input_topics entry, for its sensors.<name>.* parameters and its output "
        "~/output/<name>/segmentation.",
    ),
    Param("base_frame", "base_link", "Multi-LiDAR: header.frame_id of the merged ~/output/segmentation."),
    Param(
        "sync_timeout_ms",
        100.0,
        "Multi-LiDAR: after the first fresh cloud, wait at most this long for the other inputs; those still "
        "missing are skipped and counted.",
    ),
    Param(
        "stale_after_ms",
        300.0,
        "Multi-LiDAR: a cloud stamped more than this before the newest input's is skipped as stale and counted.",
    ),
    Param(
        "embedding_dim",
        32,
        "Dimensions of ~/output/embeddings: D > 0 projects each voxel's embedding on its first D principal "
        "components (on the device); 0 publishes all channels (1,232 floats per voxel for the sonata configs: "
        "hundreds of MB per LiDAR frame).",
    ),
    Param("pca_frames", 5, "Frames used to fit the embedding PCA basis when the model carries none; then fixed."),
    Param("processing_budget_ms", 100.0, "Diagnostics WARN when the mean processing time exceeds this."),
    Param("late_frames_error", 10, "Diagnostics ERROR after this many consecutive frames over budget."),
    Param("health_window_s", 5.0, "Diagnostics judge rate, latency, processing time and rejections over this time."),
    Param("input_timeout_s", 2.0, "Diagnostics STALE when no input cloud arrived for this many seconds."),
    Param(
        "rejected_warn_fraction",
        0.2,
        "Diagnostics WARN when more than this fraction of the window's frames were rejected; ERROR when all were.",
    ),
    Param(
        "input_skipped_warn_fraction",
        0.2,
        "Multi-LiDAR: diagnostics WARN when an input was skipped (missing, stale or rejected) in more than this "
        "fraction of the window's frames.",
    ),
    Param(
        "exit_after_internal_errors",
        10,
        "Exit with code 70 after this many consecutive internal errors (e.g. a sticky CUDA error), so that "
        "the launch file's respawn restarts the node; 0 never exits.",
    ),
    Param("diagnostics_period_s", 1.0, "Period of /diagnostics messages."),
    Param("log_period_s", 10.0, "Period of the status log line."),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)

SENSOR_PARAMETERS: tuple[Param, ...] = (
    Param("translation", [0.0, 0.0, 0.0], "Static sensor -> base translation [x, y, z] (m)."),
    Param("rotation", [0.0, 0.0, 0.0, 1.0], "Static sensor -> base rotation quaternion [x, y, z, w]."),
    Param("frame_id", "", "Expected header.frame_id of this input; empty accepts any. Others are rejected."),
    Param("intensity_scale", 0.0, "As intensity_scale, for this input (drivers differ); 0 picks per field."),
)
"""Per input of a multi-LiDAR node, as `sensors.<name>.<parameter>`."""
