"""One inference layer for every model of the stack: torch eager, onnxruntime and TensorRT behind one Engine.

    card = ModelCard(name=..., inputs=(TensorSpec("image", (1, 3, 256, 256), "uint8"),), outputs=(...))
    engine = load_engine(card, backend="auto", device="auto", build=make_module)
    outputs = engine.run({"image": array})   # numpy in -> numpy out; torch in -> torch out

The layer knows no model and no ROS: capabilities register their networks in ``<capability>/export.py``
(``EXPORTS: list[ExportSpec]``, see ``registry``). Importing this package imports numpy only; torch and the
backends load on first use of ``load_engine``/``Engine``.
"""

from __future__ import annotations

from typing import Any

from perception_nodes.inference.card import DTYPES, PRECISIONS, ModelCard, TensorSpec
from perception_nodes.inference.errors import (
    BackendUnavailableError,
    CardError,
    ExportError,
    InferenceError,
    InputError,
    RegistryError,
    WeightsNotFoundError,
)
from perception_nodes.inference.registry import ExportSpec

_LAZY = {
    "Engine": "perception_nodes.inference.backends.base",
    "load_engine": "perception_nodes.inference.loader",
    "load_registered": "perception_nodes.inference.loader",
    "card_from_spec": "perception_nodes.inference.loader",
    "export_onnx": "perception_nodes.inference.onnx_export",
    "check_onnx": "perception_nodes.inference.onnx_export",
    "EngineCache": "perception_nodes.inference.cache",
    "EngineKey": "perception_nodes.inference.cache",
}

__all__ = [
    "DTYPES",
    "PRECISIONS",
    "BackendUnavailableError",
    "CardError",
    "ExportError",
    "ExportSpec",
    "InferenceError",
    "InputError",
    "ModelCard",
    "RegistryError",
    "TensorSpec",
    "WeightsNotFoundError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'perception_nodes.inference' has no attribute {name!r}")
