"""Where new tracks start: textured locations on object segments, on corner features, or on a grid.

All functions take a float32 grey image in [0, 1] (H, W) and return (M, 2) float32 pixels, x right, y down.
Locations closer than ``min_distance`` to ``exclude`` (existing tracks) are never returned, and neither are
locations whose minimum eigenvalue (structure tensor, blockSize 5) is below ``min_texture``: a textureless
image yields no seeds rather than noise.
"""

from __future__ import annotations

import cv2
import numpy as np

BLOCK_SIZE = 5


def texture_map(gray: np.ndarray) -> np.ndarray:
    """(H, W) minimum eigenvalue of the structure tensor of a [0, 1] float image."""
    return cv2.cornerMinEigenVal(gray, BLOCK_SIZE, ksize=3)


def free_mask(
    shape: tuple[int, int], exclude: np.ndarray, min_distance: float, mask: np.ndarray | None, border: int
) -> np.ndarray:
    """uint8 mask (255 = allowed): ``mask`` minus discs around ``exclude`` minus an image border."""
    free = np.full(shape, 255, np.uint8) if mask is None else np.where(mask, 255, 0).astype(np.uint8)
    if border > 0:
        free[:border], free[-border:], free[:, :border], free[:, -border:] = 0, 0, 0, 0
    radius = max(1, round(min_distance))
    for x, y in np.round(exclude).astype(int):
        cv2.circle(free, (int(x), int(y)), radius, 0, -1)
    return free


def feature_seeds(
    gray: np.ndarray,
    count: int,
    free: np.ndarray,
    min_distance: float,
    min_texture: float,
    eig: np.ndarray | None = None,
) -> np.ndarray:
    """Up to ``count`` strongest corners (Shi–Tomasi) inside ``free``, at least ``min_texture`` strong."""
    if count <= 0 or not free.any():
        return np.zeros((0, 2), np.float32)
    eig = texture_map(gray) if eig is None else eig
    best = float(eig[free > 0].max())
    if best < min_texture:
        return np.zeros((0, 2), np.float32)
    pts = cv2.goodFeaturesToTrack(
        gray,
        maxCorners=count,
        qualityLevel=min(1.0, min_texture / best),
        minDistance=min_distance,
        mask=free,
        blockSize=BLOCK_SIZE,
        useHarrisDetector=False,
    )
    return np.zeros((0, 2), np.float32) if pts is None else pts.reshape(-1, 2).astype(np.float32)


def grid_seeds(count: int, free: np.ndarray, min_texture: float, eig: np.ndarray) -> np.ndarray:
    """Up to ``count`` points on a regular grid over ``free``, textured cells first."""
    area = int(np.count_nonzero(free))
    if count <= 0 or area == 0:
        return np.zeros((0, 2), np.float32)
    step = max(2, int(np.sqrt(area / count)))
    ys, xs = np.mgrid[step // 2 : free.shape[0] : step, step // 2 : free.shape[1] : step]
    ys, xs = ys.ravel(), xs.ravel()
    keep = (free[ys, xs] > 0) & (eig[ys, xs] >= min_texture)
    ys, xs = ys[keep], xs[keep]
    order = np.argsort(-eig[ys, xs], kind="stable")[:count]
    return np.stack([xs[order], ys[order]], axis=1).astype(np.float32)


def segment_quotas(segments: np.ndarray, count: int, min_area: int = 30) -> dict[int, int]:
    """Share ``count`` seeds among segment ids (0 = background excluded) by the square root of their area."""
    ids, areas = np.unique(segments[segments > 0], return_counts=True)
    keep = areas >= min_area
    ids, areas = ids[keep], areas[keep]
    if count <= 0 or len(ids) == 0:
        return {}
    weights = np.sqrt(areas.astype(np.float64))
    quotas = np.maximum(1, np.floor(count * weights / weights.sum())).astype(int)
    while quotas.sum() > count:  # more segments than seeds: drop the smallest
        quotas[np.argmin(np.where(quotas > 0, weights, np.inf))] = 0
    return {int(i): int(q) for i, q in zip(ids, quotas, strict=True) if q > 0}


def seed_points(
    gray: np.ndarray,
    count: int,
    exclude: np.ndarray,
    *,
    mode: str,
    min_distance: float,
    min_texture: float,
    border: int,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """Up to ``count`` new track locations according to ``mode`` (auto, grid, features, segments)."""
    if count <= 0 or mode == "none":
        return np.zeros((0, 2), np.float32)
    eig = texture_map(gray)
    if mode == "segments" or (mode == "auto" and segments is not None and np.any(segments > 0)):
        if segments is None:
            return np.zeros((0, 2), np.float32)
        return _segment_seeds(gray, count, exclude, segments, min_distance, min_texture, border, eig)
    free = free_mask(gray.shape, exclude, min_distance, None, border)
    if mode == "grid":
        return grid_seeds(count, free, min_texture, eig)
    found = feature_seeds(gray, count, free, min_distance, min_texture, eig)
    if len(found) < count:  # top up textured grid cells away from the corners just found
        free = free_mask(gray.shape, found, min_distance, free > 0, 0)
        found = np.concatenate([found, grid_seeds(count - len(found), free, min_texture, eig)])
    return found


def _segment_seeds(gray, count, exclude, segments, min_distance, min_texture, border, eig) -> np.ndarray:
    """Seeds spread over object segments, eroded so that patches do not straddle object boundaries."""
    out = []
    kernel = np.ones((5, 5), np.uint8)
    for seg_id, quota in segment_quotas(segments, count).items():
        inside = cv2.erode((segments == seg_id).astype(np.uint8), kernel) > 0
        if not inside.any():
            inside = segments == seg_id
        free = free_mask(gray.shape, exclude, min_distance, inside, border)
        found = feature_seeds(gray, quota, free, min_distance, min_texture, eig)
        if len(found) < quota:
            free = free_mask(gray.shape, found, min_distance, free > 0, 0)
            found = np.concatenate([found, grid_seeds(quota - len(found), free, min_texture, eig)])
        out.append(found)
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)
