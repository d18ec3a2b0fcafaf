"""Sim generation speed: frames/s with all ground truth and bag writing, and where the time goes.

    .venv/bin/python bench/bench_sim.py                       # 320x240, 24 frames, 2 workers
    .venv/bin/python bench/bench_sim.py --size 160x120 --workers 1 --episodes 2

1. one process: per-phase milliseconds per frame (scene build + settle, physics, render, GT, bag write);
2. the CLI's parallel path (``cli.generate``, process pool): end-to-end frames/s incl. process start.
Goal on the 2-core machine: >= 15 frames/s at 320x240.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from perception_nodes.sim.cli import episode_seed, generate, parse_size
from perception_nodes.sim.config import SimConfig


def phases(cfg: SimConfig, episodes: int, tmp: Path) -> None:
    from perception_nodes.sim.bagio import write_episode_bag
    from perception_nodes.sim.world import generate_episode

    generate_episode(SimConfig(width=cfg.width, height=cfg.height, frames=2), 999)  # warm up GL + imports
    timings: dict[str, float] = {}
    frames = 0
    cpu0 = time.process_time()
    for i in range(episodes):
        ep = generate_episode(cfg, episode_seed(1, i), timings)
        t = time.perf_counter()
        write_episode_bag(ep, tmp / f"phase_{i}", cfg)
        timings["bag write"] = timings.get("bag write", 0.0) + time.perf_counter() - t
        frames += ep.num_frames
    cpu = time.process_time() - cpu0
    total = sum(timings.values())
    print(f"one process, {episodes} episode(s) x {cfg.frames} frames at {cfg.width}x{cfg.height}:")
    for name, sec in timings.items():
        print(f"  {name:<10} {1000 * sec / frames:7.1f} ms/frame  ({100 * sec / total:4.1f} %)")
    print(
        f"  {'total':<10} {1000 * total / frames:7.1f} ms/frame  -> {frames / total:.1f} frames/s per process"
    )
    print(f"  CPU time   {1000 * cpu / frames:7.1f} ms/frame (all threads; what a free core would take)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(320, 240))
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--episodes", type=int, default=4, help="episodes for the parallel run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-shadows", action="store_true")
    args = parser.parse_args()
    cfg = SimConfig(width=args.size[0], height=args.size[1], frames=args.frames, shadows=not args.no_shadows)
    print(
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset: chosen by perception_nodes.sim.gl)')}, "
        f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        phases(cfg, max(1, args.episodes // 2), tmp)
        start = time.perf_counter()
        res = generate(cfg, args.episodes, 0, tmp / "parallel", args.workers)
        wall = time.perf_counter() - start
        frames = sum(r["frames"] for r in res)
        print(
            f"parallel: {args.episodes} episodes, {args.workers} worker(s): {frames} frames in {wall:.1f} s "
            f"= {frames / wall:.1f} frames/s end to end (incl. process start-up)"
        )
        size = sum(f.stat().st_size for f in (tmp / "parallel").rglob("*") if f.is_file())
        print(f"bag size: {size / frames / 1e6:.2f} MB/frame")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
