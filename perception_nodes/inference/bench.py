"""Benchmark harness: per model and backend, latency p50/p90/p99 after warm-up, throughput and peak memory.

Every (model, device) group starts with a baseline row, plain fp32 torch eager on that device, run in the
same process on the same inputs, so each speed-up is a ratio measured side by side, and each row reports
the largest absolute difference of its outputs from the baseline's. CUDA rows take torch tensors already on
the GPU (compute only); CPU rows take numpy arrays. Memory: on CUDA the torch allocator's peak and the
device-wide used-memory growth (TensorRT and onnxruntime allocate outside torch); on CPU the peak resident
set size of the process while the row ran.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception_nodes.inference.cache import atomic_write_bytes
from perception_nodes.inference.errors import BackendUnavailableError
from perception_nodes.inference.loader import card_from_spec, load_engine
from perception_nodes.inference.registry import ExportSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Variant:
    backend: str
    device: str
    precision: str = "fp32"
    cuda_graph: bool = False
    baseline: bool = False

    @property
    def label(self) -> str:
        graph = "+graph" if self.cuda_graph else ""
        return f"{self.backend}-{self.device} {self.precision}{graph}" + (
            " (baseline)" if self.baseline else ""
        )


@dataclasses.dataclass
class BenchConfig:
    devices: Sequence[str] = ("cpu",)
    backends: Sequence[str] = ("torch", "onnxruntime", "tensorrt")  # "onnxruntime-trt" on request
    precisions: Sequence[str] | None = None  # None: fp16 on CUDA (+ the fp32 baseline), fp32 on CPU
    cuda_graph: bool = True
    warmup: int = 5
    iters: int = 50
    max_row_s: float = 20.0  # stop timing a row after this long (at least min_iters runs)
    min_iters: int = 3
    budget_s: float | None = None  # skip the remaining rows once the whole run took this long
    cache_dir: str | None = None


@dataclasses.dataclass
class BenchRow:
    model: str
    backend: str
    device: str
    precision: str
    cuda_graph: bool
    baseline: bool
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    engine: str = ""  # what actually ran, e.g. "onnxruntime-cpu fp32"
    iters: int = 0
    load_s: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput_per_s: float | None = None  # runs per second (1000 / mean latency)
    peak_mem_mb: float | None = None
    mem_kind: str = ""  # rss | cuda_allocated | cuda_device_used
    cuda_max_allocated_mb: float | None = None
    cuda_device_used_mb: float | None = None
    rss_peak_mb: float | None = None
    speedup_vs_baseline: float | None = None
    max_abs_diff_vs_baseline: float | None = None


def default_variants(device: str, cfg: BenchConfig) -> list[Variant]:
    """The baseline, then the backends asked for in their useful precisions on this device."""
    precisions = list(cfg.precisions or (["fp16"] if device == "cuda" else ["fp32"]))
    rows = [Variant("torch", device, "fp32", baseline=True)]
    for backend in cfg.backends:
        if backend == "onnxruntime":
            rows.append(Variant("onnxruntime", device, "fp32"))  # the CPU/CUDA providers run fp32 graphs
        elif backend in ("tensorrt", "onnxruntime-trt"):
            rows += [Variant(backend, device, p) for p in precisions if device == "cuda"]
        elif backend == "torch":
            for p in precisions:
                if device == "cpu" and p == "fp16":
                    continue
                if p != "fp32":
                    rows.append(Variant("torch", device, p))
                if device == "cuda" and cfg.cuda_graph:
                    rows.append(Variant("torch", device, p, cuda_graph=True))
    return list(dict.fromkeys(rows))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs_for(device: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    if device == "cuda":
        return {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in inputs.items()}
    return inputs


def _as_numpy(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        k: (v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else v)
        for k, v in outputs.items()
    }


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    diffs = [np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0) for k in a]
    return float(max(diffs, default=0.0))


def _time_engine(
    engine: Any, inputs: dict[str, Any], device: str, cfg: BenchConfig
) -> tuple[list[float], float, Any]:
    """Latencies (ms) after warm-up, peak RSS (MB) while timing, and the last outputs."""
    outputs = None
    for _ in range(cfg.warmup):
        outputs = engine.run(inputs)
    _sync(device)
    times: list[float] = []
    rss = _rss_mb()
    start = time.perf_counter()
    while len(times) < cfg.iters:
        t0 = time.perf_counter()
        outputs = engine.run(inputs)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
        rss = max(rss, _rss_mb())
        if len(times) >= cfg.min_iters and time.perf_counter() - start > cfg.max_row_s:
            break
    return times, rss, outputs


def run_variant(
    spec: ExportSpec,
    card: Any,
    module: torch.nn.Module,
    inputs: dict[str, np.ndarray],
    variant: Variant,
    cfg: BenchConfig,
) -> tuple[BenchRow, dict[str, np.ndarray] | None]:
    row = BenchRow(
        spec.name, variant.backend, variant.device, variant.precision, variant.cuda_graph, variant.baseline
    )
    cuda = variant.device == "cuda"
    gc.collect()  # free the previous row's engine (and its CUDA graph pool) before measuring
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        free_before = torch.cuda.mem_get_info()[0]
    engine = None
    try:
        t0 = time.perf_counter()
        engine = load_engine(
            card,
            variant.backend,
            variant.device,
            module=copy.deepcopy(module),
            example_inputs=spec.example_inputs,
            precision=variant.precision,
            cuda_graph=variant.cuda_graph,
            channels_last=False if variant.baseline else None,
            cache_dir=cfg.cache_dir,
        )
        row.load_s = time.perf_counter() - t0
        row.engine = f"{engine.label} {engine.precision}"
        times, rss, outputs = _time_engine(engine, _inputs_for(variant.device, inputs), variant.device, cfg)
        if cuda:  # while the engine is alive: TensorRT/onnxruntime memory is outside torch's allocator
            row.cuda_max_allocated_mb = torch.cuda.max_memory_allocated() / 2**20
            row.cuda_device_used_mb = max(0.0, (free_before - torch.cuda.mem_get_info()[0]) / 2**20)
    except BackendUnavailableError as exc:
        row.status, row.reason = "skipped", str(exc)
        return row, None
    except Exception as exc:
        log.warning(
            "benchmark row %s / %s failed: %s",
            spec.name,
            variant.label,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"
        return row, None
    finally:
        if engine is not None:
            engine.close()
    lat = np.asarray(times)
    row.iters = len(times)
    row.p50_ms, row.p90_ms, row.p99_ms = (float(np.percentile(lat, q)) for q in (50, 90, 99))
    row.mean_ms = float(lat.mean())
    row.throughput_per_s = 1000.0 / row.mean_ms
    row.rss_peak_mb = rss
    if cuda:
        torch_only = variant.backend == "torch"
        row.peak_mem_mb = (
            row.cuda_max_allocated_mb
            if torch_only
            else max(row.cuda_max_allocated_mb, row.cuda_device_used_mb)
        )
        row.mem_kind = "cuda_allocated" if torch_only else "cuda_device_used"
    else:
        row.peak_mem_mb, row.mem_kind = rss, "rss"
    return row, _as_numpy(outputs)


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        env["cuda"] = torch.version.cuda
    for name in ("onnx", "onnxruntime", "tensorrt"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "?")
            if name == "onnxruntime":
                env["onnxruntime_providers"] = module.get_available_providers()
        except Exception as exc:  # report, never fail the benchmark on an optional library
            env[name] = f"not importable ({type(exc).__name__}: {exc})"
    return env


def run(
    specs: Sequence[ExportSpec],
    cfg: BenchConfig,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every spec on every device of ``cfg``; returns {"environment", "config", "wall_s", "rows"}.

    ``on_row`` gets the partial result after every row (e.g. to write it to disk in case the run is killed).
    """
    started = time.perf_counter()
    rows: list[BenchRow] = []
    result = {"environment": environment(), "config": dataclasses.asdict(cfg), "wall_s": 0.0, "rows": []}

    def emit(row: BenchRow) -> None:
        rows.append(row)
        result["rows"] = [dataclasses.asdict(r) for r in rows]
        result["wall_s"] = time.perf_counter() - started
        if on_row is not None:
            on_row(result)

    for spec in specs:
        try:
            module = spec.build().eval()
            card = card_from_spec(spec, module)
            inputs = spec.example_inputs()
        except Exception as exc:
            log.warning("cannot benchmark %s: %s", spec.name, exc)
            for device in cfg.devices:
                row = _skipped(spec, Variant("torch", device, baseline=True), f"{type(exc).__name__}: {exc}")
                row.status = "error"
                emit(row)
            continue
        for device in cfg.devices:
            baseline: BenchRow | None = None
            reference: dict[str, np.ndarray] | None = None
            for variant in default_variants(device, cfg):
                elapsed = time.perf_counter() - started
                if cfg.budget_s is not None and elapsed > cfg.budget_s:
                    emit(_skipped(spec, variant, f"time budget of {cfg.budget_s:.0f} s used up"))
                    continue
                if device == "cuda" and not torch.cuda.is_available():
                    emit(_skipped(spec, variant, "no CUDA device (torch.cuda.is_available() is False)"))
                    continue
                log.info("benchmarking %s: %s", spec.name, variant.label)
                row, outputs = run_variant(spec, card, module, inputs, variant, cfg)
                if variant.baseline:
                    baseline, reference = row, outputs
                _compare(row, outputs, baseline, reference)
                emit(row)
        del module
        gc.collect()
    result["wall_s"] = time.perf_counter() - started
    return result


