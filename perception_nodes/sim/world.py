"""The simulated world (MuJoCo physics + rendering) with a pusher action interface, and episode generation.

``World`` is what a policy drives (``set_pusher_target`` / ``set_pusher_velocity`` / ``grip``, then
``step``); ``generate_episode`` drives it with the scripted expert of ``script.py`` and returns an
``Episode`` with every ground-truth array (see ``episode.py`` for shapes and conventions).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from perception_nodes.sim.config import SimConfig
from perception_nodes.sim.episode import Episode
from perception_nodes.sim.geometry import MJ_TO_OPTICAL, look_at_mj, mat_to_quat, pose_to_matrix
from perception_nodes.sim.gl import mujoco
from perception_nodes.sim.gt import assemble_episode
from perception_nodes.sim.render import FrameRenderer
from perception_nodes.sim.scene import PUSHER_JOINTS, WORKSPACE_MARGIN_M, Scene, build_scene, part_geoms
from perception_nodes.sim.script import PushScript
from perception_nodes.sim.surface import area, sample_surface

__all__ = ["Episode", "SimConfig", "World", "generate_episode"]

log = logging.getLogger("perception_nodes.sim")


def seed_streams(seed: int, n: int) -> list[np.random.Generator]:
    """``n`` independent generators derived from ``seed`` (scene, script, tracks...)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


