"""An in-process, live (asynchronous) Bus without ROS: several nodes in one process, wall-clock timers.

Messages are rosbags dataclasses delivered on the publisher's thread, like an intra-process rclpy
executor; timers run on their own threads. It serves live simulation loops on machines without ROS and
tests of the node harness's asynchronous path (newest-frame-wins, worker thread).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from perception_nodes.runtime.bus import Bus, Publisher, QoS, overrides_from_mapping
from perception_nodes.runtime.typestore import make as make_msg
from perception_nodes.runtime.typestore import typestore


class LoopbackNetwork:
    """The shared 'graph' that LoopbackBus instances publish into."""

    def __init__(self, distro: str = "jazzy"):
        self.store = typestore(distro)
        self.subscriptions: dict[str, list[Callable[[Any], None]]] = collections.defaultdict(list)
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def bus(self, name: str, params: dict[str, Any] | None = None) -> LoopbackBus:
        return LoopbackBus(self, name, params)

    def start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)


class _LoopbackPublisher(Publisher):
    def __init__(self, net: LoopbackNetwork, topic: str, typename: str):
        self.net, self.topic, self.typename = net, topic, typename

    def publish(self, msg: Any) -> None:
        for callback in list(self.net.subscriptions.get(self.topic, ())):
            callback(msg)


class LoopbackBus(Bus):
    synchronous = False

    def __init__(self, net: LoopbackNetwork, name: str, params: dict[str, Any] | None = None):
        super().__init__(name)
        self.net = net
        self.params = dict(params or {})

    def publisher(self, topic: str, typename: str, qos: QoS = QoS.RESULT) -> Publisher:
        if typename not in self.net.store.types:
            raise KeyError(f"unknown message type {typename!r}")
        return _LoopbackPublisher(self.net, topic, typename)

    def subscribe(self, topic, typename, callback, qos=QoS.SENSOR, optional=False) -> None:
        self.net.subscriptions[topic].append(callback)

    def timer(self, period_s: float, callback: Callable[[], None]) -> None:
        if period_s <= 0:
            raise ValueError(f"timer period must be positive, got {period_s}")

        def loop() -> None:
            deadline = time.monotonic() + period_s
            while not self.net.stop.wait(max(0.0, deadline - time.monotonic())):
                deadline += period_s
                try:
                    callback()
                except Exception:
                    self.logger.exception("%s: timer callback failed", self.name)

        self.net.start_thread(loop, f"{self.name}-timer")

    def now_ns(self) -> int:
        return time.time_ns()

    def make(self, typename: str, **fields: Any) -> Any:
        return make_msg(self.net.store, typename, **fields)

    def get_parameter_overrides(self, names: dict[str, tuple[Any, str]]) -> dict[str, Any]:
        return overrides_from_mapping(self.name, self.params, names)
