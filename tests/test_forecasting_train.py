"""ARFM training: the loss goes down on a fixed batch, checkpoints resume, time sampling, point weighting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from perception_nodes.forecasting.config import by_name, small
from perception_nodes.forecasting.network import ARFM
from perception_nodes.forecasting.processor import motion_logits, select_points
from perception_nodes.forecasting.train import (
    TrainConfig,
    WindowSampler,
    flow_loss,
    jitter_history,
    load_state,
    perturb_future,
    sample_times,
    state_path,
    train,
)
from perception_nodes.forecasting.weights import load_model
from perception_nodes.tracking.synthetic import make_clip

torch.set_num_threads(1)
CFG = TrainConfig(
    steps=60,
    batch_size=2,
    points=16,
    history=4,
    horizon=6,
    lr=2e-3,
    warmup=5,
    threads=1,
    checkpoint_every=1000,
    ema=0.0,
)


def _clips(n: int = 3):
    return [make_clip(s, num_frames=16, num_tracks=64, speed=3.0) for s in range(n)]


def _fixed_loss(model: ARFM, batch, cfg: TrainConfig) -> float:
    with torch.no_grad():
        return float(flow_loss(model.eval(), batch, cfg.history, cfg, torch.Generator().manual_seed(123)))


@pytest.mark.parametrize("model,steps", [("small", 60), ("small_residual", 160)])
def test_training_smoke_run_lowers_the_loss(tmp_path, model, steps):
    # 160 steps with residual motion: its target (with the input jitter in it) starts nearer its noise floor
    cfg = dataclasses.replace(CFG, model=model, steps=steps)
    clips = _clips()
    probe = WindowSampler(
        clips, dataclasses.replace(cfg, batch_size=6), by_name(model), np.random.default_rng(99)
    ).batch()
    torch.manual_seed(cfg.seed)
    before = _fixed_loss(ARFM(by_name(model)), probe, cfg)  # train() builds the same initial model
    summary = train(clips, cfg, tmp_path / "m.safetensors", progress=False)
    trained = load_model(tmp_path / "m.safetensors")
    assert trained.cfg.residual_motion == (model == "small_residual")
    after = _fixed_loss(trained, probe, cfg)
    assert summary["loss_last"] < summary["loss_first"]
    assert after < 0.7 * before, (before, after)


def test_training_resumes_from_its_checkpoint(tmp_path):
    clips, out = _clips(2), tmp_path / "new_dir" / "r.safetensors"  # the folder does not exist yet
    cfg = dataclasses.replace(CFG, steps=4, checkpoint_every=2)
    train(clips, cfg, out, progress=False)
    assert state_path(out).exists()
    model, ema = ARFM(small()), ARFM(small())
    opt = torch.optim.AdamW(model.parameters())
    assert load_state(out, model, ema, opt) == 4
    assert len(opt.state) == len(list(model.parameters()))  # Adam moments restored
    again = train(clips, dataclasses.replace(cfg, steps=6), out, resume=True, progress=False)
    assert again["start"] == 4 and again["steps"] == 6


def test_time_sampling_modes():
    gen = torch.Generator().manual_seed(0)
    for mode in ("cosmap", "logit_normal", "uniform"):
        t = sample_times(4000, mode, gen)
        assert t.min() > 0 and t.max() < 1
    cos = sample_times(20000, "cosmap", gen)
    assert abs(float(cos.median()) - 0.5) < 0.02  # cosmap is symmetric about 1/2 ...
    assert float((cos - 0.5).abs().mean()) < float((sample_times(20000, "uniform", gen) - 0.5).abs().mean())


def test_motion_weighted_point_sampling_prefers_moving_points():
    rng = np.random.default_rng(0)
    tracks = np.zeros((200, 10, 2), np.float32)
    tracks[:20] += np.arange(10)[None, :, None] * 3.0  # 20 moving points, 180 static
    visible = np.ones((200, 10), bool)
    assert motion_logits(tracks, visible)[:20].min() > motion_logits(tracks, visible)[20:].max()
    picks = np.concatenate([select_points(tracks, visible, 4, 20, rng) for _ in range(20)])
    assert (picks < 20).mean() > 0.9
    visible[:10, 4] = False  # not visible at the query step: never chosen
    assert not np.isin(select_points(tracks, visible, 4, 50, rng), np.arange(10)).any()


def test_residual_targets_are_what_is_left_after_continuing_the_seen_velocity():
    from perception_nodes.forecasting.train import residual_targets

    gen = torch.Generator().manual_seed(0)
    pos = 50 + torch.arange(7, dtype=torch.float32)[None, None, :, None] * torch.tensor(
        [2.0, -1.0]
    )  # (1,1,7,2)
    pos = pos.repeat(1, 3, 1, 1)
    inputs = (
        pos[:, :, :-1]
        + torch.randn(1, 3, 6, 2, generator=gen) * torch.tensor([0.0, 0.3, 0.3])[None, :, None, None]
    )  # point 0 clean, 1 and 2 jittered
    observed = torch.ones(1, 3, 6, dtype=torch.bool)
    observed[0, 2, 2] = False  # point 2 lost at step 2 (history 4)
    got = residual_targets(pos, inputs, observed, history=4)
    torch.testing.assert_close(got[0, 0, 1:], torch.zeros(5, 2))  # constant velocity: nothing left
    torch.testing.assert_close(got[0, 0, 0], torch.tensor([2.0, -1.0]))  # no velocity before step 0
    base = inputs[0, 1, 1:] - inputs[0, 1, :-1]
    torch.testing.assert_close(got[0, 1, 1:], pos[0, 1, 2:] - inputs[0, 1, 1:] - base)  # cancels the jitter
    for s in (2, 3):  # steps touching the lost one start from no velocity
        torch.testing.assert_close(got[0, 2, s], pos[0, 2, s + 1] - inputs[0, 2, s])


def test_windowed_residual_targets_continue_the_window_mean_like_the_sampler():
    from perception_nodes.forecasting.config import small_residual
    from perception_nodes.forecasting.network import ARFM
    from perception_nodes.forecasting.sampler import FastSampler, ForecastInputs, sample_no_cache
    from perception_nodes.forecasting.train import residual_targets

    vel = torch.tensor([2.0, -1.0])
    pos = (50 + torch.arange(12.0)[:, None] * vel)[None, None].repeat(1, 2, 1, 1)  # (1, 2, 12, 2)
    pos[0, 1, 6:] += torch.arange(1.0, 7.0)[:, None] * 3.0  # point 1 goes 3 px/step faster from step 5
    got = residual_targets(pos, pos[:, :, :-1], torch.ones(1, 2, 11, dtype=torch.bool), 8, window=4)
    torch.testing.assert_close(got[0, 0, 4:], torch.zeros(7, 2))  # a full window of constant velocity
    torch.testing.assert_close(got[0, 0, 1], vel * 3 / 4)  # steps before the first count as still
    # the change of velocity is what is left, until the window has caught up with it
    torch.testing.assert_close(got[0, 1, 5:, 0], torch.tensor([3.0, 2.25, 1.5, 0.75, 0.0, 0.0]))
    # a zero flow (DiT init) continues the window mean: the targets' zero is the samplers' zero
    model = ARFM(small_residual()).eval()
    fmaps, tokens = model.encode_image(torch.rand(1, 3, 128, 128))
    inp = ForecastInputs(
        fmaps,
        tokens,
        pos[:, :1, :8],
        torch.ones(1, 1, 8, dtype=torch.bool),
        torch.ones(1, 1, dtype=torch.bool),
    )
    zero = torch.zeros(2, 4, 1, 2)
    want = pos[0, 0, 8:12].expand(2, 1, 4, 2)
    torch.testing.assert_close(FastSampler(model, 4, 2).sample(inp, zero), want)
    torch.testing.assert_close(sample_no_cache(model, inp, zero), want)


def test_jitter_history_spreads_the_noise_level_over_examples_and_leaves_the_future_exact():
    pos = torch.zeros(400, 50, 12, 2)
    fixed = TrainConfig(input_jitter_px=0.6, jitter_spread=False)
    spread = dataclasses.replace(fixed, jitter_spread=True)
    gen = torch.Generator().manual_seed(0)
    (a, level_a), (b, level_b) = jitter_history(pos, 8, fixed, gen), jitter_history(pos, 8, spread, gen)
    assert (a[:, :, 8:] == 0).all() and (b[:, :, 8:] == 0).all() and (pos == 0).all()
    std_a, std_b = a[:, :, :8].std(dim=(1, 2, 3)), b[:, :, :8].std(dim=(1, 2, 3))
    assert std_a.min() > 0.55 and std_a.max() < 0.65  # every example at the fixed level
    # spread: per-example levels uniform in [0, 0.6]: near-exact and full-level histories both occur
    assert std_b.min() < 0.03 and std_b.max() > 0.57
    assert abs(float(std_b.mean()) - 0.3) < 0.03
    assert (level_a == 0.6).all()  # the levels the model is told are the stds drawn
    torch.testing.assert_close(level_b, std_b, atol=0.02, rtol=0.05)
    exact, level = jitter_history(pos, 8, TrainConfig(input_jitter_px=0.0), gen)
    assert (exact == 0).all() and (level == 0).all()


def test_perturb_future_walks_the_generated_steps_and_keeps_the_history():
    pos = torch.randn(400, 50, 12, 2)
    cfg = TrainConfig(future_noise_px=0.5)
    gen = torch.Generator().manual_seed(0)
    out = perturb_future(pos, 8, cfg, gen)
    assert torch.equal(out[:, :, :8], pos[:, :, :8])  # observed steps (and the last one's position) kept
    steps = torch.diff(
        torch.cat([pos[:, :, 7:8], out[:, :, 8:]], 2) - torch.cat([pos[:, :, 7:8], pos[:, :, 8:]], 2), dim=2
    )
    level = steps.std(dim=(1, 2, 3))  # per-example displacement noise: uniform in [0, 0.5]
    assert level.min() < 0.03 and level.max() > 0.47 and abs(float(level.mean()) - 0.25) < 0.03
    drift = (out - pos)[:, :, 8:].pow(2).mean(dim=(0, 1, 3)).sqrt()  # a random walk: grows like sqrt(step)
    ratio = drift[3] / drift[0]
    assert 1.8 < ratio < 2.2
    assert torch.equal(perturb_future(pos, 8, TrainConfig(), gen), pos)


def test_per_step_flow_times_condition_each_step_of_the_head_alone():
    torch.manual_seed(0)
    head = ARFM(small()).head.eval()
    with torch.no_grad():  # the adaLN layers start at zero (DiT init): give the flow time an effect
        for p in head.parameters():
            p.normal_(0, 0.3)
    b, n, s = 2, 5, 4
    fused = torch.randn(b, n, s, small().hidden_size)
    noised, valid = torch.randn(b, n, s, 2), torch.ones(b, n, dtype=torch.bool)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        per_example = head(fused, noised, t, None, valid)
        # one time per example is the same as that time at every step
        torch.testing.assert_close(head(fused, noised, t[:, None].expand(b, s), None, valid), per_example)
        steps = t[:, None].repeat(1, s)
        steps[1, 2] = 0.1  # another flow time at one step of one example
        moved = head(fused, noised, steps, None, valid)
    changed = (moved - per_example).abs().amax(dim=(1, 3)) > 1e-6  # (B, S)
    assert changed[1, 2] and changed.sum() == 1, changed


@pytest.mark.parametrize(
    "over", [{"time_per_step": False, "head_repeats": 1}, {"time_per_step": True, "head_repeats": 3}]
)
def test_the_released_recipe_and_other_repeats_train(tmp_path, over):
    cfg = dataclasses.replace(CFG, **over)
    clips = _clips()
    probe = WindowSampler(
        clips, dataclasses.replace(cfg, batch_size=6), small(), np.random.default_rng(99)
    ).batch()
    base = dataclasses.replace(cfg, time_per_step=False, head_repeats=1)
    torch.manual_seed(cfg.seed)
    before = _fixed_loss(ARFM(small()), probe, base)
    train(clips, cfg, tmp_path / "m.safetensors", progress=False)
    assert _fixed_loss(load_model(tmp_path / "m.safetensors"), probe, base) < 0.7 * before


def test_head_repeats_average_independent_draws_on_one_fusion_pass():
    torch.manual_seed(0)
    model = ARFM(small()).eval()
    batch = WindowSampler(_clips(), CFG, small(), np.random.default_rng(5)).batch()
    # no history jitter: the generator then only draws each pass's noise and flow times
    one = dataclasses.replace(CFG, time_per_step=True, head_repeats=1, input_jitter_px=0.0)
    three = dataclasses.replace(one, head_repeats=3)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(7)
        singles = [float(flow_loss(model, batch, CFG.history, one, gen)) for _ in range(3)]
        repeated = float(flow_loss(model, batch, CFG.history, three, torch.Generator().manual_seed(7)))
    assert max(singles) - min(singles) > 1e-3  # each pass draws its own noise and times
    assert repeated == pytest.approx(np.mean(singles), rel=1e-5)
