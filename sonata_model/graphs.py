"""The encoder forward replayed from CUDA graphs, one per size bucket.

On a GPU the eager forward of the 108M encoder dispatches about a thousand aten ops from Python and
launches some 550 kernels: milliseconds of host time per frame, more than the maths of a LiDAR frame.
Over a `FramePlan` the forward has fixed shapes and no host sync for a given `FramePlan.signature`
(size buckets make frames of similar size share one), so it is captured once per signature as a CUDA
graph and replayed: the frame's plan tensors and features are copied into the captured inputs, one
replay runs every kernel, and the outputs are cloned out (a result read later must not see the next
frame's replay). The graphs share one memory pool: they never run concurrently and none reads
another's output. Beyond `capacity` signatures the least recently used graph is dropped.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from .encoder import SonataEncoder
from .plan import FramePlan


@dataclass
class _Captured:
    plan: FramePlan  # the plan the graph reads (a private copy: callers keep their own)
    feat: Tensor
    outputs: list[Tensor]  # what a replay writes
    replay: Callable[[], None]


class GraphedForward:
    """`encoder.forward_plan(plan, feat)` on CUDA, captured per plan signature and replayed.

    `dtype`: the autocast dtype of the forward (None: the parameters' dtype); the capture runs its own
    autocast, with the weight-cast cache off (a cache filled during capture would be freed under the
    graph). `captures` counts the graphs captured so far (one per new signature)."""

    def __init__(self, encoder: SonataEncoder, dtype: torch.dtype | None = None, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"GraphedForward: capacity must be at least 1, got {capacity}")
        self.encoder, self.dtype, self.capacity = encoder, dtype, capacity
        self.graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self.captures = 0
        self._pool = None

    def __call__(self, plan: FramePlan, feat: Tensor) -> list[Tensor]:
        if plan.sparse_backend != "torch":
            raise ValueError("CUDA graphs need the torch sparse conv (spconv builds its pairs on the host)")
        key = (plan.signature, feat.shape[1], feat.dtype)
        captured = self.graphs.get(key)
        if captured is None:
            static_plan, static_feat = copy.deepcopy(plan), feat.clone()
            outputs, replay = self._record(lambda: self._forward(static_plan, static_feat))
            captured = self.graphs[key] = _Captured(static_plan, static_feat, outputs, replay)
            self.captures += 1
            if len(self.graphs) > self.capacity:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
            captured.plan.copy_(plan)
            captured.feat.copy_(feat)
        captured.replay()
        return [out.clone() for out in captured.outputs]

    def _forward(self, plan: FramePlan, feat: Tensor) -> list[Tensor]:
        autocast = nullcontext() if self.dtype is None else torch.autocast("cuda", self.dtype, cache_enabled=False)
        with autocast:
            return self.encoder.forward_plan(plan, feat)

    def _record(self, run: Callable[[], list[Tensor]]) -> tuple[list[Tensor], Callable[[], None]]:
        """Capture `run` (the forward over the static inputs) as a CUDA graph: its outputs and its replay."""
        device = next(self.encoder.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on CUDA, this one is on {device}")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisation (handles, workspaces) outside the capture
            run()
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: a node's other threads (ROS executor, DDS) never touch CUDA, and a library call
        # there must not abort this thread's capture
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = run()
        return outputs, graph.replay
