"""Every registered model (plus a small conv net defined here): exports to an ONNX graph that TensorRT can
parse (onnx-tensorrt's operator list, static shapes, opset 17..20) and onnxruntime fp32 matches torch fp32
on the spec's own example inputs within the spec's tolerance (default atol 1e-4, rtol 1e-3).

Models registered later in <capability>/export.py are picked up automatically through the registry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from perception_nodes.inference import registry
from perception_nodes.inference.backends.ort_backend import OrtEngine
from perception_nodes.inference.backends.torch_backend import TorchEngine
from perception_nodes.inference.loader import card_from_spec
from perception_nodes.inference.onnx_export import check_onnx, export_onnx
from perception_nodes.inference.registry import ExportSpec

onnx = pytest.importorskip("onnx", reason="onnx is needed to export")
pytest.importorskip("onnxruntime", reason="onnxruntime is needed for the parity check")


class SmallConvNet(nn.Module):
    """uint8 (1, 48, 64, 3) image + (1, 12, 2) pixel points -> (1, 16, 24, 32) probs, (1, 12, 16) features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Conv2d(32, 16, 1)
        self.norm = nn.LayerNorm(16)
        # non-trivial BatchNorm statistics so folding them into the conv is really exercised
        self.stem[1].running_mean.uniform_(-0.5, 0.5)
        self.stem[1].running_var.uniform_(0.5, 2.0)

    def forward(self, image: torch.Tensor, points: torch.Tensor):
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / 58.0  # (1, 3, H, W)
        f = self.head(torch.relu(self.down(self.stem(x))))  # (1, 16, H/2, W/2)
        probs = torch.softmax(f, dim=1)
        up = nn.functional.interpolate(f, scale_factor=2.0, mode="bilinear", align_corners=False)
        size = torch.tensor([image.shape[2] - 1, image.shape[1] - 1], dtype=torch.float32)
        grid = (points / size * 2 - 1)[:, :, None]  # (1, N, 1, 2) in [-1, 1], x right, y down
        sampled = nn.functional.grid_sample(up, grid, align_corners=True)[..., 0].transpose(1, 2)
        return probs, self.norm(sampled)


def _small_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    image = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) % 256 + rng.integers(0, 20, (48, 64, 3))
    return {
        "image": np.clip(image, 0, 255).astype(np.uint8)[None],
        "points": rng.uniform(0, 47, (1, 12, 2)).astype(np.float32),
    }


LOCAL_SPECS = [
    ExportSpec(
        "test_small_convnet",
        {"channels": 16},
        lambda: SmallConvNet().eval(),
        _small_inputs,
        ["probs", "features"],
    )
]
ALL_SPECS = [
    pytest.param(spec, id=spec.name, marks=[pytest.mark.slow] if spec.slow else [])
    for spec in registry.specs() + LOCAL_SPECS
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each spec once per module run: name -> (spec, module, card, onnx path, report)."""
    done = {}

    def get(spec: ExportSpec):
        if spec.name not in done:
            module = spec.build().eval()
            card = card_from_spec(spec, module)
            path = tmp_path_factory.mktemp("onnx") / f"{spec.name}.onnx"
            report = export_onnx(module, card, spec.example_inputs(), path, check=False)
            done[spec.name] = (spec, module, card, path, report)
        return done[spec.name]

    return get


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_exported_graph_is_tensorrt_compatible(spec, exported):
    _, _, card, path, report = exported(spec)
    assert report.problems == [], f"{spec.name}: " + "; ".join(report.problems)
    assert 17 <= report.opset <= 20
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == card.input_names  # stable names
    assert [o.name for o in model.graph.output] == card.output_names
    for value in list(model.graph.input) + list(model.graph.output):
        assert all(d.dim_value > 0 for d in value.type.tensor_type.shape.dim), value.name


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_onnxruntime_fp32_matches_torch_fp32(spec, exported):
    _, module, card, path, _ = exported(spec)
    inputs = spec.example_inputs()
    expected = TorchEngine(card, module, device="cpu", verify=False).run(inputs)
    got = OrtEngine(card, path, provider="cpu").run(inputs)
    for name in card.output_names:
        assert np.all(np.isfinite(expected[name])), f"{spec.name}.{name}: torch output is not finite"
        np.testing.assert_allclose(
            got[name],
            expected[name],
            rtol=spec.parity_rtol,
            atol=spec.parity_atol,
            err_msg=f"{spec.name}.{name}",
        )


def test_simplified_graph_keeps_parity(tmp_path):
    spec = LOCAL_SPECS[0]
    module = spec.build()
    card = card_from_spec(spec, module)
    plain = export_onnx(module, card, spec.example_inputs(), tmp_path / "plain.onnx")
    simple = export_onnx(module, card, spec.example_inputs(), tmp_path / "simple.onnx", simplify=True)
    assert simple.ok and sum(simple.ops.values()) <= sum(plain.ops.values())
    a = OrtEngine(card, tmp_path / "plain.onnx").run(spec.example_inputs())
    b = OrtEngine(card, tmp_path / "simple.onnx").run(spec.example_inputs())
    for name in card.output_names:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6)


# --- the check itself must reject what TensorRT (or our static-shape contract) cannot take -----------------


def _export_problems(
    module: nn.Module, inputs: dict[str, np.ndarray], outputs: list[str], tmp_path
) -> list[str]:
    spec = ExportSpec("probe", {}, lambda: module.eval(), lambda: inputs, outputs)
    card = card_from_spec(spec, module)
    report = export_onnx(module, card, inputs, tmp_path / "probe.onnx", check=False, exporter="torchscript")
    return report.problems


class _Det(nn.Module):
    def forward(self, x):
        return torch.linalg.det(x)


class _Bicubic(nn.Module):
    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False)


class _NonZero(nn.Module):
    def forward(self, x):
        return torch.nonzero(x > 0).float().sum(dim=0, keepdim=True)


class _UnusedInput(nn.Module):
    def forward(self, x, unused):
        return x * 2


def test_check_rejects_documented_unsupported_op(tmp_path):
    problems = _export_problems(_Det(), {"x": np.eye(3, dtype=np.float32)[None] * 2}, ["det"], tmp_path)
    assert any("Det" in p and "unsupported" in p for p in problems), problems


def test_check_rejects_bicubic_resize(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32)
    problems = _export_problems(_Bicubic(), {"x": x}, ["y"], tmp_path)
    assert any("Resize mode 'cubic'" in p for p in problems), problems


def test_check_rejects_data_dependent_shapes(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    problems = _export_problems(_NonZero(), {"x": x}, ["count"], tmp_path)
    assert any("NonZero" in p for p in problems), problems
    assert any("symbolic" in p for p in problems), problems


def test_check_names_an_input_the_exporter_dropped(tmp_path):
    inputs = {"x": np.ones((1, 4), np.float32), "unused": np.ones((1, 4), np.float32)}
    problems = _export_problems(_UnusedInput(), inputs, ["y"], tmp_path)
    assert any("the card says ['x', 'unused']" in p and "never uses" in p for p in problems), problems


def test_check_rejects_dynamic_io_and_custom_domains():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    problems = check_onnx(model).problems
    assert any("non-static shape" in p and "'x'" in p for p in problems), problems
    assert any("com.microsoft::Gelu" in p for p in problems), problems


def test_check_rejects_old_opset():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    assert any("opset 13" in p for p in check_onnx(model).problems)
