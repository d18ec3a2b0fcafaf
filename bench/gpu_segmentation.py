"""GPU timing of EISEN's ``official`` config at 512² (fast path, fp16, CUDA graphs); torch only.

    python bench/gpu_segmentation.py OUT_DIR [--device cuda] [--iters 30] [--no-compile]

Times (CUDA events, median of ``--iters`` runs, random weights, batch 1):
  backbone_fp16_graph   backbone + decoder + key/query head, fp16, CUDA graph
  fast_fp32_eager       whole fast path before connected components, fp32, eager
  fast_fp16_eager       same, autocast fp16, eager
  fast_fp16_graph       same, captured in one CUDA graph (replayed)
  fast_fp16_compiled_graph  same with the KProp step and competition compiled by torch.compile, in a graph
  reference_fp32        the official computation (per-edge gather, sparse KProp, categorical agents), once
  cc_cpu                OpenCV connected components on the 128² label map (CPU)
Also: agreement (segment-matched IoU) of fp16 graph labels vs fp32 eager labels on the same noise.
Prints the figures and writes OUT_DIR/gpu_segmentation.json. Designed to finish in < 2 minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.segmenter import EisenSegmenter, make_noise, segment_reference


def cuda_time(fn, iters: int, device: str) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs (CUDA events; wall clock on CPU)."""
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def graph_of(fn, device: str):
    """Capture ``fn`` (static inputs) in a CUDA graph; returns replay()."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def matched_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over segments of ``a`` of the best IoU with a segment of ``b`` (area-weighted)."""
    total, score = 0, 0.0
    for k in np.unique(a):
        m = a == k
        best = max(((m & (b == j)).sum() / (m | (b == j)).sum()) for j in np.unique(b[m]))
        score += best * m.sum()
        total += m.sum()
    return float(score / max(total, 1))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", help="folder for gpu_segmentation.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=100.0, help="skip optional parts after this")
    args = parser.parse_args()
    t_start = time.perf_counter()
    dev = args.device
    cuda = dev.startswith("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    cfg = EisenConfig.official()
    seg = EisenSegmenter(cfg).to(dev).eval()
    H, W = cfg.input_size
    image = torch.randint(0, 256, (1, 3, H, W), device=dev).float()
    noise = {k: v.to(dev) for k, v in make_noise(cfg, 1, seed=0).items()}
    inputs = (image, *noise.values())
    res: dict = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "config": "official",
        "input": [H, W],
        "map": list(cfg.map_size),
        "samples_per_node": seg.layout.num_samples,
        "kprop_iters": cfg.kprop_iters,
        "batch": 1,
        "weights": "random (seeded)",
    }
    f16 = torch.float16

    def fast_fp16():
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=f16 if cuda else torch.bfloat16):
            return seg(*inputs)

    def fast_fp32():
        return seg(*inputs)

    def backbone():
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=f16 if cuda else torch.bfloat16):
            return seg.net(image)

    with torch.inference_mode():
        res["fast_fp32_eager_ms"] = cuda_time(fast_fp32, max(3, args.iters // 5), dev)
        ref_labels = fast_fp32()[0][0].cpu().numpy()
        res["fast_fp16_eager_ms"] = cuda_time(fast_fp16, max(3, args.iters // 5), dev)
        if cuda:
            replay, _ = graph_of(backbone, dev)
            res["backbone_fp16_graph_ms"] = cuda_time(replay, args.iters, dev)
            replay, out = graph_of(fast_fp16, dev)
            res["fast_fp16_graph_ms"] = cuda_time(replay, args.iters, dev)
            replay()
            torch.cuda.synchronize()
            res["fp16_graph_vs_fp32_agreement"] = matched_agreement(out[0][0].cpu().numpy(), ref_labels)
        print(json.dumps(res, indent=1), flush=True)
        if cuda and not args.no_compile and time.perf_counter() - t_start < args.budget_s * 0.4:
            res.update(_compiled(seg, inputs, args, dev, ref_labels))
        if time.perf_counter() - t_start < args.budget_s * 0.8:
            t0 = time.perf_counter()
            segment_reference(seg.net.float(), image.float(), cfg, seed=0) if not cuda else _ref_cuda(
                seg, image, cfg
            )
            if cuda:
                torch.cuda.synchronize()
            res["reference_fp32_ms"] = (time.perf_counter() - t0) * 1e3
    res["cc_cpu_ms"] = _cc_time(ref_labels, cfg)
    res["total_script_s"] = time.perf_counter() - t_start
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_segmentation.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))
    return 0


def _compiled(seg, inputs, args, dev, ref_labels) -> dict:
    """KProp propagation step and competition compiled (inductor), everything in one CUDA graph."""
    from perception_nodes.segmentation import competition as comp_mod
    from perception_nodes.segmentation import kprop as kprop_mod

    out: dict = {}
    saved = kprop_mod._propagate, comp_mod.competition
    try:
        t0 = time.perf_counter()
        kprop_mod._propagate = torch.compile(kprop_mod._propagate, dynamic=False)
        comp_mod.competition = torch.compile(comp_mod.competition, dynamic=False)
        import perception_nodes.segmentation.segmenter as seg_mod

        seg_mod.competition = comp_mod.competition

        def run():
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                return seg(*inputs)

        run()
        torch.cuda.synchronize()
        out["compile_s"] = time.perf_counter() - t0
        replay, res = graph_of(run, dev)
        out["fast_fp16_compiled_graph_ms"] = cuda_time(replay, args.iters, dev)
        replay()
        torch.cuda.synchronize()
        out["compiled_agreement"] = matched_agreement(res[0][0].cpu().numpy(), ref_labels)
    except Exception as exc:
        out["compiled_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        kprop_mod._propagate, comp_mod.competition = saved
        import perception_nodes.segmentation.segmenter as seg_mod

        seg_mod.competition = saved[1]
    print(json.dumps(out), flush=True)
    return out


def _ref_cuda(seg, image, cfg):
    """The official computation on the GPU (sparse KProp on CUDA)."""
    return segment_reference(seg.net.float(), image.float(), cfg, seed=0)


def _cc_time(labels: np.ndarray, cfg) -> float:
    from perception_nodes.segmentation.processor import connected_segments

    t0 = time.perf_counter()
    for _ in range(5):
        connected_segments(labels, cfg.min_segment_area, cfg.max_segments)
    return (time.perf_counter() - t0) / 5 * 1e3


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    raise SystemExit(main())
