"""Exportable ARFM graphs (static shapes) for the inference layer: the fast sampler split into four networks.

- ``arfm_small_encoder``: image -> dense features + global tokens (once per frame);
- ``arfm_small_prefill``: observed history -> fused state of the current step + the history KV cache;
- ``arfm_small_step``: one generated step for K samples through the KV cache (functional cache update:
  the own-segment cache goes in and the updated cache comes out);
- ``arfm_small_head``: flow-head velocity for one step (called per Euler step).

The sampler (``sampler.FastSampler``) chains them; shapes follow the shipped sampling config (K = 5,
N = 100 points, history 8, horizon 15).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from perception_nodes.forecasting.config import ForecastingConfig, small
from perception_nodes.forecasting.network import ARFM, NEG, KVCache, KVSegment

try:
    from perception_nodes.inference.registry import ExportSpec
except ImportError:  # pragma: no cover - the inference layer is part of the package
    ExportSpec = None  # type: ignore[assignment,misc]

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SHIPPED = MODELS_DIR / "arfm_small.safetensors"
K, N = 5, 100


def _config():
    """The shipped model's config (its JSON), else the ``small`` preset: shapes follow the weights."""
    if SHIPPED.exists():
        from perception_nodes.forecasting.weights import read_config

        return read_config(SHIPPED)
    return small()


def _model() -> ARFM:
    if SHIPPED.exists():
        from perception_nodes.forecasting.weights import load_model

        return load_model(SHIPPED)
    torch.manual_seed(0)
    model = ARFM(small())
    with torch.no_grad():  # non-zero head output so parity is tested on real numbers
        for p in model.head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    return model.eval()


class EncoderGraph(nn.Module):
    def __init__(self, model: ARFM):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        """image (1, 3, S, S) RGB [0, 1] -> features (1, C, S/4, S/4), global_tokens (1, G, Cg)."""
        fmaps, tokens = self.model.encode_image(image)
        return fmaps[0], tokens


class PrefillGraph(nn.Module):
    def __init__(self, model: ARFM):
        super().__init__()
        self.model = model

    def forward(self, features, global_tokens, history, observed, point_valid, noise_level=None):
        """history (1, N, S, 2) model frame, observed / point_valid float 0/1, noise_level (1,) model px
        (an input only of ``history_noise_input`` models) -> fused_last (1, N, D), prefix_k / prefix_v
        (L_time, P, H, S, hd)."""
        m = self.model
        x, step_valid, token_valid = m.sequence(
            [features],
            global_tokens,
            history,
            observed > 0.5,
            point_valid > 0.5,
            history.shape[2],
            noise_level,
        )
        last, cache = m.fusion.prefill(x, step_valid, token_valid, 1, 1)
        seg = cache.segments[0]
        return (
            last[:, global_tokens.shape[1] :],
            torch.stack([k[0] for k in seg.k]),
            torch.stack([v[0] for v in seg.v]),
        )


class StepGraph(nn.Module):
    def __init__(self, model: ARFM):
        super().__init__()
        self.model = model

    def forward(
        self, features, global_tokens, points, motion, prefix_k, prefix_v, own_k, own_v, pos, point_valid
    ):
        """points (K, N, 2) model frame; motion (K, N, motion_dim) model pixels (``sampler.step_motion``);
        own_k / own_v (L_time, K, P, H, L, hd); pos (1,) int64
        -> fused (K, N, D), own_k_out, own_v_out."""
        m = self.model
        k, n, _ = points.shape
        observed = torch.zeros(1, k * n, 1, dtype=torch.bool, device=points.device)
        pts = m.point_tokens(
            [features], points.reshape(1, k * n, 1, 2), observed, motion.reshape(1, k * n, 1, -1)
        )
        glob = m.global_tokens(global_tokens, torch.zeros(1, dtype=torch.bool, device=points.device))[:, :, 0]
        glob = glob + points.new_zeros(k, 1, 1)  # broadcast to (K, G, D) without a data-dependent Expand
        x = torch.cat((glob, pts.reshape(k, n, glob.shape[2])), dim=1)
        g = glob.shape[1]
        token_valid = torch.cat(
            (torch.ones(1, g, dtype=torch.bool, device=points.device), point_valid > 0.5), dim=1
        )
        zero = prefix_k.new_zeros(1, 1, 1, 1, prefix_k.shape[-2])
        prefix = KVSegment([t[None] for t in prefix_k.unbind(0)], [t[None] for t in prefix_v.unbind(0)], zero)
        own = KVSegment(
            list(own_k.unbind(0)), list(own_v.unbind(0)), own_k.new_zeros(1, 1, 1, 1, own_k.shape[-2])
        )
        out, cache = m.fusion.step(x, KVCache([prefix], own), pos.reshape(()), token_valid, inplace=False)
        return out[:, g:], torch.stack(cache.own.k), torch.stack(cache.own.v)


