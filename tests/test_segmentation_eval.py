"""The official EISEN metric and the post-processing, on label maps whose answer is known."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from perception_nodes.segmentation.eval import EvalItem, image_miou, matched_ious, write_report
from perception_nodes.segmentation.processor import (
    connected_segments,
    refine_upsample,
    segment_stats,
    upsample_labels,
)
from perception_nodes.types import CameraModel


def _gt() -> np.ndarray:
    gt = np.zeros((40, 60), np.int32)
    gt[5:15, 5:25] = 3  # 200 px
    gt[20:35, 30:50] = 7  # 300 px
    return gt


def test_perfect_and_relabelled_predictions_score_one():
    gt = _gt()
    assert image_miou(gt, gt) == 1.0
    relabelled = np.select([gt == 3, gt == 7], [11, 2], default=5)  # ids differ, background predicted too
    assert image_miou(relabelled, gt) == 1.0


def test_partial_overlap_and_unmatched_objects():
    gt = _gt()
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 1  # half of object 3: IoU 100/200
    # object 7 only overlaps background prediction 0 (all but 100 px): IoU 300 / 2300
    ious = matched_ious(pred, gt)
    assert ious == pytest.approx([0.5, 300 / (40 * 60 - 100)])
    merged = np.where(gt > 0, 1, 0)  # both objects in one segment: one of them is unmatched
    assert sorted(matched_ious(merged, gt)) == pytest.approx([0.0, 300 / 500])


def test_predictions_are_nearest_resized_to_gt():
    gt = np.zeros((40, 60), np.int32)
    gt[4:14, 6:26], gt[20:34, 30:50] = 3, 7  # even boundaries: exact at half resolution
    small = gt[::2, ::2]  # (20, 30) prediction of the same objects
    assert image_miou(small, gt) == 1.0
    assert image_miou(small[:, :-1], gt) < 1.0  # a stretched prediction is not
    assert np.isnan(image_miou(gt, np.zeros_like(gt)))  # no GT object: excluded


def test_report_writes_json_and_png(tmp_path):
    gt = _gt()
    rgb = np.zeros((40, 60, 3), np.uint8)
    items = [EvalItem("a", rgb, gt, gt, 1.0), EvalItem("b", rgb, gt, np.zeros_like(gt), 0.25)]
    summary = write_report(items, tmp_path)
    assert summary["miou"] == pytest.approx(0.625)
    assert json.loads((tmp_path / "metrics.json").read_text())["images"] == 2
    assert (tmp_path / "overlays.png").stat().st_size > 0


def test_connected_segments_split_merge_and_order():
    labels = np.zeros((30, 30), np.int32)
    labels[2:10, 2:10] = 1  # 64 px
    labels[20:28, 2:12] = 1  # same label, separate component: 80 px
    labels[15:18, 20:23] = 2  # 9 px: below min area -> 0
    out = connected_segments(labels, min_area=20, max_segments=256)
    assert set(np.unique(out)) == {0, 1, 2, 3}
    # agent label 0 is a segment too (747 px, the largest): ids follow decreasing area
    assert (out[0] == 1).all() and (out[20:28, 2:12] == 2).all() and (out[2:10, 2:10] == 3).all()
    assert out[16, 21] == 0
    assert len(np.unique(connected_segments(labels, 20, 2))) == 3  # two kept + merged 0


def test_segment_stats_by_construction():
    labels = np.zeros((20, 30), np.uint16)
    labels[4:8, 10:20] = 5  # 40 px, x 10..19, y 4..7
    depth = np.full((20, 30), 2.0, np.float32)
    depth[4:6, 10:20] = 0.0  # unknown depth on half the segment
    cam = CameraModel(30, 20, fx=10.0, fy=10.0, cx=15.0, cy=10.0)
    s = segment_stats(labels, np.full((20, 30), 0.8, np.float32), depth, cam)
    assert s.ids.tolist() == [5]
    assert s.bboxes.tolist() == [[10, 4, 10, 4]]
    assert s.areas.tolist() == [40]
    assert s.centroids_px.tolist() == [[14.5, 5.5]]
    assert s.scores[0] == pytest.approx(0.8)
    assert s.mean_depth[0] == pytest.approx(2.0)
    # valid pixels: y 6..7, x 10..19 at z = 2 -> x = (14.5 - 15) / 10 * 2, y = (6.5 - 10) / 10 * 2
    assert s.centroids_3d[0] == pytest.approx([-0.1, -0.7, 2.0])


def test_edge_aware_upsampling_snaps_segments_to_colour_edges():
    """Two discs of other colours on a textured floor, labelled on a 4x coarser map: the refined labels
    follow the discs' true outlines much better than nearest upsampling; a label map without boundaries
    comes back unchanged."""
    rng = np.random.default_rng(0)
    floor = (rng.integers(90, 110, (256, 256, 1)) * np.array([[[1.0, 1.0, 0.8]]])).astype(np.uint8)
    truth = np.zeros((256, 256), np.int32)
    cv2.circle(truth, (90, 101), 37, 1, -1)
    cv2.circle(truth, (170, 150), 23, 2, -1)
    rgb = floor.copy()
    rgb[truth == 1] = (200, 40, 30)
    rgb[truth == 2] = (30, 60, 210)
    coarse = cv2.resize(truth, (64, 64), interpolation=cv2.INTER_NEAREST)
    near, refined = upsample_labels(coarse, 256, 256), refine_upsample(coarse, rgb)
    err_near, err_refined = (near != truth).sum(), (refined != truth).sum()
    assert err_refined < 0.35 * err_near, (err_near, err_refined)
    assert matched_ious(refined, truth).min() > 0.97
    flat = np.full((64, 64), 3, np.int32)
    assert (refine_upsample(flat, rgb) == 3).all()
    odd = refine_upsample(coarse[:, :48], cv2.resize(rgb, (200, 240)))  # non-integer scale factors
    assert odd.shape == (240, 200) and set(np.unique(odd)) == {0, 1, 2}


def _refine_by_hand(labels: np.ndarray, rgb: np.ndarray, sigma_color=10.0, sigma_space=1.0) -> np.ndarray:
    """``refine_upsample``'s rule pixel by pixel: among the labels of the 3x3 map cells around the pixel's
    nearest cell, the one with the largest summed bilateral weight (the first such cell on ties)."""
    h, w = labels.shape
    H, W = rgb.shape[:2]
    cell = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float64)  # uint8 means
    px = rgb.astype(np.float64)
    out = np.zeros((H, W), labels.dtype)
    for y in range(H):
        for x in range(W):
            cy, cx = (y + 0.5) * h / H - 0.5, (x + 0.5) * w / W - 0.5
            votes: dict[int, float] = {}
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy = min(max(int(np.rint(cy)) + dy, 0), h - 1)
                    xx = min(max(int(np.rint(cx)) + dx, 0), w - 1)
                    c2 = ((px[y, x] - cell[yy, xx]) ** 2).sum()
                    wt = np.exp(
                        -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_space**2) - c2 / (2 * sigma_color**2)
                    )
                    votes[int(labels[yy, xx])] = votes.get(int(labels[yy, xx]), 0.0) + wt
            out[y, x] = max(votes, key=votes.get)  # dicts keep insertion order: first label wins ties
    return out


@pytest.mark.parametrize("frame_size", [(64, 64), (50, 72)])
def test_edge_aware_upsampling_matches_its_rule_pixel_by_pixel(frame_size):
    """Many small segments (nearly every map cell borders another label) on a picture with colour edges
    across the cells: the vectorised upsampling equals the rule written pixel by pixel, at an integer and
    at non-integer scale factors."""
    rng = np.random.default_rng(3)
    labels = cv2.resize(
        rng.integers(0, 12, (6, 6)).astype(np.int32), (16, 16), interpolation=cv2.INTER_NEAREST
    )
    labels[rng.random((16, 16)) < 0.15] = 20  # isolated cells
    H, W = frame_size
    rgb = cv2.resize((labels * 19 % 256).astype(np.uint8), (W, H), interpolation=cv2.INTER_LINEAR)
    rgb = np.dstack([rgb, 255 - rgb, rng.integers(0, 40, (H, W), dtype=np.uint8)]).astype(np.uint8)
    rgb = np.roll(rgb, (1, 2), (0, 1))  # colour edges between the map cells' edges
    got = refine_upsample(labels, rgb)
    want = _refine_by_hand(labels, rgb)
    assert got.shape == (H, W)
    assert (got != upsample_labels(labels, H, W)).mean() > 0.02  # the rule does move labels here
    assert (got == want).all(), np.argwhere(got != want)[:5]


def test_segment_stats_boxes_of_many_segments():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, (30, 40)).astype(np.uint16)
    labels[labels == 4] = 0
    s = segment_stats(labels)
    for k, box, area in zip(s.ids, s.bboxes, s.areas, strict=True):
        ys, xs = np.nonzero(labels == k)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert area == len(ys)
    assert s.ids.tolist() == [1, 2, 3, 5]
