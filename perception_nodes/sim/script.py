"""The scripted expert that drives the pusher: push, nudge or drag one object after another.

Each stroke approaches an object until the pusher touches it (closed loop on MuJoCo contacts), then
pushes it further (push: 5-20 cm, nudge: 1-4 cm), or welds to it and drags it somewhere (drag), or
the pusher idles. Between strokes the pusher lifts, flies over the clutter and lands at the next
approach point. Every random draw comes from the generator passed in (determinism).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

LOW_Z, FLY_Z = 0.004, 0.14
MODES = ("push", "nudge", "drag", "idle")
MODE_P = (0.45, 0.2, 0.25, 0.1)


@dataclass
class Segment:
    end: np.ndarray  # (x, y, z, yaw) target at the end
    speed: float  # m/s
    until_contact: int = 0  # object id: end early when the pusher touches it
    grip: int = -1  # after the segment: 1 = weld to the touched object, 0 = release, -1 = nothing
    hold_s: float = 0.0  # idle segment duration (speed ignored)
    relative_dist: float = 0.0  # > 0: end[:2] is a direction, resolved against the target at the start


class PushScript:
    """``__call__(world, t)`` is invoked every physics substep and updates the pusher target."""

    def __init__(self, rng: np.random.Generator, world):
        self.rng = rng
        self.queue: deque[Segment] = deque()
        self.seg: Segment | None = None
        self.start = world.target.copy()
        self.t0 = 0.0
        self.duration = 0.0
        first = world.scene.pusher.target_id
        if first:
            self._plan_stroke(world, first, ready=True)

    def __call__(self, world, t: float) -> None:
        if self.seg is None or self._finished(world, t):
            if self.seg is not None and self.seg.grip >= 0:
                world.grip(bool(self.seg.grip), self.seg.until_contact or None)
            self._next(world, t)
        s = np.clip((t - self.t0) / self.duration, 0.0, 1.0) if self.duration > 0 else 1.0
        w = s * s * (3 - 2 * s)  # smoothstep: gentle start and stop
        target = self.start + w * (self.seg.end - self.start)
        world.set_pusher_target(target[:3], target[3])

    def _finished(self, world, t: float) -> bool:
        if t - self.t0 >= self.duration:
            return True
        return bool(self.seg.until_contact and self.seg.until_contact in world.pusher_contacts())

    def _next(self, world, t: float) -> None:
        if not self.queue:
            ids = [o.id for o in world.scene.objects]
            self._plan_stroke(world, int(self.rng.choice(ids)), ready=False)
        self.seg = self.queue.popleft()
        self.start, self.t0 = world.target.copy(), t
        if self.seg.relative_dist > 0:
            d, yaw = self.seg.end[:2] * self.seg.relative_dist, self.seg.end[3]
            self.seg.end = np.array([self.start[0] + d[0], self.start[1] + d[1], self.start[2], yaw])
        if np.isnan(self.seg.end[3]):  # keep the heading (a turning paddle sweeps the clutter)
            self.seg.end[3] = self.start[3]
        self.seg.end[3] = self.start[3] + (self.seg.end[3] - self.start[3] + np.pi) % (2 * np.pi) - np.pi
        if self.seg.hold_s > 0:
            self.seg.end = self.start.copy()
            self.duration = self.seg.hold_s
        else:
            dist = np.linalg.norm(self.seg.end[:3] - self.start[:3])
            self.duration = max(dist / self.seg.speed, 0.05)

    def _plan_stroke(self, world, obj_id: int, ready: bool) -> None:
        rng, q = self.rng, self.queue
        mode = MODES[int(rng.choice(len(MODES), p=MODE_P))]
        if mode == "idle":
            q.append(Segment(np.zeros(4), 1.0, hold_s=float(rng.uniform(0.2, 0.8))))
            return
        obj = next(o for o in world.scene.objects if o.id == obj_id)
        centre = world.data.xpos[world.scene.body_of[obj_id]][:2].copy()
        reach = max(world.scene.pusher.half_size[:2])
        here = world.target
        if ready:
            d = centre - here[:2]
            d = d / max(np.linalg.norm(d), 1e-9)
        else:
            ang = rng.uniform(-np.pi, np.pi)
            d = np.array([np.cos(ang), np.sin(ang)])
            approach = centre - d * (obj.desc.radius + reach + 0.02)
            yaw = float(np.arctan2(d[1], d[0]))
            q.append(Segment(np.array([here[0], here[1], FLY_Z, here[3]]), 0.5))
            q.append(Segment(np.array([*approach, FLY_Z, yaw]), 0.6))
            q.append(Segment(np.array([*approach, LOW_Z, yaw]), 0.5))
        yaw = float(np.arctan2(d[1], d[0]))
        speed = float(rng.uniform(0.15, 0.3))
        # Aim past the object's surface, at its centre: the segment ends at the first touch.
        contact = np.array([*(centre - d * 0.5 * reach), LOW_Z, yaw])
        q.append(Segment(contact, speed, until_contact=obj_id, grip=1 if mode == "drag" else -1))
        if mode == "push":
            q.append(self._relative(d, float(rng.uniform(0.05, 0.2)), yaw, speed))
        elif mode == "nudge":
            q.append(self._relative(d, float(rng.uniform(0.01, 0.04)), yaw, float(rng.uniform(0.05, 0.12))))
        else:
            turn = rng.uniform(-1.8, 1.8)
            e = np.array(
                [np.cos(turn) * d[0] - np.sin(turn) * d[1], np.sin(turn) * d[0] + np.cos(turn) * d[1]]
            )
            seg = self._relative(
                e,
                float(rng.uniform(0.06, 0.18)),
                yaw + float(rng.uniform(-0.6, 0.6)),
                float(rng.uniform(0.08, 0.2)),
            )
            seg.grip = 0
            q.append(seg)
        q.append(self._relative(-d, 0.03, np.nan, 0.2))  # back off

    @staticmethod
    def _relative(direction: np.ndarray, dist: float, yaw: float, speed: float) -> Segment:
        """Move ``dist`` along ``direction`` from wherever the target is when the segment starts."""
        return Segment(np.array([*direction, 0.0, yaw]), speed, relative_dist=dist)
