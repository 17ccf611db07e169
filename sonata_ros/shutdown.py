"""SIGTERM (systemd, docker stop, ros2 launch on exit) ends a node the same clean way Ctrl-C does."""

import signal


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
