"""rosbag2 reading and writing on top of the ``rosbags`` library, with clear errors and atomic output.

Reading accepts MCAP and sqlite3 bags written by Humble or Jazzy; custom types embedded in a bag are
registered automatically by rosbags' AnyReader, and ours are registered from ``msgs/msg``.
Writing produces an MCAP bag in a hidden staging folder that is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError

from perception_nodes.runtime.typestore import typestore


class BagError(RuntimeError):
    """A bag that cannot be read or written; the message is one line meant for the user."""


@dataclass(frozen=True)
class TopicSummary:
    topic: str
    typename: str
    count: int
    first_ns: int
    last_ns: int

    @property
    def rate_hz(self) -> float:
        span = (self.last_ns - self.first_ns) / 1e9
        return (self.count - 1) / span if self.count > 1 and span > 0 else 0.0


class BagReader:
    """Iterate a rosbag2 (directory or single .mcap/.db3 file) in timestamp order.

    ``messages(topics)`` yields ``(topic, typename, log_time_ns, msg)`` with rosbags dataclasses.
    """

    def __init__(self, path: str | os.PathLike, distro: str = "jazzy"):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        self._reader = AnyReader([self.path], default_typestore=typestore(distro))
        try:
            self._reader.open()
        except (AnyReaderError, ReaderError, OSError, ValueError, KeyError) as exc:
            raise BagError(f"cannot open bag {self.path}: {_one_line(exc)}") from exc

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def summary(self) -> list[TopicSummary]:
        """Per-topic type, count and first/last log time, from one pass over the bag's records."""
        spans: dict[str, tuple[int, int]] = {}
        if self._reader.connections:
            for conn, timestamp, _ in self._reader.messages():
                first, _ = spans.get(conn.topic, (timestamp, timestamp))
                spans[conn.topic] = (first, timestamp)
        return [
            TopicSummary(topic, info.msgtype or "?", info.msgcount, *spans.get(topic, (0, 0)))
            for topic, info in sorted(self._reader.topics.items())
        ]

    @property
    def start_ns(self) -> int:
        return self._reader.start_time

    @property
    def end_ns(self) -> int:
        return self._reader.end_time

    def topics(self) -> dict[str, str]:
        return {topic: info.msgtype or "?" for topic, info in self._reader.topics.items()}

    def count(self, topics: Iterable[str] | None = None) -> int:
        wanted = set(topics) if topics is not None else None
        return sum(info.msgcount for t, info in self._reader.topics.items() if wanted is None or t in wanted)

    def require(self, topics: Iterable[str]) -> None:
        """Raise BagError naming any of ``topics`` that the bag does not have."""
        missing = sorted(set(topics) - set(self._reader.topics))
        if missing:
            have = ", ".join(sorted(self._reader.topics)) or "none"
            raise BagError(f"bag {self.path} has no topic {', '.join(missing)} (topics: {have})")

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, Any]]:
        """Deserialized messages: ``(topic, typename, log_time_ns, msg)`` in log-time order."""
        for topic, typename, timestamp, raw in self.raw_messages(topics):
            yield topic, typename, timestamp, self.deserialize(raw, typename)

    def raw_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """Serialized (CDR) messages: ``(topic, typename, log_time_ns, raw)`` in log-time order."""
        wanted = set(topics) if topics is not None else None
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return  # rosbags reads every connection when given none
        try:
            for conn, timestamp, raw in self._reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, timestamp, raw
        except (AnyReaderError, ReaderError, OSError, ValueError, KeyError, IndexError) as exc:
            raise BagError(f"bag {self.path} is corrupt or truncated: {_one_line(exc)}") from exc

    def deserialize(self, raw: bytes, typename: str) -> Any:
        try:
            return self._reader.deserialize(raw, typename)
        except (ValueError, KeyError, IndexError, AssertionError) as exc:
            raise BagError(f"bag {self.path}: cannot decode a {typename}: {_one_line(exc)}") from exc


class BagWriter:
    """Write an MCAP rosbag2 atomically: data goes to ``.<name>.partial/<name>`` and is renamed on ``close``.

    Use as a context manager; on an exception the partial bag is removed and ``path`` never appears.
    Message definitions (ours included) are embedded, so AnyReader reads the bag with no registration.
    """

    def __init__(self, path: str | os.PathLike, distro: str = "jazzy", overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise BagError(f"output bag already exists: {self.path} (use --overwrite)")
        self.store = typestore(distro)
        # Staging folder beside the target; the bag inside carries the final name so its files do too.
        self._staging = self.path.parent / f".{self.path.name}.partial"
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging.mkdir(parents=True)
        self._tmp = self._staging / self.path.name
        self._writer = Writer(self._tmp, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add_topic(self, topic: str, typename: str) -> None:
        if topic in self._conns:
            if self._conns[topic].msgtype != typename:
                raise BagError(
                    f"topic {topic} written with two types: {self._conns[topic].msgtype}, {typename}"
                )
            return
        self._conns[topic] = self._writer.add_connection(topic, typename, typestore=self.store)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, msg: Any, typename: str | None = None) -> None:
        """Serialize ``msg`` (a rosbags dataclass) and write it at ``timestamp_ns``."""
        typename = typename or msg.__msgtype__
        self.add_topic(topic, typename)
        self.write_raw(topic, timestamp_ns, self.store.serialize_cdr(msg, typename))

    def write_raw(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        self._writer.write(self._conns[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def close(self) -> None:
        self._writer.close()
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self._tmp, self.path)
        self._staging.rmdir()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the bag is being discarded anyway
            self._writer.close()
        shutil.rmtree(self._staging, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
