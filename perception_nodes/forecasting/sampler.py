"""Drawing forecasts from ARFM: a fast KV-cached sampler, a no-cache reference, and the naive official loop.

Fast sampling (``FastSampler``):
- image features (dense map + global tokens) are computed once per frame by the caller;
- the observed history is fused once, as a prefix shared by all K samples (batch 1), and its keys/values
  are kept in a KV cache of the causal time layers;
- the K samples are batched; each future step runs the fusion transformer on one new token per point and
  global token (KV cache), then a few Euler steps of the flow head, whose adaLN parameters are precomputed
  for the fixed Euler times;
- warm start: a previous forecast's displacements are re-noised to t = ``warm_start_t`` and refined with
  ``warm_start_steps`` Euler steps instead of integrating from noise (as the official robot pipeline does;
  default 1 step: on held-out sim windows as good as 2, and within 0.01 of the cold ratio to constant
  velocity);
- the last step is not fused (its output would only condition a step beyond the horizon);
- with a motion window W (``ARFMConfig.motion_window``) each sample keeps a trail of its last W + 1
  positions, from which a generated step's windowed mean displacement is read (``step_motion``);
- eager (CPU) sampling runs the folded kernels of ``fused.py``: the flow head with its adaLN folded in, the
  point tokens of generated steps as one matmul, and (models without text) the fusion step with norms,
  attention scale and RoPE folded into its weights,
  reading a flat per-sample KV buffer up to the steps written so far; the buffers are reused across calls
  with the same shapes (allocating and zeroing them cost as much as the prefill);
- static shapes throughout (position index as a tensor), so a step can be captured in a CUDA graph or
  exported (``export.py``).

``sample_no_cache`` is the same procedure recomputing the whole sequence every step (the reference the
KV-cache test compares against); ``sample_naive_official`` mirrors the released evaluation loop (no cache,
global encoder re-run at every Euler evaluation, 15 evaluations per step) for speed comparisons.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from perception_nodes.forecasting.fused import FlatCache, FusedFusion, FusedHead, FusedPointTokens
from perception_nodes.forecasting.network import ARFM, NEG, KVCache, motion_inputs


@dataclasses.dataclass
class ForecastInputs:
    """One frame's inputs (batch 1). Positions in the model frame, pixels x right, y down."""

    fmaps: list[torch.Tensor]  # [(1, C, h, w)] dense feature maps of the current frame
    tokens: torch.Tensor  # (1, G, Cg) global tokens of the current frame
    history: torch.Tensor  # (1, N, S_h, 2) observed positions, oldest first, last = current frame
    observed: torch.Tensor  # (1, N, S_h) bool: the tracker saw the point at that step
    point_valid: torch.Tensor  # (1, N) bool: slot holds a real track
    cond: torch.Tensor | None = None  # (1, D_head) adaLN conditioning (camera motion / pooled text)
    text: torch.Tensor | None = None  # (1, T_text, text_dim) text embeddings (use_text models)
    # (1,) std of the history's position noise, model px, for history_noise_input models (None: exact)
    noise_level: torch.Tensor | None = None

    def levels(self, k: int) -> torch.Tensor | None:
        """noise_level for a batch of k copies of these inputs (k,), or None."""
        return None if self.noise_level is None else self.noise_level.reshape(1).expand(k)


def euler_times(t_start: float, t_end: float, steps: int) -> list[float]:
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()


