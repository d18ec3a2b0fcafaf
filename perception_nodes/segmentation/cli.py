"""``perception-nodes train segmentation`` and ``perception-nodes eval segmentation`` (wired by cli.py).

Evaluation reads sim bags (ground-truth instance masks come with them) or generates held-out sim
episodes, runs the streaming component frame by frame, and writes ``metrics.json`` + ``overlays.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from perception_nodes.segmentation import train as train_mod
from perception_nodes.segmentation.config import EisenComponentConfig
from perception_nodes.types import Frame

log = logging.getLogger(__name__)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    train_mod.add_arguments(parser)


def run_train(args: argparse.Namespace) -> int:
    summary = train_mod.train(train_mod.config_from_args(args))
    print(
        f"trained {summary['steps']} steps on {summary['pairs']} frame pairs in {summary['train_s']:.0f} s; "
        f"loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}; weights in {args.out}"
    )
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="*", help="sim bags (folders/.mcap) with ground-truth instances")
    parser.add_argument("--out", required=True, help="folder for metrics.json and overlays.png")
    parser.add_argument("--weights", default="", help="EISEN .safetensors ('' = shipped small model)")
    parser.add_argument("--preset", default="small", choices=["small", "official"])
    parser.add_argument("--path", default="fast", choices=["fast", "reference"], help="inference path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--kprop-dtype", default="", help="KProp matmul dtype override (float32, bfloat16)")
    parser.add_argument("--early-exit-tol", type=float, default=0.0, help="KProp early exit (0 = off)")
    parser.add_argument(
        "--no-refine",
        action="store_true",
        help="nearest upsampling of the segments (official) instead of edge-aware",
    )
    parser.add_argument(
        "--sim-episodes", type=int, default=0, help="generate this many held-out episodes instead"
    )
    parser.add_argument("--sim-seed", type=int, default=900000, help="seed of the first generated episode")
    parser.add_argument("--sim-frames", type=int, default=12)
    parser.add_argument("--stride", type=int, default=1, help="evaluate every n-th frame")
    parser.add_argument(
        "--exclude-pusher", action="store_true", help="leave the pusher out of the GT objects"
    )
    parser.add_argument(
        "--depth",
        action="store_true",
        help="also give the component the depth and intrinsics (RGB-D; cuts segments at the table)",
    )
    parser.add_argument(
        "--self-mask",
        action="store_true",
        help="also give the component the robot's own mask, placed from the pusher's pose and size as the "
        "robot knows them (not from the image; with --depth, less what the depth sees in front of it): it "
        "becomes one segment",
    )
    parser.add_argument(
        "--support-tol",
        type=float,
        default=EisenComponentConfig.support_tol_m,
        help="with --depth: RANSAC inlier distance and the largest on-plane tolerance, m",
    )


def run_eval(args: argparse.Namespace) -> int:
    from perception_nodes.segmentation.component import EisenComponent
    from perception_nodes.segmentation.eval import evaluate_frames, write_report

    if not args.bags and not args.sim_episodes:
        raise ValueError("give sim bags or --sim-episodes N")
    comp = EisenComponent(
        EisenComponentConfig(
            weights=args.weights,
            preset=args.preset,
            path=args.path,
            device=args.device,
            threads=args.threads,
            overlay=False,
            kprop_dtype=args.kprop_dtype,
            early_exit_tol=args.early_exit_tol,
            refine=not args.no_refine,
            depth_refine=args.depth,
            support_tol_m=args.support_tol,
        )
    )
    if args.depth and comp.depth_refine is None:
        raise RuntimeError("--depth needs open3d: pip install open3d-cpu")

    def segment(frame: Frame) -> np.ndarray:
        return comp.step(frame).labels

    items = list(evaluate_frames(_frames(args), segment))
    extra = {"model_id": comp.model_id, "path": args.path, "depth": args.depth, "self_mask": args.self_mask}
    summary = write_report(items, args.out, extra)
    print(f"mIoU {summary['miou']:.4f} over {summary['images']} images -> {Path(args.out) / 'metrics.json'}")
    return 0


def _frames(args):
    """(name, frame, gt) for every evaluated frame of every episode (depth and intrinsics with --depth;
    stamps count frames, so each frame draws its own seed as in the node)."""
    count = 0
    for e, ep in enumerate(_episodes(args)):
        body = _self_masks(ep, args.depth) if args.self_mask else None
        for t in range(0, len(ep.rgb), args.stride):
            gt = ep.instance[t].astype(np.int32)
            if args.exclude_pusher and getattr(ep, "pusher_id", 0):
                gt = np.where(gt == ep.pusher_id, 0, gt)
            count += 1
            depth, camera = (ep.depth[t], ep.camera) if args.depth else (None, None)
            mask = body[t] if body is not None else None
            frame = Frame(stamp_ns=count, rgb=ep.rgb[t], depth=depth, camera=camera, self_mask=mask)
            yield f"ep{e}_t{t}", frame, gt


def _self_masks(ep, use_depth: bool) -> np.ndarray:
    """(T, H, W) bool robot masks of an episode at its frames' size (``sim.self_mask.pusher_masks``; with
    ``use_depth`` the parts the depth image sees something in front of are left out)."""
    from perception_nodes.sim.self_mask import pusher_masks

    body = pusher_masks(ep, use_depth)
    if body is None:
        raise ValueError("--self-mask: the episode does not record the pusher's size (an older bag)")
    return body


def _episodes(args):
    if args.bags:
        from perception_nodes.sim import read_episodes

        yield from read_episodes(args.bags)
        return
    from perception_nodes.sim import generate_episode
    from perception_nodes.sim.config import SimConfig

    cfg = SimConfig(width=256, height=256, frames=args.sim_frames, num_tracks=0)
    for k in range(args.sim_episodes):
        yield generate_episode(cfg, args.sim_seed + k)


def main(argv: list[str] | None = None) -> int:
    """``python -m perception_nodes.segmentation.cli {train,eval} ...`` (same as the CLI subcommands)."""
    parser = argparse.ArgumentParser(prog="eisen")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_train_arguments(sub.add_parser("train"))
    add_eval_arguments(sub.add_parser("eval"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_train(args) if args.cmd == "train" else run_eval(args)


if __name__ == "__main__":
    raise SystemExit(main())
