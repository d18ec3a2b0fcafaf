"""The replay backend end to end through the CLI: real bags in, real bags out, and every bad input."""

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Writer

from perception_nodes.cli import main
from perception_nodes.nodes.base import NodeBase
from perception_nodes.runtime.bag import BagReader
from perception_nodes.runtime.convert import image_to_numpy, numpy_to_image
from perception_nodes.runtime.replay import ReplayError, ReplayRunner
from perception_nodes.runtime.testing import IMAGE_TOPIC, INFO_TOPIC, synthetic_frame, write_camera_bag
from perception_nodes.runtime.typestore import make, typestore

OUT_TOPIC = "/perception/identity/image"


@pytest.fixture(scope="module")
def big_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "cam100"
    stamps = write_camera_bag(path, 100, 640, 480)
    return path, stamps


def _read(path, topic):
    with BagReader(path) as reader:
        return [(t, m) for _, _, t, m in reader.messages([topic])]


def test_identity_replay_keeps_frames_stamps_counts(big_bag, tmp_path, capsys):
    bag, stamps = big_bag
    out = tmp_path / "out"
    assert main(["replay", str(bag), "--out", str(out), "--quiet"]) == 0
    images = _read(out, OUT_TOPIC)
    assert len(images) == 100 == len(_read(out, IMAGE_TOPIC)) == len(_read(out, INFO_TOPIC))
    for i, (log_time, msg) in enumerate(images):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert stamp == log_time == stamps[i]
        assert msg.header.frame_id == "camera_color_optical_frame"
        np.testing.assert_array_equal(image_to_numpy(msg), synthetic_frame(i, 640, 480))
    assert "wrote" in capsys.readouterr().out


def test_output_reads_with_plain_anyreader_and_embeds_custom_types(tmp_path):
    bag = tmp_path / "in"
    write_camera_bag(bag, 3, 32, 24)
    out = tmp_path / "out"

    class Segmenter(NodeBase):
        """Publishes a custom message so the output bag must carry its definition."""

        Config = type("Cfg", (), {"__dataclass_fields__": {}})  # no parameters

        def setup(self):
            self.pub = self.bus.publisher("/perception/segments", "perception_msgs/msg/ObjectSegments")
            self.trigger(IMAGE_TOPIC, "sensor_msgs/msg/Image", self.on_image)

        def on_image(self, msg):
            self.pub.publish(
                self.bus.make(
                    "perception_msgs/msg/ObjectSegments",
                    header=msg.header,
                    ids=np.array([1, 2], np.uint16),
                    model_id="test",
                )
            )

    import dataclasses

    Segmenter.Config = dataclasses.make_dataclass("Cfg", [])
    runner = ReplayRunner(bag, out)
    Segmenter(runner.bus("seg"))
    runner.run()
    with AnyReader([out]) as reader:  # no registration of our types: definitions come from the bag
        conns = [c for c in reader.connections if c.topic == "/perception/segments"]
        msgs = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]
    assert len(msgs) == 3 and msgs[0].ids.tolist() == [1, 2] and msgs[0].model_id == "test"


@pytest.mark.parametrize("storage,distro", [("sqlite3", "humble"), ("mcap", "humble"), ("sqlite3", "jazzy")])
def test_reads_sqlite3_and_humble_bags(tmp_path, storage, distro):
    bag = tmp_path / "in"
    stamps = write_camera_bag(bag, 5, 64, 48, storage=storage, distro=distro)
    out = tmp_path / "out"
    assert main(["replay", str(bag), "--out", str(out), "--distro", distro, "--quiet"]) == 0
    assert [t for t, _ in _read(out, OUT_TOPIC)] == stamps


def test_replay_is_deterministic(tmp_path):
    bag = tmp_path / "in"
    write_camera_bag(bag, 10, 64, 48)
    outs = []
    for name in ("a", "b"):
        assert main(["replay", str(bag), "--out", str(tmp_path / name), "--quiet"]) == 0
        outs.append([(t, bytes(m.data)) for t, m in _read(tmp_path / name, OUT_TOPIC)])
    assert outs[0] == outs[1]


def _assert_clean_failure(code, capsys, out: Path, pattern: str):
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and pattern in err[0], err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if "partial" in p.name]


def test_corrupt_bag(tmp_path, capsys):
    bag = tmp_path / "corrupt.mcap"
    bag.write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    _assert_clean_failure(
        main(["replay", str(bag), "--out", str(out), "--quiet"]), capsys, out, "cannot open bag"
    )


def test_truncated_bag(tmp_path, capsys):
    bag = tmp_path / "in"
    write_camera_bag(bag, 20, 160, 120)
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    out = tmp_path / "out"
    code = main(["replay", str(bag), "--out", str(out), "--quiet"])
    _assert_clean_failure(code, capsys, out, "bag")


