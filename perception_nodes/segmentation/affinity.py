"""Affinity sampling with a fixed, translation-invariant structure, in a dense tile layout.

Each node (affinity-map pixel) samples S neighbours, as in the official EISEN:
- local: every pixel of the ``window``² box centred on it (out-of-image samples have a zero key, so their
  logit is 0 and they take part in the softmax, but they are never graph edges), in raster order;
- global: G = m·t² fixed pixel offsets g_k taken from each *tile's origin* (circular), so every node of a
  tile samples the same G nodes (one matrix product per tile). The offsets are balanced over the t² sub-tile
  phases, so each receiver gets exactly m global in-edges, from sender tiles that differ between the
  receivers of a tile (no tile-shaped artefacts). (The official code draws per-pixel random global indices
  every frame; the reference path accepts that layout too.)

Tensors live in a *tile layout*: the map (h, w) is cut into T = (h/t)·(w/t) tiles of t² nodes; tile k's
*halo* is the P×P box (P = t·nb ≥ t + 2r) starting r pixels above/left of it, which holds every local
sample of the tile's nodes. Per tile, the logits of all nodes against the halo and the global tiles are one
matrix product, and KProp aggregation is a product with the transposed affinities plus a fold of the halos
(sums of shifted blocks) and a fixed gather of the global sums: no per-edge feature gather, static shapes.

Shapes: B batch, T tiles, Q = t² nodes per tile, P² halo positions, G global samples, C channels.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Layout:
    """The sample structure of one map size (all index tensors on CPU; ``to`` moves them)."""

    h: int
    w: int
    tile: int
    radius: int  # local window radius r (window = 2r + 1)
    global_offsets: tuple[tuple[int, int], ...]  # G pixel offsets (dy, dx) from each tile's origin, circular
    halo_rows: torch.Tensor  # (T, P²) long: row-major node id of each halo position, N if outside
    col_nodes: torch.Tensor  # (T, P² + G) long: tile-order node id of each column (halo, global), N outside
    win_mask: torch.Tensor  # (Q, P²) bool: halo position q is in node p's window
    in_image: torch.Tensor  # (T, P²) bool: halo position inside the map
    global_rows: torch.Tensor  # (T, G) long: row-major node id of each tile's global samples
    recv_global: (
        torch.Tensor
    )  # (T·Q, m) long: flat (sender tile·G + k) of each tile-order receiver's in-edges

    @property
    def ny(self) -> int:
        return self.h // self.tile

    @property
    def nx(self) -> int:
        return self.w // self.tile

    @property
    def num_tiles(self) -> int:
        return self.ny * self.nx

    @property
    def nodes_per_tile(self) -> int:
        return self.tile * self.tile

    @property
    def nb(self) -> int:
        """Halo side in tiles."""
        return -(-(self.tile + 2 * self.radius) // self.tile)

    @property
    def halo(self) -> int:
        return self.nb * self.tile

    @property
    def num_global(self) -> int:
        return len(self.global_offsets)

    @property
    def num_local(self) -> int:
        return (2 * self.radius + 1) ** 2

    @property
    def num_samples(self) -> int:
        return self.num_local + self.num_global

    @property
    def num_columns(self) -> int:
        """Columns of a tile-layout affinity row: halo positions, then global samples."""
        return self.halo * self.halo + self.num_global

    def to(self, device: torch.device | str) -> Layout:
        return dataclasses.replace(
            self,
            halo_rows=self.halo_rows.to(device),
            col_nodes=self.col_nodes.to(device),
            win_mask=self.win_mask.to(device),
            in_image=self.in_image.to(device),
            global_rows=self.global_rows.to(device),
            recv_global=self.recv_global.to(device),
        )


def fixed_global_offsets(h: int, w: int, tile: int, m: int, seed: int) -> tuple[tuple[int, int], ...]:
    """G = m·t² seeded pixel offsets: for every sub-tile phase, m random coarse positions (circular)."""
    rng = np.random.default_rng(seed)
    return _phase_offsets(h, w, tile, m, lambda n, hi: rng.integers(0, hi, n))


def random_global_offsets(
    h: int, w: int, tile: int, m: int, generator: torch.Generator | None = None
) -> tuple[tuple[int, int], ...]:
    """Random phase-balanced offsets for a training step."""
    return _phase_offsets(
        h, w, tile, m, lambda n, hi: torch.randint(0, hi, (n,), generator=generator).numpy()
    )


def _phase_offsets(h, w, tile, m, draw) -> tuple[tuple[int, int], ...]:
    ny, nx = h // tile, w // tile
    py, px = np.divmod(np.tile(np.arange(tile * tile), m), tile)
    cy, cx = draw(len(py), ny), draw(len(px), nx)
    return tuple(zip((cy * tile + py).tolist(), (cx * tile + px).tolist(), strict=True))


def num_global_tiles(num_global: int, tile: int) -> int:
    """m: global samples per sub-tile phase, so that G = m·t² approximates ``num_global`` (>= 1 if any)."""
    if num_global <= 0:
        return 0
    return max(1, round(num_global / (tile * tile)))


@functools.lru_cache(maxsize=32)
def _static_indices(h: int, w: int, tile: int, radius: int) -> tuple[torch.Tensor, ...]:
    t, r = tile, radius
    nb = -(-(t + 2 * r) // t)
    P = nb * t
    ny, nx = h // t, w // t
    ty, tx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    qy, qx = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    ys = ty.reshape(-1, 1) * t - r + qy.reshape(1, -1)  # (T, P²)
    xs = tx.reshape(-1, 1) * t - r + qx.reshape(1, -1)
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    rows = np.where(inside, ys * w + xs, h * w)
    py, px = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
    dy = qy.reshape(1, -1) - (py.reshape(-1, 1) + r)
    dx = qx.reshape(1, -1) - (px.reshape(-1, 1) + r)
    win = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    return torch.from_numpy(rows).long(), torch.from_numpy(win), torch.from_numpy(inside)


def make_layout(
    h: int, w: int, tile: int, window: int, global_offsets: tuple[tuple[int, int], ...]
) -> Layout:
    if h % tile or w % tile:
        raise ValueError(f"map {h}x{w} is not a multiple of the tile {tile}")
    rows, win, inside = _static_indices(h, w, tile, window // 2)
    slot = torch.empty(h * w + 1, dtype=torch.long)
    slot[tile_order(h, w, tile)] = torch.arange(h * w)
    slot[h * w] = h * w
    grows, recv = _global_indices(h, w, tile, tuple(global_offsets))
    cols = slot[torch.cat([rows, grows], dim=1)]
    return Layout(h, w, tile, window // 2, tuple(global_offsets), rows, cols, win, inside, grows, recv)


def _global_indices(h: int, w: int, t: int, offsets: tuple[tuple[int, int], ...]):
    """(T, G) targets of each sender tile and (T·Q, m) in-edges (sender tile·G + k) of each receiver."""
    ny, nx = h // t, w // t
    G = len(offsets)
    if G == 0:
        return torch.zeros(ny * nx, 0, dtype=torch.long), torch.zeros(h * w, 0, dtype=torch.long)
    g = np.array(offsets, dtype=np.int64).reshape(G, 2)
    ty, tx = np.divmod(np.arange(ny * nx), nx)
    ys = (ty[:, None] * t + g[None, :, 0]) % h  # (T, G)
    xs = (tx[:, None] * t + g[None, :, 1]) % w
    grows = ys * w + xs
    # receiver (tile T_r, pos p) gets sample k of the sender tile whose origin is its position minus g_k
    phase = (g[:, 0] % t) * t + g[:, 1] % t  # (G,)
    counts = np.bincount(phase, minlength=t * t)
    if G and counts.min() != counts.max():
        raise ValueError("global offsets must be balanced over the sub-tile phases")
    m = int(counts.max()) if G else 0
    by_phase = np.argsort(phase, kind="stable").reshape(t * t, m)  # (Q, m) sample ids k per phase
    py, px = np.divmod(np.arange(t * t), t)
    ry = ty[:, None, None] * t + py[None, :, None] - g[by_phase][None, :, :, 0]  # (T, Q, m)
    rx = tx[:, None, None] * t + px[None, :, None] - g[by_phase][None, :, :, 1]
    sender = ((ry % h) // t) * nx + (rx % w) // t
    recv = sender * G + by_phase[None]
    return torch.from_numpy(grows).long(), torch.from_numpy(recv.reshape(-1, m)).long()


def inference_layout(cfg, level: int = 0) -> Layout:
    """The fixed layout of ``cfg`` (an EisenConfig) at supervision level ``level`` (stride 2^level)."""
    h, w = cfg.map_size
    h, w = h >> level, w >> level
    m = num_global_tiles(cfg.num_global, cfg.tile)
    return make_layout(
        h, w, cfg.tile, cfg.local_window, fixed_global_offsets(h, w, cfg.tile, m, cfg.sample_seed)
    )


# -- layout conversions ---------------------------------------------------------------------------------


def map_to_tiles(x: torch.Tensor, tile: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, T, t², C)."""
    B, C, h, w = (int(s) for s in x.shape)
    x = x.reshape(B, C, h // tile, tile, w // tile, tile).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (h // tile) * (w // tile), tile * tile, C)


def tiles_to_map(x: torch.Tensor, h: int, w: int, tile: int) -> torch.Tensor:
    """(B, T, t², C) -> (B, C, h, w)."""
    B, C = int(x.shape[0]), int(x.shape[3])
    x = x.reshape(B, h // tile, w // tile, tile, tile, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, h, w)


def tile_order(h: int, w: int, tile: int) -> torch.Tensor:
    """(N,) row-major node id of each tile-order node."""
    ids = torch.arange(h * w).reshape(1, 1, h, w)
    return map_to_tiles(ids, tile).reshape(-1)


def halo_gather(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, C, h, w) map -> (B, T, P², C) halos (zeros outside the map)."""
    B, C = int(x.shape[0]), int(x.shape[1])
    rows = x.reshape(B, C, -1).transpose(1, 2)  # (B, N, C) row-major
    rows = torch.cat([rows, rows.new_zeros(B, 1, C)], dim=1)
    idx = layout.halo_rows.reshape(-1)
    return rows[:, idx].reshape(B, layout.num_tiles, layout.halo * layout.halo, C)


def global_gather(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, C, h, w) map -> (B, T, G, C): each tile's global samples."""
    B, C = int(x.shape[0]), int(x.shape[1])
    rows = x.reshape(B, C, -1).transpose(1, 2)  # (B, N, C)
    return rows[:, layout.global_rows.reshape(-1)].reshape(B, layout.num_tiles, layout.num_global, C)


# -- logits -----------------------------------------------------------------------------------------------


def affinity_logits(key: torch.Tensor, query: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Scaled logits q_i·k_j/√C in the tile layout: (B, T, Q, P² + G), -inf outside each node's window.

    key, query: (B, C, h, w) at the layout's map size.
    """
    B, C = int(key.shape[0]), int(key.shape[1])
    q = map_to_tiles(query, layout.tile)  # (B, T, Q, C)
    k_halo = halo_gather(key, layout)  # (B, T, P², C)
    k_glob = global_gather(key, layout)  # (B, T, G, C)
    k_all = torch.cat([k_halo, k_glob], dim=2)
    T, Q = layout.num_tiles, layout.nodes_per_tile
    logits = torch.bmm(q.reshape(B * T, Q, C), k_all.reshape(B * T, -1, C).transpose(1, 2))
    logits = logits.reshape(B, T, Q, -1) * (C**-0.5)
    return logits.masked_fill(~column_mask(layout).view(1, 1, Q, -1), float("-inf"))


def column_mask(layout: Layout) -> torch.Tensor:
    """(Q, P² + G) bool: columns that are samples of each node (its window, plus every global sample)."""
    glob = torch.ones(
        layout.nodes_per_tile, layout.num_global, dtype=torch.bool, device=layout.win_mask.device
    )
    return torch.cat([layout.win_mask, glob], dim=1)


def edge_mask(layout: Layout) -> torch.Tensor:
    """(T, Q, P² + G) bool: samples that are graph edges (inside the map)."""
    T, Q = layout.num_tiles, layout.nodes_per_tile
    local = layout.win_mask.view(1, Q, -1) & layout.in_image.view(T, 1, -1)
    glob = torch.ones(T, Q, layout.num_global, dtype=torch.bool, device=local.device)
    return torch.cat([local, glob], dim=2)


def softmax_max_norm(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the samples divided by the row maximum (official ``softmax_max_norm``)."""
    a = logits.softmax(-1)
    return a / a.amax(-1, keepdim=True).clamp(min=1e-12)


# -- the official [N, S] layout (reference path, tests) --------------------------------------------------


def sample_index(layout: Layout) -> torch.Tensor:
    """(N, S) long, row-major nodes: the node sampled by each of the layout's samples (N = invalid)."""
    h, w, t, r = layout.h, layout.w, layout.tile, layout.radius
    N, Q = h * w, layout.nodes_per_tile
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d = torch.arange(-r, r + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    ly = ys.reshape(-1, 1) + dy.reshape(1, -1)
    lx = xs.reshape(-1, 1) + dx.reshape(1, -1)
    local = torch.where((ly >= 0) & (ly < h) & (lx >= 0) & (lx < w), ly * w + lx, N)
    tile_of = map_to_tiles(torch.arange(N).view(1, 1, h, w), t).reshape(-1)  # row-major id per tile slot
    tile_id = torch.empty(N, dtype=torch.long)
    tile_id[tile_of] = torch.arange(N) // Q
    parts = [local, layout.global_rows[tile_id]]
    return torch.cat(parts, dim=1)


def local_pick(layout: Layout) -> torch.Tensor:
    """(Q, L) long: the halo column of each node's local samples, raster order of (dy, dx)."""
    t, r, P = layout.tile, layout.radius, layout.halo
    py, px = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    d = torch.arange(-r, r + 1)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    qy = py.reshape(-1, 1) + r + dy.reshape(1, -1)
    qx = px.reshape(-1, 1) + r + dx.reshape(1, -1)
    return qy * P + qx


def tiles_to_samples(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Tile-layout rows (B, T, Q, P² + G) -> the [N, S] layout (B, N, S), row-major nodes."""
    B, T, Q, _ = x.shape
    pick = local_pick(layout).to(x.device)
    local = torch.gather(x[..., : layout.halo**2], 3, pick.view(1, 1, Q, -1).expand(B, T, Q, -1))
    rows = torch.cat([local, x[..., layout.halo**2 :]], dim=3).reshape(B, T * Q, -1)
    order = tile_order(layout.h, layout.w, layout.tile).to(x.device)
    out = torch.empty_like(rows)
    out[:, order] = rows
    return out


# -- training loss ---------------------------------------------------------------------------------------


def sample_columns(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Every tile's sample columns: x (B, C, h, w) -> (B·T, P² + G, C), zeros outside the map.

    The halos come from ``unfold`` and the global samples from ``index_select``: their backward passes are
    a fold and a row-wise add, not the per-element scatter of an advanced-index gather.
    """
    B, C, h, w = (int(s) for s in x.shape)
    t, r, P = layout.tile, layout.radius, layout.halo
    tail = P - t - r
    halos = F.unfold(F.pad(x, (r, tail, r, tail)), P, stride=t)  # (B, C·P², T), tiles row-major
    halos = halos.view(B, C, P * P, -1).permute(0, 3, 2, 1)  # (B, T, P², C)
    rows = x.permute(0, 2, 3, 1).reshape(B * h * w, C)
    base = torch.arange(B, device=x.device).view(B, 1, 1) * (h * w)
    glob = rows.index_select(0, (base + layout.global_rows.to(x.device)).reshape(-1))
    glob = glob.view(B, layout.num_tiles, layout.num_global, C)
    return torch.cat([halos, glob], 2).reshape(B * layout.num_tiles, -1, C)


class _SampleKL(torch.autograd.Function):
    """sum_i w_i KL(y_i || softmax(x_i)) over rows i, x = q·kᵀ, y_i uniform over the row's ``same`` samples.

    The forward turns one float32 block in place into the logits, then (with each row's KL on the way) into
    the gradient wrt the logits, w_i (softmax_i - y_i): that block is all autograd keeps, and the backward
    is two matrix products.
    q (R, Q, C) scaled queries, k (R, S, C) sample keys, same (R, Q, S) float 0/1 (within ``cmask``),
    cmask (Q, S) bool: each node's samples (others are -inf logits), weight (R, Q) row weights.
    """

    @staticmethod
    def forward(ctx, q, k, same, cmask, weight):
        with torch.autocast(q.device.type, enabled=False):
            x = torch.bmm(q, k.transpose(1, 2))  # (R, Q, S) logits
            inv = 1.0 / same.sum(-1).clamp(min=1)  # 1 / |same samples|
            picked = (q * torch.bmm(same, k)).sum(-1) * inv  # mean logit of the same samples
            x.masked_fill_(~cmask, float("-inf"))
            top = x.amax(-1, keepdim=True)
            total = x.sub_(top).exp_().sum(-1, keepdim=True)
            kl = (top + total.log()).squeeze(-1) - picked + inv.log()  # logsumexp - mean - log count
            x.mul_(weight.unsqueeze(-1) / total).addcmul_(same, (weight * inv).unsqueeze(-1), value=-1.0)
        ctx.save_for_backward(q, k, x)
        return (kl * weight).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k, g = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            g = g.mul_(grad)
            return torch.bmm(g, k), torch.bmm(g.transpose(1, 2), q), None, None, None


def affinity_kl_loss(
    key: torch.Tensor,
    query: torch.Tensor,
    targets: torch.Tensor,
    layout: Layout,
    background_id: int | None = None,
    background_weight: float = 0.0,
) -> torch.Tensor:
    """The official KL loss: per row of a moving node, KL(targets || softmax(logits)), averaged over rows.

    key, query: (B, C, h, w); targets: (B, h, w) long segment ids at the layout's map size, 0 = static or
    unknown (rows masked out; as samples they never match). A row's target distribution is uniform over its
    samples with the same id. Tiles without a supervised node are skipped. Rows of ``background_id`` (a
    static background group) are averaged apart and added with ``background_weight``, so that their number
    does not dilute the moving rows. Computed in float32 (also under bfloat16 autocast) by ``_SampleKL``.
    """
    B, C = int(key.shape[0]), int(key.shape[1])
    T, Q = layout.num_tiles, layout.nodes_per_tile
    tmap = targets.view(B, 1, layout.h, layout.w).float()  # ids are exact in float32
    own = map_to_tiles(tmap, layout.tile).reshape(B * T, Q)
    q = map_to_tiles(query.float() * C**-0.5, layout.tile).reshape(B * T, Q, C)
    k = sample_columns(key.float(), layout)
    cols = sample_columns(tmap, layout)[..., 0]  # (B·T, S) id of each sample, 0 outside the map
    sel = torch.nonzero(own.amax(-1) > 0)[:, 0]
    if len(sel) == 0:
        return key.sum() * 0.0
    if len(sel) < B * T:
        own, q, k, cols = (v.index_select(0, sel) for v in (own, q, k, cols))
    cmask = column_mask(layout).to(key.device)
    same = torch.eq(own.unsqueeze(-1), cols.unsqueeze(1), out=k.new_empty(len(sel), Q, cols.shape[1]))
    same.mul_(cmask)
    rows = own > 0  # a node is among its own local samples, so each such row has a same sample
    if background_id is None:
        weight = rows / rows.sum().clamp(min=1)
    else:
        bg = rows & (own == background_id)
        fg = rows & ~bg
        weight = fg / fg.sum().clamp(min=1) + background_weight * bg / bg.sum().clamp(min=1)
    return _SampleKL.apply(q, k, same, cmask, weight.float())
