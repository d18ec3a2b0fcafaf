"""Sim episodes as rosbag2 (MCAP): standard camera topics + ground truth under /sim/ground_truth/.

Per frame t (all stamped ``stamps_ns[t]``, pixels in the optical frame ``camera_color_optical_frame``):
    /camera/color/image_raw                   sensor_msgs/Image rgb8
    /camera/color/camera_info                 sensor_msgs/CameraInfo (plumb_bob, zero distortion)
    /camera/aligned_depth_to_color/image_raw  sensor_msgs/Image 32FC1, metres, 0 = no data
    /robot/self_mask                          sensor_msgs/Image mono8, 255 where the pusher (the robot's end
                                              effector) is, placed from its pose and size, less what the
                                              depth sees in front of it (``sim.self_mask``): what a robot
                                              knows of itself, not ground truth
    /tf                                       world -> camera_color_optical_frame, world -> <object name>
                                              (objects and "pusher")
    /sim/ground_truth/instances               sensor_msgs/Image mono16: 0 = table/floor/walls, k = object id
                                              (the pusher has its own id)
    /sim/ground_truth/parts                   sensor_msgs/Image mono16: index into part_names (episode topic)
    /sim/ground_truth/object_poses            perception_msgs/ObjectPoses in frame "world" (objects + pusher)
    /sim/ground_truth/tracks                  perception_msgs/PointTracks, ONE step per message (num_steps=1):
                                              all N points at this frame, track_ids 0..N-1 stable over the
                                              episode, visible from the depth test, segment_ids = owner
    /sim/pusher/command                       perception_msgs/ActionChunk, horizon 1, dims x, y, z, yaw, grip
                                              (the pusher servo target in "world": what a policy would send)
Once, at frame 0:
    /tf_static                                world -> table (identity: world origin = table-top centre)
    /sim/ground_truth/episode                 std_msgs/String JSON: seed, config, part and object names,
                                              pusher id, track points in their objects' frames (float64)
Optical flow is NOT stored (it would double the bag): ``perception_nodes.sim.dataset`` recomputes it from
depth + instances + object poses + camera poses with ``gt.rigid_flow``, exactly as the generator does.
3D tracks likewise come from the track points and the poses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes.runtime.bag import BagWriter
from perception_nodes.runtime.convert import camera_to_info, numpy_to_image
from perception_nodes.runtime.typestore import make, typestore
from perception_nodes.sim.episode import ACTION_DIMS, Episode
from perception_nodes.sim.self_mask import pusher_mask

IMAGE_TOPIC = "/camera/color/image_raw"
INFO_TOPIC = "/camera/color/camera_info"
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"
SELF_MASK_TOPIC = "/robot/self_mask"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
INSTANCES_TOPIC = "/sim/ground_truth/instances"
PARTS_TOPIC = "/sim/ground_truth/parts"
POSES_TOPIC = "/sim/ground_truth/object_poses"
TRACKS_TOPIC = "/sim/ground_truth/tracks"
EPISODE_TOPIC = "/sim/ground_truth/episode"
COMMAND_TOPIC = "/sim/pusher/command"
WORLD_FRAME = "world"
OPTICAL_FRAME = "camera_color_optical_frame"
FORMAT = "perception_nodes.sim/1"

REQUIRED_TOPICS = (
    IMAGE_TOPIC,
    INFO_TOPIC,
    DEPTH_TOPIC,
    TF_TOPIC,
    INSTANCES_TOPIC,
    PARTS_TOPIC,
    POSES_TOPIC,
    EPISODE_TOPIC,
)


def header(mk, stamp_ns: int, frame_id: str):
    stamp = mk(
        "builtin_interfaces/msg/Time",
        sec=int(stamp_ns // 1_000_000_000),
        nanosec=int(stamp_ns % 1_000_000_000),
    )
    return mk("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)


def transform_msg(mk, stamp_ns: int, parent: str, child: str, pose: np.ndarray):
    """geometry_msgs/TransformStamped from a (x, y, z, qw, qx, qy, qz) pose of ``child`` in ``parent``."""
    p = [float(v) for v in pose]
    tf = mk(
        "geometry_msgs/msg/Transform",
        translation=mk("geometry_msgs/msg/Vector3", x=p[0], y=p[1], z=p[2]),
        rotation=mk("geometry_msgs/msg/Quaternion", x=p[4], y=p[5], z=p[6], w=p[3]),
    )
    return mk(
        "geometry_msgs/msg/TransformStamped",
        header=header(mk, stamp_ns, parent),
        child_frame_id=child,
        transform=tf,
    )


def episode_info(ep: Any, config: Any = None) -> dict[str, Any]:
    """The JSON document of /sim/ground_truth/episode (exact float64 via repr) from an Episode or any object
    with the same attributes (the live node)."""
    return {
        "format": FORMAT,
        "seed": int(ep.seed),
        "config": dataclasses.asdict(config) if config is not None else None,
        "part_names": list(ep.part_names),
        "part_functions": list(ep.part_functions),
        "object_ids": [int(i) for i in ep.object_ids],
        "object_names": list(ep.object_names),
        "object_families": list(ep.object_families),
        "pusher_id": int(ep.pusher_id),
        "frame_id": ep.frame_id,
        "world_frame": WORLD_FRAME,
        "visibility_tol_m": float(ep.meta.get("visibility_tol_m", 0.01)),
        "track_object": [int(i) for i in ep.track_object],
        "track_points": np.asarray(ep.track_points, np.float64).tolist(),
        "track_normals": np.asarray(ep.track_normals, np.float64).tolist(),
        "meta": {k: v for k, v in ep.meta.items() if k != "visibility_tol_m"},
        "flow": "not stored; perception_nodes.sim.gt.rigid_flow recomputes it from depth, instances, poses",
    }


def frame_messages(mk, ep: Episode, t: int) -> list[tuple[str, Any]]:
    """(topic, message) pairs for frame t of ``ep``, built with ``mk(typename, **fields)``."""
    return state_messages(
        mk,
        stamp=int(ep.stamps_ns[t]),
        frame_id=ep.frame_id,
        camera=ep.camera,
        rgb=ep.rgb[t],
        depth=ep.depth[t],
        instance=ep.instance[t],
        part=ep.part[t],
        camera_pose=ep.camera_poses[t],
        object_ids=ep.object_ids,
        object_names=ep.object_names,
        object_poses=ep.object_poses[t],
        action=ep.actions[t],
        tracks_2d=ep.tracks_2d[:, t],
        visible=ep.visible[:, t],
        track_object=ep.track_object,
        self_mask=pusher_mask(ep, t),
    )


def state_messages(
    mk,
    *,
    stamp: int,
    frame_id: str,
    camera,
    rgb: np.ndarray,
    depth: np.ndarray,
    instance: np.ndarray,
    part: np.ndarray,
    camera_pose: np.ndarray,
    object_ids: np.ndarray,
    object_names: list[str],
    object_poses: np.ndarray,
    action: np.ndarray,
    tracks_2d: np.ndarray | None = None,
    visible: np.ndarray | None = None,
    track_object: np.ndarray | None = None,
    self_mask: np.ndarray | None = None,
) -> list[tuple[str, Any]]:
    """(topic, message) pairs for one frame of simulator state (shared by the bag writer and the live node).

    tracks_2d (N, 2) px, visible (N,) and track_object (N,) are optional (no tracks message without), and
    so is self_mask (H, W) bool, the robot's own mask (no ``/robot/self_mask`` without).
    """
    hdr = header(mk, stamp, frame_id)
    tfs = [transform_msg(mk, stamp, WORLD_FRAME, frame_id, camera_pose)]
    tfs += [transform_msg(mk, stamp, WORLD_FRAME, n, object_poses[i]) for i, n in enumerate(object_names)]
    out = [
        (TF_TOPIC, mk("tf2_msgs/msg/TFMessage", transforms=tfs)),
        (INFO_TOPIC, camera_to_info(mk, camera, hdr)),
        (IMAGE_TOPIC, numpy_to_image(mk, rgb, "rgb8", hdr)),
        (DEPTH_TOPIC, numpy_to_image(mk, depth, "32FC1", hdr)),
        *(
            []
            if self_mask is None
            else [(SELF_MASK_TOPIC, numpy_to_image(mk, self_mask.astype(np.uint8) * 255, "mono8", hdr))]
        ),
        (INSTANCES_TOPIC, numpy_to_image(mk, instance, "mono16", hdr)),
        (PARTS_TOPIC, numpy_to_image(mk, part, "mono16", hdr)),
        (POSES_TOPIC, _poses_msg(mk, stamp, object_ids, object_names, object_poses)),
        (COMMAND_TOPIC, _command_msg(mk, stamp, action)),
    ]
    if tracks_2d is not None:
        out.append((TRACKS_TOPIC, _tracks_msg(mk, hdr, tracks_2d, visible, track_object)))
    return out


def _poses_msg(mk, stamp: int, object_ids, object_names: list[str], object_poses: np.ndarray):
    """ObjectPoses in the world frame: ids, names and (x, y, z, qw, qx, qy, qz) per object."""
    return mk(
        "perception_msgs/msg/ObjectPoses",
        header=header(mk, stamp, WORLD_FRAME),
        ids=np.asarray(object_ids, np.uint16),
        names=list(object_names),
        poses=np.ascontiguousarray(object_poses, dtype=np.float64).reshape(-1),
    )


def _command_msg(mk, stamp: int, action: np.ndarray):
    """The pusher's command of this frame as a one-step ActionChunk (``ACTION_DIMS``)."""
    return mk(
        "perception_msgs/msg/ActionChunk",
        header=header(mk, stamp, WORLD_FRAME),
        horizon=1,
        action_dim=len(ACTION_DIMS),
        dim_names=list(ACTION_DIMS),
        actions=np.asarray(action, np.float32),
        step_offsets=np.zeros(1, np.float32),
        model_id="sim.script",
    )


