"""Forecast evaluation: the ARFM metric, minADE/minFDE over K, constant-velocity and static baselines.

All errors are measured in the 256 x 256 model frame (``coord_size``), as the official metric:
- ``delta_avg``: fraction of visible future points within δ ∈ {4, 8, 16, 32, 64} px, averaged over δ, the
  best of the K samples per example (the released evaluation picks the best sample per example);
- ``min_ade`` / ``min_fde``: per point, the minimum over K of the mean (final-step) error over visible
  future steps, averaged over points; ``moving_*``: the same on points whose true future moves more than
  ``moving_px`` from the query position.
Baselines get the same points: ``static`` (the query point stays) and ``constant_velocity`` (the last
observed step displacement repeats). Histories are ground-truth tracks (the forecaster is evaluated alone),
or, with ``tracker_histories``, what our LK ``PointTracker`` makes of them (``tracked_history``), so that
the forecast meets a real tracker's errors while the future it is scored against stays ground truth.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from perception_nodes.forecasting.config import SamplingConfig
from perception_nodes.forecasting.network import ARFM
from perception_nodes.forecasting.processor import from_model, image_tensor, make_window, to_model
from perception_nodes.forecasting.sampler import FastSampler, ForecastInputs

log = logging.getLogger(__name__)

DELTAS = (4, 8, 16, 32, 64)
SAMPLE_COLOURS = ((0, 200, 255), (255, 0, 255), (255, 255, 0), (255, 140, 0), (150, 150, 255))


def delta_avg(pred: np.ndarray, gt: np.ndarray, vis: np.ndarray, deltas=DELTAS) -> float:
    """pred, gt (M, H, 2), vis (M, H): fraction of visible points within each δ, averaged over δ."""
    if not vis.any():
        return float("nan")
    err = np.linalg.norm(pred - gt, axis=-1)[vis]
    return float(np.mean([(err < d).mean() for d in deltas]))


def example_metrics(
    samples: np.ndarray, gt: np.ndarray, vis: np.ndarray, query: np.ndarray, moving_px: float = 4.0
) -> dict[str, float]:
    """samples (K, M, H, 2), gt (M, H, 2), vis (M, H), query (M, 2), model frame -> metrics of one example."""
    err = np.linalg.norm(samples - gt[None], axis=-1)  # (K, M, H)
    has = vis.any(axis=1)
    ade = np.where(vis[None], err, 0).sum(-1) / np.maximum(vis.sum(-1), 1)[None]  # (K, M)
    last = vis[:, -1]
    travel = np.where(vis, np.linalg.norm(gt - query[:, None], axis=-1), 0.0).max(axis=1)
    moving = has & (travel > moving_px)
    out = {
        "delta_avg": max(delta_avg(s, gt, vis) for s in samples),
        "min_ade": float(ade.min(0)[has].mean()) if has.any() else float("nan"),
        "min_fde": float(err[:, last, -1].min(0).mean()) if last.any() else float("nan"),
        "moving_min_ade": float(ade.min(0)[moving].mean()) if moving.any() else float("nan"),
        "moving_min_fde": float(err[:, moving & last, -1].min(0).mean())
        if (moving & last).any()
        else float("nan"),
        "points": int(has.sum()),
        "moving_points": int(moving.sum()),
    }
    return out


def baselines(history: np.ndarray, observed: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """Static and constant-velocity forecasts (1, M, H, 2) from history (M, S, 2) / observed (M, S)."""
    query = history[:, -1]
    static = np.repeat(query[:, None], horizon, axis=1)
    vel = history[:, -1] - history[:, -2] if history.shape[1] > 1 else np.zeros_like(query)
    ok = observed[:, -1] & observed[:, -2] if history.shape[1] > 1 else np.zeros(len(query), bool)
    vel = np.where(ok[:, None], vel, 0.0)
    cv = query[:, None] + vel[:, None] * np.arange(1, horizon + 1)[None, :, None]
    return {"static": static[None], "constant_velocity": cv[None]}


@dataclasses.dataclass
class Example:
    """One evaluated window (model frame)."""

    rgb: np.ndarray  # (H, W, 3) frame at the query time
    history: np.ndarray  # (M, S, 2)
    gt: np.ndarray  # (M, H, 2)
    vis: np.ndarray  # (M, H)
    forecasts: dict[str, np.ndarray]  # name -> (K, M, H, 2)


@torch.no_grad()
def forecast_window(
    model: ARFM,
    sampler: FastSampler,
    image: torch.Tensor,
    history: np.ndarray,
    observed: np.ndarray,
    gen: torch.Generator,
    warm: torch.Tensor | None = None,
    noise_px: float = 0.0,
) -> np.ndarray:
    """ARFM samples (K, M, H, 2) for one window (history (M, S, 2) model frame); ``warm`` (K, M, H, 2):
    displacements of a previous forecast aligned to these steps (NaN: start from noise); ``noise_px``: the
    history's position noise the model is told (``history_noise_input`` models)."""
    fmaps, tokens = model.encode_image(image[None])
    m = history.shape[0]
    inputs = ForecastInputs(
        fmaps,
        tokens,
        torch.from_numpy(history)[None],
        torch.from_numpy(observed)[None],
        torch.ones(1, m, dtype=torch.bool),
        model.condition(1, None, None, "cpu"),
        noise_level=torch.tensor([noise_px], dtype=torch.float32),
    )
    return sampler.sample(inputs, warm=warm, generator=gen).numpy()


