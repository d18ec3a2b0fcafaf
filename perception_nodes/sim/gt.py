"""Ground truth derived from the simulator state (numpy only, no MuJoCo): tracks, visibility and flow.

The generator and the bag reader call these very functions on the very same float64 poses, so an episode
read back from a bag is array-for-array identical to the one generated.

Conventions: pixels x right, y down, pixel centres at integer coordinates; camera frame = optical frame
(x right, y down, z forward), metres; world poses (x, y, z, qw, qx, qy, qz); instance id 0 = the static
world (table, floor, walls), whose pose is the identity.
"""

from __future__ import annotations

import numpy as np

from perception_nodes.sim.episode import Episode
from perception_nodes.sim.geometry import invert, pose_to_matrix
from perception_nodes.sim.objects import PART_FUNCTIONS, PART_NAMES
from perception_nodes.types import CameraModel


def instance_transforms(object_ids: np.ndarray, object_poses: np.ndarray) -> np.ndarray:
    """(T, K, 4, 4) world-from-instance transforms indexed by instance id (K = max id + 1; id 0 = identity).

    object_ids (M,) ids; object_poses (T, M, 7) world poses of those ids.
    """
    T = object_poses.shape[0]
    K = int(max(object_ids, default=0)) + 1
    out = np.tile(np.eye(4), (T, K, 1, 1))
    if len(object_ids):
        out[:, np.asarray(object_ids, dtype=np.int64)] = pose_to_matrix(object_poses)
    return out


def track_world_points(
    points_obj: np.ndarray, track_object: np.ndarray, transforms: np.ndarray
) -> np.ndarray:
    """(N, T, 3) world positions of object-frame points (N, 3) owned by instances ``track_object`` (N,)."""
    Tw = transforms[:, track_object.astype(np.int64)]  # (T, N, 4, 4)
    world = np.einsum("tnij,nj->tni", Tw[..., :3, :3], points_obj) + Tw[..., :3, 3]
    return np.ascontiguousarray(world.transpose(1, 0, 2))


