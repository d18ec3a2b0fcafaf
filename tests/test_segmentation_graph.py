"""Affinity sampling, KProp and competition: known answers by construction and fast-vs-official parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perception_nodes.segmentation import affinity as aff
from perception_nodes.segmentation import competition as comp
from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.kprop import initial_state, kprop_fast, kprop_reference
from perception_nodes.segmentation.processor import connected_segments
from perception_nodes.segmentation.segmenter import make_noise


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _layout(h=32, w=48, window=7, m=3):
    return aff.make_layout(h, w, 8, window, aff.fixed_global_offsets(h, w, 8, m, seed=0))


def _blocks(h, w) -> torch.Tensor:
    block = torch.zeros(1, 1, h, w)
    block[..., w // 2 :] = 1
    block[..., : h // 3, : w // 3] = 2
    return block


def _block_affinities(block: torch.Tensor, layout: aff.Layout) -> torch.Tensor:
    """Hand-made affinities in the tile layout: 1 between samples of the same block, 0 otherwise."""
    own = aff.map_to_tiles(block, layout.tile)
    cols = torch.cat([aff.halo_gather(block + 1, layout) - 1, aff.global_gather(block, layout)], 2)[..., 0]
    a = (own == cols.unsqueeze(2)).float()
    return torch.where(aff.column_mask(layout)[None, None], a, torch.zeros_like(a))


def test_sample_index_matches_official_local_window():
    layout = _layout()
    idx = aff.sample_index(layout)
    h, w, r = layout.h, layout.w, layout.radius
    assert idx.shape == (h * w, layout.num_samples)
    node = 5 * w + 9  # (y=5, x=9): offsets (dy, dx) in raster order, first (-r, -r)
    assert idx[node, 0] == (5 - r) * w + (9 - r)
    assert idx[node, layout.num_local // 2] == node  # the centre sample is the node itself
    assert idx[0, 0] == h * w  # out of the image: the invalid index N, as in the official unfold


def test_tile_logits_equal_per_edge_gather():
    torch.manual_seed(0)
    layout = _layout()
    key, query = torch.randn(1, 16, layout.h, layout.w), torch.randn(1, 16, layout.h, layout.w)
    fast = aff.tiles_to_samples(aff.affinity_logits(key, query, layout), layout)[0]
    idx = aff.sample_index(layout)
    k = torch.cat([key[0].reshape(16, -1).t(), torch.zeros(1, 16)])
    ref = (query[0].reshape(16, -1).t().unsqueeze(1) * k[idx]).sum(-1) / 4.0
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_kprop_fast_equals_official_sparse_kprop_in_float64():
    torch.manual_seed(1)
    layout = _layout()
    N = layout.h * layout.w
    key = torch.randn(1, 16, layout.h, layout.w, dtype=torch.float64)
    query = torch.randn(1, 16, layout.h, layout.w, dtype=torch.float64)
    a = aff.softmax_max_norm(aff.affinity_logits(key, query, layout))
    h0, act = initial_state(torch.randn(1, N, 8, dtype=torch.float64), torch.rand(1, N, dtype=torch.float64))
    fast = kprop_fast(a, h0, act, layout, iters=12, thresh=0.7)
    a_ns = aff.tiles_to_samples(a, layout)[0]
    ref = kprop_reference(a_ns, aff.sample_index(layout), h0[0], act[0], iters=12, thresh=0.7)
    torch.testing.assert_close(fast.reshape(N, 8), ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("path", ["fast", "reference"])
def test_kprop_and_competition_recover_hand_made_blocks(path):
    cfg = EisenConfig.small(input_size=(128, 128))
    layout = aff.inference_layout(cfg)
    block = _blocks(layout.h, layout.w)
    a = _block_affinities(block, layout)
    noise = make_noise(cfg, 1, seed=3)
    h0, act = initial_state(noise["h0_noise"], noise["seed_noise"])
    if path == "fast":
        plateau = kprop_fast(a, h0, act, layout, cfg.kprop_iters, cfg.kprop_thresh)
        sampler = comp.gumbel_sampler(noise["gumbel"], cfg.num_masks)
        masks, _ = comp.competition(plateau, cfg, sampler, lambda s, r: noise["fitness_noise"][:, r])
    else:
        a_ns = aff.tiles_to_samples(a, layout)[0]
        state = kprop_reference(a_ns, aff.sample_index(layout), h0[0], act[0], cfg.kprop_iters, 0.7)
        plateau = state.reshape(1, layout.h, layout.w, -1)
        g = torch.Generator().manual_seed(0)
        sampler = comp.categorical_sampler(cfg.num_masks, g)
        masks, _ = comp.competition(plateau, cfg, sampler, lambda s, r: torch.rand(s, generator=g))
    segments = connected_segments(masks.argmax(-1)[0].numpy(), cfg.min_segment_area, cfg.max_segments)
    truth = block[0, 0].numpy().astype(int)
    assert len(np.unique(segments)) == 3
    for b in range(3):
        gt = truth == b
        best = max(((segments == k) & gt).sum() / ((segments == k) | gt).sum() for k in np.unique(segments))
        assert best == 1.0


# -- competition formulas vs literal transcriptions of the official code ----------------------------------


def _official_pairwise_iou(masks, thresh):
    m = (masks > thresh).float()
    inter = (m[..., None] * m[..., None, :]).sum(1)
    union = torch.maximum(m[..., None], m[..., None, :]).sum(1)
    return inter / union.clamp(min=1e-6)


def _official_compatibility(agents, plateau, phenotypes, availability, noise):
    B, H, W, Q = plateau.shape
    P = agents.shape[1]
    A = availability.shape[-1]
    vals = (availability[..., None] * plateau[..., None, :]).reshape(B, H * W, A * Q)
    values = comp.soft_index(vals, agents, H, W).view(B, P, A, Q) + noise
    values = comp.l2n(values)
    values = (values * torch.eye(A).view(1, A, A, 1)).sum(-2)
    return (comp.l2n(phenotypes) * values).sum(-1, keepdim=True)


def test_competition_helpers_match_official_formulas():
    torch.manual_seed(2)
    B, H, W, Q, M = 1, 12, 10, 6, 5
    plateau = comp.l2n(torch.rand(B, H, W, Q))
    flat = plateau.reshape(B, H * W, Q)
    agents = comp.indices_to_coords(torch.randint(0, H * W, (B, M)), H, W)
    phen = comp.l2n(torch.rand(B, M, Q))
    masks = comp.masks_from_phenotypes(flat, phen)
    avail = torch.rand(B, H * W, M)
    noise = torch.rand(B, M, M, Q) * 0.1
    own_noise = noise[:, torch.arange(M), torch.arange(M)]
    ours = comp._fitness(flat, avail, agents, phen, own_noise, H, W)
    theirs = _official_compatibility(agents, plateau, phen, avail.view(B, H, W, M), noise)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    binary_iou = _official_pairwise_iou(masks, 0.5)
    fitness = torch.rand(B, M, 1)
    alive = (torch.rand(B, M, 1) > 0.3).float()
    got = comp.compete(masks, fitness, alive, 0.5, 0.2)
    disputes = (binary_iou > 0.2) & ~torch.eye(M, dtype=torch.bool)
    killed = disputes & (fitness < fitness.transpose(1, 2))
    win, lose = alive > 0.5, alive <= 0.5
    killed = (killed & ~(win & lose.transpose(1, 2))) | (lose & win.transpose(1, 2) & disputes)
    assert torch.equal(got, (~killed.any(2, keepdim=True)).float())


def _official_kl(key, query, targets, layout):
    """Official compute_loss on the [N, S] layout (invalid samples: logit 0, target 0), batch-averaged."""
    logits = aff.affinity_logits(key, query, layout)
    idx = aff.sample_index(layout)
    total, rows = 0.0, 0.0
    for b in range(key.shape[0]):
        ns = aff.tiles_to_samples(logits, layout)[b]
        seg = torch.cat([targets[b].reshape(-1), torch.zeros(1, dtype=torch.long)])
        own = seg[:-1].unsqueeze(1)
        same = (own == seg[idx]).float()
        mask = (own > 0).float()
        y_pred = torch.log((F.softmax(ns, -1) * mask).clamp(min=1e-8))
        y_true = same / (same.sum(-1, keepdim=True) + 1e-9)
        total = total + (F.kl_div(y_pred, y_true, reduction="none") * mask).sum()
        rows = rows + mask.sum()
    return total / rows


def test_kl_loss_and_its_gradients_match_official_formula_on_sample_layout():
    """Image 0 has two moving segments; image 1 one segment in a corner, so most of its tiles are skipped."""
    torch.manual_seed(3)
    layout = _layout(window=5, m=2)
    h, w = layout.h, layout.w
    key, query = torch.randn(2, 8, h, w), torch.randn(2, 8, h, w)
    targets = torch.zeros(2, h, w, dtype=torch.long)
    targets[0, 4:20, 6:30] = 1
    targets[0, 22:30, 30:44] = 2
    targets[1, 0:6, 0:5] = 3
    grads = []
    for loss_fn in (aff.affinity_kl_loss, _official_kl):
        k, q = key.clone().requires_grad_(), query.clone().requires_grad_()
        loss = loss_fn(k, q, targets, layout)
        loss.backward()
        grads.append((loss.detach(), k.grad, q.grad))
    for ours, theirs in zip(*grads, strict=True):
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    rows = grads[0][2][1].abs().sum(0) > 0  # image 1: only its supervised rows get a query gradient
    assert torch.equal(rows, targets[1] > 0)
    # the loss's unfold/index_select columns are the inference path's halo and global gathers
    B, T = key.shape[0], layout.num_tiles
    gathered = torch.cat([aff.halo_gather(key, layout), aff.global_gather(key, layout)], dim=2)
    assert torch.equal(aff.sample_columns(key, layout), gathered.reshape(B * T, -1, key.shape[1]))


def test_kl_loss_runs_in_float32_under_bfloat16_autocast():
    torch.manual_seed(4)
    layout = _layout(window=5, m=2)
    key, query = torch.randn(1, 8, layout.h, layout.w), torch.randn(1, 8, layout.h, layout.w)
    targets = torch.zeros(1, layout.h, layout.w, dtype=torch.long)
    targets[0, 4:20, 6:30] = 1
    k, q = key.bfloat16().requires_grad_(), query.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = aff.affinity_kl_loss(k, q, targets, layout)
    loss.backward()
    assert loss.dtype == torch.float32 and k.grad.dtype == torch.bfloat16
    expect = _official_kl(k.detach().float(), q.detach().float(), targets, layout)
    torch.testing.assert_close(loss.detach(), expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_transposed_edge_split_equals_split_then_transpose(dtype):
    from perception_nodes.segmentation.kprop import split_edges, split_edges_t

    torch.manual_seed(3)
    layout = _layout()
    key, query = torch.randn(2, 16, layout.h, layout.w), torch.randn(2, 16, layout.h, layout.w)
    a = aff.softmax_max_norm(aff.affinity_logits(key, query, layout))  # batch 2: the mask repeats per image
    exc_t, inh_t = split_edges_t(a, layout, 0.5, dtype)
    B, T, Q, S = a.shape
    for fast, ref in zip((exc_t, inh_t), split_edges(a, layout, 0.5), strict=True):
        assert fast.dtype == dtype and fast.is_contiguous() and fast.shape == (B * T, S, Q)
        expect = ref.reshape(B * T, Q, S).transpose(1, 2).to(dtype)
        assert (expect != 0).any() and (expect == 0).any()
        exact = dtype == torch.float32  # bf16: 1 - round(a) vs round(1 - a), one bf16 step apart at most
        torch.testing.assert_close(fast, expect, atol=0 if exact else 2**-8, rtol=0 if exact else 2**-7)


def test_training_benchmark_baseline_is_the_same_loss_with_background_rows():
    """bench/bench_segmentation_train.py times the shipped loss against the composed-ops one it replaced:
    the comparison means something only if they are the same function (here with background rows)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_segmentation_train.py"
    spec = importlib.util.spec_from_file_location("bench_segmentation_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(5)
    layout = _layout(window=5, m=2)
    key, query = torch.randn(2, 8, layout.h, layout.w), torch.randn(2, 8, layout.h, layout.w)
    targets = torch.full((2, layout.h, layout.w), 255, dtype=torch.long)
    targets[:, 4:20, 6:30] = 1
    targets[1, :8] = 0
    values = []
    for fn in (aff.affinity_kl_loss, bench.composed_kl_loss):
        k, q = key.clone().requires_grad_(), query.clone().requires_grad_()
        loss = fn(k, q, targets, layout, 255, 0.5)
        loss.backward()
        values.append((loss.detach(), k.grad, q.grad))
    for ours, theirs in zip(*values, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
