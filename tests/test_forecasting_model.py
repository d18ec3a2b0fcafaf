"""ARFM network: shapes, causality, KV-cache sampling == no-cache sampling, official weight mapping."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from perception_nodes.forecasting.config import official, small, small_residual
from perception_nodes.forecasting.network import ARFM, count_parameters, motion_inputs
from perception_nodes.forecasting.sampler import (
    CudaGraphSampler,
    FastSampler,
    ForecastInputs,
    sample_no_cache,
)
from perception_nodes.forecasting.weights import OFFICIAL_IGNORED, convert_official, load_model, save_model

torch.set_num_threads(1)


def _perturbed(model: ARFM, scale: float = 0.05) -> ARFM:
    """Random non-zero weights everywhere (the DiT init zeroes the head's output, hiding bugs)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def _tiny_official():
    """The official layout (external encoders, text, camera motion) at toy sizes."""
    return dataclasses.replace(
        official(),
        feature_dim=24,
        global_dim=16,
        num_global_tokens=4,
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        intermediate_size=40,
        head_hidden_size=32,
        head_layers=2,
        head_heads=4,
        head_intermediate_size=40,
        text_dim=12,
        text_tokens=3,
        max_steps=24,
        feature_sampling="bilinear",
    )


def _inputs(model: ARFM, n: int, hist: int, seed: int = 0) -> ForecastInputs:
    gen = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    if cfg.encoder == "small_cnn":
        fmaps, tokens = model.encode_image(torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=gen))
    else:
        fmaps = [
            torch.randn(1, cfg.feature_dim // 2, 16, 16, generator=gen),
            torch.randn(1, cfg.feature_dim - cfg.feature_dim // 2, 8, 8, generator=gen),
        ]
        tokens = torch.randn(1, cfg.num_global_tokens, cfg.global_dim, generator=gen)
    history = (
        40 + torch.cumsum(torch.randn(1, n, hist, 2, generator=gen) * 3, dim=2) + torch.rand(1, n, 1, 2) * 150
    )
    observed = torch.rand(1, n, hist, generator=gen) > 0.2
    valid = torch.ones(1, n, dtype=torch.bool)
    valid[0, -1] = False  # a padded slot
    text = torch.randn(1, cfg.text_tokens, cfg.text_dim, generator=gen) if cfg.use_text else None
    cond = model.condition(
        1, torch.tensor([1]), None if text is None else torch.randn(1, cfg.text_dim), "cpu"
    )
    level = torch.tensor([0.4]) if cfg.history_noise_input else None
    return ForecastInputs(fmaps, tokens, history, observed, valid, cond, text, level)


def _no_window():
    """The earlier shipped layout: the previous displacement as the only motion input."""
    return dataclasses.replace(small(), motion_window=0)


def _noise_input():
    """small with the history's noise level as an input (``_inputs`` tells it 0.4 px)."""
    return dataclasses.replace(small(), history_noise_input=True)


def test_shapes_and_parameter_counts():
    model = ARFM(small()).eval()
    fmaps, tokens = model.encode_image(torch.rand(2, 3, 128, 128))
    assert fmaps[0].shape == (2, small().feature_dim, 32, 32) and tokens.shape == (
        2,
        small().num_global_tokens,
        small().global_dim,
    )
    pos = torch.rand(2, 7, 5, 2) * 256
    vel = model(
        fmaps,
        tokens,
        pos,
        torch.ones(2, 7, 5, dtype=torch.bool),
        torch.ones(2, 7, dtype=torch.bool),
        3,
        torch.randn(2, 7, 5, 2),
        torch.rand(2),
    )
    assert vel.shape == (2, 7, 5, 2) and torch.isfinite(vel).all()
    with torch.device("meta"):
        big = ARFM(official())
    assert 131e6 < count_parameters(big) < 133e6  # the paper's 132 M trainable parameters


def test_history_noise_level_moves_observed_tokens_only():
    model = _perturbed(ARFM(_noise_input()))
    fmaps, _ = model.encode_image(torch.rand(2, 3, 128, 128))
    pos = torch.rand(2, 6, 5, 2) * 256
    observed = torch.rand(2, 6, 5) > 0.3
    motion = motion_inputs(pos, model.cfg.motion_window)
    exact = model.point_tokens(fmaps, pos, observed, motion)
    torch.testing.assert_close(model.point_tokens(fmaps, pos, observed, motion, torch.zeros(2)), exact)
    noisy = model.point_tokens(fmaps, pos, observed, motion, torch.tensor([0.0, 0.5]))
    moved = (noisy - exact).abs().amax(-1) > 1e-6  # (B, N, S)
    assert not moved[0].any() and torch.equal(moved[1], observed[1])  # example 1's observed steps only
    plain = ARFM(small()).eval()
    assert not hasattr(plain, "history_noise_embedding")
    torch.testing.assert_close(
        plain.point_tokens(fmaps, pos, observed, motion, torch.ones(2)),
        plain.point_tokens(fmaps, pos, observed, motion),
    )


def test_motion_window_input_is_the_mean_displacement_and_damps_jitter():
    gen = torch.Generator().manual_seed(2)
    vel = torch.tensor([1.5, -0.5])
    track = 100 + torch.arange(10.0)[:, None] * vel  # (S, 2) constant velocity
    got = motion_inputs(track[None, None], 4)[0, 0]  # (S, 4)
    torch.testing.assert_close(got[1:, :2], vel.expand(9, 2))  # previous displacement
    torch.testing.assert_close(got[4:, 2:], vel.expand(6, 2))  # a full window: the velocity itself
    torch.testing.assert_close(got[2, 2:], vel * 2 / 4)  # before the start the track counts as still
    assert torch.equal(motion_inputs(track[None, None], 0)[0, 0], got[:, :2])
    still = 100 + torch.randn(1, 2000, 12, 2, generator=gen) * 0.6  # a tracker's jitter on still points
    feats = motion_inputs(still, 4)[:, :, 4:]
    one, mean = feats[..., :2].std().item(), feats[..., 2:].std().item()
    assert one == pytest.approx(0.6 * 2**0.5, rel=0.05) and mean == pytest.approx(0.6 * 2**0.5 / 4, rel=0.05)


@pytest.mark.parametrize(
    "make_cfg",
    [small, _tiny_official, _no_window, _noise_input],
    ids=["small", "official-layout", "no-window", "noise-input"],
)
def test_causality_future_steps_never_change_earlier_outputs(make_cfg):
    model = _perturbed(ARFM(make_cfg()))
    inp = _inputs(model, n=6, hist=7)
    noised, t = torch.randn(1, 6, 7, 2), torch.rand(1)
    args = (inp.fmaps, inp.tokens)
    base = model(*args, inp.history, inp.observed, inp.point_valid, 4, noised, t, inp.cond, inp.text)
    for s in (2, 5):
        pos = inp.history.clone()
        pos[:, :, s] += 9.0  # move every point at step s
        obs = inp.observed.clone()
        obs[:, :, s] = ~obs[:, :, s]
        changed = model(*args, pos, obs, inp.point_valid, 4, noised, t, inp.cond, inp.text)
        assert torch.equal(changed[:, :, :s], base[:, :, :s]), f"step {s} leaked into the past"
        assert (changed[:, :, s:] - base[:, :, s:]).abs().max() > 1e-3  # and does change the present


def _residual():
    """Residual motion on the previous displacement (no window)."""
    return dataclasses.replace(_no_window(), residual_motion=True)


@pytest.mark.parametrize(
    "make_cfg",
    [small, _tiny_official, _residual, _no_window, small_residual, _noise_input],
    ids=["small", "official-layout", "residual", "no-window", "window-residual", "noise-input"],
)
def test_kv_cache_sampling_equals_no_cache_sampling(make_cfg):
    model = _perturbed(ARFM(make_cfg()))
    inp = _inputs(model, n=9, hist=4, seed=3)
    k, h = 3, 6
    noise = torch.randn(k, h, 9, 2, generator=torch.Generator().manual_seed(7))
    fast = FastSampler(model, h, k, euler_steps=3).sample(inp, noise)
    ref = sample_no_cache(model, inp, noise, euler_steps=3)
    assert fast.shape == (k, 9, h, 2)
    assert (fast - inp.history[:, :, -1:]).abs().max() > 1.0  # the forecast moves: the test is not vacuous
    torch.testing.assert_close(fast, ref, atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_a_zero_flow_forecasts_constant_velocity_with_residual_motion_else_a_standstill(residual):
    model = ARFM(dataclasses.replace(_no_window(), residual_motion=residual)).eval()  # DiT init: velocity 0
    inp = _inputs(model, n=4, hist=3)
    noise = torch.zeros(2, 5, 4, 2)
    last, vel = inp.history[0, :, -1], inp.history[0, :, -1] - inp.history[0, :, -2]  # (N, 2)
    seen = inp.observed[0, :, -1] & inp.observed[0, :, -2]
    assert seen.any() and not seen.all()  # both cases below
    vel = vel * seen[:, None]  # a point not seen at both of its last steps has no velocity
    steps = torch.arange(1, 6, dtype=torch.float32)[:, None, None]  # (H, 1, 1)
    want = (last + steps * vel * float(residual)).transpose(0, 1)  # (N, H, 2)
    for got in (FastSampler(model, 5, 2).sample(inp, noise), sample_no_cache(model, inp, noise)):
        torch.testing.assert_close(got, want.expand(2, -1, -1, -1), atol=1e-4, rtol=1e-5)


def test_warm_start_is_refined_from_previous_forecast():
    model = _perturbed(ARFM(small()))
    inp = _inputs(model, n=5, hist=3)
    sampler = FastSampler(model, 4, 2, euler_steps=2, warm_start_t=0.8, warm_start_steps=2)
    noise = torch.zeros(2, 4, 5, 2)
    warm = torch.full((2, 5, 4, 2), float("nan"))
    cold = sampler.sample(inp, noise)
    same = sampler.sample(inp, noise, warm=warm)  # all NaN: every step starts from noise
    torch.testing.assert_close(same, cold)
    warm[:, :, 0] = 25.0
    moved = sampler.sample(inp, noise, warm=warm)
    # with zero noise the warm step starts at 0.8 * 25 px and the head only refines it over t in [0.8, 1]
    first = moved[:, :, 0] - inp.history[:, :, -1]
    assert (first - 25.0).abs().max() < 12.0 and (first - 20.0).abs().max() < 12.0
    assert (moved[:, :, 0] - cold[:, :, 0]).abs().min() > 5.0


def _official_keys(cfg) -> dict[str, tuple[int, ...]]:
    """Trainable keys of the released MotionPredictor (modeling_motion_predictor.py, d5dd410) below
    ``motion_predictor.``, with their shapes for ``cfg``, written down from the released code."""
    d, f, h, i = cfg.hidden_size, cfg.feature_dim, cfg.head_hidden_size, cfg.intermediate_size
    keys = {
        "feature_to_predictor_projection.weight": (d, f),
        "feature_to_predictor_projection.bias": (d,),
        "global_feature_to_predictor_projection.weight": (d, cfg.global_dim),
        "global_feature_to_predictor_projection.bias": (d,),
        "visibility_indicator_embeddings.weight": (2, f),
        "global_visibility_indicator_embeddings.weight": (2, cfg.global_dim),
        "camera_motion_embedder.embedding_table.weight": (3, h),
        "text_encoder.projection.weight": (d, cfg.text_dim),
        "text_encoder.projection.bias": (d,),
        "text_encoder.pooled_projection.weight": (h, cfg.text_dim),
        "text_encoder.pooled_projection.bias": (h,),
        "text_encoder.embedding_mask_tokens": (cfg.text_tokens, d),
        "text_encoder.pooled_mask_token": (h,),
        "track_predictor.norm.weight": (d,),
        "track_predictor_head.time_embedder.mlp.0.weight": (h, 256),
        "track_predictor_head.time_embedder.mlp.0.bias": (h,),
        "track_predictor_head.time_embedder.mlp.2.weight": (h, h),
        "track_predictor_head.time_embedder.mlp.2.bias": (h,),
        "track_predictor_head.feature_projection.weight": (h, d + 2),
        "track_predictor_head.feature_projection.bias": (h,),
        "track_predictor_head.predictor.linear.weight": (2, h),
        "track_predictor_head.predictor.linear.bias": (2,),
        "track_predictor_head.predictor.adaln_modulation.1.weight": (2 * h, h),
        "track_predictor_head.predictor.adaln_modulation.1.bias": (2 * h,),
    }

    def block(prefix: str, dim: int, inter: int) -> None:
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            keys[f"{prefix}.self_attn.{p}.weight"], keys[f"{prefix}.self_attn.{p}.bias"] = (dim, dim), (dim,)
        for p in ("gate_proj", "up_proj"):
            keys[f"{prefix}.mlp.{p}.weight"], keys[f"{prefix}.mlp.{p}.bias"] = (inter, dim), (inter,)
        keys[f"{prefix}.mlp.down_proj.weight"], keys[f"{prefix}.mlp.down_proj.bias"] = (dim, inter), (dim,)

    for n in range(cfg.num_layers):
        block(f"track_predictor.layers.{n}", d, i)
        keys[f"track_predictor.layers.{n}.input_layernorm.weight"] = (d,)
        keys[f"track_predictor.layers.{n}.post_attention_layernorm.weight"] = (d,)
    for n in range(cfg.head_layers):
        block(f"track_predictor_head.layers.{n}", h, cfg.head_intermediate_size)
        keys[f"track_predictor_head.layers.{n}.adaln_modulation.1.weight"] = (6 * h, h)
        keys[f"track_predictor_head.layers.{n}.adaln_modulation.1.bias"] = (6 * h,)
    return keys


def _official_state(cfg, gen) -> dict[str, torch.Tensor]:
    keys = _official_keys(cfg)
    state = {f"motion_predictor.{k}": torch.randn(s, generator=gen) for k, s in keys.items()}
    state.update({f"ema_model.ema_model.{k}": torch.randn(s, generator=gen) for k, s in keys.items()})
    # frozen encoders, fixed tables and EMA bookkeeping present in released checkpoints, never loaded
    state["motion_predictor.video_encoder.image_model.image_model.sam_mask_decoder.iou_token.weight"] = (
        torch.zeros(1, 256)
    )
    state["motion_predictor.global_video_encoder.image_model.image_model.post_layernorm.weight"] = (
        torch.zeros(768)
    )
    state["motion_predictor.text_encoder.text_encoder.final_layer_norm.weight"] = torch.zeros(512)
    state["motion_predictor.track_predictor_head.fourier_embeddings.height_embeddings"] = torch.zeros(
        256, 257
    )
    state["ema_model.initted"] = torch.tensor(True)
    state["ema_model.step"] = torch.tensor(5)
    return state


def test_official_key_list_maps_onto_the_official_config_exactly():
    cfg = official()
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in ARFM(cfg).state_dict().items()}
    mapped = convert_official(_official_state_meta(cfg))
    assert set(mapped) == set(ours), set(ours) ^ set(mapped)
    assert all(tuple(mapped[k].shape) == ours[k] for k in ours)


def _official_state_meta(cfg) -> dict[str, torch.Tensor]:
    state = {
        f"ema_model.ema_model.{k}": torch.empty(s, device="meta") for k, s in _official_keys(cfg).items()
    }
    state["ema_model.ema_model.video_encoder.image_model.image_model.trunk.pos_embed"] = torch.empty(
        1, device="meta"
    )
    return state


def test_official_weights_load_into_the_right_modules():
    cfg = _tiny_official()
    state = _official_state(cfg, torch.Generator().manual_seed(0))
    model = ARFM(cfg)
    model.load_state_dict(convert_official(state), strict=True)  # EMA weights preferred
    sd = model.state_dict()
    for theirs, ours in [
        ("track_predictor.layers.3.self_attn.q_proj.weight", "fusion.layers.3.self_attn.q_proj.weight"),
        ("track_predictor_head.layers.1.adaln_modulation.1.bias", "head.layers.1.adaln_modulation.1.bias"),
        ("feature_to_predictor_projection.weight", "point_projection.weight"),
        ("text_encoder.pooled_mask_token", "text_pooled_mask_token"),
    ]:
        assert torch.equal(sd[ours], state[f"ema_model.ema_model.{theirs}"])
    online = convert_official(state, prefer_ema=False)
    assert torch.equal(online["fusion.norm.weight"], state["motion_predictor.track_predictor.norm.weight"])
    assert not any(k.startswith(OFFICIAL_IGNORED) for k in online)
    with pytest.raises(KeyError):
        convert_official({"motion_predictor.some_new_module.weight": torch.zeros(1)})


def test_checkpoint_round_trip(tmp_path):
    model = _perturbed(ARFM(small()))
    save_model(model, tmp_path / "m.safetensors", {"step": 3})
    again = load_model(tmp_path / "m.safetensors")
    assert again.cfg == model.cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


class _ReplayByCalling:
    def __init__(self, fn):
        self.replay = fn


class _SimulatedGraphSampler(CudaGraphSampler):
    """The CUDA-graph sampler's static-buffer logic, with 'replay' running the captured body eagerly."""

    def _graph(self, schedule, state):
        return _ReplayByCalling(lambda: self.body(state, schedule))


@pytest.mark.parametrize(
    "make_cfg", [_tiny_official, small, _noise_input], ids=["official-layout", "small", "noise-input"]
)
def test_graph_sampler_static_buffers_match_eager_sampling(make_cfg):
    model = _perturbed(ARFM(make_cfg()))
    eager = FastSampler(model, 5, 3, euler_steps=3)
    graphed = _SimulatedGraphSampler(model, 5, 3, euler_steps=3)
    for seed in (3, 4):  # the second call reuses the static buffers with new inputs
        inp = _inputs(model, n=9, hist=2, seed=seed)
        noise = torch.randn(3, 5, 9, 2, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(graphed.sample(inp, noise), eager.sample(inp, noise))
    assert graphed._static is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sampler_matches_eager_on_gpu():
    model = _perturbed(ARFM(small())).cuda()
    inp = _inputs(model.cpu(), n=20, hist=4)
    model.cuda()
    inp = ForecastInputs(
        [f.cuda() for f in inp.fmaps],
        inp.tokens.cuda(),
        inp.history.cuda(),
        inp.observed.cuda(),
        inp.point_valid.cuda(),
        None if inp.cond is None else inp.cond.cuda(),
    )
    noise = torch.randn(3, 6, 20, 2, device="cuda")
    a = FastSampler(model, 6, 3).sample(inp, noise)
    b = CudaGraphSampler(model, 6, 3).sample(inp, noise)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)


def test_autocast_bf16_sampling_runs_and_stays_close():
    model = _perturbed(ARFM(_tiny_official()))
    inp = _inputs(model, n=9, hist=1, seed=5)
    noise = torch.randn(3, 4, 9, 2, generator=torch.Generator().manual_seed(5))
    ref = FastSampler(model, 4, 3, euler_steps=2).sample(inp, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = FastSampler(model, 4, 3, euler_steps=2).sample(inp, noise)
    assert low.dtype == torch.float32  # positions stay fp32 under autocast
    assert (low - ref).abs().max() < 0.5  # model-frame pixels


def test_flattened_sdpa_equals_explicit_attention_on_5d_inputs():
    from perception_nodes.forecasting.network import NEG, _sdpa

    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 4, 5, 8, generator=gen) for _ in range(3))
    mask = torch.where(torch.rand(2, 1, 1, 1, 5, generator=gen) > 0.3, 0.0, NEG)  # broadcast over dim 1
    mask[..., 0] = 0.0
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + mask, dim=-1) @ v
    torch.testing.assert_close(_sdpa(q, k, v, mask), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_sdpa(q, k, v, None), torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v)


