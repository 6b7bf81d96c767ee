"""The caption node's ROS parameters: declared from clip_vlm_core's table, each keeping its declared type.

`ros2 param set /caption_node rate_hz 3` sends an integer (ros2 param reads the text as YAML), and so
does `-p rate_hz:=3` at start-up. rclpy refuses a value of another type than the declared one, unless
the parameter is declared with dynamic_typing, and then the integer replaces the float for good (`ros2
param get` answers "Integer value is: 3", a dump writes 3). A set-parameters callback can only accept or
refuse a value, not change it; Iron and later add a pre-set callback that can, Humble has none. So whole
numbers given for float parameters become floats where every distro allows it: in the start-up
overrides, read before declaring, and in `Node.set_parameters_atomically`, which the parameter services
(`ros2 param set`, `ros2 param load`) call on Humble, Jazzy and Rolling alike.
"""

from __future__ import annotations

import dataclasses

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from clip_vlm_core.errors import UserError
from clip_vlm_core.stream import PARAMETERS, CaptionNodeConfig, validate_parameters
from clip_vlm_core.stream.config import SPECS, ParameterSpec


def declare_parameters(node: Node) -> CaptionNodeConfig:
    """Declare every parameter with the value its override (params file, -p) gives, checked first.

    The overrides are checked by `validate_parameters` before anything is declared, so a wrong value is
    refused in one sentence naming it, not by rclpy's exception about descriptors.
    """
    # rclpy keeps the start-up overrides in this attribute on every distro, and offers no public getter.
    overrides = getattr(node, "_parameter_overrides", {})
    given = {spec.name: overrides[spec.name].value for spec in PARAMETERS if spec.name in overrides}
    config = validate_parameters(given)
    values = dataclasses.asdict(config)
    for spec in PARAMETERS:
        value = list(values[spec.name]) if isinstance(spec.default, list) else values[spec.name]
        node.declare_parameter(spec.name, value, descriptor(spec), ignore_override=True)
    return config


def as_declared_types(parameter_list: list[Parameter]) -> list[Parameter]:
    """The same parameters, with an integer given for a float parameter turned into that float."""
    out = []
    for parameter in parameter_list:
        spec = SPECS.get(parameter.name)
        if spec is not None and _is_float(spec) and parameter.type_ == Parameter.Type.INTEGER:
            parameter = Parameter(parameter.name, Parameter.Type.DOUBLE, float(parameter.value))
        out.append(parameter)
    return out


def refusal(parameter_list: list[Parameter]) -> str | None:
    """One sentence naming the first value of the wrong kind or out of range, else None.

    Checked before rclpy's own checks, whose words would be "Wrong parameter type, expected '3' got '4'".
    """
    for parameter in parameter_list:
        if parameter.name in SPECS:
            try:
                validate_parameters({parameter.name: parameter.value})
            except UserError as exc:
                return str(exc)
    return None


def descriptor(spec: ParameterSpec) -> ParameterDescriptor:
    """What `ros2 param describe` shows: the description, read-only, the range or the choices."""
    result = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        result.additional_constraints = f"one of {list(spec.choices)}"
    if spec.low is not None and _is_float(spec):
        result.floating_point_range = [FloatingPointRange(from_value=spec.low, to_value=spec.high, step=0.0)]
    elif spec.low is not None and isinstance(spec.default, int):
        result.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return result


def _is_float(spec: ParameterSpec) -> bool:
    return isinstance(spec.default, float)
