"""Registry discovery: missing provider modules are skipped, broken ones raise naming the module."""

from __future__ import annotations

import sys
import textwrap
import uuid

import numpy as np
import pytest

from perception_nodes.inference import registry
from perception_nodes.inference.errors import RegistryError
from perception_nodes.inference.registry import ExportSpec

GOOD = """
import numpy as np
from perception_nodes.inference.registry import ExportSpec
EXPORTS = [ExportSpec("{name}", {{}}, lambda: None, lambda: {{"x": np.zeros((1, 2), np.float32)}}, ["y"])]
"""


@pytest.fixture
def providers(tmp_path, monkeypatch):
    """A fresh package of provider modules on sys.path; returns (package name, writer)."""
    package = f"fake_providers_{uuid.uuid4().hex[:8]}"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module: str, source: str) -> str:
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        return f"{package}.{module}"

    yield package, write
    for name in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[name]


def test_missing_modules_are_skipped_and_good_ones_found(providers):
    package, write = providers
    good = write("good", GOOD.format(name="alpha"))
    found = registry.discover(
        [f"{package}.not_written_yet", "no_such_package_xyz.export", good], refresh=True
    )
    assert list(found) == ["alpha"]
    assert registry.get("alpha", [good]).output_names == ["y"]
    with pytest.raises(RegistryError, match="unknown model 'beta'; registered models: alpha"):
        registry.get("beta", [good])


@pytest.mark.parametrize(
    "source, message",
    [
        ("import a_dependency_that_is_not_installed_xyz\n", "failed to import: No module named"),
        ("raise RuntimeError('boom')\n", "failed to import: RuntimeError: boom"),
        ("def broken(:\n", "failed to import: SyntaxError"),
        ("EXPORTS = ['not a spec']\n", "must define EXPORTS"),
        ("X = 1\n", "must define EXPORTS"),
    ],
)
def test_broken_provider_raises_naming_the_module(providers, source, message):
    _, write = providers
    module = write("broken", source)
    with pytest.raises(RegistryError, match=f"{module}.*{message}" if "EXPORTS" not in message else message):
        registry.discover([module], refresh=True)


def test_duplicate_names_raise(providers):
    _, write = providers
    first, second = write("one", GOOD.format(name="same")), write("two", GOOD.format(name="same"))
    with pytest.raises(RegistryError, match="'same' is registered twice"):
        registry.discover([first, second], refresh=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_names": []}, "output_names"),
        ({"output_names": ["a", "a"]}, "output_names"),
        ({"build": "not callable"}, "build must be callable"),
        ({"parity_atol": -1.0}, "tolerances"),
    ],
)
def test_export_spec_validates(kwargs, message):
    fields = dict(
        name="m", config={}, build=lambda: None, example_inputs=lambda: {"x": np.zeros(1)}, output_names=["y"]
    )
    fields.update(kwargs)
    with pytest.raises(RegistryError, match=message):
        ExportSpec(**fields)


def test_the_real_providers_import_cleanly():
    found = registry.discover(refresh=True)  # raises if a capability's export.py is broken
    for name, spec in found.items():
        assert spec.name == name
        inputs = spec.example_inputs()
        assert inputs and all(isinstance(v, np.ndarray) for v in inputs.values()), name
