"""Every custom message round-trips through CDR, from the .msg files in msgs/ (the only definition)."""

import re
from pathlib import Path

import numpy as np
import pytest

from perception_nodes.runtime.typestore import custom_types, make, msg_dir, typestore

MSG_FILES = sorted(msg_dir().glob("*.msg"))
REPO = Path(__file__).resolve().parents[1]


def _filled(store, typename, rng):
    """A message of ``typename`` with every field set to a non-default value."""
    _, fields = store.fielddefs[typename]
    values = {}
    for name, (kind, spec) in fields:
        if kind.name == "BASE":
            base = spec[0]
            values[name] = (
                f"{name}-Ω" if base == "string" else float(rng.normal()) if base.startswith("float") else 7
            )
        elif kind.name == "NAME":
            values[name] = _filled(store, spec, rng)
        else:
            (sub_kind, sub_spec), count = spec
            n = count or 5
            if sub_kind.name == "BASE" and sub_spec[0] == "string":
                values[name] = [f"s{i}" for i in range(n)]
            elif sub_kind.name == "BASE":
                dtype = np.dtype(
                    {"float32": "f4", "float64": "f8"}.get(sub_spec[0], sub_spec[0].replace("byte", "uint8"))
                )
                values[name] = (rng.normal(size=n) * 100).astype(dtype)
            else:
                values[name] = [_filled(store, sub_spec, rng) for _ in range(n)]
    return make(store, typename, **values)


def _assert_equal(a, b):
    for field in a.__dataclass_fields__:
        if field == "__msgtype__":
            continue
        va, vb = getattr(a, field), getattr(b, field)
        if hasattr(va, "__dataclass_fields__"):
            _assert_equal(va, vb)
        elif isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb)
        elif isinstance(va, list) and va and hasattr(va[0], "__dataclass_fields__"):
            for x, y in zip(va, vb, strict=True):
                _assert_equal(x, y)
        else:
            assert va == vb, field


@pytest.mark.parametrize("distro", ["jazzy", "humble"])
@pytest.mark.parametrize("path", MSG_FILES, ids=lambda p: p.stem)
def test_cdr_round_trip(path, distro):
    store = typestore(distro)
    typename = f"perception_msgs/msg/{path.stem}"
    msg = _filled(store, typename, np.random.default_rng(0))
    raw = store.serialize_cdr(msg, typename)
    back = store.deserialize_cdr(raw, typename)
    _assert_equal(msg, back)
    assert bytes(store.serialize_cdr(back, typename)) == bytes(raw)


def test_every_msg_file_is_built_by_cmake_and_registered():
    cmake = (REPO / "msgs" / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"msg/(\w+)\.msg"', cmake))
    files = {p.stem for p in MSG_FILES}
    assert listed == files
    assert set(custom_types()) == {f"perception_msgs/msg/{name}" for name in files}


def test_every_field_is_documented():
    for path in MSG_FILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line and not line.startswith("#"):
                assert lines[i - 1].startswith("#"), f"{path.name}: field {line!r} has no comment above it"


def test_no_second_definition_in_python():
    """The .msg files are the single source: no Python file spells out a message definition."""
    for py in (REPO / "perception_nodes").rglob("*.py"):
        text = py.read_text()
        assert "float32[] samples" not in text and "uint64[] track_ids" not in text, py
