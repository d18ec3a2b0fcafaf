"""Live sim camera node: steps the MuJoCo world in (bus) real time and publishes what a camera would.

Publishes every ``1/fps`` s the same topics as a sim bag (see ``bagio``): colour image, camera_info,
aligned depth, /tf (camera and objects in "world"), and, when ``publish_ground_truth``, instance/part
masks, object poses and per-frame point tracks; /tf_static and /sim/ground_truth/episode once.
So ``ros2 bag record`` of this node gives a bag that ``sim.dataset.read_episodes`` reads.

Actions (closed loop: perception -> policy -> world); the first action received stops the scripted
expert for good:
- ``perception_msgs/ActionChunk`` on ``action_topic``: H steps of D dims named in ``dim_names``;
  step h applies once ``step_offsets[h]`` seconds have passed since the chunk arrived (sim time).
  Known dims: x, y, z, yaw (absolute servo target in "world", metres/radians), vx, vy, vz, vyaw
  (velocities, m/s and rad/s), grip (> 0.5: weld to the object the pusher touches; <= 0.5: release).
  Other dims are ignored (logged once).
- ``geometry_msgs/Twist`` on ``cmd_vel_topic``: linear = pusher velocity in "world" (m/s),
  angular.z = yaw rate (rad/s); holds until the next command.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from perception_nodes.nodes.base import NodeBase
from perception_nodes.runtime.bus import QoS
from perception_nodes.sim import bagio, gt
from perception_nodes.sim.config import SimConfig
from perception_nodes.sim.geometry import pose_to_matrix
from perception_nodes.sim.objects import PART_FUNCTIONS, PART_NAMES
from perception_nodes.sim.script import PushScript
from perception_nodes.sim.self_mask import hull_mask, hull_points
from perception_nodes.sim.world import World, sample_track_points

_TYPES = {
    bagio.IMAGE_TOPIC: "sensor_msgs/msg/Image",
    bagio.INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
    bagio.DEPTH_TOPIC: "sensor_msgs/msg/Image",
    bagio.SELF_MASK_TOPIC: "sensor_msgs/msg/Image",
    bagio.TF_TOPIC: "tf2_msgs/msg/TFMessage",
    bagio.INSTANCES_TOPIC: "sensor_msgs/msg/Image",
    bagio.PARTS_TOPIC: "sensor_msgs/msg/Image",
    bagio.POSES_TOPIC: "perception_msgs/msg/ObjectPoses",
    bagio.TRACKS_TOPIC: "perception_msgs/msg/PointTracks",
    bagio.COMMAND_TOPIC: "perception_msgs/msg/ActionChunk",
}
# what a robot has without ground truth: its camera, its transforms and its own mask
_CAMERA_TOPICS = {
    bagio.IMAGE_TOPIC,
    bagio.INFO_TOPIC,
    bagio.DEPTH_TOPIC,
    bagio.TF_TOPIC,
    bagio.SELF_MASK_TOPIC,
}


@dataclasses.dataclass(frozen=True)
class SimCameraConfig:
    seed: int = dataclasses.field(default=0, metadata={"help": "scene seed"})
    width: int = dataclasses.field(default=320, metadata={"help": "image width in pixels"})
    height: int = dataclasses.field(default=240, metadata={"help": "image height in pixels"})
    fps: float = dataclasses.field(default=15.0, metadata={"help": "camera rate in Hz (bus time)"})
    min_objects: int = dataclasses.field(default=2, metadata={"help": "fewest objects on the table"})
    max_objects: int = dataclasses.field(default=6, metadata={"help": "most objects on the table"})
    num_tracks: int = dataclasses.field(default=256, metadata={"help": "ground-truth track points"})
    camera_motion_frames: int = dataclasses.field(
        default=48, metadata={"help": "frames over which a moving camera completes its path"}
    )
    scripted: bool = dataclasses.field(
        default=True, metadata={"help": "run the scripted pusher until the first action arrives"}
    )
    publish_ground_truth: bool = dataclasses.field(
        default=True, metadata={"help": "also publish masks, object poses and point tracks"}
    )
    reset_after_s: float = dataclasses.field(
        default=0.0, metadata={"help": "start a new scene (seed + 1) after this many seconds; 0 = never"}
    )
    action_topic: str = dataclasses.field(
        default="/sim/pusher/action", metadata={"help": "perception_msgs/ActionChunk pusher commands"}
    )
    cmd_vel_topic: str = dataclasses.field(
        default="/sim/pusher/cmd_vel", metadata={"help": "geometry_msgs/Twist pusher velocity"}
    )

    def __post_init__(self):
        self.sim_config()  # validates sizes, rates and object counts with SimConfig's messages
        if self.reset_after_s < 0:
            raise ValueError(f"reset_after_s must be >= 0, got {self.reset_after_s}")
        for name in ("action_topic", "cmd_vel_topic"):
            if not getattr(self, name).startswith("/"):
                raise ValueError(f"{name} must be an absolute topic name, got {getattr(self, name)!r}")

    def sim_config(self) -> SimConfig:
        return SimConfig(
            width=self.width,
            height=self.height,
            fps=self.fps,
            frames=max(self.camera_motion_frames, 2),
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            num_tracks=self.num_tracks,
        )


class SimCameraNode(NodeBase):
    """``SimCameraNode(bus, SimCameraConfig(...))``; call ``shutdown()`` to free the renderer."""

    Config = SimCameraConfig
    name = "sim_camera"

    def setup(self) -> None:
        cfg = self.config
        self._lock = threading.Lock()
        topics = dict(_TYPES) if cfg.publish_ground_truth else {t: _TYPES[t] for t in _CAMERA_TOPICS}
        self.pubs = {
            t: self.bus.publisher(t, tn, QoS.SENSOR if t in _CAMERA_TOPICS else QoS.RESULT)
            for t, tn in topics.items()
        }
        self.pubs[bagio.TF_STATIC_TOPIC] = self.bus.publisher(
            bagio.TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage", QoS.LATCHED
        )
        self.pubs[bagio.EPISODE_TOPIC] = self.bus.publisher(
            bagio.EPISODE_TOPIC, "std_msgs/msg/String", QoS.LATCHED
        )
        self.bus.subscribe(cfg.action_topic, "perception_msgs/msg/ActionChunk", self.on_action, QoS.RESULT)
        self.bus.subscribe(cfg.cmd_vel_topic, "geometry_msgs/msg/Twist", self.on_twist, QoS.RESULT)
        self.world: World | None = None
        self._ignored_dims: set[str] = set()
        self._start(cfg.seed)
        self.bus.timer(1.0 / cfg.fps, self.tick)

    def _start(self, seed: int) -> None:
        if self.world is not None:
            self.world.close()
        self.seed = seed
        self.world = World(self.config.sim_config(), seed)
        self.script = PushScript(self.world.script_rng, self.world) if self.config.scripted else None
        self.chunk: tuple[float, np.ndarray, list[str], np.ndarray] | None = None
        self.frame = 0
        self.tracks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- actions ---------------------------------------------------------------------------------
    def on_action(self, msg: Any) -> None:
        dims = list(msg.dim_names)
        H, D = int(msg.horizon), int(msg.action_dim)
        acts = np.asarray(msg.actions, np.float64)
        if len(dims) != D or acts.size != H * D or H < 1:
            raise ValueError(
                f"ActionChunk with horizon {H}, action_dim {D}, {len(dims)} names, {acts.size} values"
            )
        offsets = np.asarray(msg.step_offsets, np.float64)
        offsets = offsets if offsets.size == H else np.zeros(H)
        with self._lock:
            self.script = None
            self.chunk = (float(self.world.data.time), acts.reshape(H, D), dims, offsets)

    def on_twist(self, msg: Any) -> None:
        with self._lock:
            self.script, self.chunk = None, None
            self.world.set_pusher_velocity((msg.linear.x, msg.linear.y, msg.linear.z), msg.angular.z)

    def _control(self, world: World, t: float) -> None:
        if self.script is not None:
            self.script(world, t)
            return
        if self.chunk is None:
            return
        t0, acts, dims, offsets = self.chunk
        h = int(np.searchsorted(offsets, t - t0, side="right")) - 1
        self._apply(world, dict(zip(dims, acts[max(h, 0)], strict=True)))

    def _apply(self, world: World, a: dict[str, float]) -> None:
        if any(k in a for k in ("x", "y", "z", "yaw")):
            xyz = [a.get(k, world.target[i]) for i, k in enumerate("xyz")]
            world.set_pusher_target(xyz, a.get("yaw"))
        if any(k in a for k in ("vx", "vy", "vz", "vyaw")):
            world.set_pusher_velocity([a.get(k, 0.0) for k in ("vx", "vy", "vz")], a.get("vyaw", 0.0))
        if "grip" in a and (a["grip"] > 0.5) != bool(world.gripped):
            world.grip(a["grip"] > 0.5)
        unknown = set(a) - {"x", "y", "z", "yaw", "vx", "vy", "vz", "vyaw", "grip"} - self._ignored_dims
        if unknown:
            self._ignored_dims |= unknown
            self.log.warning("sim_camera: ignoring unknown action dims %s", sorted(unknown))

    # -- the camera loop -------------------------------------------------------------------------
    def tick(self) -> None:
        start = time.perf_counter()
        with self._lock:
            cfg, world = self.config, self.world
            if cfg.reset_after_s > 0 and world.data.time - world.t0 >= cfg.reset_after_s:
                self._start(self.seed + 1)
                world = self.world
            if self.frame > 0:
                world.step(1.0 / cfg.fps, controller=self._control)
            F = max(cfg.camera_motion_frames, 2)
            world.set_camera(*world.scene.camera_path.at(min(self.frame / (F - 1), 1.0)))
            cap = world.capture()
            stamp = self.bus.now_ns()
            self._publish(stamp, cap)
            self.frame += 1
        self.stats.processed += 1
        self.stats.latencies_ms.append((time.perf_counter() - start) * 1e3)
        self.stats.done_times.append(time.perf_counter())

    def _publish(self, stamp: int, cap: dict[str, np.ndarray]) -> None:
        world, mk = self.world, self.bus.make
        scene = world.scene
        tracks = {}
        if self.config.publish_ground_truth:
            c2w = pose_to_matrix(cap["camera_pose"][None])
            if self.tracks is None:
                self.tracks = sample_track_points(
                    world, self.config.num_tracks, cap["depth"], cap["instance"], c2w[0]
                )
                self._publish_start(stamp)
            pts, normals, owner = self.tracks
            ids = np.array(scene.instance_ids, np.uint16)
            tr2, _, vis = gt.tracks(
                pts,
                owner,
                ids,
                cap["object_poses"][None],
                c2w,
                scene.camera,
                cap["depth"][None],
                cap["instance"][None],
                world.cfg.visibility_tol_m,
                normals,
            )
            tracks = dict(tracks_2d=tr2[:, 0], visible=vis[:, 0], track_object=owner)
        elif self.frame == 0:
            self._publish_start(stamp)
        msgs = bagio.state_messages(
            mk,
            stamp=stamp,
            frame_id=bagio.OPTICAL_FRAME,
            camera=scene.camera,
            rgb=cap["rgb"],
            depth=cap["depth"],
            instance=cap["instance"],
            part=cap["part"],
            camera_pose=cap["camera_pose"],
            object_ids=np.array(scene.instance_ids, np.uint16),
            object_names=scene.instance_names,
            object_poses=cap["object_poses"],
            action=cap["action"],
            self_mask=self._self_mask(cap),
            **tracks,
        )
        for topic, msg in msgs:
            if topic in self.pubs:
                self.pubs[topic].publish(msg)

    def _self_mask(self, cap: dict[str, np.ndarray]) -> np.ndarray:
        """Where the pusher is in this image, from its pose and size (``sim.self_mask``)."""
        scene = self.world.scene
        pose = cap["object_poses"][list(scene.instance_ids).index(scene.pusher_id)]
        c2w = pose_to_matrix(cap["camera_pose"])
        points = hull_points(scene.pusher.shape, scene.pusher.half_size)
        return hull_mask(scene.camera, c2w, pose, points, cap["depth"])

    def _publish_start(self, stamp: int) -> None:
        mk, scene = self.bus.make, self.world.scene
        pts, nrm, owner = self.tracks if self.tracks is not None else (np.zeros((0, 3)),) * 2 + (np.zeros(0),)
        doc = SimpleNamespace(
            seed=self.seed,
            part_names=PART_NAMES,
            part_functions=PART_FUNCTIONS,
            object_ids=scene.instance_ids,
            object_names=scene.instance_names,
            object_families=[o.family for o in scene.objects] + ["pusher"],
            pusher_id=scene.pusher_id,
            frame_id=bagio.OPTICAL_FRAME,
            meta={"visibility_tol_m": self.world.cfg.visibility_tol_m, "live": True},
            track_object=owner,
            track_points=pts,
            track_normals=nrm,
        )
        info = bagio.episode_info(doc, self.world.cfg)
        for topic, msg in bagio.start_messages(mk, stamp, info):
            self.pubs[topic].publish(msg)

    def shutdown(self) -> None:
        super().shutdown()
        with self._lock:
            if self.world is not None:
                self.world.close()
                self.world = None


def main(args=None) -> None:
    """``ros2 run perception_nodes sim_camera_node``."""
    from perception_nodes.runtime.rclpy_bus import spin

    spin(SimCameraNode, args)


__all__ = ["SimCameraConfig", "SimCameraNode"]
