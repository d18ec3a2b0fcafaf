"""Errors of the inference layer: each names what was expected and what was found."""

from __future__ import annotations


class InferenceError(RuntimeError):
    """Base class of every error raised by perception_nodes.inference."""


class CardError(InferenceError, ValueError):
    """A model card that does not validate (raised when the card is built or loaded, never per frame)."""


class WeightsNotFoundError(InferenceError, FileNotFoundError):
    """The model card names a weights file that does not exist."""

    def __init__(self, model: str, path: str):
        super().__init__(f"model '{model}': weights file not found: {path}")
        self.path = path


class InputError(InferenceError, ValueError):
    """Inputs passed to Engine.run that do not match the card (names, shapes, dtypes)."""


class BackendUnavailableError(InferenceError):
    """A backend that cannot run here (library not importable, no GPU, provider missing)."""


class RegistryError(InferenceError):
    """A model registry problem: unknown name, duplicate name, or a provider module that fails to import."""


class ExportError(InferenceError):
    """ONNX export failed or produced a graph that breaks the export contract."""
