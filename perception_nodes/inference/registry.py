"""The model registry: every exportable network of the stack, found lazily in the capabilities' exports.

Each capability with a network provides ``perception_nodes/<capability>/export.py`` defining
``EXPORTS: list[ExportSpec]``. Discovery imports the modules in ``PROVIDER_MODULES``: a module that does not
exist is skipped (the capability is not written yet); a module that exists but fails to import, or has no
valid ``EXPORTS``, raises ``RegistryError`` naming the module, so a broken provider is never silently dropped.
The inference layer knows no model: it only reads these specs.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from perception_nodes.inference.errors import RegistryError

log = logging.getLogger(__name__)

PROVIDER_MODULES: tuple[str, ...] = (
    "perception_nodes.segmentation.export",
    "perception_nodes.depth.export",
    "perception_nodes.correspondence.export",
    "perception_nodes.tracking.export",
    "perception_nodes.forecasting.export",
    "perception_nodes.policy.export",
)


@dataclasses.dataclass
class ExportSpec:
    """One exportable network.

    The module's forward takes the inputs positionally in ``example_inputs()`` dict order and returns a
    tensor or a tuple of tensors in ``output_names`` order; shapes are static.
    """

    name: str  # registry name, e.g. "eisen_small"
    config: Any  # the model's config dataclass instance
    build: Callable[[], Any]  # eval-mode torch.nn.Module; shipped weights if present, else seeded random init
    example_inputs: Callable[[], dict[str, np.ndarray]]  # realistic inputs by input name (static shapes)
    output_names: list[str]
    parity_atol: float = 1e-4  # torch fp32 vs onnxruntime fp32 tolerance
    parity_rtol: float = 1e-3
    slow: bool = False  # export/parity tests of this model run only with `pytest -m slow` (big networks)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise RegistryError(f"ExportSpec.name must be a non-empty string, got {self.name!r}")
        for field in ("build", "example_inputs"):
            if not callable(getattr(self, field)):
                raise RegistryError(f"ExportSpec '{self.name}': {field} must be callable")
        names = list(self.output_names) if isinstance(self.output_names, Sequence) else None
        if not names or any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
            raise RegistryError(
                f"ExportSpec '{self.name}': output_names must be unique non-empty strings, "
                f"got {self.output_names!r}"
            )
        self.output_names = names
        if not (self.parity_atol >= 0 and self.parity_rtol >= 0):
            raise RegistryError(f"ExportSpec '{self.name}': parity tolerances must be >= 0")


_lock = threading.Lock()
_cache: dict[tuple[str, ...], dict[str, ExportSpec]] = {}


def _is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """True when the provider module itself (or a parent package of it) does not exist."""
    missing = exc.name or ""
    return bool(missing) and (module == missing or module.startswith(missing + "."))


def _load_provider(module: str) -> list[ExportSpec] | None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if _is_missing(exc, module):
            log.debug("model provider %s does not exist yet; skipped", module)
            return None
        raise RegistryError(f"model provider {module} failed to import: {exc}") from exc
    except Exception as exc:
        raise RegistryError(f"model provider {module} failed to import: {type(exc).__name__}: {exc}") from exc
    exports = getattr(mod, "EXPORTS", None)
    if not isinstance(exports, (list, tuple)) or not all(isinstance(s, ExportSpec) for s in exports):
        raise RegistryError(f"model provider {module} must define EXPORTS: list[ExportSpec], got {exports!r}")
    return list(exports)


def discover(modules: Iterable[str] | None = None, refresh: bool = False) -> dict[str, ExportSpec]:
    """All ExportSpecs of the given provider modules (default: PROVIDER_MODULES), by name, in module order."""
    key = tuple(PROVIDER_MODULES if modules is None else modules)
    with _lock:
        if refresh or key not in _cache:
            found: dict[str, ExportSpec] = {}
            owner: dict[str, str] = {}
            for module in key:
                for spec in _load_provider(module) or []:
                    if spec.name in found:
                        raise RegistryError(
                            f"model name '{spec.name}' is registered twice ({owner[spec.name]} and {module})"
                        )
                    found[spec.name] = spec
                    owner[spec.name] = module
            _cache[key] = found
        return dict(_cache[key])


def discover_tolerant(modules: Iterable[str] | None = None) -> tuple[dict[str, ExportSpec], dict[str, str]]:
    """Like discover, but a broken provider is reported in the second dict (module -> error), not raised.

    For diagnostics only (the GPU check, benchmarks on a machine lacking some dependency); everything else
    uses discover so that a broken provider is never silently dropped.
    """
    found: dict[str, ExportSpec] = {}
    errors: dict[str, str] = {}
    for module in PROVIDER_MODULES if modules is None else modules:
        try:
            for name, spec in discover([module]).items():
                if name in found:
                    errors[module] = f"model name '{name}' is registered twice"
                else:
                    found[name] = spec
        except RegistryError as exc:
            errors[module] = str(exc)
    return found, errors


def specs(modules: Iterable[str] | None = None) -> list[ExportSpec]:
    return list(discover(modules).values())


def names(modules: Iterable[str] | None = None) -> list[str]:
    return list(discover(modules))


def get(name: str, modules: Iterable[str] | None = None) -> ExportSpec:
    found = discover(modules)
    if name not in found:
        known = ", ".join(found) or "none registered yet"
        raise RegistryError(f"unknown model '{name}'; registered models: {known}")
    return found[name]
