"""Competition of agents on the plateau map -> instance masks (official ``Competition``, neuroailab/EISEN).

Agents are sampled on the Sobel edge magnitude of the plateau map; each agent's mask is the (ReLU) cosine
similarity of the plateau map to its phenotype; over a few rounds, agents whose masks overlap (IoU of the
binarised masks) compete on fitness, winners are sticky and sharpen their phenotype, losers are re-seeded
where no living mask covers the map. The final masks are a softmax over the living agents.

Two samplers share the arithmetic:
- reference: categorical sampling with replacement and ``torch.rand`` fitness noise (the official code);
- fast: Gumbel-top-k on given noise tensors (static shapes, no sampling op, reproducible per frame).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=-1, eps=1e-6)


def sobel_edges(image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): channel sum of the normalised Sobel gradient magnitude (replicate pad).

    Kernel [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] / 8 and its transpose (kornia's normalised Sobel), written
    with slices so no constant tensor is created at run time (CUDA-graph and export friendly).
    """
    if mask is not None:
        image = image * mask
    x = torch.cat([image[:, :, :1], image, image[:, :, -1:]], dim=2)  # replicate padding
    x = torch.cat([x[:, :, :, :1], x, x[:, :, :, -1:]], dim=3)
    dx = x[:, :, :, 2:] - x[:, :, :, :-2]  # (B, C, H + 2, W)
    dy = x[:, :, 2:] - x[:, :, :-2]  # (B, C, H, W + 2)
    gx = (dx[:, :, :-2] + 2.0 * dx[:, :, 1:-1] + dx[:, :, 2:]) / 8.0
    gy = (dy[:, :, :, :-2] + 2.0 * dy[:, :, :, 1:-1] + dy[:, :, :, 2:]) / 8.0
    edges = (gx.square() + gy.square()).sqrt().sum(1)
    return edges * mask[:, 0] if mask is not None else edges


