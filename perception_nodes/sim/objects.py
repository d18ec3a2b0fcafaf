"""Object families assembled from named primitive parts, each part carrying a functional label.

Every builder returns an ``ObjectDesc`` in its own body frame: z up, origin at the centre of the footprint on
the table (the lowest point is at z = 0), sizes in metres, MuJoCo primitive size conventions (box: half sizes;
cylinder and capsule: radius, half length along local z; sphere: radius; ellipsoid: three radii).
Shape parameters are drawn from ``rng`` so no two mugs are alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Functional part labels (index = value in the part mask). 0 is background/table/walls.
PART_NAMES: tuple[str, ...] = (
    "background",
    "body",
    "container",
    "handle",
    "spout",
    "head",
    "scoop",
    "blade",
    "lid",
    "pusher",
)
# What each part is for in manipulation, parallel to PART_NAMES.
PART_FUNCTIONS: tuple[str, ...] = (
    "none",
    "support",
    "contain",
    "grasp",
    "pour-with",
    "strike-with",
    "scoop-with",
    "cut-with",
    "open",
    "push-with",
)
PART_IDS = {name: i for i, name in enumerate(PART_NAMES)}

_Y90 = (np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0)  # rotates local z onto x
_IDQ = (1.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class PartGeom:
    part: str  # one of PART_NAMES
    kind: str  # box | cylinder | sphere | capsule | ellipsoid
    size: tuple[float, ...]
    pos: tuple[float, float, float]
    quat: tuple[float, float, float, float] = _IDQ  # w, x, y, z


@dataclass(frozen=True)
class ObjectDesc:
    family: str
    geoms: tuple[PartGeom, ...]
    density: float  # kg/m^3
    friction: tuple[float, float, float]  # sliding, torsional, rolling
    radius: float  # footprint radius around the origin, for placement

    @property
    def height(self) -> float:
        return max(g.pos[2] + _half_extent_z(g) for g in self.geoms)


def _half_extent_z(g: PartGeom) -> float:
    if g.kind == "box":
        return g.size[2]
    if g.kind in ("cylinder", "capsule") and g.quat == _IDQ:
        return g.size[1] + (g.size[0] if g.kind == "capsule" else 0.0)
    return max(g.size)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _c_handle(x0: float, zc: float, reach: float, span: float, t: float, sign: float = 1.0) -> list[PartGeom]:
    """A C-shaped handle of three boxes on the +x (or -x) side, from the surface at x0 outwards."""
    arm = reach / 2 + t
    xs = sign * (x0 + reach / 2 - t)
    return [
        PartGeom("handle", "box", (arm, t, t), (xs, 0.0, zc + span)),
        PartGeom("handle", "box", (arm, t, t), (xs, 0.0, zc - span)),
        PartGeom("handle", "box", (t, t, span + t), (sign * (x0 + reach), 0.0, zc)),
    ]


def mug(rng: np.random.Generator) -> ObjectDesc:
    r, hh = _u(rng, 0.03, 0.045), _u(rng, 0.035, 0.055)
    geoms = [PartGeom("container", "cylinder", (r, hh), (0.0, 0.0, hh))]
    geoms += _c_handle(r - 0.004, hh, _u(rng, 0.022, 0.035), hh * _u(rng, 0.45, 0.65), _u(rng, 0.005, 0.008))
    return ObjectDesc("mug", tuple(geoms), _u(rng, 400, 900), (_u(rng, 0.4, 1.0), 0.005, 0.0001), r + 0.04)


def pan(rng: np.random.Generator) -> ObjectDesc:
    r, hh = _u(rng, 0.065, 0.1), _u(rng, 0.01, 0.02)
    hr, hl = _u(rng, 0.007, 0.011), _u(rng, 0.05, 0.08)
    geoms = [
        PartGeom("container", "cylinder", (r, hh), (0.0, 0.0, hh)),
        PartGeom("handle", "capsule", (hr, hl), (r + hl - 0.01, 0.0, max(hh, hr) + 0.004), _Y90),
    ]
    return ObjectDesc("pan", tuple(geoms), _u(rng, 800, 2500), (_u(rng, 0.3, 0.8), 0.005, 0.0001), r + hl)


def hammer(rng: np.random.Generator) -> ObjectDesc:
    hr, hl = _u(rng, 0.008, 0.012), _u(rng, 0.07, 0.11)
    hx, hy, hz = _u(rng, 0.012, 0.02), _u(rng, 0.032, 0.05), _u(rng, 0.013, 0.02)
    geoms = [
        PartGeom("handle", "capsule", (hr, hl), (-hx, 0.0, hz), _Y90),
        PartGeom("head", "box", (hx, hy, hz), (hl, 0.0, hz)),
    ]
    return ObjectDesc("hammer", tuple(geoms), _u(rng, 600, 2000), (_u(rng, 0.4, 1.0), 0.005, 0.0001), hl + hx)


def bottle(rng: np.random.Generator) -> ObjectDesc:
    r, hh = _u(rng, 0.022, 0.035), _u(rng, 0.05, 0.085)
    nr, nh = r * _u(rng, 0.35, 0.5), _u(rng, 0.012, 0.025)
    geoms = [
        PartGeom("container", "cylinder", (r, hh), (0.0, 0.0, hh)),
        PartGeom("spout", "cylinder", (nr, nh), (0.0, 0.0, 2 * hh + nh - 0.002)),
    ]
    if rng.random() < 0.6:
        geoms.append(PartGeom("lid", "cylinder", (nr * 1.15, 0.006), (0.0, 0.0, 2 * hh + 2 * nh + 0.004)))
    return ObjectDesc("bottle", tuple(geoms), _u(rng, 300, 800), (_u(rng, 0.3, 0.9), 0.005, 0.0001), r)


def kettle(rng: np.random.Generator) -> ObjectDesc:
    r, hh = _u(rng, 0.045, 0.065), _u(rng, 0.035, 0.055)
    sr, sl, tilt = _u(rng, 0.008, 0.012), _u(rng, 0.03, 0.045), _u(rng, 0.6, 0.9)
    q = (np.cos((np.pi / 2 - tilt) / 2), 0.0, np.sin((np.pi / 2 - tilt) / 2), 0.0)  # z tilted towards +x
    geoms = [
        PartGeom("container", "cylinder", (r, hh), (0.0, 0.0, hh)),
        PartGeom("lid", "cylinder", (r * 0.6, 0.006), (0.0, 0.0, 2 * hh + 0.004)),
        PartGeom(
            "spout",
            "capsule",
            (sr, sl),
            (r + sl * np.cos(tilt) - 0.012, 0.0, hh * 0.6 + sl * np.sin(tilt)),
            tuple(q),
        ),
    ]
    geoms += _c_handle(r - 0.004, hh * 1.1, _u(rng, 0.025, 0.035), hh * 0.5, _u(rng, 0.006, 0.008), sign=-1.0)
    return ObjectDesc(
        "kettle", tuple(geoms), _u(rng, 300, 700), (_u(rng, 0.4, 0.9), 0.005, 0.0001), r + 0.045
    )


def spatula(rng: np.random.Generator) -> ObjectDesc:
    hr, hl = _u(rng, 0.006, 0.009), _u(rng, 0.05, 0.08)
    bx, by, bz = _u(rng, 0.025, 0.04), _u(rng, 0.02, 0.032), _u(rng, 0.003, 0.005)
    geoms = [
        PartGeom("handle", "capsule", (hr, hl), (-hl, 0.0, hr), _Y90),
        PartGeom("scoop", "box", (bx, by, bz), (bx - 0.005, 0.0, bz)),
    ]
    return ObjectDesc("spatula", tuple(geoms), _u(rng, 500, 1500), (_u(rng, 0.3, 0.8), 0.005, 0.0001), 2 * hl)


def knife(rng: np.random.Generator) -> ObjectDesc:
    hx, hy, hz = _u(rng, 0.035, 0.055), _u(rng, 0.008, 0.012), _u(rng, 0.007, 0.01)
    bx, by, bz = _u(rng, 0.05, 0.08), _u(rng, 0.01, 0.018), _u(rng, 0.002, 0.003)
    geoms = [
        PartGeom("handle", "box", (hx, hy, hz), (-hx, 0.0, hz)),
        PartGeom("blade", "box", (bx, by, bz), (bx - 0.002, 0.0, bz)),
    ]
    return ObjectDesc(
        "knife", tuple(geoms), _u(rng, 1000, 3000), (_u(rng, 0.3, 0.8), 0.005, 0.0001), 2 * max(hx, bx)
    )


def box(rng: np.random.Generator) -> ObjectDesc:
    s = (_u(rng, 0.02, 0.06), _u(rng, 0.02, 0.06), _u(rng, 0.015, 0.05))
    geoms = [PartGeom("body", "box", s, (0.0, 0.0, s[2]))]
    return ObjectDesc(
        "box", tuple(geoms), _u(rng, 150, 800), (_u(rng, 0.3, 1.0), 0.005, 0.0001), float(np.hypot(*s[:2]))
    )


def ball(rng: np.random.Generator) -> ObjectDesc:
    r = _u(rng, 0.025, 0.045)
    geoms = [PartGeom("body", "sphere", (r,), (0.0, 0.0, r))]
    # Rolling friction keeps balls from rolling off the table for ever.
    return ObjectDesc(
        "ball", tuple(geoms), _u(rng, 100, 600), (_u(rng, 0.4, 1.0), 0.01, _u(rng, 0.002, 0.006)), r
    )


def can(rng: np.random.Generator) -> ObjectDesc:
    r, hh = _u(rng, 0.028, 0.042), _u(rng, 0.035, 0.065)
    geoms = [
        PartGeom("body", "cylinder", (r, hh), (0.0, 0.0, hh)),
        PartGeom("lid", "cylinder", (r * 0.92, 0.003), (0.0, 0.0, 2 * hh + 0.002)),
    ]
    return ObjectDesc("can", tuple(geoms), _u(rng, 200, 900), (_u(rng, 0.3, 0.9), 0.005, 0.0001), r)


BUILDERS: dict[str, Callable[[np.random.Generator], ObjectDesc]] = {
    "mug": mug,
    "pan": pan,
    "hammer": hammer,
    "bottle": bottle,
    "kettle": kettle,
    "spatula": spatula,
    "knife": knife,
    "box": box,
    "ball": ball,
    "can": can,
}
FAMILIES: tuple[str, ...] = tuple(BUILDERS)


def build_object(family: str, rng: np.random.Generator) -> ObjectDesc:
    return BUILDERS[family](rng)
