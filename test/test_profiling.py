"""The op counter sees every aten op and names each kind of sync-shaped op, on a CPU-only run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonata_model.profiling import SyncError, count_ops, sync_kind

aten = torch.ops.aten


def test_counts_ops_and_views_without_syncs():
    x = torch.arange(12.0).reshape(3, 4)
    with count_ops() as counts:
        y = (x * 2 + 1)[1:, 1].sum()
    assert y.item() == (2 * 5 + 1) + (2 * 9 + 1)
    assert counts.ops == {"aten.mul": 1, "aten.add": 1, "aten.select": 1, "aten.slice": 1, "aten.sum": 1}
    assert counts.views == 2 and counts.launches == 3 and counts.sync_total == 0


@pytest.mark.parametrize(
    ("kind", "run"),
    [
        ("item", lambda t, m: t[0].item()),
        ("item", lambda t, m: bool(m.any())),
        ("item", lambda t, m: int(t.sum())),
        ("nonzero", lambda t, m: m.nonzero()),
        ("unique", lambda t, m: torch.unique(t, return_inverse=True)),
        ("masked_select", lambda t, m: torch.masked_select(t, m)),
        ("bool_index", lambda t, m: t[m]),
        ("bool_index", lambda t, m: t.clone().index_put_((m,), torch.tensor(0))),
        ("repeat_interleave", lambda t, m: torch.repeat_interleave(t, t)),
        ("repeat_interleave", lambda t, m: t.repeat_interleave(t)),
        ("nonzero", lambda t, m: torch.argwhere(m)),
        ("nonzero", lambda t, m: torch.where(m)),
        ("item", lambda t, m: torch.allclose(t.float(), t.float())),
        ("bincount", lambda t, m: torch.bincount(t)),
        ("equal", lambda t, m: torch.equal(t, t)),
        ("copy_to_host", lambda t, m: t.tolist()),
        ("copy_to_host", lambda t, m: t.cpu()),
    ],
)
@pytest.mark.parametrize("mode", [torch.enable_grad, torch.inference_mode])  # the Segmenter runs in inference mode
def test_each_sync_shaped_op_is_named_and_can_be_forbidden(kind, run, mode):
    with mode():
        t = torch.arange(6)
        m = t > 2
        with count_ops() as counts:
            run(t, m)
        assert counts.syncs[kind] >= 1, counts.syncs
        with pytest.raises(SyncError, match=kind), count_ops(forbid_syncs=True):
            run(t, m)


@pytest.mark.parametrize("mode", [torch.enable_grad, torch.inference_mode])
def test_sync_free_forms_are_not_counted(mode):
    with mode():
        t = torch.arange(6)
        with count_ops(forbid_syncs=True) as counts:
            torch.repeat_interleave(t, t, output_size=15)
            t.repeat_interleave(t, output_size=15)
            torch.repeat_interleave(t, 2)
            t[torch.tensor([1, 2])]
            torch.where(t > 2, t, 0)
            torch._assert_async(t.amax() < 10, "never")
            t.to(torch.float64)
            t.to("cpu")  # on a CPU run this is also a move to the compute device
    assert counts.sync_total == 0


def test_a_copy_to_the_host_counts_once():
    with count_ops() as counts:
        torch.arange(4).cpu().numpy()  # on a GPU: one copy, then a free view of host memory
    assert counts.syncs == {"copy_to_host": 1}


def test_copies_between_the_host_and_a_device_that_wait_are_syncs():
    device = torch.empty(2, device="meta")  # stands for a CUDA tensor: classified, never run
    host = torch.empty(2)
    assert sync_kind(aten._to_copy.default, (device,), {"device": torch.device("cpu")}) == "copy_to_host"
    assert sync_kind(aten.copy_.default, (host, device), {}) == "copy_to_host"
    # host -> device: a blocking copy waits for the stream (CUDA synchronises it after the copy), an
    # asynchronous one does not
    assert sync_kind(aten.copy_.default, (device, host), {}) == "blocking_upload"
    assert sync_kind(aten.copy_.default, (device, host, True), {}) is None
    assert sync_kind(aten._to_copy.default, (host,), {"device": torch.device("meta")}) == "blocking_upload"
    assert sync_kind(aten._to_copy.default, (host,), {"device": "meta", "non_blocking": True}) is None
    assert sync_kind(aten.to.device, (host, torch.device("meta"), torch.float32, True), {}) is None
    assert sync_kind(aten.to.other, (host, device), {}) == "blocking_upload"
    assert sync_kind(aten._to_copy.default, (host,), {"dtype": torch.float64}) is None
    assert sync_kind(aten.to.device, (device, torch.device("cpu"), torch.float32), {}) == "copy_to_host"
    assert sync_kind(aten.to.dtype_layout, (device,), {"device": "cpu"}) == "copy_to_host"
    assert sync_kind(aten.to.other, (device, host), {}) == "copy_to_host"
    assert sync_kind(aten.to.dtype, (device, torch.float16), {}) is None


def test_tensors_built_on_a_device_from_python_numbers_are_blocking_uploads():
    """torch.tensor / as_tensor of Python data build on the host and copy below the dispatcher (`meta`
    stands for a CUDA device: classified, never run)."""
    factories = (torch.tensor, torch.as_tensor)
    with count_ops() as counts:
        torch.tensor([1.0, 2.0], device="meta")
        torch.as_tensor(3.0, device="meta")
        torch.tensor([1.0, 2.0])  # on the host: no copy
        torch.as_tensor(torch.ones(2, device="meta"), device="meta")  # already there
    assert counts.syncs == {"blocking_upload": 2}
    with count_ops() as counts:
        torch.as_tensor(np.ones(3), device="meta")  # numpy data: the dispatcher sees the copy, counted once
    assert counts.syncs == {"blocking_upload": 1}
    assert (torch.tensor, torch.as_tensor) == factories


def test_tensor_methods_are_restored():
    originals = (torch.Tensor.cpu, torch.Tensor.tolist)
    with pytest.raises(SyncError), count_ops(forbid_syncs=True):
        torch.arange(3).tolist()
    assert (torch.Tensor.cpu, torch.Tensor.tolist) == originals
    assert "tolist" not in vars(torch.Tensor)
