"""The Bus: the one small interface every node talks to (publish, subscribe, timers, params, clock, log).

Two backends implement it: ``ReplayBus`` (in-process, over rosbag2 files, deterministic) and ``RclpyBus``
(a thin adapter over an ``rclpy.node.Node``). Nodes never import ROS; they build messages with
``bus.make(typename, **fields)`` where numeric sequence fields are numpy arrays and nested messages are
built with ``bus.make`` too (or ``bus.header(stamp_ns, frame_id)`` for headers).
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from perception_nodes.runtime.params import config_from_overrides

T = TypeVar("T")


class QoS(enum.Enum):
    """Quality-of-service classes used by the stack (mapped to rclpy profiles by the rclpy backend)."""

    SENSOR = "sensor"  # best effort, keep last 1..5: camera images and camera_info
    RESULT = "result"  # reliable, keep last 10: perception outputs
    LATCHED = "latched"  # reliable, transient local, keep last 1: static data (tf_static, reference sets)


class Publisher(abc.ABC):
    """A handle returned by ``Bus.publisher``."""

    topic: str
    typename: str

    @abc.abstractmethod
    def publish(self, msg: Any) -> None:
        """Send one message (built by ``Bus.make``)."""


class Bus(abc.ABC):
    """Backend-neutral node runtime. One Bus per node."""

    #: True when the backend delivers messages one at a time and waits for processing (replay):
    #: the node harness then processes inline, so results are deterministic and nothing is dropped.
    synchronous: bool = False

    def __init__(self, name: str, logger: logging.Logger | None = None):
        self.name = name
        self.logger = logger or logging.getLogger(f"perception_nodes.{name}")

    @abc.abstractmethod
    def publisher(self, topic: str, typename: str, qos: QoS = QoS.RESULT) -> Publisher:
        """Create a publisher of ``typename`` (e.g. ``sensor_msgs/msg/Image``) on ``topic``."""

    @abc.abstractmethod
    def subscribe(
        self,
        topic: str,
        typename: str,
        callback: Callable[[Any], None],
        qos: QoS = QoS.SENSOR,
        optional: bool = False,
    ) -> None:
        """Call ``callback(msg)`` for every message on ``topic``.

        ``optional`` marks inputs a node works without (camera_info, depth): a replay does not require
        them in the bag. Live backends ignore it.
        """

    @abc.abstractmethod
    def timer(self, period_s: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` every ``period_s`` seconds of bus time."""

    @abc.abstractmethod
    def now_ns(self) -> int:
        """Current bus time in nanoseconds (ROS time on the robot, bag time in replay)."""

    @abc.abstractmethod
    def make(self, typename: str, **fields: Any) -> Any:
        """Build a message of ``typename`` native to this backend; unset fields get ROS defaults."""

    @abc.abstractmethod
    def get_parameter_overrides(self, names: dict[str, tuple[Any, str]]) -> dict[str, Any]:
        """Declare parameters ``{name: (default, description)}`` and return the values in force."""

    def header(self, stamp_ns: int, frame_id: str = "") -> Any:
        """A ``std_msgs/msg/Header`` for ``stamp_ns`` nanoseconds since the epoch."""
        stamp = self.make(
            "builtin_interfaces/msg/Time",
            sec=int(stamp_ns // 1_000_000_000),
            nanosec=int(stamp_ns % 1_000_000_000),
        )
        return self.make("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)

    def declare_config(self, config: T, prefix: str = "") -> T:
        """Declare every field of the dataclass ``config`` as a parameter; return it with overrides applied.

        Descriptions come from ``field(metadata={"help": ...})``; validation is the dataclass's own
        ``__post_init__``, so a bad parameter fails at start-up with the dataclass's message.
        """
        return config_from_overrides(config, self.get_parameter_overrides, prefix)

    def shutdown(self) -> None:
        """Release backend resources."""
        return None


def overrides_from_mapping(
    node: str, params: dict[str, Any], names: dict[str, tuple[Any, str]]
) -> dict[str, Any]:
    """Parameter values for in-process buses: ``params`` over the defaults; unknown names are an error."""
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ValueError(f"node {node}: unknown parameter(s) {unknown}; known: {sorted(names)}")
    return {name: params.get(name, default) for name, (default, _) in names.items()}


def stamp_ns(msg: Any) -> int:
    """Nanosecond stamp of any message with a ``header`` (rclpy or rosbags)."""
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
