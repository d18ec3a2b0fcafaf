"""The segmentation node over a sim bag through the replay backend: ObjectSegments out, bad input rejected."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from perception_nodes.nodes.segmentation_node import SegmentationNode
from perception_nodes.runtime.bag import BagReader
from perception_nodes.runtime.convert import image_to_numpy
from perception_nodes.runtime.replay import ReplayRunner

SEGMENTS = "/perception/segments"
OVERLAY = "/perception/segments/overlay"


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    from perception_nodes.sim import demo_bag

    return demo_bag(tmp_path_factory.mktemp("sim") / "clip", frames=4, size=(256, 192), seed=3)


def _replay(bag, out, params=None):
    torch.set_num_threads(1)
    runner = ReplayRunner(bag, out)
    SegmentationNode(runner.bus("segmentation", {"component.early_exit_tol": 0.004, **(params or {})}))
    return runner.run()


def _read(path, topic):
    with BagReader(path) as reader:
        return [m for _, _, _, m in reader.messages([topic])]


def test_node_publishes_segments_with_depth_and_3d_centroids(sim_bag, tmp_path):
    stats = _replay(sim_bag, tmp_path / "out")
    assert stats.errors == 0
    msgs = _read(tmp_path / "out", SEGMENTS)
    assert len(msgs) == 4
    overlays = _read(tmp_path / "out", OVERLAY)
    assert len(overlays) == 4 and image_to_numpy(overlays[0]).shape == (192, 256, 3)
    for msg in msgs:
        labels = image_to_numpy(msg.labels)
        assert msg.labels.encoding == "mono16" and labels.shape == (192, 256)
        ids = np.asarray(msg.ids)
        assert sorted(ids.tolist()) == sorted(int(v) for v in np.unique(labels) if v)
        M = len(ids)
        assert len(msg.bboxes) == 4 * M and len(msg.areas) == M and len(msg.scores) == M
        assert int(np.sum(msg.areas)) == int((labels > 0).sum())
        assert msg.model_id.startswith("eisen_small@")
    # depth follows its image in sim bags: every frame (the first one waits for it) gets depth and 3D
    # centroids
    with_depth = [
        m for m in msgs if len(m.mean_depth) == len(m.ids) and len(m.centroids_3d) == 3 * len(m.ids)
    ]
    assert len(with_depth) == 4
    z = np.asarray(with_depth[-1].centroids_3d).reshape(-1, 3)[:, 2]
    assert np.all((z > 0.1) & (z < 5.0))
    # the sim bag's /robot/self_mask (the pusher from its pose) follows the image too: one segment, id 65535
    masks = [image_to_numpy(m) > 0 for m in _read(sim_bag, "/robot/self_mask")]
    assert len(masks) == 4 and all(m.sum() > 20 for m in masks)
    for msg, mask in zip(msgs, masks, strict=True):
        robot = image_to_numpy(msg.labels) == 65535
        assert (robot == mask).all() and 65535 in list(msg.ids)


def test_node_without_the_robot_mask_publishes_eisen_segments_alone(sim_bag, tmp_path):
    stats = _replay(sim_bag, tmp_path / "out", {"self_mask_topic": ""})
    assert stats.errors == 0
    msgs = _read(tmp_path / "out", SEGMENTS)
    assert len(msgs) == 4 and all(65535 not in list(m.ids) for m in msgs)
    assert all(len(m.mean_depth) == len(m.ids) for m in msgs)  # depth still waited for


def _depth_image_bag(path):
    """A bag whose colour topic carries 16UC1 (depth) images: not a colour image."""
    import functools

    from perception_nodes.runtime.bag import BagWriter
    from perception_nodes.runtime.convert import numpy_to_image
    from perception_nodes.runtime.typestore import make, typestore

    mk = functools.partial(make, typestore("jazzy"))
    with BagWriter(path) as writer:
        for i in range(2):
            stamp = 1_700_000_000_000_000_000 + i * 10**8
            header = mk(
                "std_msgs/msg/Header",
                stamp=mk("builtin_interfaces/msg/Time", sec=stamp // 10**9, nanosec=stamp % 10**9),
                frame_id="cam",
            )
            img = numpy_to_image(mk, np.full((48, 64), 1000, np.uint16), "16UC1", header)
            writer.write("/camera/color/image_raw", stamp, img, "sensor_msgs/msg/Image")


def test_unsupported_encoding_is_rejected_with_a_log_line(tmp_path, caplog):
    bag = tmp_path / "cam"
    _depth_image_bag(bag)
    stats = _replay(bag, tmp_path / "out", {"depth_topic": ""})
    assert stats.errors == 0
    assert _read(tmp_path / "out", SEGMENTS) == []
    assert "rejected image" in caplog.text
