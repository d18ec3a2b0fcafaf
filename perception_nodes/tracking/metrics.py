"""TAP-Vid point-tracking metrics (Doersch et al. 2022): δ_avg, occlusion accuracy, average Jaccard.

Positions are rescaled to a 256 x 256 frame before thresholding, as in the benchmark. Query mode "first":
each track is evaluated on the frames after its query frame only.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)


def tapvid_metrics(
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    pred_tracks: np.ndarray,
    pred_visible: np.ndarray,
    image_size: tuple[int, int],
    query_frames: np.ndarray | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
    scale_to: float | None = 256.0,
) -> dict[str, float]:
    """Metrics over all tracks of one clip.

    gt_tracks, pred_tracks: (N, T, 2) pixels x right, y down; gt_visible, pred_visible: (N, T) bool;
    image_size: (width, height) of the frames; query_frames: (N,) frame index of each query (default: the
    first visible frame of each ground-truth track). Returns delta_avg, occlusion_accuracy,
    average_jaccard, pts_within_{t}, jaccard_{t} and num_evaluated.
    """
    gt_tracks, pred_tracks = np.asarray(gt_tracks, np.float64), np.asarray(pred_tracks, np.float64)
    gt_visible, pred_visible = np.asarray(gt_visible, bool), np.asarray(pred_visible, bool)
    t = gt_visible.shape[1]
    if query_frames is None:
        query_frames = np.where(gt_visible.any(axis=1), gt_visible.argmax(axis=1), t)
    evaluated = np.arange(t)[None, :] > np.asarray(query_frames)[:, None]  # (N, T)
    if scale_to is not None:
        scale = np.array([scale_to / image_size[0], scale_to / image_size[1]])
        gt_tracks, pred_tracks = gt_tracks * scale, pred_tracks * scale
    dist2 = np.sum((pred_tracks - gt_tracks) ** 2, axis=-1)
    dist2 = np.where(np.isfinite(dist2), dist2, np.inf)
    metrics: dict[str, float] = {"num_evaluated": int(evaluated.sum())}
    metrics["occlusion_accuracy"] = _ratio(((pred_visible == gt_visible) & evaluated).sum(), evaluated.sum())
    within_all, jaccard_all = [], []
    gt_pos = gt_visible & evaluated
    for thr in thresholds:
        within = dist2 < thr**2
        correct = within & gt_pos
        frac = _ratio(correct.sum(), gt_pos.sum())
        tp = (correct & pred_visible).sum()
        fp = (((~gt_visible) | ~within) & pred_visible & evaluated).sum()
        jac = _ratio(tp, gt_pos.sum() + fp)
        metrics[f"pts_within_{thr}"], metrics[f"jaccard_{thr}"] = frac, jac
        within_all.append(frac)
        jaccard_all.append(jac)
    metrics["delta_avg"] = float(np.mean(within_all))
    metrics["average_jaccard"] = float(np.mean(jaccard_all))
    return metrics


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def track_queries(
    tracker,
    frames: np.ndarray,
    queries: np.ndarray,
    query_frames: np.ndarray,
    segments: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``tracker`` (a PointTracker with num_points >= N and seeding 'none') online over (T, H, W, 3)
    frames, starting query n at (x, y) = queries[n] on frame query_frames[n].

    Returns pred_tracks (N, T, 2) and pred_visible (N, T); before its query frame a track is NaN/invisible.
    """
    n, t = len(queries), len(frames)
    tracks = np.full((n, t, 2), np.nan, np.float32)
    visible = np.zeros((n, t), bool)
    tracker.reset()
    for f in range(t):
        tracker.step(frames[f], None if segments is None else segments[f], reseed=False)
        start = np.flatnonzero(query_frames == f)
        if len(start):
            tracker.add_points(queries[start], slots=start)
        alive = tracker.alive[:n]
        tracks[alive, f] = tracker.pos[:n][alive]
        if f > 0:  # a track whose slot was freed keeps its last position (invisible)
            tracks[~alive, f] = tracks[~alive, f - 1]
        visible[:, f] = tracker.visible[:n] & alive
    return tracks, visible
