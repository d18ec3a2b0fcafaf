#!/usr/bin/env python3
"""Time the ``official``-size ARFM forecast update on one CUDA GPU; write JSON to argv[1] (< 2 minutes).

Needs only torch (and this repository's torch-only modules perception_nodes.forecasting.{config, network,
sampler, encoders}); random weights; stand-in encoders with the official shapes (SAM2.1-Hiera-Tiny-like
dense at 512², CLIP-ViT-B/32-like global at 224²).

Protocol (the released evaluation): 1 context frame, N = 100 query points, K = 5 samples, H = 15 steps,
text prefix of 32 tokens, camera-motion class "unknown". Measured, in one run on the same GPU:
- ``naive``: the released loop (no KV cache, fusion re-run over the whole sequence every step, global
  encoder re-run at every Euler evaluation, 15 evaluations per step), fp32 (TF32 allowed), once;
- ``fast_*``: dense + global encoders once, history prefilled once, KV cache, K batched, 4 Euler steps
  (cold) or warm start at t = 0.8 with 2 or 1 steps (1 is the default); eager fp32 / eager bf16
  autocast / CUDA graphs + bf16.
Usage: python bench/gpu_forecasting.py out.json
       python bench/gpu_forecasting.py out.json --cpu-smoke   (tiny sizes on the CPU: checks the script runs)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from perception_nodes.forecasting.config import official  # noqa: E402
from perception_nodes.forecasting.encoders import HieraTinyStandIn, ViTB32StandIn  # noqa: E402
from perception_nodes.forecasting.network import ARFM, count_parameters  # noqa: E402
from perception_nodes.forecasting.sampler import (  # noqa: E402
    CudaGraphSampler,
    FastSampler,
    ForecastInputs,
    sample_naive_official,
)

N, K, H = 100, 5, 15
BUDGET_S = 100.0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int, deadline: float) -> dict:
    """Median / min / max milliseconds of ``fn()`` (synchronised), after one warm-up call."""
    fn()
    sync()
    times = []
    for i in range(reps):
        if i > 0 and time.time() > deadline:
            break
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1], "reps": len(times)}


def main(out_path: str, smoke: bool = False) -> int:
    global N, K, H
    began = time.time()
    deadline = began + BUDGET_S
    result: dict = {"errors": {}, "timings": {}}
    cfg = official()
    if smoke:  # the script's code paths on the CPU at toy sizes (no CUDA graphs; no timing claims)
        N, K, H = 8, 2, 3
        cfg = dataclasses.replace(
            cfg,
            hidden_size=32,
            num_layers=4,
            num_heads=4,
            intermediate_size=40,
            head_hidden_size=32,
            head_layers=2,
            head_heads=4,
            head_intermediate_size=40,
        )
        dev = torch.device("cpu")
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        result["errors"]["cuda"] = "CUDA not available"
        Path(out_path).write_text(json.dumps(result, indent=2))
        return 1
    else:
        dev = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        result["device"] = torch.cuda.get_device_name(0)
    result["protocol"] = {
        "points": N,
        "samples": K,
        "horizon": H,
        "history": 1,
        "text_tokens": 32,
        "smoke": smoke,
    }
    result["torch"] = torch.__version__
    torch.manual_seed(0)
    with torch.device(dev):
        model = ARFM(cfg).eval()
        size = 64 if smoke else 512
        dense = HieraTinyStandIn(image_size=size).eval()
        glob = ViTB32StandIn(image_size=64 if smoke else 224, depth=1 if smoke else 12).eval()
        with torch.no_grad():  # non-zero head output (the DiT init zeroes it)
            for p in model.head.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    result["parameters_m"] = {
        "arfm_trainable": count_parameters(model) / 1e6,
        "dense_stand_in": count_parameters(dense) / 1e6,
        "global_stand_in": count_parameters(glob) / 1e6,
    }
    gen = torch.Generator(device=dev).manual_seed(0)
    image = torch.rand(1, 3, size, size, device=dev, generator=gen)
    history = torch.rand(1, N, 1, 2, device=dev, generator=gen) * 256
    observed = torch.ones(1, N, 1, dtype=torch.bool, device=dev)
    valid = torch.ones(1, N, dtype=torch.bool, device=dev)
    text = torch.randn(1, cfg.text_tokens, cfg.text_dim, device=dev, generator=gen)
    pooled = torch.randn(1, cfg.text_dim, device=dev, generator=gen)
    noise = torch.randn(K, H, N, 2, device=dev, generator=gen)
    warm = torch.randn(K, N, H, 2, device=dev, generator=gen)
    warm[:, :, -1] = float("nan")  # the newest step has no previous forecast: cold

    @torch.no_grad()
    def inputs():
        fmaps, tokens = dense(image), glob(image)
        cond = model.condition(1, torch.tensor([2], device=dev), pooled, dev)
        return ForecastInputs(fmaps, tokens, history, observed, valid, cond, text)

    def update(sampler, use_warm=False, bf16=False):
        def run():
            with (
                torch.no_grad(),
                torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False),
            ):
                return sampler.sample(inputs(), noise, warm if use_warm else None)

        return run

    fast = FastSampler(model, H, K, euler_steps=4, warm_start_t=0.8, warm_start_steps=2)
    graph = (FastSampler if smoke else CudaGraphSampler)(
        model, H, K, euler_steps=4, warm_start_t=0.8, warm_start_steps=2
    )
    graph1 = (FastSampler if smoke else CudaGraphSampler)(
        model, H, K, euler_steps=4, warm_start_t=0.8, warm_start_steps=1
    )
    cases = [
        ("encoders_fp32", lambda: inputs(), 10),
        ("fast_eager_fp32_cold4", update(fast), 5),
        ("fast_eager_bf16_cold4", update(fast, bf16=True), 5),
        ("fast_graph_bf16_cold4", update(graph, bf16=True), 10),
        ("fast_graph_bf16_warm2", update(graph, use_warm=True, bf16=True), 10),
        ("fast_graph_bf16_warm1", update(graph1, use_warm=True, bf16=True), 10),
    ]
    for name, fn, reps in cases:
        try:
            result["timings"][name] = timed(fn, reps, deadline)
        except Exception as exc:
            result["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        sync()

    try:  # numerical agreement of the graphed sampler with the eager one (same noise)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False):
            a = fast.sample(inputs(), noise)
            b = graph.sample(inputs(), noise)
        result["graph_vs_eager_max_abs_px"] = float((a.float() - b.float()).abs().max())
    except Exception as exc:
        result["errors"]["graph_check"] = f"{type(exc).__name__}: {exc}"

    def naive():
        with torch.no_grad():
            inp = inputs()
            images = image.expand(K, -1, -1, -1)
            return sample_naive_official(model, inp, noise, reencode=lambda: glob(images), num_steps=16)

    try:
        if smoke or time.time() < deadline - 30:
            result["timings"]["naive_official_fp32"] = timed(naive, 1, deadline + 60)
        else:
            result["errors"]["naive_official_fp32"] = "skipped: time budget"
    except Exception as exc:
        result["errors"]["naive_official_fp32"] = f"{type(exc).__name__}: {exc}"

    t = result["timings"]
    fast_names = [n for n in t if n.startswith("fast_")]
    if fast_names:
        best = min(fast_names, key=lambda n: t[n]["median_ms"])
        result["best_fast"] = {
            "case": best,
            "median_ms": t[best]["median_ms"],
            "goal_ms": 30.0,
            "meets_goal": t[best]["median_ms"] <= 30.0,
        }
        if "naive_official_fp32" in t:
            result["speedup_naive_over_best_fast"] = (
                t["naive_official_fp32"]["median_ms"] / t[best]["median_ms"]
            )
    result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else 0.0
    result["wall_s"] = time.time() - began
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "errors"}, indent=1))
    if result["errors"]:
        print("errors:", json.dumps(result["errors"], indent=1))
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sys.exit(main(args[0] if args else "gpu_forecasting.json", smoke="--cpu-smoke" in sys.argv))
