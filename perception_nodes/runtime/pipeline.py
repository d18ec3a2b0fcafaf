"""Pipeline files: which nodes a replay runs, with their parameters (YAML, read with ``yaml.safe_load``).

nodes:
  - type: identity            # a key of perception_nodes.nodes.NODE_TYPES
    name: identity            # node name (defaults to type)
    params: {output_topic: /perception/identity/image}
passthrough: [/camera/color/camera_info]   # input topics copied into the output bag
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    type: str
    name: str
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Pipeline:
    nodes: tuple[NodeSpec, ...]
    passthrough: tuple[str, ...] = ()


def load_pipeline(path: str | Path) -> Pipeline:
    """Parse a pipeline YAML file; ValueError with the file name on any schema problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read pipeline {path}: {exc}") from exc
    return parse_pipeline(data, str(path))


def parse_pipeline(data: Any, source: str = "<pipeline>") -> Pipeline:
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise ValueError(f"{source}: expected a mapping with a non-empty 'nodes' list")
    unknown = set(data) - {"nodes", "passthrough"}
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {sorted(unknown)}")
    specs = []
    for i, item in enumerate(data["nodes"]):
        if not isinstance(item, dict) or "type" not in item:
            raise ValueError(f"{source}: node #{i} needs a 'type'")
        extra = set(item) - {"type", "name", "params"}
        if extra:
            raise ValueError(f"{source}: node #{i} has unknown key(s) {sorted(extra)}")
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"{source}: node #{i} 'params' must be a mapping")
        specs.append(NodeSpec(str(item["type"]), str(item.get("name", item["type"])), params))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: node names must be unique, got {names}")
    passthrough = data.get("passthrough") or []
    if not isinstance(passthrough, list) or not all(isinstance(t, str) for t in passthrough):
        raise ValueError(f"{source}: 'passthrough' must be a list of topic names")
    return Pipeline(tuple(specs), tuple(passthrough))
