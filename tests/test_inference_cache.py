"""Engine cache with real files and a fake builder (TensorRT is not needed for the cache logic).

The fake "plan" is ``b"FAKEPLAN" + body + sha256(body)``; its deserializer rejects anything else, like
TensorRT's ``deserialize_cuda_engine`` returns None for bytes it cannot use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from perception_nodes.inference import cache as cache_mod
from perception_nodes.inference.cache import CacheEntryError, EngineCache, EngineKey, pack_entry, unpack_entry

KEY = EngineKey(
    trt_version="10.3.0",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    onnx_sha256="ab" * 32,
    precision="fp16",
    input_shapes=(("image", (1, 256, 256, 3)), ("points", (1, 100, 2))),
)


def fake_plan(seed: int, size: int = 1 << 16) -> bytes:
    body = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    return b"FAKEPLAN" + body + hashlib.sha256(body).digest()


def fake_deserialize(data: bytes) -> dict | None:
    body = data[8:-32]
    if not data.startswith(b"FAKEPLAN") or hashlib.sha256(body).digest() != data[-32:]:
        return None
    return {"sha": hashlib.sha256(data).hexdigest(), "size": len(data)}


class Builder:
    def __init__(self, seed: int = 0):
        self.calls = 0
        self.seed = seed

    def __call__(self) -> bytes:
        self.calls += 1
        return fake_plan(self.seed + self.calls)


@pytest.mark.parametrize(
    "change",
    [
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA RTX 4090"},
        {"compute_capability": "8.9"},
        {"onnx_sha256": "cd" * 32},
        {"precision": "fp32"},
        {"input_shapes": (("image", (1, 512, 512, 3)), ("points", (1, 100, 2)))},
        {"input_shapes": (("rgb", (1, 256, 256, 3)), ("points", (1, 100, 2)))},
    ],
)
def test_key_changes_when_any_part_changes(change, tmp_path):
    other = dataclasses.replace(KEY, **change)
    assert other.digest() != KEY.digest()
    cache = EngineCache(tmp_path)
    assert cache.path(other, "m") != cache.path(KEY, "m")
    first, second = Builder(0), Builder(100)
    cache.load_or_build(KEY, first, fake_deserialize, "m")
    result = cache.load_or_build(other, second, fake_deserialize, "m")
    assert result.status == "built" and second.calls == 1  # the other key's entry was not reused


def test_key_is_stable_and_shapes_are_normalised():
    same = dataclasses.replace(
        KEY, input_shapes=[["image", [1, 256, 256, 3]], ["points", np.array([1, 100, 2])]]
    )
    assert same.digest() == KEY.digest()


def test_header_round_trip():
    data = pack_entry(KEY, b"payload")
    header = cache_mod.read_header(data)
    assert EngineKey.from_dict(header["key"]) == KEY and header["size"] == 7
    assert data[header["payload_offset"] :] == b"payload"


def test_build_then_hit_reads_the_same_engine(tmp_path):
    cache, builder = EngineCache(tmp_path), Builder()
    built = cache.load_or_build(KEY, builder, fake_deserialize, "eisen")
    hit = cache.load_or_build(KEY, builder, fake_deserialize, "eisen")
    assert (built.status, hit.status, builder.calls) == ("built", "hit", 1)
    assert hit.value == built.value and hit.path == built.path
    assert built.path.name.startswith("eisen-fp16-") and built.path.suffix == ".engine"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:10], "truncated header"),
        (lambda b: b"", "truncated header"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
        (lambda b: b"garbage" * 100, "not an engine cache file"),
    ],
)
def test_damaged_entry_is_rebuilt_with_a_logged_reason(tmp_path, caplog, damage, reason):
    cache, builder = EngineCache(tmp_path), Builder()
    path = cache.load_or_build(KEY, builder, fake_deserialize, "m").path
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level("WARNING", logger="perception_nodes.inference.cache"):
        result = cache.load_or_build(KEY, builder, fake_deserialize, "m")
    assert result.status == "rebuilt" and reason in result.reason and builder.calls == 2
    assert any(reason in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert fake_deserialize(unpack_entry(path.read_bytes(), KEY)) == result.value  # the file is whole again


def test_entry_for_another_key_is_rebuilt(tmp_path):
    cache, builder = EngineCache(tmp_path), Builder()
    path = cache.path(KEY, "m")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        pack_entry(dataclasses.replace(KEY, trt_version="9.9"), fake_plan(7))
    )  # copied in by hand
    result = cache.load_or_build(KEY, builder, fake_deserialize, "m")
    assert result.status == "rebuilt" and "trt_version" in result.reason


def test_entry_the_deserializer_rejects_is_rebuilt(tmp_path):
    cache, builder = EngineCache(tmp_path), Builder()
    path = cache.path(KEY, "m")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pack_entry(KEY, b"FAKEPLAN but stale"))  # a well-formed entry TensorRT would refuse
    result = cache.load_or_build(KEY, builder, fake_deserialize, "m")
    assert result.status == "rebuilt" and "deserializer rejected" in result.reason

    def raising(data: bytes):
        raise RuntimeError("serialization version mismatch")

    path.write_bytes(pack_entry(KEY, fake_plan(3)))
    result = cache.load_or_build(
        KEY, lambda: fake_plan(4), lambda b: raising(b) if b == fake_plan(3) else {"ok": 1}, "m"
    )
    assert result.status == "rebuilt" and "serialization version mismatch" in result.reason


def test_failed_build_propagates_and_leaves_no_entry(tmp_path):
    cache = EngineCache(tmp_path)

    def failing() -> bytes:
        raise RuntimeError("parser error")

    with pytest.raises(RuntimeError, match="parser error"):
        cache.load_or_build(KEY, failing, fake_deserialize, "m")
    assert not cache.path(KEY, "m").exists()
    with pytest.raises(CacheEntryError, match="freshly built"):
        cache.load_or_build(KEY, lambda: b"not a plan", fake_deserialize, "m")


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPTION_NODES_CACHE", str(tmp_path / "c"))
    assert EngineCache().root == tmp_path / "c"
    monkeypatch.delenv("PERCEPTION_NODES_CACHE")
    assert EngineCache().root == Path.home() / ".cache" / "perception_nodes" / "engines"


# --- concurrency: several processes building the same key -------------------------------------------------


def _builder_process(root: str, lock: bool, log_dir: str, barrier, results, size: int) -> None:
    cache = EngineCache(root, lock=lock)

    def build() -> bytes:
        Path(log_dir, f"build-{os.getpid()}").touch()
        time.sleep(0.3)  # a slow build: the others arrive while it runs
        return fake_plan(os.getpid(), size)

    barrier.wait()
    result = cache.load_or_build(KEY, build, fake_deserialize, "m")
    results.put((result.status, result.value["sha"]))


def _reader_process(path: str, stop, counts) -> None:
    whole = partial = 0
    while not stop.is_set():
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        try:
            if fake_deserialize(unpack_entry(data, KEY)) is None:
                partial += 1
            else:
                whole += 1
        except CacheEntryError:
            partial += 1
    counts.put((whole, partial))


def _race(tmp_path: Path, lock: bool, n: int = 4, size: int = 4 << 20) -> tuple[list, int, tuple[int, int]]:
    ctx = multiprocessing.get_context("fork")
    root, log_dir = tmp_path / "cache", tmp_path / "log"
    log_dir.mkdir()
    barrier, results, counts, stop = ctx.Barrier(n), ctx.Queue(), ctx.Queue(), ctx.Event()
    reader = ctx.Process(target=_reader_process, args=(str(EngineCache(root).path(KEY, "m")), stop, counts))
    reader.start()
    builders = [
        ctx.Process(target=_builder_process, args=(str(root), lock, str(log_dir), barrier, results, size))
        for _ in range(n)
    ]
    for p in builders:
        p.start()
    outcome = [results.get(timeout=60) for _ in builders]
    for p in builders:
        p.join(timeout=30)
    time.sleep(0.1)
    stop.set()
    read_counts = counts.get(timeout=30)
    reader.join(timeout=30)
    return outcome, len(list(log_dir.iterdir())), read_counts


def test_concurrent_builders_with_lock_build_once(tmp_path):
    outcome, builds, (whole, partial) = _race(tmp_path, lock=True)
    assert builds == 1
    assert sorted(s for s, _ in outcome) == ["built", "hit", "hit", "hit"]
    assert len({sha for _, sha in outcome}) == 1  # everyone got the one engine that was built
    assert partial == 0 and whole > 0


def test_concurrent_builders_without_lock_never_expose_a_partial_file(tmp_path):
    outcome, builds, (whole, partial) = _race(tmp_path, lock=False)
    assert builds == 4  # no lock: everyone builds, and the renames race
    assert partial == 0 and whole > 0
    final = fake_deserialize(unpack_entry(EngineCache(tmp_path / "cache").path(KEY, "m").read_bytes(), KEY))
    assert final["sha"] in {sha for _, sha in outcome}


def test_control_a_non_atomic_writer_is_caught_by_the_reader(tmp_path, monkeypatch):
    """The race test can fail: with a plain in-place writer the reader does see partial files."""

    def naive_write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            for i in range(0, len(data), 1 << 18):
                f.write(data[i : i + (1 << 18)])
                f.flush()
                time.sleep(0.002)

    monkeypatch.setattr(cache_mod, "atomic_write_bytes", naive_write)
    _, _, (_, partial) = _race(tmp_path, lock=False)
    assert partial > 0


def test_no_serialized_engine_is_in_the_repository():
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    files = [f for f in listed.stdout.splitlines() if not f.startswith((".venv/", "build/", "install/"))]
    engines = [f for f in files if f.endswith((".plan", ".engine", ".trt"))]
    assert engines == [], f"serialized TensorRT engines must never be committed or shipped: {engines}"
