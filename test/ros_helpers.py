"""Helpers for tests that run ROS 2 nodes in separate processes over real DDS (localhost only)."""

from __future__ import annotations

import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sonata_model as sm

ROOT = Path(__file__).resolve().parents[1]
DISCOVERY_TIMEOUT_S = 60.0
"""DDS discovery between processes: well under a second here, but over 20 s once on a loaded CI machine."""
ROS_ENV = {
    "ROS_DOMAIN_ID": str(random.Random(os.getpid() ^ time.time_ns()).randint(1, 101)),
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "PYTHONUNBUFFERED": "1",
}
os.environ.update(ROS_ENV)  # this test process joins the same isolated domain


class NodeProcess:
    """A `python -m module [args] --ros-args ...` (or `python script.py ...`) child whose output is collected
    line by line; `env` adds environment variables."""

    def __init__(
        self, module: str, ros_args: list[str], env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        env = {**os.environ, **ROS_ENV, **(env or {})}
        command = [str(ROOT / module)] if module.endswith(".py") else ["-m", module]
        self.process = subprocess.Popen(
            [sys.executable, *command, *args, "--ros-args", *ros_args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        for line in list(self.lines):
            if text in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._ended() and self._queue.empty():
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no line containing {text!r} within {timeout} s; output:\n{self.output}")

    def _ended(self) -> bool:
        """Whether the child has exited and all it wrote has been read (its last lines can still be in the
        pipe when it exits)."""
        if self.process.poll() is None:
            return False
        self._reader.join(timeout=10)
        return True

    @property
    def output(self) -> str:
        """Everything the child wrote so far; all of it once it has exited."""
        self._ended()
        return "".join(self.lines)

    def stop(self, sig: int, timeout: float = 20.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def spin_until(node, condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Spin `node` until `condition()` holds; fail naming `what` after `timeout` seconds."""
    import rclpy

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        rclpy.spin_once(node, timeout_sec=0.05)


TEST_CLASSES = 13


def write_test_model(directory: Path) -> tuple[Path, Path]:
    """A tiny LiDAR encoder (coord + strength) and a 13-class head with random, seeded weights."""
    torch.manual_seed(0)
    config = sm.get_config("tiny", in_channels=4, feature_keys=("coord", "strength"), grid_size=0.15, coord_scale=0.2)
    encoder = sm.SonataEncoder(config)
    head = sm.LinearHead(config.head_channels, TEST_CLASSES, label_set="synthetic")
    with torch.no_grad():
        head.seg_head.weight.normal_(0, 1.0)
    return sm.save_encoder(directory / "encoder.pth", encoder), sm.save_head(directory / "head.pth", head)


def node_parameters(encoder: Path, head: Path, **extra) -> list[str]:
    """`-p name:=value` arguments: the test model on CPU, reliable input, fast diagnostics, plus `extra`."""
    values = {
        "checkpoint": encoder,
        "head": head,
        "device": "cpu",
        "input_reliability": "reliable",
        "diagnostics_period_s": 0.2,
        **extra,
    }
    return [arg for name, value in values.items() for arg in ("-p", f"{name}:={value}")]
