"""Model cards: what a model takes and gives (names, static shapes, dtypes), config, weights, precision.

A card validates when it is built (``__post_init__``) so a bad card fails at load time, never on the first
frame. Cards are plain data (no torch): they are written as JSON next to every ONNX export.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes.inference.errors import CardError

# dtype names as numpy spells them; TensorRT 10 takes all of these as network I/O types.
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")
# fp32: plain; fp16/bf16: reduced precision inside the engine, I/O stays in the card's dtypes.
PRECISIONS = ("fp32", "fp16", "bf16")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output tensor with a static shape."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise CardError(f"tensor name must be an identifier-like string, got {self.name!r}")
        try:
            shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise CardError(
                f"tensor '{self.name}': shape must be a sequence of ints, got {self.shape!r}"
            ) from None
        if any(d <= 0 for d in shape) or any(not _is_int(d) for d in self.shape):
            raise CardError(
                f"tensor '{self.name}': shape must be static with positive ints, got {tuple(self.shape)}"
            )
        object.__setattr__(self, "shape", shape)
        dtype = _dtype_name(self.dtype)
        if dtype not in DTYPES:
            raise CardError(f"tensor '{self.name}': dtype {self.dtype!r} is not one of {DTYPES}")
        object.__setattr__(self, "dtype", dtype)

    def describe(self) -> str:
        return f"{self.shape} {self.dtype}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_array(cls, name: str, array: Any) -> TensorSpec:
        """Spec of a numpy array or torch tensor (dtype taken from the array)."""
        return cls(name, tuple(array.shape), _dtype_name(array.dtype))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _dtype_name(dtype: Any) -> str:
    """'float32' for np.float32, np.dtype('float32'), torch.float32 or 'float32'."""
    text = str(dtype)
    if text.startswith("torch."):
        text = text[len("torch.") :]
    try:
        return np.dtype(text).name
    except TypeError:
        return text


def _config_to_dict(config: Any) -> dict[str, Any] | None:
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise CardError(f"config must be a dataclass instance or a dict, got {type(config).__name__}")
    try:
        json.dumps(data, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CardError(f"config is not JSON-serialisable: {exc}") from exc
    return data


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything the inference layer needs to know about one model, validated on construction.

    ``config`` is the model's config dataclass (or its dict form); ``weights`` an optional ``.safetensors``
    file loaded into the torch module (strict); ``onnx`` an optional exported graph (else the loader exports
    one into the cache). ``precision`` is a request: backends that cannot honour it run fp32 and say so.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config: Any = None
    weights: str | None = None
    precision: str = "fp32"
    onnx: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not _MODEL_RE.match(self.name):
            raise CardError(f"model name must match {_MODEL_RE.pattern}, got {self.name!r}")
        object.__setattr__(self, "inputs", self._specs("inputs", self.inputs))
        object.__setattr__(self, "outputs", self._specs("outputs", self.outputs))
        names = [s.name for s in self.inputs + self.outputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise CardError(f"model '{self.name}': tensor names must be unique, repeated: {duplicates}")
        if self.precision not in PRECISIONS:
            raise CardError(f"model '{self.name}': precision {self.precision!r} is not one of {PRECISIONS}")
        for field in ("weights", "onnx"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, str(value))
        if self.weights is not None and not self.weights.endswith(".safetensors"):
            raise CardError(f"model '{self.name}': weights must be a .safetensors file, got {self.weights}")
        if self.onnx is not None and not self.onnx.endswith(".onnx"):
            raise CardError(f"model '{self.name}': onnx must be a .onnx file, got {self.onnx}")
        _config_to_dict(self.config)

    def _specs(self, field: str, value: Any) -> tuple[TensorSpec, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
            raise CardError(f"model '{self.name}': {field} must be a non-empty list of tensor specs")
        specs = []
        for item in value:
            if isinstance(item, Mapping):
                unknown = set(item) - {"name", "shape", "dtype"}
                if unknown or "name" not in item or "shape" not in item:
                    got = dict(item)
                    raise CardError(
                        f"model '{self.name}': each of {field} needs name, shape (and dtype), got {got}"
                    )
                item = TensorSpec(**item)
            if not isinstance(item, TensorSpec):
                raise CardError(f"model '{self.name}': {field} entries must be TensorSpec, got {item!r}")
            specs.append(item)
        return tuple(specs)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def with_(self, **changes: Any) -> ModelCard:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "config": _config_to_dict(self.config),
            "weights": self.weights,
            "precision": self.precision,
            "onnx": self.onnx,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        if not isinstance(data, Mapping):
            raise CardError(f"a model card must be a JSON object, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - {"extra"})
        if unknown:
            raise CardError(f"model card has unknown fields {unknown}; known: {sorted(fields)}")
        missing = sorted({"name", "inputs", "outputs"} - set(data))
        if missing:
            raise CardError(f"model card is missing required fields {missing}")
        return cls(**{k: v for k, v in data.items() if k in fields})

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read a card JSON; relative weights/onnx paths are resolved against the card's folder."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CardError(f"model card not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise CardError(f"model card {path} is not valid JSON: {exc}") from exc
        for field in ("weights", "onnx"):
            if isinstance(data, dict) and data.get(field) and not Path(data[field]).is_absolute():
                data[field] = str(path.parent / data[field])
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_arrays(
        cls,
        name: str,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        **fields: Any,
    ) -> ModelCard:
        """A card whose tensor specs are read off example arrays (numpy or torch)."""
        return cls(
            name=name,
            inputs=tuple(TensorSpec.from_array(k, v) for k, v in inputs.items()),
            outputs=tuple(TensorSpec.from_array(k, v) for k, v in outputs.items()),
            **fields,
        )
