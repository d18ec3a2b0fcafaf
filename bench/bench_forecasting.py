#!/usr/bin/env python3
"""Forecasting speed on CPU: the ``small`` update, and ``official`` fast sampling vs the naive loop.

1. ``small`` forecast update (encode the frame + K = 5 samples x 100 points x H = 15 steps, history 8)
   with the ``SamplingConfig`` defaults: cold (every step from noise, 4 Euler steps) and warm (the
   streaming update: the previous forecast re-noised to t = 0.8 and refined with 1 Euler step, the newest
   step cold), 1 and 2 torch threads (--threads). Goal (issue 6): <= 50 ms.
2. ``official`` sizes (random weights, stand-in encoders): the fast sampler (encoders once, KV cache,
   K batched, 4 Euler steps cold; warm as above) and the naive released loop (no cache, global encoder
   re-run at every evaluation, 15 evaluations per step) in the same run, on the same inputs; the fast
   sampler also under bf16 autocast (each fast variant is timed after one untimed forecast). The full
   protocol (N = 100, K = 5, H = 15) takes on the order of an hour for the naive loop on 2 CPU cores, so by
   default both run a reduced protocol (--official-points/-samples/-horizon); the ratio is the figure.
   Goal: >= 100x (on a GPU: bench/gpu_forecasting.py runs the full protocol). It also counts both sides'
   arithmetic (FlopCounterMode; the naive loop on meta tensors, so the count costs nothing): where both
   run compute-bound at the same precision, as on a CPU, that ratio is the ceiling of the speedup.
  python bench/bench_forecasting.py [--json out.json] [--skip-official] [--official-full] [--arithmetic-full]
                                    [--weights W] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from perception_nodes.forecasting.config import SamplingConfig, official, small
from perception_nodes.forecasting.encoders import HieraTinyStandIn, ViTB32StandIn
from perception_nodes.forecasting.eval import aligned_warm
from perception_nodes.forecasting.network import ARFM
from perception_nodes.forecasting.sampler import FastSampler, ForecastInputs, sample_naive_official
from perception_nodes.forecasting.weights import load_model

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "arfm_small.safetensors"


def timed(fn, reps: int) -> dict:
    """Wall-clock milliseconds, and the process CPU time per call (``cpu_median_ms``: with one torch thread
    this is the wall time the call would take on an idle core, a fairer figure on a shared machine)."""
    fn()
    times, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    times.sort()
    cpu.sort()
    return {
        "median_ms": times[len(times) // 2],
        "min_ms": times[0],
        "max_ms": times[-1],
        "cpu_median_ms": cpu[len(cpu) // 2],
        "reps": reps,
    }


@torch.no_grad()
def bench_small(threads: int, reps: int, weights: Path = SHIPPED) -> dict:
    torch.set_num_threads(threads)
    model = load_model(weights) if weights.exists() else ARFM(small()).eval()
    n, k, h, s = 100, 5, 15, 8
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 240, 320, generator=gen)
    history = torch.rand(1, n, 1, 2, generator=gen) * 200 + torch.cumsum(
        torch.randn(1, n, s, 2, generator=gen), 2
    )
    observed, valid = torch.ones(1, n, s, dtype=torch.bool), torch.ones(1, n, dtype=torch.bool)
    sc = SamplingConfig()
    sampler = FastSampler(model, h, k, sc.euler_steps, sc.t_end, sc.warm_start_t, sc.warm_start_steps)
    warm = torch.randn(k, n, h, 2, generator=gen)
    warm[:, :, -1] = float("nan")  # the newest step starts cold

    def update(use_warm: bool):
        def run():
            small_image = torch.nn.functional.interpolate(image, size=(128, 128), mode="area")
            fmaps, tokens = model.encode_image(small_image)
            inp = ForecastInputs(
                fmaps, tokens, history, observed, valid, model.condition(1, None, None, "cpu")
            )
            return sampler.sample(inp, warm=warm if use_warm else None, generator=gen)

        return run

    return {
        "threads": threads,
        "weights": str(weights) if weights.exists() else "random",
        "sampling": dataclasses.asdict(sc),
        "cold": timed(update(False), reps),
        "warm": timed(update(True), reps),
    }


def tflops(fn) -> float:
    """Floating-point operations of one call (torch's FlopCounterMode: matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


@torch.no_grad()
def naive_tflops(cfg, samples: int, horizon: int, history: torch.Size) -> tuple[float, float]:
    """Arithmetic without running anything (the same code on meta tensors: shapes only): the naive loop with
    the global encoder re-run on K images at every evaluation, and the two encoders run once on the frame
    (both sides pay that; on real tensors the ViT's fused fast path escapes the counter)."""
    points = history[1]
    with torch.device("meta"):
        model, dense, glob = ARFM(cfg).eval(), HieraTinyStandIn().eval(), ViTB32StandIn().eval()
        image, images = torch.empty(1, 3, 512, 512), torch.empty(samples, 3, 512, 512)
        inp = ForecastInputs(
            dense(image),
            glob(image),
            torch.empty(history),
            torch.ones(history[:3], dtype=torch.bool),
            torch.ones(1, points, dtype=torch.bool),
            torch.empty(1, cfg.head_hidden_size),
            torch.empty(1, cfg.text_tokens, cfg.text_dim),
        )
        noise = torch.empty(samples, horizon, points, 2)
    loop = tflops(lambda: sample_naive_official(model, inp, noise, num_steps=16))
    once = tflops(lambda: (dense(image), glob(image)))
    return loop + 15 * horizon * tflops(lambda: glob(images)), once  # 15 evaluations per step


@torch.no_grad()
def arithmetic(model: ARFM, frame: ForecastInputs, noise: torch.Tensor) -> dict:
    """TFLOP of one forecast of the fast sampler (counted on a real run, cold and warm) and of the naive loop
    (``naive_tflops``), both with the encoders run once on the frame; their ratio."""
    sc = SamplingConfig()
    samples, horizon = noise.shape[:2]
    counted = FastSampler(
        model, horizon, samples, sc.euler_steps, sc.t_end, sc.warm_start_t, sc.warm_start_steps
    )
    cold = counted.sample(frame, noise)  # set-up (folded weights) outside the count, as outside the timing
    naive, encoders = naive_tflops(model.cfg, samples, horizon, frame.history.shape)
    fast = tflops(lambda: counted.sample(frame, noise)) + encoders
    warm = tflops(lambda: counted.sample(frame, noise, warm=aligned_warm(cold.numpy()))) + encoders
    return {
        "naive_tflop": naive + encoders,
        "fast_tflop": fast,
        "fast_warm_tflop": warm,
        "arithmetic_ratio": (naive + encoders) / fast,
        "arithmetic_ratio_warm": (naive + encoders) / warm,
    }


def official_frame(model: ARFM, dense, glob, image, history, pooled, text) -> ForecastInputs:
    """One frame's inputs for the ``official`` model: both encoders run on the image, every point observed
    and valid, camera-motion class 2 (unknown) and the text's pooled embedding as conditioning."""
    n = history.shape[1]
    cond = model.condition(1, torch.tensor([2]), pooled, "cpu")
    valid = torch.ones(1, n, dtype=torch.bool)
    return ForecastInputs(dense(image), glob(image), history, valid[:, :, None], valid, cond, text)


@torch.no_grad()
def arithmetic_full() -> dict:
    """``arithmetic`` for the full protocol (N = 100, K = 5, H = 15; runs the fast sampler only: ~1 min)."""
    cfg, gen = official(), torch.Generator().manual_seed(0)
    model, dense, glob = ARFM(cfg).eval(), HieraTinyStandIn().eval(), ViTB32StandIn().eval()
    image, history = torch.rand(1, 3, 512, 512, generator=gen), torch.rand(1, 100, 1, 2, generator=gen) * 256
    pooled = torch.randn(1, cfg.text_dim, generator=gen)
    text = torch.randn(1, cfg.text_tokens, cfg.text_dim, generator=gen)
    frame = official_frame(model, dense, glob, image, history, pooled, text)
    return arithmetic(model, frame, torch.randn(5, 15, 100, 2, generator=gen))


@torch.no_grad()
def bench_official(points: int, samples: int, horizon: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = official()
    model, dense, glob = ARFM(cfg).eval(), HieraTinyStandIn().eval(), ViTB32StandIn().eval()
    for p in model.head.parameters():
        p.add_(torch.randn_like(p) * 0.02)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 512, 512, generator=gen)
    history = torch.rand(1, points, 1, 2, generator=gen) * 256
    text, pooled = (
        torch.randn(1, 32, cfg.text_dim, generator=gen),
        torch.randn(1, cfg.text_dim, generator=gen),
    )
    noise = torch.randn(samples, horizon, points, 2, generator=gen)

    def inputs():
        return official_frame(model, dense, glob, image, history, pooled, text)

    sc = SamplingConfig()

    def fast_path(bf16: bool):
        """One untimed forecast (kernel set-up), then a cold and a warm-started (one frame later) one."""
        sampler = FastSampler(
            model, horizon, samples, sc.euler_steps, sc.t_end, sc.warm_start_t, sc.warm_start_steps
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            sampler.sample(inputs(), noise)
            start = time.perf_counter()
            out = sampler.sample(inputs(), noise)
            cold_ms = (time.perf_counter() - start) * 1e3
            warm = aligned_warm(out.float().numpy())
            start = time.perf_counter()
            sampler.sample(inputs(), noise, warm=warm)
            return out.float(), cold_ms, (time.perf_counter() - start) * 1e3

    fast, fast_ms, warm_ms = fast_path(False)
    low, low_ms, low_warm_ms = fast_path(True)
    images = image.expand(samples, -1, -1, -1)
    start = time.perf_counter()
    naive = sample_naive_official(model, inputs(), noise, reencode=lambda: glob(images), num_steps=16)
    naive_ms = (time.perf_counter() - start) * 1e3
    return {
        "points": points,
        "samples": samples,
        "horizon": horizon,
        "threads": threads,
        "fast_ms": fast_ms,
        "fast_warm_ms": warm_ms,
        "naive_ms": naive_ms,
        "speedup": naive_ms / fast_ms,
        "speedup_warm": naive_ms / warm_ms,
        "mean_abs_diff_px": float((fast - naive).abs().mean()),
        "fast_bf16_ms": low_ms,
        "fast_bf16_warm_ms": low_warm_ms,
        "speedup_bf16": naive_ms / low_ms,
        "speedup_bf16_warm": naive_ms / low_warm_ms,
        "bf16_vs_fp32_mean_abs_diff_px": float((low - fast).abs().mean()),
        **arithmetic(model, inputs(), noise),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", default="")
    ap.add_argument("--skip-official", action="store_true")
    ap.add_argument("--weights", default=str(SHIPPED), help="small model weights (random init if missing)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (small)")
    ap.add_argument(
        "--official-full", action="store_true", help="N=100, K=5, H=15 (about an hour on 2 cores)"
    )
    ap.add_argument("--official-points", type=int, default=16)
    ap.add_argument("--official-samples", type=int, default=2)
    ap.add_argument("--official-horizon", type=int, default=4)
    ap.add_argument(
        "--arithmetic-full", action="store_true", help="also count the full protocol's arithmetic (~1 min)"
    )
    args = ap.parse_args()
    out: dict = {"small": [bench_small(t, args.reps, Path(args.weights)) for t in args.threads]}
    for r in out["small"]:
        print(
            f"small update, {r['threads']} thread(s), {r['weights']} weights: "
            f"cold ({r['sampling']['euler_steps']} Euler steps) {r['cold']['median_ms']:.1f} ms, warm "
            f"(t={r['sampling']['warm_start_t']}, {r['sampling']['warm_start_steps']} step) "
            f"{r['warm']['median_ms']:.1f} ms (median of {args.reps}; goal <= 50 ms); process CPU time per "
            f"update: cold {r['cold']['cpu_median_ms']:.1f} ms, warm {r['warm']['cpu_median_ms']:.1f} ms"
        )
    if not args.skip_official:
        n, k, h = (
            (100, 5, 15)
            if args.official_full
            else (args.official_points, args.official_samples, args.official_horizon)
        )
        r = out["official"] = bench_official(n, k, h, threads=1)
        print(
            f"official sizes, N={n} K={k} H={h}, 1 thread: fast cold {r['fast_ms']:.0f} ms, "
            f"warm {r['fast_warm_ms']:.0f} ms, naive {r['naive_ms']:.0f} ms -> {r['speedup']:.1f}x cold, "
            f"{r['speedup_warm']:.1f}x warm (goal >= 100x); fast with bf16 autocast "
            f"{r['fast_bf16_ms']:.0f} ms cold, {r['fast_bf16_warm_ms']:.0f} ms warm -> "
            f"{r['speedup_bf16']:.1f}x, "
            f"{r['speedup_bf16_warm']:.1f}x (mean |bf16 - fp32| {r['bf16_vs_fp32_mean_abs_diff_px']:.3f} px)"
        )
        print(
            f"arithmetic: naive {r['naive_tflop']:.2f} TFLOP, fast {r['fast_tflop']:.3f} cold / "
            f"{r['fast_warm_tflop']:.3f} warm -> {r['arithmetic_ratio']:.1f}x / "
            f"{r['arithmetic_ratio_warm']:.1f}x "
            "(the speedup's ceiling at equal precision where both run compute-bound)"
        )
    if args.arithmetic_full:
        r = out["arithmetic_full"] = arithmetic_full()
        print(
            f"arithmetic, N=100 K=5 H=15: naive {r['naive_tflop']:.1f} TFLOP, fast {r['fast_tflop']:.2f} "
            f"cold / {r['fast_warm_tflop']:.2f} warm -> {r['arithmetic_ratio']:.1f}x / "
            f"{r['arithmetic_ratio_warm']:.1f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
