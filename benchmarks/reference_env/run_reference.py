"""The reference side of benchmarks/vs_reference.py: the public `sonata` package on one cloud.

Runs in its own process with the reference on PYTHONPATH (this folder's stand-ins for torch_scatter,
timm and huggingface_hub come first on sys.path because the script lives here); it never imports
sonata_model. It does what the reference's demos do: `sonata.transform.default()`, the model forward,
then the all-level upcast through `pooling_parent` / `pooling_inverse`, and per point through the
grid-sample `inverse`.

Two settings make the run deterministic, as this project's inference is, without changing its maths:
`shuffle_orders` is off in the model and in every pooling layer (the reference re-shuffles the curve
orders on every pooling otherwise), and the input cloud has one point per voxel (see vs_reference.py),
so GridSample's random pick per voxel has one candidate. On CPU, spconv's CUDA build needs four
accommodations (`cpu_spconv`); the conv maths is unchanged.

`--precision bf16 | fp16` runs the forward under torch.autocast, as this project's `precision` does.

    python run_reference.py INPUT.npz CHECKPOINT OUTPUT.npy --warmup 1 --device cpu   (then "frame"/"save" on stdin)
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time

import numpy as np
import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes


def cpu_spconv() -> None:
    """spconv-cu* on CPU tensors: the Native algorithm only, no bias fused into the conv in eval mode
    ("cpu don't support act and bias"; added after), one thread (wrong results with several), and fp32
    features (it has no bf16 kernels: under bf16 autocast its convs run in fp32)."""
    import spconv.pytorch as spconv

    class SubMConv3d(spconv.SubMConv3d):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("algo", spconv.ConvAlgo.Native)
            super().__init__(*args, **kwargs)

        def forward(self, input, add_input=None):
            if input.features.dtype != torch.float32:  # under bf16 autocast: spconv's CPU build has no bf16
                input = input.replace_feature(input.features.float())
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.autocast("cpu", enabled=False):  # its output buffer too
                    out = self._conv_forward(
                        self.training,
                        input,
                        self.weight,
                        None,
                        add_input,
                        name=self.name,
                        sparse_unique_name=self._sparse_unique_name,
                    )
            finally:
                torch.set_num_threads(threads)
            return out if self.bias is None else out.replace_feature(out.features + self.bias)

    spconv.SubMConv3d = SubMConv3d


def build_model(checkpoint: str, device: torch.device):
    from sonata.model import GridPooling, PointTransformerV3

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    accepted = inspect.signature(PointTransformerV3).parameters
    config = {k: v for k, v in ckpt["config"].items() if k in accepted}
    config.update(enc_mode=True, enable_flash=False, upcast_attention=False, upcast_softmax=False)
    config["shuffle_orders"] = False
    model = PointTransformerV3(**config)
    model.load_state_dict(ckpt["state_dict"])  # strict
    for module in model.modules():
        if isinstance(module, GridPooling):
            module.shuffle_orders = False
    return model.to(device).eval()


def frame(
    model, transform, cloud: dict[str, np.ndarray], device: torch.device, precision: torch.dtype | None
) -> tuple[torch.Tensor, int]:
    """(N, C) all-level features per input point, and the number of voxels; `precision`: autocast dtype."""
    point = transform({key: value.copy() for key, value in cloud.items()})
    inverse = point.pop("inverse")
    with torch.inference_mode(), torch.autocast(device.type, dtype=precision, enabled=precision is not None):
        point = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in point.items()}
        point = model(point)
        while "pooling_parent" in point:
            parent = point.pop("pooling_parent")
            parent.feat = torch.cat([parent.feat, point.feat[point.pop("pooling_inverse")]], dim=-1)
            point = parent
        feat = point.feat[inverse.to(device)]
        if device.type == "cuda":
            torch.cuda.synchronize()
    return feat, point.feat.shape[0]


def main() -> None:
    """Load, warm up, print a "ready" line; then one frame per "frame" line on stdin (its time printed),
    and on "save" write the last frame's per-point features. One JSON line answers each request."""
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    args = parser.parse_args()
    precision = PRECISIONS[args.precision]
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cpu":
        cpu_spconv()
    import sonata

    model = build_model(args.checkpoint, device)
    transform = sonata.transform.default()
    cloud = dict(np.load(args.input))
    for _ in range(args.warmup):
        feat, voxels = frame(model, transform, cloud, device, precision)
    reply(
        ready=True,
        parameters=sum(p.numel() for p in model.parameters()),
        torch_threads=torch.get_num_threads(),
        sonata_file=sonata.__file__,
    )
    for request in sys.stdin:
        if request.strip() == "frame":
            start = time.perf_counter()
            feat, voxels = frame(model, transform, cloud, device, precision)
            reply(ms=(time.perf_counter() - start) * 1e3, voxels=voxels)
        elif request.strip() == "save":
            np.save(args.output, feat.float().cpu().numpy())
            reply(saved=args.output)


def reply(**fields) -> None:
    print(json.dumps(fields), flush=True)


if __name__ == "__main__":
    main()
