"""EISEN inference up to the label map (before connected components), in two paths.

- ``EisenSegmenter`` (fast, default): static shapes, everything random comes in as noise tensors (so a
  frame's result is reproducible from its seed and the module exports to ONNX), tile-layout affinities,
  ``kprop_fast``, Gumbel-top-k competition.
- ``segment_reference``: the official computation: per-edge gathered logits on the [N, S] sample layout
  (official per-pixel random global samples by default), a sparse graph built per frame, sparse KProp,
  categorical agent sampling.
"""

from __future__ import annotations

import torch
from torch import nn

from perception_nodes.segmentation import affinity as aff
from perception_nodes.segmentation.competition import categorical_sampler, competition, gumbel_sampler
from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.kprop import initial_state, kprop_fast, kprop_reference
from perception_nodes.segmentation.network import EisenNet

NOISE_NAMES = ("h0_noise", "seed_noise", "gumbel", "fitness_noise")


def make_noise(cfg: EisenConfig, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Every random draw of one inference, from ``seed`` (reproducible per frame).

    h0_noise (B, N, D) normal; seed_noise (B, N) uniform (the KProp seed node is its argmax);
    gumbel (B, R+1, N) Gumbel(0, 1) for agent sampling; fitness_noise (B, R, M, D) uniform.
    """
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    h, w = cfg.map_size
    N, D, R, M = h * w, cfg.hidden_dim, cfg.competition_rounds, cfg.num_masks
    u = torch.rand(batch, R + 1, N, generator=g).clamp(1e-10, 1 - 1e-7)
    return {
        "h0_noise": torch.randn(batch, N, D, generator=g),
        "seed_noise": torch.rand(batch, N, generator=g),
        "gumbel": -torch.log(-torch.log(u)),
        "fitness_noise": torch.rand(batch, max(R, 1), M, D, generator=g),
    }


class EisenSegmenter(nn.Module):
    """image (B, 3, H, W) float RGB 0-255 at ``cfg.input_size`` + noise -> (labels (B, h, w) int32 agent
    index per map pixel, confidence (B, h, w) float32 winning mask probability)."""

    def __init__(self, cfg: EisenConfig, net: EisenNet | None = None, early_exit: bool = False):
        super().__init__()
        self.cfg = cfg
        self.net = net if net is not None else EisenNet(cfg)
        self.layout = aff.inference_layout(cfg)
        self.early_exit = early_exit

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.layout = self.layout.to(self.net.pixel_mean.device)  # index tensors follow the module
        return out

    def forward(self, image, h0_noise, seed_noise, gumbel, fitness_noise):
        cfg = self.cfg
        key, query = self.net(image)
        layout = self.layout
        a = aff.softmax_max_norm(aff.affinity_logits(key, query, layout))
        h0, act = initial_state(h0_noise, seed_noise)
        tol = cfg.kprop_tol if self.early_exit else 0.0
        plateau = kprop_fast(a, h0, act, layout, cfg.kprop_iters, cfg.kprop_thresh, cfg.kprop_dtype, tol)
        masks, _ = competition(
            plateau, cfg, gumbel_sampler(gumbel, cfg.num_masks), lambda shape, rnd: fitness_noise[:, rnd]
        )
        conf, labels = masks.max(-1)
        return labels.to(torch.int32), conf


# -- reference path ------------------------------------------------------------------------------------------


def official_samples(cfg: EisenConfig, generator: torch.Generator) -> torch.Tensor:
    """(N, S) official sample indices: the local window (N where outside) + per-pixel random global nodes."""
    h, w = cfg.map_size
    layout = aff.make_layout(h, w, cfg.tile, cfg.local_window, ())
    local = aff.sample_index(layout)
    glob = torch.randint(h * w, (h * w, cfg.num_global), generator=generator)
    return torch.cat([local, glob], dim=1)


def gathered_logits(key: torch.Tensor, query: torch.Tensor, samples: torch.Tensor, chunk: int = 2048):
    """Official per-edge logits (N, S) for one image: gather keys per edge (zero key where invalid)."""
    C = key.shape[0]
    k = torch.cat([key.reshape(C, -1).t(), key.new_zeros(1, C)])  # (N + 1, C)
    q = query.reshape(C, -1).t()
    out = []
    for start in range(0, q.shape[0], chunk):
        idx = samples[start : start + chunk]
        out.append((q[start : start + chunk].unsqueeze(1) * k[idx]).sum(-1))
    return torch.cat(out) * C**-0.5


@torch.no_grad()
def segment_reference(
    net: EisenNet,
    image: torch.Tensor,
    cfg: EisenConfig,
    seed: int,
    samples: torch.Tensor | None = None,
    noise: dict[str, torch.Tensor] | None = None,
    sampler: str = "categorical",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official computation for one image (1, 3, H, W) -> labels (h, w) int32, confidence (h, w).

    ``samples`` (N, S) fixes the sample layout (default: official random); ``noise`` (``make_noise``) fixes
    h0 and the KProp seed, as in the fast path. ``sampler``: "categorical" (official agent sampling and
    fitness noise from ``seed``) or "gumbel" (the noise's Gumbel draws and fitness noise, as the fast path).
    """
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    key, query = net(image)
    dev = key.device
    if samples is None:
        samples = official_samples(cfg, g)
    samples = samples.to(dev)
    a = aff.softmax_max_norm(gathered_logits(key[0], query[0], samples))
    noise = noise if noise is not None else make_noise(cfg, 1, seed)
    h0, act = initial_state(noise["h0_noise"].to(dev), noise["seed_noise"].to(dev))
    state = kprop_reference(a, samples, h0[0], act[0], cfg.kprop_iters, cfg.kprop_thresh)
    h, w = cfg.map_size
    plateau = state.reshape(1, h, w, -1)
    if sampler == "gumbel":
        gumbel, fitness = noise["gumbel"].to(dev), noise["fitness_noise"].to(dev)
        masks, _ = competition(
            plateau, cfg, gumbel_sampler(gumbel, cfg.num_masks), lambda s, r: fitness[:, r]
        )
    else:
        gd = torch.Generator(device=dev).manual_seed(int(seed) % (2**63))
        masks, _ = competition(
            plateau,
            cfg,
            categorical_sampler(cfg.num_masks, gd),
            lambda shape, rnd: torch.rand(shape, generator=gd, device=dev),
        )
    conf, labels = masks.max(-1)
    return labels[0].to(torch.int32), conf[0]
