"""KProp (kernel propagation) on the thresholded affinity graph -> a plateau map.

Both paths compute the official ``GraphPropagation`` (neuroailab/EISEN core/propagation.py):
edges i -> j for every sample j of node i; excitatory weight a (a > thr), inhibitory 1 - a (1 - a > thr);
h0 = softmax(noise); propagation starts from one seed node; per iteration, with ``act`` the active senders:

    h += Ae^T (h*act) / max(1, Ae^T act);  h -= Ai^T (h*act) / max(1, Ai^T act);  h = l2norm(relu(h))
    act |= any sampled edge from an active sender

- ``kprop_reference``: the official computation on a sparse COO graph built per frame from the [N, S]
  sample indices (sorting, compaction), one sparse product per graph and iteration.
- ``kprop_fast``: the same arithmetic in the tile layout of ``affinity.py``: one batched matrix product
  per graph and iteration with the transposed per-tile affinities, a fold of the halos (sums of shifted
  blocks) and rolls of the tile grid for the global samples. Never materialises per-edge features, static
  shapes, no host synchronisation (unless early exit is asked for).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perception_nodes.segmentation.affinity import Layout, edge_mask, map_to_tiles, tiles_to_map

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def relu_norm(x: torch.Tensor) -> torch.Tensor:
    """Official ``_relu_norm``: ReLU, then L2-normalise over the last dim."""
    return F.normalize(F.relu(x) + 1e-16, p=2.0, dim=-1, eps=1e-12)


def initial_state(h0_noise: torch.Tensor, seed_noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h0 = softmax(noise) (B, N, D); the seed node is argmax(seed_noise) -> act (B, N) one-hot float."""
    h0 = h0_noise.softmax(-1)
    act = (seed_noise >= seed_noise.amax(-1, keepdim=True)).to(seed_noise.dtype)
    act = act * (act.cumsum(-1) <= 1).to(seed_noise.dtype)  # a single seed even on ties
    return h0, act


# -- fast path ----------------------------------------------------------------------------------------------


