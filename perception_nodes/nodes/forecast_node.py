"""ARFM forecast node: PointTracks (+ the image of the same stamp) -> TrackForecast.

Triggered by each PointTracks message; the image with the tracks' stamp is taken from a short ring of
recent images (none found -> the tracks are skipped, logged once). At most one forecast every
``forecasting.forecast_period_s``: K samples x N points x H steps in pixels with step time offsets,
per-point uncertainty (sample spread), track ids and segment ids. A time jump or bag loop drops the
warm-start state.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np

from perception_nodes.forecasting.component import ForecastComponent, ForecastResult
from perception_nodes.forecasting.config import ForecastingConfig
from perception_nodes.nodes.base import NodeBase
from perception_nodes.nodes.tracking_node import TRACKS_TYPE, tracks_from_message
from perception_nodes.runtime.bus import QoS, stamp_ns
from perception_nodes.runtime.convert import to_rgb
from perception_nodes.types import ConversionError, Frame

FORECAST_TYPE = "perception_msgs/msg/TrackForecast"


@dataclasses.dataclass(frozen=True)
class ForecastNodeConfig:
    image_topic: str = dataclasses.field(
        default="/camera/color/image_raw", metadata={"help": "input colour image"}
    )
    tracks_topic: str = dataclasses.field(
        default="/perception/tracks", metadata={"help": "perception_msgs/PointTracks input (the trigger)"}
    )
    forecast_topic: str = dataclasses.field(
        default="/perception/forecast", metadata={"help": "perception_msgs/TrackForecast output"}
    )
    image_buffer: int = dataclasses.field(
        default=8, metadata={"help": "recent images kept to find the one matching the tracks' stamp"}
    )
    forecasting: ForecastingConfig = dataclasses.field(
        default_factory=ForecastingConfig, metadata={"help": "ARFM forecast settings"}
    )

    def __post_init__(self):
        for name in ("image_topic", "tracks_topic", "forecast_topic"):
            if not getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must be an absolute topic name, got {getattr(self, name)!r}")
        if self.image_buffer < 1:
            raise ValueError("image_buffer must be >= 1")


def forecast_message(make, result: ForecastResult, header):
    """TrackForecast from a ForecastResult (flat row-major arrays, see msgs/msg/TrackForecast.msg)."""
    k, m, h = result.samples.shape[:3]
    return make(
        FORECAST_TYPE,
        header=header,
        num_samples=k,
        num_points=m,
        horizon=h,
        samples=result.samples.reshape(-1).astype(np.float32),
        query_points=result.query_points.reshape(-1).astype(np.float32),
        uncertainty=result.uncertainty.astype(np.float32),
        step_offsets=result.step_offsets.astype(np.float32),
        track_ids=result.track_ids.astype(np.uint64),
        segment_ids=result.segment_ids.astype(np.uint16),
        model_id=result.model_id,
    )


def forecast_from_message(msg) -> ForecastResult:
    """The inverse of ``forecast_message`` (any message with TrackForecast fields)."""
    k, m, h = int(msg.num_samples), int(msg.num_points), int(msg.horizon)
    seg = np.asarray(msg.segment_ids, np.uint16)
    return ForecastResult(
        stamp_ns=stamp_ns(msg),
        samples=np.asarray(msg.samples, np.float32).reshape(k, m, h, 2),
        query_points=np.asarray(msg.query_points, np.float32).reshape(m, 2),
        uncertainty=np.asarray(msg.uncertainty, np.float32),
        step_offsets=np.asarray(msg.step_offsets, np.float32),
        track_ids=np.asarray(msg.track_ids, np.uint64),
        segment_ids=seg if len(seg) == m else np.zeros(m, np.uint16),
        model_id=str(msg.model_id),
    )


class ForecastNode(NodeBase):
    Config = ForecastNodeConfig
    name = "forecast"

    def setup(self) -> None:
        cfg = self.config
        self.component = ForecastComponent(cfg.forecasting)
        self.pub = self.bus.publisher(cfg.forecast_topic, FORECAST_TYPE, QoS.RESULT)
        self._images: collections.deque = collections.deque(maxlen=cfg.image_buffer)
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._pending = None  # tracks that arrived before their image
        self.bus.subscribe(cfg.image_topic, "sensor_msgs/msg/Image", self.on_image, QoS.SENSOR)
        self.trigger(cfg.tracks_topic, TRACKS_TYPE, self.on_tracks, QoS.RESULT)

    def on_image(self, msg) -> None:
        with self._lock:
            self._images.append(msg)
            pending = (
                self._pending
                if self._pending is not None and stamp_ns(self._pending) == stamp_ns(msg)
                else None
            )
            if pending is not None:
                self._pending = None
        if pending is not None:  # its tracks came first: forecast now
            self._offer(self.config.tracks_topic, pending)

    def on_tracks(self, msg) -> None:
        stamp = stamp_ns(msg)
        with self._lock:
            image = next((m for m in reversed(self._images) if stamp_ns(m) == stamp), None)
            if image is None:
                newest = stamp_ns(self._images[-1]) if self._images else None
                if newest is None or newest < stamp:  # the image may still come: wait for it
                    self._pending = msg
                    return
        if image is None:
            self._once("no-image", "forecast: no image with the stamp of the tracks (%d): skipped", stamp)
            return
        try:
            rgb = to_rgb(image)
        except ConversionError as exc:
            self._once("bad-image", "forecast: rejected image: %s", exc)
            return
        frame = Frame(stamp, rgb, frame_id=msg.header.frame_id)
        result = self.component.step(frame, tracks_from_message(msg))
        if result is None:
            return
        if result.diagnostic:
            self._once(result.diagnostic, "forecast @ %d: %s", stamp, result.diagnostic)
        self.pub.publish(forecast_message(self.bus.make, result, self.bus.header(stamp, frame.frame_id)))

    def _once(self, key: str, fmt: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(fmt, *args)


def main(args=None) -> None:
    """``ros2 run perception_nodes forecast_node``."""
    from perception_nodes.runtime.rclpy_bus import spin

    spin(ForecastNode, args)
