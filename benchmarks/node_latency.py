"""End-to-end latency of the perception node: publisher and node in separate processes, real DDS.

    python benchmarks/node_latency.py --config demo --frames 50 --device cpu --record
    python benchmarks/node_latency.py --config sonata_lidar --device cuda --precision bf16
    python benchmarks/node_latency.py --config demo --sensors 3 --frames 20 --record

Each frame of a 64-beam synthetic drive is published (reliable QoS), freshly stamped, and the next one
only after the node's answer arrived, so the figure is the node's latency, not queueing behind a slow
node. With --rate-hz R the frames are published at R Hz as a driver does instead: the figure then
includes waiting behind the frame in flight, and frames the node's depth-1 input replaced are counted
as dropped. Latency = arrival time of the segmentation - header stamp (same clock, same machine). Per-stage
times are the node's own (from /diagnostics). Weights are random: speed does not depend on them.
Every process runs with the shipped Fast DDS profile (config/fastdds_large_messages.xml, unless one is
exported), as a deployment should: the latency includes two DDS hops of a ~2.7 MB cloud, which
`dds_latency.py` measures alone.

--sensors N: N LiDARs around the vehicle (yaw 360/N apart, 150 degree fields of view, one synthetic
world). "merged": a multi-LiDAR node takes the N clouds and answers them with ONE forward (latency to
the merged answer); "sequential": a single-input node is asked the N clouds one after the other (latency
from the first publish to the last answer), N single-cloud forwards. Both nodes run side by side and
each set goes to one, then the other, so that a shared, loaded CPU slows both alike.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from common import emit, summarize
from node_harness import benchmark_parameters, dds_profile, drive_messages, model_files, running_node

import sonata_model as sm
from sonata_ros.sim_lidar import cloud_message, mounted_drive

FIELD_OF_VIEW_DEG = 150.0
MOUNT_RADIUS_M = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo", choices=sorted(sm.CONFIGS))
    parser.add_argument("--checkpoint", help="use this checkpoint instead of random weights of --config")
    parser.add_argument("--sensor", default="hdl64")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--sensors", type=int, default=1, help="N > 1: one merged forward vs N sequential ones")
    parser.add_argument("--rate-hz", type=float, default=0.0, help="publish at this rate (0: one frame at a time)")
    parser.add_argument("--cuda-graphs", action="store_true", help="node parameter cuda_graphs (CUDA only)")
    parser.add_argument(
        "--also-subscribe",
        nargs="*",
        default=[],
        choices=["embedding_rgb", "embeddings"],
        help="outputs the client subscribes to besides the segmentation (RViz's config: embedding_rgb)",
    )
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="node_latency_"))
    encoder, head = model_files(args.config, args.checkpoint, workdir)
    parameters = benchmark_parameters(
        encoder,
        head,
        args.device,
        args.precision,
        diagnostics_period_s=0.5,
        normals="zeros",
        cuda_graphs=args.cuda_graphs,
    )
    if args.sensors > 1:
        compare_merged_and_sequential(args, workdir, parameters)
        return
    color = "color" in sm.get_config(args.config).feature_keys
    messages = drive_messages(args.sensor, min(args.frames, 20), with_color=color)
    dropped = 0
    with running_node(workdir, parameters, also_subscribe=tuple(args.also_subscribe)) as node:
        for i in range(args.warmup):
            node.ask(messages[i % len(messages)])
        if args.rate_hz > 0:
            latencies, dropped = node.stream([messages[i % len(messages)] for i in range(args.frames)], args.rate_hz)
        else:
            latencies = [node.ask(messages[i % len(messages)]) for i in range(args.frames)]
        node.spin_for(1.5)
        stages = node.stage_means_ms()
        captures = node.diagnostics.get("cuda_graph_captures")  # with cuda_graphs: slow frames, one per bucket
    if not latencies:
        raise SystemExit(f"no frame was answered ({dropped} dropped): see {workdir}/sonata_perception.log")
    emit(
        f"node_latency_{args.config}_{args.device}" + ("_graphs" if args.cuda_graphs else ""),
        {
            "config": args.config,
            "sensor": args.sensor,
            "points_per_frame": int(np.mean([m.width * m.height for m in messages])),
            "device": args.device,
            "precision": args.precision,
            "cuda_graphs": args.cuda_graphs,
            "cuda_graph_captures": None if captures is None else int(captures),
            "frames": args.frames,
            "rate_hz": args.rate_hz or "one at a time",
            "dropped": dropped,
            "latency_ms": {**summarize(latencies), "p99_ms": round(float(np.percentile(latencies, 99)), 3)},
            "stage_mean_ms": stages,
            "dds_profile": dds_profile(),
            "also_subscribed": node.also_received,  # output -> messages received
        },
        args.record,
    )


def mounts(count: int) -> dict[str, list[float]]:
    """`count` sensors on a circle around the base, each facing outwards: name -> [x, y, z, qx, qy, qz, qw]."""
    poses = {}
    for i in range(count):
        yaw = 2 * math.pi * i / count
        poses[f"lidar{i}"] = [
            MOUNT_RADIUS_M * math.cos(yaw),
            MOUNT_RADIUS_M * math.sin(yaw),
            0.0,
            0.0,
            0.0,
            math.sin(yaw / 2),
            math.cos(yaw / 2),
        ]
    return poses


def compare_merged_and_sequential(args, workdir, parameters: dict) -> None:
    poses = mounts(args.sensors)
    frames = min(args.frames, 10)
    drives = {n: mounted_drive(args.sensor, frames, 0, pose, FIELD_OF_VIEW_DEG) for n, pose in poses.items()}
    sets = [[cloud_message(drives[n][i], "velodyne")[0] for n in poses] for i in range(frames)]
    topics = tuple(f"/bench/{name}" for name in poses)
    multi = {
        **parameters,
        "input_topics": list(topics),
        "input_names": list(poses),
        "sync_timeout_ms": 5000.0,
        **{f"sensors.{n}.translation": pose[:3] for n, pose in poses.items()},
        **{f"sensors.{n}.rotation": pose[3:] for n, pose in poses.items()},
    }
    rounds = args.warmup + args.frames
    merged, sequential = [], []
    with (
        running_node(workdir, multi, topics, name="merged_perception") as merged_node,
        running_node(workdir, parameters, name="single_perception") as single_node,
    ):
        for i in range(rounds):
            merged.append(merged_node.ask_set(sets[i % frames]))
            sequential.append(sum(single_node.ask(msg) for msg in sets[i % frames]))
        merged_node.spin_for(1.5)
        single_node.spin_for(1.5)
        merged_stages, sequential_stages = merged_node.stage_means_ms(), single_node.stage_means_ms()
        forwards, processed = merged_node.diagnostics["encoder_forwards"], merged_node.diagnostics["frames_processed"]
    merged, sequential = merged[args.warmup :], sequential[args.warmup :]
    points = [int(np.mean([s[k].width for s in sets])) for k in range(args.sensors)]
    emit(
        f"node_latency_{args.config}_{args.device}_sensors{args.sensors}",
        {
            "config": args.config,
            "sensor": args.sensor,
            "sensors": args.sensors,
            "field_of_view_deg": FIELD_OF_VIEW_DEG,
            "points_per_sensor": points,
            "device": args.device,
            "precision": args.precision,
            "frames": len(merged),
            "merged_one_forward": {
                "latency_ms": summarize(merged),
                "stage_mean_ms": merged_stages,
                "encoder_forwards": int(forwards),
                "frames_processed": int(processed),
            },
            "sequential_forwards": {"latency_ms": summarize(sequential), "stage_mean_ms_per_cloud": sequential_stages},
            "speedup_median": round(float(np.median(sequential) / np.median(merged)), 2),
        },
        args.record,
    )


if __name__ == "__main__":
    main()
