"""Streaming tracker component: frames in, a window of point tracks out (no ROS types).

``step(frame, segments)`` tracks every live point into the new frame, re-seeds free slots, and returns the
last ``config.history`` steps of every live track, oldest first, with stable ids. A time jump (a gap larger
than ``config.time_jump_s``) or time going backwards (a bag loop) resets all tracks and their history.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from perception_nodes.tracking.config import TrackerConfig
from perception_nodes.tracking.tracker import PointTracker, TrackerState
from perception_nodes.types import Frame

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrackResult:
    """Live tracks after one frame (M = live tracks, T = config.history)."""

    stamp_ns: int
    track_ids: np.ndarray  # (M,) uint64 stable ids
    points: np.ndarray  # (M, T, 2) float32 pixels, x right, y down; oldest step first, last = this frame
    visible: np.ndarray  # (M, T) bool: seen at that step (False = occluded or not yet tracked)
    step_offsets: np.ndarray  # (T,) float32 seconds relative to stamp_ns (<= 0, last = 0)
    segment_ids: np.ndarray  # (M,) uint16 segment under each point now, 0 = none
    seeded: int = 0
    reset: bool = False  # history was reset at this frame (first frame, time jump, size change)
    diagnostic: str = ""

    @property
    def num_tracks(self) -> int:
        return len(self.track_ids)


class TrackHistory:
    """Ring of the last ``length`` tracker snapshots, read back per live track."""

    def __init__(self, length: int, slots: int):
        self.length, self.slots = length, slots
        self.reset()

    def reset(self) -> None:
        t, n = self.length, self.slots
        self.points = np.zeros((t, n, 2), np.float32)
        self.visible = np.zeros((t, n), bool)
        self.ids = np.zeros((t, n), np.uint64)
        self.stamps = np.zeros(t, np.int64)
        self.count = 0

    def push(self, stamp_ns: int, state: TrackerState) -> None:
        for arr in (self.points, self.visible, self.ids, self.stamps):
            arr[:-1] = arr[1:]
        self.points[-1], self.visible[-1] = state.positions, state.visible & state.alive
        self.ids[-1], self.stamps[-1] = state.ids, stamp_ns
        self.count = min(self.count + 1, self.length)

    def window(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """points (M, T, 2), visible (M, T), step_offsets (T,) for ``slots``; steps before a track began
        repeat its first position and are invisible."""
        same = (self.ids[:, slots] == self.ids[-1, slots][None, :]) & (self.ids[:, slots] != 0)  # (T, M)
        same[: self.length - self.count] = False
        first = np.argmax(same, axis=0)  # earliest step of each track in the window
        pts = self.points[:, slots].copy()
        t_idx = np.arange(self.length)[:, None]
        pts = np.where((t_idx < first[None, :])[..., None], pts[first, np.arange(len(slots))][None], pts)
        vis = self.visible[:, slots] & same
        stamps = np.where(
            np.arange(self.length) < self.length - self.count, self.stamps[-self.count], self.stamps
        )
        offsets = ((stamps - self.stamps[-1]) * 1e-9).astype(np.float32)
        return pts.transpose(1, 0, 2), vis.T, offsets


class TrackerComponent:
    """``reset()``; ``step(frame, segments=None) -> TrackResult``."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.tracker = PointTracker(self.config)
        self.history = TrackHistory(self.config.history, self.config.num_points)
        self._last_stamp: int | None = None

    def reset(self) -> None:
        self.tracker.reset()
        self.history.reset()
        self._last_stamp = None

    def step(self, frame: Frame, segments: np.ndarray | None = None) -> TrackResult:
        """Track into ``frame``; ``segments`` is an optional (H, W) uint16 instance map (0 = none)."""
        reset = self._check_time(frame.stamp_ns) or self.tracker.shape != frame.rgb.shape[:2]
        if reset:
            self.tracker.reset()
            self.history.reset()
        if segments is not None and segments.shape != frame.rgb.shape[:2]:
            log.warning("segments %s do not match the image %s: ignored", segments.shape, frame.rgb.shape[:2])
            segments = None
        state = self.tracker.step(frame.rgb, segments)
        self.history.push(frame.stamp_ns, state)
        slots = np.flatnonzero(state.alive)
        points, visible, offsets = self.history.window(slots)
        return TrackResult(
            stamp_ns=frame.stamp_ns,
            track_ids=state.ids[slots],
            points=points,
            visible=visible,
            step_offsets=offsets,
            segment_ids=state.segment_ids[slots],
            seeded=state.seeded,
            reset=reset,
            diagnostic=state.diagnostic,
        )

    def _check_time(self, stamp_ns: int) -> bool:
        last, self._last_stamp = self._last_stamp, stamp_ns
        if last is None:
            return True
        gap = (stamp_ns - last) * 1e-9
        if gap <= 0 or gap > self.config.time_jump_s:
            log.info("time jump of %.3f s: resetting tracks", gap)
            return True
        return False
