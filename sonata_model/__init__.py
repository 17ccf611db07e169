"""sonata_model: the Sonata / PTv3 encoder, voxelization, linear head and point-cloud I/O — no ROS.

Public API (the node, the offline tools and outside checks use exactly this)::

    import sonata_model as sm
    encoder = sm.load("sonata.pth")                 # released or own checkpoint, strict
    head = sm.load_head("sonata_linear_prob_head_sc.pth")
    seg = sm.Segmenter(encoder, head, device="cpu")
    out = seg(coord, color=None, normal=None, strength=None)
    out.labels, out.probability, out.embedding, out.voxel_of_point
"""

from .checkpoint import CheckpointError, LinearHead, load, load_head, save_encoder, save_head
from .configs import CONFIGS, ConfigError, EncoderConfig, get_config
from .encoder import SonataEncoder, count_parameters
from .graphs import GraphedForward
from .plan import FramePlan, SizeBuckets, build_plan
from .point import Point
from .pooling import upcast
from .segmenter import Cloud, NothingInRangeError, SegmentationResult, Segmenter

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "Cloud",
    "ConfigError",
    "EncoderConfig",
    "FramePlan",
    "GraphedForward",
    "LinearHead",
    "NothingInRangeError",
    "Point",
    "SegmentationResult",
    "Segmenter",
    "SizeBuckets",
    "SonataEncoder",
    "build_plan",
    "count_parameters",
    "get_config",
    "load",
    "load_head",
    "save_encoder",
    "save_head",
    "upcast",
]
