"""Input checks and numpy/torch conversions shared by every backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from perception_nodes.inference.card import ModelCard, TensorSpec, _dtype_name
from perception_nodes.inference.errors import InputError

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def torch_dtype(name: str) -> torch.dtype:
    return TORCH_DTYPES[name]


def check_inputs(card: ModelCard, inputs: Mapping[str, Any]) -> bool:
    """InputError unless ``inputs`` match the card exactly; True when any input is a torch tensor."""
    if not isinstance(inputs, Mapping):
        raise InputError(
            f"model '{card.name}': run() takes a dict of inputs by name {card.input_names}, "
            f"got {type(inputs).__name__}"
        )
    missing = [n for n in card.input_names if n not in inputs]
    extra = [n for n in inputs if n not in card.input_names]
    if missing or extra:
        raise InputError(
            f"model '{card.name}': inputs must be exactly {card.input_names}; "
            f"missing {missing}, unexpected {extra}"
        )
    any_torch = False
    for spec in card.inputs:
        value = inputs[spec.name]
        if isinstance(value, torch.Tensor):
            any_torch = True
        elif not isinstance(value, np.ndarray):
            raise InputError(
                f"model '{card.name}' input '{spec.name}': expected a numpy array or torch tensor of "
                f"{spec.describe()}, got {type(value).__name__}"
            )
        _check_one(card.name, spec, value)
    return any_torch


def _check_one(model: str, spec: TensorSpec, value: Any) -> None:
    shape = tuple(value.shape)
    dtype = _dtype_name(value.dtype)
    if shape != spec.shape or dtype != spec.dtype:
        raise InputError(
            f"model '{model}' input '{spec.name}': expected shape {spec.shape} dtype {spec.dtype}, "
            f"got shape {shape} dtype {dtype}"
        )


def to_torch(inputs: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Inputs as torch tensors on ``device`` (numpy arrays are copied, tensors moved only if needed)."""
    out = {}
    for name, value in inputs.items():
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        out[name] = tensor.to(device, non_blocking=True)
    return out


def to_numpy(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        out[name] = np.ascontiguousarray(value)
    return out


def first_torch_device(inputs: Mapping[str, Any]) -> torch.device:
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def sample_inputs(card: ModelCard, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs matching the card: N(0,1) floats, random bytes for uint8, zeros otherwise."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in card.inputs:
        if spec.dtype in ("float32", "float16"):
            out[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        elif spec.dtype == "uint8":
            out[spec.name] = rng.integers(0, 256, spec.shape, dtype=np.uint8)
        else:
            out[spec.name] = np.zeros(spec.shape, dtype=spec.dtype)
    return out