def aligned_warm(previous: np.ndarray, shift: int = 1) -> torch.Tensor:
    """Displacements (K, M, H, 2) of a forecast made ``shift`` frames earlier, aligned to the steps of a
    new one (its step j -> j + 1 is the new step j - shift + 1 -> j - shift + 2), NaN past its horizon."""
    prev = torch.from_numpy(previous)
    disp = torch.diff(prev, dim=2)  # (K, M, H - 1, 2)
    warm = torch.full_like(prev, float("nan"))
    n = prev.shape[2] - shift
    if n > 0:
        warm[:, :, :n] = disp[:, :, shift - 1 : shift - 1 + n]
    return warm


def evaluate(
    model: ARFM,
    episodes: Sequence,
    sampling: SamplingConfig,
    points: int = 100,
    stride: int = 10,
    moving_px: float = 4.0,
    seed: int = 0,
    keep_examples: int = 4,
    warm_start: bool = False,
    sample_seed: int | None = None,
    history_noise_px: float = 0.0,
    tracker_histories: bool = False,
) -> tuple[dict, list[Example]]:
    """Metrics of ARFM and the baselines over windows every ``stride`` frames of each episode.

    ``warm_start``: the streaming update path. Each window is first forecast cold one frame earlier, then
    warm-started from that forecast (``sampling.warm_start_t`` / ``warm_start_steps``); "arfm" is the warm
    forecast and "arfm_cold" the cold one on the same windows (which start one frame later, at ``history``).
    ``sample_seed``: seed of the flow noise (default ``seed``, which also draws the points).
    ``history_noise_px``: Gaussian noise (std, model pixels per coordinate) added to the observed history
    that ARFM and the baselines see, like a point tracker's jitter; ground truth stays exact. Models with
    ``history_noise_input`` are told this level (``sampling.history_noise_px`` is not used here).
    ``tracker_histories``: histories from ``tracked_history`` (episodes need ``full_rgb``); points the
    tracker cannot start or has dropped by the current frame are not scored. The summary adds
    ``history_error_px``, the median distance of tracked positions from the true ones, and
    ``tracks_dropped``, the share of points left out."""
    model.eval()
    h, s = sampling.horizon, sampling.history
    sampler = FastSampler(
        model,
        h,
        sampling.num_samples,
        sampling.euler_steps,
        sampling.t_end,
        sampling.warm_start_t,
        sampling.warm_start_steps,
    )
    rng = np.random.default_rng(seed)
    jitter = np.random.default_rng(seed + 7)
    gen = torch.Generator().manual_seed(seed if sample_seed is None else sample_seed)
    names = ["arfm", "constant_velocity", "static"] + (["arfm_cold"] if warm_start else [])
    per: dict[str, list[dict]] = {name: [] for name in names}
    kept: list[Example] = []
    errors, dropped = [], []  # tracker_histories: per window, errors of tracked positions, dropped points
    extra = int(warm_start)  # one more observed step: the history of the earlier forecast
    for ep in episodes:
        for current in range(s - 1 + extra, len(ep.rgb) - h, stride):
            win = make_window(ep, current, s + extra, h, points, model.cfg, rng, temperature=0.0)
            if win is None:
                continue
            if tracker_histories:
                error, left_out = _track_window(ep, current, win, s + extra, model.cfg.coord_size)
                errors.append(error)
                dropped.append(left_out)
            if history_noise_px > 0:
                noise = jitter.normal(0.0, history_noise_px, win.pos[:, : s + extra].shape)
                win.pos[:, : s + extra] += noise.astype(win.pos.dtype)
            hist = win.pos[:, extra : s + extra]
            gt, vis = win.pos[:, s + extra :], win.visible[:, s + extra :]
            earlier = ep.rgb[current - 1] if warm_start else None
            forecasts = _window_forecasts(model, sampler, win, s, earlier, gen, history_noise_px)
            for name, pred in forecasts.items():
                per[name].append(example_metrics(pred, gt, vis, hist[:, -1], moving_px))
            if (
                len(kept) < keep_examples
                and (np.linalg.norm(gt[:, -1] - hist[:, -1], axis=-1) > moving_px).any()
            ):
                full = getattr(ep, "full_rgb", None)
                kept.append(
                    Example((full if full is not None else ep.rgb)[current], hist, gt, vis, forecasts)
                )
    if not per["arfm"]:
        need = s + extra + h
        lengths = sorted({len(ep.rgb) for ep in episodes})
        raise ValueError(
            f"no window to score: a window needs {need} frames ({s + extra} observed + {h} future) with "
            f"tracks visible at its current frame; the episodes have {lengths or 'no'} frames"
        )
    summary = _summary(per)
    if errors:
        summary["history_error_px"] = float(np.median(np.concatenate(errors)))
        summary["tracks_dropped"] = float(np.concatenate(dropped).mean())
    return summary, kept


