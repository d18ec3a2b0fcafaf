"""CPU benchmark of EISEN segmentation; prints figures (and writes JSON with --json PATH).

    python bench/bench_segmentation.py [--threads 1] [--frames 10] [--official-reps 3] [--skip-reference]
                                       [--json out.json]

1. ``small`` at 256² (shipped weights when present): latency per frame of the streaming component
   (resize, network, affinities, KProp, competition, connected components, stable ids, statistics), for
   fp32 / bf16 KProp with and without early exit; the median over ``--frames`` sim-like frames.
2. Frames at camera resolution and depth-aware refinement (``segmentation.depth_refine``, RGB-D cameras):
   on 256² and 640×480 sim frames with exact depth, the cut at the supporting plane alone, and the bf16
   component per frame with and without depth in the same run (at 640×480 the frame is resized to the
   network's 256² and the segments are upsampled back to it: a camera's stream; ``--skip-depth`` to leave
   out).
3. ``official`` at 512² (random weights): the fast path and the reference path (the official computation:
   per-edge gathered logits, sparse graph built per frame, sparse KProp, categorical competition) in the
   same run, whole pipeline and the part after the backbone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception_nodes.segmentation.component import EisenComponent, load_model
from perception_nodes.segmentation.config import EisenComponentConfig, EisenConfig
from perception_nodes.segmentation.export import example_image
from perception_nodes.segmentation.segmenter import EisenSegmenter, make_noise, segment_reference
from perception_nodes.types import Frame


def _frames(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Sim frames when the simulator is available, else synthetic pictures."""
    try:
        from perception_nodes.sim import generate_episode
        from perception_nodes.sim.config import SimConfig

        ep = generate_episode(SimConfig(width=size[1], height=size[0], frames=n, num_tracks=0), 424242)
        return list(ep.rgb)
    except Exception:
        cfg = EisenConfig.small(input_size=size)
        return [example_image(cfg)[0].transpose(1, 2, 0)] * n


def bench_small(args) -> dict:
    cfg, net = load_model("", "small")
    frames = _frames(args.frames, cfg.input_size)
    out = {}
    for name, dtype, tol in (
        ("fp32", "float32", 0.0),
        ("fp32_early_exit", "float32", args.tol),
        ("bf16", "bfloat16", 0.0),
        ("bf16_early_exit", "bfloat16", args.tol),
    ):
        model_cfg = dataclasses.replace(cfg, kprop_dtype=dtype)
        comp = EisenComponent(
            EisenComponentConfig(early_exit_tol=tol, overlay=False), net=net, model_config=model_cfg
        )
        comp.step(Frame(0, frames[0]))  # warm-up
        times, parts = [], []
        for i, rgb in enumerate(frames):
            t0 = time.perf_counter()
            r = comp.step(Frame(i + 1, rgb))
            times.append((time.perf_counter() - t0) * 1e3)
            parts.append(r.timings_ms)
        out[name] = {
            "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)),
            "network_ms": float(np.median([p["network"] for p in parts])),
            "post_ms": float(np.median([p["post"] for p in parts])),
        }
        print(
            f"small 256² {name:>16}: {out[name]['median_ms']:7.1f} ms/frame median "
            f"(p90 {out[name]['p90_ms']:.1f}; net+kprop+competition {out[name]['network_ms']:.1f}, "
            f"CC+ids+stats {out[name]['post_ms']:.1f})",
            flush=True,
        )
    with torch.inference_mode():
        image = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float()
        t0 = time.perf_counter()
        for _ in range(5):
            net(image)
        out["backbone_ms"] = (time.perf_counter() - t0) / 5 * 1e3
    print(f"small 256² backbone+affinity head alone: {out['backbone_ms']:.1f} ms", flush=True)
    return out