@dataclasses.dataclass
class _State:
    """Buffers of one forecast (static shapes; reused across calls by the CUDA-graph sampler)."""

    fmaps: list[torch.Tensor]  # [(1, C, h, w)]
    glob: torch.Tensor  # (K, G, D) global tokens of every future step
    cache: KVCache
    token_valid: torch.Tensor  # (1, P) bool
    head_mask: torch.Tensor  # (1, 1, 1, N) additive
    fused: torch.Tensor  # (K, N, D) fused state of the current step
    pos: torch.Tensor  # (K, N, 2) current positions
    prev: torch.Tensor  # (K, N, 2) last displacement
    trail: torch.Tensor | None  # (K, N, W + 1, 2) the last W + 1 positions (motion_window W > 0), else None
    x0: torch.Tensor  # (K, N, 2) the flow's starting point for this step
    index: torch.Tensor  # () long: generated-step index (own cache slot)
    mods: dict[str, list[list[torch.Tensor]]]
    head: FusedHead | None = None  # eager fast path of the flow head (None: FlowHead.run)
    tables: dict[str, list[list[list[torch.Tensor]]]] | None = None  # its adaLN tables [time][layer]
    flat: FlatCache | None = None  # eager fast path of the fusion step (None: FusionTransformer.step)
    space_mask: torch.Tensor | None = None  # (1, 1, 1, P) additive for the flat path; None: all valid
    points: FusedPointTokens | None = None  # eager point tokens of generated steps (None: ARFM.point_tokens)