def tracked_history(
    episode, current: int, true_history: np.ndarray, coord_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Our LK tracker's view of a window's S history steps, frames ``current - S + 1 .. current`` of
    ``episode.full_rgb``, started at the true positions of the first step (model frame).
    true_history (M, S, 2) -> positions (M, S, 2) model frame, seen (M, S) bool (tracker visibility),
    alive (M,) bool: the track still exists at the current frame (the tracker frees slots that leave the
    image or stay occluded too long; the forecast node never sees those)."""
    from perception_nodes.tracking.config import TrackerConfig
    from perception_nodes.tracking.tracker import PointTracker

    frames = getattr(episode, "full_rgb", None)
    if frames is None:
        raise ValueError("tracker histories need the episodes' full-resolution frames (keep_full=True)")
    m, steps = true_history.shape[:2]
    h, w = frames.shape[1:3]
    tracker = PointTracker(TrackerConfig(num_points=m))
    tracker.step(frames[current - steps + 1], reseed=False)
    tracker.add_points(from_model(true_history[:, 0], w, h, coord_size), np.arange(m))
    pos, seen, state = [true_history[:, 0]], [np.ones(m, bool)], None
    for frame in frames[current - steps + 2 : current + 1]:
        state = tracker.step(frame, reseed=False)
        pos.append(to_model(state.positions, w, h, coord_size))
        seen.append(state.visible.copy())
    alive = state.alive.copy() if state is not None else np.ones(m, bool)
    return np.stack(pos, 1).astype(true_history.dtype), np.stack(seen, 1), alive


def _track_window(episode, current: int, win, steps: int, coord_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace the window's first ``steps`` positions by tracked ones, in place; points not visible at the
    first step or dropped by the tracker get no visible future (so no score). Returns the tracked positions'
    errors (px, model frame) where both the truth and the tracker see the point, and the left-out points
    (M,) bool."""
    true = win.pos[:, :steps].copy()
    pos, seen, alive = tracked_history(episode, current, true, coord_size)
    win.pos[:, :steps] = pos
    win.visible[:, :steps] &= seen
    keep = alive & win.visible[:, 0]
    win.visible[~keep, steps:] = False
    both = win.visible[:, :steps] & keep[:, None]
    return np.linalg.norm(pos - true, axis=-1)[both], ~keep


def _window_forecasts(
    model: ARFM,
    sampler: FastSampler,
    win,
    history: int,
    earlier_rgb: np.ndarray | None,
    gen: torch.Generator,
    noise_px: float,
) -> dict[str, np.ndarray]:
    """Forecasts of one window (K, N, H, 2) by name: ARFM cold and the baselines; with ``earlier_rgb`` (the
    frame before the window's current one, whose history is ``win.pos[:, :history]``) also the streaming
    update: "arfm" warm-started from the forecast made one frame earlier, "arfm_cold" the cold one."""
    extra = int(earlier_rgb is not None)
    hist, obs = win.pos[:, extra : history + extra], win.visible[:, extra : history + extra]
    cold = forecast_window(model, sampler, win.image, hist, obs, gen, noise_px=noise_px)
    forecasts = {"arfm": cold, **baselines(hist, obs, sampler.horizon)}
    if earlier_rgb is None:
        return forecasts
    image = image_tensor(earlier_rgb, model.cfg.image_size)
    earlier = forecast_window(
        model, sampler, image, win.pos[:, :history], win.visible[:, :history], gen, noise_px=noise_px
    )
    forecasts["arfm"] = forecast_window(
        model, sampler, win.image, hist, obs, gen, aligned_warm(earlier), noise_px
    )
    forecasts["arfm_cold"] = cold
    return forecasts


def _summary(per: dict[str, list[dict]]) -> dict:
    """Mean metrics per forecaster, the window count, and ARFM's moving-point minADE over constant
    velocity's."""
    summary = {name: _mean(rows) for name, rows in per.items()}
    summary["examples"] = len(per["arfm"])
    cv = summary["constant_velocity"].get("moving_min_ade", float("nan"))
    summary["moving_min_ade_ratio_vs_cv"] = (
        summary["arfm"].get("moving_min_ade", float("nan")) / cv if cv else float("nan")
    )
    return summary


def _mean(rows: list[dict]) -> dict[str, float]:
    if not rows:
        return {}
    keys = rows[0].keys()
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def draw_examples(examples: list[Example], coord_size: int, path: str | Path, tile: int = 320) -> None:
    """PNG grid: history white, truth green (thick), constant velocity red, ARFM samples cyan, magenta,
    yellow, orange, lavender."""
    tiles = []
    for ex in examples:
        img = cv2.resize(ex.rgb, (tile, tile), interpolation=cv2.INTER_AREA).copy()
        f = tile / coord_size

        def poly(pts, colour, thick=1, img=img, f=f):
            cv2.polylines(
                img, [np.round(pts * f).astype(np.int32).reshape(-1, 1, 2)], False, colour, thick, cv2.LINE_AA
            )

        for m in range(ex.history.shape[0]):
            start = ex.history[m, -1:]
            for k, sample in enumerate(ex.forecasts["arfm"]):
                poly(np.concatenate([start, sample[m]]), SAMPLE_COLOURS[k % len(SAMPLE_COLOURS)])
            poly(np.concatenate([start, ex.forecasts["constant_velocity"][0, m]]), (255, 0, 0))
            poly(np.concatenate([start, ex.gt[m]]), (0, 255, 0), 2)
            poly(ex.history[m], (255, 255, 255), 2)
        tiles.append(img)
    if not tiles:
        return
    grid = np.concatenate(tiles, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def write_report(summary: dict, examples: list[Example], coord_size: int, out_dir: str | Path) -> Path:
    """``forecast_eval.json`` and ``forecast_eval.png`` in ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "forecast_eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    draw_examples(examples, coord_size, out / "forecast_eval.png")
    return out / "forecast_eval.json"
