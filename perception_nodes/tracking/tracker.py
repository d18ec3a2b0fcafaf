"""Online point tracker: pyramidal Lucas–Kanade (OpenCV) with forward–backward and appearance checks.

Every frame, each live point is tracked from the previous frame with ``cv2.calcOpticalFlowPyrLK`` and back
again; a point stays *visible* when both passes converge, the forward–backward error is small and its
appearance still matches its reference patch (normalised cross-correlation). A point that fails is
*occluded*: it is carried along by the median motion of its nearest visible neighbours (same segment
preferred) and re-acquired by template search once its appearance reappears. Points that leave the image or
stay occluded too long free their slot; free slots are re-seeded (segments, corners or a grid) with new ids.

Coordinates: pixels, x right, y down, the centre of the top-left pixel at (0, 0).
"""

from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np

from perception_nodes.tracking.config import TrackerConfig
from perception_nodes.tracking.seeding import seed_points

log = logging.getLogger(__name__)

_FLAT_STD = 0.02  # reference patches flatter than this (grey std) are checked by intensity, not NCC


@dataclasses.dataclass
class TrackerState:
    """Snapshot after one frame. All arrays have one row per slot (N = config.num_points)."""

    positions: np.ndarray  # (N, 2) float32 pixels, x right, y down
    visible: np.ndarray  # (N,) bool: tracked and seen this frame
    alive: np.ndarray  # (N,) bool: slot holds a track (visible or occluded)
    ids: np.ndarray  # (N,) uint64 stable track ids, 0 = empty slot
    segment_ids: np.ndarray  # (N,) uint16 segment under the point this frame, 0 = none
    seeded: int = 0  # tracks started this frame
    diagnostic: str = ""


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB or (H, W) grey -> (H, W) float32 in [0, 1]."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return gray.astype(np.float32) * (1.0 / 255.0) if gray.dtype == np.uint8 else gray.astype(np.float32)


