"""Pictures people would rather look at than read: label overlays, tracks, forecasts, contact sheets.

All functions take and return (H, W, 3) uint8 RGB arrays; pixel coordinates are x right, y down.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def label_colors(n: int, seed: int = 7) -> np.ndarray:
    """(n, 3) uint8 distinct colours; label 0 (background) is black."""
    hues = (np.arange(n) * 0.61803398875 + seed * 0.1) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)[None]
    colors = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    colors[0] = 0
    return colors


def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) colours (0 black)."""
    return label_colors(int(labels.max()) + 1)[labels]


def overlay_labels(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend label colours over ``rgb`` (background left as is) and draw segment outlines."""
    colors = colorize_labels(labels)
    out = rgb.copy()
    fg = labels > 0
    out[fg] = (alpha * colors[fg] + (1 - alpha) * rgb[fg]).astype(np.uint8)
    edges = cv2.morphologyEx(labels.astype(np.uint16), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out[edges] = 255
    return out


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres (0/NaN unknown) -> turbo colours, near = red; unknown black."""
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo, hi = np.percentile(depth[valid], [2, 98])
    norm = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    img = cv2.applyColorMap(((1 - norm) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    img[~valid] = 0
    return img


def draw_tracks(rgb: np.ndarray, tracks: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Draw (N, T, 2) pixel tracks: a polyline per point, a dot at the newest visible position."""
    out = rgb.copy()
    colors = label_colors(len(tracks) + 1)[1:]
    vis = np.ones(tracks.shape[:2], bool) if visible is None else visible.astype(bool)
    for n, track in enumerate(tracks):
        pts = track[vis[n]]
        color = tuple(int(c) for c in colors[n])
        if len(pts) > 1:
            cv2.polylines(out, [np.round(pts).astype(np.int32)], False, color, 1, cv2.LINE_AA)
        if len(pts):
            cv2.circle(out, tuple(int(v) for v in np.round(pts[-1])), 2, color, -1, cv2.LINE_AA)
    return out


def draw_forecast(rgb: np.ndarray, samples: np.ndarray, query: np.ndarray | None = None) -> np.ndarray:
    """Draw (K, N, H, 2) forecast samples as thin lines from each query point (N, 2)."""
    out = rgb.copy()
    k, n = samples.shape[:2]
    colors = label_colors(n + 1)[1:]
    for i in range(n):
        color = tuple(int(c) for c in colors[i])
        for s in range(k):
            path = samples[s, i] if query is None else np.concatenate([query[i][None], samples[s, i]])
            cv2.polylines(out, [np.round(path).astype(np.int32)], False, color, 1, cv2.LINE_AA)
        if query is not None:
            cv2.circle(out, tuple(int(v) for v in np.round(query[i])), 2, (255, 255, 255), -1)
    return out


def caption(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` with ``text`` written in its top-left corner."""
    out = img.copy()
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(out, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_sheet(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile images (all the same size) into a grid, rows x columns, white padding."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            sheet[y : y + h, x : x + w] = img if img.ndim == 3 else img[..., None]
    return sheet


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB array as PNG (creating folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