def bench_depth(args) -> dict:
    from perception_nodes.segmentation.depth_refine import DepthRefineConfig, refine_with_depth
    from perception_nodes.sim import generate_episode
    from perception_nodes.sim.config import SimConfig

    cfg, net = load_model("", "small")
    out = {}
    for width, height in ((256, 256), (640, 480)):
        ep = generate_episode(SimConfig(width=width, height=height, frames=args.frames, num_tracks=0), 424242)
        comp = EisenComponent(
            EisenComponentConfig(overlay=False, kprop_dtype="bfloat16"), net=net, model_config=cfg
        )
        labels = [comp.step(Frame(i + 1, rgb)).labels for i, rgb in enumerate(ep.rgb)]
        times = []
        for lab, depth in zip(labels, ep.depth, strict=True):
            t0 = time.perf_counter()
            refine_with_depth(lab, depth, ep.camera, DepthRefineConfig())
            times.append((time.perf_counter() - t0) * 1e3)
        out[f"refine_{width}x{height}_ms"] = float(np.median(times))
        print(
            f"depth refinement alone at {width}x{height}: {np.median(times):.1f} ms/frame median", flush=True
        )
        for kind, with_depth in (("rgb", False), ("rgbd", True)):
            name = f"bf16_{kind}_{width}x{height}"
            comp = EisenComponent(
                EisenComponentConfig(overlay=False, kprop_dtype="bfloat16"), net=net, model_config=cfg
            )
            times = []
            for i in range(len(ep.rgb)):
                depth, camera = (ep.depth[i], ep.camera) if with_depth else (None, None)
                t0 = time.perf_counter()
                comp.step(Frame(i + 1, ep.rgb[i], depth, camera))
                times.append((time.perf_counter() - t0) * 1e3)
            out[f"{name}_ms"] = float(np.median(times[1:]))
            print(
                f"small, {width}x{height} frames, bf16 {kind}: {out[f'{name}_ms']:.1f} ms/frame median",
                flush=True,
            )
    return out


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


@torch.inference_mode()
def bench_official(args) -> dict:
    torch.manual_seed(0)
    cfg = EisenConfig.official()
    seg = EisenSegmenter(cfg).eval()
    image = torch.from_numpy(example_image(cfg)).float()
    noise = make_noise(cfg, 1, seed=0)
    out: dict = {}
    t0 = time.perf_counter()
    seg.net(image)
    out["backbone_ms"] = (time.perf_counter() - t0) * 1e3
    seg(image, *noise.values())  # warm-up
    variants = (
        ("fast", "float32", 0.0),
        ("fast_bf16", "bfloat16", 0.0),
        ("fast_bf16_early_exit", "bfloat16", args.tol),
    )
    for name, dtype, tol in variants:
        variant = EisenSegmenter(dataclasses.replace(cfg, kprop_dtype=dtype, kprop_tol=tol), seg.net, tol > 0)
        out[f"{name}_ms"] = _median_ms(lambda v=variant: v(image, *noise.values()), args.official_reps)
        print(
            f"official 512² {name}: {out[f'{name}_ms']:.0f} ms (median of {args.official_reps}; "
            f"backbone {out['backbone_ms']:.0f} ms)",
            flush=True,
        )
    if args.skip_reference:
        return out
    reps = max(1, args.official_reps // 2)
    out["reference_ms"] = _median_ms(lambda: segment_reference(seg.net, image, cfg, seed=0), reps)
    print(f"official 512² reference path: {out['reference_ms']:.0f} ms (median of {reps})", flush=True)
    for name, _, _ in variants:
        total = out["reference_ms"] / out[f"{name}_ms"]
        after = (out["reference_ms"] - out["backbone_ms"]) / max(out[f"{name}_ms"] - out["backbone_ms"], 1e-6)
        out[f"speedup_{name}"] = {"total": total, "after_backbone": after}
        print(f"  {name}: {total:.1f}x faster overall, {after:.1f}x after the (shared) backbone", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--tol", type=float, default=4e-3, help="early-exit tolerance (mean state change)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--official-reps", type=int, default=3, help="official runs per fast variant (reference: half)"
    )
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-depth", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    print(f"EISEN CPU benchmark: {result['cpu']}, {args.threads} thread(s), torch {torch.__version__}")
    if not args.skip_small:
        result["small"] = bench_small(args)
    if not args.skip_depth:
        result["depth"] = bench_depth(args)
    if not args.skip_official:
        result["official"] = bench_official(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