def split_edges(a: torch.Tensor, layout: Layout, thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile-layout affinities (B, T, Q, P²+G) -> excitatory and inhibitory weights, zero off the graph."""
    valid = edge_mask(layout).unsqueeze(0)
    zero = a.new_zeros(())
    exc = torch.where(valid & (a > thresh), a, zero)
    inh = torch.where(valid & (a < 1.0 - thresh), 1.0 - a, zero)
    return exc, inh


def split_edges_t(
    a: torch.Tensor, layout: Layout, thresh: float, wdt: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``split_edges`` (eager), transposed to (B·T, P²+G, Q) with senders last and cast to the matmul dtype
    ``wdt`` in one pass per graph: the official map's weights are 92 MB per graph in fp32, and every extra
    full-size temporary (mask, transposed copy, cast) costs a fresh allocation's page faults."""
    B, T, Q, S = (int(s) for s in a.shape)
    a_t = a.reshape(B * T, Q, S).transpose(1, 2)
    valid = edge_mask(layout).transpose(1, 2)  # (T, P²+G, Q)
    if B > 1:
        valid = valid.repeat(B, 1, 1)
    src = a_t.to(wdt)  # keeps the transposed strides
    exc_t = torch.empty((B * T, S, Q), dtype=wdt, device=a.device)
    torch.where(valid & (a_t > thresh), src, src.new_zeros(()), out=exc_t)
    inh_t = torch.empty_like(exc_t)
    torch.where(valid & (a_t < 1.0 - thresh), src, src.new_ones(()), out=inh_t)
    return exc_t, inh_t.neg_().add_(1.0)  # 1 - a on the graph, 1 - 1 = 0 off it


def _fold(y: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Halo sums (B, T, P², C) -> per-node sums (B, T, Q, C): add every halo block at its place.

    Used under ONNX export/tracing (sums of zero-padded blocks: static shapes, no scatter); eager torch
    scatters every column at once (``_scatter_columns``).
    """
    B, C = int(y.shape[0]), int(y.shape[3])
    t, nb, ny, nx, r = layout.tile, layout.nb, layout.ny, layout.nx, layout.radius
    gy, gx = ny + nb - 1, nx + nb - 1
    y = y.reshape(B, ny, nx, nb, t, nb, t, C)
    rows = None  # sum over halo block rows: (B, ny + nb - 1, nx, t, nb, t, C)
    for by in range(nb):
        part = _place(y[:, :, :, by], 1, by, nb - 1 - by)
        rows = part if rows is None else rows + part
    acc = None  # then over block columns: (B, ny + nb - 1, nx + nb - 1, t, t, C)
    for bx in range(nb):
        part = _place(rows[:, :, :, :, bx], 2, bx, nb - 1 - bx)
        acc = part if acc is None else acc + part
    full = acc.permute(0, 1, 3, 2, 4, 5).reshape(B, gy * t, gx * t, C)
    crop = full[:, r : r + layout.h, r : r + layout.w]  # padded coordinates -> map
    return map_to_tiles(crop.permute(0, 3, 1, 2), t)


def _place(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Zero-pad ``x`` along ``dim`` by static amounts (concatenation: static shapes in ONNX)."""
    parts = []
    for count in (before, after):
        shape = [int(s) for s in x.shape]
        shape[dim] = count
        parts.append(x.new_zeros(shape) if count else None)
    return torch.cat([p for p in (parts[0], x, parts[1]) if p is not None], dim=dim)


def _global_sum(u: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Global sender sums (B, T, G, C) -> receiver sums (B, T, Q, C): each receiver adds its m in-edges."""
    B, C = int(u.shape[0]), int(u.shape[3])
    T, Q = layout.num_tiles, layout.nodes_per_tile
    m = int(layout.recv_global.shape[1])
    idx = layout.recv_global.reshape(-1)
    if B == 1:
        parts = u.reshape(T * layout.num_global, C).index_select(0, idx)
    else:
        parts = u.reshape(B, T * layout.num_global, C)[:, idx]
    return parts.reshape(B, T, Q, m, C).sum(3)


def _scatter_columns(y: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, T, P²+G, C) column sums -> (B, T, Q, C): one ``index_add_`` of every column onto its node."""
    B, T, _, C = (int(s) for s in y.shape)
    N = layout.h * layout.w
    idx = layout.col_nodes.reshape(1, -1) + (N + 1) * torch.arange(B, device=y.device).view(B, 1)
    out = y.new_zeros(B * (N + 1), C).index_add_(0, idx.reshape(-1), y.reshape(-1, C))
    return out.view(B, N + 1, C)[:, :N].reshape(B, T, layout.nodes_per_tile, C)


def _aggregate(w_t: torch.Tensor, x: torch.Tensor, layout: Layout, ws: dict | None = None) -> torch.Tensor:
    """Receiver sums of w-weighted sender rows. w_t: (B·T, P²+G, Q) transposed weights, x: (B, T, Q, C).
    ``ws`` (eager): buffers reused across iterations for the (B·T, P²+G, C) products (46 MB per product on
    the official map: allocated anew, their page faults cost as much as the matmul itself)."""
    B, T, Q, C = (int(s) for s in x.shape)
    xin = x.reshape(B * T, Q, C).to(w_t.dtype)
    if ws is None:
        y = torch.bmm(w_t, xin).to(x.dtype).reshape(B, T, -1, C)
    else:
        y = _buffer(ws, (B * T, w_t.shape[1], C), w_t.dtype, w_t.device)
        torch.bmm(w_t, xin, out=y)
        if y.dtype != x.dtype:
            y = _buffer(ws, tuple(y.shape), x.dtype, x.device).copy_(y)
        y = y.view(B, T, -1, C)
    if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return _scatter_columns(y, layout)
    P2 = layout.halo * layout.halo
    out = _fold(y[:, :, :P2], layout)
    if layout.num_global:
        out = out + _global_sum(y[:, :, P2:], layout)
    return out


def _buffer(ws: dict, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    key = (shape, dtype)
    if key not in ws:
        ws[key] = torch.empty(shape, dtype=dtype, device=device)
    return ws[key]


def _receivers(act: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, T, Q) active senders -> (B, T, Q) nodes sampled by at least one of them."""
    B = int(act.shape[0])
    t, k = layout.tile, 2 * layout.radius + 1
    amap = tiles_to_map(act.unsqueeze(-1), layout.h, layout.w, t)  # (B, 1, h, w)
    local = F.max_pool2d(amap, kernel_size=k, stride=1, padding=layout.radius)
    recv = map_to_tiles(local, t)[..., 0]
    if layout.num_global:
        tiles = act.amax(-1)  # (B, T) tiles with an active sender
        src = layout.recv_global // layout.num_global  # (T·Q, m) sender tile of each global in-edge
        glob = tiles[:, src.reshape(-1)].reshape(B, layout.num_tiles, layout.nodes_per_tile, -1).amax(-1)
        recv = torch.maximum(recv, glob)
    return recv


def kprop_fast(
    a: torch.Tensor,
    h0: torch.Tensor,
    act0: torch.Tensor,
    layout: Layout,
    iters: int,
    thresh: float,
    dtype: str = "float32",
    tol: float = 0.0,
) -> torch.Tensor:
    """Plateau map from tile-layout affinities.

    a: (B, T, Q, P²+G) softmax-max-normalised affinities; h0: (B, N, D) and act0: (B, N) in row-major node
    order. Returns the plateau map (B, h, w, D). ``tol`` > 0 stops early (host sync every 5 iterations)
    once all nodes are active and the mean absolute change of the state over one iteration is below ``tol``.
    """
    B, T, Q = (int(s) for s in a.shape[:3])
    wdt = _DTYPES[dtype] if a.dtype == torch.float32 else a.dtype
    eager = not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or _capturing())
    if eager:
        exc_t, inh_t = split_edges_t(a, layout, thresh, wdt)  # (B·T, P²+G, Q) senders last
    else:
        exc, inh = split_edges(a, layout, thresh)
        exc_t = exc.reshape(B * T, Q, -1).transpose(1, 2).to(wdt).contiguous()
        inh_t = inh.reshape(B * T, Q, -1).transpose(1, 2).to(wdt).contiguous()
    ws = {} if eager else None
    h_map = h0.transpose(1, 2).reshape(B, -1, layout.h, layout.w)
    h = map_to_tiles(h_map, layout.tile)  # (B, T, Q, D)
    act = map_to_tiles(act0.reshape(B, 1, layout.h, layout.w), layout.tile)[..., 0]  # (B, T, Q)
    norms = None  # (norm_e, norm_i) once every node is active (eager only: a host check per iteration)
    for it in range(iters):
        prev = h
        if norms is None:
            h, norms_now = _propagate(h, act, exc_t, inh_t, layout, ws)
            act_next = torch.maximum(act, _receivers(act, layout))
            if eager and bool(act.min() > 0):
                norms = norms_now  # all senders were active: the normalisers no longer change
            act = act_next
        else:
            h = _propagate_active(h, exc_t, inh_t, layout, *norms, ws=ws)
        if tol > 0 and it % 5 == 4 and bool(act.min() > 0) and float((h - prev).abs().mean()) < tol:
            break
    return tiles_to_map(h, layout.h, layout.w, layout.tile).permute(0, 2, 3, 1)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _propagate(h, act, exc_t, inh_t, layout, ws=None):
    """One iteration with active-sender masking; also returns the (excitatory, inhibitory) normalisers."""
    D = int(h.shape[-1])
    a1 = act.unsqueeze(-1)
    agg = _aggregate(exc_t, torch.cat([h * a1, a1], dim=-1), layout, ws)
    norm_e = agg[..., D:].clamp(min=1.0)
    h = h + agg[..., :D] / norm_e
    agg = _aggregate(inh_t, torch.cat([h * a1, a1], dim=-1), layout, ws)
    norm_i = agg[..., D:].clamp(min=1.0)
    h = h - agg[..., :D] / norm_i
    return relu_norm(h), (norm_e, norm_i)


def _propagate_active(h, exc_t, inh_t, layout, norm_e, norm_i, ws=None):
    """One iteration once every node is active (the same arithmetic without the activity channel)."""
    h = h + _aggregate(exc_t, h, layout, ws) / norm_e
    h = h - _aggregate(inh_t, h, layout, ws) / norm_i
    return relu_norm(h)


# -- reference path (official computation) -------------------------------------------------------------------


def kprop_reference(
    a: torch.Tensor, samples: torch.Tensor, h0: torch.Tensor, act0: torch.Tensor, iters: int, thresh: float
) -> torch.Tensor:
    """The official sparse KProp for one image.

    a: (N, S) softmax-max-normalised affinities; samples: (N, S) sampled node ids (N = invalid); h0: (N, D);
    act0: (N,) seed one-hot. Returns the final state (N, D).
    """
    N, S = a.shape
    rows = torch.arange(N, device=a.device).view(N, 1).expand(N, S).reshape(-1)  # sender i
    cols = samples.reshape(-1)  # receiver j
    val = a.reshape(-1)
    valid = cols < N
    rows, cols, val = rows[valid], cols[valid], val[valid]
    # transposed graphs: entry [j, i] = a(i -> j); thresholding compacts the edge lists
    exc = _sparse(cols, rows, val, N, val > thresh)
    inh = _sparse(cols, rows, 1.0 - val, N, (1.0 - val) > thresh)
    pattern = _sparse(cols, rows, torch.ones_like(val), N, torch.ones_like(val, dtype=torch.bool))
    h, act = h0.clone(), act0.view(N, 1).to(h0.dtype)
    for _ in range(iters):
        h = h + _spmm(exc, h * act) / _spmm(exc, act).clamp(min=1.0)
        h = h - _spmm(inh, h * act) / _spmm(inh, act).clamp(min=1.0)
        h = relu_norm(h)
        act = torch.maximum(act, (_spmm(pattern, act) > 0.5).to(h.dtype))
    return h


def _sparse(rows, cols, val, n, keep):
    idx = torch.stack([rows[keep], cols[keep]])
    return torch.sparse_coo_tensor(idx, val[keep], (n, n)).coalesce()


def _spmm(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(m, x)
