"""Forecast component: shapes and units, forecast rate, warm-start alignment, bad input, eval metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from perception_nodes.forecasting.component import ForecastComponent, TrackAndForecast, _Previous
from perception_nodes.forecasting.config import ForecastingConfig, SamplingConfig, small
from perception_nodes.forecasting.eval import baselines, delta_avg, example_metrics
from perception_nodes.forecasting.network import ARFM
from perception_nodes.tracking.component import TrackerComponent
from perception_nodes.tracking.config import TrackerConfig
from perception_nodes.tracking.synthetic import make_clip
from perception_nodes.types import Frame

torch.set_num_threads(1)
H, K = 6, 3


def _component(**kw) -> ForecastComponent:
    cfg = ForecastingConfig(sampling=SamplingConfig(num_samples=K, horizon=H, history=4, euler_steps=2), **kw)
    torch.manual_seed(0)
    model = ARFM(small())
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ForecastComponent(cfg, model.eval())


def _run(comp, frames=4, period_ns=66_666_667):
    clip = make_clip(0, num_frames=frames)
    pipe = TrackAndForecast(TrackerComponent(TrackerConfig(num_points=48, history=6)), comp)
    return [pipe.step(Frame(stamp_ns=t * period_ns, rgb=clip.rgb[t])) for t in range(frames)]


def test_forecast_shapes_units_and_links():
    results = _run(_component(max_points=20))
    tracks, fc = results[-1]
    assert fc is not None and fc.num_points == 20
    assert fc.samples.shape == (K, 20, H, 2) and fc.uncertainty.shape == (20,)
    assert np.isin(fc.track_ids, tracks.track_ids).all()
    rows = [np.flatnonzero(tracks.track_ids == i)[0] for i in fc.track_ids]
    assert np.allclose(fc.query_points, tracks.points[rows, -1], atol=1e-3)  # pixels in, pixels out
    assert np.allclose(fc.step_offsets, np.arange(1, H + 1) / 15.0, atol=1e-4)  # from the tracks' 15 Hz steps
    assert (np.abs(fc.samples - fc.query_points[None, :, None]) < 100).all()  # sane pixel magnitudes
    assert (fc.uncertainty > 0).all() and fc.model_id.startswith("arfm_small@")


def test_forecast_rate_and_reset_on_time_jump():
    comp = _component(forecast_period_s=0.15)
    results = _run(comp, frames=6)
    assert [fc is not None for _, fc in results] == [True, False, False, True, False, False]
    assert comp._previous is not None
    clip = make_clip(1, num_frames=2)
    tracks = TrackerComponent(TrackerConfig(num_points=16)).step(Frame(stamp_ns=0, rgb=clip.rgb[0]))
    assert comp.step(Frame(stamp_ns=1, rgb=clip.rgb[0]), tracks) is not None  # time went backwards: due
    assert comp._previous is not None and comp._previous.frame_index == comp._frame_index


def test_warm_start_is_aligned_by_elapsed_frames():
    comp = _component()
    k, m = K, 2
    steps = torch.arange(1, H + 1, dtype=torch.float32)  # old forecast: x = 10 * j at step j (j = 1..H)
    old = torch.stack([steps * 10.0, steps * 0.0], dim=-1)[None, None].repeat(k, m, 1, 1)
    old[:, 1, :, 0] = steps**2  # id 9 accelerates: positions 1, 4, 9, 16, ... (displacements 3, 5, 7, ...)
    comp._previous = _Previous(np.array([7, 9], np.uint64), old, frame_index=5)
    comp._frame_index = 7  # two frames later
    warm = comp._warm(np.array([9, 7, 11], np.uint64), torch.zeros(3, 4, 2))
    assert warm.shape == (k, 3, H, 2)
    # new step j' = old step j' + 2: displacement old[j'+2] - old[j'+1]
    assert torch.allclose(warm[0, 1, : H - 2, 0], torch.full((H - 2,), 10.0))
    assert torch.allclose(warm[0, 0, : H - 2, 0], torch.tensor([5.0, 7.0, 9.0, 11.0]))  # 9-4, 16-9, ...
    assert torch.isnan(warm[:, :, H - 2 :]).all() and torch.isnan(warm[:, 2]).all()  # beyond / unknown id


def test_no_tracks_gives_an_empty_forecast_with_a_diagnostic():
    comp = _component()
    flat = np.full((240, 320, 3), 120, np.uint8)
    tracker = TrackerComponent(TrackerConfig(num_points=16))
    tracks = tracker.step(Frame(stamp_ns=0, rgb=flat))
    fc = comp.step(Frame(stamp_ns=0, rgb=flat), tracks)
    assert fc.num_points == 0 and fc.samples.shape == (K, 0, H, 2) and "no visible tracks" in fc.diagnostic


def test_metrics_known_answers():
    gt = np.zeros((3, 4, 2))
    gt[:, :, 0] = np.arange(1, 5) * 4.0  # moving right 4 px/step from the origin
    vis = np.ones((3, 4), bool)
    query = np.zeros((3, 2))
    perfect = example_metrics(gt[None], gt, vis, query)
    assert perfect["delta_avg"] == 1.0 and perfect["min_ade"] == 0.0 and perfect["moving_points"] == 3
    off = np.stack([gt + np.array([5.0, 0.0]), gt + np.array([0.0, 10.0])])  # best sample 5 px off everywhere
    m = example_metrics(off, gt, vis, query)
    assert m["min_ade"] == pytest.approx(5.0) and m["min_fde"] == pytest.approx(5.0)
    assert m["delta_avg"] == pytest.approx(0.8)  # within 8, 16, 32, 64 but not 4
    assert delta_avg(gt + np.array([5.0, 0.0]), gt, vis) == pytest.approx(0.8)
    history = np.stack(
        [gt[:, 0] - [8.0, 0.0], gt[:, 0] - [4.0, 0.0]], axis=1
    )  # last observed step: +4 px in x
    base = baselines(history, np.ones((3, 2), bool), 4)
    assert np.allclose(base["constant_velocity"][0], gt)  # 4 px per step from the query at x = 0
    assert np.allclose(base["static"][0], history[:, -1:].repeat(4, axis=1))


def test_config_validation():
    with pytest.raises(ValueError):
        ForecastingConfig(sampling=SamplingConfig(history=20, horizon=15))  # exceeds model.max_steps
    with pytest.raises(ValueError):
        dataclasses.replace(small(), num_layers=3)
    with pytest.raises(ValueError):
        SamplingConfig(warm_start_t=1.0)


def test_aligned_warm_start_shifts_the_previous_forecast_by_the_elapsed_frames():
    from perception_nodes.forecasting.eval import aligned_warm

    prev = np.zeros((2, 3, 5, 2), np.float32)
    prev[..., 0] = np.arange(1, 6) ** 2  # x = 1, 4, 9, 16, 25: displacements 3, 5, 7, 9
    warm = aligned_warm(prev, shift=1).numpy()
    assert np.allclose(warm[0, 0, :4, 0], [3, 5, 7, 9]) and np.isnan(warm[:, :, 4]).all()
    warm2 = aligned_warm(prev, shift=2).numpy()
    assert np.allclose(warm2[0, 0, :3, 0], [5, 7, 9]) and np.isnan(warm2[:, :, 3:]).all()


def test_warm_start_evaluation_reports_warm_and_cold_on_the_same_windows():
    from perception_nodes.forecasting.eval import evaluate
    from perception_nodes.forecasting.processor import lighten

    comp = _component()
    clips = [make_clip(s, num_frames=16) for s in (0, 1)]
    episodes = [lighten(c, comp.model.cfg.image_size) for c in clips]
    sampling = SamplingConfig(num_samples=K, horizon=H, history=4, euler_steps=2, warm_start_steps=1)
    summary, _ = evaluate(comp.model, episodes, sampling, points=12, stride=4, warm_start=True)
    assert summary["examples"] > 0
    for name in ("arfm", "arfm_cold", "constant_velocity", "static"):
        assert np.isfinite(summary[name]["min_ade"])
    assert summary["arfm"]["min_ade"] != summary["arfm_cold"]["min_ade"]  # the warm path really ran


def test_history_noise_jitters_what_the_forecasters_see_not_the_truth():
    from perception_nodes.forecasting.eval import evaluate
    from perception_nodes.forecasting.processor import lighten

    comp = _component()
    clips = [make_clip(s, num_frames=16) for s in (0, 1)]
    episodes = [lighten(c, comp.model.cfg.image_size) for c in clips]
    sampling = SamplingConfig(num_samples=K, horizon=H, history=4, euler_steps=2)
    runs = [
        evaluate(comp.model, episodes, sampling, points=12, stride=4, history_noise_px=n)[0]
        for n in (0, 0, 1.0)
    ]
    assert runs[0]["static"] == runs[1]["static"]  # reproducible
    assert (
        runs[2]["examples"] == runs[0]["examples"]
        and runs[2]["static"]["points"] == runs[0]["static"]["points"]
    )
    # a jittered last position moves the static forecast off the truth; a jittered velocity is worse still
    assert runs[2]["static"]["min_ade"] > runs[0]["static"]["min_ade"] + 0.3
    assert runs[2]["constant_velocity"]["min_fde"] > runs[0]["constant_velocity"]["min_fde"] + 3.0


@pytest.mark.parametrize("noise_input", [False, True])
def test_the_told_history_noise_reaches_noise_input_models_only(noise_input):
    def last_forecast(told: float) -> np.ndarray:
        cfg = ForecastingConfig(
            sampling=SamplingConfig(num_samples=K, horizon=H, history=4, euler_steps=2, history_noise_px=told)
        )
        torch.manual_seed(0)
        model = ARFM(dataclasses.replace(small(), history_noise_input=noise_input))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)  # a non-zero noise vector, and a head that moves points
        return _run(ForecastComponent(cfg, model.eval()))[-1][1].samples

    exact, noisy = last_forecast(0.0), last_forecast(0.6)
    if noise_input:
        assert np.abs(exact - noisy).max() > 1e-3
    else:
        np.testing.assert_array_equal(exact, noisy)
