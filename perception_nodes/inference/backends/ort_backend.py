"""onnxruntime backend: CPU execution provider, CUDA and TensorRT execution providers when present."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception_nodes.inference.backends.base import Engine
from perception_nodes.inference.card import ModelCard
from perception_nodes.inference.errors import BackendUnavailableError, CardError
from perception_nodes.inference.tensors import torch_dtype

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def import_ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f"onnxruntime is not importable ({exc})") from exc
    return onnxruntime


def check_session_io(card: ModelCard, session: Any) -> None:
    """CardError unless the session's inputs/outputs are the card's, in order, with the same shapes/dtypes."""
    for kind, args, specs in (
        ("input", session.get_inputs(), card.inputs),
        ("output", session.get_outputs(), card.outputs),
    ):
        names = [a.name for a in args]
        if names != [s.name for s in specs]:
            expected = [s.name for s in specs]
            raise CardError(
                f"model '{card.name}': the ONNX graph {kind}s are {names}, the card says {expected}"
            )
        for arg, spec in zip(args, specs, strict=True):
            shape = tuple(arg.shape)
            dtype = _ORT_TYPES.get(arg.type, arg.type)
            if shape != spec.shape or dtype != spec.dtype:
                raise CardError(
                    f"model '{card.name}' {kind} '{spec.name}': the ONNX graph has {shape} {dtype}, "
                    f"the card says {spec.shape} {spec.dtype}"
                )


class OrtEngine(Engine):
    """An onnxruntime InferenceSession on one execution provider (verified to be the one actually used).

    provider: "cpu", "cuda" or "tensorrt" (the ORT TensorRT EP, fp16 when precision is fp16, its engine
    and timing caches under ``trt_cache_dir``). The CPU and CUDA providers run the fp32 graph whatever the
    requested precision (recorded in ``details``). With torch CUDA inputs on the CUDA provider the
    inputs and outputs are bound on the GPU (IO binding), so no host copies are made.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        card: ModelCard,
        onnx_path: str | Path,
        provider: str = "cpu",
        precision: str | None = None,
        threads: int | None = None,
        trt_cache_dir: str | Path | None = None,
    ):
        ort = import_ort()
        if provider not in PROVIDERS:
            raise BackendUnavailableError(f"no onnxruntime provider {provider!r}; one of {list(PROVIDERS)}")
        name = PROVIDERS[provider]
        available = ort.get_available_providers()
        if name not in available:
            raise BackendUnavailableError(f"onnxruntime has no {name} (available: {available})")
        requested = precision or card.precision
        effective = requested if provider == "tensorrt" and requested == "fp16" else "fp32"
        notes = (
            {} if effective == requested else {"precision_note": f"{requested} requested; {name} runs fp32"}
        )
        device = torch.device("cuda" if provider != "cpu" else "cpu")
        super().__init__(card, device, effective, provider=name, onnx=str(onnx_path), **notes)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.log_severity_level = 3
        providers: list[Any] = [self._provider_entry(name, effective, trt_cache_dir)]
        if provider != "cpu":
            providers.append("CPUExecutionProvider")  # for the few nodes a GPU provider does not take
        self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        used = self.session.get_providers()
        if not used or used[0] != name:
            raise BackendUnavailableError(f"onnxruntime did not enable {name} (session providers: {used})")
        check_session_io(card, self.session)
        self._out_names = card.output_names

    @staticmethod
    def _provider_entry(name: str, precision: str, trt_cache_dir: str | Path | None) -> Any:
        if name != "TensorrtExecutionProvider":
            return name
        options: dict[str, Any] = {"trt_fp16_enable": precision == "fp16"}
        if trt_cache_dir is not None:
            Path(trt_cache_dir).mkdir(parents=True, exist_ok=True)
            options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(trt_cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(trt_cache_dir),
            )
        return (name, options)

    def _run_numpy(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._out_names, inputs)
        return dict(zip(self._out_names, results, strict=True))

    def _run_torch(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type != "cuda":
            results = self._run_numpy({k: v.detach().cpu().numpy() for k, v in inputs.items()})
            return {k: torch.from_numpy(v) for k, v in results.items()}
        return self._run_bound(inputs)

    def _run_bound(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """IO binding: torch tensors on the engine's device are read and written in place by onnxruntime."""
        binding = self.session.io_binding()
        kind = self.device.type
        index = self.device.index if self.device.index is not None else 0
        if kind == "cuda" and self.device.index is None:
            index = torch.cuda.current_device()
        for spec in self.card.inputs:
            tensor = inputs[spec.name].contiguous()
            inputs[spec.name] = tensor  # keep alive until the run ends
            element = np.dtype(spec.dtype).type
            binding.bind_input(spec.name, kind, index, element, spec.shape, tensor.data_ptr())
        outputs = {}
        for spec in self.card.outputs:
            out = torch.empty(spec.shape, dtype=torch_dtype(spec.dtype), device=self.device)
            element = np.dtype(spec.dtype).type
            binding.bind_output(spec.name, kind, index, element, spec.shape, out.data_ptr())
            outputs[spec.name] = out
        if kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch are complete
        self.session.run_with_iobinding(binding)
        return outputs

    def close(self) -> None:
        self.session = None
