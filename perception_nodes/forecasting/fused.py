"""Eager CPU kernels of the fast sampler: the flow head and the fusion transformer's decode step with their
constants folded into fewer, larger ops (equal to the modules up to float rounding).

On a CPU a ``small`` forecast update is thousands of tiny ops, so op count, not FLOPs, sets its latency.
- ``FusedHead``: per-Euler-time adaLN folded into ``layer_norm``'s affine; q/k/v and gate/up one matmul each.
- ``FusedFusion``: one decode step of the fusion transformer for K samples. RMSNorm weights are folded into
  the next linear's columns, q/k/v and gate/up are one matmul each, the attention scale is folded into the
  query rows, and RoPE (a fixed rotation per position) is folded into the query/key rows of each future
  step's weights, so a time layer needs no rotation ops. The causal time layers read a flat per-sample KV
  buffer ``FlatCache`` (the observed history copied per sample, then the generated steps) with two batched
  matmuls, instead of one einsum per cache segment.
- ``FusedPointTokens``: the point tokens of generated steps (never observed), with the constant embedding
  and the displacement scale folded into one projection matmul.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from perception_nodes.forecasting.network import FusionTransformer, rope_table


class FusedHead:
    """The flow head with its per-Euler-time adaLN folded in, for eager sampling with a batch-shared
    conditioning (``FastSampler``): per layer LayerNorm + modulate is one ``layer_norm`` with the modulation
    as its affine, q/k/v and gate/up are one matmul each, and the gated residuals are ``addcmul``. Equal to
    ``FlowHead.run`` up to float rounding, with about half the ops (the head runs once per Euler step)."""

    def __init__(self, head):
        self.head = head
        self.eps = [layer.input_layernorm.eps for layer in head.layers]
        self.final_eps = head.predictor.norm_final.eps
        with torch.no_grad():
            self.w_noise = head.feature_projection.weight[:, :2].t().contiguous()  # (2, D)
            self.qkv = [
                (
                    torch.cat([p.weight for p in (a.q_proj, a.k_proj, a.v_proj)]),
                    torch.cat([p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]),
                )
                for a in (layer.self_attn for layer in head.layers)
            ]
            self.gate_up = [
                (
                    torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
                    torch.cat([layer.mlp.gate_proj.bias, layer.mlp.up_proj.bias]),
                )
                for layer in head.layers
            ]

    @staticmethod
    def table(mods: list[torch.Tensor], dim: int) -> list[list[torch.Tensor]]:
        """adaLN parameters [(1, 1, 6D) per layer..., (1, 1, 2D)] of one Euler time -> per layer
        [shift1, 1 + scale1, gate1, shift2, 1 + scale2, gate2] and [shift, 1 + scale] as (D,) vectors."""
        out = []
        for mod in mods:
            parts = [m.reshape(dim) for m in mod.reshape(-1, dim).unbind(0)]
            out.append([p + 1 if i % 3 == 1 else p for i, p in enumerate(parts)])
        return out

    def __call__(self, base: torch.Tensor, noised: torch.Tensor, table, mask) -> torch.Tensor:
        """base (K, N, D), noised (K, N, 2), table from ``table``, mask additive (1, 1, 1, N) -> (K, N, 2)."""
        k, n, d = base.shape
        x = torch.addmm(base.reshape(k * n, d), noised.reshape(k * n, 2), self.w_noise).view(k, n, d)
        for layer, mods, eps, (w_qkv, b_qkv), (w_gu, b_gu) in zip(
            self.head.layers, table, self.eps, self.qkv, self.gate_up, strict=False
        ):
            sh1, sc1, g1, sh2, sc2, g2 = mods
            attn = layer.self_attn
            h = F.layer_norm(x, (d,), sc1, sh1, eps)
            qkv = F.linear(h, w_qkv, b_qkv).view(k, n, 3, attn.heads, attn.head_dim)
            x = torch.addcmul(x, g1, attn.o_proj(attend(qkv, mask)))
            gate, up = F.linear(F.layer_norm(x, (d,), sc2, sh2, eps), w_gu, b_gu).chunk(2, dim=-1)
            x = torch.addcmul(x, g2, layer.mlp.down_proj(F.silu(gate) * up))
        shift, scale = table[-1]
        return self.head.predictor.linear(F.layer_norm(x, (d,), scale, shift, self.final_eps))


def attend(qkv: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None) -> torch.Tensor:
    """Attention across the N tokens of each batch entry: qkv (B, N, 3, H, hd), mask additive broadcastable
    to (B, H, N, N) or None -> (B, N, H * hd). (On a CPU, matmul + softmax variants measured no faster than
    SDPA at these sizes, and one that multiplies the values from the left was 3x slower in most processes.)"""
    b, n, _, heads, hd = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return y.transpose(1, 2).reshape(b, n, heads * hd)


class FusedPointTokens:
    """``ARFM.point_tokens`` for generated steps (never observed) with its constants folded: the 'unobserved'
    embedding and the displacement scale go into the projection, the Fourier frequencies are kept, and the
    inputs are one concatenation and one matmul. Equal to ``point_tokens`` up to float rounding."""

    def __init__(self, model):
        cfg, proj = model.cfg, model.point_projection
        self.cfg, self.fourier = cfg, 4 * cfg.num_fourier_bands if cfg.use_position_input else 0
        with torch.no_grad():
            w = proj.weight.clone()  # (D, in): [fourier | features | motion]
            feats = slice(self.fourier, self.fourier + cfg.feature_dim)
            self.bias = proj.bias + w[:, feats] @ model.point_observed_embedding.weight[0]
            if cfg.use_motion_input:
                w[:, feats.stop :] /= cfg.displacement_scale
            self.weight_t = w.t().contiguous()
        bands = torch.arange(cfg.num_fourier_bands, dtype=torch.float32, device=proj.weight.device)
        self.freqs = (2.0**bands) * math.pi / cfg.coord_size  # (bands,) radians per model pixel

    def __call__(self, fmaps: list[torch.Tensor], pos: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """fmaps [(1, C, h, w)], pos (M, 2) model frame, motion (M, cfg.motion_dim) model pixels -> tokens
        (M, D)."""
        cfg, m = self.cfg, pos.shape[0]
        grid = pos.mul(2.0 / cfg.coord_size).sub_(1.0).view(1, m, 1, 2)
        feats = [
            F.grid_sample(f, grid, mode=cfg.feature_sampling, padding_mode="border", align_corners=False)
            for f in fmaps
        ]  # [(1, C_i, M, 1)]
        parts = [f.view(f.shape[1], m).t() for f in feats]
        if self.fourier:
            ang = pos.unsqueeze(-1) * self.freqs.to(pos.dtype)  # (M, 2, bands)
            parts.insert(0, torch.cat((ang.sin(), ang.cos()), dim=-1).view(m, self.fourier))
        if cfg.use_motion_input:
            parts.append(motion)
        return torch.addmm(self.bias, torch.cat(parts, dim=1), self.weight_t)


@dataclasses.dataclass
class FlatCache:
    """Keys/values of the causal time layers for K samples, one buffer per layer: (K, P, L, D) with
    L = history + horizon and heads side by side in D; slots [0, history) hold the observed history
    (post-RoPE, the same for every sample), slot history + i the generated step i. ``mask`` (1, P, 1,
    history) additive: history steps a token may not attend to (None when all may)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mask: torch.Tensor | None
    history: int


