"""Native TensorRT backend, written against the TensorRT 10 Python API and kept thin.

Build: ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only mode in TensorRT 10) ->
``trt.OnnxParser.parse`` -> builder config (workspace pool limit, FP16/BF16 flag, a timing cache loaded from
and saved back to the cache folder) -> ``build_serialized_network``. The serialized engine goes through
``EngineCache`` (key: TensorRT version, GPU name and compute capability, ONNX sha256, precision, input
shapes). Run: ``trt.Runtime.deserialize_cuda_engine`` -> one execution context; I/O bound by tensor name
with ``set_tensor_address`` on torch tensors; ``execute_async_v3`` on the current torch CUDA stream.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception_nodes.inference.backends.base import Engine
from perception_nodes.inference.cache import EngineCache, EngineKey, atomic_write_bytes
from perception_nodes.inference.card import ModelCard
from perception_nodes.inference.errors import BackendUnavailableError, CardError, InferenceError
from perception_nodes.inference.onnx_export import sha256_file

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = 4 << 30


def import_trt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"tensorrt is not importable ({exc})") from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailableError(f"tensorrt {trt.__version__} is older than 10 (this backend needs 10)")
    return trt


class _Logger:
    """One TensorRT logger per process (TensorRT keeps a reference to the first one it sees)."""

    instance = None

    @classmethod
    def get(cls, trt: Any) -> Any:
        if cls.instance is None:
            cls.instance = trt.Logger(trt.Logger.WARNING)
        return cls.instance


def engine_key(
    trt: Any, onnx_path: str | Path, card: ModelCard, precision: str, device: torch.device
) -> EngineKey:
    major, minor = torch.cuda.get_device_capability(device)
    return EngineKey(
        trt_version=trt.__version__,
        gpu_name=torch.cuda.get_device_name(device),
        compute_capability=f"{major}.{minor}",
        onnx_sha256=sha256_file(onnx_path),
        precision=precision,
        input_shapes=tuple((s.name, s.shape) for s in card.inputs),
    )


def _timing_cache_path(cache: EngineCache, key: EngineKey) -> Path:
    gpu = re.sub(r"[^A-Za-z0-9_.-]+", "_", key.gpu_name)
    return cache.root / f"timing-trt{key.trt_version}-{gpu}-sm{key.compute_capability}.cache"


def build_serialized(
    trt: Any, onnx_path: str | Path, precision: str, timing_path: Path, workspace: int
) -> bytes:
    """Parse the ONNX file and build a serialized engine (bytes); the timing cache is reused and updated."""
    logger = _Logger.get(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise InferenceError(f"TensorRT could not parse {onnx_path}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    previous = timing_path.read_bytes() if timing_path.exists() else b""
    try:
        timing = config.create_timing_cache(previous)
    except Exception as exc:  # a corrupt timing cache only costs build time
        log.warning("TensorRT timing cache %s unusable (%s); starting an empty one", timing_path, exc)
        timing = config.create_timing_cache(b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InferenceError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log)")
    atomic_write_bytes(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class TensorRTEngine(Engine):
    """A TensorRT engine from the cache (built on first use) running on torch tensors and torch's stream."""

    backend = "tensorrt"

    def __init__(
        self,
        card: ModelCard,
        onnx_path: str | Path,
        precision: str | None = None,
        cache: EngineCache | None = None,
        device: str | torch.device = "cuda",
        workspace: int = DEFAULT_WORKSPACE,
        copy_outputs: bool = True,
    ):
        trt = import_trt()
        if not torch.cuda.is_available():
            raise BackendUnavailableError("TensorRT needs a CUDA device (torch.cuda.is_available() is False)")
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        precision = precision or card.precision
        cache = cache or EngineCache()
        key = engine_key(trt, onnx_path, card, precision, device)
        timing_path = _timing_cache_path(cache, key)
        self._trt = trt
        self._runtime = trt.Runtime(_Logger.get(trt))
        with torch.cuda.device(device):  # TensorRT works on the current CUDA device
            result = cache.load_or_build(
                key,
                build=lambda: build_serialized(trt, onnx_path, precision, timing_path, workspace),
                deserialize=self._runtime.deserialize_cuda_engine,
                label=card.name,
            )
            super().__init__(card, device, precision, engine=str(result.path), cache=result.status)
            if result.reason:
                self.details["cache_reason"] = result.reason
            self.engine = result.value
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise InferenceError(f"TensorRT could not create an execution context for {result.path}")
            self.copy_outputs = copy_outputs
            self._outputs = self._bind()

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        with torch.cuda.device(self.device):
            return super().run(inputs)

    def _bind(self) -> dict[str, torch.Tensor]:
        """Check the engine's I/O tensors against the card; allocate static outputs and bind them by name."""
        trt = self._trt
        io = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name
            io[name] = (is_input, tuple(self.engine.get_tensor_shape(name)), dtype)
        expected = {s.name: (True, s.shape, s.dtype) for s in self.card.inputs}
        expected.update({s.name: (False, s.shape, s.dtype) for s in self.card.outputs})
        if io != expected:
            raise CardError(
                f"model '{self.card.name}': the TensorRT engine I/O is {io}, the card says {expected}"
            )
        outputs = {}
        for spec in self.card.outputs:
            tensor = torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device=self.device)
            self.context.set_tensor_address(spec.name, tensor.data_ptr())
            outputs[spec.name] = tensor
        return outputs

    def _run_torch(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        held = []
        for spec in self.card.inputs:
            tensor = inputs[spec.name].contiguous()
            held.append(tensor)
            self.context.set_tensor_address(spec.name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise InferenceError(f"TensorRT execute_async_v3 failed for model '{self.card.name}'")
        if self.copy_outputs:
            return {k: v.clone() for k, v in self._outputs.items()}
        return dict(self._outputs)

    def close(self) -> None:
        self.context = None
        self.engine = None
