"""Pre/post-processing around ARFM: image and coordinate conventions, point selection, training windows.

Model frame: the image is resized to ``coord_size`` x ``coord_size`` in continuous coordinates (pixel i of
the model frame covers [i, i + 1)), so x_model = (x + 0.5) * coord_size / width (pixel centres at integer
x in image pixels, x right, y down) and a displacement scales by coord_size / width.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch

from perception_nodes.forecasting.config import ARFMConfig


def to_model(xy: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """(..., 2) image pixels -> model frame."""
    return (np.asarray(xy, np.float32) + 0.5) * np.array([size / width, size / height], np.float32)


def from_model(xy: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """(..., 2) model frame -> image pixels."""
    return np.asarray(xy, np.float32) * np.array([width / size, height / size], np.float32) - 0.5


def image_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, size, size) float32 in [0, 1]."""
    small = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1).float().div_(255.0)


def motion_logits(tracks: np.ndarray, visible: np.ndarray, temperature: float = 0.5) -> np.ndarray:
    """Official point weighting: temperature x mean squared step displacement over visible step pairs,
    clipped to [0, 10] (tracks (N, T, 2) in model pixels, visible (N, T))."""
    pair = visible[:, 1:] & visible[:, :-1]
    sq = (np.diff(tracks, axis=1) ** 2).sum(-1) * pair
    return np.clip(sq.sum(1) / (pair.sum(1) + 1) * temperature, 0.0, 10.0)


def select_points(
    tracks: np.ndarray,
    visible: np.ndarray,
    current: int,
    count: int,
    rng: np.random.Generator,
    temperature: float = 0.5,
    min_visible: float = 0.5,
) -> np.ndarray:
    """Indices of up to ``count`` tracks visible at step ``current`` and in at least ``min_visible`` of the
    window, drawn without replacement with probability softmax(motion_logits) (moving points first)."""
    ok = visible[:, current] & (visible.mean(axis=1) >= min_visible)
    cand = np.flatnonzero(ok)
    if len(cand) <= count:
        return cand
    logits = (
        motion_logits(tracks[cand], visible[cand], temperature) if temperature > 0 else np.zeros(len(cand))
    )
    p = np.exp(logits - logits.max())
    return rng.choice(cand, size=count, replace=False, p=p / p.sum())


@dataclasses.dataclass
class LightEpisode:
    """What training and evaluation read from an episode, with frames already at the encoder's size."""

    rgb: np.ndarray  # (T, S, S, 3) uint8 frames resized to image_size
    tracks_2d: np.ndarray  # (N, T, 2) float32 pixels of the original frames
    visible: np.ndarray  # (N, T) bool
    width: int  # original frame size
    height: int
    full_rgb: np.ndarray | None = None  # (T, H, W, 3) kept only for drawing


def lighten(episode, size: int, keep_full: bool = False) -> LightEpisode:
    """Drop everything but frames (resized), tracks and visibility (sim episodes carry depth, flow, ...)."""
    _, h, w, _ = episode.rgb.shape
    small = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in episode.rgb])
    return LightEpisode(
        small,
        np.asarray(episode.tracks_2d, np.float32),
        np.asarray(episode.visible, bool),
        w,
        h,
        np.asarray(episode.rgb) if keep_full else None,
    )


@dataclasses.dataclass
class Window:
    """One training/evaluation example (numpy, model frame)."""

    image: torch.Tensor  # (3, S, S) float [0, 1]: the frame of the last history step
    pos: np.ndarray  # (M, L, 2) positions, L = history + horizon, model frame
    visible: np.ndarray  # (M, L) bool ground-truth visibility
    history: int


def make_window(
    episode,
    current: int,
    history: int,
    horizon: int,
    count: int,
    cfg: ARFMConfig,
    rng: np.random.Generator,
    temperature: float = 0.5,
) -> Window | None:
    """Window of steps [current - history + 1, current + horizon] of ``episode`` (rgb, tracks_2d, visible),
    with motion-weighted points; None when no track qualifies."""
    lo, hi = current - history + 1, current + horizon + 1
    if lo < 0 or hi > len(episode.rgb):
        raise ValueError(f"window [{lo}, {hi}) outside the episode of {len(episode.rgb)} frames")
    h, w = (episode.height, episode.width) if hasattr(episode, "width") else episode.rgb.shape[1:3]
    tracks = to_model(episode.tracks_2d[:, lo:hi], w, h, cfg.coord_size)
    vis = np.asarray(episode.visible[:, lo:hi], bool)
    idx = select_points(tracks, vis, history - 1, count, rng, temperature)
    if len(idx) == 0:
        return None
    return Window(image_tensor(episode.rgb[current], cfg.image_size), tracks[idx], vis[idx], history)


def collate(
    windows: list[Window], count: int, flip: np.ndarray | None = None, coord_size: int = 256
) -> dict[str, torch.Tensor]:
    """Stack windows into a batch padded to ``count`` points: image (B, 3, S, S), pos (B, M, L, 2),
    visible (B, M, L), point_valid (B, M). ``flip[b]`` mirrors example b left-right."""
    b, length = len(windows), windows[0].pos.shape[1]
    pos = np.zeros((b, count, length, 2), np.float32)
    vis = np.zeros((b, count, length), bool)
    valid = np.zeros((b, count), bool)
    images = torch.stack([win.image for win in windows])
    for i, win in enumerate(windows):
        m = len(win.pos)
        pos[i, :m], vis[i, :m], valid[i, :m] = win.pos, win.visible, True
        pos[i, m:] = win.pos[:1].mean(axis=0) if m else coord_size / 2
        if flip is not None and flip[i]:
            pos[i, :, :, 0] = coord_size - pos[i, :, :, 0]
            images[i] = images[i].flip(-1)
    return {
        "image": images,
        "pos": torch.from_numpy(pos),
        "visible": torch.from_numpy(vis),
        "point_valid": torch.from_numpy(valid),
    }
