"""CPU benchmark of one EISEN training step (``small``, batch 8): the shipped loss against the loss composed
of torch ops it replaced, in the same process, fp32 and bf16; prints figures (JSON with --json PATH).

    python bench/bench_segmentation_train.py [--threads 2] [--steps 8] [--sim-episodes 6]
                                             [--pairs OUT/pairs.npz] [--json out.json]

Frames and motion targets come from ``--sim-episodes`` fresh sim episodes (seeds 1000...) or from a
training run's pair cache (``--pairs``: the 400-episode cache of the shipped command is what a real run
samples). Each configuration runs ``--steps`` timed steps after 2 warm-up steps on the same batches; the
configurations alternate twice and the median step is printed. The two losses' values and gradients are
compared on one batch (they are the same function).

Baseline (``composed_kl_loss``): the loss before ``affinity._SampleKL``: logits from advanced-index gathers
of the sampled keys, then cast, scale, -inf mask, log-softmax and a masked sum as separate torch ops, each
with its autograd backward over the (tiles × 64 × 384) block; the logits in bfloat16 under autocast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception_nodes.segmentation import affinity as aff
from perception_nodes.segmentation import train as T
from perception_nodes.segmentation.config import EisenConfig


def _columns(x: torch.Tensor, layout: aff.Layout, sel: torch.Tensor) -> torch.Tensor:
    """Sample columns of selected tiles by advanced indexing: x (B, C, h, w) -> (K, P² + G, C)."""
    B, C = x.shape[:2]
    T_, N = layout.num_tiles, layout.h * layout.w
    rows = torch.cat([x.reshape(B, C, -1).transpose(1, 2), x.new_zeros(B, 1, C)], 1).reshape(-1, C)
    base = (sel // T_ * (N + 1)).view(-1, 1)
    halo = rows[base + layout.halo_rows[sel % T_]]
    glob = rows[base + layout.global_rows[sel % T_]]
    return torch.cat([halo, glob], 1)


def composed_kl_loss(key, query, targets, layout, background_id=None, background_weight=0.0):
    """The previous implementation of ``aff.affinity_kl_loss`` (same value and gradients)."""
    B, C = key.shape[:2]
    T_, Q = layout.num_tiles, layout.nodes_per_tile
    tmap = targets.view(B, 1, layout.h, layout.w).float()
    own_all = aff.map_to_tiles(tmap, layout.tile).reshape(B * T_, Q)
    sel = torch.nonzero(own_all.amax(-1) > 0)[:, 0]
    q = aff.map_to_tiles(query, layout.tile).reshape(B * T_, Q, C)[sel]
    logits = torch.bmm(q, _columns(key, layout, sel).transpose(1, 2)).float() * C**-0.5
    logits = logits.masked_fill(~aff.column_mask(layout).unsqueeze(0), float("-inf"))
    own = own_all[sel]
    cols = _columns(tmap, layout, sel)[..., 0]
    same = (own.unsqueeze(-1) == cols.unsqueeze(1)) & (own.unsqueeze(-1) > 0)
    same &= aff.edge_mask(layout)[sel % T_]
    count = same.sum(-1)
    log_p = F.log_softmax(logits, dim=-1)
    cross = -(torch.where(same, log_p, torch.zeros_like(log_p))).sum(-1) / count.clamp(min=1)
    kl = cross - torch.log(count.clamp(min=1).float())
    rows = count > 0
    if background_id is None:
        return (kl * rows).sum() / rows.sum().clamp(min=1)
    bg = rows & (own == background_id)
    fg = rows & ~bg
    moving = (kl * fg).sum() / fg.sum().clamp(min=1)
    return moving + background_weight * (kl * bg).sum() / bg.sum().clamp(min=1)


def load_data(args, cfg: EisenConfig):
    tcfg = T.TrainConfig(out="/tmp/unused", sim_episodes=args.sim_episodes, bootstrap_at=(), no_cache=True)
    if args.pairs:
        data = np.load(args.pairs)
        pairs = T.PairData(*(data[f] for f in T.FIELDS))
    else:
        pairs = T.load_pairs(tcfg, cfg)
    tcfg, pairs, targets = T.prepare_targets(tcfg, cfg, pairs)
    rng = np.random.default_rng(0)
    fg, bg = tcfg.static_background > 0, tcfg.still_objects > 0
    batches = [T.sample_batch(pairs, targets, 8, rng, "cpu", fg, bg) for _ in range(args.steps + 2)]
    return tcfg, len(pairs.images), batches


def time_steps(cfg, tcfg, batches, precision: str, loss_fn) -> float:
    """Median seconds of a full training step (forward, loss, backward, Adam)."""
    torch.manual_seed(0)
    tcfg = dataclasses.replace(tcfg, precision=precision)
    net = T.EisenNet(cfg).train()
    if precision == "bf16":
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    saved, aff.affinity_kl_loss = aff.affinity_kl_loss, loss_fn  # the loss train._step calls
    try:
        times = []
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            T._step(net, cfg, opt, tcfg, *batch, gen, 200)
            if i >= 2:
                times.append(time.perf_counter() - start)
    finally:
        aff.affinity_kl_loss = saved
    return statistics.median(times)


def parity(cfg, batch) -> dict:
    """Loss and gradients of both implementations at the map size on one batch (float32, random net)."""
    torch.manual_seed(0)
    with torch.no_grad():
        key, query = T.EisenNet(cfg)(batch[0])
    h, w = key.shape[-2:]
    m = aff.num_global_tiles(cfg.num_global, cfg.tile)
    layout = aff.make_layout(h, w, cfg.tile, cfg.local_window, aff.random_global_offsets(h, w, cfg.tile, m))
    out = []
    for fn in (aff.affinity_kl_loss, composed_kl_loss):
        k, q = key.clone().requires_grad_(), query.clone().requires_grad_()
        loss = fn(k, q, batch[1], layout, T.BACKGROUND_ID, 1.0)
        loss.backward()
        out.append((float(loss.detach()), k.grad, q.grad))
    (a, ka, qa), (b, kb, qb) = out
    return {
        "loss": a,
        "loss_baseline": b,
        "key_grad_rel_diff": float((ka - kb).norm() / kb.norm()),
        "query_grad_rel_diff": float((qa - qb).norm() / qb.norm()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sim-episodes", type=int, default=6)
    parser.add_argument("--pairs", default="", help="a training run's OUT/pairs.npz, not fresh episodes")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EisenConfig.preset("small")
    tcfg, n_pairs, batches = load_data(args, cfg)
    result = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "pairs": n_pairs}
    result["parity"] = parity(cfg, batches[0])
    runs: dict[str, list[float]] = {}
    for _ in range(2):
        for precision in ("fp32", "bf16"):
            for name, fn in (("shipped", aff.affinity_kl_loss), ("composed", composed_kl_loss)):
                seconds = time_steps(cfg, tcfg, batches, precision, fn)
                runs.setdefault(f"{precision}_{name}", []).append(seconds)
    result["step_s"] = {k: statistics.median(v) for k, v in runs.items()}
    result["runs_s"] = runs
    p = result["parity"]
    print(
        f"{n_pairs} frame pairs, {args.threads} threads; loss {p['loss']:.5f} vs {p['loss_baseline']:.5f} "
        f"(gradients' relative difference: key {p['key_grad_rel_diff']:.1e}, "
        f"query {p['query_grad_rel_diff']:.1e})"
    )
    for precision in ("fp32", "bf16"):
        new, old = result["step_s"][f"{precision}_shipped"], result["step_s"][f"{precision}_composed"]
        print(f"{precision}: training step {new:.3f} s vs {old:.3f} s, composed loss ({old / new:.2f}x)")
    s = result["step_s"]
    print(f"bf16 vs fp32 step, shipped loss: {s['fp32_shipped'] / s['bf16_shipped']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
