"""Seeded tabletop scenes built in code with MuJoCo's MjSpec (MJCF's object model; see ``spec.to_xml()``).

World frame: origin at the centre of the table top, z up, metres. The scene holds a textured table on a
textured floor inside four textured walls, 1-3 lights, 2-6 objects from ``objects.FAMILIES``, a pusher
(position-servoed slide joints x/y/z + yaw hinge, gravity-compensated, able to weld itself to an object it
touches: "drag") and a camera on a mocap rig so it can move during an episode.
Instance ids: 0 = table/floor/walls, 1..M = objects, M+1 = pusher.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from perception_nodes.sim import textures
from perception_nodes.sim.config import SimConfig
from perception_nodes.sim.geometry import look_at_mj, yaw_quat
from perception_nodes.sim.gl import mujoco
from perception_nodes.sim.objects import PART_IDS, ObjectDesc, PartGeom, build_object
from perception_nodes.types import CameraModel

PUSHER_JOINTS = ("pusher_x", "pusher_y", "pusher_z", "pusher_yaw")
PUSHER_REST_Z = 0.25  # target height of the pusher when it waits above the scene
WORKSPACE_MARGIN_M = 0.1  # the pusher's servo target stays this far inside the table edges
_GEOM_TYPES = {
    "box": mujoco.mjtGeom.mjGEOM_BOX,
    "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
    "sphere": mujoco.mjtGeom.mjGEOM_SPHERE,
    "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE,
    "ellipsoid": mujoco.mjtGeom.mjGEOM_ELLIPSOID,
    "plane": mujoco.mjtGeom.mjGEOM_PLANE,
}


@dataclass
class SceneObject:
    id: int  # instance id (value in the instance mask)
    name: str  # e.g. "mug_1"
    family: str
    desc: ObjectDesc
    xy: np.ndarray  # initial position on the table
    yaw: float


@dataclass
class CameraPath:
    """Camera eye and look-at target at the start and the end of the episode (equal when it does not move)."""

    eye: tuple[np.ndarray, np.ndarray]
    target: tuple[np.ndarray, np.ndarray]

    @property
    def moving(self) -> bool:
        return not (np.allclose(*self.eye) and np.allclose(*self.target))

    def at(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """Eye and target at episode fraction ``s`` in [0, 1] (smooth start and stop)."""
        w = 0.5 - 0.5 * np.cos(np.pi * float(np.clip(s, 0.0, 1.0)))
        return (1 - w) * self.eye[0] + w * self.eye[1], (1 - w) * self.target[0] + w * self.target[1]


@dataclass
class Pusher:
    shape: str  # "paddle" or "rod"
    half_size: tuple[float, float, float]  # x (push direction), y (width), z (height)
    start: np.ndarray  # (x, y, z, yaw) initial servo target
    target_id: int  # object the first stroke goes for (0 = none)


@dataclass
class Scene:
    model: object  # mujoco.MjModel
    config: SimConfig
    objects: list[SceneObject]
    pusher: Pusher
    pusher_id: int
    camera: CameraModel
    camera_path: CameraPath
    table_half: tuple[float, float]
    geom_instance: np.ndarray  # (ngeom,) uint16
    geom_part: np.ndarray  # (ngeom,) uint16
    body_of: dict[int, int] = field(default_factory=dict)  # instance id -> MuJoCo body id
    weld_of: dict[int, int] = field(default_factory=dict)  # object id -> equality id
    camera_mocap: int = 0
    camera_id: int = 0
    spec: object = None

    @property
    def instance_ids(self) -> list[int]:
        return [o.id for o in self.objects] + [self.pusher_id]

    @property
    def instance_names(self) -> list[str]:
        return [o.name for o in self.objects] + ["pusher"]


class _Builder:
    def __init__(self, cfg: SimConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.spec = mujoco.MjSpec()
        self.spec.modelname = "tabletop"
        self.geom_labels: list[tuple[str, int, int]] = []  # (geom name, instance, part)
        self._n_tex = 0

    # -- assets ----------------------------------------------------------------------------------
    def material(self, img: np.ndarray | None = None, cube: bool = True, repeat: float = 1.0) -> str:
        """A material with a procedural texture (``img`` (S, S, 3) or a fresh random one)."""
        rng, size = self.rng, self.cfg.texture_size
        img = textures.texture(rng, size) if img is None else img
        name = f"tex{self._n_tex}"
        self._n_tex += 1
        tex = self.spec.add_texture()
        tex.name = name
        data = textures.cube_faces(img) if cube else img
        tex.type = mujoco.mjtTexture.mjTEXTURE_CUBE if cube else mujoco.mjtTexture.mjTEXTURE_2D
        tex.width, tex.height, tex.nchannel = data.shape[1], data.shape[0], 3
        tex.data = data.tobytes()
        mat = self.spec.add_material()
        mat.name = f"mat_{name}"
        mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = name
        mat.texuniform = True
        mat.texrepeat = [repeat, repeat]
        mat.specular = float(rng.uniform(0.0, 0.6))
        mat.shininess = float(rng.uniform(0.0, 0.8))
        return mat.name

    def geom(
        self,
        body,
        name: str,
        kind: str,
        size,
        pos,
        quat=(1, 0, 0, 0),
        material: str = "",
        instance: int = 0,
        part: int = 0,
    ):
        g = body.add_geom()
        g.name, g.type = name, _GEOM_TYPES[kind]
        g.size = list(size) + [0.0] * (3 - len(size))
        g.pos, g.quat = list(pos), list(quat)
        if material:
            g.material = material
        self.geom_labels.append((name, instance, part))
        return g

    # -- scene parts -----------------------------------------------------------------------------
    def environment(self) -> tuple[float, float]:
        rng, spec, w = self.rng, self.spec, self.spec.worldbody
        spec.option.timestep = self.cfg.physics_dt
        spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
        spec.visual.global_.offwidth, spec.visual.global_.offheight = self.cfg.width, self.cfg.height
        spec.stat.extent = 2.0
        spec.visual.map.znear, spec.visual.map.zfar = 0.005, 5.0  # times extent: 1 cm .. 10 m
        spec.visual.quality.shadowsize = 512
        spec.visual.quality.offsamples = 0  # no MSAA: id colours must not blend at edges; 2x faster on CPU
        spec.visual.headlight.ambient = [rng.uniform(0.15, 0.35)] * 3
        spec.visual.headlight.diffuse = [rng.uniform(0.2, 0.45)] * 3
        spec.visual.headlight.specular = [0.1] * 3
        tx, ty = rng.uniform(0.45, 0.7), rng.uniform(0.35, 0.55)
        table_img = textures.texture(rng, self.cfg.texture_size)
        self.table_img = table_img
        top = self.geom(
            w,
            "table_top",
            "box",
            (tx, ty, 0.02),
            (0, 0, -0.02),
            material=self.material(table_img, cube=False, repeat=float(rng.uniform(2, 8))),
        )
        top.friction = [float(rng.uniform(0.3, 0.6)), 0.005, 0.0001]
        leg_mat = self.material()
        for i, (sx, sy) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1))):
            self.geom(
                w,
                f"table_leg{i}",
                "box",
                (0.025, 0.025, 0.365),
                (sx * (tx - 0.05), sy * (ty - 0.05), -0.405),
                material=leg_mat,
            )
        self.geom(
            w,
            "floor",
            "plane",
            (4, 4, 0.1),
            (0, 0, -0.77),
            material=self.material(cube=False, repeat=float(rng.uniform(3, 10))),
        )
        dist = rng.uniform(2.0, 3.0)
        for i, (ax, sign) in enumerate(((0, 1), (0, -1), (1, 1), (1, -1))):
            pos = [0.0, 0.0, 0.7]
            pos[ax] = sign * dist
            half = [dist, dist, 1.5]
            half[ax] = 0.05
            self.geom(
                w,
                f"wall{i}",
                "box",
                half,
                pos,
                material=self.material(cube=False, repeat=float(rng.uniform(1, 4))),
            )
        self.lights()
        return float(tx), float(ty)

    def lights(self) -> None:
        rng = self.rng
        for i in range(int(rng.integers(1, 4))):
            light = self.spec.worldbody.add_light()
            az, el, r = (
                rng.uniform(0, 2 * np.pi),
                rng.uniform(np.radians(35), np.radians(85)),
                rng.uniform(1.2, 2.5),
            )
            pos = r * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            light.pos = pos.tolist()
            light.dir = (-pos / np.linalg.norm(pos)).tolist()
            light.type = mujoco.mjtLightType.mjLIGHT_SPOT
            light.cutoff = float(rng.uniform(40, 70))
            light.exponent = float(rng.uniform(1, 10))
            tint = rng.uniform(0.85, 1.0, 3)
            light.diffuse = (tint * rng.uniform(0.5, 0.9) / (1 + 0.3 * i)).tolist()
            light.specular = [0.2] * 3
            light.castshadow = bool(self.cfg.shadows and i == 0)

    def place_objects(self, table_half: tuple[float, float]) -> list[SceneObject]:
        cfg, rng = self.cfg, self.rng
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        families = [cfg.families[int(i)] for i in rng.integers(len(cfg.families), size=n)]
        half = np.array([min(0.17, table_half[0] - 0.15), min(0.13, table_half[1] - 0.12)])
        placed: list[SceneObject] = []
        for fam in families:
            desc = build_object(fam, rng)
            for attempt in range(200):
                grow = 1.0 + attempt / 100  # widen the area if the table is crowded
                xy = rng.uniform(-half * grow, half * grow)
                if all(np.linalg.norm(xy - o.xy) > desc.radius + o.desc.radius + 0.01 for o in placed):
                    placed.append(
                        SceneObject(
                            len(placed) + 1,
                            f"{fam}_{len(placed) + 1}",
                            fam,
                            desc,
                            xy,
                            float(rng.uniform(-np.pi, np.pi)),
                        )
                    )
                    break
        if len(placed) < cfg.min_objects:
            raise RuntimeError(f"could not place {cfg.min_objects} objects on the table")
        for obj in placed:
            self.add_object(obj)
        return placed

    def add_object(self, obj: SceneObject) -> None:
        rng = self.rng
        body = self.spec.worldbody.add_body()
        body.name = obj.name
        body.pos = [float(obj.xy[0]), float(obj.xy[1]), 0.002]
        body.quat = yaw_quat(obj.yaw).tolist()
        body.add_freejoint()
        if rng.random() < self.cfg.camouflage_prob:
            shared = self.material(self.table_img)
        else:
            shared = self.material() if rng.random() < 0.5 else None
        for j, g in enumerate(obj.desc.geoms):
            mat = shared or self.material()
            geom = self.geom(
                body, f"{obj.name}/{g.part}/{j}", g.kind, g.size, g.pos, g.quat, mat, obj.id, PART_IDS[g.part]
            )
            geom.density = obj.desc.density
            geom.friction = list(obj.desc.friction)
            if g.kind == "sphere":
                geom.condim = 6  # rolling friction for balls

    def add_pusher(self, pusher_id: int, objects: list[SceneObject], table_half) -> Pusher:
        rng = self.rng
        if rng.random() < 0.6:
            shape, half = "paddle", (0.008, float(rng.uniform(0.02, 0.04)), 0.045)
        else:
            r = float(rng.uniform(0.01, 0.018))
            shape, half = "rod", (r, r, 0.045)
        start, target = self._pusher_start(objects, max(half[:2]), table_half)
        body = self.spec.worldbody.add_body()
        body.name = "pusher"
        body.gravcomp = 1.0
        for name, axis in zip(PUSHER_JOINTS[:3], np.eye(3), strict=True):
            j = body.add_joint()
            j.name, j.type, j.axis = name, mujoco.mjtJoint.mjJNT_SLIDE, axis.tolist()
            j.damping = [5.0, 0.0, 0.0]
        j = body.add_joint()
        j.name, j.type, j.axis, j.damping = (
            PUSHER_JOINTS[3],
            mujoco.mjtJoint.mjJNT_HINGE,
            [0, 0, 1],
            [0.05, 0, 0],
        )
        mat = self.material()
        if shape == "paddle":
            g = self.geom(
                body,
                "pusher/pusher/0",
                "box",
                half,
                (0, 0, half[2]),
                material=mat,
                instance=pusher_id,
                part=PART_IDS["pusher"],
            )
        else:
            g = self.geom(
                body,
                "pusher/pusher/0",
                "capsule",
                (half[0], half[2] - half[0]),
                (0, 0, half[2]),
                material=mat,
                instance=pusher_id,
                part=PART_IDS["pusher"],
            )
        g.mass = 1.0  # a robot end effector: heavy enough that welded objects follow it
        g.friction = [0.8, 0.005, 0.0001]
        # Stiff, critically damped servos: 1 kg, kp 3000 N/m -> ~55 rad/s; yaw on the ~1e-3 kg m^2 inertia.
        for name, kp, kv in zip(PUSHER_JOINTS, (3000, 3000, 3000, 40), (110, 110, 110, 1.0), strict=True):
            act = self.spec.add_actuator()
            act.name, act.target, act.trntype = name, name, mujoco.mjtTrn.mjTRN_JOINT
            act.set_to_position(kp=kp, kv=kv)
            # Bounded force: a jammed push stalls instead of driving objects into each other (which
            # MuJoCo then resolves explosively). 30 N moves a 1 kg pan with friction 1 at ease.
            act.forcelimited = True
            act.forcerange = [-30.0, 30.0] if name != PUSHER_JOINTS[3] else [-2.0, 2.0]
        # The pusher glides just above the table and never collides with the static world.
        self.spec.add_exclude(bodyname1="world", bodyname2="pusher")
        for obj in objects:
            eq = self.spec.add_equality()
            eq.name, eq.type, eq.objtype = (
                f"weld_{obj.name}",
                mujoco.mjtEq.mjEQ_WELD,
                mujoco.mjtObj.mjOBJ_BODY,
            )
            eq.name1, eq.name2, eq.active = "pusher", obj.name, False
            eq.solref = [0.005, 1.0]  # stiff weld (>= 2 physics steps); MuJoCo's 0.02 lets the servo tear it
        return Pusher(shape, half, start, target)

    def _pusher_start(self, objects: list[SceneObject], reach: float, table_half):
        """An approach pose next to a random object, clear of the others; else wait above the table."""
        rng = self.rng
        for obj in rng.permutation(objects):
            for _ in range(8):
                ang = rng.uniform(-np.pi, np.pi)
                d = np.array([np.cos(ang), np.sin(ang)])
                xy = obj.xy - d * (obj.desc.radius + reach + rng.uniform(0.01, 0.03))
                if np.any(np.abs(xy) > np.array(table_half) - WORKSPACE_MARGIN_M):
                    continue
                if all(np.linalg.norm(xy - o.xy) > o.desc.radius + reach + 0.01 for o in objects):
                    return np.array([xy[0], xy[1], 0.004, ang]), obj.id
        return np.array([0.0, 0.0, PUSHER_REST_Z, 0.0]), 0

    def camera(self, objects: list[SceneObject]) -> tuple[CameraModel, CameraPath]:
        cfg, rng = self.cfg, self.rng
        W, H = cfg.width, cfg.height
        fovy = np.radians(rng.uniform(*cfg.fovy_deg))
        fy = (H / 2) / np.tan(fovy / 2)
        fx = fy * rng.uniform(0.97, 1.03)
        cx = (W - 1) / 2 + rng.uniform(-1, 1) * cfg.principal_jitter * W
        cy = (H - 1) / 2 + rng.uniform(-1, 1) * cfg.principal_jitter * H
        cam = CameraModel(W, H, float(fx), float(fy), float(cx), float(cy), distortion=(0.0,) * 5)
        centre = np.mean([o.xy for o in objects], axis=0)
        target0 = np.array([centre[0], centre[1], 0.03]) + rng.uniform(-0.04, 0.04, 3) * [1, 1, 0.5]
        az, el = rng.uniform(-np.pi, np.pi), np.radians(rng.uniform(*cfg.camera_elevation_deg))
        dist = rng.uniform(*cfg.camera_distance)
        eye0 = target0 + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        if rng.random() < cfg.camera_motion_prob:
            az1 = az + rng.choice([-1, 1]) * np.radians(rng.uniform(6, 20))
            lo, hi = np.radians(cfg.camera_elevation_deg)
            el1 = np.clip(el + np.radians(rng.uniform(-6, 6)), lo, hi)
            dist1 = float(np.clip(dist + rng.uniform(-0.08, 0.08), *cfg.camera_distance))
            target1 = target0 + rng.uniform(-0.03, 0.03, 3) * [1, 1, 0]
            eye1 = target1 + dist1 * np.array(
                [np.cos(el1) * np.cos(az1), np.cos(el1) * np.sin(az1), np.sin(el1)]
            )
        else:
            eye1, target1 = eye0.copy(), target0.copy()
        rig = self.spec.worldbody.add_body()
        rig.name, rig.mocap = "camera_rig", True
        rig.pos, rig.quat = eye0.tolist(), look_at_mj(eye0, target0).tolist()
        c = rig.add_camera()
        c.name = "camera"
        # Pinhole intrinsics in pixels. MuJoCo 3.3+/4 places the principal point at centre - principal_pixel
        # (measured; tests/test_sim_gt.py checks a rendered probe lands where CameraModel.project says).
        c.resolution = [W, H]
        c.sensor_size = [W * 1e-5, H * 1e-5]
        c.focal_pixel = [float(fx), float(fy)]
        c.principal_pixel = [float((W - 1) / 2 - cx), float((H - 1) / 2 - cy)]
        return cam, CameraPath((eye0, eye1), (target0, target1))


def build_scene(cfg: SimConfig, rng: np.random.Generator) -> Scene:
    """Build and compile a random scene; every random draw comes from ``rng`` (determinism)."""
    b = _Builder(cfg, rng)
    table_half = b.environment()
    objects = b.place_objects(table_half)
    pusher_id = len(objects) + 1
    pusher = b.add_pusher(pusher_id, objects, table_half)
    camera, path = b.camera(objects)
    model = b.spec.compile()
    geom_instance = np.zeros(model.ngeom, np.uint16)
    geom_part = np.zeros(model.ngeom, np.uint16)
    for name, inst, part in b.geom_labels:
        gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)
        geom_instance[gid], geom_part[gid] = inst, part
    body_of = {o.id: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, o.name) for o in objects}
    body_of[pusher_id] = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "pusher")
    weld_of = {
        o.id: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_EQUALITY, f"weld_{o.name}") for o in objects
    }
    rig = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "camera_rig")
    return Scene(
        model=model,
        config=cfg,
        objects=objects,
        pusher=pusher,
        pusher_id=pusher_id,
        camera=camera,
        camera_path=path,
        table_half=table_half,
        geom_instance=geom_instance,
        geom_part=geom_part,
        body_of=body_of,
        weld_of=weld_of,
        camera_mocap=int(model.body_mocapid[rig]),
        camera_id=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "camera"),
        spec=b.spec,
    )


def part_geoms(scene: Scene, instance: int) -> list[tuple[PartGeom, int]]:
    """The primitive parts of instance ``instance`` with their MuJoCo geom ids."""
    m = scene.model
    out = []
    for gid in np.nonzero(scene.geom_instance == instance)[0]:
        kind = {v: k for k, v in _GEOM_TYPES.items()}[int(m.geom_type[gid])]
        size = tuple(float(s) for s in m.geom_size[gid])
        out.append((PartGeom("", kind, size, tuple(m.geom_pos[gid]), tuple(m.geom_quat[gid])), int(gid)))
    return out