def to_camera(world: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """(N, T, 3) world points -> (N, T, 3) camera (optical) frame, with cam_to_world (T, 4, 4)."""
    w2c = invert(cam_to_world)  # (T, 4, 4)
    return np.einsum("tij,ntj->nti", w2c[:, :3, :3], world) + w2c[None, :, :3, 3]


def project(camera: CameraModel, points_cam: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame points -> (..., 2) float32 pixels (NaN behind the camera)."""
    z = points_cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        px = camera.project(points_cam)
    px[z <= 1e-6] = np.nan
    return px.astype(np.float32)


def visibility(
    tracks_2d: np.ndarray,
    tracks_3d: np.ndarray,
    depth: np.ndarray,
    instance: np.ndarray,
    track_object: np.ndarray,
    tol_m: float,
    facing: np.ndarray | None = None,
) -> np.ndarray:
    """(N, T) bool: the point is in the image and the rendered surface at its nearest pixel (np.rint) is
    the point itself: same instance and rendered depth within ``tol_m`` of the point's depth. ``facing``
    (N, T) bool, if given, must also hold (its surface faces the camera: the far side of a 2 mm blade is
    within any depth tolerance of the near side, but never visible)."""
    T, H, W = depth.shape
    with np.errstate(invalid="ignore"):
        px = np.rint(tracks_2d)
        inside = (
            np.isfinite(px).all(-1)
            & (px[..., 0] >= 0)
            & (px[..., 0] < W)
            & (px[..., 1] >= 0)
            & (px[..., 1] < H)
        )
    x = np.where(inside, px[..., 0], 0).astype(np.int64)
    y = np.where(inside, px[..., 1], 0).astype(np.int64)
    t = np.broadcast_to(np.arange(T), x.shape)
    d = depth[t, y, x]
    same = instance[t, y, x] == track_object[:, None]
    vis = inside & (d > 0) & (np.abs(d - tracks_3d[..., 2]) < tol_m) & same
    return vis & facing if facing is not None else vis


def rigid_flow(
    depth: np.ndarray,
    instance: np.ndarray,
    camera: CameraModel,
    cam_to_world: np.ndarray,
    transforms: np.ndarray,
) -> np.ndarray:
    """Forward flow t -> t+1 (H, W, 2) float32 pixels from the known rigid motion of every instance.

    depth, instance: frame t (H, W); cam_to_world (2, 4, 4) and transforms (2, K, 4, 4) at t and t+1.
    Each pixel is back-projected with its depth, moved with its instance's relative pose, re-projected.
    NaN where the depth is unknown or the point ends behind the camera. Occlusion at t+1 is not masked.
    (Component-wise arithmetic on purpose: (N, 3) @ (3, 3) goes through threaded BLAS and is 10x slower.)
    """
    H, W = depth.shape
    ys, xs = np.mgrid[0:H, 0:W]
    out = np.full((H, W, 2), np.nan, np.float32)
    valid = depth > 0
    w2c1 = invert(cam_to_world[1])
    camera_still = np.array_equal(cam_to_world[0], cam_to_world[1])
    for k in np.nonzero(np.bincount(instance[valid].ravel()))[0]:
        m = valid & (instance == k)
        if camera_still and np.array_equal(transforms[0, k], transforms[1, k]):
            out[m] = 0.0  # nothing moved relative to the camera (the static world seen by a still camera)
            continue
        u0, v0 = xs[m].astype(np.float64), ys[m].astype(np.float64)
        z = depth[m].astype(np.float64)
        p = ((u0 - camera.cx) / camera.fx * z, (v0 - camera.cy) / camera.fy * z, z)
        M = w2c1 @ transforms[1, k] @ invert(transforms[0, k]) @ cam_to_world[0]
        q = [M[i, 0] * p[0] + M[i, 1] * p[1] + M[i, 2] * p[2] + M[i, 3] for i in range(3)]
        with np.errstate(divide="ignore", invalid="ignore"):
            front = q[2] > 1e-6
            u1 = np.where(front, camera.fx * q[0] / q[2] + camera.cx, np.nan)
            v1 = np.where(front, camera.fy * q[1] / q[2] + camera.cy, np.nan)
        out[m] = np.stack([u1 - u0, v1 - v0], axis=-1).astype(np.float32)
    return out


def all_flow(
    depth: np.ndarray,
    instance: np.ndarray,
    camera: CameraModel,
    cam_to_world: np.ndarray,
    transforms: np.ndarray,
) -> np.ndarray:
    """(T-1, H, W, 2) float32 forward flow for a whole episode (see ``rigid_flow``)."""
    T, H, W = depth.shape
    out = np.empty((max(T - 1, 0), H, W, 2), np.float32)
    for t in range(T - 1):
        out[t] = rigid_flow(depth[t], instance[t], camera, cam_to_world[t : t + 2], transforms[t : t + 2])
    return out


def tracks(
    points_obj: np.ndarray,
    track_object: np.ndarray,
    object_ids: np.ndarray,
    object_poses: np.ndarray,
    cam_to_world: np.ndarray,
    camera: CameraModel,
    depth: np.ndarray,
    instance: np.ndarray,
    tol_m: float,
    normals_obj: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tracks_2d (N, T, 2) float32 px, tracks_3d (N, T, 3) float32 camera frame m, visible (N, T) bool.

    ``normals_obj`` (N, 3) outward surface normals in the objects' frames make back faces invisible.
    """
    transforms = instance_transforms(object_ids, object_poses)
    cam = to_camera(track_world_points(points_obj, track_object, transforms), cam_to_world)
    px = project(camera, cam)
    facing = None
    if normals_obj is not None:
        rot = transforms[:, track_object.astype(np.int64), :3, :3]  # (T, N, 3, 3)
        n_world = np.einsum("tnij,nj->nti", rot, normals_obj)
        n_cam = np.einsum("tji,ntj->nti", cam_to_world[:, :3, :3], n_world)
        facing = np.einsum("nti,nti->nt", n_cam, cam) < 0.0
    vis = visibility(px, cam, depth, instance, track_object, tol_m, facing)
    return px, cam.astype(np.float32), vis


def assemble_episode(*, visibility_tol_m: float, **f) -> Episode:
    """An Episode from rendered frames, poses and track points: derives tracks, visibility and flow.

    Shared by the generator and the bag reader, so both produce identical arrays.
    """
    tol = visibility_tol_m
    cam_to_world = pose_to_matrix(f["camera_poses"])
    transforms = instance_transforms(f["object_ids"], f["object_poses"])
    tr2, tr3, vis = tracks(
        f["track_points"],
        f["track_object"],
        f["object_ids"],
        f["object_poses"],
        cam_to_world,
        f["camera"],
        f["depth"],
        f["instance"],
        tol,
        f["track_normals"],
    )
    flow = all_flow(f["depth"], f["instance"], f["camera"], cam_to_world, transforms)
    meta = dict(f.pop("meta", {}) or {})
    meta["visibility_tol_m"] = tol
    f.setdefault("part_names", list(PART_NAMES))
    f.setdefault("part_functions", list(PART_FUNCTIONS))
    return Episode(
        flow=flow,
        tracks_2d=tr2,
        tracks_3d=tr3,
        visible=vis,
        cam_to_world=cam_to_world,
        meta=meta,
        **f,
    )
