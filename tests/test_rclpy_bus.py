"""RclpyBus against a real ROS 2 (skipped where rclpy is not importable, e.g. CI without ROS).

Run on a machine with ROS 2 sourced:  ``python -m pytest tests/test_rclpy_bus.py``.
"""

from __future__ import annotations

import array
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from perception_nodes.runtime.bus import QoS, stamp_ns


def test_import_does_not_need_ros():
    code = "import sys, perception_nodes.runtime.rclpy_bus; assert 'rclpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture
def ros():
    """(context, node, bus) on a private rclpy context, torn down after the test."""
    rclpy = pytest.importorskip("rclpy")
    from perception_nodes.runtime.rclpy_bus import RclpyBus

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(os.environ.get("ROS_DOMAIN_ID", "0")))
    node = rclpy.create_node("test_rclpy_bus", context=context)
    bus = RclpyBus(node)
    try:
        yield context, node, bus
    finally:
        bus.shutdown()
        rclpy.try_shutdown(context=context)


def _spin_until(context, node, done, timeout_s=5.0):
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout_s
    try:
        while not done() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.remove_node(node)
        executor.shutdown()
    return done()


def test_make_image_from_numpy(ros):
    _, _, bus = ros
    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    msg = bus.make(
        "sensor_msgs/msg/Image",
        header=bus.header(1_700_000_000_123_456_789, "camera_color_optical_frame"),
        height=480,
        width=np.int64(640),  # numpy scalars are accepted for scalar fields
        encoding="rgb8",
        step=640 * 3,
        data=rgb.reshape(-1),
    )
    assert type(msg).__module__.startswith("sensor_msgs.msg")
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(480, 640, 3), rgb)
    assert stamp_ns(msg) == 1_700_000_000_123_456_789
    assert msg.header.frame_id == "camera_color_optical_frame"
    assert msg.width == 640 and isinstance(msg.width, int)


def test_make_sequences_arrays_and_scalars(ros):
    _, _, bus = ros
    info = bus.make(
        "sensor_msgs/msg/CameraInfo",
        k=np.eye(3),  # double[9]: flattened numpy float64
        d=np.array([0.1, -0.2, 0, 0, 0], dtype=np.float32),  # sequence<double>
        width=640,
    )
    assert isinstance(info.k, np.ndarray) and info.k.dtype == np.float64 and info.k.shape == (9,)
    assert info.k[0] == 1.0 and info.k[1] == 0.0
    assert isinstance(info.d, array.array) and info.d.typecode == "d" and len(info.d) == 5
    assert info.d[0] == pytest.approx(0.1)
    # int for a float64 field is coerced (rosbags accepts it too), nested messages pass through
    pose = bus.make("geometry_msgs/msg/Pose", position=bus.make("geometry_msgs/msg/Point", x=1, y=2.5))
    assert pose.position.x == 1.0 and isinstance(pose.position.x, float)
    # every numeric sequence typecode round-trips
    arr = bus.make("std_msgs/msg/Float32MultiArray", data=np.arange(6, dtype=np.float64).reshape(2, 3))
    assert arr.data.typecode == "f" and list(arr.data) == [0, 1, 2, 3, 4, 5]
    ints = bus.make("std_msgs/msg/Int64MultiArray", data=[1, 2, 3])
    assert ints.data.typecode == "q" and list(ints.data) == [1, 2, 3]
    # message sequences are lists of built messages
    diag = bus.make(
        "diagnostic_msgs/msg/DiagnosticStatus",
        name="n",
        values=[bus.make("diagnostic_msgs/msg/KeyValue", key="a", value="1")],
    )
    assert diag.values[0].key == "a"


def test_make_converts_scalars_to_exact_rclpy_types(ros):
    """rclpy skips field checks by default and its C converters misread e.g. an int in a byte field."""
    from rclpy.serialization import deserialize_message, serialize_message

    _, _, bus = ros

    def wire(msg):
        return deserialize_message(serialize_message(msg), type(msg))

    status = bus.make("diagnostic_msgs/msg/DiagnosticStatus", level=1, name="n")  # byte field
    assert status.level == b"\x01" and wire(status).level == b"\x01"
    point = wire(bus.make("geometry_msgs/msg/Point", x=1, y=np.float32(0.5), z=True))
    assert (point.x, point.y, point.z) == (1.0, 0.5, 1.0)
    roi = wire(bus.make("sensor_msgs/msg/RegionOfInterest", x_offset=np.uint32(3), do_rectify=1))
    assert roi.x_offset == 3 and roi.do_rectify is True
    value = bus.make(
        "rcl_interfaces/msg/ParameterValue",
        byte_array_value=np.array([1, 2, 255], np.uint8),
        bool_array_value=np.array([1, 0]),
        string_array_value=np.array(["a", "b"]),
    )
    back = wire(value)
    assert back.byte_array_value == [b"\x01", b"\x02", b"\xff"]
    assert back.bool_array_value == [True, False] and back.string_array_value == ["a", "b"]
    raw = bus.make("rcl_interfaces/msg/ParameterValue", byte_array_value=b"xy")
    assert wire(raw).byte_array_value == [b"x", b"y"]


def test_make_rejects_unknown_fields_and_lossy_arrays(ros):
    _, _, bus = ros
    with pytest.raises(TypeError, match="bogus"):
        bus.make("sensor_msgs/msg/Image", height=1, bogus=2)
    with pytest.raises(TypeError, match="float64"):
        bus.make("sensor_msgs/msg/Image", data=np.ones(4))
    with pytest.raises(ValueError, match="exactly 9"):
        bus.make("sensor_msgs/msg/CameraInfo", k=np.eye(2))
    with pytest.raises(TypeError, match="float64"):
        bus.make("std_msgs/msg/Int32MultiArray", data=[0.5, 1.5])
    with pytest.raises(TypeError, match="no_such_msgs"):
        bus.make("no_such_msgs/msg/Nothing")


