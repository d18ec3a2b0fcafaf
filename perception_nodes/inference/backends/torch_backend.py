"""Torch eager backend: CPU or CUDA; on CUDA fp16/bf16 autocast, channels_last, optional CUDA graphs."""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any

import torch

from perception_nodes.inference.backends.base import Engine
from perception_nodes.inference.card import ModelCard
from perception_nodes.inference.errors import BackendUnavailableError, CardError
from perception_nodes.inference.tensors import sample_inputs, to_torch, torch_dtype

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_forward_arity(card: ModelCard, module: torch.nn.Module) -> None:
    """CardError unless module.forward takes exactly the card's inputs positionally."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    n = len(card.inputs)
    if not len(required) <= n <= len(positional):
        raise CardError(
            f"model '{card.name}': the card has {n} inputs {card.input_names} but "
            f"{type(module).__name__}.forward takes {[p.name for p in positional]}"
        )


def _has_conv2d(module: torch.nn.Module) -> bool:
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in module.modules())


class TorchEngine(Engine):
    """Runs the torch module itself.

    precision: fp32, or fp16/bf16 through autocast (I/O stays in the card's dtypes). fp16 on CPU is not
    useful and runs fp32 (recorded in ``details``). channels_last (None = on for CUDA models with 2-D
    convolutions) converts the module and 4-D float inputs. cuda_graph captures one static-shape graph at
    load and replays it per run (inputs copied into static buffers; outputs cloned unless copy_outputs=False).
    """

    backend = "torch"

    def __init__(
        self,
        card: ModelCard,
        module: torch.nn.Module,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        cuda_graph: bool = False,
        channels_last: bool | None = None,
        verify: bool = True,
        copy_outputs: bool = True,
    ):
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch reports no CUDA device (torch.cuda.is_available() is False)")
        requested = precision or card.precision
        effective = requested
        notes = {}
        if device.type == "cpu" and requested == "fp16":
            effective = "fp32"
            notes["precision_note"] = "fp16 requested; torch on CPU runs fp32"
        if cuda_graph and device.type != "cuda":
            raise BackendUnavailableError("CUDA graphs need a CUDA device")
        if channels_last is None:
            channels_last = device.type == "cuda" and _has_conv2d(module)
        super().__init__(card, device, effective, cuda_graph=cuda_graph, channels_last=channels_last, **notes)
        check_forward_arity(card, module)
        self.module = module.eval().to(device)
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.copy_outputs = copy_outputs
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: list[torch.Tensor] = []
        self._static_out: dict[str, torch.Tensor] = {}
        if verify or cuda_graph:
            self._verify()
        if cuda_graph:
            self._capture()

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision], cache_enabled=False)

    def _prepare(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        args = [inputs[name] for name in self.card.input_names]
        if self.details["channels_last"]:
            args = [
                a.contiguous(memory_format=torch.channels_last)
                if a.dim() == 4 and a.is_floating_point()
                else a
                for a in args
            ]
        return args

    def _forward(self, args: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._autocast():
            raw = self.module(*args)
        return self._name_outputs(raw)

    def _name_outputs(self, raw: Any) -> dict[str, torch.Tensor]:
        names = self.card.output_names
        if isinstance(raw, torch.Tensor):
            raw = (raw,)
        if isinstance(raw, dict):
            raw = tuple(raw[n] for n in names if n in raw)
        if not isinstance(raw, (tuple, list)) or len(raw) != len(names):
            got = len(raw) if isinstance(raw, (tuple, list)) else type(raw).__name__
            raise CardError(
                f"model '{self.card.name}': the card lists outputs {names}, the module returned {got}"
            )
        return dict(zip(names, raw, strict=True))

    def _finish(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        done = {}
        for spec in self.card.outputs:
            tensor = outputs[spec.name].to(torch_dtype(spec.dtype))
            done[spec.name] = tensor.contiguous()
        return done

    def _verify(self) -> None:
        """Run once on sample inputs at load and compare the outputs with the card (CardError if not)."""
        args = self._prepare(to_torch(sample_inputs(self.card), self.device))
        with torch.no_grad():
            outputs = self._forward(args)
        for spec in self.card.outputs:
            tensor = outputs[spec.name]
            if tuple(tensor.shape) != spec.shape:
                raise CardError(
                    f"model '{self.card.name}' output '{spec.name}': the card says shape {spec.shape}, "
                    f"the module gives {tuple(tensor.shape)}"
                )
            if tensor.is_floating_point() != (spec.dtype in ("float32", "float16")):
                raise CardError(
                    f"model '{self.card.name}' output '{spec.name}': the card says dtype {spec.dtype}, "
                    f"the module gives {str(tensor.dtype).replace('torch.', '')}"
                )

    def _capture(self) -> None:
        self._static_in = [a.clone() for a in self._prepare(to_torch(sample_inputs(self.card), self.device))]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(3):  # warm-up: cudnn autotuning and lazy inits must happen outside capture
                self._forward(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._static_out = self._finish(self._forward(self._static_in))  # casts captured too
        self._graph = graph
        log.debug("model '%s': captured a CUDA graph", self.card.name)

    def _run_torch(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            if self._graph is None:
                return self._finish(self._forward(self._prepare(inputs)))
            for static, name in zip(self._static_in, self.card.input_names, strict=True):
                static.copy_(inputs[name])
            self._graph.replay()
            if self.copy_outputs:
                return {k: v.clone() for k, v in self._static_out.items()}
            return dict(self._static_out)

    def close(self) -> None:
        self._graph = None
        self._static_in = []
        self._static_out = {}
