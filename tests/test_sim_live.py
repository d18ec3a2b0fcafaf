"""The live sim camera node on a minimal in-memory Bus: camera + ground-truth topics, and pusher actions."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from perception_nodes.runtime.bus import Bus, Publisher, QoS, stamp_ns
from perception_nodes.runtime.convert import camera_from_info, depth_to_metres, image_to_numpy
from perception_nodes.runtime.typestore import make, typestore
from perception_nodes.sim import bagio


class _Pub(Publisher):
    def __init__(self, bus, topic, typename):
        self.bus, self.topic, self.typename = bus, topic, typename

    def publish(self, msg):
        self.bus.published[self.topic].append(msg)


class FakeBus(Bus):
    """Timers fire only when the test calls ``tick()``; time advances by the timer period."""

    def __init__(self):
        super().__init__("fake")
        self.store = typestore()
        self.published = collections.defaultdict(list)
        self.subs = collections.defaultdict(list)
        self.timers = []
        self.time_ns = 1_000_000_000

    def publisher(self, topic, typename, qos=QoS.RESULT):
        return _Pub(self, topic, typename)

    def subscribe(self, topic, typename, callback, qos=QoS.SENSOR, optional=False):
        self.subs[topic].append(callback)

    def timer(self, period_s, callback):
        self.timers.append((period_s, callback))

    def now_ns(self):
        return self.time_ns

    def make(self, typename, **fields):
        return make(self.store, typename, **fields)

    def get_parameter_overrides(self, names):
        return {n: d for n, (d, _) in names.items()}

    def tick(self, n=1):
        period, cb = next((p, c) for p, c in self.timers if p < 0.5)  # the camera timer, not diagnostics
        for _ in range(n):
            self.time_ns += int(period * 1e9)
            cb()

    def send(self, topic, msg):
        for cb in self.subs[topic]:
            cb(msg)


@pytest.fixture()
def node():
    from perception_nodes.sim.live import SimCameraConfig, SimCameraNode

    bus = FakeBus()
    n = SimCameraNode(bus, SimCameraConfig(seed=3, width=80, height=60, num_tracks=32, scripted=False))
    yield bus, n
    n.shutdown()


def _pusher_xyz(bus):
    poses = bus.published[bagio.POSES_TOPIC][-1]
    names = list(poses.names)
    return np.asarray(poses.poses).reshape(-1, 7)[names.index("pusher"), :3]


def test_publishes_camera_and_ground_truth_every_tick(node):
    bus, _ = node
    bus.tick(3)
    for topic in (
        bagio.IMAGE_TOPIC,
        bagio.INFO_TOPIC,
        bagio.DEPTH_TOPIC,
        bagio.SELF_MASK_TOPIC,
        bagio.TF_TOPIC,
        bagio.INSTANCES_TOPIC,
        bagio.PARTS_TOPIC,
        bagio.POSES_TOPIC,
        bagio.TRACKS_TOPIC,
    ):
        assert len(bus.published[topic]) == 3, topic
    assert len(bus.published[bagio.TF_STATIC_TOPIC]) == len(bus.published[bagio.EPISODE_TOPIC]) == 1
    img, info = bus.published[bagio.IMAGE_TOPIC][-1], bus.published[bagio.INFO_TOPIC][-1]
    assert img.encoding == "rgb8" and image_to_numpy(img).shape == (60, 80, 3)
    camera_from_info(info).check_image(60, 80)
    depth = depth_to_metres(bus.published[bagio.DEPTH_TOPIC][-1])
    assert 0.2 < np.median(depth[depth > 0]) < 3.0
    stamps = [stamp_ns(m) for m in bus.published[bagio.IMAGE_TOPIC]]
    assert np.all(np.diff(stamps) > 0)
    tracks = bus.published[bagio.TRACKS_TOPIC][0]
    assert tracks.num_points == 32 and np.asarray(tracks.visible).sum() > 0
    # the robot's own mask (from the pusher's pose) overlaps the pusher's true pixels
    mask = image_to_numpy(bus.published[bagio.SELF_MASK_TOPIC][-1]) > 0
    pusher = image_to_numpy(bus.published[bagio.INSTANCES_TOPIC][-1]) == node[1].world.scene.pusher_id
    assert pusher.sum() >= 4, "the pusher should be in view"
    assert (mask & pusher).sum() >= 0.5 * pusher.sum()


def test_action_chunk_moves_the_pusher_to_its_target(node):
    bus, _ = node
    bus.tick()
    start = _pusher_xyz(bus)
    goal = np.array([start[0] + 0.05, start[1] - 0.03, 0.12])
    chunk = bus.make(
        "perception_msgs/msg/ActionChunk",
        header=bus.header(bus.now_ns(), "world"),
        horizon=1,
        action_dim=3,
        dim_names=["x", "y", "z"],
        actions=goal.astype(np.float32),
        step_offsets=np.zeros(1, np.float32),
    )
    bus.send("/sim/pusher/action", chunk)
    bus.tick(8)
    assert np.linalg.norm(_pusher_xyz(bus) - goal) < 0.01
    cmd = bus.published[bagio.COMMAND_TOPIC][-1]
    assert np.allclose(np.asarray(cmd.actions)[:3], goal, atol=1e-6)


def test_twist_moves_the_pusher_at_the_commanded_velocity(node):
    bus, _ = node
    bus.tick()
    start = _pusher_xyz(bus)
    twist = bus.make(
        "geometry_msgs/msg/Twist",
        linear=bus.make("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.1),
        angular=bus.make("geometry_msgs/msg/Vector3", x=0.0, y=0.0, z=0.0),
    )
    bus.send("/sim/pusher/cmd_vel", twist)
    bus.tick(6)  # 0.4 s at 15 Hz
    rise = _pusher_xyz(bus)[2] - start[2]
    assert 0.025 < rise < 0.045


def test_bad_live_config_is_rejected():
    from perception_nodes.sim.live import SimCameraConfig

    with pytest.raises(ValueError, match="image size"):
        SimCameraConfig(width=0)
    with pytest.raises(ValueError, match="absolute topic"):
        SimCameraConfig(action_topic="relative")
