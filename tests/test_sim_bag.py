"""Sim bags: written with BagWriter, read back identically by sim.dataset, by the replay backend and by
rosbags' AnyReader; CameraInfo reprojects the 3D track points onto the PointTracks pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from perception_nodes.runtime.bag import BagError, BagReader
from perception_nodes.runtime.convert import camera_from_info, depth_to_metres, image_to_numpy
from perception_nodes.sim import SimConfig, bagio
from perception_nodes.sim.dataset import read_episodes

CFG = SimConfig(width=96, height=72, frames=5, num_tracks=96)


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    from perception_nodes.sim.world import generate_episode

    ep = generate_episode(CFG, 11)
    path = tmp_path_factory.mktemp("simbag") / "ep"
    bagio.write_episode_bag(ep, path, CFG)
    return ep, path


def test_dataset_reads_back_identical_arrays(sim_bag):
    ep, path = sim_bag
    (back,) = list(read_episodes(path))
    for f in dataclasses.fields(ep):
        a, b = getattr(ep, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, f.name
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f.name
        else:
            assert a == b, f.name
    # a folder of bags works too
    assert len(list(read_episodes(path.parent))) == 1


def test_anyreader_sees_every_topic_with_standard_types(sim_bag):
    _, path = sim_bag
    expected = {
        bagio.IMAGE_TOPIC: "sensor_msgs/msg/Image",
        bagio.INFO_TOPIC: "sensor_msgs/msg/CameraInfo",
        bagio.DEPTH_TOPIC: "sensor_msgs/msg/Image",
        bagio.SELF_MASK_TOPIC: "sensor_msgs/msg/Image",
        bagio.TF_TOPIC: "tf2_msgs/msg/TFMessage",
        bagio.TF_STATIC_TOPIC: "tf2_msgs/msg/TFMessage",
        bagio.INSTANCES_TOPIC: "sensor_msgs/msg/Image",
        bagio.PARTS_TOPIC: "sensor_msgs/msg/Image",
        bagio.POSES_TOPIC: "perception_msgs/msg/ObjectPoses",
        bagio.TRACKS_TOPIC: "perception_msgs/msg/PointTracks",
        bagio.COMMAND_TOPIC: "perception_msgs/msg/ActionChunk",
        bagio.EPISODE_TOPIC: "std_msgs/msg/String",
    }
    with AnyReader([path]) as reader:  # no typestore given: our types come from the bag itself
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics == expected
        counts = {t: 0 for t in expected}
        encodings = {}
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            counts[conn.topic] += 1
            if conn.msgtype == "sensor_msgs/msg/Image":
                encodings[conn.topic] = msg.encoding
    assert counts[bagio.TF_STATIC_TOPIC] == counts[bagio.EPISODE_TOPIC] == 1
    assert all(
        counts[t] == CFG.frames for t in expected if t not in (bagio.TF_STATIC_TOPIC, bagio.EPISODE_TOPIC)
    )
    assert encodings == {
        bagio.IMAGE_TOPIC: "rgb8",
        bagio.DEPTH_TOPIC: "32FC1",
        bagio.SELF_MASK_TOPIC: "mono8",
        bagio.INSTANCES_TOPIC: "mono16",
        bagio.PARTS_TOPIC: "mono16",
    }


def test_camera_info_reprojects_3d_tracks_onto_the_published_tracks(sim_bag):
    ep, path = sim_bag
    infos, tracks = [], []
    with BagReader(path) as reader:
        for topic, _, _, msg in reader.messages([bagio.INFO_TOPIC, bagio.TRACKS_TOPIC]):
            (infos if topic == bagio.INFO_TOPIC else tracks).append(msg)
    assert len(infos) == len(tracks) == CFG.frames
    for t, (info, tr) in enumerate(zip(infos, tracks, strict=True)):
        cam = camera_from_info(info)
        assert tr.num_steps == 1 and tr.num_points == CFG.num_tracks
        pts = np.asarray(tr.points).reshape(-1, 2)
        proj = cam.project(ep.tracks_3d[:, t].astype(np.float64))
        assert np.nanmax(np.abs(proj - pts)) < 0.5
        assert np.array_equal(np.asarray(tr.visible).astype(bool), ep.visible[:, t])
        assert np.array_equal(np.asarray(tr.segment_ids), ep.track_object)


def test_replay_backend_delivers_the_sim_topics(sim_bag):
    from perception_nodes.runtime.replay import ReplayRunner

    ep, path = sim_bag
    got: dict[str, list] = {bagio.IMAGE_TOPIC: [], bagio.DEPTH_TOPIC: [], bagio.INSTANCES_TOPIC: []}
    runner = ReplayRunner(path, None)
    bus = runner.bus("probe")
    bus.subscribe(bagio.IMAGE_TOPIC, "sensor_msgs/msg/Image", lambda m: got[bagio.IMAGE_TOPIC].append(m))
    bus.subscribe(bagio.DEPTH_TOPIC, "sensor_msgs/msg/Image", lambda m: got[bagio.DEPTH_TOPIC].append(m))
    bus.subscribe(
        bagio.INSTANCES_TOPIC, "sensor_msgs/msg/Image", lambda m: got[bagio.INSTANCES_TOPIC].append(m)
    )
    stats = runner.run()
    assert stats.input_messages == 3 * CFG.frames
    assert np.array_equal(image_to_numpy(got[bagio.IMAGE_TOPIC][-1]), ep.rgb[-1])
    assert np.array_equal(depth_to_metres(got[bagio.DEPTH_TOPIC][2]), ep.depth[2])
    assert np.array_equal(image_to_numpy(got[bagio.INSTANCES_TOPIC][0]), ep.instance[0])


def test_reading_a_bag_that_is_not_a_sim_bag_names_it(tmp_path):
    from perception_nodes.runtime.testing import write_camera_bag

    write_camera_bag(tmp_path / "cam", frames=2, width=32, height=24)
    with pytest.raises(BagError, match="has no topic"):
        list(read_episodes(tmp_path / "cam"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no bags"):
        list(read_episodes(tmp_path / "empty"))
    with pytest.raises(BagError, match="not found"):
        list(read_episodes(tmp_path / "nope"))
