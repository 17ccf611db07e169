"""bf16 on a CPU: the forward keeps oneDNN (torch's only fast half-precision GEMM), its labels agree
with fp32, and oneDNN's per-shape kernel caches stay bounded over a stream of varying clouds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from test_domains import KITTI_SCAN
from test_forward_reference import make_encoder

import sonata_model as sm
from sonata_model.io.datasets import read_kitti_scan
from sonata_model.synth.drive import generate_drive
from sonata_ros.model_loading import load_model

# A child process: its caches start empty and it imports sonata_model before any oneDNN kernel runs.
STREAM = """
import json, sys
import numpy as np, psutil, torch
import sonata_model as sm
from sonata_model.io.datasets import read_kitti_scan
torch.set_num_threads(1)
torch.manual_seed(0)
config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), grid_size=0.15, coord_scale=0.2)
segmenter = sm.Segmenter(sm.SonataEncoder(config), None, device="cpu", precision="bf16", domain="outdoor")
rng, rss = np.random.default_rng(0), []
for _ in range(int(sys.argv[1])):
    n = int(rng.integers(1000, 4001))
    coord = np.c_[rng.uniform(-25, 25, (n, 2)), rng.uniform(-2, 4, n)].astype(np.float32)
    segmenter(coord, strength=rng.uniform(0, 1, n).astype(np.float32)).embedding_tensor
    rss.append(psutil.Process().memory_info().rss / 2**20)
print(json.dumps(rss))
"""
FRAMES = 250
GROWTH_LIMIT_MB = 100


def street_label_agreement(device: str | torch.device, precision: str = "bf16") -> float:
    """Share of points of two synthetic 64-beam frames that the shipped model labels alike in `precision`
    and fp32."""
    model = load_model("", "", "")
    full = sm.Segmenter(model.encoder, model.head, device=device, precision="fp32")
    half = sm.Segmenter(model.encoder, model.head, device=device, precision=precision)
    agree, total = 0, 0
    for frame in generate_drive("hdl64", frames=2, seed=7):
        a = full(frame.coord, strength=frame.strength).labels
        b = half(frame.coord, strength=frame.strength).labels
        agree, total = agree + int((a == b).sum()), total + len(a)
    return agree / total


def test_bf16_labels_on_the_cpu_agree_with_fp32_on_a_street():
    assert street_label_agreement("cpu") >= 0.99


def test_bf16_labels_on_the_cpu_agree_with_fp32_on_a_real_scan():
    if not KITTI_SCAN.is_file():
        pytest.skip(f"real scans not available ({KITTI_SCAN} absent; see shared/real/README.md)")
    scan = read_kitti_scan(KITTI_SCAN)
    model = load_model("", "", "")
    labels = [
        sm.Segmenter(model.encoder, model.head, device="cpu", precision=p)(scan.coord, strength=scan.strength).labels
        for p in ("fp32", "bf16")
    ]
    assert (labels[0] == labels[1]).mean() >= 0.99


def test_a_bf16_forward_on_the_cpu_runs_with_onednn_and_an_fp32_forward_without():
    encoder = make_encoder("tiny")
    seen = []
    encoder.embedding.register_forward_hook(lambda *_: seen.append(torch._C._get_mkldnn_enabled()))
    rng = np.random.default_rng(0)
    cloud = rng.uniform(0, 3, (2000, 3)).astype(np.float32)
    before = torch._C._get_mkldnn_enabled()
    for precision in ("fp32", "bf16"):
        sm.Segmenter(encoder, None, device="cpu", precision=precision, domain="outdoor")(cloud).embedding_tensor  # noqa: B018
    assert seen == [False, True]
    assert torch._C._get_mkldnn_enabled() == before  # the caller's setting is restored


def test_a_bf16_stream_of_varying_clouds_on_the_cpu_keeps_its_memory():
    """Every frame has new voxel counts, so oneDNN compiles new kernels per frame; with its default caches
    this stream grew by 216 MB from frame 50 to 250 (measured), with the caps sonata_model sets by 4 MB."""
    done = subprocess.run(
        [sys.executable, "-c", STREAM, str(FRAMES)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rss = np.array(json.loads(done.stdout.splitlines()[-1]))
    growth = np.median(rss[-20:]) - np.median(rss[40:60])
    assert growth < GROWTH_LIMIT_MB, f"RSS grew by {growth:.0f} MB from frame 50 to {FRAMES}"


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_may_be_slower(monkeypatch):
    encoder = make_encoder("tiny")
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False)
    with pytest.warns(UserWarning, match="without AVX-512 BF16 or AMX"):
        sm.Segmenter(encoder, None, device="cpu", precision="bf16", domain="outdoor")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sm.Segmenter(encoder, None, device="cpu", precision="fp32", domain="outdoor")
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
        sm.Segmenter(encoder, None, device="cpu", precision="bf16", domain="outdoor")


def test_importing_the_package_caps_onednns_caches_unless_the_environment_set_them():
    """Both cache variables default to the package's cap at import; a value the user exported is kept."""
    read = "import os, sonata_model; print(*(os.environ[name] for name in sonata_model.onednn.CACHE_VARIABLES))"
    clean = {k: v for k, v in os.environ.items() if k not in sm.onednn.CACHE_VARIABLES}
    default = subprocess.run([sys.executable, "-c", read], env=clean, capture_output=True, text=True, check=True)
    assert default.stdout.split() == [str(sm.onednn.CACHE_CAPACITY)] * 2
    own = {**clean, "LRU_CACHE_CAPACITY": "5", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "7"}
    kept = subprocess.run([sys.executable, "-c", read], env=own, capture_output=True, text=True, check=True)
    assert kept.stdout.split() == ["5", "7"]
