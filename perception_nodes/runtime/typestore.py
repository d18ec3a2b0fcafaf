"""rosbags typestore with this project's messages registered straight from ``msgs/msg/*.msg``.

The .msg files are the single source of truth: rosidl builds them on the robot, and this module
registers the very same files with rosbags for replay, bag writing and tests.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

MSG_PACKAGE = "perception_msgs"
_STORES = {"jazzy": Stores.ROS2_JAZZY, "humble": Stores.ROS2_HUMBLE}


def msg_dir() -> Path:
    """Locate ``msgs/msg``: $PERCEPTION_MSGS_DIR, the source tree, or an installed share folder.

    Installed copies: ``share/perception_nodes/msgs/msg`` (setup.py data_files) under the Python prefix or
    a colcon install prefix (found with ament_index when ROS is sourced), or rosidl's
    ``share/perception_msgs/msg``.
    """
    candidates = []
    if env := os.environ.get("PERCEPTION_MSGS_DIR"):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "msgs" / "msg")
    candidates.append(Path(sys.prefix) / "share" / "perception_nodes" / "msgs" / "msg")
    candidates.extend(_ament_share_dirs())
    for path in candidates:
        if path.is_dir() and any(path.glob("*.msg")):
            return path
    raise FileNotFoundError(
        "perception_msgs .msg files not found; looked in " + ", ".join(map(str, candidates))
    )


def _ament_share_dirs() -> list[Path]:
    """Share folders of our packages in a sourced colcon/ROS install (none without ament_index)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return []
    found = []
    for package, sub in (("perception_nodes", "msgs/msg"), (MSG_PACKAGE, "msg")):
        try:
            found.append(Path(get_package_share_directory(package)) / sub)
        except PackageNotFoundError:
            continue
    return found


def custom_types() -> dict[str, Any]:
    """Parsed definitions of every ``perception_msgs/msg/*`` type, keyed by full type name."""
    types: dict[str, Any] = {}
    for path in sorted(msg_dir().glob("*.msg")):
        name = f"{MSG_PACKAGE}/msg/{path.stem}"
        types.update(get_types_from_msg(path.read_text(), name))
    return types


@functools.cache
def typestore(distro: str = "jazzy") -> Typestore:
    """A typestore for ``distro`` (jazzy or humble) with the custom messages registered."""
    if distro not in _STORES:
        raise ValueError(f"unknown ROS distro {distro!r}; expected one of {sorted(_STORES)}")
    store = get_typestore(_STORES[distro])
    store.register(custom_types())
    return store


def default_value(store: Typestore, node: tuple) -> Any:
    """Default for one field definition node (rosbags Nodetype tuples)."""
    kind, spec = node
    if kind.name == "BASE":
        base = spec[0]
        if base == "string" or base == "wstring":
            return ""
        if base == "bool":
            return False
        return 0.0 if base.startswith("float") else 0
    if kind.name == "NAME":
        return make(store, spec)
    import numpy as np

    sub, count = spec
    if sub[0].name == "BASE" and sub[1][0] not in ("string", "wstring", "bool"):
        return np.zeros(count if kind.name == "ARRAY" else 0, dtype=_NUMPY_DTYPES[sub[1][0]])
    return [default_value(store, sub) for _ in range(count if kind.name == "ARRAY" else 0)]


_NUMPY_DTYPES = {
    "int8": "int8",
    "uint8": "uint8",
    "byte": "uint8",
    "char": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "float32": "float32",
    "float64": "float64",
}


def make(store: Typestore, typename: str, **fields: Any) -> Any:
    """Build a rosbags message of ``typename``; fields not given get ROS defaults (zeros, empty)."""
    cls = store.types[typename]
    _, fielddefs = store.fielddefs[typename]
    unknown = set(fields) - {name for name, _ in fielddefs}
    if unknown:
        raise TypeError(f"{typename} has no field(s) {sorted(unknown)}")
    values = {
        name: fields[name] if name in fields else default_value(store, node) for name, node in fielddefs
    }
    return cls(**values)
