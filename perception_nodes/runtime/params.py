"""Config dataclasses <-> ROS parameters: declared from the dataclass, never by hand."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_SCALARS = (bool, int, float, str)


def parameter_table(config: Any, prefix: str = "") -> dict[str, tuple[Any, str]]:
    """``{name: (default, description)}`` for every field; tuples/lists become lists, others JSON strings."""
    table: dict[str, tuple[Any, str]] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        help_text = field.metadata.get("help", "")
        if dataclasses.is_dataclass(value):
            table.update(parameter_table(value, f"{prefix}{field.name}."))
            continue
        table[prefix + field.name] = (to_parameter(value), help_text)
    return table


def to_parameter(value: Any) -> Any:
    """A value ROS parameters can hold: scalars, homogeneous lists, else a JSON string."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, _SCALARS) for v in value):
        kinds = {type(v) for v in value}
        if len(kinds) == 1:
            return list(value)
    return json.dumps(value)


def from_parameter(value: Any, default: Any) -> Any:
    """Convert a parameter value back to the type of the dataclass default."""
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, str):
        return str(value)
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(default, tuple):
        return tuple(value)
    return value


def config_from_overrides(
    config: T, declare: Callable[[dict[str, tuple[Any, str]]], dict[str, Any]], prefix: str = ""
) -> T:
    """Apply the values returned by ``declare(parameter_table)`` to a copy of ``config``."""
    table = parameter_table(config, prefix)
    values = declare(table)
    return apply_values(config, {k[len(prefix) :]: v for k, v in values.items()})


def apply_values(config: T, values: dict[str, Any]) -> T:
    """Replace fields of ``config`` (dotted names for nested dataclasses); runs ``__post_init__``."""
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ValueError(f"{type(config).__name__} has no parameter {key!r}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = from_parameter(value, getattr(config, head))
    for head, sub in nested.items():
        changes[head] = apply_values(getattr(config, head), sub)
    return dataclasses.replace(config, **changes) if changes else config
