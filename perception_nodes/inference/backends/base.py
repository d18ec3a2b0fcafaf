"""The Engine interface of every backend: ``run(inputs) -> outputs`` on numpy arrays or torch tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from perception_nodes.inference.card import ModelCard
from perception_nodes.inference.tensors import check_inputs, first_torch_device, to_numpy, to_torch


class Engine:
    """A loaded model on one backend and device.

    ``run`` checks the inputs against the card (names, shapes, dtypes; InputError otherwise) and returns a
    dict of outputs by name in the card's dtypes: numpy arrays for numpy inputs, torch tensors (on the
    device of the inputs) when any input is a torch tensor. Subclasses implement ``_run_torch`` (torch
    tensors on ``self.device``) and/or ``_run_numpy``; the other path is derived by conversion.
    """

    backend = "base"

    def __init__(self, card: ModelCard, device: torch.device, precision: str, **details: Any):
        self.card = card
        self.device = torch.device(device)
        self.precision = precision  # effective precision (may differ from card.precision; see details)
        self.details: dict[str, Any] = details

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.device.type}"

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": str(self.device),
            "precision": self.precision,
            **self.details,
        }

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        as_torch = check_inputs(self.card, inputs)
        ordered = {name: inputs[name] for name in self.card.input_names}
        if as_torch:
            outputs = self._torch_path(ordered)
            device = first_torch_device(ordered)
            return {k: v.to(device) for k, v in outputs.items()}
        return self._numpy_path(ordered)

    def _torch_path(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._has("_run_torch"):
            return self._run_torch(to_torch(inputs, self.device))
        outputs = self._run_numpy(to_numpy(inputs))
        return {k: torch.from_numpy(v) for k, v in outputs.items()}

    def _numpy_path(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._has("_run_numpy"):
            return self._run_numpy(to_numpy(inputs))
        outputs = self._run_torch(to_torch(inputs, self.device))
        return {k: v.detach().cpu().numpy() for k, v in outputs.items()}

    def _has(self, method: str) -> bool:
        return getattr(type(self), method, None) is not getattr(Engine, method, None)

    def _run_torch(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _run_numpy(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release backend resources (sessions, engines, CUDA graphs)."""
