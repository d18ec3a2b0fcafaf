"""Uniform point samples on the surfaces of MuJoCo primitives, in the frame of the body that owns them.

Points that fall inside another part of the same object (e.g. the ends of a mug's handle buried in its
body) are dropped: they can never be seen.
"""

from __future__ import annotations

import numpy as np

from perception_nodes.sim.geometry import quat_to_mat
from perception_nodes.sim.objects import PartGeom


def area(g: PartGeom) -> float:
    s = g.size
    if g.kind == "box":
        return 8 * (s[0] * s[1] + s[1] * s[2] + s[0] * s[2])
    if g.kind == "sphere":
        return 4 * np.pi * s[0] ** 2
    if g.kind == "cylinder":
        return 4 * np.pi * s[0] * s[1] + 2 * np.pi * s[0] ** 2
    if g.kind == "capsule":
        return 4 * np.pi * s[0] * s[1] + 4 * np.pi * s[0] ** 2
    if g.kind == "ellipsoid":
        a, b, c = s[:3]
        p = 1.6075  # Knud Thomsen's approximation
        return 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    raise ValueError(f"cannot sample on geom kind {g.kind!r}")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _sample_local(g: PartGeom, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) points and outward normals in the geom's own frame."""
    s = np.asarray(g.size, dtype=np.float64)
    if g.kind == "box":
        a, b, c = s[:3]
        face_area = np.array([b * c, b * c, a * c, a * c, a * b, a * b])
        face = rng.choice(6, size=n, p=face_area / face_area.sum())
        pts = rng.uniform(-1, 1, (n, 3)) * s[:3]
        axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
        pts[np.arange(n), axis] = sign * s[axis]
        nrm = np.zeros((n, 3))
        nrm[np.arange(n), axis] = sign
        return pts, nrm
    if g.kind in ("sphere", "ellipsoid"):
        u = _unit(rng, n)
        radii = s[:3] if g.kind == "ellipsoid" else np.full(3, s[0])
        nrm = u / radii
        return u * radii, nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
    r, h = s[0], s[1]
    side = 4 * np.pi * r * h
    ends = 2 * np.pi * r * r * (2 if g.kind == "capsule" else 1)
    on_side = rng.random(n) < side / (side + ends)
    theta = rng.uniform(0, 2 * np.pi, n)
    pts = np.stack([r * np.cos(theta), r * np.sin(theta), rng.uniform(-h, h, n)], axis=1)
    nrm = np.stack([np.cos(theta), np.sin(theta), np.zeros(n)], axis=1)
    m = ~on_side
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    if g.kind == "cylinder":
        rad = r * np.sqrt(rng.random(n))
        pts[m] = np.stack([rad * np.cos(theta), rad * np.sin(theta), sign * h], axis=1)[m]
        nrm[m] = np.stack([np.zeros(n), np.zeros(n), sign], axis=1)[m]
    else:
        u = _unit(rng, n)
        u[:, 2] = np.abs(u[:, 2]) * sign
        pts[m] = (u * r + np.stack([np.zeros(n), np.zeros(n), sign * h], axis=1))[m]
        nrm[m] = u[m]
    return pts, nrm


def inside(g: PartGeom, pts_body: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """(n,) True where body-frame points lie strictly inside primitive ``g`` (by more than ``margin``)."""
    R = quat_to_mat(np.asarray(g.quat))
    p = (pts_body - np.asarray(g.pos)) @ R  # into the geom frame
    s = np.asarray(g.size, dtype=np.float64)
    if g.kind == "box":
        return np.all(np.abs(p) < s[:3] - margin, axis=1)
    if g.kind == "sphere":
        return np.linalg.norm(p, axis=1) < s[0] - margin
    if g.kind == "ellipsoid":
        return np.linalg.norm(p / s[:3], axis=1) < 1 - margin / max(s[:3])
    if g.kind == "cylinder":
        return (np.hypot(p[:, 0], p[:, 1]) < s[0] - margin) & (np.abs(p[:, 2]) < s[1] - margin)
    if g.kind == "capsule":
        z = np.clip(p[:, 2], -s[1], s[1])
        return np.linalg.norm(p - np.stack([0 * z, 0 * z, z], axis=1), axis=1) < s[0] - margin
    raise ValueError(f"unknown geom kind {g.kind!r}")


def sample_surface(parts: list[PartGeom], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) points and (n, 3) unit normals on the exposed surface of a body of ``parts`` (body frame)."""
    if n <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    areas = np.array([area(g) for g in parts])
    pts_all, nrm_all = [], []
    got = 0
    for _ in range(20):
        counts = rng.multinomial(2 * n, areas / areas.sum())
        for i, (g, k) in enumerate(zip(parts, counts, strict=True)):
            if k == 0:
                continue
            p, nr = _sample_local(g, int(k), rng)
            R = quat_to_mat(np.asarray(g.quat))
            p, nr = p @ R.T + np.asarray(g.pos), nr @ R.T
            keep = np.ones(len(p), bool)
            for j, other in enumerate(parts):
                if j != i:
                    keep &= ~inside(other, p)
            pts_all.append(p[keep])
            nrm_all.append(nr[keep])
            got += int(keep.sum())
        if got >= n:
            break
    pts, nrm = np.concatenate(pts_all), np.concatenate(nrm_all)
    order = rng.permutation(len(pts))[:n]
    return pts[order], nrm[order]
