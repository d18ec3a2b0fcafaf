"""``perception-nodes sim``: generate MuJoCo tabletop episodes as rosbag2 (MCAP) bags, in parallel.

    perception-nodes sim --episodes 8 --frames 24 --size 320x240 --seed 0 --out data/sim --preview --workers 2

Episode i of seed S is generated from its own seed (``episode_seed(S, i)``), so the output does not depend on
the number of workers. Bags are named ``ep_00000`` ... inside ``--out``. ``--preview`` writes
``preview.png`` (a contact sheet of the first episodes, read back from the bags).
On a GPU machine: ``MUJOCO_GL=egl python -m perception_nodes.sim.cli --episodes 1000 --workers 16 ...``
(this module runs stand-alone too).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from perception_nodes.sim.config import SimConfig

log = logging.getLogger("perception_nodes.sim")
PREVIEW_EPISODES = 4


def episode_seed(seed: int, index: int) -> int:
    """A 32-bit seed for episode ``index`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimConfig()
    parser.add_argument("--episodes", type=int, default=4, help="number of episodes (bags) to generate")
    parser.add_argument("--frames", type=int, default=d.frames, help="frames per episode")
    parser.add_argument("--size", type=parse_size, default=(d.width, d.height), help="image size WxH")
    parser.add_argument("--seed", type=int, default=0, help="run seed (same seed -> identical bags)")
    parser.add_argument("--out", default="sim_out", help="output folder for the bags")
    parser.add_argument("--preview", action="store_true", help="write OUT/preview.png (contact sheet)")
    parser.add_argument("--workers", type=int, default=0, help="parallel processes (0 = one per CPU core)")
    parser.add_argument(
        "--objects",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(d.min_objects, d.max_objects),
        help="objects per scene",
    )
    parser.add_argument(
        "--tracks", type=int, default=d.num_tracks, help="ground-truth point tracks per episode"
    )
    parser.add_argument("--fps", type=float, default=d.fps, help="camera frame rate")
    parser.add_argument("--no-shadows", action="store_true", help="faster rendering without shadows")
    parser.add_argument("--overwrite", action="store_true", help="replace existing bags")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    w, h = args.size
    return SimConfig(
        width=w,
        height=h,
        frames=args.frames,
        fps=args.fps,
        min_objects=args.objects[0],
        max_objects=args.objects[1],
        num_tracks=args.tracks,
        shadows=not args.no_shadows,
    )


def generate_bag(cfg: SimConfig, seed: int, path: str, overwrite: bool) -> dict:
    """Worker: one episode -> one bag. Returns timing figures."""
    from perception_nodes.sim.bagio import write_episode_bag
    from perception_nodes.sim.world import generate_episode

    t0 = time.perf_counter()
    ep = generate_episode(cfg, seed)
    t1 = time.perf_counter()
    write_episode_bag(ep, path, cfg, overwrite=overwrite)
    return {
        "path": path,
        "frames": ep.num_frames,
        "sim_s": t1 - t0,
        "write_s": time.perf_counter() - t1,
        "moving": len(ep.moving_objects()),
    }


def _init_worker(threads: int) -> None:
    # Software GL (llvmpipe) starts one thread per core in every process: share the cores instead.
    os.environ.setdefault("LP_NUM_THREADS", str(threads))


def generate(
    cfg: SimConfig, episodes: int, seed: int, out: Path, workers: int, overwrite: bool = False, progress=None
) -> list[dict]:
    """Generate ``episodes`` bags into ``out`` with ``workers`` processes; calls ``progress(frames)``."""
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    if workers < 0:
        raise ValueError(f"--workers must be >= 0 (0 = one per CPU core), got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, episode_seed(seed, i), str(out / f"ep_{i:05d}"), overwrite) for i in range(episodes)]
    existing = [j[2] for j in jobs if Path(j[2]).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{len(existing)} bag(s) already exist in {out} (e.g. {existing[0]}); use --overwrite"
        )
    workers = min(workers or (os.cpu_count() or 1), episodes)
    results = []
    if workers == 1:
        for job in jobs:
            results.append(generate_bag(*job))
            if progress:
                progress(cfg.frames)
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    # forkserver: workers fork from a server that imported the simulator once but never touched OpenGL
    # (fork from this process could inherit a GL context; spawn re-imports everything per worker).
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["perception_nodes.sim.world", "perception_nodes.sim.bagio"])
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads,)) as pool:
        pending = {pool.submit(generate_bag, *job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                results.append(fut.result())
                if progress:
                    progress(cfg.frames)
    return sorted(results, key=lambda r: r["path"])


def check_gl(cfg: SimConfig) -> None:
    """Fail early, in the parent, with the one-line OpenGL message (workers would each raise it)."""
    from perception_nodes.sim.gl import make_gl_context

    make_gl_context(cfg.width, cfg.height).free()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from perception_nodes.sim.errors import SimError

    cfg = config_from_args(args)
    out = Path(args.out)
    try:
        check_gl(cfg)
        start = time.perf_counter()
        with tqdm(total=args.episodes * cfg.frames, unit="frame", desc="sim", disable=args.quiet) as bar:
            results = generate(cfg, args.episodes, args.seed, out, args.workers, args.overwrite, bar.update)
        wall = time.perf_counter() - start
    except SimError as exc:
        from perception_nodes.cli import UserError

        raise UserError(str(exc)) from None
    frames = sum(r["frames"] for r in results)
    print(
        f"wrote {len(results)} bag(s), {frames} frames in {wall:.1f} s "
        f"({frames / wall:.1f} frames/s) to {out}"
    )
    if args.preview:
        from perception_nodes.sim.dataset import read_episodes
        from perception_nodes.sim.preview import write_contact_sheet

        eps = list(read_episodes([r["path"] for r in results[:PREVIEW_EPISODES]]))
        print(f"preview: {write_contact_sheet(eps, out / 'preview.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m perception_nodes.sim.cli`` (e.g. on a GPU box with MUJOCO_GL=egl)."""
    parser = argparse.ArgumentParser(
        prog="python -m perception_nodes.sim.cli", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except Exception as exc:
        if type(exc).__name__ not in ("UserError", "SimError", "ValueError", "BagError", "FileNotFoundError"):
            raise
        print(f"sim: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_arguments", "config_from_args", "episode_seed", "generate", "run"]

if __name__ == "__main__":
    sys.exit(main())
