"""ARFM network (torch only): point/global tokens, a fusion transformer, and a DiT-style flow head.

Shapes (B batch, N points, G global tokens, P = G + N tokens per step, S steps, D width):

- point positions ``pos`` (B, N, S, 2) in the model frame (``coord_size`` pixels, x right, y down);
- fusion tokens (B, P, S, D), global tokens first; even layers attend causally over S (RoPE), odd layers
  over the P tokens of the same step; so a step's output never depends on a later step (causal);
- the flow head maps (fused point states (B, N, S, D), noised displacement (B, N, S, 2), flow time t (B,))
  to the velocity (B, N, S, 2) of each step's next displacement, x_{s+1} - x_s, in units of
  ``displacement_scale`` pixels; x_t = t * data + (1 - t) * noise (t = 1 is data).

The leaf module names (q_proj, gate_proj, input_layernorm, adaln_modulation, ...) follow the released ARFM
code so that published weights map by prefix only (``weights.py``). Incremental decoding with a KV cache
lives in ``FusionTransformer.prefill`` / ``step``; sampling in ``sampler.py``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from perception_nodes.forecasting.config import ARFMConfig

SMALL_GEMV = 1 << 20  # per-sample value caches up to this many elements are reduced by mul + sum
HISTORY_NOISE_UNIT_PX = 0.1  # the noise level enters in these units, so its vector learns at a usual pace
NEG = -1e4  # additive mask value: exp(NEG) == 0 in fp16/fp32 and never NaN when a row is fully masked
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- building blocks -------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or x.dtype != self.weight.dtype:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one kernel instead of five


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden)
        self.up_proj = nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the last dim (halves rotated, as Llama); cos/sin broadcast to x (..., S, hd).
    The half size is read from cos (a constant) so that exported graphs slice with static bounds."""
    half = cos.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with biases; optional RoPE on queries and keys."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        """(..., L, D) -> (..., H, L, hd)."""
        y = proj(x)
        return y.view(*y.shape[:-1], self.heads, self.head_dim).transpose(-3, -2)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """(..., H, L, hd) -> (..., L, D) through o_proj."""
        y = y.transpose(-3, -2)
        return self.o_proj(y.reshape(*y.shape[:-2], self.heads * self.head_dim))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        rope_cs: tuple | None = None,
        return_kv: bool = False,
    ):
        """x (B, L, D); mask additive, broadcastable to (B, H, L, L)."""
        q, k, v = self.split(x, self.q_proj), self.split(x, self.k_proj), self.split(x, self.v_proj)
        if rope_cs is not None:
            q, k = rope(q, *rope_cs), rope(k, *rope_cs)
        mask = None if mask is None else mask.to(q.dtype)  # SDPA wants the query's dtype (autocast)
        out = self.merge(_sdpa(q, k, v, mask))
        return (out, k, v) if return_kv else out


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention on (..., H, L, hd). Inputs with more than one batch dim are flattened to
    4-D first: on CPU, 5-D inputs (or a mask that must broadcast over two batch dims) send SDPA to its slow
    generic path (about 5x slower for the prefill's spatial layers)."""
    if q.dim() == 4 or torch.onnx.is_in_onnx_export():  # exported graphs keep the static broadcast
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    lead = q.shape[:-3]
    if mask is not None:
        mask = mask.expand(*lead, *mask.shape[-3:]).reshape(-1, *mask.shape[-3:])
    out = F.scaled_dot_product_attention(
        q.reshape(-1, *q.shape[-3:]),
        k.reshape(-1, *k.shape[-3:]),
        v.reshape(-1, *v.shape[-3:]),
        attn_mask=mask,
    )
    return out.reshape(*lead, *out.shape[-3:])


