"""What glibc's malloc thresholds cost a CPU frame: time and page faults per frame under each policy.

    python benchmarks/malloc_policy.py --record

Each policy runs in its own process (thresholds are per process and must be set before the first
large allocation): glibc's dynamic default, a fixed 1 MiB mmap threshold (every large buffer mapped
and faulted in afresh each frame), and the node's policy (`sonata_ros.allocator`: 32 MiB mmap,
256 MiB trim). One `demo` encoder (random weights) on a synthetic 64-beam frame; median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import emit, machine, summarize

HERE = Path(__file__).resolve().parent
POLICIES = ("glibc_default", "mmap_1mib", "node")


def run_policy(policy: str, points: int, repeats: int) -> dict:
    """One frame loop in this process under `policy` (set before the model is built)."""
    import torch

    from sonata_ros.allocator import M_MMAP_THRESHOLD, fix_malloc_thresholds

    if policy == "node":
        assert fix_malloc_thresholds()
    elif policy == "mmap_1mib":
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        assert mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1
    from encoder import frame_inputs

    import sonata_model as sm

    encoder = sm.SonataEncoder(sm.get_config("demo")).eval()
    segmenter = sm.Segmenter(encoder, None, device="cpu")
    cloud = sm.Cloud(**frame_inputs("lidar", points, encoder.config))
    with torch.inference_mode():
        for _ in range(3):
            segmenter.segment_batch([cloud])
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            segmenter.segment_batch([cloud])
            times.append((time.perf_counter() - start) * 1e3)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **summarize(times),
        "page_faults_per_frame": (usage.ru_minflt - faults) // repeats,
        "max_rss_mib": usage.ru_maxrss // 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--policy", choices=POLICIES, help=argparse.SUPPRESS)  # one policy's process
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.policy:
        print(json.dumps(run_policy(args.policy, args.points, args.repeats)))
        return
    policies = {}
    for policy in POLICIES:
        command = [sys.executable, str(Path(__file__).resolve()), f"--policy={policy}", f"--points={args.points}"]
        done = subprocess.run([*command, f"--repeats={args.repeats}"], capture_output=True, text=True, check=True)
        policies[policy] = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"machine": machine(), "config": "demo", "points": args.points, "policies": policies}
    emit("malloc_policy_cpu", result, args.record)


if __name__ == "__main__":
    main()