def test_missing_topic(tmp_path, capsys):
    bag = tmp_path / "in"
    store = typestore()
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection("/other", "std_msgs/msg/String", typestore=store)
        writer.write(
            conn, 1, store.serialize_cdr(make(store, "std_msgs/msg/String", data="x"), "std_msgs/msg/String")
        )
    out = tmp_path / "out"
    code = main(["replay", str(bag), "--out", str(out), "--quiet"])
    _assert_clean_failure(code, capsys, out, "has no topic /camera/color/image_raw")


def test_unknown_encoding(tmp_path, capsys):
    bag = tmp_path / "in"
    store = typestore()
    mk = functools.partial(make, store)
    with Writer(bag, version=9) as writer:
        conn = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        msg = mk(
            "sensor_msgs/msg/Image", height=2, width=2, encoding="yuv422", step=4, data=np.zeros(8, np.uint8)
        )
        writer.write(conn, 5, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    out = tmp_path / "out"
    code = main(["replay", str(bag), "--out", str(out), "--quiet"])
    _assert_clean_failure(code, capsys, out, "unsupported image encoding 'yuv422'")


def test_camera_info_size_mismatch(tmp_path, capsys):
    bag = tmp_path / "in"
    write_camera_bag(bag, 4, 64, 48, info_size=(640, 480))
    out = tmp_path / "out"
    code = main(["replay", str(bag), "--out", str(out), "--quiet"])
    _assert_clean_failure(code, capsys, out, "camera_info is 640x480 but the image is 64x48")


def test_keep_going_survives_bad_frames(tmp_path):
    bag = tmp_path / "in"
    write_camera_bag(bag, 40, 64, 48, info_size=(640, 480))
    out = tmp_path / "out"
    assert main(["replay", str(bag), "--out", str(out), "--keep-going", "--quiet"]) == 0
    assert _read(out, OUT_TOPIC) == [] and len(_read(out, IMAGE_TOPIC)) == 40
    ((_, diag),) = _read(out, "/diagnostics")  # one tick, 1 s of bag time in: frames 0..29 have failed
    values = {kv.key: kv.value for kv in diag.status[0].values}
    assert values["errors"] == "30" and values["processed"] == "0" and "640x480" in values["last_error"]
    assert diag.status[0].level == 1


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    bag = tmp_path / "in"
    write_camera_bag(bag, 2, 32, 24)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["replay", str(bag), "--out", str(out), "--quiet"]) != 0
    assert "already exists" in capsys.readouterr().err


def test_pipeline_chaining_and_timers(tmp_path):
    """Messages published in-process reach other nodes at the same bag time; timers fire in bag time."""
    import dataclasses

    bag = tmp_path / "in"
    stamps = write_camera_bag(bag, 31, 32, 24, rate_hz=30.0)
    seen: list[int] = []

    class Consumer(NodeBase):
        Config = dataclasses.make_dataclass("C", [])

        def setup(self):
            self.trigger(OUT_TOPIC, "sensor_msgs/msg/Image", lambda m: seen.append(self.bus.now_ns()))

    from perception_nodes.nodes.identity import IdentityNode

    runner = ReplayRunner(bag, tmp_path / "out")
    IdentityNode(runner.bus("identity"))
    Consumer(runner.bus("consumer"))
    runner.run()
    assert seen == stamps
    diag_times = [t for t, _ in _read(tmp_path / "out", "/diagnostics")]
    assert stamps[-1] == stamps[0] + 10**9
    assert diag_times == [stamps[0] + 10**9] * 2  # one 1 Hz diagnostics tick per node, in bag time


def test_strict_runner_raises_replay_error(tmp_path):
    bag = tmp_path / "in"
    write_camera_bag(bag, 2, 32, 24, info_size=(64, 48))
    from perception_nodes.nodes.identity import IdentityNode

    runner = ReplayRunner(bag, tmp_path / "out")
    IdentityNode(runner.bus("identity"))
    with pytest.raises(ReplayError, match="node identity failed on /camera/color/image_raw @"):
        runner.run()
    assert not (tmp_path / "out").exists()


def test_unknown_parameter_is_rejected(tmp_path):
    bag = tmp_path / "in"
    write_camera_bag(bag, 1, 32, 24)
    from perception_nodes.nodes.identity import IdentityNode

    runner = ReplayRunner(bag, None)
    with pytest.raises(ValueError, match="unknown parameter"):
        IdentityNode(runner.bus("identity", {"input_topik": "/x"}))
    with pytest.raises(ValueError, match="absolute topic"):
        IdentityNode(runner.bus("identity", {"output_topic": "relative"}))


def test_numpy_to_image_on_replay_bus_matches_typestore():
    store = typestore()
    img = numpy_to_image(functools.partial(make, store), np.zeros((2, 3), np.uint16), "mono16")
    assert img.step == 6 and img.data.size == 12