def sample_patches(gray: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """(M, size*size) bilinear grey patches centred on (M, 2) points (one cv2.remap call)."""
    if len(points) == 0:
        return np.zeros((0, size * size), np.float32)
    r = size // 2
    off = np.arange(-r, r + 1, dtype=np.float32)
    map_x = (points[:, 0, None, None] + off[None, None, :]).repeat(size, axis=1).reshape(-1, size)
    map_y = (points[:, 1, None, None] + off[None, :, None]).repeat(size, axis=2).reshape(-1, size)
    patches = cv2.remap(gray, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return patches.reshape(len(points), size * size)


def appearance_score(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """(M,) similarity in [-1, 1]: NCC for textured references, 1 - 5*mean|diff| for flat ones."""
    ref_c = reference - reference.mean(axis=1, keepdims=True)
    cur_c = current - current.mean(axis=1, keepdims=True)
    ref_std = np.sqrt((ref_c**2).mean(axis=1))
    denom = np.linalg.norm(ref_c, axis=1) * np.linalg.norm(cur_c, axis=1) + 1e-6
    ncc = (ref_c * cur_c).sum(axis=1) / denom
    flat = 1.0 - 5.0 * np.abs(reference - current).mean(axis=1)
    return np.where(ref_std < _FLAT_STD, flat, ncc).astype(np.float32)


class PointTracker:
    """Fixed N slots of tracks; ``step(image)`` once per frame."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._next_id = 1
        self.reset()

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        n, p = self.config.num_points, self.config.patch_size
        self.pos = np.zeros((n, 2), np.float32)
        self.vel = np.zeros((n, 2), np.float32)
        self.alive = np.zeros(n, bool)
        self.visible = np.zeros(n, bool)
        self.ids = np.zeros(n, np.uint64)
        self.occluded_frames = np.zeros(n, np.int32)
        self.reference = np.zeros((n, p * p), np.float32)
        self.segment_ids = np.zeros(n, np.uint16)
        self._prev_pyr: np.ndarray | None = None
        self._gray: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int] | None:
        return None if self._gray is None else self._gray.shape

    def snapshot(self, seeded: int = 0, diagnostic: str = "") -> TrackerState:
        return TrackerState(
            self.pos.copy(),
            self.visible.copy(),
            self.alive.copy(),
            self.ids.copy(),
            self.segment_ids.copy(),
            seeded,
            diagnostic,
        )

    # -- per frame --------------------------------------------------------------------------------
    def step(
        self, image: np.ndarray, segments: np.ndarray | None = None, reseed: bool = True
    ) -> TrackerState:
        """Track all live points into ``image`` ((H, W, 3) RGB uint8 or grey); re-seed free slots."""
        gray = to_gray(image)
        if self._gray is not None and gray.shape != self._gray.shape:
            log.info("image size changed %s -> %s: resetting tracks", self._gray.shape, gray.shape)
            self.reset()
        pyr = self._pyramid(gray)
        if self._prev_pyr is not None and self.alive.any():
            self._track(pyr, gray, segments)
        self._prev_pyr, self._gray = pyr, gray
        seeded = self._reseed(gray, segments) if reseed else 0
        self._label_segments(segments)
        diagnostic = ""
        if not self.alive.any():
            diagnostic = "no trackable points (no texture or all points lost)"
        return self.snapshot(seeded, diagnostic)

    def add_points(self, points: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
        """Start tracks at (M, 2) pixels of the current frame in ``slots`` (default: free); returns ids."""
        if self._gray is None:
            raise RuntimeError("add_points needs a frame: call step() first")
        points = np.asarray(points, np.float32).reshape(-1, 2)
        if slots is None:
            slots = np.flatnonzero(~self.alive)[: len(points)]
            points = points[: len(slots)]
        slots = np.asarray(slots, int)
        new_ids = np.arange(self._next_id, self._next_id + len(slots), dtype=np.uint64)
        self._next_id += len(slots)
        self.pos[slots], self.vel[slots] = points, 0.0
        self.alive[slots], self.visible[slots] = True, True
        self.ids[slots], self.occluded_frames[slots] = new_ids, 0
        self.reference[slots] = sample_patches(self._gray, points, self.config.patch_size)
        return new_ids

    @staticmethod
    def _pyramid(gray: np.ndarray) -> np.ndarray:
        # OpenCV's Python binding does not accept prebuilt pyramids here, so LK builds them from uint8 images.
        return np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def _lk(self, pyr_from: np.ndarray, pyr_to: np.ndarray, pts: np.ndarray, guess: np.ndarray) -> tuple:
        c = self.config
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, c.max_iterations, c.epsilon)
        out, status, _ = cv2.calcOpticalFlowPyrLK(
            pyr_from,
            pyr_to,
            pts.reshape(-1, 1, 2),
            guess.reshape(-1, 1, 2).copy(),
            winSize=(c.win_size, c.win_size),
            maxLevel=c.pyramid_levels,
            criteria=criteria,
            flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
            minEigThreshold=c.min_eig_threshold,
        )
        return out.reshape(-1, 2), status.reshape(-1).astype(bool)

    def _track(self, pyr: np.ndarray, gray: np.ndarray, segments: np.ndarray | None) -> None:
        c = self.config
        idx = np.flatnonzero(self.alive)
        old = self.pos[idx]
        guess = old + self.vel[idx] if c.use_velocity_prior else old
        new, st_f = self._lk(self._prev_pyr, pyr, old, guess)
        back, st_b = self._lk(pyr, self._prev_pyr, new, old)
        fb = np.linalg.norm(back - old, axis=1)
        score = appearance_score(self.reference[idx], sample_patches(gray, new, c.patch_size))
        was_visible = self.visible[idx]
        need = np.where(was_visible, c.ncc_threshold, c.reacquire_ncc)
        ok = st_f & st_b & (fb < c.fb_threshold_px) & (score >= need) & np.isfinite(new).all(axis=1)
        moved = np.where(ok[:, None], new, old)
        lost = ~ok
        if lost.any():
            moved[lost] = self._propagate(old, new - old, ok, lost, idx)
            moved[lost], found = self._reacquire(gray, idx[lost], moved[lost])
            ok[np.flatnonzero(lost)[found]] = True
        self._commit(idx, old, moved, ok, gray)

    def _propagate(
        self, old: np.ndarray, disp: np.ndarray, ok: np.ndarray, lost: np.ndarray, idx: np.ndarray
    ) -> np.ndarray:
        """New positions of lost points: old + median displacement of their k nearest good neighbours."""
        if not ok.any():
            return old[lost]
        good = np.flatnonzero(ok)
        d = np.linalg.norm(old[lost][:, None, :] - old[good][None, :, :], axis=2)
        seg = self.segment_ids[idx]
        d += np.where((seg[lost][:, None] != seg[good][None, :]) & (seg[lost][:, None] > 0), 1e4, 0.0)
        k = min(self.config.neighbours, len(good))
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        return old[lost] + np.median(disp[good][nearest], axis=1)

    def _reacquire(
        self, gray: np.ndarray, slots: np.ndarray, guess: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Template search (normalised correlation) around ``guess`` for each lost slot."""
        c = self.config
        p, r = c.patch_size, c.search_radius_px
        out, found = guess.copy(), np.zeros(len(slots), bool)
        h, w = gray.shape
        for i, (slot, (gx, gy)) in enumerate(zip(slots, guess, strict=True)):
            templ = self.reference[slot].reshape(p, p)
            if templ.std() < _FLAT_STD or not (np.isfinite(gx) and np.isfinite(gy)):
                continue
            x0, y0 = round(gx) - r - p // 2, round(gy) - r - p // 2
            if x0 < 0 or y0 < 0 or x0 + 2 * r + p > w or y0 + 2 * r + p > h:
                continue
            region = gray[y0 : y0 + 2 * r + p, x0 : x0 + 2 * r + p]
            res = cv2.matchTemplate(region, templ, cv2.TM_CCOEFF_NORMED)
            _, best, _, (bx, by) = cv2.minMaxLoc(res)
            if best >= c.reacquire_ncc:
                dx, dy = _subpixel(res, bx, by)
                out[i] = (x0 + bx + p // 2 + dx, y0 + by + p // 2 + dy)
                found[i] = True
        return out, found

    def _commit(
        self, idx: np.ndarray, old: np.ndarray, moved: np.ndarray, ok: np.ndarray, gray: np.ndarray
    ) -> None:
        c = self.config
        h, w = gray.shape
        b = c.border_px
        self.vel[idx] = np.where(ok[:, None], moved - old, self.vel[idx])
        self.pos[idx] = moved
        self.visible[idx] = ok
        self.occluded_frames[idx] = np.where(ok, 0, self.occluded_frames[idx] + 1)
        inside = (
            (moved[:, 0] >= b) & (moved[:, 0] <= w - 1 - b) & (moved[:, 1] >= b) & (moved[:, 1] <= h - 1 - b)
        )
        dead = ~inside | (self.occluded_frames[idx] > c.max_occluded_frames) | ~np.isfinite(moved).all(axis=1)
        self._free(idx[dead])
        keep = ok & ~dead
        if keep.any() and c.reference_update > 0:
            cur = sample_patches(gray, moved[keep], c.patch_size)
            a = c.reference_update
            self.reference[idx[keep]] = (1 - a) * self.reference[idx[keep]] + a * cur

    def _free(self, slots: np.ndarray) -> None:
        self.alive[slots] = False
        self.visible[slots] = False
        self.ids[slots] = 0
        self.pos[slots] = 0.0
        self.vel[slots] = 0.0

    def _reseed(self, gray: np.ndarray, segments: np.ndarray | None) -> int:
        c = self.config
        free = int((~self.alive).sum())
        if c.seeding == "none" or free == 0 or c.num_points == 0:
            return 0
        if self.alive.any() and free < c.reseed_fraction * c.num_points:
            return 0
        pts = seed_points(
            gray,
            free,
            self.pos[self.alive],
            mode=c.seeding,
            min_distance=c.min_distance_px,
            min_texture=c.min_texture,
            border=max(c.border_px, c.patch_size // 2),
            segments=segments,
        )
        if len(pts):
            self.add_points(pts)
        return len(pts)

    def _label_segments(self, segments: np.ndarray | None) -> None:
        if segments is None or self._gray is None:
            self.segment_ids[:] = 0
            return
        h, w = segments.shape
        xy = np.round(self.pos).astype(int)
        x, y = np.clip(xy[:, 0], 0, w - 1), np.clip(xy[:, 1], 0, h - 1)
        self.segment_ids[:] = np.where(self.alive, segments[y, x], 0).astype(np.uint16)


def _subpixel(res: np.ndarray, bx: int, by: int) -> tuple[float, float]:
    """Parabolic sub-pixel offset of the correlation peak at (bx, by)."""

    def fit(m1: float, c0: float, p1: float) -> float:
        den = m1 - 2 * c0 + p1
        return 0.0 if abs(den) < 1e-9 else float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5))

    h, w = res.shape
    dx = fit(res[by, bx - 1], res[by, bx], res[by, bx + 1]) if 0 < bx < w - 1 else 0.0
    dy = fit(res[by - 1, bx], res[by, bx], res[by + 1, bx]) if 0 < by < h - 1 else 0.0
    return dx, dy