def _tracks_msg(mk, hdr, tracks_2d: np.ndarray, visible: np.ndarray, track_object: np.ndarray):
    """PointTracks of one step: (N, 2) pixels, visibility and each point's object id as its segment id."""
    n = len(tracks_2d)
    return mk(
        "perception_msgs/msg/PointTracks",
        header=hdr,
        num_points=n,
        num_steps=1,
        track_ids=np.arange(n, dtype=np.uint64),
        points=np.ascontiguousarray(tracks_2d, dtype=np.float32).reshape(-1),
        visible=np.asarray(visible).astype(np.uint8),
        step_offsets=np.zeros(1, np.float32),
        segment_ids=np.asarray(track_object, np.uint16),
    )


def start_messages(mk, stamp: int, info: dict[str, Any]) -> list[tuple[str, Any]]:
    """/tf_static (world -> table) and the episode JSON document, stamped ``stamp``."""
    static = mk(
        "tf2_msgs/msg/TFMessage",
        transforms=[transform_msg(mk, stamp, WORLD_FRAME, "table", np.array([0, 0, 0, 1.0, 0, 0, 0]))],
    )
    return [(TF_STATIC_TOPIC, static), (EPISODE_TOPIC, mk("std_msgs/msg/String", data=json.dumps(info)))]


def write_episode_bag(
    ep: Episode, path: str | Path, cfg: Any = None, overwrite: bool = False, distro: str = "jazzy"
) -> Path:
    """Write ``ep`` as an MCAP rosbag2 at ``path`` (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = typestore(distro)
    mk = functools.partial(make, store)
    with BagWriter(path, distro=distro, overwrite=overwrite) as writer:
        for topic, msg in start_messages(mk, int(ep.stamps_ns[0]), episode_info(ep, cfg)):
            writer.write(topic, int(ep.stamps_ns[0]), msg)
        for t in range(ep.num_frames):
            for topic, msg in frame_messages(mk, ep, t):
                writer.write(topic, int(ep.stamps_ns[t]), msg)
    return path
