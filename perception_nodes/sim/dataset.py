"""Read sim bags back into ``Episode`` objects (training samples) without MuJoCo.

``read_episodes(paths)`` accepts bag folders, .mcap files, or folders containing bags (searched one level
deep, sorted), and yields one Episode per bag. Images, depth, masks, poses and camera come from the bag's
topics; tracks, visibility and flow are derived with the same functions the generator used
(``gt.assemble_episode``), so the arrays equal the generated ones exactly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from perception_nodes.runtime.bag import BagError, BagReader
from perception_nodes.runtime.bus import stamp_ns
from perception_nodes.runtime.convert import camera_from_info, depth_to_metres, image_to_numpy, to_rgb
from perception_nodes.sim import bagio
from perception_nodes.sim.episode import Episode
from perception_nodes.sim.gt import assemble_episode

log = logging.getLogger("perception_nodes.sim.dataset")

_PER_FRAME = (
    bagio.IMAGE_TOPIC,
    bagio.DEPTH_TOPIC,
    bagio.INSTANCES_TOPIC,
    bagio.PARTS_TOPIC,
    bagio.POSES_TOPIC,
    bagio.TF_TOPIC,
    bagio.COMMAND_TOPIC,
)


def find_bags(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Bag paths from path(s): a bag folder (has metadata.yaml), an .mcap file, or a folder of bags."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() or (p / "metadata.yaml").exists():
            out.append(p)
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if (c / "metadata.yaml").exists() or c.suffix == ".mcap")
            if not found:
                raise BagError(f"no bags in folder {p}")
            out.extend(found)
        else:
            raise BagError(f"bag not found: {p}")
    return out


def read_episodes(bag_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[Episode]:
    """Yield one Episode per sim bag (see module doc); BagError names a bag that is not a sim bag."""
    for path in find_bags(bag_paths):
        yield read_episode(path)


def read_episode(path: str | os.PathLike) -> Episode:
    with BagReader(path) as reader:
        reader.require(bagio.REQUIRED_TOPICS)
        info, camera, frames = None, None, {}
        for topic, _, _, msg in reader.messages([*_PER_FRAME, bagio.EPISODE_TOPIC, bagio.INFO_TOPIC]):
            if topic == bagio.EPISODE_TOPIC:
                info = json.loads(msg.data)
            elif topic == bagio.INFO_TOPIC:
                camera = camera if camera is not None else camera_from_info(msg)
            elif topic == bagio.TF_TOPIC:
                stamp = stamp_ns(msg.transforms[0])
                frames.setdefault(stamp, {})[topic] = msg
            else:
                frames.setdefault(stamp_ns(msg), {})[topic] = msg
    if info is None or info.get("format") != bagio.FORMAT:
        raise BagError(
            f"{path} is not a perception_nodes sim bag (no {bagio.EPISODE_TOPIC} of format {bagio.FORMAT})"
        )
    stamps = sorted(s for s, f in frames.items() if bagio.IMAGE_TOPIC in f)
    missing = [s for s in stamps if any(t not in frames[s] for t in _PER_FRAME if t != bagio.COMMAND_TOPIC)]
    if missing:
        raise BagError(f"{path}: frame(s) at {missing[:3]} lack some ground-truth topics")
    return _episode(info, camera, [frames[s] for s in stamps], np.array(stamps, np.int64))


def _camera_pose(tf_msg, frame_id: str) -> np.ndarray:
    for tr in tf_msg.transforms:
        if tr.child_frame_id == frame_id:
            t, q = tr.transform.translation, tr.transform.rotation
            return np.array([t.x, t.y, t.z, q.w, q.x, q.y, q.z], np.float64)
    raise BagError(f"/tf has no transform to {frame_id}")


def _episode(info: dict, camera, frames: list[dict], stamps: np.ndarray) -> Episode:
    M = len(info["object_ids"])
    cmd = [f.get(bagio.COMMAND_TOPIC) for f in frames]
    actions = np.stack(
        [np.asarray(c.actions, np.float32) if c is not None else np.full(5, np.nan, np.float32) for c in cmd]
    )
    return assemble_episode(
        visibility_tol_m=float(info["visibility_tol_m"]),
        rgb=np.stack([to_rgb(f[bagio.IMAGE_TOPIC]) for f in frames]),
        depth=np.stack([depth_to_metres(f[bagio.DEPTH_TOPIC]) for f in frames]),
        instance=np.stack([image_to_numpy(f[bagio.INSTANCES_TOPIC]) for f in frames]).astype(np.uint16),
        part=np.stack([image_to_numpy(f[bagio.PARTS_TOPIC]) for f in frames]).astype(np.uint16),
        camera=camera,
        camera_poses=np.stack([_camera_pose(f[bagio.TF_TOPIC], info["frame_id"]) for f in frames]),
        object_ids=np.array(info["object_ids"], np.uint16),
        object_names=list(info["object_names"]),
        object_families=list(info["object_families"]),
        object_poses=np.stack(
            [np.asarray(f[bagio.POSES_TOPIC].poses, np.float64).reshape(M, 7) for f in frames]
        ),
        pusher_id=int(info["pusher_id"]),
        part_names=list(info["part_names"]),
        part_functions=list(info["part_functions"]),
        track_points=np.array(info["track_points"], np.float64).reshape(-1, 3),
        track_normals=np.array(info["track_normals"], np.float64).reshape(-1, 3),
        track_object=np.array(info["track_object"], np.uint16),
        actions=actions,
        stamps_ns=stamps,
        seed=int(info["seed"]),
        meta=dict(info.get("meta") or {}),
        frame_id=info["frame_id"],
    )
