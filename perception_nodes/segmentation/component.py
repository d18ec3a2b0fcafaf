"""Streaming EISEN component: ``reset()``, ``step(frame) -> SegmentationResult`` (no ROS types).

Per frame: resize to the network input, run the fast path (or the official reference path) with randomness
seeded by (seed, frame stamp), connected components on the small label map, then *stable ids*: each segment
takes the id of the previous frame's segment it overlaps most (Hungarian on IoU, at least ``match_iou``),
others get fresh ids. With depth and intrinsics (and ``depth_refine``), the segments are first upsampled and
cut at the supporting plane (``depth_refine``), and ids are matched at the frame's resolution. Labels are
returned at the frame's resolution with per-segment statistics (bbox, area, centroid, score; mean depth and
3D centroid when depth and intrinsics are given). When the frame comes with the robot's own mask
(``Frame.self_mask``: where the robot knows its body is, from its kinematics), those pixels form one segment
with the fixed id ``ROBOT_SEGMENT_ID`` (65535), whatever EISEN found there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from perception_nodes.segmentation.config import EisenComponentConfig, EisenConfig
from perception_nodes.segmentation.depth_refine import DepthRefineConfig, refine_with_depth
from perception_nodes.segmentation.export import SHIPPED
from perception_nodes.segmentation.network import EisenNet, load_weights
from perception_nodes.segmentation.processor import (
    SegmentStats,
    colorize,
    connected_segments,
    preprocess,
    refine_upsample,
    segment_stats,
    upsample_labels,
)
from perception_nodes.segmentation.segmenter import EisenSegmenter, make_noise, segment_reference
from perception_nodes.types import Frame

log = logging.getLogger(__name__)

MAX_ID = 65535
ROBOT_SEGMENT_ID = MAX_ID  # the robot's own body (``Frame.self_mask``); EISEN's segments never take it


def load_model(weights: str, preset: str = "small") -> tuple[EisenConfig, EisenNet]:
    """Build the network for ``weights`` (config from the JSON next to it) or the shipped/preset model.

    Raises FileNotFoundError for a missing file and WeightsMismatchError (naming keys) for weights that do
    not fit the config.
    """
    path = Path(weights) if weights else SHIPPED.get(preset)
    if weights and not path.exists():
        raise FileNotFoundError(f"EISEN weights not found: {path}")
    if path is not None and path.exists():
        cfg_file = path.with_suffix(".json")
        cfg = EisenConfig.from_json(cfg_file.read_text()) if cfg_file.exists() else EisenConfig.preset(preset)
        net = EisenNet(cfg)
        load_weights(net, path)
        return cfg, net.eval()
    log.warning(
        "no EISEN weights for preset %r: running a random initialisation (segments are meaningless)", preset
    )
    torch.manual_seed(0)
    cfg = EisenConfig.preset(preset)
    return cfg, EisenNet(cfg).eval()


@dataclasses.dataclass
class SegmentationResult:
    """Segments of one frame. labels: (H, W) uint16 at the frame's resolution, 0 = no segment."""

    stamp_ns: int
    labels: np.ndarray
    stats: SegmentStats
    model_id: str
    overlay: np.ndarray | None = None  # (H, W, 3) uint8
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)


