"""The replay backend: run nodes in-process over a rosbag2 file and record what they publish.

Deterministic: input messages are delivered in log-time order, one at a time; each node processes them
inline (``ReplayBus.synchronous``), and what a node publishes is delivered to the other nodes' subscriptions
right after the current callback, at the same bag time, before the next input message. Timers fire in bag
time. Output goes to an MCAP bag written atomically (see ``BagWriter``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from perception_nodes.runtime.bag import BagError, BagReader, BagWriter
from perception_nodes.runtime.bus import Bus, Publisher, QoS, overrides_from_mapping
from perception_nodes.runtime.typestore import make as make_msg
from perception_nodes.runtime.typestore import typestore

log = logging.getLogger("perception_nodes.replay")


class ReplayError(RuntimeError):
    """A node failed on a message during a strict replay; the message is one line for the user."""


@dataclasses.dataclass
class _Timer:
    period_ns: int
    callback: Callable[[], None]
    next_ns: int | None = None


class _ReplayPublisher(Publisher):
    def __init__(self, runner: ReplayRunner, topic: str, typename: str):
        self.runner, self.topic, self.typename = runner, topic, typename

    def publish(self, msg: Any) -> None:
        self.runner.publish(self.topic, self.typename, msg)


class ReplayBus(Bus):
    """One node's view of a ReplayRunner."""

    synchronous = True

    def __init__(self, runner: ReplayRunner, name: str, params: dict[str, Any] | None = None):
        super().__init__(name)
        self.runner = runner
        self.params = dict(params or {})

    def publisher(self, topic: str, typename: str, qos: QoS = QoS.RESULT) -> Publisher:
        if typename not in self.runner.store.types:
            raise KeyError(f"unknown message type {typename!r}")
        self.runner.produced.add(topic)
        return _ReplayPublisher(self.runner, topic, typename)

    def subscribe(
        self,
        topic: str,
        typename: str,
        callback: Callable[[Any], None],
        qos: QoS = QoS.SENSOR,
        optional: bool = False,
    ) -> None:
        self.runner.subscriptions[topic].append((typename, callback))
        if not optional:
            self.runner.required.add(topic)

    def timer(self, period_s: float, callback: Callable[[], None]) -> None:
        if period_s <= 0:
            raise ValueError(f"timer period must be positive, got {period_s}")
        self.runner.timers.append(_Timer(int(period_s * 1e9), callback))

    def now_ns(self) -> int:
        return self.runner.now_ns

    def make(self, typename: str, **fields: Any) -> Any:
        return make_msg(self.runner.store, typename, **fields)

    def get_parameter_overrides(self, names: dict[str, tuple[Any, str]]) -> dict[str, Any]:
        return overrides_from_mapping(self.name, self.params, names)

    def node_error(self, exc: BaseException, context: str) -> bool:
        """Called by the node harness when processing fails; True when the replay stops on it (strict)."""
        return self.runner.node_error(self.name, exc, context)


@dataclasses.dataclass
class ReplayStats:
    input_messages: int = 0
    output_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    wall_s: float = 0.0
    errors: int = 0

    @property
    def rate_hz(self) -> float:
        return self.input_messages / self.wall_s if self.wall_s > 0 else 0.0


