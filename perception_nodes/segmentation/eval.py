"""EISEN evaluation: the official metric and overlay pictures.

Metric (neuroailab/EISEN ``SegmentationMetrics.compute_matched_IoUs``): per image, predicted segments are
nearest-resized to the ground truth's size; the IoU of every ground-truth object (background id 0 excluded)
with every predicted segment (all predicted ids, 0 included) is computed; a Hungarian assignment on 1 - IoU
matches them; each ground-truth object scores its matched IoU (0 if unmatched); the image scores the mean
over its objects; the dataset scores the mean over images that have objects.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from perception_nodes.segmentation.processor import colorize, upsample_labels
from perception_nodes.types import Frame

log = logging.getLogger(__name__)


def matched_ious(pred: np.ndarray, gt: np.ndarray, exclude: Iterable[int] = (0,)) -> np.ndarray:
    """IoU of each ground-truth object (sorted ids, ``exclude`` left out) with its Hungarian match."""
    pred = upsample_labels(pred.astype(np.int32), *gt.shape)
    gt_ids = [int(g) for g in np.unique(gt) if int(g) not in set(exclude)]
    pred_ids, pred_inv = np.unique(pred, return_inverse=True)
    if not gt_ids:
        return np.zeros(0)
    gt_index = np.full(int(gt.max()) + 1, -1)
    gt_index[gt_ids] = np.arange(len(gt_ids))
    g = gt_index[gt.reshape(-1)]
    keep = g >= 0
    inter = np.zeros((len(gt_ids), len(pred_ids)))
    np.add.at(inter, (g[keep], pred_inv.reshape(-1)[keep]), 1)
    gt_area = np.bincount(g[keep], minlength=len(gt_ids))
    pred_area = np.bincount(pred_inv.reshape(-1), minlength=len(pred_ids))
    iou = inter / (gt_area[:, None] + pred_area[None, :] - inter)
    rows, cols = linear_sum_assignment(1.0 - iou)
    best = np.zeros(len(gt_ids))
    best[rows] = iou[rows, cols]
    return best


def image_miou(pred: np.ndarray, gt: np.ndarray, exclude: Iterable[int] = (0,)) -> float:
    """Mean matched IoU of one image (NaN when it has no ground-truth object)."""
    ious = matched_ious(pred, gt, exclude)
    return float(ious.mean()) if len(ious) else float("nan")


@dataclasses.dataclass
class EvalItem:
    """One evaluated frame."""

    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    gt: np.ndarray  # (H, W) int ground-truth instances, 0 = background
    pred: np.ndarray  # (h, w) predicted segment labels
    miou: float


def summarize(items: list[EvalItem], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    scores = np.array([i.miou for i in items], dtype=np.float64)
    valid = scores[np.isfinite(scores)]
    return {
        "metric": "official EISEN mIoU (Hungarian-matched IoU per GT object, background excluded)",
        "miou": float(valid.mean()) if len(valid) else float("nan"),
        "images": len(valid),
        "per_image": {i.name: (None if not np.isfinite(i.miou) else round(i.miou, 4)) for i in items},
        **(extra or {}),
    }


def overlay_grid(items: list[EvalItem], path: str | Path, max_rows: int = 8, tile: int = 192) -> Path:
    """PNG grid: one row per frame (image, ground truth, prediction overlay) with the frame's mIoU."""
    if not items:
        raise ValueError("no items to draw")
    step = max(1, len(items) // max_rows)
    rows = []
    for it in items[::step][:max_rows]:
        H, W = it.gt.shape
        pred = upsample_labels(it.pred.astype(np.int32), H, W)
        cells = [it.rgb, colorize(it.gt.astype(np.int32), it.rgb, 0.6), colorize(pred, it.rgb, 0.6)]
        cells = [cv2.resize(c, (tile * W // H, tile), interpolation=cv2.INTER_NEAREST) for c in cells]
        row = np.concatenate(cells, axis=1)
        cv2.putText(
            row, f"{it.name} mIoU {it.miou:.3f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1
        )
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


def evaluate_frames(frames: Iterable[tuple[str, Frame, np.ndarray]], segment) -> Iterator[EvalItem]:
    """``frames`` yields (name, frame, gt instances (H, W)); ``segment(frame) -> labels`` -> EvalItems."""
    for name, frame, gt in frames:
        pred = segment(frame)
        yield EvalItem(name, frame.rgb, gt, pred, image_miou(pred, gt))


def write_report(items: list[EvalItem], out_dir: str | Path, extra: dict[str, Any] | None = None) -> dict:
    """Write ``metrics.json`` and ``overlays.png`` under ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(items, extra)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    if items:
        overlay_grid(items, out / "overlays.png")
    return summary
