"""Streaming forecast component: frames + observed tracks in, K x N x H forecasts in pixels out (no ROS).

``ForecastComponent.step(frame, tracks)`` encodes the frame once, takes the last ``sampling.history`` steps
of up to ``max_points`` tracks (ids kept from the previous forecast first, then the most visible), and draws
K samples of H future steps with the fast sampler, warm-started from the previous forecast of the same track
ids (shifted by the frames elapsed). ``TrackAndForecast`` runs the tracker and the forecaster on one frame.
A tracker reset, a time jump or time going backwards drops the warm-start state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from perception_nodes.forecasting.config import ForecastingConfig
from perception_nodes.forecasting.network import ARFM
from perception_nodes.forecasting.processor import from_model, image_tensor, to_model
from perception_nodes.forecasting.sampler import FastSampler, ForecastInputs
from perception_nodes.forecasting.weights import load_model
from perception_nodes.types import Frame

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclasses.dataclass
class ForecastResult:
    """One forecast (K samples, M points, H steps); pixels x right, y down."""

    stamp_ns: int
    samples: np.ndarray  # (K, M, H, 2) float32 future positions
    query_points: np.ndarray  # (M, 2) float32 positions at the forecast frame
    uncertainty: np.ndarray  # (M,) float32 RMS spread across samples at the last step, pixels
    step_offsets: np.ndarray  # (H,) float32 seconds after stamp_ns
    track_ids: np.ndarray  # (M,) uint64
    segment_ids: np.ndarray  # (M,) uint16
    model_id: str = ""
    diagnostic: str = ""
    latency_ms: float = 0.0

    @property
    def num_points(self) -> int:
        return len(self.track_ids)


def model_id(model: ARFM) -> str:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(model.cfg), sort_keys=True).encode()).hexdigest()
    return f"{model.cfg.name}@{digest[:8]}"


def default_weights(name: str) -> Path:
    """Shipped weights: $PERCEPTION_NODES_MODELS, the source tree's models/, or an installed share/ folder."""
    env = os.environ.get("PERCEPTION_NODES_MODELS")
    candidates = [Path(env)] if env else []
    candidates += [MODELS_DIR, Path(sys.prefix) / "share" / "perception_nodes" / "models"]
    for folder in candidates:
        if (folder / f"{name}.safetensors").exists():
            return folder / f"{name}.safetensors"
    return MODELS_DIR / f"{name}.safetensors"


def build_model(config: ForecastingConfig) -> ARFM:
    """Shipped or configured weights; a seeded random model (with a warning) when none exist."""
    path = Path(config.weights) if config.weights else default_weights(config.model.name)
    if path.exists():
        return load_model(path, config.device)
    if config.weights:
        raise FileNotFoundError(f"forecasting weights {path} not found")
    log.warning("no weights at %s: forecasting with a random %s model", path, config.model.name)
    torch.manual_seed(0)
    return ARFM(config.model).to(config.device).eval()


@dataclasses.dataclass
class _Previous:
    ids: np.ndarray  # (M,) track ids
    samples: torch.Tensor  # (K, M, H, 2) model frame
    frame_index: int


