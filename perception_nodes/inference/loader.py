"""Load a model card into an Engine; ``backend="auto"`` picks the best backend that imports and works here.

Order for auto: TensorRT > onnxruntime-CUDA > torch-CUDA > onnxruntime-CPU > torch-CPU. Each candidate is
tried for real (library import, provider present, engine built or loaded); the first that works is used
and one log line says which it is and why each better one was skipped. Card problems (CardError, a missing
weights file) are never skipped over: they raise at load, whatever the backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception_nodes.inference import registry
from perception_nodes.inference.backends.base import Engine
from perception_nodes.inference.cache import EngineCache, atomic_write_bytes, default_cache_dir
from perception_nodes.inference.card import ModelCard, TensorSpec
from perception_nodes.inference.errors import (
    BackendUnavailableError,
    CardError,
    InputError,
    WeightsNotFoundError,
)
from perception_nodes.inference.tensors import sample_inputs

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-trt", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
AUTO_ORDER = (
    ("tensorrt", "cuda"),
    ("onnxruntime", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cpu"),
    ("torch", "cpu"),
)
_FATAL = (CardError, WeightsNotFoundError, InputError)


class ModelSource:
    """Where the torch module (and example inputs for export) come from; built at most once."""

    def __init__(
        self,
        card: ModelCard,
        build: Callable[[], torch.nn.Module] | None = None,
        module: torch.nn.Module | None = None,
        example_inputs: Callable[[], Mapping[str, np.ndarray]] | None = None,
    ):
        self.card = card
        self._build = build
        self._module = module
        self._example_inputs = example_inputs

    def module(self) -> torch.nn.Module:
        if self._module is None:
            build = self._build or registry.get(self.card.name).build
            module = build()
            if self.card.weights:
                load_weights(module, self.card.name, self.card.weights)
            self._module = module.eval()
        return self._module

    def example_inputs(self) -> dict[str, np.ndarray]:
        if self._example_inputs is not None:
            return dict(self._example_inputs())
        return sample_inputs(self.card)


def check_weights(card: ModelCard) -> None:
    if card.weights and not Path(card.weights).is_file():
        raise WeightsNotFoundError(card.name, card.weights)


def load_weights(module: torch.nn.Module, name: str, path: str) -> None:
    """Load a .safetensors state dict strictly; CardError listing missing/unexpected keys otherwise."""
    if not Path(path).is_file():
        raise WeightsNotFoundError(name, path)
    from safetensors.torch import load_file

    state = load_file(path)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CardError(
            f"model '{name}': weights {path} do not fit the module: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )


def card_from_spec(
    spec: registry.ExportSpec, module: torch.nn.Module | None = None, **fields: Any
) -> ModelCard:
    """A card for a registered model; output specs are read off one fp32 forward on the example inputs."""
    inputs = spec.example_inputs()
    module = module if module is not None else spec.build()
    with torch.no_grad():
        raw = module.eval()(*[torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in inputs])
    raw = (raw,) if isinstance(raw, torch.Tensor) else tuple(raw)
    if len(raw) != len(spec.output_names):
        raise CardError(
            f"model '{spec.name}': output_names {spec.output_names} but the module returned {len(raw)}"
        )
    return ModelCard(
        name=spec.name,
        inputs=tuple(TensorSpec.from_array(k, v) for k, v in inputs.items()),
        outputs=tuple(TensorSpec.from_array(n, t) for n, t in zip(spec.output_names, raw, strict=True)),
        config=spec.config,
        **fields,
    )


def onnx_for(card: ModelCard, source: ModelSource, cache_dir: Path, opset: int = 17) -> Path:
    """The card's ONNX file, or one exported to ``cache_dir/onnx``, keyed by card, weights, torch version."""
    if card.onnx:
        if not Path(card.onnx).is_file():
            raise CardError(f"model '{card.name}': ONNX file not found: {card.onnx}")
        return Path(card.onnx)
    from perception_nodes.inference.onnx_export import export_onnx, sha256_file

    ident = {
        "card": card.with_(precision="fp32").to_dict(),
        "weights_sha256": sha256_file(card.weights) if card.weights else None,
        "torch": torch.__version__,
        "opset": opset,
    }
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir / "onnx" / f"{card.name}-{digest}.onnx"
    if not path.is_file():
        export_onnx(source.module(), card, source.example_inputs(), path, opset=opset)
        atomic_write_bytes(path.with_suffix(".json"), card.with_(onnx=path.name).to_json().encode())
    return path