def _rope_matrix(position: int, heads: int, head_dim: int, theta: float) -> torch.Tensor:
    """(D, D) block-diagonal matrix R with rope(x) == x @ R.T per head (rotate-half convention)."""
    cos, sin = (c.reshape(head_dim) for c in rope_table(torch.tensor([position]), head_dim, theta))
    half = head_dim // 2
    rot = torch.zeros(head_dim, head_dim)
    idx = torch.arange(half)
    rot[idx, idx + half] = -1.0  # rotated[:half] = -x[half:]
    rot[idx + half, idx] = 1.0  # rotated[half:] = x[:half]
    block = torch.diag(cos) + sin[:, None] * rot
    return torch.block_diag(*[block] * heads)


class FusedFusion:
    """Decode steps of a ``FusionTransformer`` with its constants folded (module docstring). Built once
    per model and history length; ``step`` equals ``FusionTransformer.step`` up to float rounding."""

    def __init__(self, fusion: FusionTransformer, first_position: int, horizon: int):
        cfg = fusion.cfg
        self.heads, self.head_dim, self.dim = cfg.num_heads, fusion.head_dim, cfg.hidden_size
        like = fusion.norm.weight  # constants on the weights' device and dtype
        self.eye = torch.eye(self.heads, dtype=like.dtype, device=like.device).view(self.heads, self.heads, 1)
        self.eps = cfg.norm_eps
        self.final = fusion.norm.weight
        self.layers = []
        with torch.no_grad():
            for layer in fusion.layers:
                self.layers.append(self._fold(layer, first_position, horizon, cfg.rope_theta))

    def _fold(self, layer, first: int, horizon: int, theta: float) -> dict:
        a, mlp = layer.self_attn, layer.mlp
        g_in, g_post = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
        scale = self.head_dim**-0.5
        w_q, b_q = a.q_proj.weight * scale, a.q_proj.bias * scale
        w_k, b_k, w_v, b_v = a.k_proj.weight, a.k_proj.bias, a.v_proj.weight, a.v_proj.bias
        if layer.time:  # per future step: rotate the q/k rows by RoPE at that step's position
            rots = [_rope_matrix(first + i, self.heads, self.head_dim, theta).to(w_q) for i in range(horizon)]
            qkv = [
                (
                    torch.cat((r @ w_q, r @ w_k, w_v)) * g_in,
                    torch.cat((r @ b_q, r @ b_k, b_v)),
                )
                for r in rots
            ]
        else:
            qkv = [(torch.cat((w_q, w_k, w_v)) * g_in, torch.cat((b_q, b_k, b_v)))]
        return {
            "time": layer.time,
            "qkv": [(w.contiguous(), b.contiguous()) for w, b in qkv],
            "o": (a.o_proj.weight, a.o_proj.bias),
            "gate_up": (
                (torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)) * g_post).contiguous(),
                torch.cat((mlp.gate_proj.bias, mlp.up_proj.bias)),
            ),
            "down": (mlp.down_proj.weight, mlp.down_proj.bias),
        }

    def flat_cache(self, cache, samples: int, horizon: int, reuse: FlatCache | None) -> FlatCache:
        """The flat buffers for K = ``samples`` from a ``KVCache`` holding only the history segment
        (``FusionTransformer.prefill`` without text); ``reuse``: earlier buffers of the same shapes."""
        (hist,) = cache.segments
        _, p, heads, s, hd = hist.k[0].shape
        shape = (samples, p, s + horizon, heads * hd)
        if reuse is None or tuple(reuse.k[0].shape) != shape or reuse.k[0].dtype != hist.k[0].dtype:
            like = hist.k[0]
            reuse = FlatCache(
                [like.new_empty(shape) for _ in hist.k], [like.new_empty(shape) for _ in hist.v], None, s
            )
        for dst, src in zip(reuse.k + reuse.v, hist.k + hist.v, strict=True):
            dst[:, :, :s].copy_(src.transpose(2, 3).reshape(1, p, s, heads * hd))
        mask = hist.mask[:, :, 0]  # (1, P, 1, S)
        reuse.mask = mask if bool((mask != 0).any()) else None
        return reuse

    def step(self, x: torch.Tensor, cache: FlatCache, index: int, space_mask: torch.Tensor | None):
        """x (K, P, D) new tokens of generated step ``index`` -> fused (K, P, D); writes the step's keys and
        values into ``cache``. space_mask additive (1, 1, 1, P) or None (every token valid)."""
        t = 0
        for layer in self.layers:
            h = F.rms_norm(x, (self.dim,), None, self.eps)
            if layer["time"]:
                y = self._time(h, layer["qkv"][index], cache, t, index)
                t += 1
            else:
                y = self._space(h, layer["qkv"][0], space_mask)
            x = x + F.linear(y, *layer["o"])
            gate, up = F.linear(F.rms_norm(x, (self.dim,), None, self.eps), *layer["gate_up"]).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, *layer["down"])
        return F.rms_norm(x, (self.dim,), self.final, self.eps)

    def _time(self, h, qkv_w, cache: FlatCache, t: int, index: int) -> torch.Tensor:
        """Causal attention over the history and generated steps 0..index of each token and sample. Per
        (sample, token) the heads' queries form a block-diagonal (H, D) matrix, so each of scores and values
        is one (H x D) x (D x L) product per token instead of H tiny ones (H x the FLOPs; 1.3x faster at
        H = 4)."""
        k_, p, d = h.shape
        q, kn, vn = F.linear(h, *qkv_w).view(k_, p, 3, d).unbind(2)  # (K, P, D) each
        slot = cache.history + index
        keys, values = cache.k[t], cache.v[t]
        keys[:, :, slot].copy_(kn)
        values[:, :, slot].copy_(vn)
        q_blocks = (q.view(k_, p, 1, self.heads, self.head_dim) * self.eye).view(k_, p, self.heads, d)
        scores = q_blocks @ keys[:, :, : slot + 1].transpose(-1, -2)  # (K, P, H, L)
        if cache.mask is not None:
            scores[..., : cache.history] += cache.mask
        w = torch.softmax(scores, dim=-1)
        y = (w @ values[:, :, : slot + 1]).view(k_, p, self.heads, self.heads, self.head_dim)
        return torch.diagonal(y, dim1=2, dim2=3).transpose(-1, -2).reshape(k_, p, d)

    def _space(self, h, qkv_w, mask) -> torch.Tensor:
        """Attention across the P tokens of the step, per sample (scale folded into the query rows)."""
        k_, p, _ = h.shape
        return attend(F.linear(h, *qkv_w).view(k_, p, 3, self.heads, self.head_dim), mask, 1.0)
