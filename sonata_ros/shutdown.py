"""SIGINT and SIGTERM (Ctrl-C, systemd, docker stop, ros2 launch on exit) end a node cleanly.

The handlers only record the signal; the node spins in short slices until one arrives. rclpy's default
(a KeyboardInterrupt raised from the handler) can land inside one of rclpy's C++ calls, where pybind11
turns it into an unrelated RuntimeError ("Unable to convert call argument" in take_message, seen under
load) and the node dies with a traceback and exit code 1 instead of shutting down.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.signals import SignalHandlerOptions

SPIN_SLICE_S = 0.1  # the longest a signal waits to be seen


class StopRequest:
    """Set by SIGINT / SIGTERM. The handler only assigns an attribute: no lock, safe at any instant."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame) -> None:
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None


def init_ros(args: list[str] | None) -> StopRequest:
    """rclpy.init without rclpy's own signal handlers, and ours in their place."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return StopRequest()


def spin_until_stopped(executor: Executor, stop: StopRequest, until: Callable[[], bool] = lambda: False) -> None:
    """Spin until a signal arrives, the ROS context is shut down from elsewhere, or `until()` holds."""
    try:
        while not stop and executor.context.ok() and not until():
            executor.spin_once(timeout_sec=SPIN_SLICE_S)
    except ExternalShutdownException:
        pass
