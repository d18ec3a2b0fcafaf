"""Drawing observed tracks and forecasts on a frame (for demo PNGs and evaluation reports).

Inputs are plain arrays in pixels (x right, y down), as in TrackResult / ForecastResult or decoded
PointTracks / TrackForecast messages.
"""

from __future__ import annotations

import cv2
import numpy as np

SAMPLE_COLOURS = ((0, 200, 255), (255, 0, 255), (255, 255, 0), (255, 140, 0), (150, 150, 255))


def _colour(k: int) -> tuple[int, int, int]:
    return SAMPLE_COLOURS[k % len(SAMPLE_COLOURS)]


def draw_tracks(rgb: np.ndarray, points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Copy of (H, W, 3) RGB with track histories (M, T, 2) drawn: white tails, green (seen) / red (occluded)
    dots at the newest step."""
    img = np.ascontiguousarray(rgb).copy()
    for m in range(len(points)):
        seen = visible[m]
        tail = points[m][seen] if seen.any() else points[m][-1:]
        if len(tail) > 1:
            cv2.polylines(
                img,
                [np.round(tail).astype(np.int32).reshape(-1, 1, 2)],
                False,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        x, y = (int(v) for v in np.round(points[m, -1]))
        cv2.circle(img, (x, y), 2, (0, 255, 0) if seen[-1] else (255, 0, 0), -1, cv2.LINE_AA)
    return img


def draw_forecast(
    rgb: np.ndarray, query: np.ndarray, samples: np.ndarray, max_samples: int = 5
) -> np.ndarray:
    """Copy of (H, W, 3) RGB with forecast samples (K, M, H, 2) drawn from the query points (M, 2), one
    colour per sample (cyan, magenta, yellow, orange, lavender)."""
    img = np.ascontiguousarray(rgb).copy()
    for k in range(min(len(samples), max_samples)):
        colour = _colour(k)
        for m in range(samples.shape[1]):
            path = np.concatenate([query[m : m + 1], samples[k, m]], axis=0)
            cv2.polylines(
                img, [np.round(path).astype(np.int32).reshape(-1, 1, 2)], False, colour, 1, cv2.LINE_AA
            )
    return img