def test_reused_cache_buffers_give_the_same_samples_as_a_fresh_sampler():
    model = _perturbed(ARFM(small()))
    sampler = FastSampler(model, 5, 3, euler_steps=2)
    noise = torch.randn(3, 5, 7, 2, generator=torch.Generator().manual_seed(4))
    first = sampler.sample(_inputs(model, n=7, hist=4, seed=1), noise)
    own = sampler._own
    inp = _inputs(model, n=7, hist=4, seed=2)
    second = sampler.sample(inp, noise)
    assert sampler._own is own  # the generated-steps cache was reused, not reallocated
    torch.testing.assert_close(second, FastSampler(model, 5, 3, euler_steps=2).sample(inp, noise))
    assert (second - first).abs().max() > 1e-3  # new inputs, new forecast
    sampler.sample(_inputs(model, n=6, hist=4, seed=2), noise[:, :, :6])  # other shapes: a new buffer
    assert sampler._own is not own


def test_fused_head_equals_the_flow_head():
    from perception_nodes.forecasting.fused import FusedHead
    from perception_nodes.forecasting.network import NEG

    model = _perturbed(ARFM(_tiny_official()), scale=0.2)  # 2 head layers, adaLN on time + conditioning
    head, d = model.head, model.cfg.head_hidden_size
    gen = torch.Generator().manual_seed(6)
    fused = torch.randn(3, 9, model.cfg.hidden_size, generator=gen)
    noised = torch.randn(3, 9, 2, generator=gen)
    cond = torch.randn(1, d, generator=gen)
    mods = [m.reshape(1, 1, -1) for m in head.modulations(head.condition(torch.tensor([0.3]), cond))]
    mask = torch.zeros(1, 1, 1, 9)
    mask[..., -2:] = NEG  # two padded points
    base = head.base(fused)
    ref = head.run(base, noised, mods, mask)
    fast = FusedHead(head)(base, noised, FusedHead.table(mods, d), mask)
    assert ref.abs().max() > 0.1  # a non-trivial velocity
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)


