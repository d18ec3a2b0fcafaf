"""Identity node: decodes each camera image, checks it against camera_info, and republishes it unchanged.

It is the smallest real node: it exercises the Bus, conversions and the harness end to end, and gives a
baseline for replay throughput and for ROS transport latency.
"""

from __future__ import annotations

import dataclasses

from perception_nodes.nodes.base import NodeBase
from perception_nodes.runtime.bus import QoS, stamp_ns
from perception_nodes.runtime.convert import camera_from_info, image_to_numpy, numpy_to_image


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    input_topic: str = dataclasses.field(
        default="/camera/color/image_raw", metadata={"help": "sensor_msgs/Image topic to read"}
    )
    camera_info_topic: str = dataclasses.field(
        default="/camera/color/camera_info",
        metadata={"help": "sensor_msgs/CameraInfo for the input; images of another size are rejected"},
    )
    output_topic: str = dataclasses.field(
        default="/perception/identity/image", metadata={"help": "where the unchanged images are republished"}
    )

    def __post_init__(self):
        for name in ("input_topic", "output_topic"):
            if not getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must be an absolute topic name, got {getattr(self, name)!r}")
        if self.input_topic == self.output_topic:
            raise ValueError("input_topic and output_topic must differ")


class IdentityNode(NodeBase):
    Config = IdentityConfig
    name = "identity"

    def setup(self) -> None:
        cfg = self.config
        self.pub = self.bus.publisher(cfg.output_topic, "sensor_msgs/msg/Image", QoS.SENSOR)
        if cfg.camera_info_topic:
            self.cache(cfg.camera_info_topic, "sensor_msgs/msg/CameraInfo")
        self.trigger(cfg.input_topic, "sensor_msgs/msg/Image", self.on_image)

    def on_image(self, msg) -> None:
        image = image_to_numpy(msg)
        info = self.latest(self.config.camera_info_topic) if self.config.camera_info_topic else None
        if info is not None:
            camera_from_info(info).check_image(*image.shape[:2])
        header = self.bus.header(stamp_ns(msg), msg.header.frame_id)
        self.pub.publish(numpy_to_image(self.bus.make, image, msg.encoding, header))


def main(args=None) -> None:
    """``ros2 run perception_nodes identity_node``."""
    from perception_nodes.runtime.rclpy_bus import spin

    spin(IdentityNode, args)
