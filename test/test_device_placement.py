"""A whole `Segmenter` frame on a device that is not the CPU, here `meta`, which stands in for a GPU on
this CPU-only machine (named as such: it holds no data and runs no kernel, it only propagates shapes
and devices). What it proves before any GPU time is spent: every tensor a frame makes lies on the
model's device (meta refuses to mix its tensors with the host's in arithmetic), nothing reads device
memory but the plan's one read of the sizes (meta has nothing to read: that read is answered with
the sizes the same frame had on the CPU, and every other read fails), and nothing is uploaded with a
blocking copy (on CUDA one synchronises the stream: the host waits for the work queued before it).
The values themselves are the CPU tests' and the `cuda`-marked tests' business."""

from __future__ import annotations

import pytest
import torch
from test_forward_reference import make_encoder
from test_plan import BUCKETS, clouds

import sonata_model as sm
import sonata_model.plan as plan_module
from sonata_model.checkpoint import LinearHead
from sonata_model.profiling import count_ops

CLASSES = 5


def segmenter(name: str, device: str, domain: str, buckets) -> sm.Segmenter:
    encoder = make_encoder(name)
    head = LinearHead(encoder.config.head_channels, CLASSES)
    return sm.Segmenter(encoder, head, device=device, buckets=buckets, domain=domain, normals="estimate")


@pytest.mark.parametrize("name", ["tiny", "rope"])
@pytest.mark.parametrize(
    ("domain", "buckets"),
    [("outdoor", None), ("outdoor", BUCKETS), ("indoor", None), ("object", BUCKETS)],
    ids=["outdoor-exact", "outdoor-bucketed", "indoor-exact", "object-bucketed"],
)
def test_a_frame_on_a_device_stays_there_and_waits_for_nothing_but_the_sizes(name, domain, buckets, monkeypatch):
    """Two clouds without normals: the normals are estimated on the device."""
    frame = [sm.Cloud(cloud.coord, cloud.color) for cloud in clouds()]
    sizes = []
    read = plan_module._read_sizes
    monkeypatch.setattr(plan_module, "_read_sizes", lambda stats: sizes.append(read(stats)) or sizes[-1])
    expected = segmenter(name, "cpu", domain, buckets).segment_batch(frame)

    answered = []
    monkeypatch.setattr(plan_module, "_read_sizes", lambda stats: answered.append(stats.device) or sizes[0])
    seg = segmenter(name, "meta", domain, buckets)
    seg.segment_batch(frame)  # the constant tables reach the device on first use
    with torch.inference_mode(), count_ops(forbid_syncs=True) as counts:
        results = seg.segment_batch(frame)
    assert answered == [torch.device("meta")] * 2 and counts.sync_total == 0
    assert seg.forwards == 2
    for mine, theirs in zip(results, expected, strict=True):
        assert mine.embedding_tensor.device.type == "meta"
        assert mine.embedding_tensor.shape == theirs.embedding_tensor.shape
        assert mine._labels.device.type == "meta" and mine._labels.shape == theirs._labels.shape
        assert mine._voxel_of_point.shape == theirs._voxel_of_point.shape
