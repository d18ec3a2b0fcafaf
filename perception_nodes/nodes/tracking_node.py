"""Point tracking node: camera image (+ latest ObjectSegments for seeding) -> PointTracks.

Every image advances all tracks (pyramidal LK with forward-backward and appearance checks, see
``tracking.tracker``) and publishes the last ``tracker.history`` steps of every live track with stable ids.
New tracks are seeded on the latest segments when a segments topic is given, else on corners/a grid.
No texture or all points lost -> an empty PointTracks (and one log line); a time jump or bag loop resets.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from perception_nodes.nodes.base import NodeBase
from perception_nodes.runtime.bus import QoS, stamp_ns
from perception_nodes.runtime.convert import image_to_numpy, to_rgb
from perception_nodes.tracking.component import TrackerComponent, TrackResult
from perception_nodes.tracking.config import TrackerConfig
from perception_nodes.types import ConversionError, Frame

TRACKS_TYPE = "perception_msgs/msg/PointTracks"
SEGMENTS_TYPE = "perception_msgs/msg/ObjectSegments"


@dataclasses.dataclass(frozen=True)
class TrackingNodeConfig:
    image_topic: str = dataclasses.field(
        default="/camera/color/image_raw", metadata={"help": "input colour image"}
    )
    segments_topic: str = dataclasses.field(
        default="/perception/segments",
        metadata={"help": "ObjectSegments used to seed tracks and label them ('' = none)"},
    )
    tracks_topic: str = dataclasses.field(
        default="/perception/tracks", metadata={"help": "perception_msgs/PointTracks output"}
    )
    segments_max_age_s: float = dataclasses.field(
        default=0.5, metadata={"help": "segments older than this (relative to the image) are not used"}
    )
    tracker: TrackerConfig = dataclasses.field(
        default_factory=TrackerConfig, metadata={"help": "tracker settings"}
    )

    def __post_init__(self):
        for name in ("image_topic", "tracks_topic"):
            if not getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must be an absolute topic name, got {getattr(self, name)!r}")
        if self.segments_max_age_s < 0:
            raise ValueError("segments_max_age_s must be >= 0")


def tracks_message(make, result: TrackResult, header):
    """PointTracks from a TrackResult (flat row-major arrays, see msgs/msg/PointTracks.msg)."""
    m, t = result.points.shape[:2]
    return make(
        TRACKS_TYPE,
        header=header,
        num_points=m,
        num_steps=t,
        track_ids=result.track_ids.astype(np.uint64),
        points=result.points.reshape(-1).astype(np.float32),
        visible=result.visible.reshape(-1).astype(np.uint8),
        step_offsets=result.step_offsets.astype(np.float32),
        segment_ids=result.segment_ids.astype(np.uint16),
    )


def tracks_from_message(msg) -> TrackResult:
    """The inverse of ``tracks_message`` (any message with PointTracks fields)."""
    m, t = int(msg.num_points), int(msg.num_steps)
    seg = np.asarray(msg.segment_ids, np.uint16)
    return TrackResult(
        stamp_ns=stamp_ns(msg),
        track_ids=np.asarray(msg.track_ids, np.uint64),
        points=np.asarray(msg.points, np.float32).reshape(m, t, 2),
        visible=np.asarray(msg.visible, np.uint8).reshape(m, t) > 0,
        step_offsets=np.asarray(msg.step_offsets, np.float32),
        segment_ids=seg if len(seg) == m else np.zeros(m, np.uint16),
    )


class TrackingNode(NodeBase):
    Config = TrackingNodeConfig
    name = "tracking"

    def setup(self) -> None:
        cfg = self.config
        self.component = TrackerComponent(cfg.tracker)
        self.pub = self.bus.publisher(cfg.tracks_topic, TRACKS_TYPE, QoS.RESULT)
        self._segments = None
        self._lock = threading.Lock()
        self._last_diagnostic = ""
        if cfg.segments_topic:
            self.bus.subscribe(cfg.segments_topic, SEGMENTS_TYPE, self.on_segments, QoS.RESULT, optional=True)
        self.trigger(cfg.image_topic, "sensor_msgs/msg/Image", self.on_image)

    def on_segments(self, msg) -> None:
        with self._lock:
            self._segments = msg

    def on_image(self, msg) -> None:
        try:
            rgb = to_rgb(msg)
        except ConversionError as exc:
            self.log.warning("tracking: rejected image @ %d: %s", stamp_ns(msg), exc)
            return
        frame = Frame(stamp_ns(msg), rgb, frame_id=msg.header.frame_id)
        result = self.component.step(frame, self._labels(frame))
        if result.diagnostic != self._last_diagnostic:
            if result.diagnostic:
                self.log.warning("tracking @ %d: %s", frame.stamp_ns, result.diagnostic)
            self._last_diagnostic = result.diagnostic
        self.pub.publish(
            tracks_message(self.bus.make, result, self.bus.header(frame.stamp_ns, frame.frame_id))
        )

    def _labels(self, frame: Frame) -> np.ndarray | None:
        with self._lock:
            seg = self._segments
        if seg is None:
            return None
        age = (frame.stamp_ns - stamp_ns(seg)) * 1e-9
        if age < 0 or age > self.config.segments_max_age_s:
            return None
        labels = image_to_numpy(seg.labels)
        return labels if labels.shape == frame.rgb.shape[:2] else None


def main(args=None) -> None:
    """``ros2 run perception_nodes tracking_node``."""
    from perception_nodes.runtime.rclpy_bus import spin

    spin(TrackingNode, args)