class World:
    """One seeded tabletop scene. Pusher commands are world-frame servo targets (x, y, z metres, yaw rad),
    clipped to the table top minus ``WORKSPACE_MARGIN_M`` and to 3 mm .. 0.5 m above it.

    ``step(duration)`` advances physics; ``capture()`` renders and returns the frame's state.
    """

    def __init__(self, cfg: SimConfig, seed: int, render: bool = True):
        self.cfg, self.seed = cfg, int(seed)
        # a fourth stream for shoves: spawned children are fixed by index, so the first three are unchanged
        scene_rng, self.script_rng, self.track_rng, self.shove_rng = seed_streams(seed, 4)
        self.scene: Scene = build_scene(cfg, scene_rng)
        self.model = self.scene.model
        self.data = mujoco.MjData(self.model)
        self._qadr = [
            int(self.model.jnt_qposadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, j)])
            for j in PUSHER_JOINTS
        ]
        self.target = self.scene.pusher.start.astype(np.float64).copy()
        self.velocity = np.zeros(4)
        self.gripped = 0
        self.data.qpos[self._qadr] = self.target
        self.set_camera(*self.scene.camera_path.at(0.0))
        mujoco.mj_forward(self.model, self.data)
        self.step(cfg.settle_s)
        self.t0 = float(self.data.time)  # physics time of frame 0 (after settling)
        self.renderer = FrameRenderer(self.model, self.scene.camera_id, cfg.shadows) if render else None

    # -- action interface ------------------------------------------------------------------------
    def set_pusher_target(self, xyz, yaw: float | None = None) -> None:
        """Servo the pusher to world position ``xyz`` (m) and heading ``yaw`` (rad); ends velocity mode."""
        self.target[:3] = np.asarray(xyz, dtype=np.float64)
        if yaw is not None:
            self.target[3] = float(yaw)
        self.velocity[:] = 0.0

    def set_pusher_velocity(self, v_xyz, yaw_rate: float = 0.0) -> None:
        """Move the servo target at ``v_xyz`` (m/s) and ``yaw_rate`` (rad/s) until told otherwise."""
        self.velocity[:3] = np.asarray(v_xyz, dtype=np.float64)
        self.velocity[3] = float(yaw_rate)

    def shove(self, object_id: int, velocity_xy, spin: float = 0.0) -> None:
        """Set an object's horizontal velocity (m/s, world frame) and yaw rate (rad/s), as a sharp push."""
        body = self.scene.body_of[object_id]
        dof = int(self.model.jnt_dofadr[self.model.body_jntadr[body]])  # free joint: linear xyz, angular xyz
        self.data.qvel[dof : dof + 2] = np.asarray(velocity_xy, dtype=np.float64)
        self.data.qvel[dof + 5] = float(spin)

    def shove_some(self) -> list[int]:
        """Shove each object with probability ``cfg.shove_prob`` in a random direction; returns their ids."""
        p, (lo, hi) = self.cfg.shove_prob, self.cfg.shove_speed
        if p <= 0:
            return []
        shoved = []
        for obj in self.scene.objects:
            if self.shove_rng.random() < p:
                angle, speed = self.shove_rng.uniform(0, 2 * np.pi), self.shove_rng.uniform(lo, hi)
                direction = np.array([np.cos(angle), np.sin(angle)])
                self.shove(obj.id, speed * direction, spin=self.shove_rng.normal(0, 2))
                shoved.append(obj.id)
        return shoved

    def pusher_contacts(self) -> set[int]:
        """Instance ids of objects the pusher touches now."""
        ncon = self.data.ncon
        if ncon == 0:
            return set()
        pairs = self.scene.geom_instance[self.data.contact.geom[:ncon]]  # (ncon, 2) instance ids
        pusher = self.scene.pusher_id
        hit = pairs[(pairs == pusher).any(axis=1)]
        return {int(i) for i in hit.ravel()} - {0, pusher}

    def grip(self, on: bool, object_id: int | None = None) -> int:
        """Weld the pusher to an object it touches (``object_id`` or any) or release; returns its id."""
        if not on:
            if self.gripped:
                self.data.eq_active[self.scene.weld_of[self.gripped]] = 0
            self.gripped = 0
            return 0
        if self.gripped:
            return self.gripped
        touching = self.pusher_contacts()
        if object_id is not None:
            touching &= {object_id}
        if not touching:
            return 0
        obj = min(touching)
        eq = self.scene.weld_of[obj]
        b1, b2 = self.scene.body_of[self.scene.pusher_id], self.scene.body_of[obj]
        # Weld at the current relative pose (body2 in body1's frame), so nothing jumps.
        p1, p2 = self.data.xpos[b1], self.data.xpos[b2]
        R1 = self.data.xmat[b1].reshape(3, 3)
        rel = np.zeros(4)
        q1inv = np.zeros(4)
        mujoco.mju_negQuat(q1inv, self.data.xquat[b1])
        mujoco.mju_mulQuat(rel, q1inv, self.data.xquat[b2])
        self.model.eq_data[eq, 0:3] = 0.0
        self.model.eq_data[eq, 3:6] = R1.T @ (p2 - p1)
        self.model.eq_data[eq, 6:10] = rel
        self.model.eq_data[eq, 10] = 1.0
        self.data.eq_active[eq] = 1
        self.gripped = obj
        return obj

    # -- stepping --------------------------------------------------------------------------------
    def step(self, duration_s: float, controller=None) -> None:
        """Advance physics by ``duration_s``; ``controller(world, t)`` may change commands every substep."""
        dt = self.model.opt.timestep
        half = np.array(self.scene.table_half) - WORKSPACE_MARGIN_M
        for _ in range(round(duration_s / dt)):
            if controller is not None:
                controller(self, self.data.time)
            if np.any(self.velocity):
                self.target += self.velocity * dt
            self.target[:2] = np.clip(self.target[:2], -half, half)
            self.target[2] = np.clip(self.target[2], 0.003, 0.5)
            self.data.ctrl[:4] = self.target
            mujoco.mj_step(self.model, self.data)

    def set_camera(self, eye: np.ndarray, target: np.ndarray) -> None:
        mid = self.scene.camera_mocap
        self.data.mocap_pos[mid] = eye
        self.data.mocap_quat[mid] = look_at_mj(np.asarray(eye), np.asarray(target))

    # -- state -----------------------------------------------------------------------------------
    def camera_pose(self) -> np.ndarray:
        """(7,) optical-frame pose in the world (x, y, z, qw, qx, qy, qz)."""
        cid = self.scene.camera_id
        R = self.data.cam_xmat[cid].reshape(3, 3) @ MJ_TO_OPTICAL
        return np.concatenate([self.data.cam_xpos[cid], mat_to_quat(R)])

    def object_poses(self) -> np.ndarray:
        """(M, 7) world poses of every instance (objects then pusher)."""
        bodies = [self.scene.body_of[i] for i in self.scene.instance_ids]
        return np.concatenate([self.data.xpos[bodies], self.data.xquat[bodies]], axis=1)

    def action(self) -> np.ndarray:
        return np.array([*self.target, 1.0 if self.gripped else 0.0])

    def capture(self) -> dict[str, np.ndarray]:
        """Render the current state: rgb, depth, instance, part, object_poses, camera_pose, action, gripped
        (id of the object welded to the pusher, 0 = none)."""
        mujoco.mj_forward(self.model, self.data)
        if self.renderer is None:
            raise RuntimeError("this World was created with render=False")
        rgb, depth, geom = self.renderer.render(self.data)
        hit = geom >= 0
        gid = np.where(hit, geom, 0)
        instance = np.where(hit, self.scene.geom_instance[gid], 0).astype(np.uint16)
        part = np.where(hit, self.scene.geom_part[gid], 0).astype(np.uint16)
        return dict(
            rgb=rgb,
            depth=depth,
            instance=instance,
            part=part,
            object_poses=self.object_poses(),
            camera_pose=self.camera_pose(),
            action=self.action(),
            gripped=np.array(self.gripped),
        )

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sample_track_points(
    world: World, n: int, depth0: np.ndarray, instance0: np.ndarray, cam_to_world0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) body-frame points, (N, 3) normals and (N,) uint16 owners: on the table top where frame 0
    sees it, and on every object and the pusher in proportion to the square root of their area."""
    rng, cfg, scene = world.track_rng, world.cfg, world.scene
    table_pts = _table_points(world, round(n * cfg.table_track_fraction), depth0, instance0, cam_to_world0)
    ids = scene.instance_ids
    parts = {i: part_geoms(scene, i) for i in ids}
    weights = np.array([np.sqrt(sum(area(g) for g, _ in parts[i])) for i in ids])
    weights[-1] *= 0.5  # the pusher
    counts = rng.multinomial(n - len(table_pts), weights / weights.sum())
    pts, nrm, owner = [table_pts], [np.tile([0.0, 0.0, 1.0], (len(table_pts), 1))], [np.zeros(len(table_pts))]
    for i, k in zip(ids, counts, strict=True):
        p, q = sample_surface([g for g, _ in parts[i]], int(k), rng)
        pts.append(p)
        nrm.append(q)
        owner.append(np.full(len(p), i))
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(owner).astype(np.uint16)


def _table_points(world: World, n: int, depth0, instance0, cam_to_world0) -> np.ndarray:
    """Points on the table top (world z = 0) seen at frame 0: rays through random sub-pixel positions."""
    if n <= 0:
        return np.zeros((0, 3))
    cam, rng = world.scene.camera, world.track_rng
    ys, xs = np.nonzero((instance0 == 0) & (depth0 > 0))
    if len(xs) == 0:
        return np.zeros((0, 3))
    pick = rng.integers(len(xs), size=4 * n)
    pix = np.stack([xs[pick], ys[pick]], axis=1) + rng.uniform(-0.5, 0.5, (4 * n, 2))
    rays = cam.backproject(pix, np.ones(len(pix))) @ cam_to_world0[:3, :3].T  # world directions
    origin = cam_to_world0[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -origin[2] / rays[:, 2]
    pts = origin + s[:, None] * rays
    tx, ty = world.scene.table_half
    ok = (s > 0) & (np.abs(pts[:, 0]) < tx - 0.005) & (np.abs(pts[:, 1]) < ty - 0.005)
    # keep points whose pixel really shows the table (not the floor seen past its edge)
    dist = cam.backproject(pix, np.ones(len(pix)))[:, 2] * s
    d0 = depth0[
        np.rint(pix[:, 1]).astype(int).clip(0, depth0.shape[0] - 1),
        np.rint(pix[:, 0]).astype(int).clip(0, depth0.shape[1] - 1),
    ]
    ok &= np.abs(d0 - dist) < 0.02
    return pts[ok][:n]


def generate_episode(cfg: SimConfig, seed: int, timings: dict[str, float] | None = None) -> Episode:
    """Simulate, render and label one episode of ``cfg.frames`` frames; same (cfg, seed) -> same arrays.

    ``timings``, if given, accumulates seconds per phase: scene (build + settle), physics, render, gt.
    """
    clock = _Clock(timings)
    with World(cfg, seed) as world:
        clock.lap("scene")
        script = PushScript(world.script_rng, world)
        path, T = world.scene.camera_path, cfg.frames
        frames = []
        for t in range(T):
            if t > 0:
                world.shove_some()
                world.step(1.0 / cfg.fps, controller=script)
            world.set_camera(*path.at(t / max(T - 1, 1)))
            clock.lap("physics")
            frames.append(world.capture())
            clock.lap("render")
        stack = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
        cam_to_world = pose_to_matrix(stack["camera_pose"])
        points, normals, owner = sample_track_points(
            world, cfg.num_tracks, stack["depth"][0], stack["instance"][0], cam_to_world[0]
        )
        scene = world.scene
        episode = assemble_episode(
            visibility_tol_m=cfg.visibility_tol_m,
            seed=int(seed),
            rgb=stack["rgb"],
            depth=stack["depth"],
            instance=stack["instance"],
            part=stack["part"],
            camera=scene.camera,
            camera_poses=stack["camera_pose"],
            object_ids=np.array(scene.instance_ids, np.uint16),
            object_names=scene.instance_names,
            object_families=[o.family for o in scene.objects] + ["pusher"],
            object_poses=stack["object_poses"],
            pusher_id=scene.pusher_id,
            track_points=points,
            track_normals=normals,
            track_object=owner,
            actions=stack["action"].astype(np.float32),
            stamps_ns=np.array([cfg.stamp_ns(t) for t in range(T)], np.int64),
            meta={
                "moving_camera": bool(path.moving),
                "pusher_shape": scene.pusher.shape,
                "pusher_half_size": [float(v) for v in scene.pusher.half_size],
                "gripped": [int(g) for g in stack["gripped"]],
            },
        )
        clock.lap("gt")
        return episode


class _Clock:
    def __init__(self, out: dict[str, float] | None):
        self.out, self.last = out, time.perf_counter()

    def lap(self, name: str) -> None:
        if self.out is not None:
            now = time.perf_counter()
            self.out[name] = self.out.get(name, 0.0) + now - self.last
            self.last = now