def _candidates(backend: str, device: str) -> list[tuple[str, str]]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if backend == "auto":
        return [c for c in AUTO_ORDER if device in ("auto", c[1])]
    if backend in ("tensorrt", "onnxruntime-trt"):
        if device == "cpu":
            raise ValueError(f"backend {backend} runs on CUDA only")
        return [(backend, "cuda")]
    if device == "auto":
        return [(backend, "cuda"), (backend, "cpu")]
    return [(backend, device)]


def _need_cuda(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("no CUDA device (torch.cuda.is_available() is False)")


def _create(
    backend: str,
    device: str,
    card: ModelCard,
    source: ModelSource,
    cache_dir: Path,
    options: dict[str, Any],
) -> Engine:
    precision = options.get("precision") or card.precision
    if backend == "torch":
        _need_cuda(device)
        from perception_nodes.inference.backends.torch_backend import TorchEngine

        return TorchEngine(
            card,
            source.module(),
            device=device,
            precision=precision,
            cuda_graph=options.get("cuda_graph", False) and device == "cuda",
            channels_last=options.get("channels_last"),
        )
    if backend in ("onnxruntime", "onnxruntime-trt"):
        from perception_nodes.inference.backends.ort_backend import OrtEngine, import_ort

        ort = import_ort()  # fail fast, before exporting
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()})"
            )
        _need_cuda(device)
        provider = "tensorrt" if backend == "onnxruntime-trt" else device
        return OrtEngine(
            card,
            onnx_for(card, source, cache_dir),
            provider=provider,
            precision=precision,
            threads=options.get("threads"),
            trt_cache_dir=cache_dir / "ort-trt",
        )
    if backend == "tensorrt":
        from perception_nodes.inference.backends.trt_backend import TensorRTEngine, import_trt

        import_trt()  # fail fast, before exporting
        _need_cuda(device)
        return TensorRTEngine(
            card, onnx_for(card, source, cache_dir), precision=precision, cache=EngineCache(cache_dir)
        )
    raise ValueError(f"unknown backend {backend!r}")


def load_engine(
    card: ModelCard,
    backend: str = "auto",
    device: str = "auto",
    *,
    build: Callable[[], torch.nn.Module] | None = None,
    module: torch.nn.Module | None = None,
    example_inputs: Callable[[], Mapping[str, np.ndarray]] | None = None,
    cache_dir: str | Path | None = None,
    precision: str | None = None,
    cuda_graph: bool = False,
    channels_last: bool | None = None,
    threads: int | None = None,
) -> Engine:
    """Load ``card`` on ``backend`` ("auto" or one of BACKENDS) and ``device`` ("auto", "cpu", "cuda").

    The torch module comes from ``module``, else ``build()``, else the registry entry named like the card;
    it is only built when a backend needs it (torch, or an ONNX export when the card has no ``onnx``).
    With an explicit backend its errors propagate; with "auto" they are logged reasons to try the next.
    """
    if not isinstance(card, ModelCard):
        raise CardError(f"load_engine takes a ModelCard, got {type(card).__name__}")
    check_weights(card)
    source = ModelSource(card, build=build, module=module, example_inputs=example_inputs)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    options = {
        "precision": precision,
        "cuda_graph": cuda_graph,
        "channels_last": channels_last,
        "threads": threads,
    }
    skipped: list[str] = []
    candidates = _candidates(backend, device)
    for name, dev in candidates:
        try:
            engine = _create(name, dev, card, source, root, options)
        except _FATAL:
            raise
        except Exception as exc:
            if backend != "auto" and (name, dev) == candidates[-1]:
                raise
            skipped.append(f"{name}-{dev} ({type(exc).__name__}: {exc})")
            continue
        why = f"; skipped: {', '.join(skipped)}" if skipped else ""
        log.info(
            "model '%s' runs on %s %s (asked %s/%s)%s",
            card.name,
            engine.label,
            engine.precision,
            backend,
            device,
            why,
        )
        engine.details["skipped"] = skipped
        return engine
    raise BackendUnavailableError(
        f"model '{card.name}': no backend works for {backend}/{device}: {'; '.join(skipped)}"
    )


def load_registered(name: str, backend: str = "auto", device: str = "auto", **options: Any) -> Engine:
    """Load a registered model by name: its card from the registry spec (shapes read off one forward)."""
    spec = registry.get(name)
    module = spec.build()
    card = card_from_spec(spec, module, precision=options.pop("precision", None) or "fp32")
    return load_engine(card, backend, device, module=module, example_inputs=spec.example_inputs, **options)
