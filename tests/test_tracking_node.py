"""Tracking and forecast nodes over a sim bag through the replay backend."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from perception_nodes.forecasting.viz import draw_forecast, draw_tracks
from perception_nodes.nodes.forecast_node import ForecastNode, forecast_from_message
from perception_nodes.nodes.tracking_node import TrackingNode, tracks_from_message
from perception_nodes.runtime.bag import BagReader
from perception_nodes.runtime.replay import ReplayRunner

TRACKS, FORECAST = "/perception/tracks", "/perception/forecast"


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory):
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    from perception_nodes.sim import demo_bag

    return demo_bag(tmp_path_factory.mktemp("sim") / "clip", frames=6, size=(320, 240), seed=5)


def _read(path, topic):
    with BagReader(path) as reader:
        return [m for _, _, _, m in reader.messages([topic])]


def test_tracking_and_forecast_nodes_publish_consistent_messages(sim_bag, tmp_path):
    torch.set_num_threads(1)
    runner = ReplayRunner(sim_bag, tmp_path / "out")
    TrackingNode(runner.bus("tracking", {"tracker.num_points": 64, "tracker.history": 6}))
    ForecastNode(
        runner.bus(
            "forecast",
            {
                "forecasting.sampling.num_samples": 2,
                "forecasting.sampling.horizon": 5,
                "forecasting.sampling.history": 4,
                "forecasting.max_points": 30,
            },
        )
    )
    stats = runner.run()
    assert stats.errors == 0
    tracks = _read(tmp_path / "out", TRACKS)
    forecasts = _read(tmp_path / "out", FORECAST)
    assert len(tracks) == 6 and len(forecasts) == 6
    last = tracks_from_message(tracks[-1])
    assert 0 < last.num_tracks <= 64 and last.points.shape == (last.num_tracks, 6, 2)
    assert np.allclose(last.step_offsets, np.arange(-5, 1) / 15.0, atol=2e-3)  # the sim runs at 15 Hz
    fc = forecasts[-1]
    k, m, h = fc.num_samples, fc.num_points, fc.horizon
    assert (k, h) == (2, 5) and 0 < m <= 30
    assert len(fc.samples) == k * m * h * 2 and len(fc.uncertainty) == m and len(fc.step_offsets) == h
    assert set(np.asarray(fc.track_ids).tolist()) <= set(last.track_ids.tolist())
    samples = np.asarray(fc.samples).reshape(k, m, h, 2)
    query = np.asarray(fc.query_points).reshape(m, 2)
    assert np.all(np.abs(samples - query[None, :, None]) < 120)  # pixels, near the query points
    assert fc.model_id.startswith("arfm_small@")
    decoded = forecast_from_message(fc)
    assert np.array_equal(decoded.samples, samples) and np.array_equal(decoded.query_points, query)
    canvas = np.zeros((240, 320, 3), np.uint8)
    drawn = draw_forecast(
        draw_tracks(canvas, last.points, last.visible), decoded.query_points, decoded.samples
    )
    assert drawn.shape == canvas.shape and drawn.any() and not canvas.any()
