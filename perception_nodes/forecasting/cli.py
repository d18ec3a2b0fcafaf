"""``perception-nodes train forecasting`` and ``perception-nodes eval forecasting`` (wired by cli.py).

Data: sim bags (``read_episodes``), freshly generated sim episodes (``--sim-episodes N``), or synthetic
moving-shape clips (``--synthetic N``, for smoke runs without MuJoCo). Training writes resumable
checkpoints; evaluation writes ``forecast_eval.json`` and ``forecast_eval.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from perception_nodes.forecasting.config import SamplingConfig
from perception_nodes.forecasting.train import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "models" / "arfm_small.safetensors"


def _add_data_arguments(parser: argparse.ArgumentParser, default_seed: int) -> None:
    parser.add_argument("bags", nargs="*", help="sim bags (folders/.mcap) with ground-truth tracks")
    parser.add_argument("--sim-episodes", type=int, default=0, help="generate this many sim episodes instead")
    parser.add_argument(
        "--sim-seed", type=int, default=default_seed, help="seed of the first generated episode"
    )
    parser.add_argument("--sim-frames", type=int, default=40, help="frames per generated episode")
    parser.add_argument("--synthetic", type=int, default=0, help="use this many synthetic clips (no MuJoCo)")


def load_episodes(args: argparse.Namespace, image_size: int, keep_full: bool = False) -> list:
    """Episodes from bags, generated sim episodes and/or synthetic clips, lightened as they arrive (frames
    resized to ``image_size``; tracks and visibility kept) so that hundreds fit in memory."""
    from tqdm import tqdm

    from perception_nodes.forecasting.processor import lighten
    from perception_nodes.tracking.cli import iter_episodes

    total = args.sim_episodes + args.synthetic + (len(args.bags) if args.bags else 0)
    episodes = [
        lighten(ep, image_size, keep_full)
        for ep in tqdm(iter_episodes(args), desc="episodes", total=total, leave=False)
    ]
    if not episodes:
        raise ValueError("give sim bags, --sim-episodes N or --synthetic N")
    return episodes


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser, default_seed=0)
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="weights to write (.safetensors; .json beside)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the training state next to --out"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(
                flag,
                type=lambda s: s.lower() in ("1", "true", "yes"),
                default=f.default,
                help=f.metadata.get("help", ""),
            )
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata.get("help", ""))


def run_train(args: argparse.Namespace) -> int:
    from perception_nodes.forecasting.config import by_name
    from perception_nodes.forecasting.train import train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    episodes = load_episodes(args, by_name(cfg.model).image_size)
    summary = train(episodes, cfg, args.out, resume=args.resume, progress=not args.no_progress)
    print(
        f"trained steps {summary['start']}..{summary['steps']} on {len(episodes)} episodes in "
        f"{summary['seconds']:.0f} s; loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}; "
        f"weights in {args.out}"
    )
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    S = SamplingConfig  # the sampling flags default to the component's sampling defaults
    _add_data_arguments(parser, default_seed=900000)
    parser.add_argument("--out", required=True, help="folder for forecast_eval.json and forecast_eval.png")
    parser.add_argument("--weights", default=str(DEFAULT_OUT), help="ARFM .safetensors (with its .json)")
    parser.add_argument("--points", type=int, default=100, help="points per example")
    parser.add_argument("--stride", type=int, default=8, help="frames between evaluated windows")
    parser.add_argument("--samples", type=int, default=S.num_samples, help="samples K (best-of-K metrics)")
    parser.add_argument("--history", type=int, default=S.history, help="observed steps")
    parser.add_argument("--horizon", type=int, default=S.horizon, help="forecast steps")
    parser.add_argument(
        "--euler-steps", type=int, default=S.euler_steps, help="Euler steps per forecast step"
    )
    parser.add_argument(
        "--t-end",
        type=float,
        default=S.t_end,
        help="flow time the Euler integration stops at (default %(default)s; the released code: 0.9375)",
    )
    parser.add_argument(
        "--warm-start",
        action="store_true",
        help="evaluate the streaming update: warm-start each window from a forecast made one frame earlier",
    )
    parser.add_argument(
        "--warm-t", type=float, default=S.warm_start_t, help="flow time a warm start re-noises to"
    )
    parser.add_argument(
        "--warm-steps", type=int, default=S.warm_start_steps, help="Euler steps of a warm-started step"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the point draw (and of the noise)")
    parser.add_argument("--sample-seed", type=int, default=None, help="seed of the flow noise only")
    parser.add_argument("--moving-px", type=float, default=4.0, help="'moving' threshold at the 256 scale")
    parser.add_argument(
        "--history-noise-px",
        type=float,
        default=0.0,
        help="Gaussian jitter (std, px at the 256 scale) added to observed histories, like a tracker's",
    )
    parser.add_argument(
        "--tracker-histories",
        action="store_true",
        help="histories from our LK tracker, started at the true positions of the first history step "
        "(the future stays ground truth; points the tracker drops are not scored)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from perception_nodes.forecasting.eval import evaluate, write_report
    from perception_nodes.forecasting.weights import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    sampling = SamplingConfig(
        num_samples=args.samples,
        horizon=args.horizon,
        history=args.history,
        euler_steps=args.euler_steps,
        t_end=args.t_end,
        warm_start_t=args.warm_t,
        warm_start_steps=args.warm_steps,
    )
    episodes = load_episodes(args, model.cfg.image_size, keep_full=True)
    summary, examples = evaluate(
        model,
        episodes,
        sampling,
        points=args.points,
        stride=args.stride,
        moving_px=args.moving_px,
        seed=args.seed,
        warm_start=args.warm_start,
        sample_seed=args.sample_seed,
        history_noise_px=args.history_noise_px,
        tracker_histories=args.tracker_histories,
    )
    summary["history_noise_px"] = args.history_noise_px
    summary["tracker_histories"] = args.tracker_histories
    summary["weights"] = str(args.weights)
    summary["sampling"] = dataclasses.asdict(sampling)
    path = write_report(summary, examples, model.cfg.coord_size, args.out)
    a, cv, st = summary["arfm"], summary["constant_velocity"], summary["static"]
    print(
        f"{summary['examples']} windows | delta_avg ARFM {a['delta_avg']:.3f} / CV {cv['delta_avg']:.3f} / "
        f"static {st['delta_avg']:.3f} | moving minADE@{args.samples} ARFM {a['moving_min_ade']:.2f} px / "
        f"CV {cv['moving_min_ade']:.2f} / static {st['moving_min_ade']:.2f} "
        f"(ratio vs CV {summary['moving_min_ade_ratio_vs_cv']:.2f}) -> {path}"
    )
    if args.tracker_histories:
        print(
            f"tracker histories: median error {summary['history_error_px']:.2f} px, "
            f"{100 * summary['tracks_dropped']:.1f} % of points dropped (not scored)"
        )
    if args.warm_start:
        c = summary["arfm_cold"]
        print(
            f"warm start t={args.warm_t} x {args.warm_steps} steps; the same windows cold: moving minADE "
            f"{c['moving_min_ade']:.2f} px (ratio vs CV {c['moving_min_ade'] / cv['moving_min_ade']:.2f})"
        )
    return 0
