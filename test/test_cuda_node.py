"""The perception node on a GPU (marker `cuda`; skipped without CUDA): in its own process over real DDS
with `device: cuda`, eagerly in fp32 and replayed from CUDA graphs in bf16, it labels every frame as the
same model at the same precision does in this process, and reports its device, forwards and captures.

    pytest -m cuda test/test_cuda_node.py        (needs rclpy; test/test_cuda.py does not)
"""

from __future__ import annotations

import signal

import pytest
import torch
from ros_helpers import DISCOVERY_TIMEOUT_S, NodeProcess, node_parameters, spin_until
from test_node import Conversation, cloud

import sonata_model as sm
from sonata_model.io.pointcloud2 import decode, structured_view
from sonata_model.synth.drive import generate_drive

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
DEVICE = "cuda"
FRAMES = 4


@pytest.mark.parametrize(("precision", "cuda_graphs"), [("fp32", False), ("bf16", True)])
def test_the_node_on_the_gpu_labels_every_frame_as_the_model_does_here(client, model_files, precision, cuda_graphs):
    encoder, head = model_files
    here = sm.Segmenter(sm.load(encoder), sm.load_head(head), device=DEVICE, precision=precision)
    name = f"gpu_{precision}"
    parameters = node_parameters(
        encoder, head, device=DEVICE, precision=precision, cuda_graphs=str(cuda_graphs).lower(), frame_id="lidar"
    )
    process = NodeProcess(
        "sonata_ros.perception_node",
        [
            "--params-file",
            "config/perception.yaml",
            *parameters,
            "-r",
            f"__node:={name}",
            "-r",
            f"~/input/pointcloud:=/{name}/points",
        ],
    )
    assert f"on {DEVICE}" in process.wait_for_line("ready:", timeout=120)
    talk = Conversation(client, name=name, input_topic=f"/{name}/points")
    try:
        spin_until(client, lambda: talk.publisher.get_subscription_count() > 0, DISCOVERY_TIMEOUT_S, "the node")
        for frame in generate_drive("vlp16", frames=FRAMES, seed=2):
            msg = cloud(frame, "velodyne")
            answer = structured_view(talk.ask(msg, timeout=120)).reshape(-1)
            decoded = decode(msg)
            labels = here(decoded.coord, strength=decoded.strength).labels
            # padded (bucketed) shapes may round a doubtful point the other way; nothing more
            assert (answer["class_id"][decoded.valid] == labels).mean() >= 0.995
            assert (answer["class_id"][~decoded.valid] == 255).all()
        spin_until(client, lambda: talk.counter("encoder_forwards") >= FRAMES, 10, "the node's diagnostics")
        assert talk.diagnostics["device"].startswith(DEVICE)
        if cuda_graphs:  # a VLP-16 sweep's size moves little: a bucket or two, replayed for the other frames
            assert 1 <= talk.counter("cuda_graph_captures") < FRAMES
    finally:
        talk.close()
        assert process.stop(signal.SIGINT) == 0
    assert "Traceback" not in process.output
