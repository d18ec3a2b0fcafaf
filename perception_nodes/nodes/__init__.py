"""Thin ROS-facing nodes. ``NODE_TYPES`` maps a pipeline ``type`` to ``module:Class`` (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

NODE_TYPES: dict[str, str] = {
    "identity": "perception_nodes.nodes.identity:IdentityNode",
    "segmentation": "perception_nodes.nodes.segmentation_node:SegmentationNode",
    "tracking": "perception_nodes.nodes.tracking_node:TrackingNode",
    "forecast": "perception_nodes.nodes.forecast_node:ForecastNode",
}


def node_class(kind: str) -> Any:
    """The node class registered as ``kind``; ValueError naming the known kinds otherwise."""
    if kind not in NODE_TYPES:
        raise ValueError(f"unknown node type {kind!r}; known: {', '.join(sorted(NODE_TYPES))}")
    module, _, cls = NODE_TYPES[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_nodes(runner: Any, pipeline: Any) -> list[Any]:
    """Instantiate every node of ``pipeline`` (runtime.pipeline.Pipeline) on ``runner`` (a ReplayRunner)."""
    return [node_class(spec.type)(runner.bus(spec.name, spec.params)) for spec in pipeline.nodes]