def test_make_custom_message(ros):
    _, _, bus = ros
    pytest.importorskip("perception_msgs.msg")
    from perception_nodes.runtime.typestore import custom_types

    names = sorted(custom_types())
    assert names, "no perception_msgs types found"
    for typename in names:
        msg = bus.make(typename)
        assert type(msg).__name__ == typename.rsplit("/", 1)[1]


def test_parameters(ros):
    _, node, bus = ros

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        rate_hz: float = dataclasses.field(default=30.0, metadata={"help": "processing rate"})
        size: tuple = dataclasses.field(default=(640, 480), metadata={"help": "width, height"})
        topic: str = dataclasses.field(default="/camera/color/image_raw", metadata={"help": "input"})

    cfg = bus.declare_config(Cfg())
    assert cfg == Cfg()
    assert node.describe_parameter("rate_hz").description == "processing rate"
    assert node.describe_parameter("size").description == "width, height"
    assert node.get_parameter("size").value == [640, 480]
    values = bus.get_parameter_overrides({"flag": (True, "a flag")})
    assert values == {"flag": True}

    # overrides given on the command line win, and come back as the dataclass's types
    import rclpy

    from perception_nodes.runtime.rclpy_bus import RclpyBus

    args = ["--ros-args", "-p", "rate_hz:=10.0", "-p", "size:=[320, 240]", "-p", "topic:=/other"]
    other = rclpy.create_node("test_rclpy_bus_overrides", context=node.context, cli_args=args)
    try:
        assert RclpyBus(other).declare_config(Cfg()) == Cfg(rate_hz=10.0, size=(320, 240), topic="/other")
    finally:
        other.destroy_node()


def test_clock_timer_and_logger(ros):
    context, node, bus = ros
    assert abs(bus.now_ns() - time.time_ns()) < 5_000_000_000
    ticks = []
    bus.timer(0.01, lambda: ticks.append(1))
    assert _spin_until(context, node, lambda: len(ticks) >= 3)
    # the logging.Logger adapter writes to the node's ROS logger (and so to /rosout)
    logs = []
    bus.subscribe("/rosout", "rcl_interfaces/msg/Log", logs.append, QoS.RESULT)
    _spin_until(context, node, lambda: node.count_publishers("/rosout") > 0, timeout_s=2.0)
    assert bus.logger.isEnabledFor(20) and not bus.logger.isEnabledFor(10)
    bus.logger.info("hello %s %d", "world", 3)
    bus.logger.debug("not shown at info level %s", "x")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        bus.logger.exception("caught %s", "it")
    assert _spin_until(context, node, lambda: len([m for m in logs if m.name == node.get_name()]) >= 2)
    mine = [m for m in logs if m.name == node.get_name()]
    assert [m.level for m in mine] == [20, 40]
    assert mine[0].msg == "hello world 3"
    assert mine[1].msg.startswith("caught it\nTraceback") and "RuntimeError: boom" in mine[1].msg


@pytest.mark.parametrize("qos", [QoS.SENSOR, QoS.RESULT, QoS.LATCHED])
def test_pub_sub_round_trip(ros, qos):
    context, node, bus = ros
    topic = f"/test_rclpy_bus/{qos.value}"
    pub = bus.publisher(topic, "sensor_msgs/msg/Image", qos)
    assert pub.topic == topic and pub.typename == "sensor_msgs/msg/Image"
    received = []
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)

    def image(i):
        return bus.make(
            "sensor_msgs/msg/Image",
            header=bus.header(1_000_000_000 * (i + 1) + 7, "cam"),
            height=4,
            width=5,
            encoding="rgb8",
            step=15,
            data=rgb.reshape(-1),
        )

    if qos is QoS.LATCHED:  # transient local: a late subscriber still gets the last message
        pub.publish(image(0))
        bus.subscribe(topic, "sensor_msgs/msg/Image", received.append, qos, optional=True)
        assert _spin_until(context, node, lambda: received)
    else:
        bus.subscribe(topic, "sensor_msgs/msg/Image", received.append, qos)
        _spin_until(
            context, node, lambda: node.count_subscribers(topic) > 0 and node.count_publishers(topic) > 0
        )
        for i in range(3):  # best effort may lose one in a burst; reliable must not
            pub.publish(image(i))
            _spin_until(context, node, lambda n=i: len(received) > n, timeout_s=2.0)
        assert len(received) == 3 or (qos is QoS.SENSOR and received)
    msg = received[-1]
    assert stamp_ns(msg) % 1_000_000_000 == 7
    assert bytes(msg.data) == rgb.tobytes() and msg.encoding == "rgb8"


SPIN_SCRIPT = textwrap.dedent(
    """
    import sys
    from perception_nodes.runtime.rclpy_bus import spin

    class Node:
        name = "spin_probe"

        def __init__(self, bus):
            self.bus = bus
            bus.timer(0.05, self.tick)
            self.ticked = False

        def tick(self):
            if not self.ticked:
                print("ticking", self.bus.name, flush=True)
                self.ticked = True

        def shutdown(self):
            print("shutdown called", flush=True)

    spin(Node, sys.argv)
    print("exited cleanly", flush=True)
    """
)


def test_spin_runs_and_stops_cleanly_on_sigint(ros):
    proc = subprocess.Popen(
        [sys.executable, "-c", SPIN_SCRIPT, "--ros-args", "-r", "__node:=probe"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ticking probe", line
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "shutdown called" in out and "exited cleanly" in out, out
