"""Backend selection, the benchmark harness and the export/bench commands, end to end on CPU."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch

from perception_nodes.inference import BackendUnavailableError, ModelCard, load_engine, registry
from perception_nodes.inference.loader import card_from_spec

pytest.importorskip("onnx", reason="onnx is needed to export")
pytest.importorskip("onnxruntime", reason="onnxruntime is needed for these tests")

PROVIDER = '''
import numpy as np
import torch
from torch import nn
from perception_nodes.inference.registry import ExportSpec


class Net(nn.Module):
    """(1, 3, 16, 16) float32 -> (1, 8, 8, 8) float32 features, (1, 8) pooled."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        f = self.conv(x)
        return f, f.mean(dim=(2, 3))


def example():
    return {"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}


EXPORTS = [ExportSpec("cli_net", {"width": 8}, lambda: Net().eval(), example, ["features", "pooled"])]
'''


@pytest.fixture
def provider(tmp_path, monkeypatch):
    """A real provider module registered as the only entry of PROVIDER_MODULES."""
    name = f"provider_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PROVIDER))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "PROVIDER_MODULES", (name,))
    registry.discover(refresh=True)
    yield registry.get("cli_net")
    sys.modules.pop(name, None)


def _loader_records(caplog):
    return [
        r
        for r in caplog.records
        if r.name == "perception_nodes.inference.loader" and r.levelno == logging.INFO
    ]


def test_auto_on_cpu_prefers_onnxruntime_and_logs_once(provider, tmp_path, caplog):
    module = provider.build()
    card = card_from_spec(provider, module)
    with caplog.at_level(logging.INFO, logger="perception_nodes.inference"):
        engine = load_engine(card, "auto", "cpu", module=module, cache_dir=tmp_path)
    assert engine.label == "onnxruntime-cpu"
    records = _loader_records(caplog)
    assert len(records) == 1 and "runs on onnxruntime-cpu fp32" in records[0].getMessage()
    x = provider.example_inputs()
    with torch.no_grad():
        expected = module(torch.from_numpy(x["x"]))[1].numpy()
    np.testing.assert_allclose(engine.run(x)["pooled"], expected, rtol=1e-4, atol=1e-5)


def test_auto_falls_back_and_says_why(provider, tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if onnxruntime were not installed
    module = provider.build()
    card = card_from_spec(provider, module)
    with caplog.at_level(logging.INFO, logger="perception_nodes.inference"):
        engine = load_engine(card, "auto", "auto", module=module, cache_dir=tmp_path)
    cuda = torch.cuda.is_available()  # with a GPU, torch-cuda ranks above onnxruntime-cpu and wins
    want = "torch-cuda" if cuda else "torch-cpu"
    assert engine.label == want
    message = _loader_records(caplog)[0].getMessage()
    assert f"runs on {want}" in message
    ort = "onnxruntime-cuda" if cuda else "onnxruntime-cpu"
    assert f"{ort} (BackendUnavailableError: onnxruntime is not importable" in message
    if not cuda:
        assert "torch-cuda (BackendUnavailableError: no CUDA device" in message
    assert "tensorrt-cuda (BackendUnavailableError:" in message
    assert [s.split(" ")[0] for s in engine.details["skipped"]][-1] == ort


def test_explicit_backend_that_cannot_run_raises(provider, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    card = card_from_spec(provider)
    with pytest.raises(BackendUnavailableError, match="tensorrt is not importable"):
        load_engine(card, "tensorrt", "cuda", build=provider.build, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="runs on CUDA only"):
        load_engine(card, "tensorrt", "cpu", build=provider.build, cache_dir=tmp_path)


def test_onnxruntime_engine_takes_and_returns_torch_tensors(provider, tmp_path):
    card = card_from_spec(provider)
    engine = load_engine(card, "onnxruntime", "cpu", build=provider.build, cache_dir=tmp_path)
    x = torch.from_numpy(provider.example_inputs()["x"])
    out = engine.run({"x": x})
    assert isinstance(out["features"], torch.Tensor) and tuple(out["features"].shape) == (1, 8, 8, 8)
    exported = list((tmp_path / "onnx").glob("cli_net-*.onnx"))
    assert len(exported) == 1 and exported[0].with_suffix(".json").is_file()  # ONNX cached with its card
    load_engine(card, "onnxruntime", "cpu", build=lambda: pytest.fail("re-exported"), cache_dir=tmp_path)


def test_onnxruntime_io_binding_path_on_cpu(provider, tmp_path):
    """The IO-binding code used for CUDA tensors, run with CPU tensors so it is exercised everywhere."""
    card = card_from_spec(provider)
    engine = load_engine(card, "onnxruntime", "cpu", build=provider.build, cache_dir=tmp_path)
    x = provider.example_inputs()
    bound = engine._run_bound({"x": torch.from_numpy(x["x"])})
    plain = engine.run(x)
    for name in card.output_names:
        np.testing.assert_array_equal(bound[name].numpy(), plain[name])


def test_torch_bf16_on_cpu_is_close_to_fp32(provider):
    module = provider.build()
    card = card_from_spec(provider, module)
    x = provider.example_inputs()
    fp32 = load_engine(card, "torch", "cpu", module=module).run(x)
    bf16 = load_engine(card, "torch", "cpu", module=module, precision="bf16")
    assert bf16.precision == "bf16"
    got = bf16.run(x)
    assert got["features"].dtype == np.float32  # I/O stays in the card's dtypes
    np.testing.assert_allclose(got["features"], fp32["features"], atol=0.1, rtol=0.05)
    assert np.abs(got["features"] - fp32["features"]).max() > 0  # it really ran in reduced precision
    fp16 = load_engine(card, "torch", "cpu", module=module, precision="fp16")
    assert fp16.precision == "fp32" and "fp16 requested" in fp16.details["precision_note"]


# --- benchmark harness ------------------------------------------------------------------------------------


def test_bench_rows_have_a_side_by_side_baseline(provider, tmp_path):
    from perception_nodes.inference import bench

    cfg = bench.BenchConfig(devices=["cpu", "cuda"], backends=["torch", "onnxruntime"], warmup=1, iters=5,
                            cache_dir=str(tmp_path))  # fmt: skip
    result = bench.run([provider], cfg)
    rows = {(r["device"], r["backend"], r["baseline"]): r for r in result["rows"]}
    base, ort = rows[("cpu", "torch", True)], rows[("cpu", "onnxruntime", False)]
    for row in (base, ort):
        assert row["status"] == "ok" and row["iters"] == 5
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput_per_s"] == pytest.approx(1000.0 / row["mean_ms"])
        assert row["peak_mem_mb"] > 10 and row["mem_kind"] == "rss"
    assert base["speedup_vs_baseline"] == pytest.approx(1.0)
    assert ort["speedup_vs_baseline"] == pytest.approx(base["p50_ms"] / ort["p50_ms"])
    assert ort["max_abs_diff_vs_baseline"] < 1e-4
    if not torch.cuda.is_available():
        cuda_rows = [r for r in result["rows"] if r["device"] == "cuda"]
        assert cuda_rows and all(r["status"] == "skipped" and "no CUDA" in r["reason"] for r in cuda_rows)
        assert {(r["backend"], r["cuda_graph"]) for r in cuda_rows} == {
            ("torch", False),
            ("torch", True),
            ("onnxruntime", False),
        }
    assert "onnxruntime" in result["environment"] and result["environment"]["torch"] == torch.__version__
    bench.write_json(result, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["model"] == "cli_net"


def test_bench_time_budget_skips_the_rest(provider):
    from perception_nodes.inference import bench

    result = bench.run([provider], bench.BenchConfig(devices=["cpu"], budget_s=0.0))
    assert result["rows"] and all("time budget" in r["reason"] for r in result["rows"])


# --- export and bench commands ----------------------------------------------------------------------------


def _parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_export_command_writes_onnx_and_card_that_load_without_torch_module(provider, tmp_path, capsys):
    from perception_nodes.inference.cli import add_export_arguments, run_export

    out = tmp_path / "out" / "net.onnx"
    assert run_export(_parse(add_export_arguments, ["cli_net", "--onnx", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "cli_net ->" in printed and "opset 17" in printed and "parity with torch: max|Δ|" in printed
    card = ModelCard.load(out.with_suffix(".json"))
    assert card.onnx == str(out) and card.config == {"width": 8}
    engine = load_engine(
        card, "onnxruntime", "cpu", build=lambda: pytest.fail("the card's ONNX must be used")
    )
    x = provider.example_inputs()
    with torch.no_grad():
        expected = provider.build()(torch.from_numpy(x["x"]))[0].numpy()
    np.testing.assert_allclose(engine.run(x)["features"], expected, rtol=1e-4, atol=1e-5)

    assert run_export(_parse(add_export_arguments, ["all", "--onnx", str(tmp_path / "all")])) == 0
    assert (tmp_path / "all" / "cli_net.onnx").is_file()
    assert run_export(_parse(add_export_arguments, ["nope", "--onnx", str(out)])) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert run_export(_parse(add_export_arguments, ["--list"])) == 0
    assert capsys.readouterr().out.strip() == "cli_net"


def test_bench_command_prints_a_table_and_writes_json(provider, tmp_path, capsys):
    from perception_nodes.inference.cli import add_bench_arguments, run_bench

    path = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--backend", "onnxruntime", "--iters", "3", "--warmup", "1"]
    argv += ["--json", str(path), "--cache-dir", str(tmp_path / "cache")]
    assert run_bench(_parse(add_bench_arguments, argv)) == 0
    printed = capsys.readouterr().out
    assert "cli_net" in printed and "p50 ms" in printed and "speed-up" in printed
    rows = json.loads(path.read_text())["rows"]
    assert [(r["backend"], r["baseline"], r["status"]) for r in rows] == [
        ("torch", True, "ok"),
        ("onnxruntime", False, "ok"),
    ]
    assert run_bench(_parse(add_bench_arguments, ["unknown_model"])) == 2


# --- TensorRT build plumbing against a stand-in of the TensorRT 10 API (the real one runs on the GPU check)


class FakeTRT:
    """Records what build_serialized asks of the TensorRT 10 builder API."""

    __version__ = "10.3.0"

    def __init__(self, parse_ok=True, build_ok=True):
        self.calls = []
        self.parse_ok, self.build_ok = parse_ok, build_ok
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                fake.calls.append(("logger", severity))

        class MemoryPoolType:
            WORKSPACE = "workspace"

        class BuilderFlag:
            FP16, BF16 = "FP16", "BF16"

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return memoryview(self.data + b"+new")

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def create_timing_cache(self, data):
                fake.calls.append(("timing_in", bytes(data)))
                self.cache = Cache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("timing_set", ignore_mismatch))

            def get_timing_cache(self):
                return self.cache

        class Parser:
            num_errors = 1

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                fake.calls.append(("parse", len(data)))
                return fake.parse_ok

            def get_error(self, i):
                return "In node 3 (Det): unsupported operator"

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return memoryview(b"PLAN") if fake.build_ok else None

        self.Logger, self.MemoryPoolType, self.BuilderFlag = Logger, MemoryPoolType, BuilderFlag
        self.Builder, self.OnnxParser = Builder, Parser


def test_tensorrt_build_uses_fp16_flag_and_timing_cache(tmp_path, monkeypatch):
    from perception_nodes.inference.backends import trt_backend
    from perception_nodes.inference.errors import InferenceError

    monkeypatch.setattr(trt_backend._Logger, "instance", None)
    onnx_path, timing = tmp_path / "m.onnx", tmp_path / "timing.cache"
    onnx_path.write_bytes(b"onnx-bytes")
    timing.write_bytes(b"old")
    trt = FakeTRT()
    plan = trt_backend.build_serialized(trt, onnx_path, "fp16", timing, 1 << 30)
    assert plan == b"PLAN"
    assert ("network", 0) in trt.calls and ("parse", len(b"onnx-bytes")) in trt.calls
    assert ("flag", "FP16") in trt.calls and ("pool", "workspace", 1 << 30) in trt.calls
    assert ("timing_in", b"old") in trt.calls and ("timing_set", False) in trt.calls
    assert timing.read_bytes() == b"old+new"  # the timing cache is saved back for the next build
    with pytest.raises(InferenceError, match=r"could not parse .*unsupported operator"):
        trt_backend.build_serialized(FakeTRT(parse_ok=False), onnx_path, "fp32", timing, 1 << 30)
    with pytest.raises(InferenceError, match="failed to build"):
        trt_backend.build_serialized(FakeTRT(build_ok=False), onnx_path, "fp32", timing, 1 << 30)
