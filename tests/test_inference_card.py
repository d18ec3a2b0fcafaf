"""Model cards and bad input: a bad card fails at construction/load (never per frame), wrong inputs name the
expected shape, a missing weights file names its path, and weights really load (strictly) from safetensors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from perception_nodes.inference import (
    CardError,
    InputError,
    ModelCard,
    TensorSpec,
    WeightsNotFoundError,
    load_engine,
)


@dataclasses.dataclass
class TinyConfig:
    channels: int = 4


class Tiny(nn.Module):
    """(1, 3, 8, 8) float32 -> (1, 4, 8, 8) float32 and (1, 4) float32."""

    def __init__(self, channels: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean(dim=(2, 3))


def tiny_card(**changes) -> ModelCard:
    fields = dict(
        name="tiny",
        inputs=(TensorSpec("x", (1, 3, 8, 8)),),
        outputs=(TensorSpec("y", (1, 4, 8, 8)), TensorSpec("pooled", (1, 4))),
        config=TinyConfig(),
    )
    fields.update(changes)
    return ModelCard(**fields)


X = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"inputs": (TensorSpec("x", (1, 3, 8, 8)), TensorSpec("x", (1, 2)))}, "unique"),
        ({"precision": "int4"}, "precision 'int4'"),
        ({"weights": "model.pt"}, ".safetensors"),
        ({"inputs": ()}, "non-empty"),
        ({"name": "bad name!"}, "model name"),
        ({"config": object()}, "dataclass instance or a dict"),
        ({"inputs": ({"name": "x", "shape": [1, -1]},)}, "static with positive ints"),
        ({"inputs": ({"name": "x", "shape": [1, 3], "dtype": "complex64"},)}, "dtype 'complex64'"),
        ({"inputs": ({"name": "x", "shape": [1, 2.5]},)}, "static with positive ints"),
    ],
)
def test_invalid_card_fails_at_construction(changes, message):
    with pytest.raises(CardError, match=message):
        tiny_card(**changes)


def test_card_json_round_trip_resolves_relative_paths(tmp_path):
    card = tiny_card(weights="w.safetensors", onnx="m.onnx", precision="fp16")
    path = tmp_path / "tiny.json"
    card.save(path)
    loaded = ModelCard.load(path)
    assert loaded.weights == str(tmp_path / "w.safetensors") and loaded.onnx == str(tmp_path / "m.onnx")
    assert loaded.inputs == card.inputs and loaded.outputs == card.outputs and loaded.precision == "fp16"
    assert loaded.config == {"channels": 4}


def test_card_file_with_bad_content_fails_at_load(tmp_path):
    path = tmp_path / "card.json"
    data = tiny_card().to_dict()
    data["outputs"][0]["shape"] = [1, 0, 8, 8]
    path.write_text(json.dumps(data))
    with pytest.raises(CardError, match=r"'y'.*static"):
        ModelCard.load(path)
    path.write_text(json.dumps({**tiny_card().to_dict(), "colour": "red"}))
    with pytest.raises(CardError, match="unknown fields \\['colour'\\]"):
        ModelCard.load(path)
    path.write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.load(path)


def test_card_that_does_not_match_the_module_fails_at_load_not_at_first_frame():
    wrong_shape = tiny_card(outputs=(TensorSpec("y", (1, 4, 4, 4)), TensorSpec("pooled", (1, 4))))
    with pytest.raises(CardError, match=r"output 'y'.*\(1, 4, 4, 4\).*\(1, 4, 8, 8\)"):
        load_engine(wrong_shape, "torch", "cpu", module=Tiny())
    wrong_count = tiny_card(outputs=(TensorSpec("y", (1, 4, 8, 8)),))
    with pytest.raises(CardError, match=r"outputs \['y'\].*returned 2"):
        load_engine(wrong_count, "torch", "cpu", module=Tiny())
    two_inputs = tiny_card(inputs=(TensorSpec("x", (1, 3, 8, 8)), TensorSpec("extra", (1,))))
    with pytest.raises(CardError, match="2 inputs"):
        load_engine(two_inputs, "torch", "cpu", module=Tiny())


def test_card_that_does_not_match_the_onnx_graph_fails_at_load(tmp_path):
    pytest.importorskip("onnxruntime")
    from perception_nodes.inference.onnx_export import export_onnx

    card = tiny_card()
    export_onnx(Tiny(), card, {"x": X}, tmp_path / "tiny.onnx")
    renamed = tiny_card(onnx=str(tmp_path / "tiny.onnx"), inputs=(TensorSpec("image", (1, 3, 8, 8)),))
    with pytest.raises(CardError, match=r"graph inputs are \['x'\], the card says \['image'\]"):
        load_engine(renamed, "onnxruntime", "cpu")
    missing = tiny_card(onnx=str(tmp_path / "nope.onnx"))
    with pytest.raises(CardError, match=r"ONNX file not found: .*nope\.onnx"):
        load_engine(missing, "onnxruntime", "cpu")


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "missing" / "tiny.safetensors"
    for backend in ("auto", "torch"):
        with pytest.raises(WeightsNotFoundError, match=str(path)):
            load_engine(tiny_card(weights=str(path)), backend, "cpu", module=Tiny())


def test_weights_are_loaded_strictly_from_safetensors(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors is needed to write weights")
    from safetensors.torch import save_file

    trained = Tiny()
    with torch.no_grad():
        trained.conv.weight.mul_(-3.0)
    path = tmp_path / "tiny.safetensors"
    save_file(trained.state_dict(), str(path))
    engine = load_engine(tiny_card(weights=str(path)), "torch", "cpu", build=Tiny)
    with torch.no_grad():
        expected = trained(torch.from_numpy(X))[0].numpy()
    np.testing.assert_allclose(engine.run({"x": X})["y"], expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(load_engine(tiny_card(), "torch", "cpu", build=Tiny).run({"x": X})["y"], expected)

    save_file({"conv.weight": trained.conv.weight.detach().clone()}, str(path))  # bias missing
    with pytest.raises(CardError, match=r"missing \['conv\.bias'\]"):
        load_engine(tiny_card(weights=str(path)), "torch", "cpu", build=Tiny)


@pytest.fixture(scope="module")
def engine():
    return load_engine(tiny_card(), "torch", "cpu", module=Tiny())


@pytest.mark.parametrize(
    "inputs, message",
    [
        (
            {"x": X[:, :, :4]},
            r"input 'x': expected shape \(1, 3, 8, 8\) dtype float32, got shape \(1, 3, 4, 8\)",
        ),
        ({"x": X.astype(np.float64)}, r"expected shape \(1, 3, 8, 8\) dtype float32, got .* dtype float64"),
        ({"x": torch.zeros(1, 3, 8, 8, dtype=torch.int64)}, r"expected .* float32, got .* dtype int64"),
        ({"image": X}, r"missing \['x'\], unexpected \['image'\]"),
        ({"x": X, "y": X}, r"unexpected \['y'\]"),
        ({"x": X.tolist()}, r"numpy array or torch tensor of \(1, 3, 8, 8\) float32, got list"),
        ([X], "dict of inputs by name"),
    ],
)
def test_bad_inputs_raise_a_clear_error(engine, inputs, message):
    with pytest.raises(InputError, match=message):
        engine.run(inputs)


def test_numpy_in_numpy_out_and_torch_in_torch_out(engine):
    out_np = engine.run({"x": X})
    out_t = engine.run({"x": torch.from_numpy(X)})
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in out_np.values())
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in out_t.values())
    assert list(out_np) == ["y", "pooled"]
    np.testing.assert_allclose(out_t["pooled"].numpy(), out_np["pooled"], rtol=0, atol=0)
    np.testing.assert_allclose(out_np["pooled"], out_np["y"].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