def rope_table(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (..., head_dim) for integer ``positions`` (...)."""
    inv = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    ang = positions.to(torch.float32)[..., None] * inv
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos(), ang.sin()


# -- fusion transformer ----------------------------------------------------------------------------
class FusionLayer(nn.Module):
    """Pre-norm transformer layer (RMSNorm, attention, SwiGLU); ``time`` layers are causal with RoPE."""

    def __init__(self, cfg: ARFMConfig, time: bool):
        super().__init__()
        self.time = time
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps)

    def forward(self, x, mask, rope_cs=None, return_kv=False):
        out = self.self_attn(self.input_layernorm(x), mask, rope_cs, return_kv)
        attn, kv = (out[0], out[1:]) if return_kv else (out, None)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return (x, kv) if return_kv else x


@dataclasses.dataclass
class KVSegment:
    """Cached keys/values of the causal time layers (post-RoPE) for a run of steps.

    Per time layer k, v: (Kb, Pb, H, L, hd), broadcast against the (K, P) tokens being decoded: the text
    prefix is shared by all tokens and samples (1, 1), the observed history by all samples (1, P), generated
    steps are per sample (K, P). mask: additive key mask broadcastable to (Kb, Pb, 1, 1, L).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    mask: torch.Tensor

    @property
    def length(self) -> int:
        return self.k[0].shape[-2]


@dataclasses.dataclass
class KVCache:
    """Fixed segments (text, history) followed by the ``own`` segment that ``step`` writes at ``pos``."""

    segments: list[KVSegment]
    own: KVSegment

    @property
    def offset(self) -> int:
        """RoPE position of own index 0."""
        return sum(s.length for s in self.segments)


class FusionTransformer(nn.Module):
    def __init__(self, cfg: ARFMConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList([FusionLayer(cfg, time=i % 2 == 0) for i in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)

    @property
    def head_dim(self) -> int:
        return self.cfg.hidden_size // self.cfg.num_heads

    def forward(
        self,
        x: torch.Tensor,
        step_valid: torch.Tensor,
        token_valid: torch.Tensor,
        first_position: int = 0,
        return_kv: bool = False,
    ):
        """Full causal pass. x (B, P, S, D); step_valid (B, P, S) bool: a step a token may attend to
        (always itself); token_valid (B, P) bool: a token other tokens may attend to in spatial layers.
        Returns (B, P, S, D) (and per time layer (k, v) of shape (B, P, H, S, hd) if ``return_kv``)."""
        s = x.shape[2]
        idx = torch.arange(s, device=x.device)
        causal = idx[:, None] >= idx[None, :]  # (S query, S key)
        keys = step_valid[:, :, None, :] | (idx[:, None] == idx[None, :])  # (B, P, S, S): valid keys or self
        time_mask = torch.where(causal & keys, 0.0, NEG).to(x.dtype)[:, :, None]  # (B, P, 1, S, S)
        space_mask = torch.where(token_valid, 0.0, NEG).to(x.dtype)[:, None, None, None, :]  # (B, 1, 1, 1, P)
        positions = torch.arange(s, device=x.device) + first_position
        rope_cs = rope_table(positions, self.head_dim, self.cfg.rope_theta)
        kvs = []
        for layer in self.layers:
            if layer.time:  # attention over steps S of each token: x (B, P, S, D)
                out = layer(x, time_mask, rope_cs, return_kv)
                if return_kv:
                    out, kv = out
                    kvs.append(kv)
                x = out
            else:  # attention over the tokens P of each step
                x = layer(x.transpose(1, 2), space_mask).transpose(1, 2)
        x = self.norm(x)
        return (x, kvs) if return_kv else x

    def empty_segment(self, k: int, p: int, length: int, like: torch.Tensor) -> KVSegment:
        shape = (k, p, self.cfg.num_heads, length, self.head_dim)
        n = len(self.layers) // 2
        return KVSegment(
            [like.new_zeros(shape) for _ in range(n)],
            [like.new_zeros(shape) for _ in range(n)],
            like.new_zeros(1, 1, 1, 1, length),
        )

    def prefill(
        self,
        x: torch.Tensor,
        step_valid: torch.Tensor,
        token_valid: torch.Tensor,
        samples: int,
        generated: int,
        text: torch.Tensor | None = None,
        reuse: KVSegment | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Fuse the shared prefix once (batch 1) and allocate the cache for ``samples`` x ``generated`` steps
        (or take ``reuse``, an own segment of a previous call with the same shapes: allocating and zeroing
        it anew costs more than the rest of the prefill on a CPU; stale entries are masked as future steps).

        x (1, P, S, D) observed history tokens, step_valid (1, P, S), token_valid (1, P); text (1, T, D) is
        run once for a single token (it is identical for all tokens, so are its states). Returns the fused
        state of the last history step (1, P, D) and the cache."""
        _, p, s, _ = x.shape
        segments = []
        if text is not None:
            t_len = text.shape[1]
            ones = torch.ones(1, 1, t_len, dtype=torch.bool, device=x.device)
            _, kvs = self.forward(text[:, None], ones, ones[:, :, 0], return_kv=True)
            segments.append(
                KVSegment([k for k, _ in kvs], [v for _, v in kvs], x.new_zeros(1, 1, 1, 1, t_len))
            )
            hist = self.empty_segment(1, p, s, x)
            hist.mask = torch.where(step_valid, 0.0, NEG).to(x.dtype)[:, :, None, None, :]
            cache = KVCache(segments, hist)
            for i in range(s):
                last, _ = self.step(x[:, :, i], cache, torch.tensor(i, device=x.device), token_valid)
            segments.append(hist)
        else:
            out, kvs = self.forward(x, step_valid, token_valid, return_kv=True)
            last = out[:, :, -1]
            segments.append(
                KVSegment(
                    [k for k, _ in kvs],
                    [v for _, v in kvs],
                    torch.where(step_valid, 0.0, NEG).to(x.dtype)[:, :, None, None, :],
                )
            )
        shape = (samples, p, self.cfg.num_heads, generated, self.head_dim)
        if reuse is None or tuple(reuse.k[0].shape) != shape or reuse.k[0].dtype != x.dtype:
            own = self.empty_segment(samples, p, generated, x)
        else:
            own = reuse
        return last, KVCache(segments, own)

    def step(
        self,
        x: torch.Tensor,
        cache: KVCache,
        pos: torch.Tensor,
        token_valid: torch.Tensor,
        inplace: bool = True,
        limit: int | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """One new step for K samples: x (K, P, D) -> fused (K, P, D). ``pos`` (0-d long tensor) indexes the
        own segment (RoPE position = cache.offset + pos); token_valid (K or 1, P) bool. With ``inplace`` the
        own segment is written in place (CUDA-graph friendly); otherwise a new cache is returned (export
        friendly). Static shapes either way, unless ``limit`` (an int > pos, eager CPU only) restricts the
        own segment's attended keys to its first ``limit`` slots (the later ones are masked anyway)."""
        s_own = cache.own.length
        rope_cs = rope_table((pos + cache.offset).reshape(1), self.head_dim, self.cfg.rope_theta)
        causal = torch.where(torch.arange(s_own, device=x.device) <= pos, 0.0, NEG).to(x.dtype)
        if limit is not None:
            causal = causal[:limit]
        space_mask = torch.where(token_valid, 0.0, NEG).to(x.dtype)[:, None, None, :]
        new_k, new_v, t = [], [], 0
        for layer in self.layers:
            h = layer.input_layernorm(x)
            if layer.time:
                attn, kk, vv = self._time_step(
                    layer.self_attn, h, cache, t, pos, rope_cs, causal, inplace, limit
                )
                new_k.append(kk)
                new_v.append(vv)
                t += 1
            else:
                attn = layer.self_attn(h, space_mask)
            x = x + attn
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if not inplace:
            cache = KVCache(cache.segments, KVSegment(new_k, new_v, cache.own.mask))
        return self.norm(x), cache

    def _time_step(
        self, attn: Attention, h, cache: KVCache, t: int, pos, rope_cs, causal, inplace: bool, limit=None
    ):
        k_, p, _ = h.shape
        heads, hd = attn.heads, attn.head_dim
        cos, sin = rope_cs
        q = rope(attn.q_proj(h).view(k_, p, heads, hd), cos, sin) * (hd**-0.5)  # cos, sin (1, hd)
        kn = rope(attn.k_proj(h).view(k_, p, heads, hd), cos, sin)[:, :, :, None]  # (K, P, H, 1, hd)
        vn = attn.v_proj(h).view(k_, p, heads, 1, hd)
        own_k, own_v = cache.own.k[t], cache.own.v[t]
        kn, vn = kn.to(own_k.dtype), vn.to(own_v.dtype)
        if inplace:
            own_k.index_copy_(3, pos.reshape(1), kn)
            own_v.index_copy_(3, pos.reshape(1), vn)
        else:
            hit = (torch.arange(own_k.shape[3], device=h.device) == pos)[:, None]
            own_k, own_v = torch.where(hit, kn, own_k), torch.where(hit, vn, own_v)
        keys = [(seg.k[t], seg.v[t], seg.mask[..., 0, :]) for seg in cache.segments]
        own_mask = cache.own.mask[..., 0, :]
        if limit is None:
            keys.append((own_k, own_v, own_mask + causal))
        else:
            keys.append((own_k[..., :limit, :], own_v[..., :limit, :], own_mask[..., :limit] + causal))
        scores = [_seg_scores(q.to(kk.dtype), kk).float() + mask for kk, _, mask in keys]  # (K, P, H, L_i)
        w = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
        y, start = 0, 0
        for (_, vv, _), sc in zip(keys, scores, strict=True):
            y = y + _seg_values(w[..., start : start + sc.shape[-1]].to(vv.dtype), vv).float()
            start += sc.shape[-1]
        out = attn.o_proj(y.reshape(k_, p, heads * hd).to(h.dtype))
        return out, own_k, own_v


def _seg_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q (K, P, H, hd) . segment keys (Kb, Pb, H, L, hd) -> (K, P, H, L) without materialising broadcasts."""
    if k.shape[0] == 1 and k.shape[1] == 1:
        return torch.einsum("kphd,hld->kphl", q, k[0, 0])
    if k.shape[0] == 1:
        return torch.einsum("kphd,phld->kphl", q, k[0])
    return torch.einsum("kphd,kphld->kphl", q, k)


def _seg_values(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weights (K, P, H, L) . segment values (Kb, Pb, H, L, hd) -> (K, P, H, hd)."""
    if v.shape[0] == 1 and v.shape[1] == 1:
        return torch.einsum("kphl,hld->kphd", w, v[0, 0])
    if v.shape[0] == 1:
        return torch.einsum("kphl,phld->kphd", w, v[0])
    if v.numel() <= SMALL_GEMV and not torch.onnx.is_in_onnx_export():
        return (w.unsqueeze(-1) * v).sum(-2)  # on a CPU 2-7x faster than the batched GEMV at small sizes
    return torch.einsum("kphl,kphld->kphd", w, v)


# -- flow head ---------------------------------------------------------------------------------------
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def _chunks(x: torch.Tensor, n: int, size: int) -> list[torch.Tensor]:
    """Split the last dim into n pieces of a known size (static slice bounds in exported graphs)."""
    return [x[..., i * size : (i + 1) * size] for i in range(n)]


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the flow time (cos first, then sin) followed by an MLP."""

    def __init__(self, dim: int, frequency_dim: int, time_scale: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.frequency_dim, self.time_scale = frequency_dim, time_scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = (t.to(torch.float32) * self.time_scale)[..., None] * freqs
        return self.mlp(torch.cat((args.cos(), args.sin()), dim=-1).to(self.mlp[0].weight.dtype))


class HeadLayer(nn.Module):
    """DiT block: LayerNorm (no affine) + adaLN shift/scale/gate around attention and SwiGLU."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.mlp = SwiGLU(dim, hidden)
        self.input_layernorm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.post_attention_layernorm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.adaln_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.dim = dim

    def forward(self, x: torch.Tensor, mod: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B', N, D); mod (B', 1, 6D) precomputed ``adaln_modulation(c)``; mask additive (B', 1, 1, N)."""
        sh1, sc1, g1, sh2, sc2, g2 = _chunks(mod, 6, self.dim)
        x = x + g1 * self.self_attn(modulate(self.input_layernorm(x), sh1, sc1), mask)
        return x + g2 * self.mlp(modulate(self.post_attention_layernorm(x), sh2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.adaln_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.dim = dim

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift, scale = _chunks(mod, 2, self.dim)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class FlowHead(nn.Module):
    """Velocity of each point's next displacement; spatial attention across points of the same step."""

    def __init__(self, cfg: ARFMConfig, time_scale: float):
        super().__init__()
        d = cfg.head_hidden_size
        self.time_embedder = TimestepEmbedder(d, cfg.frequency_dim, time_scale)
        self.feature_projection = nn.Linear(2 + cfg.hidden_size, d)  # [noised (2), fused state]
        self.layers = nn.ModuleList(
            [
                HeadLayer(d, cfg.head_heads, cfg.head_intermediate_size, cfg.norm_eps)
                for _ in range(cfg.head_layers)
            ]
        )
        self.predictor = FinalLayer(d, 2)

    def modulations(self, c: torch.Tensor) -> list[torch.Tensor]:
        """Per layer (and the final layer) adaLN parameters for conditioning c (..., D)."""
        return [layer.adaln_modulation(c) for layer in self.layers] + [self.predictor.adaln_modulation(c)]

    def condition(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        c = self.time_embedder(t)
        return c if cond is None else c + cond

    def base(self, fused: torch.Tensor) -> torch.Tensor:
        """The noise-independent part of the input projection: W_fused @ fused + b (..., D)."""
        w = self.feature_projection.weight
        return F.linear(fused, w[:, 2:], self.feature_projection.bias)

    def run(
        self, base: torch.Tensor, noised: torch.Tensor, mods: list[torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """base (B', N, D), noised (B', N, 2), mods [(B' or 1, 1, 6D)..., (.., 1, 2D)] -> (B', N, 2)."""
        x = base + F.linear(noised, self.feature_projection.weight[:, :2])
        for layer, mod in zip(self.layers, mods[:-1], strict=True):
            x = layer(x, mod, mask)
        return self.predictor(x, mods[-1])

    def forward(
        self,
        fused: torch.Tensor,
        noised: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None,
        point_valid: torch.Tensor,
    ) -> torch.Tensor:
        """fused (B, N, S, Df), noised (B, N, S, 2), t (B,) or per step (B, S), cond (B, D) or None,
        point_valid (B, N) -> velocity (B, N, S, 2). All points of a step share its flow time, as in
        sampling."""
        b, n, s, _ = fused.shape
        t = t[:, None].expand(b, s) if t.dim() == 1 else t
        c = self.condition(t, None if cond is None else cond[:, None])  # (B, S, D)
        mods = [m.reshape(b * s, 1, -1) for m in self.modulations(c)]  # (B*S, 1, .)
        mask = torch.where(point_valid, 0.0, NEG).to(fused.dtype)
        mask = mask.repeat_interleave(s, dim=0)[:, None, None, :]
        x_base = self.base(fused).transpose(1, 2).reshape(b * s, n, -1)
        x_noise = noised.transpose(1, 2).reshape(b * s, n, 2)
        v = self.run(x_base, x_noise, mods, mask)
        return v.reshape(b, s, n, 2).transpose(1, 2)


# -- image encoder (small) -------------------------------------------------------------------------
def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.SiLU())


class SmallImageEncoder(nn.Module):
    """Dense features at stride 4 and sqrt(G) x sqrt(G) global tokens from a (B, 3, S, S) image in [0, 1]."""

    def __init__(self, cfg: ARFMConfig):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 32, 2), _conv(32, 32, 1))  # stride 2
        self.down1 = nn.Sequential(_conv(32, 48, 2), _conv(48, 48, 1))  # stride 4
        self.down2 = nn.Sequential(_conv(48, 96, 2), _conv(96, 96, 1))  # stride 8
        self.down3 = nn.Sequential(_conv(96, 128, 2), _conv(128, 128, 1))  # stride 16
        self.dense = nn.Conv2d(48 + 96 + 128, cfg.feature_dim, 1)
        self.global_proj = nn.Conv2d(128, cfg.global_dim, 1)
        self.tokens_side = round(cfg.num_global_tokens**0.5)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 3, S, S) RGB in [0, 1] -> dense (B, C, S/4, S/4), global tokens (B, G, Cg)."""
        x = (image - self.mean) / self.std
        if not self.training and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions (4.8 -> 4.0 ms)
        f4 = self.down1(self.stem(x))
        f8 = self.down2(f4)
        f16 = self.down3(f8)
        size = f4.shape[-2:]
        up8 = F.interpolate(f8, size=size, mode="bilinear", align_corners=False)
        up16 = F.interpolate(f16, size=size, mode="bilinear", align_corners=False)
        dense = self.dense(torch.cat((f4, up8, up16), dim=1)).contiguous()
        tokens = self.global_proj(F.adaptive_avg_pool2d(f16, self.tokens_side))
        return dense, tokens.flatten(2).transpose(1, 2)


# -- the model -------------------------------------------------------------------------------------
def fourier_position(pos: torch.Tensor, size: float, bands: int) -> torch.Tensor:
    """(..., 2) positions -> (..., 4 * bands) [sin, cos] of 2^k * pi * pos / size per axis."""
    freqs = (2.0 ** torch.arange(bands, device=pos.device, dtype=pos.dtype)) * math.pi
    ang = (pos / size)[..., None] * freqs  # (..., 2, bands)
    return torch.cat((ang.sin(), ang.cos()), dim=-1).flatten(-2)


def sample_features(fmaps: list[torch.Tensor], pos: torch.Tensor, size: float, mode: str) -> torch.Tensor:
    """Look up feature maps [(B, C_i, h_i, w_i)] at positions (B, N, S, 2) -> (B, N, S, sum C_i).

    The model frame [0, size) spans each map exactly (pixel i covers [i, i+1) * size / w)."""
    b, n, s, _ = pos.shape
    grid = (pos / size * 2.0 - 1.0).reshape(b, n * s, 1, 2)
    outs = [
        F.grid_sample(f, grid.to(f.dtype), mode=mode, padding_mode="border", align_corners=False)
        for f in fmaps
    ]
    return torch.cat(outs, dim=1).reshape(b, -1, n, s).permute(0, 2, 3, 1)


def motion_inputs(pos: torch.Tensor, window: int) -> torch.Tensor:
    """Positions (B, N, S, 2) -> motion input (B, N, S, 2 or 4): each step's previous displacement
    x_s - x_{s-1} (0 at the first step) and, with ``window`` W > 0, the mean displacement over the last W
    steps (x_s - x_{s-W}) / W, positions before the first step taken as the first (still)."""
    first = pos[:, :, :1]
    prev = torch.cat((torch.zeros_like(first), pos[:, :, 1:] - pos[:, :, :-1]), dim=2)
    if window <= 0:
        return prev
    back = (torch.arange(pos.shape[2], device=pos.device) - window).clamp(min=0)  # static gather (ONNX)
    return torch.cat((prev, (pos - pos.index_select(2, back)) / window), dim=-1)


class ARFM(nn.Module):
    """Autoregressive flow-matching point-track forecaster."""

    def __init__(self, cfg: ARFMConfig):
        super().__init__()
        self.cfg = cfg
        self.image_encoder = SmallImageEncoder(cfg) if cfg.encoder == "small_cnn" else None
        in_dim = cfg.feature_dim + (4 * cfg.num_fourier_bands if cfg.use_position_input else 0)
        in_dim += cfg.motion_dim
        self.point_projection = nn.Linear(in_dim, cfg.hidden_size)
        self.point_observed_embedding = nn.Embedding(2, cfg.feature_dim)
        self.global_projection = nn.Linear(cfg.global_dim, cfg.hidden_size)
        self.global_observed_embedding = nn.Embedding(2, cfg.global_dim)
        if cfg.history_noise_input:  # zero at first: a model starts as if every history were exact
            self.history_noise_embedding = nn.Parameter(torch.zeros(cfg.feature_dim))
        self.fusion = FusionTransformer(cfg)
        self.head = FlowHead(cfg, time_scale=cfg.flow_time_scale)
        if cfg.use_camera_motion:
            self.camera_motion_embedding = nn.Embedding(3, cfg.head_hidden_size)
        if cfg.use_text:
            self.text_projection = nn.Linear(cfg.text_dim, cfg.hidden_size)
            self.text_pooled_projection = nn.Linear(cfg.text_dim, cfg.head_hidden_size)
            self.text_mask_tokens = nn.Parameter(torch.randn(cfg.text_tokens, cfg.hidden_size))
            self.text_pooled_mask_token = nn.Parameter(torch.randn(cfg.head_hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT-style: xavier linears, zero adaLN and output layers (the head starts at velocity 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.head.time_embedder.mlp[0], self.head.time_embedder.mlp[2]):
            nn.init.normal_(emb.weight, std=0.02)
        for layer in [*self.head.layers, self.head.predictor]:
            nn.init.zeros_(layer.adaln_modulation[-1].weight)
            nn.init.zeros_(layer.adaln_modulation[-1].bias)
        nn.init.zeros_(self.head.predictor.linear.weight)

    # -- inputs --------------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, 3, S, S) RGB [0, 1] -> ([dense (B, C, h, w)], global tokens (B, G, Cg)); small encoder only."""
        if self.image_encoder is None:
            raise RuntimeError(f"{self.cfg.name} uses external encoders: pass features instead of images")
        dense, tokens = self.image_encoder(image)
        return [dense], tokens

    def point_tokens(
        self,
        fmaps: list[torch.Tensor],
        pos: torch.Tensor,
        observed: torch.Tensor,
        motion: torch.Tensor | None,
        noise_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """pos (B, N, S, 2) model frame; observed (B, N, S) bool; motion (B, N, S, cfg.motion_dim) model
        pixels (``motion_inputs``); noise_level (B,) std of the observed positions' noise, model pixels
        (``history_noise_input`` models; None: exact) -> tokens (B, N, S, D)."""
        cfg = self.cfg
        feats = sample_features(fmaps, pos, cfg.coord_size, cfg.feature_sampling)
        feats = feats + self.point_observed_embedding(observed.long())
        if cfg.history_noise_input and noise_level is not None:
            level = noise_level.to(feats.dtype)[:, None, None, None] / HISTORY_NOISE_UNIT_PX
            level = level * observed[..., None].to(feats.dtype)
            feats = feats + level * self.history_noise_embedding
        parts = [feats]
        if cfg.use_position_input:
            parts.insert(0, fourier_position(pos, cfg.coord_size, cfg.num_fourier_bands))
        if cfg.use_motion_input:
            parts.append(motion / cfg.displacement_scale)
        return self.point_projection(torch.cat(parts, dim=-1))

    def global_tokens(self, tokens: torch.Tensor, observed_steps: torch.Tensor) -> torch.Tensor:
        """tokens (B, G, Cg), observed_steps (S,) bool -> (B, G, S, D)."""
        g = tokens[:, :, None, :] + self.global_observed_embedding(observed_steps.long())[None, None]
        return self.global_projection(g)

    def text_prefix(self, batch: int, text: torch.Tensor | None, dtype, device) -> torch.Tensor | None:
        """(B, T_text, D) projected text embeddings (mask tokens when absent), or None without text."""
        if not self.cfg.use_text:
            return None
        if text is None:
            return self.text_mask_tokens.to(dtype)[None].expand(batch, -1, -1)
        return self.text_projection(text)

    def condition(
        self, batch: int, camera_motion: torch.Tensor | None, pooled_text: torch.Tensor | None, device
    ) -> torch.Tensor | None:
        """adaLN conditioning besides flow time: (B, D) or None."""
        cond = None
        if self.cfg.use_camera_motion:
            cls = camera_motion if camera_motion is not None else torch.full((batch,), 2, device=device)
            cond = self.camera_motion_embedding(cls.long())
        if self.cfg.use_text:
            pooled = (
                self.text_pooled_mask_token[None].expand(batch, -1)
                if pooled_text is None
                else self.text_pooled_projection(pooled_text)
            )
            cond = pooled if cond is None else cond + pooled
        return cond

    def sequence(self, fmaps, tokens, pos, observed, point_valid, history_len, noise_level=None):
        """Fusion input of a whole sequence: (x (B, P, S, D), step_valid (B, P, S), token_valid (B, P)).

        Steps [0, history_len) are the observed past (the image is of the last one): their global tokens
        carry the 'observed' embedding; a point's step carries it where the tracker saw the point
        (``observed``, always False after the history). Every step stays attendable (unseen history steps
        hold the track's first position). noise_level (B,): see ``point_tokens``."""
        b, n, s, _ = pos.shape
        motion = motion_inputs(pos, self.cfg.motion_window)
        pts = self.point_tokens(fmaps, pos, observed, motion, noise_level)
        glob = self.global_tokens(tokens, torch.arange(s, device=pos.device) < history_len)
        x = torch.cat((glob, pts), dim=1)
        g = glob.shape[1]
        step_valid = torch.ones(b, g + n, s, dtype=torch.bool, device=pos.device)
        token_valid = torch.cat((torch.ones(b, g, dtype=torch.bool, device=pos.device), point_valid), dim=1)
        return x, step_valid, token_valid

    def fuse(
        self, fmaps, tokens, pos, observed, point_valid, history_len, text=None, noise_level=None
    ) -> torch.Tensor:
        """Fused point states (B, N, S, D) for a whole sequence (training / no-cache sampling); with text the
        projected text tokens precede the steps of every token's time sequence."""
        x, step_valid, token_valid = self.sequence(
            fmaps, tokens, pos, observed, point_valid, history_len, noise_level
        )
        prefix = self.text_prefix(x.shape[0], text, x.dtype, x.device)
        if prefix is not None:
            x = torch.cat((prefix[:, None].expand(-1, x.shape[1], -1, -1), x), dim=2)
            step_valid = torch.cat((step_valid[:, :, :1].expand(-1, -1, prefix.shape[1]), step_valid), dim=2)
        out = self.fusion(x, step_valid, token_valid)
        return out[:, tokens.shape[1] :, self.cfg.text_prefix :]

    def forward(
        self,
        fmaps,
        tokens,
        pos,
        observed,
        point_valid,
        history_len,
        noised,
        t,
        cond=None,
        text=None,
        noise_level=None,
    ):
        """Velocity (B, N, S, 2) of every step's next displacement (teacher forcing)."""
        fused = self.fuse(fmaps, tokens, pos, observed, point_valid, history_len, text, noise_level)
        return self.head(fused, noised, t, cond, point_valid)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
