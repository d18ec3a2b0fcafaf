"""GPU paths: torch CUDA (fp16 autocast, channels_last, CUDA graphs), onnxruntime CUDA IO binding, native
TensorRT (build, cache hit, rebuild of damaged entries, parity). Each test skips with the reason where the
GPU or the library is absent; bench/gpu_check.sh runs them on a CUDA machine.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from perception_nodes.inference import load_engine
from perception_nodes.inference.loader import card_from_spec
from perception_nodes.inference.registry import ExportSpec

pytestmark = pytest.mark.gpu  # deselected by default (pytest.ini); bench/gpu_check.sh runs them

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
needs_trt = pytest.mark.skipif(
    not (HAS_CUDA and importlib.util.find_spec("tensorrt")),
    reason="needs a CUDA GPU and the tensorrt Python package (TensorRT 10)",
)


def _ort_cuda() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


needs_ort_cuda = pytest.mark.skipif(
    not (HAS_CUDA and importlib.util.find_spec("onnx") and _ort_cuda()),
    reason="needs a CUDA GPU, onnx and onnxruntime-gpu with CUDAExecutionProvider",
)


class GpuNet(nn.Module):
    """uint8 (1, 64, 64, 3) image -> (1, 32, 32, 32) probs and (1, 32) pooled features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 32, 1),
        )  # fmt: skip
        self.norm = nn.LayerNorm(32)

    def forward(self, image):
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / 58.0
        f = self.body(x)  # (1, 32, 32, 32)
        return torch.softmax(f, dim=1), self.norm(f.mean(dim=(2, 3)))


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)}


SPEC = ExportSpec("gpu_net", {}, lambda: GpuNet().eval(), _inputs, ["probs", "pooled"], parity_atol=1e-3)


@pytest.fixture(scope="module")
def model():
    module = SPEC.build()
    card = card_from_spec(SPEC, module)
    reference = load_engine(card, "torch", "cpu", module=GpuNet().eval())
    return module, card, reference


def _close(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    for name in a:
        x = a[name].detach().cpu().numpy() if isinstance(a[name], torch.Tensor) else a[name]
        y = b[name].detach().cpu().numpy() if isinstance(b[name], torch.Tensor) else b[name]
        np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=name)


@needs_cuda
def test_torch_cuda_fp32_matches_cpu(model):
    _, card, reference = model
    engine = load_engine(card, "torch", "cuda", module=GpuNet().eval(), channels_last=False)
    out = engine.run(_inputs())
    assert all(isinstance(v, np.ndarray) for v in out.values())
    _close(out, reference.run(_inputs()), atol=2e-3)  # convolutions may use TF32 on Ampere and newer


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_cuda_reduced_precision_with_cuda_graph(model, precision):
    _, card, reference = model
    eager = load_engine(card, "torch", "cuda", module=GpuNet().eval(), precision=precision)
    graph = load_engine(card, "torch", "cuda", module=GpuNet().eval(), precision=precision, cuda_graph=True)
    assert eager.details["channels_last"] and graph.details["cuda_graph"]
    atol = 2e-2 if precision == "fp16" else 6e-2
    first = {k: torch.from_numpy(v).cuda() for k, v in _inputs(0).items()}
    second = {k: torch.from_numpy(v).cuda() for k, v in _inputs(1).items()}
    out_first = graph.run(first)
    kept = {k: v.clone() for k, v in out_first.items()}
    out_second = graph.run(second)
    assert out_second["probs"].device.type == "cuda" and out_second["probs"].dtype == torch.float32
    _close(out_first, kept, atol=0)  # outputs are copies: a later replay does not overwrite them
    _close(out_second, eager.run(second), atol=1e-3)  # the replay really read the new inputs
    _close(out_second, reference.run(_inputs(1)), atol=atol)
    assert not torch.allclose(out_first["pooled"], out_second["pooled"])


@needs_ort_cuda
def test_onnxruntime_cuda_io_binding_matches_numpy_path(model, tmp_path):
    module, card, reference = model
    engine = load_engine(card, "onnxruntime", "cuda", module=module, cache_dir=tmp_path)
    assert engine.details["provider"] == "CUDAExecutionProvider"
    bound = engine.run({k: torch.from_numpy(v).cuda() for k, v in _inputs().items()})
    assert bound["probs"].device.type == "cuda"
    _close(bound, engine.run(_inputs()), atol=1e-5)
    _close(bound, reference.run(_inputs()), atol=2e-3)


@needs_trt
def test_tensorrt_build_cache_hit_and_parity(model, tmp_path):
    module, card, reference = model
    fp16 = load_engine(card, "tensorrt", "cuda", module=module, precision="fp16", cache_dir=tmp_path)
    assert fp16.details["cache"] == "built" and fp16.precision == "fp16"
    again = load_engine(card, "tensorrt", "cuda", module=module, precision="fp16", cache_dir=tmp_path)
    assert again.details["cache"] == "hit" and again.details["engine"] == fp16.details["engine"]
    torch_inputs = {k: torch.from_numpy(v).cuda() for k, v in _inputs().items()}
    _close(fp16.run(torch_inputs), reference.run(_inputs()), atol=2e-2)
    fp32 = load_engine(card, "tensorrt", "cuda", module=module, precision="fp32", cache_dir=tmp_path)
    assert fp32.details["engine"] != fp16.details["engine"]
    _close(fp32.run(_inputs()), reference.run(_inputs()), atol=2e-3)
    assert list(tmp_path.glob("timing-*.cache")), "the TensorRT timing cache is saved next to the engines"


@needs_trt
def test_tensorrt_damaged_cache_entries_are_rebuilt(model, tmp_path):
    from pathlib import Path

    from perception_nodes.inference.cache import EngineKey, pack_entry, read_header, unpack_entry

    module, card, reference = model
    first = load_engine(card, "tensorrt", "cuda", module=module, precision="fp16", cache_dir=tmp_path)
    path = Path(first.details["engine"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated
    second = load_engine(card, "tensorrt", "cuda", module=module, precision="fp16", cache_dir=tmp_path)
    assert second.details["cache"] == "rebuilt" and "truncated" in second.details["cache_reason"]
    key = EngineKey.from_dict(read_header(path.read_bytes())["key"])
    payload = bytearray(unpack_entry(path.read_bytes(), key))
    payload[len(payload) // 2 :] = bytes(len(payload) - len(payload) // 2)  # well-formed entry, broken plan
    path.write_bytes(pack_entry(key, bytes(payload)))
    third = load_engine(card, "tensorrt", "cuda", module=module, precision="fp16", cache_dir=tmp_path)
    assert third.details["cache"] == "rebuilt" and "deserializer rejected" in third.details["cache_reason"]
    _close(third.run(_inputs()), reference.run(_inputs()), atol=2e-2)


@needs_cuda
def test_auto_on_gpu_picks_the_best_available(model, tmp_path):
    module, card, _ = model
    engine = load_engine(card, "auto", "auto", module=module, cache_dir=tmp_path)
    if importlib.util.find_spec("tensorrt"):
        expected = "tensorrt-cuda"
    elif importlib.util.find_spec("onnx") and _ort_cuda():
        expected = "onnxruntime-cuda"
    else:
        expected = "torch-cuda"
    assert engine.label == expected, engine.details.get("skipped")