def indices_to_coords(idx: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Flat pixel indices (B, P) -> normalised (h, w) coordinates in [-1, 1] (B, P, 2)."""
    h = (idx // W).to(torch.float32) * (2.0 / (H - 1)) - 1.0
    w = (idx % W).to(torch.float32) * (2.0 / (W - 1)) - 1.0
    return torch.stack([h, w], dim=-1)


def _corners(pos: torch.Tensor, H: int, W: int):
    """Official ``soft_index`` sampling positions: 4 flat corner indices and bilinear weights (B, P, 4)."""
    h = ((pos[..., 0] + 1.0) * H * 0.5).clamp(0, H - 1)
    w = ((pos[..., 1] + 1.0) * W * 0.5).clamp(0, W - 1)
    h0, w0, h1, w1 = h.floor(), w.floor(), h.ceil(), w.ceil()
    weights = torch.stack(
        [(h1 - h) * (w1 - w), (h1 - h) * (w - w0), (h - h0) * (w1 - w), (h - h0) * (w - w0)], -1
    )
    idx = torch.stack([h0 * W + w0, h0 * W + w1, h1 * W + w0, h1 * W + w1], -1).long()
    return idx, weights


def gather_rows(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """values (B, N, C), idx (B, K) long -> (B, K, C): rows per batch item (one flat Gather, static)."""
    B, N, C = (int(s) for s in values.shape)
    K = int(idx.shape[1])
    offset = (torch.arange(B, device=idx.device) * N).view(B, 1)
    return values.reshape(B * N, C)[(idx + offset).reshape(-1)].reshape(B, K, C)


def soft_index(values: torch.Tensor, pos: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Bilinear read of (B, N, C) node values at agent positions (B, P, 2) -> (B, P, C)."""
    B, _, C = (int(s) for s in values.shape)
    idx, weights = _corners(pos, H, W)
    P = int(idx.shape[1])
    got = gather_rows(values, idx.reshape(B, P * 4)).reshape(B, P, 4, C)
    return (got * weights.unsqueeze(-1)).sum(2)


def masks_from_phenotypes(plateau: torch.Tensor, phenotypes: torch.Tensor) -> torch.Tensor:
    """ReLU cosine similarity (B, N, P) between the plateau (B, N, Q) and phenotypes (B, P, Q)."""
    return F.relu(
        torch.bmm(
            F.normalize(plateau, dim=-1, eps=1e-8), F.normalize(phenotypes, dim=-1, eps=1e-8).transpose(1, 2)
        )
    )


def compete(masks, fitness, alive, mask_thresh: float, compete_thresh: float) -> torch.Tensor:
    """Official ``compete_agents`` with sticky winners. masks (B, N, P), fitness/alive (B, P, 1) -> alive."""
    P = int(masks.shape[-1])
    binary = (masks > mask_thresh).to(masks.dtype)
    inter = torch.bmm(binary.transpose(1, 2), binary)  # (B, P, P)
    area = binary.sum(1)
    union = area.unsqueeze(2) + area.unsqueeze(1) - inter
    iou = inter / union.clamp(min=1e-6)
    ids = torch.arange(P, device=masks.device)
    eye = ids.view(1, P, 1) == ids.view(1, 1, P)
    disputes = (iou > compete_thresh) & ~eye
    killed = disputes & (fitness < fitness.transpose(1, 2))
    winners = alive > 0.5
    losers = ~winners
    killed = killed & ~(winners & losers.transpose(1, 2))
    killed = killed | (losers & winners.transpose(1, 2) & disputes)
    return (~killed.any(dim=2, keepdim=True)).to(masks.dtype)


def distance_weighted(plateau, pos, mask, H: int, W: int, beta: float) -> torch.Tensor:
    """Official ``compute_distance_weighted_vectors``: (B, N, Q), (B, P, 2), mask (B, N) -> (B, P, Q)."""
    ys = torch.arange(H, dtype=plateau.dtype, device=plateau.device) / (H - 1) * 2 - 1
    xs = torch.arange(W, dtype=plateau.dtype, device=plateau.device) / (W - 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(1, 1, H * W, 2)
    d = (grid - pos.unsqueeze(2)).square().sum(-1).add(1e-8).sqrt()  # (B, P, N)
    inv = (2.0 * 2.0**0.5) / (d + 1e-8)
    weights = F.softmax(beta * inv * mask.unsqueeze(1), dim=-1)
    return torch.bmm(weights, plateau)


Sampler = Callable[[torch.Tensor, int], torch.Tensor]  # (edges (B, H, W), round) -> flat indices (B, P)
Noise = Callable[[tuple[int, ...], int], torch.Tensor]  # (shape, round) -> uniform [0, 1) noise


def gumbel_sampler(gumbel: torch.Tensor, num: int) -> Sampler:
    """Gumbel-top-k on ``gumbel`` (B, R+1, N): ``num`` distinct pixels, probability ∝ edge magnitude."""

    def sample(edges: torch.Tensor, rnd: int) -> torch.Tensor:
        scores = torch.log(edges.flatten(1) + 1e-8) + gumbel[:, rnd]
        return torch.topk(scores, num, dim=-1).indices

    return sample


def categorical_sampler(num: int, generator: torch.Generator | None = None) -> Sampler:
    """The official sampler: ``num`` draws with replacement from edges / sum(edges)."""

    def sample(edges: torch.Tensor, rnd: int) -> torch.Tensor:
        probs = (edges.flatten(1) + 1e-8).clamp(min=0)
        return torch.multinomial(probs, num, replacement=True, generator=generator)

    return sample


def competition(
    plateau: torch.Tensor, cfg, sampler: Sampler, noise: Noise
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plateau map (B, H, W, Q) -> (masks (B, H, W, M), alive (B, M)). ``cfg`` is an EisenConfig."""
    B, H, W, Q = (int(s) for s in plateau.shape)
    M, N = cfg.num_masks, H * W
    plateau = l2n(plateau)
    image = plateau.permute(0, 3, 1, 2)
    flat = plateau.reshape(B, N, Q)
    agents = indices_to_coords(sampler(sobel_edges(image), 0), H, W)
    alive = torch.ones(B, M, 1, dtype=plateau.dtype, device=plateau.device)
    phenotypes = l2n(soft_index(flat, agents, H, W))
    masks = masks_from_phenotypes(flat, phenotypes)
    unharvested = 1.0 - masks.amax(-1).clamp(max=1.0)  # (B, N)
    tiebreak = 0.001 * torch.arange(M, dtype=plateau.dtype, device=plateau.device).view(1, M, 1)
    for rnd in range(cfg.competition_rounds):
        alive_t = alive.transpose(1, 2)
        availability = alive_t * masks + (1.0 - alive_t) * unharvested.unsqueeze(-1)  # (B, N, M)
        fitness = _fitness(
            flat, availability, agents, phenotypes, noise((B, M, Q), rnd) * cfg.fitness_noise, H, W
        )
        in_bounds = ((agents < 1.0) & (agents > -1.0)).all(-1, keepdim=True).to(plateau.dtype)
        fitness = fitness * in_bounds - tiebreak
        masks = masks_from_phenotypes(flat, soft_index(flat, agents, H, W))
        alive = compete(masks, fitness, alive, cfg.mask_thresh, cfg.compete_thresh) * in_bounds
        alive_t = alive.transpose(1, 2)
        unharvested = 1.0 - (masks * alive_t).amax(-1).clamp(max=1.0)
        winner = (masks > cfg.mask_thresh).to(plateau.dtype)
        winner_phen = l2n(torch.bmm(winner.transpose(1, 2), flat) / N)
        phenotypes = phenotypes + alive * winner_phen * cfg.selection_strength
        alive_mask = (alive > 0.5).to(plateau.dtype)
        unh_map = unharvested.view(B, 1, H, W)
        losers = indices_to_coords(sampler(sobel_edges(image, unh_map), rnd + 1), H, W)
        agents = agents * alive_mask + losers * (1.0 - alive_mask)
        loser_phen = l2n(distance_weighted(flat, agents, unharvested, H, W, cfg.homing_strength))
        phenotypes = l2n(alive_mask * phenotypes + (1.0 - alive_mask) * loser_phen)
    alive_t = alive.transpose(1, 2)
    final = F.softmax(cfg.mask_beta * masks * alive_t - cfg.mask_beta * (1.0 - alive_t), dim=-1) * alive_t
    return final.reshape(B, H, W, M), alive[..., 0]


def _fitness(flat, availability, agents, phenotypes, noise, H: int, W: int) -> torch.Tensor:
    """Official ``compute_compatibility`` with availability: each agent reads its own availability channel."""
    B, _, Q = (int(s) for s in flat.shape)
    M = int(agents.shape[1])
    idx, weights = _corners(agents, H, W)  # (B, M, 4)
    corner_plateau = gather_rows(flat, idx.reshape(B, M * 4)).reshape(B, M, 4, Q)
    own = torch.arange(M, device=flat.device).view(1, M, 1)
    avail = gather_rows(availability, idx.reshape(B, M * 4)).reshape(B, M, 4, M)
    avail_own = (avail * (own.unsqueeze(-1) == torch.arange(M, device=flat.device).view(1, 1, 1, M))).sum(-1)
    values = (corner_plateau * (weights * avail_own).unsqueeze(-1)).sum(2) + noise
    return (l2n(phenotypes) * l2n(values)).sum(-1, keepdim=True)
