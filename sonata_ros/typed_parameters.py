"""Declaring and reading ROS parameters as people write them: `max_range: 50` for a decimal parameter.

rclpy refuses an integer override of a float parameter with a traceback at declaration. A decimal
parameter (a float, or a list of floats) is therefore declared with dynamic typing, and its value is
checked and converted when read: whole numbers become floats, anything else is a ValueError naming the
parameter. Used by the perception node and the simulated LiDAR.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter


def declare(node: Node, name: str, default: Any, description: str, read_only: bool = True) -> None:
    """Declare `name` on `node` (once). An empty list has no type of its own, in ROS nor in YAML: it is
    declared as an unset string array, which `value` reads as []."""
    if node.has_parameter(name):
        return
    descriptor = ParameterDescriptor(description=description, read_only=read_only, dynamic_typing=_decimal(default))
    node.declare_parameter(name, Parameter.Type.STRING_ARRAY if default == [] else default, descriptor)


def value(node: Node, name: str, default: Any) -> Any:
    """The value of `name` (declared with `default`): whole numbers as floats where `default` is decimal."""
    given = node.get_parameter_or(name, Parameter(name, value=[])).value
    if not _decimal(default):
        return given
    listed = isinstance(default, list)
    sequence = isinstance(given, Sequence) and not isinstance(given, str)  # a list, or rclpy's array.array
    numbers = list(given) if sequence else [given]
    if listed != sequence or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
        raise ValueError(f"parameter {name} must be {'a list of numbers' if listed else 'a number'}, got {given!r}")
    return [float(v) for v in numbers] if listed else float(given)


def _decimal(default: Any) -> bool:
    """A float, or a non-empty list of floats (extrinsics, a crop box, a pose)."""
    values = default if isinstance(default, list) and default else [default]
    return all(isinstance(v, float) for v in values)
