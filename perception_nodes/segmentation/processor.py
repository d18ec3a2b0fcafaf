"""Pre- and post-processing around the EISEN network (numpy/OpenCV, no ROS).

Pre: an RGB frame of any size -> the network input (1, 3, H, W) float 0-255 at ``cfg.input_size``.
Post: the agent label map (h, w) -> connected components (8-connectivity, OpenCV) with small components
merged into 0 and at most ``max_segments`` kept (official ``label_connected_component``), then upsampling
to the frame size (nearest, as the official code, or edge-aware: ``refine_upsample``) and per-segment
statistics.
"""

from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np
import torch

from perception_nodes.types import CameraModel

log = logging.getLogger(__name__)


def preprocess(rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, size_h, size_w) float32 on the 0-255 scale (area/linear resize)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    h, w = size
    if rgb.shape[:2] != (h, w):
        shrink = rgb.shape[0] > h or rgb.shape[1] > w
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float()


def connected_segments(key: np.ndarray, min_area: int, max_segments: int) -> np.ndarray:
    """Split each value of ``key`` (h, w) non-negative ints (0 is a value too) into 8-connected components,
    each computed by OpenCV inside that value's bounding box; components < ``min_area`` px become 0; the
    ``max_segments`` largest get ids 1..K by decreasing area (official ``label_connected_component``).
    -> (h, w) int32."""
    present = np.bincount(key.reshape(-1)) > 0  # values -> 0..V-1 without a sort
    inverse = (np.cumsum(present) - 1)[key].astype(np.uint16 if present.sum() <= 65536 else np.int64)
    order = np.argsort(inverse.reshape(-1), kind="stable")  # radix sort for uint16
    bounds = np.cumsum(np.bincount(inverse.reshape(-1)))
    comps = []  # (area, rows, cols, mask inside the box)
    start = 0
    for value, end in enumerate(bounds):
        ys, xs = np.divmod(order[start:end], key.shape[1])
        start = end
        rows, cols = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        _, cc, stats, _ = cv2.connectedComponentsWithStats(
            (inverse[rows, cols] == value).astype(np.uint8), connectivity=8
        )
        for k in np.nonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area)[0] + 1:
            comps.append((int(stats[k, cv2.CC_STAT_AREA]), rows, cols, cc == k))
    comps.sort(key=lambda c: -c[0])
    out = np.zeros(key.shape, np.int32)
    for new_id, (_, rows, cols, mask) in enumerate(comps[:max_segments], start=1):
        out[rows, cols][mask] = new_id
    return out


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (height, width) (up or down)."""
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def refine_upsample(
    labels: np.ndarray, rgb: np.ndarray, sigma_color: float = 10.0, sigma_space: float = 1.0
) -> np.ndarray:
    """Edge-aware (joint bilateral) upsampling of a label map (h, w) to the frame ``rgb`` (H, W, 3) uint8.

    A frame pixel whose map cell (the nearest, ``rint`` of its map coordinate) and that cell's 8
    neighbours (clipped at the border) carry one label takes it (nearest upsampling). Otherwise it takes,
    among the labels of those 9 cells, the one with the largest summed weight
    exp(-d_map² / 2 sigma_space² - |rgb - cell mean rgb|² / 2 sigma_color²), d_map in map cells (on a tie,
    the label of the first cell in row-major order): segment edges snap to colour edges finer than the map.
    With ground-truth labels on the 64² map of 256² sim frames it raises the official mIoU from 0.80
    (nearest) to 0.90. Gathers run in ``cv2.remap`` and the vote in ``np.add.at``: about 10 ms for a 256²
    frame with ~80 segments and 65 ms at 640×480 on one AMD EPYC core (the previous per-pixel 9×9 label
    comparison: 28 / 150 ms).
    """
    h, w = labels.shape
    H, W = rgb.shape[:2]
    cy = ((np.arange(H) + 0.5) * (h / H) - 0.5).astype(np.float32)  # map coordinates of frame rows
    cx = ((np.arange(W) + 0.5) * (w / W) - 0.5).astype(np.float32)  # ... and columns
    ny, nx = np.rint(cy).astype(np.int64), np.rint(cx).astype(np.int64)
    first = _first_same_neighbour(labels)
    if not first.any():  # one label everywhere
        return labels[ny][:, nx]
    energy = _neighbour_energy(labels.shape, rgb, (cy, cx), sigma_color, sigma_space)
    own_x, own_y = np.meshgrid(nx.astype(np.float32), ny.astype(np.float32))
    score = np.zeros((H, W, 9), np.float32)  # summed weight per neighbour slot (first of its label)
    base = np.arange(0, score.size, 9)
    for i in range(9):
        slot = cv2.remap(first[i], own_x, own_y, cv2.INTER_NEAREST).reshape(-1)
        np.add.at(score.reshape(-1), base + slot, np.exp(-energy[i]).reshape(-1))
    best = score.argmax(2)  # the winning slot is the first neighbour with the winning label
    return labels[np.clip(ny[:, None] + best // 3 - 1, 0, h - 1), np.clip(nx + best % 3 - 1, 0, w - 1)]


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # slot i = (dy + 1) * 3 + dx + 1


def _neighbour_energy(map_size, rgb, coords, sigma_color: float, sigma_space: float) -> np.ndarray:
    """(9, H, W) float32 -log bilateral weight of each frame pixel's 9 neighbour cells (``_NEIGHBOURS``
    around its nearest cell), shifted so that each pixel's best cell has 0. ``coords``: the map
    coordinates (cy (H,), cx (W,)) of the frame's rows and columns."""
    (h, w), (cy, cx) = map_size, coords
    ny, nx = np.rint(cy).astype(np.int64), np.rint(cx).astype(np.int64)
    cell = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)  # (h, w, 3) means
    px = rgb.astype(np.float32)
    a_s, a_c = np.float32(0.5 / sigma_space**2), np.float32(0.5 / sigma_color**2)
    energy = np.empty((9, *rgb.shape[:2]), np.float32)
    for i, (dy, dx) in enumerate(_NEIGHBOURS):
        yy, xx = np.clip(ny + dy, 0, h - 1), np.clip(nx + dx, 0, w - 1)
        map_x, map_y = np.meshgrid(xx.astype(np.float32), yy.astype(np.float32))
        diff = px - cv2.remap(cell, map_x, map_y, cv2.INTER_NEAREST)
        np.einsum("hwc,hwc->hw", diff, diff, out=energy[i])
        energy[i] *= a_c
        energy[i] += ((yy.astype(np.float32) - cy) ** 2 * a_s)[:, None]
        energy[i] += (xx.astype(np.float32) - cx) ** 2 * a_s
    energy -= energy.min(0)  # relative to the best cell: weights do not underflow in float32
    return energy