class ReplayRunner:
    """Feed a bag to nodes built on ReplayBus objects and write their output (and passthrough topics).

    Usage::

        runner = ReplayRunner(bag, out)
        IdentityNode(runner.bus("identity", {"input_topic": "/camera/color/image_raw"}))
        stats = runner.run()
    """

    def __init__(
        self,
        bag: str | Path,
        out: str | Path | None,
        *,
        distro: str = "jazzy",
        passthrough: Iterable[str] = (),
        realtime: float = 0.0,
        strict: bool = True,
        overwrite: bool = False,
    ):
        self.reader = BagReader(bag, distro)
        self.store = typestore(distro)
        self.out = Path(out) if out is not None else None
        self.passthrough = set(passthrough)
        self.realtime = realtime
        self.strict = strict
        self.overwrite = overwrite
        self.subscriptions: dict[str, list[tuple[str, Callable[[Any], None]]]] = collections.defaultdict(list)
        self.timers: list[_Timer] = []
        self.produced: set[str] = set()
        self.required: set[str] = set()
        self.now_ns = 0
        self.stats = ReplayStats()
        self._pending: collections.deque = collections.deque()
        self._writer: BagWriter | None = None
        self._failure: str | None = None

    def bus(self, name: str, params: dict[str, Any] | None = None) -> ReplayBus:
        return ReplayBus(self, name, params)

    # -- called by buses -------------------------------------------------------------------------
    def publish(self, topic: str, typename: str, msg: Any) -> None:
        if self._writer is not None:
            self._writer.write(topic, self.now_ns, msg, typename)
        if topic in self.subscriptions:
            self._pending.append((topic, msg))

    def node_error(self, node: str, exc: BaseException, context: str) -> bool:
        self.stats.errors += 1
        if self.strict and self._failure is None:
            self._failure = f"node {node} failed on {context}: {exc}"
        return self.strict

    # -- the loop --------------------------------------------------------------------------------
    def run(self, progress: Callable[[int], None] | None = None, limit: int | None = None) -> ReplayStats:
        """Replay the whole bag. ``progress(n)`` is called after every input message."""
        if not (self.subscriptions or self.passthrough):
            raise ReplayError("nothing subscribes to any topic and no passthrough topics were given")
        self.reader.require(self.required - self.produced)
        start = time.perf_counter()
        try:
            if self.out is None:
                self._loop(progress, limit)
            else:
                with BagWriter(self.out, overwrite=self.overwrite) as writer:  # aborted on any exception
                    self._writer = writer
                    self._loop(progress, limit)
                self.stats.output_counts = dict(writer.counts)
        finally:
            self.reader.close()
        self.stats.wall_s = time.perf_counter() - start
        return self.stats

    def _loop(self, progress: Callable[[int], None] | None, limit: int | None) -> None:
        """Deliver every input message in log-time order; copy passthrough topics to the writer."""
        start, first_ns = time.perf_counter(), None
        writer = self._writer
        for topic, typename, stamp, raw in self.reader.raw_messages(
            set(self.subscriptions) | self.passthrough
        ):
            first_ns = stamp if first_ns is None else first_ns
            self._pace(start, first_ns, stamp)
            self._advance(stamp)
            if writer is not None and topic in self.passthrough:
                writer.add_topic(topic, typename)
                writer.write_raw(topic, stamp, raw)  # copied as is: no re-serialisation
            if topic in self.subscriptions:
                self._deliver(topic, self.reader.deserialize(raw, typename))
            self.stats.input_messages += 1
            if progress:
                progress(1)
            if limit is not None and self.stats.input_messages >= limit:
                break

    def _pace(self, start: float, first_ns: int, stamp: int) -> None:
        if self.realtime > 0:
            due = start + (stamp - first_ns) / 1e9 / self.realtime
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def _advance(self, stamp: int) -> None:
        """Move bag time to ``stamp``, firing due timers in time order on the way."""
        for timer in self.timers:
            if timer.next_ns is None:
                timer.next_ns = stamp + timer.period_ns
        while self.timers:
            timer = min(self.timers, key=lambda t: t.next_ns)
            if timer.next_ns > stamp:
                break
            self.now_ns = timer.next_ns
            timer.next_ns += timer.period_ns
            timer.callback()
            self._drain()
        self.now_ns = stamp

    def _deliver(self, topic: str, msg: Any) -> None:
        self._pending.append((topic, msg))
        self._drain()

    def _drain(self) -> None:
        while self._pending:
            topic, msg = self._pending.popleft()
            for _, callback in self.subscriptions.get(topic, ()):
                callback(msg)
                if self._failure is not None:
                    failure, self._failure = self._failure, None
                    raise ReplayError(failure)


def check_bag_readable(path: str | Path) -> None:
    """Raise BagError (one line) if ``path`` cannot be opened as a rosbag2."""
    with BagReader(path):
        pass


__all__ = ["BagError", "ReplayBus", "ReplayError", "ReplayRunner", "ReplayStats", "check_bag_readable"]
