"""``perception-nodes eval tracking`` (wired by cli.py): TAP-Vid metrics of the online tracker.

Queries are the ground-truth tracks at their first visible frame ("first" mode); the tracker follows them
online without re-seeding; metrics at the 256 x 256 scale. Writes ``tracking_eval.json`` and a PNG of tracks.
The LK tracker has no trainable parameters, so there is no ``train tracking``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from perception_nodes.tracking.config import TrackerConfig
from perception_nodes.tracking.metrics import tapvid_metrics, track_queries
from perception_nodes.tracking.tracker import PointTracker


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="*", help="sim bags (folders/.mcap) with ground-truth tracks")
    parser.add_argument("--out", required=True, help="folder for tracking_eval.json and tracking_eval.png")
    parser.add_argument("--sim-episodes", type=int, default=0, help="generate this many held-out episodes")
    parser.add_argument("--sim-seed", type=int, default=900000, help="seed of the first generated episode")
    parser.add_argument("--sim-frames", type=int, default=24, help="frames per generated episode")
    parser.add_argument("--synthetic", type=int, default=0, help="use this many synthetic clips (no MuJoCo)")
    parser.add_argument("--win-size", type=int, default=TrackerConfig().win_size, help="LK window")


def evaluate_clip(clip, config: TrackerConfig) -> tuple[dict, np.ndarray, np.ndarray]:
    n, t = clip.visible.shape
    qf = np.where(clip.visible.any(1), clip.visible.argmax(1), t)
    queries = clip.tracks_2d[np.arange(n), np.minimum(qf, t - 1)]
    tracker = PointTracker(
        dataclasses.replace(config, num_points=n, seeding="none", max_occluded_frames=10**6)
    )
    started = time.perf_counter()
    pred, pred_vis = track_queries(tracker, clip.rgb, queries, qf)
    ms = (time.perf_counter() - started) / t * 1e3
    h, w = clip.rgb.shape[1:3]
    metrics = tapvid_metrics(clip.tracks_2d, clip.visible, pred, pred_vis, (w, h), qf)
    metrics["ms_per_frame"] = ms
    return metrics, pred, pred_vis


def _draw(clip, pred: np.ndarray, pred_vis: np.ndarray, path: Path) -> None:
    img = clip.rgb[-1].copy()
    for n in range(len(pred)):
        ok = np.isfinite(pred[n]).all(axis=1)
        pts = np.round(pred[n][ok]).astype(np.int32).reshape(-1, 1, 2)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, (255, 200, 0), 1, cv2.LINE_AA)
        if ok[-1]:
            colour = (0, 255, 0) if pred_vis[n, -1] else (255, 0, 0)
            cv2.circle(img, tuple(int(v) for v in np.round(pred[n, -1])), 2, colour, -1)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def iter_episodes(args: argparse.Namespace) -> Iterator:
    """Episodes from bags, generated sim episodes and/or synthetic clips, one at a time.

    ``args`` carries ``bags``, ``sim_episodes``, ``sim_seed``, ``sim_frames`` and ``synthetic`` (the data
    arguments of ``eval tracking`` and of ``train/eval forecasting``).
    """
    if args.bags:
        from perception_nodes.sim.dataset import read_episodes

        yield from read_episodes(args.bags)
    if args.sim_episodes:
        from perception_nodes.sim.config import SimConfig
        from perception_nodes.sim.world import generate_episode

        cfg = SimConfig(frames=args.sim_frames)
        yield from (generate_episode(cfg, args.sim_seed + i) for i in range(args.sim_episodes))
    if args.synthetic:
        from perception_nodes.tracking.synthetic import make_clip

        yield from (make_clip(args.sim_seed + i, num_frames=args.sim_frames) for i in range(args.synthetic))


def load_clips(args: argparse.Namespace) -> list:
    """Every episode of ``iter_episodes(args)``; ValueError when none was asked for."""
    clips = list(iter_episodes(args))
    if not clips:
        raise ValueError("give sim bags, --sim-episodes N or --synthetic N")
    return clips


def run_eval(args: argparse.Namespace) -> int:
    clips = load_clips(args)
    config = TrackerConfig(win_size=args.win_size)
    rows, drawn = [], False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        metrics, pred, pred_vis = evaluate_clip(clip, config)
        rows.append(metrics)
        if not drawn:
            _draw(clip, pred, pred_vis, out / "tracking_eval.png")
            drawn = True
    keys = ("delta_avg", "occlusion_accuracy", "average_jaccard", "ms_per_frame")
    summary = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    summary.update({"clips": len(rows), "config": dataclasses.asdict(config), "per_clip": rows})
    (out / "tracking_eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{len(rows)} clips | delta_avg {summary['delta_avg']:.3f} | occlusion accuracy "
        f"{summary['occlusion_accuracy']:.3f} | AJ {summary['average_jaccard']:.3f} | "
        f"{summary['ms_per_frame']:.1f} ms/frame -> {out / 'tracking_eval.json'}"
    )
    return 0
