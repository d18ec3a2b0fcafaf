"""EISEN segmentation node: camera image (+ aligned depth, camera_info, the robot's own mask) ->
ObjectSegments (+ overlay image).

Segments are published at the input resolution as a mono16 label image with per-segment records; ids are
stable across frames (see ``segmentation.component``). Images in an unsupported encoding are rejected with
one log line; images of another size than the network input are resized (logged once).

Aligned inputs (depth, the robot's mask) carry the image's stamp and usually arrive just after it: an image
waits for those that have been seen (before any has come, only the very first image waits), at most until
the next image arrives. The robot's mask (mono8, non-zero where the robot's own body is, from its
kinematics: e.g. a URDF self-filter) becomes one segment with id 65535.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from perception_nodes.nodes.base import NodeBase
from perception_nodes.runtime.bus import QoS, stamp_ns
from perception_nodes.runtime.convert import (
    camera_from_info,
    depth_to_metres,
    image_to_numpy,
    numpy_to_image,
    to_rgb,
)
from perception_nodes.segmentation.component import EisenComponent, SegmentationResult
from perception_nodes.segmentation.config import EisenComponentConfig
from perception_nodes.types import ConversionError, Frame

SEGMENTS_TYPE = "perception_msgs/msg/ObjectSegments"


@dataclasses.dataclass(frozen=True)
class SegmentationNodeConfig:
    image_topic: str = dataclasses.field(
        default="/camera/color/image_raw", metadata={"help": "input colour image"}
    )
    camera_info_topic: str = dataclasses.field(
        default="/camera/color/camera_info",
        metadata={"help": "intrinsics of the image ('' = none: no 3D centroids)"},
    )
    depth_topic: str = dataclasses.field(
        default="/camera/aligned_depth_to_color/image_raw",
        metadata={"help": "depth aligned to the colour image, same stamp ('' = none)"},
    )
    self_mask_topic: str = dataclasses.field(
        default="/robot/self_mask",
        metadata={
            "help": "mono8 mask of the robot's own body aligned to the colour image, same stamp, from its "
            "kinematics ('' = none): one segment with id 65535"
        },
    )
    segments_topic: str = dataclasses.field(
        default="/perception/segments", metadata={"help": "perception_msgs/ObjectSegments output"}
    )
    overlay_topic: str = dataclasses.field(
        default="/perception/segments/overlay", metadata={"help": "rgb8 overlay of the segments ('' = off)"}
    )
    component: EisenComponentConfig = dataclasses.field(
        default_factory=EisenComponentConfig, metadata={"help": "EISEN component settings"}
    )

    def __post_init__(self):
        for name in ("image_topic", "segments_topic"):
            if not getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must be an absolute topic name, got {getattr(self, name)!r}")


class SegmentationNode(NodeBase):
    Config = SegmentationNodeConfig
    name = "segmentation"

    def setup(self) -> None:
        cfg = self.config
        overlay = bool(cfg.overlay_topic) and cfg.component.overlay
        self.component = EisenComponent(dataclasses.replace(cfg.component, overlay=overlay))
        self.pub = self.bus.publisher(cfg.segments_topic, SEGMENTS_TYPE, QoS.RESULT)
        self.overlay_pub = (
            self.bus.publisher(cfg.overlay_topic, "sensor_msgs/msg/Image", QoS.SENSOR) if overlay else None
        )
        if cfg.camera_info_topic:
            self.cache(cfg.camera_info_topic, "sensor_msgs/msg/CameraInfo")
        self._logged: set[str] = set()
        aligned = [t for t in (cfg.depth_topic, cfg.self_mask_topic) if t]
        self._aligned: dict[str, object] = dict.fromkeys(aligned)  # topic -> latest message
        self._waiting = None  # image held until the aligned inputs of its stamp arrive
        self._waiting_first = False  # the held image is the first one (it waits for every aligned input)
        self._started = False  # an image has come (the first one may wait for inputs that never come)
        self._lock = threading.Lock()  # aligned inputs arrive on subscription threads, images on the worker
        self.trigger(cfg.image_topic, "sensor_msgs/msg/Image", self.on_image)
        for topic in aligned:
            self.bus.subscribe(
                topic,
                "sensor_msgs/msg/Image",
                lambda msg, t=topic: self.on_aligned(t, msg),
                QoS.SENSOR,
                optional=True,
            )

    def on_aligned(self, topic: str, msg) -> None:
        """Keep the latest message of an aligned input; release a held image once all it waits for came."""
        with self._lock:
            self._aligned[topic] = msg
            waiting = self._waiting
            if waiting is None or not self._ready(waiting, self._waiting_first):
                return
            self._waiting = None
        self._offer(self.config.image_topic, waiting)

    def _ready(self, image, first: bool) -> bool:
        """Every aligned input seen so far (for the ``first`` image: every configured one) has reached the
        image's stamp."""
        stamp = stamp_ns(image)
        return all(
            m is not None and stamp_ns(m) >= stamp for m in self._aligned.values() if m is not None or first
        )

    def on_image(self, msg) -> None:
        with self._lock:
            held, first = self._waiting, not self._started
            self._started = True
            if held is None and not self._ready(msg, first):
                self._waiting, self._waiting_first = msg, first
                return
            if held is not None and held is not msg:
                self._waiting = None
            else:
                held = None
        if held is not None:
            self._segment(held)  # what it waited for never came
        self._segment(msg)

    def _segment(self, msg) -> None:
        try:
            rgb = to_rgb(msg)
        except ConversionError as exc:
            self.log.warning("segmentation: rejected image @ %d: %s", stamp_ns(msg), exc)
            return
        shape = rgb.shape[:2]
        frame = Frame(
            stamp_ns(msg),
            rgb,
            self._depth(msg, shape),
            self._camera(shape),
            msg.header.frame_id,
            self._self_mask(msg, shape),
        )
        result = self.component.step(frame)
        header = self.bus.header(frame.stamp_ns, frame.frame_id)
        self.pub.publish(self._segments_msg(result, header))
        if self.overlay_pub is not None and result.overlay is not None:
            self.overlay_pub.publish(numpy_to_image(self.bus.make, result.overlay, "rgb8", header))

    def _camera(self, shape):
        info = self.latest(self.config.camera_info_topic) if self.config.camera_info_topic else None
        if info is None:
            return None
        camera = camera_from_info(info)
        if (camera.height, camera.width) != tuple(shape):
            self._once(
                "camera",
                "camera_info is %dx%d but images are %dx%d: no 3D centroids",
                camera.width,
                camera.height,
                shape[1],
                shape[0],
            )
            return None
        return camera

    def _aligned_msg(self, topic: str, image):
        """The aligned input of ``topic`` with the image's stamp, or None."""
        msg = self._aligned.get(topic) if topic else None
        return msg if msg is not None and stamp_ns(msg) == stamp_ns(image) else None

    def _self_mask(self, msg, shape):
        mask = self._aligned_array(self.config.self_mask_topic, msg, shape, image_to_numpy, "robot mask")
        return None if mask is None else mask != 0

    def _depth(self, msg, shape):
        return self._aligned_array(self.config.depth_topic, msg, shape, depth_to_metres, "depth")

    def _aligned_array(self, topic: str, image, shape, decode, what: str):
        """The (H, W) array of the aligned input of ``topic`` with the image's stamp (``decode``), or None
        (none, undecodable or not the image's size: logged once)."""
        msg = self._aligned_msg(topic, image)
        if msg is None:
            return None
        try:
            array = decode(msg)
        except ConversionError as exc:
            self._once(f"{what}-enc", "ignoring the %s: %s", what, exc)
            return None
        if array.shape != tuple(shape):
            self._once(
                f"{what}-size", "ignoring a %s of shape %s (image %s): not aligned", what, array.shape, shape
            )
            return None
        return array

    def _once(self, key: str, fmt: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.log.warning("segmentation: " + fmt, *args)

    def _segments_msg(self, r: SegmentationResult, header):
        s = r.stats
        labels = numpy_to_image(self.bus.make, r.labels, "mono16", header)
        empty = np.zeros(0, np.float32)
        return self.bus.make(
            SEGMENTS_TYPE,
            header=header,
            labels=labels,
            ids=s.ids.astype(np.uint16),
            bboxes=s.bboxes.reshape(-1).astype(np.int32),
            areas=s.areas.astype(np.uint32),
            centroids_px=s.centroids_px.reshape(-1).astype(np.float32),
            scores=s.scores.astype(np.float32),
            mean_depth=empty if s.mean_depth is None else s.mean_depth.astype(np.float32),
            centroids_3d=empty if s.centroids_3d is None else s.centroids_3d.reshape(-1).astype(np.float32),
            model_id=r.model_id,
        )


def main(args=None) -> None:
    """``ros2 run perception_nodes segmentation_node``."""
    from perception_nodes.runtime.rclpy_bus import spin

    spin(SegmentationNode, args)
