"""Tracker on short held-out sim clips (MuJoCo): TAP-Vid delta_avg above a stated floor."""

from __future__ import annotations

import os

import numpy as np
import pytest

from perception_nodes.tracking.cli import evaluate_clip
from perception_nodes.tracking.config import TrackerConfig

# Measured with the defaults on these clips (16 frames, 320x240): 0.901, 0.854, 0.949 (mean 0.90); the
# benchmark over 8 held-out 24-frame episodes gives 0.90. The floor leaves room for platform differences.
DELTA_AVG_FLOOR = 0.85


@pytest.fixture(scope="module")
def clips():
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    world = pytest.importorskip("perception_nodes.sim.world")
    from perception_nodes.sim.config import SimConfig

    return [world.generate_episode(SimConfig(frames=16), seed) for seed in (910000, 910001, 910002)]


def test_delta_avg_on_sim_clips_above_floor(clips):
    rows = [evaluate_clip(clip, TrackerConfig())[0] for clip in clips]
    mean = float(np.mean([r["delta_avg"] for r in rows]))
    assert mean > DELTA_AVG_FLOOR, [round(r["delta_avg"], 3) for r in rows]
    assert min(r["occlusion_accuracy"] for r in rows) > 0.75