def _first_same_neighbour(labels: np.ndarray) -> np.ndarray:
    """(9, h, w) uint8: for each map cell and neighbour slot i (``_NEIGHBOURS``, clipped at the border),
    the first slot whose label equals slot i's (0 everywhere in a cell whose neighbourhood is one label)."""
    h, w = labels.shape
    rows = [np.clip(np.arange(h) + d, 0, h - 1) for d in (-1, 0, 1)]
    cols = [np.clip(np.arange(w) + d, 0, w - 1) for d in (-1, 0, 1)]
    cand = np.stack([labels[rows[dy + 1]][:, cols[dx + 1]] for dy, dx in _NEIGHBOURS])
    return (cand[:, None] == cand[None]).argmax(0).astype(np.uint8)


@dataclasses.dataclass
class SegmentStats:
    """Per-segment records, parallel arrays of length M (x right, y down, pixel centres at integers)."""

    ids: np.ndarray  # (M,) uint16
    bboxes: np.ndarray  # (M, 4) int32 x_min, y_min, width, height
    areas: np.ndarray  # (M,) uint32 pixels
    centroids_px: np.ndarray  # (M, 2) float32
    scores: np.ndarray  # (M,) float32 in [0, 1]
    mean_depth: np.ndarray | None  # (M,) float32 metres, NaN where a segment has no valid depth
    centroids_3d: np.ndarray | None  # (M, 3) float32 camera frame metres


