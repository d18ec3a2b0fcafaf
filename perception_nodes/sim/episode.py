"""The Episode: one simulated clip with all of its ground truth as numpy arrays (no MuJoCo needed).

Shapes (T frames, H x W pixels, N track points, M instances incl. the pusher):
    rgb (T, H, W, 3) uint8; depth (T, H, W) float32 metres along the optical axis, 0 = unknown;
    instance (T, H, W) uint16: 0 = table/floor/walls, k = object id, ``pusher_id`` = the pusher;
    part (T, H, W) uint16 index into ``part_names`` (functions in ``part_functions``);
    flow (T-1, H, W, 2) float32 forward flow t -> t+1 in pixels (x right, y down), NaN where unknown;
    tracks_2d (N, T, 2) float32 pixels; tracks_3d (N, T, 3) float32 camera optical frame, metres;
    visible (N, T) bool; track_object (N,) uint16 instance id of each point (0 = table top);
    track_points (N, 3) float64 point in its instance's body frame; track_normals (N, 3) outward normals;
    camera: CameraModel (fixed intrinsics); cam_to_world (T, 4, 4) optical frame -> world;
    camera_poses (T, 7) and object_poses (T, M, 7) world poses (x, y, z, qw, qx, qy, qz);
    object_ids (M,) uint16, object_names, object_families (pusher: "pusher");
    actions (T, 5) pusher command at each frame (x, y, z, yaw, grip) in the world frame; stamps_ns (T,) int64.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from perception_nodes.types import CameraModel, Frame

ACTION_DIMS = ("x", "y", "z", "yaw", "grip")


@dataclasses.dataclass
class Episode:
    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    part: np.ndarray
    part_names: list[str]
    part_functions: list[str]
    flow: np.ndarray
    tracks_2d: np.ndarray
    tracks_3d: np.ndarray
    visible: np.ndarray
    track_object: np.ndarray
    track_points: np.ndarray
    track_normals: np.ndarray
    camera: CameraModel
    cam_to_world: np.ndarray
    camera_poses: np.ndarray
    object_ids: np.ndarray
    object_names: list[str]
    object_families: list[str]
    object_poses: np.ndarray
    pusher_id: int
    actions: np.ndarray
    stamps_ns: np.ndarray
    seed: int = 0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    frame_id: str = "camera_color_optical_frame"

    @property
    def num_frames(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.rgb.shape[2]), int(self.rgb.shape[1])

    def frame(self, t: int, with_depth: bool = True) -> Frame:
        """Frame t as the capability components receive it."""
        return Frame(
            stamp_ns=int(self.stamps_ns[t]),
            rgb=self.rgb[t],
            depth=self.depth[t] if with_depth else None,
            camera=self.camera,
            frame_id=self.frame_id,
        )

    def moving_objects(self, min_motion_m: float = 0.005) -> list[int]:
        """Ids of instances whose position changed by more than ``min_motion_m`` over the episode."""
        path = np.linalg.norm(self.object_poses[:, :, :3] - self.object_poses[:1, :, :3], axis=-1).max(axis=0)
        return [int(i) for i, d in zip(self.object_ids, path, strict=True) if d > min_motion_m]

    def arrays(self) -> dict[str, np.ndarray]:
        """Every numpy field by name (for equality checks and saving)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
