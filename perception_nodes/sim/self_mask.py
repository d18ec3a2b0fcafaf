"""The robot's own mask: where its end effector (the sim's pusher) is in an image, from its pose and shape
as the robot knows them (joint states and its model, as ROS's ``robot_self_filter`` uses them), not from
the image. The sim bag publishes it on ``/robot/self_mask`` and the segmentation node gives it to EISEN's
component (one segment with a fixed id)."""

from __future__ import annotations

import cv2
import numpy as np

from perception_nodes.sim.geometry import invert, pose_to_matrix


def hull_points(shape: str, half_size) -> np.ndarray:
    """(P, 3) points whose convex hull is the pusher's body, in its body frame (metres, z up from the
    body's origin at the bottom): the 8 corners of a box of half sizes x, y, z (``paddle``), or points on
    a capsule of radius x standing from z = 0 to 2 z (``rod``: rings of its two hemispheres, 16 azimuths x
    4 elevations, and the poles)."""
    hx, hy, hz = half_size
    if shape == "paddle":
        return np.array([[sx * hx, sy * hy, z] for sx in (-1, 1) for sy in (-1, 1) for z in (0.0, 2 * hz)])
    if shape != "rod":
        raise ValueError(f"pusher shape must be 'paddle' or 'rod', got {shape!r}")
    az, el = (
        a.ravel()
        for a in np.meshgrid(np.linspace(0, 2 * np.pi, 16, endpoint=False), np.radians([0, 30, 60, 80]))
    )
    ring = np.column_stack([hx * np.cos(el) * np.cos(az), hx * np.cos(el) * np.sin(az)])  # (64, 2)
    ends = []
    for centre, sign in ((hx, -1.0), (2 * hz - hx, 1.0)):  # the hemispheres below and above the cylinder
        ends += [np.column_stack([ring, centre + sign * hx * np.sin(el)]), [[0.0, 0.0, centre + sign * hx]]]
    return np.concatenate(ends)


def hull_mask(
    camera,
    cam_to_world: np.ndarray,
    body_pose: np.ndarray,
    points: np.ndarray,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """(H, W) bool at ``camera``'s size: the image of the convex body spanned by ``points`` (P, 3, body
    frame) of a body at ``body_pose`` (7: world x, y, z, qw, qx, qy, qz), seen from the optical frame
    ``cam_to_world`` (4, 4): the points projected and their convex hull filled (a convex body projects to
    a convex region). With ``depth`` (H, W metres) the pixels where the depth sees something nearer than
    the body are left out (an object in front). All False when a point is behind the camera. What a robot
    knows of its own end effector from its pose and shape."""
    body_to_cam = invert(cam_to_world) @ pose_to_matrix(body_pose)
    pts = points @ body_to_cam[:3, :3].T + body_to_cam[:3, 3]  # (P, 3) metres, optical frame
    mask = np.zeros((camera.height, camera.width), np.uint8)
    if (pts[:, 2] <= 0.01).any():
        return mask > 0
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(camera.project(pts)).astype(np.int32)), 1)
    if depth is not None:
        mask[(depth > 0) & (depth < pts[:, 2].min() - 0.005)] = 0
    return mask > 0


def pusher_mask(ep, t: int, use_depth: bool = True) -> np.ndarray | None:
    """``hull_mask`` of a sim episode's pusher in frame ``t`` at the episode's size, or None when the episode
    does not record the pusher's size (bags written before it was; bags without its shape get the box that
    encloses either shape). ``use_depth``: leave out what the depth image sees in front of it."""
    half = ep.meta.get("pusher_half_size")
    ids = list(ep.object_ids)
    if half is None or ep.pusher_id not in ids:
        return None
    depth = ep.depth[t] if use_depth and ep.depth is not None else None
    points = hull_points(ep.meta.get("pusher_shape", "paddle"), half)
    return hull_mask(
        ep.camera, ep.cam_to_world[t], ep.object_poses[t, ids.index(ep.pusher_id)], points, depth
    )


def pusher_masks(ep, use_depth: bool = True) -> np.ndarray | None:
    """(T, H, W) bool ``pusher_mask`` of every frame, or None (no recorded pusher size)."""
    masks = [pusher_mask(ep, t, use_depth) for t in range(ep.num_frames)]
    return None if masks[0] is None else np.stack(masks)
