"""`GraphedForward` and the segmenter's `cuda_graphs`: what can be checked without a GPU.

The capture itself needs CUDA (test_cuda.py replays real graphs). Around it: one capture per plan
signature, a private copy of the plan as the graph's inputs (the caller's plan is never written), each
frame's inputs copied in before a replay, outputs cloned out so that an earlier frame's result survives
the next replay, the least recently used capture dropped beyond the capacity, and the refusals where a
graph cannot replay.
"""

from __future__ import annotations

import pytest
import torch
from test_forward_reference import make_encoder
from test_plan import BUCKETS, WIDE_BUCKETS, clouds, next_frame, segmenter

import sonata_model as sm
import sonata_model.segmenter as segmenter_module


class SimulatedGraphs(sm.GraphedForward):
    """SIMULATED CUDA graphs (no GPU here): `_record` runs the forward once into its outputs, and a
    "replay" runs it again over the same static inputs and writes into those outputs, which is what a
    captured graph's replay does; the caching, copies and clones around it are `GraphedForward`'s own."""

    def _record(self, run):
        outputs = run()

        def replay():
            for out, new in zip(outputs, run(), strict=True):
                out.copy_(new)

        return outputs, replay


def real_rows(prepared: sm.segmenter.PreparedBatch, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    return [feat[: level.num_voxels] for level, feat in zip(prepared.plan.levels, feats, strict=True)]


@torch.inference_mode()
def test_one_capture_per_bucket_and_every_frame_gets_its_own_output():
    seg = segmenter("rope", buckets=WIDE_BUCKETS)
    graphed = SimulatedGraphs(seg.encoder)
    first = clouds(seed=5)
    frames = [seg.prepare(f) for f in (first, next_frame(first), clouds(seed=1, sizes=(6000, 300)), first)]
    assert frames[0].plan.signature == frames[1].plan.signature != frames[2].plan.signature
    coord_before = frames[0].plan.levels[0].coord.clone()
    outputs = [graphed(f.plan, f.feat) for f in frames]  # compared only after every later replay
    assert graphed.captures == 2 and len(graphed.graphs) == 2
    for prepared, got in zip(frames, outputs, strict=True):
        want = seg.encoder.forward_plan(prepared.plan, prepared.feat)
        for mine, theirs in zip(real_rows(prepared, got), real_rows(prepared, want), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(frames[0].plan.levels[0].coord, coord_before)  # the caller's plan never written


@torch.inference_mode()
def test_the_least_recently_used_capture_is_dropped_beyond_the_capacity():
    seg = segmenter("tiny", buckets=WIDE_BUCKETS)
    graphed = SimulatedGraphs(seg.encoder, capacity=1)
    small, large = seg.prepare(clouds(seed=5)), seg.prepare(clouds(seed=1, sizes=(6000, 300)))
    for prepared in (small, large, small, small):
        graphed(prepared.plan, prepared.feat)
    assert graphed.captures == 3 and len(graphed.graphs) == 1  # small, large, small again; then a replay
    with pytest.raises(ValueError, match="at least 1"):
        sm.GraphedForward(seg.encoder, capacity=0)


def test_cuda_graphs_are_refused_where_a_graph_cannot_replay():
    """A CUDA graph replays fixed shapes on a GPU: a CPU segmenter, exact plans or spconv's host-built
    pairs are refused with the reason, before any frame."""
    with pytest.raises(ValueError, match="needs a CUDA device"):
        sm.Segmenter(make_encoder("tiny"), None, device="cpu", buckets=BUCKETS, cuda_graphs=True)
    cuda = torch.device("cuda")  # the checks themselves need no GPU
    with pytest.raises(ValueError, match="needs size buckets"):
        segmenter_module._check_graphable(cuda, None, "torch")
    with pytest.raises(ValueError, match="torch sparse conv"):
        segmenter_module._check_graphable(cuda, BUCKETS, "spconv")
    segmenter_module._check_graphable(cuda, BUCKETS, "torch")
    prepared = segmenter(buckets=BUCKETS).prepare(clouds())
    with torch.inference_mode(), pytest.raises(ValueError, match="need a model on CUDA"):
        sm.GraphedForward(make_encoder("tiny"))(prepared.plan, prepared.feat)
