"""The engine cache: serialized engines built on the target, keyed by everything that makes them valid.

Independent of TensorRT: ``EngineCache.load_or_build(key, build, deserialize)`` takes the builder (returns
bytes) and the deserializer (bytes -> engine object; raises or returns None when it rejects the bytes) as
arguments, so the logic is tested with real files and a fake builder, and the TensorRT backend plugs in.

On disk one entry is one file ``<label>-<digest16>.engine`` holding a small header (magic, the full key,
payload size and sha256) and the payload. Entries are written to a temporary file in the same folder,
fsynced, then renamed over the target (atomic on POSIX): a reader sees the old entry or the new one, never a
partial one. A build takes an exclusive lock file so concurrent processes build once; the others wait and
load the result. A truncated, corrupt, foreign-key or rejected entry is rebuilt, with the reason logged.
Cache files live outside the repository (default ``$PERCEPTION_NODES_CACHE`` or
``~/.cache/perception_nodes/engines``); none is ever committed or shipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAGIC = b"PNENGINE\x01"
_HEADER_LEN = struct.Struct("<I")
_MAX_HEADER = 1 << 16
ENGINE_SUFFIX = ".engine"


def default_cache_dir() -> Path:
    root = os.environ.get("PERCEPTION_NODES_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "perception_nodes" / "engines"


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; a change in any part selects another cache entry."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    onnx_sha256: str
    precision: str
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...]  # ((name, shape), ...) in input order

    def __post_init__(self):
        shapes = tuple((str(n), tuple(int(d) for d in s)) for n, s in self.input_shapes)
        object.__setattr__(self, "input_shapes", shapes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_shapes"] = [[n, list(s)] for n, s in self.input_shapes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineKey:
        return cls(**{**data, "input_shapes": tuple((n, tuple(s)) for n, s in data["input_shapes"])})

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class CacheResult:
    value: Any
    status: str  # "hit", "built" (no entry before) or "rebuilt" (entry rejected; see reason)
    reason: str
    path: Path


class CacheEntryError(ValueError):
    """A cache file that cannot be used (truncated, corrupt, other key)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def pack_entry(key: EngineKey, payload: bytes) -> bytes:
    header = json.dumps(
        {"key": key.to_dict(), "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
        sort_keys=True,
    ).encode()
    return MAGIC + _HEADER_LEN.pack(len(header)) + header + payload


def read_header(data: bytes) -> dict[str, Any]:
    """The header of a cache file (key, size, sha256); CacheEntryError if it cannot be read."""
    start = len(MAGIC) + _HEADER_LEN.size
    if len(data) < start or not data.startswith(MAGIC):
        raise CacheEntryError(f"not an engine cache file or truncated header ({len(data)} bytes)")
    (header_len,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
    if header_len > _MAX_HEADER or len(data) < start + header_len:
        raise CacheEntryError("truncated or corrupt header")
    try:
        header = json.loads(data[start : start + header_len])
    except ValueError as exc:
        raise CacheEntryError(f"corrupt header: {exc}") from exc
    if not isinstance(header, dict):
        raise CacheEntryError("corrupt header: not an object")
    header["payload_offset"] = start + header_len
    return header


def unpack_entry(data: bytes, key: EngineKey) -> bytes:
    """The payload of a cache file, or CacheEntryError saying why the file cannot be used."""
    header = read_header(data)
    found = header.get("key")
    if found != key.to_dict():
        found = found if isinstance(found, dict) else {}
        diff = sorted(k for k, v in key.to_dict().items() if found.get(k) != v)
        raise CacheEntryError(f"built for another key (differs in {diff})")
    payload = data[header["payload_offset"] :]
    if len(payload) != header.get("size"):
        raise CacheEntryError(f"truncated: payload has {len(payload)} of {header.get('size')} bytes")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CacheEntryError("payload checksum mismatch (corrupt)")
    return payload


@contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock (fcntl) held for the block; a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class EngineCache:
    """Serialized engines on disk under ``root`` (see module docstring)."""

    def __init__(self, root: str | Path | None = None, lock: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.lock = lock

    def path(self, key: EngineKey, label: str = "model") -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:64] or "model"
        return self.root / f"{safe}-{key.precision}-{key.digest()[:16]}{ENGINE_SUFFIX}"

    def _try_load(
        self, path: Path, key: EngineKey, deserialize: Callable[[bytes], T]
    ) -> tuple[T | None, str]:
        """(engine, "") on success; (None, reason) when there is no usable entry."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, ""
        try:
            payload = unpack_entry(data, key)
        except CacheEntryError as exc:
            return None, str(exc)
        try:
            value = deserialize(payload)
        except Exception as exc:
            return None, f"deserializer rejected it: {type(exc).__name__}: {exc}"
        if value is None:
            return None, "deserializer rejected it (returned None)"
        return value, ""

    def load_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes],
        deserialize: Callable[[bytes], T],
        label: str = "model",
    ) -> CacheResult:
        """The deserialized engine for ``key``: from the cache, or built, stored atomically and deserialized.

        Errors of ``build`` (and a freshly built payload that ``deserialize`` rejects) propagate: they are
        real failures, not cache problems.
        """
        path = self.path(key, label)
        value, reason = self._try_load(path, key, deserialize)
        if value is not None:
            log.debug("engine cache hit: %s", path)
            return CacheResult(value, "hit", "", path)
        lock = _file_lock(path.with_name(path.name + ".lock")) if self.lock else _null()
        with lock:
            if self.lock:  # another process may have built it while we waited for the lock
                value, reason_after = self._try_load(path, key, deserialize)
                if value is not None:
                    return CacheResult(value, "hit", "", path)
                reason = reason_after or reason
            if reason:
                log.warning("engine cache entry %s is unusable (%s); rebuilding", path, reason)
            else:
                log.info("no cached engine at %s; building", path)
            payload = bytes(build())
            atomic_write_bytes(path, pack_entry(key, payload))
        value = deserialize(payload)
        if value is None:
            raise CacheEntryError(f"the deserializer rejected a freshly built engine for {path}")
        return CacheResult(value, "rebuilt" if reason else "built", reason, path)


@contextmanager
def _null():
    yield