class ForecastComponent:
    """``reset()``; ``step(frame, tracks) -> ForecastResult | None`` (None when no forecast is due)."""

    def __init__(self, config: ForecastingConfig | None = None, model: ARFM | None = None):
        self.config = config or ForecastingConfig()
        self.model = model if model is not None else build_model(self.config)
        self.model.eval()
        s = self.config.sampling
        self.sampler = FastSampler(
            self.model, s.horizon, s.num_samples, s.euler_steps, s.t_end, s.warm_start_t, s.warm_start_steps
        )
        self.model_id = model_id(self.model)
        self._noise_level = (  # what history_noise_input models are told about the tracks; others: None
            torch.tensor([s.history_noise_px], dtype=torch.float32, device=self.config.device)
            if self.model.cfg.history_noise_input
            else None
        )
        self.reset()

    def reset(self) -> None:
        self._previous: _Previous | None = None
        self._last_stamp: int | None = None
        self._last_forecast_stamp: int | None = None
        self._frame_index = 0
        seed = self.config.sampling.seed
        self._gen = torch.Generator(device=self.config.device)
        self._gen.manual_seed(seed if seed >= 0 else int(time.time_ns()) % (2**31))

    def step(self, frame: Frame, tracks) -> ForecastResult | None:
        """``tracks``: a tracking ``TrackResult`` (track_ids (M,), points (M, T, 2), visible (M, T),
        step_offsets (T,), segment_ids (M,), reset)."""
        self._note_time(frame.stamp_ns, bool(getattr(tracks, "reset", False)))
        if not self._due(frame.stamp_ns):
            return None
        started = time.perf_counter()
        result = self._forecast(frame, tracks)
        result.latency_ms = (time.perf_counter() - started) * 1e3
        self._last_forecast_stamp = frame.stamp_ns
        return result

    # -- bookkeeping -------------------------------------------------------------------------------
    def _note_time(self, stamp_ns: int, tracker_reset: bool) -> None:
        last, self._last_stamp = self._last_stamp, stamp_ns
        if tracker_reset or last is None or stamp_ns <= last:
            self._previous, self._last_forecast_stamp = None, None
        self._frame_index += 1

    def _due(self, stamp_ns: int) -> bool:
        last, period = self._last_forecast_stamp, self.config.forecast_period_s
        return last is None or period <= 0 or (stamp_ns - last) * 1e-9 >= period - 1e-6

    def _select(self, tracks) -> np.ndarray:
        """Row indices of the tracks to forecast: previous ids first, then the most visible."""
        vis = np.asarray(tracks.visible, bool)
        ok = np.flatnonzero(vis[:, -1]) if len(vis) else np.zeros(0, int)
        score = vis[ok].sum(axis=1).astype(float)
        if self._previous is not None:
            score += 1000.0 * np.isin(tracks.track_ids[ok], self._previous.ids)
        order = ok[np.argsort(-score, kind="stable")]
        return np.sort(order[: self.config.max_points])

    def _empty(self, stamp_ns: int, reason: str) -> ForecastResult:
        s = self.config.sampling
        return ForecastResult(
            stamp_ns,
            np.zeros((s.num_samples, 0, s.horizon, 2), np.float32),
            np.zeros((0, 2), np.float32),
            np.zeros(0, np.float32),
            self._offsets(None),
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint16),
            self.model_id,
            reason,
        )

    def _offsets(self, tracks) -> np.ndarray:
        dt = self.config.step_dt_s
        if dt <= 0 and tracks is not None and len(tracks.step_offsets) > 1:
            gaps = np.diff(np.asarray(tracks.step_offsets, np.float64))
            gaps = gaps[gaps > 0]
            dt = float(np.median(gaps)) if len(gaps) else 0.0
        dt = dt if dt > 0 else 1.0 / 15.0
        return (np.arange(1, self.config.sampling.horizon + 1) * dt).astype(np.float32)

    # -- forecasting ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _forecast(self, frame: Frame, tracks) -> ForecastResult:
        rows = self._select(tracks) if len(tracks.track_ids) else np.zeros(0, int)
        if len(rows) == 0:
            self._previous = None
            return self._empty(frame.stamp_ns, "no visible tracks to forecast")
        cfg, s, dev = self.model.cfg, self.config.sampling, self.config.device
        h_img, w_img = frame.rgb.shape[:2]
        pts = np.asarray(tracks.points, np.float32)[rows]
        vis = np.asarray(tracks.visible, bool)[rows]
        hist, obs = _last_steps(pts, vis, s.history)
        hist_m = torch.from_numpy(to_model(hist, w_img, h_img, cfg.coord_size)).to(dev)
        fmaps, tokens = self.model.encode_image(image_tensor(frame.rgb, cfg.image_size)[None].to(dev))
        ids = np.asarray(tracks.track_ids, np.uint64)[rows]
        inputs = ForecastInputs(
            fmaps,
            tokens,
            hist_m[None],
            torch.from_numpy(obs).to(dev)[None],
            torch.ones(1, len(rows), dtype=torch.bool, device=dev),
            self.model.condition(1, None, None, dev),
            noise_level=self._noise_level,
        )
        samples = self.sampler.sample(inputs, warm=self._warm(ids, hist_m), generator=self._gen)
        self._previous = _Previous(ids, samples, self._frame_index)
        px = from_model(samples.cpu().numpy(), w_img, h_img, cfg.coord_size)
        spread = px[:, :, -1] - px[:, :, -1].mean(axis=0, keepdims=True)
        seg = (
            np.asarray(tracks.segment_ids, np.uint16)[rows]
            if len(tracks.segment_ids)
            else np.zeros(len(rows), np.uint16)
        )
        return ForecastResult(
            frame.stamp_ns,
            px.astype(np.float32),
            hist[:, -1].astype(np.float32),
            np.sqrt((spread**2).sum(-1).mean(0)).astype(np.float32),
            self._offsets(tracks),
            ids,
            seg,
            self.model_id,
        )

    def _warm(self, ids: np.ndarray, hist_m: torch.Tensor) -> torch.Tensor | None:
        """Displacements (K, M, H, 2) of the previous forecast re-aligned to now (NaN where unknown)."""
        prev, s = self._previous, self.config.sampling
        if prev is None or s.warm_start_t <= 0:
            return None
        shift = self._frame_index - prev.frame_index
        k, h = s.num_samples, s.horizon
        warm = torch.full((k, len(ids), h, 2), float("nan"), device=hist_m.device)
        rows = {int(i): r for r, i in enumerate(prev.ids)}
        old = [rows.get(int(i), -1) for i in ids]
        have = torch.tensor([o >= 0 for o in old], device=hist_m.device)
        if shift < 1 or not bool(have.any()):
            return None
        src = prev.samples[:, [max(o, 0) for o in old]]  # (K, M, H, 2)
        disp = torch.diff(src, dim=2)  # (K, M, H - 1, 2): step j -> j + 1 of the old forecast
        n = h - shift
        if n > 0:
            warm[:, :, :n] = disp[:, :, shift - 1 : shift - 1 + n]
        warm[:, ~have] = float("nan")
        return warm


def _last_steps(points: np.ndarray, visible: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``steps`` of (M, T, 2) / (M, T) windows, padded at the start by repeating the first step."""
    t = points.shape[1]
    if t >= steps:
        return points[:, -steps:], visible[:, -steps:]
    pad = steps - t
    return (
        np.concatenate([np.repeat(points[:, :1], pad, axis=1), points], axis=1),
        np.concatenate([np.zeros((len(points), pad), bool), visible], axis=1),
    )


class TrackAndForecast:
    """Tracker and forecaster on one frame: ``step(frame, segments=None) -> (tracks, forecast | None)``."""

    def __init__(self, tracker, forecaster: ForecastComponent):
        self.tracker, self.forecaster = tracker, forecaster

    def reset(self) -> None:
        self.tracker.reset()
        self.forecaster.reset()

    def step(self, frame: Frame, segments: np.ndarray | None = None):
        tracks = self.tracker.step(frame, segments)
        return tracks, self.forecaster.step(frame, tracks)
