"""Counting aten ops and sync-shaped ops: the launch and host<->device-sync budget of a code path.

On a GPU every aten op that is not a view is (at least) one kernel launch, and some ops make the host
wait for the device: reading a value (`.item()`, `bool(t)`, `int(t)`), ops whose output size depends on
the data (`nonzero`, `unique`, `masked_select`, boolean-mask indexing, `repeat_interleave` without
`output_size`, `bincount`), `torch.equal`, copies to the host, and blocking copies from the host to a
device (CUDA synchronises the stream after one: the host waits for the work queued before it).
`count_ops` records both while a block runs, on any device, so a CPU run already shows what a CUDA run
would pay (and a run on the `meta` device shows every upload, which on a CPU run is no copy at all).

On the CPU `.cpu()` and `.tolist()` never reach the dispatcher, so while it is active the counter also
wraps those two methods and counts their calls on CPU tensors as copies to the host (a CUDA tensor's
copy is seen by the dispatcher instead). Not counted on the CPU: `.numpy()` (a GPU path must copy to
the host first, and that copy is the one counted) and `.to(device)` (a CPU run cannot tell a copy to
the host from a move to the compute device). `torch.tensor` and `torch.as_tensor` of Python numbers
or lists onto a device build the tensor on the host and copy it below the dispatcher, blocking: the
counter wraps both and counts such a call as a blocking upload.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_SYNC_KIND = {  # composite ops (item, is_nonzero, argwhere, ...) reach the mode undecomposed in inference mode
    aten._local_scalar_dense: "item",
    aten.item: "item",
    aten.is_nonzero: "item",
    aten.allclose: "item",
    aten.nonzero: "nonzero",
    aten.nonzero_numpy: "nonzero",
    aten.argwhere: "nonzero",
    aten._unique: "unique",
    aten._unique2: "unique",
    aten.unique_dim: "unique",
    aten.unique_consecutive: "unique",
    aten.unique_dim_consecutive: "unique",
    aten.masked_select: "masked_select",
    aten.bincount: "bincount",
    aten.equal: "equal",
}
_REPEAT_BY_TENSOR = (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor)
_INDEXING = (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_)
_COPIES = (aten._to_copy, aten.to, aten.copy_)  # aten.to reaches the mode undecomposed in inference mode
_HOST_READS = ("cpu", "tolist")
_FACTORIES = ("tensor", "as_tensor")


class SyncError(RuntimeError):
    """A sync-shaped op ran where none is allowed."""


@dataclass
class OpCounts:
    """What ran: calls per aten op, how many of them were views, and sync-shaped ops by kind."""

    ops: Counter[str] = field(default_factory=Counter)
    views: int = 0
    syncs: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def launches(self) -> int:
        """Ops that are not views: an upper bound on the kernels a GPU would launch."""
        return self.total - self.views

    @property
    def sync_total(self) -> int:
        return sum(self.syncs.values())

    def summary(self) -> dict[str, Any]:
        return {
            "aten_ops": self.total,
            "views": self.views,
            "launches": self.launches,
            "syncs": self.sync_total,
            "syncs_by_kind": dict(sorted(self.syncs.items())),
        }


def sync_kind(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> str | None:
    """Why `func(*args, **kwargs)` would make the host wait for the device, or None."""
    packet = func.overloadpacket
    if packet in _SYNC_KIND:
        return _SYNC_KIND[packet]
    if packet in _INDEXING and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] if i is not None
    ):
        return "bool_index"
    if func is aten.where.default:  # where(condition): the indices of the true entries
        return "nonzero"
    if func in _REPEAT_BY_TENSOR and kwargs.get("output_size") is None:
        return "repeat_interleave"
    if packet in _COPIES:
        return _copy_kind(func, args, kwargs)
    return None


def _copy_kind(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> str | None:
    """A copy's sync kind: "copy_to_host" (a device's tensor to the host), "blocking_upload" (the host's to
    a device, not `non_blocking`), or None."""
    if func.overloadpacket is aten.copy_:
        target, source = args[0].device, args[1].device
    else:
        source = args[0].device
        target = _argument(func, args, kwargs, "device")
        if target is None:  # aten.to.other(self, other, ...)
            other = _argument(func, args, kwargs, "other")
            target = other.device if isinstance(other, torch.Tensor) else None
        if target is None:
            return None
        target = torch.device(target)
    if target.type == "cpu" and source.type != "cpu":
        return "copy_to_host"
    if source.type == "cpu" and target.type != "cpu" and not _argument(func, args, kwargs, "non_blocking"):
        return "blocking_upload"
    return None


def _argument(func: torch._ops.OpOverload, args: tuple, kwargs: dict, name: str) -> Any:
    """The value of argument `name` of a dispatched call (None where the schema has no such argument or
    the call left it at its default)."""
    for position, argument in enumerate(func._schema.arguments):
        if argument.name == name:
            if name in kwargs:
                return kwargs[name]
            return args[position] if position < len(args) and not argument.kwarg_only else None
    return None


class _Recorder(TorchDispatchMode):
    def __init__(self, counts: OpCounts, on_sync: Callable[[str, str], None]) -> None:
        super().__init__()
        self.counts, self.on_sync = counts, on_sync

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.counts.ops[str(func.overloadpacket)] += 1
        self.counts.views += int(func.is_view)
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            self.on_sync(kind, str(func))
        return func(*args, **kwargs)


@contextmanager
def count_ops(forbid_syncs: bool = False) -> Iterator[OpCounts]:
    """Count the aten ops and sync-shaped ops run inside the block (not thread-safe: patches `torch.Tensor`
    and two of torch's factories).

    With `forbid_syncs` the first sync-shaped op raises `SyncError` naming it, at the line that ran it.
    """
    counts = OpCounts()

    def on_sync(kind: str, name: str) -> None:
        counts.syncs[kind] += 1
        if forbid_syncs:
            raise SyncError(f"sync-shaped op {name} ({kind})")

    originals = {name: getattr(torch.Tensor, name) for name in _HOST_READS}
    own = {name for name in _HOST_READS if name in vars(torch.Tensor)}  # the rest are inherited from C

    def host_read(name: str):
        original = originals[name]

        def read(self, *args, **kwargs):
            if self.device.type == "cpu":
                on_sync("copy_to_host", f"Tensor.{name}")
            return original(self, *args, **kwargs)

        return read

    factories = {name: getattr(torch, name) for name in _FACTORIES}

    def upload(name: str):
        original = factories[name]

        def build(data, *args, **kwargs):
            tensor = original(data, *args, **kwargs)
            if tensor.device.type != "cpu" and not isinstance(data, torch.Tensor | np.ndarray):
                on_sync("blocking_upload", f"torch.{name}")  # a copy the dispatcher does not see
            return tensor

        return build

    for name in _HOST_READS:
        setattr(torch.Tensor, name, host_read(name))
    for name in _FACTORIES:
        setattr(torch, name, upload(name))
    try:
        with _Recorder(counts, on_sync):
            yield counts
    finally:
        for name, original in originals.items():
            if name in own:
                setattr(torch.Tensor, name, original)
            else:
                delattr(torch.Tensor, name)
        for name, original in factories.items():
            setattr(torch, name, original)