def test_folded_fusion_steps_equal_the_transformer_steps():
    """FusedFusion (norms, attention scale and RoPE folded into the weights, flat per-sample KV buffer)
    against FusionTransformer.step over several generated steps, with unseen history steps masked out and a
    padded point slot."""
    from perception_nodes.forecasting.fused import FusedFusion
    from perception_nodes.forecasting.network import NEG

    model = _perturbed(ARFM(small()), scale=0.2)
    fusion, d = model.fusion, model.cfg.hidden_size
    gen = torch.Generator().manual_seed(8)
    k, p, s, h = 3, 7, 5, 4
    x = torch.randn(1, p, s, d, generator=gen)
    step_valid = torch.rand(1, p, s, generator=gen) > 0.3
    step_valid[..., -1] = True
    token_valid = torch.ones(1, p, dtype=torch.bool)
    token_valid[0, -1] = False
    _, cache = fusion.prefill(x, step_valid, token_valid, k, h)
    folded = FusedFusion(fusion, cache.offset, h)
    flat = folded.flat_cache(cache, k, h, None)
    assert flat.mask is not None  # the masked history steps are in play
    space_mask = torch.where(token_valid, 0.0, NEG)[:, None, None, :]
    for i in range(h):
        new = torch.randn(k, p, d, generator=gen)
        ref, _ = fusion.step(new, cache, torch.tensor(i), token_valid)
        fast = folded.step(new, flat, i, space_mask)
        assert ref.abs().max() > 0.1
        torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


