"""The node harness every perception node is built on.

A node = a config dataclass (declared as parameters), inputs with newest-frame-wins slots, one handler per
trigger input, and outputs. The harness gives every node:

- parameters declared from ``Config`` (descriptions from field metadata, validation by ``__post_init__``);
- bounded input: each trigger input holds only its newest message; a newer one replaces an unprocessed one
  and is counted as dropped (never an unbounded queue);
- processing off the callback thread (one worker thread) on asynchronous buses (rclpy); inline on
  synchronous ones (replay), which makes replays deterministic and lossless;
- survival: an exception while processing one message is logged with context and counted, and the node
  keeps serving the next;
- diagnostics on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): rate, latency, dropped, errors,
  last error.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from perception_nodes.runtime.bus import Bus, QoS, stamp_ns


@dataclasses.dataclass
class _Stats:
    processed: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str = ""
    latencies_ms: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=100))
    done_times: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=100))


class NodeBase:
    """Subclass, set ``Config`` and ``name``, and wire inputs/outputs in ``setup()``."""

    Config: ClassVar[type] = type(None)
    name: ClassVar[str] = "node"
    diagnostics_period_s: ClassVar[float] = 1.0

    def __init__(self, bus: Bus, config: Any = None):
        self.bus = bus
        self.log = bus.logger
        self.config = bus.declare_config(config if config is not None else self.Config())
        self.stats = _Stats()
        self._slots: dict[str, Any] = {}
        self._handlers: dict[str, Callable[[Any], None]] = {}
        self._cache: dict[str, Any] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._worker: threading.Thread | None = None
        self._diag_pub = bus.publisher("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", QoS.RESULT)
        self.setup()
        bus.timer(self.diagnostics_period_s, self.publish_diagnostics)

    def setup(self) -> None:
        """Create publishers and inputs (override)."""

    # -- inputs ----------------------------------------------------------------------------------
    def trigger(
        self, topic: str, typename: str, handler: Callable[[Any], None], qos: QoS = QoS.SENSOR
    ) -> None:
        """Process every newest message of ``topic`` with ``handler`` (newest frame wins)."""
        self._handlers[topic] = handler
        self.bus.subscribe(topic, typename, lambda msg, t=topic: self._offer(t, msg), qos)

    def cache(self, topic: str, typename: str, qos: QoS = QoS.SENSOR) -> None:
        """Keep the latest message of optional input ``topic`` for ``latest(topic)`` (camera_info, depth)."""
        self.bus.subscribe(
            topic, typename, lambda msg, t=topic: self._cache.__setitem__(t, msg), qos, optional=True
        )

    def latest(self, topic: str) -> Any:
        return self._cache.get(topic)

    def _offer(self, topic: str, msg: Any) -> None:
        if self.bus.synchronous:
            self._process(topic, msg)
            return
        with self._cond:
            if topic in self._slots:
                self.stats.dropped += 1
            self._slots[topic] = msg
            self._cond.notify()
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._run_worker, name=f"{self.bus.name}-worker", daemon=True
            )
            self._worker.start()

    def _run_worker(self) -> None:
        while True:
            with self._cond:
                while not self._slots and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                topic = next(iter(self._slots))
                msg = self._slots.pop(topic)
            self._process(topic, msg)

    def _process(self, topic: str, msg: Any) -> None:
        start = time.perf_counter()
        try:
            self._handlers[topic](msg)
        except Exception as exc:
            self._record_error(topic, msg, exc)
            return
        self.stats.processed += 1
        self.stats.latencies_ms.append((time.perf_counter() - start) * 1e3)
        self.stats.done_times.append(time.perf_counter())

    def _record_error(self, topic: str, msg: Any, exc: Exception) -> None:
        self.stats.errors += 1
        stamp = _safe_stamp(msg)
        context = f"{topic} @ {stamp / 1e9:.3f}s" if stamp is not None else topic
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        report = getattr(self.bus, "node_error", None)
        if report is not None and report(exc, context):
            return  # the bus stops on this error and tells the user itself (strict replay)
        self.log.error("%s: error processing %s: %s", self.bus.name, context, self.stats.last_error)

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=2.0)

    # -- diagnostics -----------------------------------------------------------------------------
    def diagnostics_values(self) -> dict[str, str]:
        lat = sorted(self.stats.latencies_ms)
        times = self.stats.done_times
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        return {
            "processed": str(self.stats.processed),
            "rate_hz": f"{rate:.2f}",
            "latency_ms_p50": f"{lat[len(lat) // 2]:.2f}" if lat else "nan",
            "latency_ms_max": f"{lat[-1]:.2f}" if lat else "nan",
            "dropped": str(self.stats.dropped),
            "errors": str(self.stats.errors),
            "last_error": self.stats.last_error,
        }

    def publish_diagnostics(self) -> None:
        bus = self.bus
        values = [
            bus.make("diagnostic_msgs/msg/KeyValue", key=k, value=v)
            for k, v in self.diagnostics_values().items()
        ]
        level = 1 if self.stats.errors else 0  # WARN once anything failed, else OK
        status = bus.make(
            "diagnostic_msgs/msg/DiagnosticStatus",
            level=level,
            name=f"perception_nodes/{bus.name}",
            message=self.stats.last_error or "ok",
            hardware_id=bus.name,
            values=values,
        )
        bus_now = bus.now_ns()
        self._diag_pub.publish(
            bus.make("diagnostic_msgs/msg/DiagnosticArray", header=bus.header(bus_now), status=[status])
        )


def _safe_stamp(msg: Any) -> int | None:
    try:
        return stamp_ns(msg)
    except AttributeError:
        return None