def _skipped(spec: ExportSpec, v: Variant, reason: str) -> BenchRow:
    return BenchRow(spec.name, v.backend, v.device, v.precision, v.cuda_graph, v.baseline, "skipped", reason)


def _compare(row: BenchRow, outputs: Any, baseline: BenchRow | None, reference: Any) -> None:
    if row.status != "ok" or baseline is None or baseline.status != "ok" or reference is None:
        return
    row.speedup_vs_baseline = baseline.p50_ms / row.p50_ms
    row.max_abs_diff_vs_baseline = _max_diff(outputs, reference)


def format_table(result: dict[str, Any]) -> Any:
    """A rich Table when rich is importable, else plain text."""
    headers = [
        *("model", "backend", "device", "prec", "graph", "p50 ms", "p90 ms", "p99 ms", "runs/s"),
        *("peak MB", "speed-up", "max|Δ|", "status"),
    ]
    lines = []
    for r in result["rows"]:
        lines.append(
            [
                r["model"],
                r["backend"] + (" (base)" if r["baseline"] else ""),
                r["device"],
                r["precision"],
                "yes" if r["cuda_graph"] else "",
                _fmt(r["p50_ms"], 3),
                _fmt(r["p90_ms"], 3),
                _fmt(r["p99_ms"], 3),
                _fmt(r["throughput_per_s"], 1),
                (_fmt(r["peak_mem_mb"], 0) + f" {r['mem_kind']}") if r["peak_mem_mb"] is not None else "",
                (_fmt(r["speedup_vs_baseline"], 2) + "x") if r["speedup_vs_baseline"] is not None else "",
                _fmt(r["max_abs_diff_vs_baseline"], 6, sci=True),
                r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason'][:90]}",
            ]
        )
    try:
        from rich.table import Table
    except ImportError:
        widths = [
            max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)
        ]
        rows = [headers, *lines]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    table = Table(title="perception_nodes inference benchmark")
    for h in headers:
        table.add_column(h, justify="right" if h.endswith(("ms", "/s", "MB", "up", "|")) else "left")
    for line in lines:
        table.add_row(*line)
    return table


def _fmt(value: float | None, digits: int, sci: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:.2e}" if sci else f"{value:.{digits}f}"


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Write atomically, so a run killed mid-write leaves the previous complete file."""
    atomic_write_bytes(Path(path), (json.dumps(result, indent=2, default=str) + "\n").encode())
