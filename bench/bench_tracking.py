#!/usr/bin/env python3
"""Tracker benchmark: speed (256 points at 320x240) and TAP-Vid accuracy on held-out sim episodes.

Prints figures and optionally writes JSON. Held-out sim seeds start at 900000 (training never uses them).
  python bench/bench_tracking.py [--episodes 8] [--frames 24] [--json out.json]
Goals (issue 6): <= 10 ms/frame for 256 points at 320x240 on CPU; delta_avg >= 0.85 on sim held-out.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("MUJOCO_GL", "osmesa")

from perception_nodes.tracking.cli import evaluate_clip
from perception_nodes.tracking.config import TrackerConfig
from perception_nodes.tracking.synthetic import make_clip
from perception_nodes.tracking.tracker import PointTracker


def speed(frames: np.ndarray, points: int = 256) -> dict:
    """ms per frame of the live tracker (re-seeding on) with ``points`` slots."""
    tracker = PointTracker(TrackerConfig(num_points=points))
    tracker.step(frames[0])
    times = []
    for f in frames[1:]:
        start = time.perf_counter()
        state = tracker.step(f)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "median_ms": times[len(times) // 2],
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "live_points": int(state.alive.sum()),
    }


def static_delta(clip) -> float:
    from perception_nodes.tracking.metrics import tapvid_metrics

    n, t = clip.visible.shape
    qf = np.where(clip.visible.any(1), clip.visible.argmax(1), t)
    q = clip.tracks_2d[np.arange(n), np.minimum(qf, t - 1)]
    h, w = clip.rgb.shape[1:3]
    return tapvid_metrics(
        clip.tracks_2d, clip.visible, np.repeat(q[:, None], t, 1), np.ones((n, t), bool), (w, h), qf
    )["delta_avg"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--seed", type=int, default=900000)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    out: dict = {"config": TrackerConfig().__dict__}
    synthetic = make_clip(0, num_frames=40)
    out["speed_synthetic_256"] = speed(synthetic.rgb)
    print(f"synthetic 320x240, 256 points: {out['speed_synthetic_256']['median_ms']:.2f} ms/frame (median)")
    try:
        from perception_nodes.sim.config import SimConfig
        from perception_nodes.sim.world import generate_episode
    except ImportError as exc:  # pragma: no cover
        print(f"sim unavailable ({exc}): sim figures skipped")
        return
    rows, statics = [], []
    for i in range(args.episodes):
        ep = generate_episode(SimConfig(frames=args.frames), args.seed + i)
        if i == 0:
            out["speed_sim_256"] = speed(ep.rgb)
            print(f"sim 320x240, 256 points: {out['speed_sim_256']['median_ms']:.2f} ms/frame (median)")
        metrics, _, _ = evaluate_clip(ep, TrackerConfig())
        rows.append(metrics)
        statics.append(static_delta(ep))
        print(
            f"  episode {args.seed + i}: delta_avg {metrics['delta_avg']:.3f}, occ acc "
            f"{metrics['occlusion_accuracy']:.3f}, AJ {metrics['average_jaccard']:.3f}, "
            f"static {statics[-1]:.3f}"
        )
    keys = ("delta_avg", "occlusion_accuracy", "average_jaccard", "ms_per_frame")
    out["sim_heldout"] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["sim_heldout"]["static_baseline_delta_avg"] = float(np.mean(statics))
    out["sim_heldout"]["episodes"] = len(rows)
    s = out["sim_heldout"]
    print(
        f"sim held-out ({len(rows)} x {args.frames} frames): delta_avg {s['delta_avg']:.3f} (goal >= 0.85; "
        f"static baseline {s['static_baseline_delta_avg']:.3f}), "
        f"occlusion accuracy {s['occlusion_accuracy']:.3f}, AJ {s['average_jaccard']:.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
