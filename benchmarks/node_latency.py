"""End-to-end latency of the perception node: publisher and node in separate processes, real DDS.

    python benchmarks/node_latency.py --config demo --frames 50 --device cpu --record
    python benchmarks/node_latency.py --config sonata_lidar --device cuda --precision bf16

Each frame of a 64-beam synthetic drive is published (reliable QoS), freshly stamped, and the next one
only after the node's answer arrived, so the figure is the node's latency, not queueing behind a slow
node. Latency = arrival time of the segmentation - header stamp (same clock, same machine). Per-stage
times are the node's own (from /diagnostics). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import emit, summarize
from node_harness import drive_messages, model_files, running_node

import sonata_model as sm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", choices=sorted(sm.CONFIGS))
    parser.add_argument("--checkpoint", help="use this checkpoint instead of random weights of --config")
    parser.add_argument("--sensor", default="hdl64")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="node_latency_"))
    encoder, head = model_files(args.config, args.checkpoint, workdir)
    color = "color" in sm.get_config(args.config).feature_keys
    messages = drive_messages(args.sensor, min(args.frames, 20), with_color=color)
    parameters = {
        "checkpoint": encoder,
        "head": head,
        "device": args.device,
        "precision": args.precision,
        "input_reliability": "reliable",
        "diagnostics_period_s": 0.5,
        "normals": "zeros",
    }
    with running_node(workdir, parameters) as node:
        latencies = [node.ask(messages[i % len(messages)]) for i in range(args.warmup + args.frames)]
        node.spin_for(1.5)
        stages = node.stage_means_ms()
    latencies = latencies[args.warmup :]
    emit(
        f"node_latency_{args.config}_{args.device}",
        {
            "config": args.config,
            "sensor": args.sensor,
            "points_per_frame": int(np.mean([m.width * m.height for m in messages])),
            "device": args.device,
            "precision": args.precision,
            "frames": len(latencies),
            "latency_ms": {**summarize(latencies), "p99_ms": round(float(np.percentile(latencies, 99)), 3)},
            "stage_mean_ms": stages,
        },
        args.record,
    )


if __name__ == "__main__":
    main()
