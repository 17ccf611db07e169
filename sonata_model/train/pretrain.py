"""Sonata self-distillation training loop: one process, or many with torchrun (DDP).

    sonata-pretrain --data frames:/data/extracted --steps 2000 --out runs/lidar
    torchrun --nproc-per-node 8 -m sonata_model.train.pretrain --config run.yaml

Checkpoints (written atomically every `checkpoint_every` steps, the last `keep_checkpoints` kept) hold
the student, the teacher, the heads, the optimiser, the learning-rate schedule, every process's RNG
state and the step: `--resume` continues a run killed at any moment to the same weights as a run that
was never interrupted (the data order is a function of the seed and the step); before the first
checkpoint there is nothing to continue, and it starts at step 0. A NaN / inf loss stops
the run with a message; the last checkpoint written stays the last good one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import atomic_save, load, read_checkpoint, save_encoder
from ..io.sources import SPEC_SYNTAX, SkippingSource, open_source
from .config import RunConfig, load_run_config
from .data import PretrainDataset, make_loader
from .distill import DistillConfig, SonataDistiller, StepValues
from .optim import build_optimizer
from .schedules import CosineSchedule, warmup_then_constant
from .views import ViewConfig

CHECKPOINT_FORMAT = "sonata_ros.pretrain"
METRICS = (
    "step",
    "loss",
    "mask_loss",
    "roll_mask_loss",
    "unmask_loss",
    "lr",
    "weight_decay",
    "momentum",
    "teacher_temp",
    "mask_size",
    "mask_ratio",
    "matched_fraction",
    "masked_fraction",
    "scenes_per_s",
    "skipped_frames",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class Schedules:
    mask_size: CosineSchedule
    mask_ratio: CosineSchedule
    teacher_temp: CosineSchedule
    momentum: CosineSchedule
    weight_decay: CosineSchedule

    @classmethod
    def build(cls, run: RunConfig, d: DistillConfig) -> Schedules:
        total = run.steps
        return cls(
            mask_size=warmup_then_constant(d.mask_size_start, d.mask_size_base, total, d.warmup_ratio),
            mask_ratio=warmup_then_constant(d.mask_ratio_start, d.mask_ratio_base, total, d.warmup_ratio),
            teacher_temp=warmup_then_constant(d.teacher_temp_start, d.teacher_temp_base, total, d.warmup_ratio),
            momentum=CosineSchedule(d.momentum_base, d.momentum_final, total),
            weight_decay=CosineSchedule(run.weight_decay, run.weight_decay_final, total),
        )

    def values(self, step: int) -> StepValues:
        return StepValues(self.mask_size(step), self.mask_ratio(step), self.teacher_temp(step))


def view_config(run: RunConfig) -> ViewConfig:
    """The run's view settings: a preset (lidar | indoor) for the encoder's input, then overrides."""
    encoder = run.encoder_config()
    settings = dict(run.view)
    preset = settings.pop("preset", "lidar")
    base = dict(transform=encoder.transform(), feature_keys=encoder.feature_keys)
    if preset == "lidar":
        config = ViewConfig.lidar(**base)
    elif preset == "indoor":
        config = ViewConfig(**base)
    else:
        raise ValueError(f"view.preset must be lidar or indoor, got {preset!r}")
    return dataclasses.replace(config, **settings)


class Progress:
    """A one-line progress display with rate and ETA (stderr), for a person watching a run."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.began = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.began
        done = step + 1 - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step - 1) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * (step + 1) / self.total)
        print(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {step + 1}/{self.total} {rate:.2f} it/s "
            f"ETA {eta / 60:.1f} min loss {loss:.4f}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; a single process without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    checkpoints = sorted((Path(out) / "checkpoints").glob("step_*.pth"))
    return checkpoints[-1] if checkpoints else None


class Trainer:
    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.rank, self.world, self.device = _distributed()
        self.out = Path(run.out)
        self.encoder_config = run.encoder_config()
        self.distill_config = DistillConfig(**run.distill)
        self.schedules = Schedules.build(run, self.distill_config)
        torch.manual_seed(run.seed)  # identical initial weights on every process
        self.model = SonataDistiller(self.encoder_config, self.distill_config)
        if run.init:  # fine-tuning: student and teacher start from the given encoder
            weights = load(run.init, config=self.encoder_config).state_dict()
            self.model.student["backbone"].load_state_dict(weights)
            self.model.teacher["backbone"].load_state_dict(weights)
        self.model.to(self.device)
        self.optimizer, self.scheduler = build_optimizer(
            self.model.student,
            run.lr,
            run.layer_decay,
            run.weight_decay,
            self.encoder_config.enc_depths,
            run.steps,
            run.warmup_ratio,
        )
        self.ddp = DistributedDataParallel(self.model) if self.world > 1 else None
        self.amp = self.device.type == "cuda" and run.amp in ("auto", "bf16")
        sources = [SkippingSource(open_source(spec)) for spec in run.data]
        self.dataset = PretrainDataset(
            sources,
            view_config(run),
            weights=run.data_weights,
            seed=run.seed,
            samples_per_epoch=run.samples_per_epoch or None,
        )
        self.step = 0
        self.skipped = 0

    # ------------------------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        states = [None] * self.world
        rng = _rng_state(self.device)
        if self.world > 1:
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        path = self.out / "checkpoints" / f"step_{self.step:07d}.pth"
        if self.rank == 0:
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": {
                        "encoder": self.encoder_config.to_dict(),
                        "run": self.run.to_dict(),
                        "distill": dataclasses.asdict(self.distill_config),
                    },
                    "state_dict": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "step": self.step,
                    "skipped_frames": self.skipped,
                    "rng": states,
                },
                path,
            )
            for old in sorted(path.parent.glob("step_*.pth"))[: -self.run.keep_checkpoints]:
                old.unlink()
        if self.world > 1:
            dist.barrier()
        return path

    def resume(self, path: str | os.PathLike) -> None:
        ckpt = read_checkpoint(path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a sonata-pretrain checkpoint")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.skipped = int(ckpt.get("skipped_frames", 0))  # the metrics log goes on counting
        states = ckpt["rng"]
        if len(states) != self.world:
            raise ValueError(
                f"{path} was written by {len(states)} processes; resume with the same number "
                f"(this run has {self.world}) for an exact continuation"
            )
        self._resume_rng = states[self.rank]

    # ------------------------------------------------------------------------------------------ loop

    def train(self) -> Path:
        run = self.run
        loader = make_loader(
            self.dataset,
            run.batch_size,
            run.workers,
            run.seed,
            self.rank,
            self.world,
            start_step=self.step * run.accumulate,
        )
        batches = iter(loader)
        _set_rng_state(self._resume_rng, self.device) if hasattr(self, "_resume_rng") else torch.manual_seed(
            run.seed * 1000 + self.rank + 1
        )
        metrics = MetricsLog(self.out / "metrics.csv", self.step, enabled=self.rank == 0)
        progress = Progress(run.steps, self.step, enabled=self.rank == 0)
        model = self.ddp or self.model
        model.train()
        tick = time.perf_counter()
        while self.step < run.steps:
            values = self.schedules.values(self.step)
            weight_decay = self.schedules.weight_decay(self.step)
            for group in self.optimizer.param_groups:
                group["weight_decay"] = weight_decay
            micro_batches = [next(batches) for _ in range(run.accumulate)]  # the sampler never ends
            self.skipped += sum(b.skipped for b in micro_batches)
            losses = self._optimise(model, micro_batches, values)
            self.model.update_teacher(self.schedules.momentum(self.step))
            self.step += 1
            progress.update(self.step - 1, losses["loss"])
            if self.step % run.log_every == 0 or self.step == run.steps:
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                metrics.write(
                    {
                        **losses,
                        "step": self.step,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "weight_decay": weight_decay,
                        "momentum": self.schedules.momentum(self.step - 1),
                        "teacher_temp": values.teacher_temp,
                        "mask_size": values.mask_size,
                        "mask_ratio": values.mask_ratio,
                        "scenes_per_s": run.log_every * run.batch_size * run.accumulate * self.world / elapsed,
                        "skipped_frames": self.skipped,
                    }
                )
            if self.step % run.checkpoint_every == 0 or self.step == run.steps:
                self.save()
        progress.close()
        return self.export()

    def _optimise(self, model, micro_batches: list, values: StepValues) -> dict[str, float]:
        run = self.run
        totals: dict[str, float] = {}
        for index, micro in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = model(micro.to(self.device, non_blocking=True), values)
                (out["loss"] / len(micro_batches)).backward()
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / len(micro_batches)
        finite = torch.tensor(float(math.isfinite(totals["loss"])), device=self.device)
        if self.world > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise TrainingDiverged(
                f"loss is {totals['loss']} at step {self.step}; stopped. The last checkpoint "
                f"in {self.out / 'checkpoints'} is the last good state (lower lr, check data)"
            )
        torch.nn.utils.clip_grad_norm_(self.model.student.parameters(), run.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:
            for key in totals:
                value = torch.tensor(totals[key], device=self.device)
                dist.all_reduce(value, op=dist.ReduceOp.AVG if self.device.type == "cuda" else dist.ReduceOp.SUM)
                totals[key] = value.item() / (1 if self.device.type == "cuda" else self.world)
        return totals

    def export(self) -> Path:
        """The trained student encoder, in the format sm.load and the node read."""
        path = self.out / "encoder.pth"
        if self.rank == 0:
            save_encoder(
                path,
                self.model.student["backbone"],
                meta={
                    "trained_by": "sonata-pretrain",
                    "steps": self.step,
                    "data": list(self.run.data),
                    "seed": self.run.seed,
                },
                dtype=getattr(torch, self.run.export_dtype),
            )
        return path


class MetricsLog:
    """metrics.csv, one row per logged step; on resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.is_file() and resumed_step > 0:
            with path.open() as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resumed_step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, METRICS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, METRICS, extrasaction="ignore").writerow(
                    {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}
                )


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, RunConfig]:
    """The command line and the run config it makes (defaults <- --config file <- options <- --set)."""
    parser = argparse.ArgumentParser(
        prog="sonata-pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="run config YAML")
    parser.add_argument("--data", action="append", help=f"source spec (repeatable): {SPEC_SYNTAX}")
    parser.add_argument("--encoder", help="encoder config name (demo, sonata_lidar, sonata, ...)")
    parser.add_argument("--domain", help="indoor | outdoor | object: the encoder's input transform (encoder_overrides)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, dotted")
    parser.add_argument(
        "--resume", nargs="?", const="auto", help="checkpoint to continue (default: the latest in --out)"
    )
    args = parser.parse_args(argv)
    run = load_run_config(
        args.config,
        [*([f"encoder_overrides.domain={args.domain}"] if args.domain else []), *args.set],
        data=args.data,
        encoder=args.encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        workers=args.workers,
        seed=args.seed,
        out=args.out,
    )
    return args, run


def main(argv: list[str] | None = None) -> int:
    args, run = parse_args(argv)
    trainer = Trainer(run)
    if args.resume:
        path = latest_checkpoint(run.out) if args.resume == "auto" else Path(args.resume)
        if path is not None:
            trainer.resume(path)
        elif trainer.rank == 0:  # killed before its first checkpoint: nothing to continue, start as it started
            print(f"sonata-pretrain: --resume: no checkpoint in {run.out}/checkpoints yet, starting at step 0")
    try:
        exported = trainer.train()
    except TrainingDiverged as exc:
        print(f"\nsonata-pretrain: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.rank == 0:
        print(f"encoder written to {exported}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