class HeadGraph(nn.Module):
    def __init__(self, model: ARFM):
        super().__init__()
        self.model = model

    def forward(self, fused, noised, t, point_valid):
        """fused (K, N, D), noised (K, N, 2), t (K,), point_valid (1, N) float -> velocity (K, N, 2)."""
        head = self.model.head
        c = head.condition(t, self.model.condition(t.shape[0], None, None, t.device))
        mods = [mod[:, None, :] for mod in head.modulations(c)]
        mask = torch.where(point_valid > 0.5, 0.0, NEG)[:, None, None, :]
        return head.run(head.base(fused), noised, mods, mask)


def _shapes(cfg, sampling):
    p = cfg.num_global_tokens + N
    heads, hd = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    return p, heads, hd, cfg.num_layers // 2, sampling.history, sampling.horizon - 1


def _inputs(kind: str) -> dict[str, np.ndarray]:
    cfg, sampling = _config(), ForecastingConfig().sampling
    rng = np.random.default_rng(0)
    p, heads, hd, lt, s, gen = _shapes(cfg, sampling)
    h4 = cfg.image_size // 4
    f32 = np.float32
    features = rng.normal(size=(1, cfg.feature_dim, h4, h4)).astype(f32)
    tokens = rng.normal(size=(1, cfg.num_global_tokens, cfg.global_dim)).astype(f32)
    valid = np.ones((1, N), f32)
    valid[0, -3:] = 0.0
    if kind == "encoder":
        return {"image": rng.uniform(0, 1, (1, 3, cfg.image_size, cfg.image_size)).astype(f32)}
    if kind == "prefill":
        hist = (
            rng.uniform(20, 230, (1, N, 1, 2)) + np.cumsum(rng.normal(0, 2, (1, N, s, 2)), axis=2)
        ).astype(f32)
        inputs = {
            "features": features,
            "global_tokens": tokens,
            "history": hist,
            "observed": (rng.random((1, N, s)) > 0.1).astype(f32),
            "point_valid": valid,
        }
        if cfg.history_noise_input:
            inputs["noise_level"] = np.array([0.4], f32)
        return inputs
    if kind == "step":
        kv = (lt, K, p, heads, gen, hd)
        return {
            "features": features,
            "global_tokens": tokens,
            "points": rng.uniform(10, 240, (K, N, 2)).astype(f32),
            "motion": rng.normal(0, 2, (K, N, cfg.motion_dim)).astype(f32),
            "prefix_k": rng.normal(size=(lt, p, heads, s, hd)).astype(f32),
            "prefix_v": rng.normal(size=(lt, p, heads, s, hd)).astype(f32),
            "own_k": rng.normal(size=kv).astype(f32),
            "own_v": rng.normal(size=kv).astype(f32),
            "pos": np.array([3], np.int64),
            "point_valid": valid,
        }
    return {
        "fused": rng.normal(size=(K, N, cfg.hidden_size)).astype(f32),
        "noised": rng.normal(size=(K, N, 2)).astype(f32),
        "t": rng.uniform(0, 1, K).astype(f32),
        "point_valid": valid,
    }


def _spec(name: str, graph: type[nn.Module], kind: str, outputs: list[str]):
    return ExportSpec(
        name=name,
        config=_config(),
        build=lambda: graph(_model()).eval(),
        example_inputs=lambda: _inputs(kind),
        output_names=outputs,
    )


EXPORTS = (
    []
    if ExportSpec is None
    else [
        _spec("arfm_small_encoder", EncoderGraph, "encoder", ["features", "global_tokens"]),
        _spec("arfm_small_prefill", PrefillGraph, "prefill", ["fused_last", "prefix_k", "prefix_v"]),
        _spec("arfm_small_step", StepGraph, "step", ["fused", "own_k_out", "own_v_out"]),
        _spec("arfm_small_head", HeadGraph, "head", ["velocity"]),
    ]
)