class EisenComponent:
    """EISEN segmentation with stable segment ids across frames."""

    def __init__(
        self,
        config: EisenComponentConfig | None = None,
        net: EisenNet | None = None,
        model_config: EisenConfig | None = None,
    ):
        self.config = config or EisenComponentConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if net is None:
            model_config, net = load_model(self.config.weights, self.config.preset)
        self.cfg = dataclasses.replace(model_config or net.cfg, kprop_tol=self.config.early_exit_tol)
        if self.config.kprop_dtype:
            self.cfg = dataclasses.replace(self.cfg, kprop_dtype=self.config.kprop_dtype)
        self.device = torch.device(self.config.device)
        self.net = net.to(self.device).eval()
        # NHWC convolutions: about 1.5x faster backbone on CPU (oneDNN), the same numbers
        self._memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.net = self.net.to(memory_format=self._memory_format)
        self.segmenter = EisenSegmenter(self.cfg, self.net, early_exit=self.config.early_exit_tol > 0).eval()
        self.model_id = f"{self.cfg.name}@{self.cfg.short_hash()}"
        self._warned: set[str] = set()
        self.depth_refine = self._depth_refine_config()
        self.reset()

    def _depth_refine_config(self) -> DepthRefineConfig | None:
        if not self.config.depth_refine:
            return None
        if importlib.util.find_spec("open3d") is None:
            log.warning("depth refinement needs open3d (pip install open3d-cpu, or open3d): it is off")
            return None
        return DepthRefineConfig(
            support_tol_m=self.config.support_tol_m,
            max_height_m=self.config.max_height_m,
            seed=self.config.seed,
        )

    def reset(self) -> None:
        """Forget the previous frame (ids restart at 1)."""
        self._prev: np.ndarray | None = None  # stable ids at map resolution (frame resolution with depth)
        self._next_id = 1

    @torch.inference_mode()
    def step(self, frame: Frame) -> SegmentationResult:
        t0 = time.perf_counter()
        H, W = frame.rgb.shape[:2]
        if self.cfg.input_size != (H, W) and "resize" not in self._warned:
            log.info("resizing %dx%d frames to the network input %dx%d", W, H, *self.cfg.input_size[::-1])
            self._warned.add("resize")
        image = preprocess(frame.rgb, self.cfg.input_size).to(self.device, memory_format=self._memory_format)
        stamp = frame.stamp_ns if self.config.seed_per_frame else 0
        seed = zlib.crc32(f"{self.config.seed}:{stamp}".encode())
        t1 = time.perf_counter()
        agents, conf = self._infer(image, seed)
        t2 = time.perf_counter()
        segments = connected_segments(agents, self.cfg.min_segment_area, self.cfg.max_segments)
        cut = self._cut_at_support(segments, frame)
        if cut is not None:  # already at the frame's resolution
            labels = self._associate(cut).astype(np.uint16)
        else:
            labels = self._upsample(self._associate(segments), frame.rgb).astype(np.uint16)
        if frame.self_mask is not None and self.config.self_mask:
            labels[frame.self_mask] = ROBOT_SEGMENT_ID
        conf_full = cv2.resize(conf, (W, H), interpolation=cv2.INTER_LINEAR)
        stats = segment_stats(
            labels, conf_full, frame.depth, frame.camera if frame.depth is not None else None
        )
        overlay = colorize(labels.astype(np.int32), frame.rgb) if self.config.overlay else None
        t3 = time.perf_counter()
        timings = {
            "pre": (t1 - t0) * 1e3,
            "network": (t2 - t1) * 1e3,
            "post": (t3 - t2) * 1e3,
            "total": (t3 - t0) * 1e3,
        }
        return SegmentationResult(frame.stamp_ns, labels, stats, self.model_id, overlay, timings)

    def _upsample(self, segments: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Map-resolution segments (h, w) -> the frame's resolution (edge-aware or nearest)."""
        if self.config.refine:
            return refine_upsample(segments, rgb)
        return upsample_labels(segments, *rgb.shape[:2])

    def _cut_at_support(self, segments: np.ndarray, frame: Frame) -> np.ndarray | None:
        """Segments at frame resolution cut at the supporting plane (``depth_refine``), or None (no depth,
        no intrinsics, refinement off, or no plane found: the segments stay as EISEN made them)."""
        if self.depth_refine is None or frame.depth is None or frame.camera is None:
            return None
        cut = refine_with_depth(
            self._upsample(segments, frame.rgb), frame.depth, frame.camera, self.depth_refine
        )
        if cut is None and "plane" not in self._warned:
            log.info("no supporting plane in the depth image: segments are not cut (logged once)")
            self._warned.add("plane")
        return cut

    def _infer(self, image: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(h, w) agent labels and confidence at map resolution."""
        if self.config.path == "reference":
            labels, conf = segment_reference(self.net, image.cpu(), self.cfg, seed)
            return labels.numpy(), conf.numpy()
        noise = {k: v.to(self.device) for k, v in make_noise(self.cfg, 1, seed).items()}
        labels, conf = self.segmenter(image, *noise.values())
        return labels[0].cpu().numpy(), conf[0].float().cpu().numpy()

    def _associate(self, segments: np.ndarray) -> np.ndarray:
        """Relabel connected segments (1..K) with ids stable across frames."""
        cur_ids = [int(k) for k in np.unique(segments) if k != 0]
        mapping: dict[int, int] = {}
        if self._prev is not None and self._prev.shape != segments.shape:  # depth came or went
            self._prev = upsample_labels(self._prev, *segments.shape)
        if self._prev is not None and cur_ids:
            prev_ids = [int(k) for k in np.unique(self._prev) if k != 0]
            if prev_ids:
                mapping = _match(segments, cur_ids, self._prev, prev_ids, self.config.match_iou)
        used = set(mapping.values())
        lut = np.zeros(int(segments.max(initial=0)) + 1, np.int32)
        for k in cur_ids:
            if k not in mapping:
                mapping[k] = self._fresh_id(used)
                used.add(mapping[k])
            lut[k] = mapping[k]
        out = lut[segments]
        self._prev = out
        return out

    def _fresh_id(self, used: set[int]) -> int:
        for _ in range(MAX_ID - 1):
            candidate = self._next_id
            self._next_id = self._next_id % (MAX_ID - 1) + 1  # 1 .. MAX_ID - 1: never ROBOT_SEGMENT_ID
            if candidate not in used:
                return candidate
        raise RuntimeError("no free segment id")


def _match(
    a: np.ndarray, a_ids: list[int], b: np.ndarray, b_ids: list[int], min_iou: float
) -> dict[int, int]:
    """Current segment id -> previous id: Hungarian on IoU (>= ``min_iou``), then, for what is left, on
    centroid distance among segments of similar area (small objects moving fast overlap little)."""
    iou = _iou_matrix(a, a_ids, b, b_ids)
    mapping: dict[int, int] = {}
    rows, cols = linear_sum_assignment(-iou)
    for r, c in zip(rows, cols, strict=True):
        if iou[r, c] >= min_iou:
            mapping[a_ids[r]] = b_ids[c]
    left_a = [i for i, k in enumerate(a_ids) if k not in mapping]
    used = set(mapping.values())
    left_b = [j for j, k in enumerate(b_ids) if k not in used]
    if not left_a or not left_b:
        return mapping
    ca, sa = _centroids(a, [a_ids[i] for i in left_a])
    cb, sb = _centroids(b, [b_ids[j] for j in left_b])
    dist = np.linalg.norm(ca[:, None] - cb[None], axis=-1)
    ratio = sa[:, None] / sb[None]
    reach = 1.5 * np.sqrt(np.maximum(sa[:, None], sb[None])) + 2.0
    cost = np.where((ratio > 0.5) & (ratio < 2.0) & (dist <= reach), dist, 1e6)
    rows, cols = linear_sum_assignment(cost)
    for r, c in zip(rows, cols, strict=True):
        if cost[r, c] < 1e6:
            mapping[a_ids[left_a[r]]] = b_ids[left_b[c]]
    return mapping


def _segment_index(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """(H·W,) the position in ``ids`` of each pixel's label, -1 where it is not one of them."""
    index = np.full(int(labels.max()) + 1, -1)
    index[ids] = np.arange(len(ids))
    return index[labels.reshape(-1)]


def _centroids(labels: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) centroids (y, x) and (K,) areas of the given segment ids (present in ``labels``)."""
    seg = _segment_index(labels, ids)
    keep = np.flatnonzero(seg >= 0)
    ys, xs = np.divmod(keep, labels.shape[1])
    areas = np.bincount(seg[keep], minlength=len(ids)).astype(np.float64)
    sums = [np.bincount(seg[keep], c, minlength=len(ids)) for c in (ys, xs)]
    return np.stack(sums, -1) / np.maximum(areas, 1)[:, None], areas


def _iou_matrix(a: np.ndarray, a_ids: list[int], b: np.ndarray, b_ids: list[int]) -> np.ndarray:
    """IoU between every segment of ``a`` (ids a_ids) and of ``b`` (ids b_ids), same-size label maps."""
    x, y = _segment_index(a, a_ids), _segment_index(b, b_ids)
    both = (x >= 0) & (y >= 0)
    inter = np.zeros((len(a_ids), len(b_ids)))
    np.add.at(inter, (x[both], y[both]), 1)
    area_a = np.bincount(x[x >= 0], minlength=len(a_ids))
    area_b = np.bincount(y[y >= 0], minlength=len(b_ids))
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1)