def test_fast_sampler_uses_the_folded_fusion_step_without_text():
    model = _perturbed(ARFM(small()))
    sampler = FastSampler(model, 4, 2, euler_steps=2)
    assert sampler.prepare(_inputs(model, n=5, hist=3)).flat is not None
    tiny = _perturbed(ARFM(_tiny_official()))  # a text prefix keeps the segmented cache
    assert FastSampler(tiny, 4, 2).prepare(_inputs(tiny, n=5, hist=3)).flat is None


@pytest.mark.parametrize("window", [0, 4])
def test_folded_point_tokens_equal_the_model_point_tokens_for_generated_steps(window):
    from perception_nodes.forecasting.fused import FusedPointTokens

    cfg = dataclasses.replace(small(), displacement_scale=2.5, motion_window=window)
    model = _perturbed(ARFM(cfg), scale=0.2)
    gen = torch.Generator().manual_seed(9)
    fmaps = [torch.randn(1, model.cfg.feature_dim, 32, 32, generator=gen)]
    pos = torch.rand(40, 2, generator=gen) * 260 - 2  # some just outside the frame (border padding)
    prev = torch.randn(40, cfg.motion_dim, generator=gen) * 3
    observed = torch.zeros(1, 40, 1, dtype=torch.bool)
    ref = model.point_tokens(fmaps, pos.view(1, 40, 1, 2), observed, prev.view(1, 40, 1, -1))[0, :, 0]
    fast = FusedPointTokens(model)(fmaps, pos, prev)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-4)


def test_folded_kernels_build_on_the_modules_device():
    """No CPU-only constants: on a GPU the eager sampler folds the weights where they live (the meta device
    stands in for CUDA here)."""
    from perception_nodes.forecasting.fused import FusedFusion, FusedHead, FusedPointTokens

    with torch.device("meta"):
        model = ARFM(small())
    folded = FusedFusion(model.fusion, 8, 4)
    assert folded.eye.is_meta and all(w.is_meta for w, _ in folded.layers[0]["qkv"])
    assert FusedPointTokens(model).freqs.is_meta and FusedHead(model.head).w_noise.is_meta
