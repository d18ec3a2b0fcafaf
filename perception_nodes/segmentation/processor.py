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

    Away from label boundaries this is nearest upsampling. A frame pixel within one map cell of a boundary
    takes, among the labels of the 3x3 map cells around it, the one with the largest summed weight
    exp(-d_map² / 2 sigma_space² - |rgb - cell mean rgb|² / 2 sigma_color²), d_map in map cells: segment
    edges snap to colour edges finer than the map. With ground-truth labels on the 64² map of 256² sim
    frames it raises the official mIoU from 0.80 (nearest) to 0.90.
    """
    h, w = labels.shape
    H, W = rgb.shape[:2]
    near = upsample_labels(labels, H, W)
    k = np.ones((3, 3), np.uint8)
    lab = labels.astype(np.float32)
    boundary = upsample_labels((cv2.erode(lab, k) != cv2.dilate(lab, k)).astype(np.uint8), H, W) > 0
    ys, xs = np.nonzero(boundary)
    if len(ys) == 0:
        return near
    cell = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)  # (h, w, 3) means
    cy = ((ys + 0.5) * h / H - 0.5).astype(np.float32)  # map coordinates of the frame pixels
    cx = ((xs + 0.5) * w / W - 0.5).astype(np.float32)
    ny, nx = np.rint(cy).astype(np.int64), np.rint(cx).astype(np.int64)
    px = rgb[ys, xs].astype(np.float32)
    cands, weights = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = np.clip(ny + dy, 0, h - 1), np.clip(nx + dx, 0, w - 1)
            d2 = (yy.astype(np.float32) - cy) ** 2 + (xx.astype(np.float32) - cx) ** 2
            c2 = ((px - cell[yy, xx]) ** 2).sum(-1)
            weights.append(
                np.exp(-d2 * np.float32(0.5 / sigma_space**2) - c2 * np.float32(0.5 / sigma_color**2))
            )
            cands.append(labels[yy, xx])
    cand, wt = np.stack(cands), np.stack(weights)  # (9, P)
    same = (cand[:, None] == cand[None, :]).astype(np.float32)  # (9, 9, P)
    score = np.einsum("ijp,jp->ip", same, wt)  # summed weight of the candidates with the same label
    out = near.copy()
    out[ys, xs] = np.take_along_axis(cand, score.argmax(0)[None], 0)[0]
    return out


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
    bboxes = np.zeros((M, 4), np.int32)
    for i in range(M):
        sel = seg_k == i
        x0, x1, y0, y1 = xs[sel].min(), xs[sel].max(), ys[sel].min(), ys[sel].max()
        bboxes[i] = (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
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