def segment_stats(
    labels: np.ndarray,
    confidence: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    camera: CameraModel | None = None,
) -> SegmentStats:
    """Statistics of every non-zero segment of ``labels`` (H, W) (confidence/depth at the same size)."""
    ids = np.array(sorted(int(v) for v in np.unique(labels) if v != 0), dtype=np.int64)
    flat = labels.reshape(-1)
    M = len(ids)
    lookup = np.zeros(int(flat.max(initial=0)) + 1, np.int64) - 1
    lookup[ids] = np.arange(M)
    seg = lookup[flat]
    keep = seg >= 0
    seg_k = seg[keep]
    ys, xs = np.divmod(np.nonzero(keep)[0], labels.shape[1])
    areas = np.bincount(seg_k, minlength=M).astype(np.float64)
    cx = np.bincount(seg_k, xs, minlength=M) / np.maximum(areas, 1)
    cy = np.bincount(seg_k, ys, minlength=M) / np.maximum(areas, 1)
    bboxes = _bboxes(seg_k, xs, ys, M)
    if confidence is not None:
        scores = np.bincount(seg_k, confidence.reshape(-1)[keep], minlength=M) / np.maximum(areas, 1)
    else:
        scores = np.ones(M)
    mean_depth = centroids_3d = None
    if depth is not None:
        mean_depth, centroids_3d = _depth_stats(depth, seg_k, keep, xs, ys, M, camera)
    return SegmentStats(
        ids=ids.astype(np.uint16),
        bboxes=bboxes,
        areas=areas.astype(np.uint32),
        centroids_px=np.stack([cx, cy], -1).astype(np.float32).reshape(M, 2),
        scores=np.clip(scores, 0, 1).astype(np.float32),
        mean_depth=mean_depth,
        centroids_3d=centroids_3d,
    )


def _bboxes(seg: np.ndarray, xs: np.ndarray, ys: np.ndarray, M: int) -> np.ndarray:
    """(M, 4) int32 x_min, y_min, width, height of the pixels (xs, ys) of segments 0..M-1 (``seg``)."""
    lo = np.full((2, M), np.iinfo(np.int64).max)
    hi = np.full((2, M), -1)
    for k, v in enumerate((xs, ys)):
        np.minimum.at(lo[k], seg, v)
        np.maximum.at(hi[k], seg, v)
    return np.stack([lo[0], lo[1], hi[0] - lo[0] + 1, hi[1] - lo[1] + 1], -1).astype(np.int32).reshape(M, 4)


def _depth_stats(depth, seg_k, keep, xs, ys, M, camera):
    d = depth.reshape(-1)[keep].astype(np.float64)
    ok = np.isfinite(d) & (d > 0)
    n = np.bincount(seg_k[ok], minlength=M).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(seg_k[ok], d[ok], minlength=M) / n
    if camera is None:
        return mean.astype(np.float32), None
    pts = camera.backproject(np.stack([xs[ok], ys[ok]], -1).astype(np.float64), d[ok])
    with np.errstate(invalid="ignore", divide="ignore"):
        c3 = np.stack([np.bincount(seg_k[ok], pts[:, k], minlength=M) / n for k in range(3)], -1)
    return mean.astype(np.float32), c3.astype(np.float32)


def colorize(labels: np.ndarray, rgb: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colour image (blended over ``rgb`` when given); 0 stays dark."""
    rng = np.random.default_rng(12345)
    palette = rng.integers(40, 255, size=(int(labels.max(initial=0)) + 1, 3), dtype=np.uint8)
    palette[0] = 0
    colour = palette[labels]
    if rgb is None:
        return colour
    blend = rgb.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha
    return blend.clip(0, 255).astype(np.uint8)