def observed_displacement(hist: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """The last observed step's displacement (B, N, 1, 2) from history (B, N, S, 2) / observed (B, N, S);
    zero unless both of its ends were observed (a track that was lost or just seeded has no velocity)."""
    if hist.shape[2] < 2:
        return torch.zeros_like(hist[:, :, -1:])
    both = (observed[:, :, -1] & observed[:, :, -2])[:, :, None, None]
    return torch.where(both, hist[:, :, -1:] - hist[:, :, -2:-1], torch.zeros_like(hist[:, :, -1:]))


def history_trail(hist: torch.Tensor, window: int) -> torch.Tensor | None:
    """The last ``window`` + 1 positions (B, N, W + 1, 2) of history (B, N, S, 2), the first position
    repeated before it (as ``network.motion_inputs``); None without a motion window."""
    if window <= 0:
        return None
    s = hist.shape[2]
    return hist.index_select(2, torch.arange(s - window - 1, s, device=hist.device).clamp(min=0))


def window_mean(trail: torch.Tensor) -> torch.Tensor:
    """Mean displacement (..., 2) over a position trail (..., W + 1, 2)."""
    return (trail[..., -1, :] - trail[..., 0, :]) / (trail.shape[-2] - 1)


def step_motion(prev: torch.Tensor, trail: torch.Tensor | None) -> torch.Tensor:
    """A generated step's motion input (..., 2 or 4) from its displacement and position trail."""
    return prev if trail is None else torch.cat((prev, window_mean(trail)), dim=-1)


def to_displacement(x: torch.Tensor, prev: torch.Tensor, cfg) -> torch.Tensor:
    """The flow's variable x -> a step's displacement (model pixels); prev: the step before's displacement
    (used with ``cfg.residual_motion``). Any shape, x and prev alike."""
    disp = x if cfg.displacement_scale == 1.0 else x * cfg.displacement_scale
    return disp + prev if cfg.residual_motion else disp


def residual_base(prev: torch.Tensor, trail: torch.Tensor | None) -> torch.Tensor:
    """What a residual-motion step continues (..., 2): the windowed mean displacement of the position trail
    with a motion window, else the previous displacement."""
    return prev if trail is None else window_mean(trail)


def _append_step(seq: torch.Tensor, observed: torch.Tensor, x: torch.Tensor, step: int, cfg) -> torch.Tensor:
    """Reference samplers: positions seq (K, N, S, 2) plus the step the flow variable x (K, N, 1, 2) gives;
    the first generated step continues a velocity only where both of its history ends were observed (with
    a motion window: the window's mean displacement, as training's ``residual_targets``)."""
    if cfg.motion_window:
        base = motion_inputs(seq[:, :, -(cfg.motion_window + 1) :], cfg.motion_window)[:, :, -1:, 2:]
    else:
        base = observed_displacement(seq, observed) if step == 0 else seq[:, :, -1:] - seq[:, :, -2:-1]
    return torch.cat((seq, seq[:, :, -1:] + to_displacement(x, base, cfg)), dim=2)


def _expand(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if x is None else x.expand(k, *x.shape[1:]).contiguous()


class FastSampler:
    """KV-cached, K-batched, few-step sampler with warm start."""

    fused_head = True  # run the flow head through ``FusedHead`` (eager); CUDA graphs keep FlowHead.run

    def __init__(
        self,
        model: ARFM,
        horizon: int,
        num_samples: int,
        euler_steps: int = 4,
        t_end: float = 1.0,
        warm_start_t: float = 0.8,
        warm_start_steps: int = 2,
    ):
        self.model, self.horizon, self.k = model, horizon, num_samples
        self.times = {
            "cold": euler_times(0.0, t_end, euler_steps),
            "warm": euler_times(warm_start_t, t_end, warm_start_steps),
        }
        self.warm_start_t = warm_start_t
        self._own = None  # the generated-steps KV segment, reused by calls with the same shapes
        self._flat: FlatCache | None = None  # the same for the flat path
        self._fusion: dict[int, FusedFusion] = {}  # folded fusion weights per history length
        self._points: FusedPointTokens | None = None
        self._head_cache: dict = {}  # (dtype, device) -> adaLN tables and fused head without conditioning

    @torch.no_grad()
    def modulations(
        self, times: list[float], cond: torch.Tensor | None, like: torch.Tensor
    ) -> list[list[torch.Tensor]]:
        """adaLN parameters of the flow head for each Euler time: [time][layer] (1, 1, 6D / 2D)."""
        head = self.model.head
        t = torch.tensor(times[:-1], dtype=like.dtype, device=like.device)
        c = head.condition(t, None)  # (E, D)
        if cond is not None:
            c = c + cond.reshape(1, -1)
        per_layer = head.modulations(c)  # [(E, 6D)...]
        return [[m[e].reshape(1, 1, -1) for m in per_layer] for e in range(len(times) - 1)]

    @torch.no_grad()
    def prepare(self, inputs: ForecastInputs) -> _State:
        """Prefill the observed history once (batch 1) and set up the K-sample buffers."""
        model = self.model
        k, h = self.k, self.horizon
        hist = inputs.history
        dev, dtype = hist.device, hist.dtype
        x, step_valid, token_valid = model.sequence(
            inputs.fmaps,
            inputs.tokens,
            hist,
            inputs.observed,
            inputs.point_valid,
            hist.shape[2],
            inputs.levels(1),
        )
        text = model.text_prefix(1, inputs.text, dtype, dev)
        reuse = self._own if self._own is not None and self._own.k[0].device == dev else None
        last, cache = model.fusion.prefill(x, step_valid, token_valid, k, h, text, reuse)
        self._own = cache.own
        g = inputs.tokens.shape[1]
        glob = model.global_tokens(inputs.tokens, torch.zeros(1, dtype=torch.bool, device=dev))[:, :, 0]
        prev = observed_displacement(hist, inputs.observed)[:, :, 0]
        mods, head, tables = self._head_setup(inputs.cond, hist)
        flat, space_mask = None, None
        if self.fused_head and text is None:  # the flat KV layout holds the history only (no text prefix)
            flat = self._flat = self._folded(cache.offset).flat_cache(cache, k, h, self._flat)
            if not bool(token_valid.all()):
                space_mask = torch.where(token_valid, 0.0, NEG).to(dtype)[:, None, None, :]
        return _State(
            fmaps=list(inputs.fmaps),
            glob=glob.expand(k, -1, -1).contiguous(),
            cache=cache,
            token_valid=token_valid,
            head_mask=torch.where(inputs.point_valid, 0.0, NEG).to(dtype)[:, None, None, :],
            fused=last[:, g:].expand(k, -1, -1).contiguous(),
            pos=hist[:, :, -1].expand(k, -1, -1).contiguous(),
            prev=prev.expand(k, -1, -1).contiguous(),
            trail=_expand(history_trail(hist, model.cfg.motion_window), k),
            x0=torch.zeros(k, hist.shape[1], 2, dtype=dtype, device=dev),
            index=torch.zeros((), dtype=torch.long, device=dev),
            mods=mods,
            head=head,
            tables=tables,
            flat=flat,
            space_mask=space_mask,
            points=self._point_tokens(dtype, dev) if self.fused_head else None,
        )

    def _point_tokens(self, dtype, device) -> FusedPointTokens | None:
        """Folded point-token lookup for generated steps (built once; float32 on the CPU only)."""
        if dtype != torch.float32 or device.type != "cpu":
            return None
        if self._points is None:
            self._points = FusedPointTokens(self.model)
        return self._points

    def _head_setup(self, cond: torch.Tensor | None, like: torch.Tensor):
        """Flow-head adaLN parameters per schedule and Euler time, and (eager) the fused head and its tables;
        without a conditioning they are the same every call, so they are kept (the weights must not change
        under a sampler)."""
        key = (like.dtype, like.device)
        if cond is None and key in self._head_cache:
            return self._head_cache[key]
        mods = {name: self.modulations(t, cond, like) for name, t in self.times.items()}
        head, tables = None, None
        if self.fused_head:
            head, d = FusedHead(self.model.head), self.model.cfg.head_hidden_size
            tables = {name: [FusedHead.table(e, d) for e in rows] for name, rows in mods.items()}
        if cond is None:
            self._head_cache[key] = (mods, head, tables)
        return mods, head, tables

    def _folded(self, history: int) -> FusedFusion:
        """The fusion transformer's decode weights folded for steps after ``history`` observed ones (built
        once per history length; the model's weights must not change under a sampler)."""
        if history not in self._fusion:
            self._fusion[history] = FusedFusion(self.model.fusion, history, self.horizon)
        return self._fusion[history]

    @torch.no_grad()
    def sample(
        self,
        inputs: ForecastInputs,
        noise: torch.Tensor | None = None,
        warm: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Forecast positions (K, N, H, 2) in the model frame.

        noise (K, H, N, 2): the flow's starting noise per step (drawn from ``generator`` if None);
        warm (K, N, H, 2): displacements (model pixels) of a previous forecast aligned to these steps, NaN
        where unknown (those steps, or the whole forecast when None, start from noise)."""
        noise = self._noise(inputs, noise, generator)
        state = self.prepare(inputs)
        schedules = self._schedules(warm)
        outputs = []
        for step, schedule in enumerate(schedules):
            self._set_x0(state, noise[:, step], warm, step, schedule)
            state.index.fill_(step)
            # the last step's fused state would only predict a step beyond the horizon: not computed
            self.body(state, schedule, fuse=step + 1 < len(schedules), limit=step + 1)
            outputs.append(state.pos.clone())
        return torch.stack(outputs, dim=2)

    def _noise(self, inputs, noise, generator):
        if noise is not None:
            return noise
        n = inputs.history.shape[1]
        return torch.randn(
            self.k,
            self.horizon,
            n,
            2,
            generator=generator,
            device=inputs.history.device,
            dtype=inputs.history.dtype,
        )

    def _schedules(self, warm: torch.Tensor | None) -> list[str]:
        """'warm' for steps with any known previous displacement, else 'cold' (one host sync in all)."""
        if warm is None:
            return ["cold"] * self.horizon
        known = torch.isfinite(warm).any(dim=-1).any(dim=1).any(dim=0).tolist()  # (H,)
        return ["warm" if k else "cold" for k in known]

    def _set_x0(self, state: _State, noise: torch.Tensor, warm, step: int, schedule: str) -> None:
        """Cold: noise. Warm: the previous displacement (or the last one) re-noised to t = warm_start_t."""
        if schedule == "cold":
            state.x0.copy_(noise)
            return
        cfg = self.model.cfg
        guess = torch.where(torch.isfinite(warm[:, :, step]), warm[:, :, step], state.prev)
        if cfg.residual_motion:
            guess = guess - residual_base(state.prev, state.trail)
        guess = guess / cfg.displacement_scale
        state.x0.copy_(self.warm_start_t * guess + (1 - self.warm_start_t) * noise)

    def body(self, state: _State, schedule: str, fuse: bool = True, limit: int | None = None) -> None:
        """One future step, in place on the state's buffers: Euler-integrate the displacement from x0, move
        the points, and (``fuse``) fuse the new step through the KV cache (its output predicts the next
        step). ``limit`` (eager only): generated steps so far incl. this one, to attend only to those."""
        head, model = self.model.head, self.model
        times, table = self.times[schedule], state.mods[schedule]
        base = head.base(state.fused)
        x = state.x0
        for e in range(len(times) - 1):
            if state.head is not None:
                v = state.head(base, x, state.tables[schedule][e], state.head_mask)
            else:
                v = head.run(base, x, table[e], state.head_mask)
            x = torch.add(x, v, alpha=times[e + 1] - times[e])
        base = residual_base(state.prev, state.trail) if model.cfg.residual_motion else state.prev
        disp = to_displacement(x, base, model.cfg)
        state.pos.add_(disp)
        state.prev.copy_(disp)
        if state.trail is not None:
            state.trail[:, :, :-1] = state.trail[:, :, 1:].clone()
            state.trail[:, :, -1] = state.pos
        if not fuse:
            return
        k, n, _ = disp.shape
        motion = step_motion(state.prev, state.trail).reshape(k * n, -1)
        if state.points is not None:
            pts = state.points(state.fmaps, state.pos.view(k * n, 2), motion)
        else:
            observed = torch.zeros(1, k * n, 1, dtype=torch.bool, device=disp.device)
            pts = model.point_tokens(
                state.fmaps, state.pos.reshape(1, k * n, 1, 2), observed, motion.reshape(1, k * n, 1, -1)
            )
        x_new = torch.cat((state.glob, pts.reshape(k, n, -1)), dim=1)
        if state.flat is not None:
            out = self._fusion[state.flat.history].step(x_new, state.flat, limit - 1, state.space_mask)
        else:
            out, _ = model.fusion.step(x_new, state.cache, state.index, state.token_valid, limit=limit)
        state.fused.copy_(out[:, state.glob.shape[1] :])


class CudaGraphSampler(FastSampler):
    """FastSampler whose per-step body is captured once per schedule as a CUDA graph and replayed.

    The prefill runs eagerly; its results are copied into static buffers that the graphs read, so every
    call with the same shapes (N, history, K, H) reuses the captured graphs."""

    fused_head = False  # the captured graphs read the adaLN tables of the static state (FlowHead.run)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._static: _State | None = None
        self._graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self._key: tuple | None = None

    @torch.no_grad()
    def sample(
        self,
        inputs: ForecastInputs,
        noise: torch.Tensor | None = None,
        warm: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        noise = self._noise(inputs, noise, generator)
        fresh = super().prepare(inputs)
        state = self._adopt(fresh)
        schedules = self._schedules(warm)
        outputs = []
        for step, schedule in enumerate(schedules):
            self._set_x0(state, noise[:, step], warm, step, schedule)
            state.index.fill_(step)
            self._graph(schedule, state).replay()
            outputs.append(state.pos.clone())
        return torch.stack(outputs, dim=2)

    def _adopt(self, fresh: _State) -> _State:
        """Copy a fresh state into the static one (allocated, and graphs dropped, when shapes change)."""
        key = (tuple(fresh.pos.shape), fresh.cache.offset, tuple(f.shape for f in fresh.fmaps))
        if self._static is None or key != self._key:
            self._static, self._key, self._graphs = fresh, key, {}
            return fresh
        s = self._static
        for dst, src in zip(s.fmaps, fresh.fmaps, strict=True):
            dst.copy_(src)
        for dst_seg, src_seg in zip(s.cache.segments, fresh.cache.segments, strict=True):
            for dst, src in zip(
                dst_seg.k + dst_seg.v + [dst_seg.mask], src_seg.k + src_seg.v + [src_seg.mask], strict=True
            ):
                dst.copy_(src)
        for name in ("glob", "token_valid", "head_mask", "fused", "pos", "prev", "trail"):
            if getattr(s, name) is not None:
                getattr(s, name).copy_(getattr(fresh, name))
        for name, table in fresh.mods.items():
            for dst_row, src_row in zip(s.mods[name], table, strict=True):
                for dst, src in zip(dst_row, src_row, strict=True):
                    dst.copy_(src)
        return s

    def _graph(self, schedule: str, state: _State) -> torch.cuda.CUDAGraph:
        if schedule not in self._graphs:
            names = ("fused", "pos", "prev") + (("trail",) if state.trail is not None else ())
            snapshot = {n: getattr(state, n).clone() for n in names}
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up on a side stream, as CUDA graphs require
                self.body(state, schedule)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.body(state, schedule)
            for n, v in snapshot.items():  # capture ran the body twice: restore this step's inputs
                getattr(state, n).copy_(v)
            self._graphs[schedule] = graph
        return self._graphs[schedule]


@torch.no_grad()
def sample_no_cache(
    model: ARFM, inputs: ForecastInputs, noise: torch.Tensor, euler_steps: int = 4, t_end: float = 1.0
) -> torch.Tensor:
    """Reference sampler: the whole sequence is re-fused at every step (no KV cache, K in the batch).
    noise (K, H, N, 2) -> positions (K, N, H, 2)."""
    cfg = model.cfg
    k, h = noise.shape[:2]
    times = euler_times(0.0, t_end, euler_steps)
    hist, obs = inputs.history.expand(k, -1, -1, -1), inputs.observed.expand(k, -1, -1)
    valid = inputs.point_valid.expand(k, -1)
    fmaps = [f.expand(k, -1, -1, -1) for f in inputs.fmaps]
    tokens = inputs.tokens.expand(k, -1, -1)
    text = None if inputs.text is None else inputs.text.expand(k, -1, -1)
    cond = None if inputs.cond is None else inputs.cond.expand(k, -1)
    seq, seen = hist, obs
    for step in range(h):
        fused = model.fuse(fmaps, tokens, seq, seen, valid, hist.shape[2], text, inputs.levels(k))
        fused = fused[:, :, -1:]  # (K, N, 1, D)
        x = noise[:, step, :, None]
        for e in range(len(times) - 1):
            t = torch.full((k,), times[e], dtype=noise.dtype, device=noise.device)
            x = x + (times[e + 1] - times[e]) * model.head(fused, x, t, cond, valid)
        seq = _append_step(seq, obs, x, step, cfg)
        seen = torch.cat((seen, torch.zeros_like(seen[:, :, :1])), dim=2)
    return seq[:, :, hist.shape[2] :]


@torch.no_grad()
def sample_naive_official(
    model: ARFM,
    inputs: ForecastInputs,
    noise: torch.Tensor,
    reencode: Callable[[], torch.Tensor] | None = None,
    num_steps: int = 16,
) -> torch.Tensor:
    """The released evaluation loop: K samples batched by repetition, no KV cache (the fusion transformer
    re-runs over the whole sequence once per step), the flow head integrated from noise with Euler over
    linspace(0, 1, num_steps + 1)[:-1] (num_steps - 1 evaluations, ending at t = 1 - 1/num_steps), and the
    global image encoder re-run at every evaluation (``reencode``, its output unused as in the original).
    noise (K, H, N, 2) -> positions (K, N, H, 2)."""
    k = noise.shape[0]
    cond = None if inputs.cond is None else inputs.cond.expand(k, -1)
    cfg = model.cfg
    times = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)[:-1].tolist()
    hist, obs = inputs.history.expand(k, -1, -1, -1), inputs.observed.expand(k, -1, -1)
    valid = inputs.point_valid.expand(k, -1)
    fmaps = [f.expand(k, -1, -1, -1) for f in inputs.fmaps]
    tokens = inputs.tokens.expand(k, -1, -1)
    text = None if inputs.text is None else inputs.text.expand(k, -1, -1)
    seq, seen = hist, obs
    for step in range(noise.shape[1]):
        fused = model.fuse(fmaps, tokens, seq, seen, valid, hist.shape[2], text, inputs.levels(k))
        fused = fused[:, :, -1:]
        x = noise[:, step, :, None]
        for e in range(len(times) - 1):
            if reencode is not None:
                reencode()
            t = torch.full((k,), times[e], dtype=noise.dtype, device=noise.device)
            x = x + (times[e + 1] - times[e]) * model.head(fused, x, t, cond, valid)
        seq = _append_step(seq, obs, x, step, cfg)
        seen = torch.cat((seen, torch.zeros_like(seen[:, :, :1])), dim=2)
    return seq[:, :, hist.shape[2] :]
