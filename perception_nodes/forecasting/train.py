"""Training ARFM on point tracks: rectified flow on next-step displacements, teacher forcing.

Per example: a window of ``history`` observed steps and ``horizon`` future steps of motion-weighted points
(softmax of clipped mean squared motion, as the released code), the image of the last observed step. Every
step s learns the velocity of x_t = t * d_s + (1 - t) * noise, d_s = (x_{s+1} - x_s) / displacement_scale
(with ``residual_motion``: what is left after continuing the last displacement or the motion window's
mean, ``residual_targets``),
towards d_s - noise, with t from cosmap(U) (official), logit-normal or uniform, drawn per step of each
window (``time_per_step``; the released code draws one per window); the fusion runs once per batch and
the flow head ``head_repeats`` times with fresh noise and times (the mean of their losses). The loss is
masked where a step's start or end point is not visible. AdamW, warmup + cosine, gradient clipping, EMA
weights (used for inference). Resumable: the EMA model (.safetensors + .json) and a training state
(online weights, EMA and optimiser moments, step) are written every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from perception_nodes.forecasting.config import by_name
from perception_nodes.forecasting.network import ARFM, motion_inputs
from perception_nodes.forecasting.processor import collate, make_window
from perception_nodes.forecasting.weights import save_model

log = logging.getLogger(__name__)

TIME_SAMPLINGS = ("cosmap", "logit_normal", "uniform")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = field(default="small", metadata={"help": "ARFM config name (small, official)"})
    steps: int = field(default=3000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=4, metadata={"help": "examples per step"})
    points: int = field(
        default=100, metadata={"help": "points per example (train with the count you forecast)"}
    )
    history: int = field(default=8, metadata={"help": "observed steps per example"})
    horizon: int = field(default=15, metadata={"help": "future steps per example"})
    lr: float = field(
        default=4e-3,
        metadata={
            "help": "peak AdamW learning rate (4e-3 trains the shipped small model, see its card; "
            "the released official model was trained at 5e-5)"
        },
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup: int = field(default=100, metadata={"help": "linear warmup steps"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip"})
    ema: float = field(default=0.999, metadata={"help": "EMA decay of the inference weights"})
    time_sampling: str = field(
        default="cosmap", metadata={"help": "flow time sampling: cosmap, logit_normal, uniform"}
    )
    motion_temperature: float = field(
        default=0.5, metadata={"help": "point sampling softmax temperature (0 = uniform)"}
    )
    input_jitter_px: float = field(
        default=0.6, metadata={"help": "noise added to observed positions (tracker error)"}
    )
    jitter_spread: bool = field(
        default=True,
        metadata={
            "help": "draw each example's jitter std uniformly in [0, input_jitter_px] (exact histories "
            "included) instead of using input_jitter_px for all"
        },
    )
    future_noise_px: float = field(
        default=0.0,
        metadata={
            "help": "std of a random walk added to the teacher-forced future positions (per-step "
            "displacement noise, drawn per example in [0, future_noise_px]), so that training sees "
            "generated steps as rough as the model's own samples; targets stay the true displacements"
        },
    )
    time_per_step: bool = field(
        default=True,
        metadata={
            "help": "draw a flow time for every step of every example (all points of a step share it, as in "
            "sampling) instead of one per example (the released code)"
        },
    )
    head_repeats: int = field(
        default=4,
        metadata={
            "help": "flow-head passes per batch, each with its own noise and flow times, on the same fused "
            "states (the fusion runs once); the loss is their mean. 4 trains the shipped small model "
            "(validation 0.516x constant velocity vs 0.525x with 1, see its card); the released code uses 1"
        },
    )
    flip: bool = field(default=True, metadata={"help": "random left-right mirroring"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest on a busy machine)"})

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}")
        if min(self.steps, self.batch_size, self.points, self.history, self.horizon, self.head_repeats) < 1:
            raise ValueError("steps, batch_size, points, history, horizon and head_repeats must be >= 1")
        if not 0 <= self.ema < 1:
            raise ValueError("ema must be in [0, 1)")


def sample_times(n: int, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Flow times (n,) in (0, 1): cosmap(U) (SD3 eq. 21, as released), logit-normal(0, 1), uniform."""
    u = torch.rand(n, generator=gen)
    if mode == "cosmap":
        return 1.0 - 1.0 / (torch.tan(math.pi / 2 * u) + 1.0)
    if mode == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=gen))
    return u


def residual_targets(
    pos: torch.Tensor, inputs: torch.Tensor, observed: torch.Tensor, history: int, window: int = 0
) -> torch.Tensor:
    """Residual-motion targets (B, N, L - 1, 2): the true next position minus where the sampler's constant
    velocity would put it, both from the positions the model is given (``inputs``, jittered in the
    history): pos_{s+1} - x_s - b_s with b_s = x_s - x_{s-1}. In the history b_s is 0 unless both steps
    are observed (as ``sampler.observed_displacement``); generated steps always continue (teacher forcing).
    With a motion ``window`` W, b_s is the mean displacement (x_s - x_{s-W}) / W of ``network.motion_inputs``
    at every step (as ``sampler.residual_base``).
    pos (B, N, L, 2) true, inputs (B, N, L - 1, 2), observed (B, N, L - 1)."""
    if window > 0:
        return pos[:, :, 1:] - inputs - motion_inputs(inputs, window)[..., 2:]
    base = torch.zeros_like(inputs)
    base[:, :, 1:] = inputs[:, :, 1:] - inputs[:, :, :-1]
    steps = torch.arange(1, inputs.shape[2], device=inputs.device)
    known = (observed[:, :, 1:] & observed[:, :, :-1]) | (steps >= history)
    base[:, :, 1:] *= known[..., None]
    return pos[:, :, 1:] - inputs - base


def jitter_history(
    inputs: torch.Tensor, history: int, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs (B, N, L, 2) with Gaussian noise on the first ``history`` steps, like a tracker's error: std
    ``input_jitter_px``, or per example uniform in [0, input_jitter_px] with ``jitter_spread`` (so the
    model also sees exact histories). Returns the jittered inputs and each example's std (B,), which
    ``history_noise_input`` models are told."""
    out = inputs.clone()
    std = torch.full((inputs.shape[0],), max(cfg.input_jitter_px, 0.0))
    if cfg.input_jitter_px <= 0:
        return out, std
    if cfg.jitter_spread:
        std = std * torch.rand(inputs.shape[0], generator=gen)
    out[:, :, :history] += torch.randn(out[:, :, :history].shape, generator=gen) * std[:, None, None, None]
    return out, std


def perturb_future(
    inputs: torch.Tensor, history: int, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """inputs (B, N, L, 2) whose steps from ``history`` on (the teacher-forced generated steps) follow a
    random walk around the true positions: per-step displacement noise of std u * ``future_noise_px``,
    u ~ U[0, 1] per example, accumulated from the last observed step (whose position is kept)."""
    if cfg.future_noise_px <= 0 or inputs.shape[2] <= history:
        return inputs
    out = inputs.clone()
    std = cfg.future_noise_px * torch.rand(inputs.shape[0], 1, 1, 1, generator=gen)
    steps = torch.randn(out[:, :, history:].shape, generator=gen) * std
    out[:, :, history:] += steps.cumsum(dim=2)
    return out


def flow_loss(
    model: ARFM, batch: dict[str, torch.Tensor], history: int, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Masked rectified-flow loss of one batch (see module docstring)."""
    pos, vis, valid = batch["pos"], batch["visible"], batch["point_valid"]
    b, length = pos.shape[0], pos.shape[2]
    inputs, level = jitter_history(pos[:, :, :-1], history, cfg, gen)
    inputs = perturb_future(inputs, history, cfg, gen)
    steps = torch.arange(length - 1)
    observed = vis[:, :, :-1] & (steps < history)
    mask = vis[:, :, 1:] & vis[:, :, :-1] & valid[:, :, None]
    if model.cfg.residual_motion:
        disp = residual_targets(pos, inputs, observed, history, model.cfg.motion_window)
    else:
        disp = pos[:, :, 1:] - pos[:, :, :-1]  # (B, N, L - 1, 2) d_s
    target = disp / model.cfg.displacement_scale
    fmaps, tokens = model.encode_image(batch["image"])
    cond = model.condition(b, None, None, pos.device)
    fused = model.fuse(fmaps, tokens, inputs, observed, valid, history, noise_level=level)
    if not mask.any():
        return fused.sum() * 0.0
    losses = []
    for _ in range(cfg.head_repeats):
        noise = torch.randn(target.shape, generator=gen)
        t = sample_times(b * (length - 1) if cfg.time_per_step else b, cfg.time_sampling, gen)
        t = t.view(b, length - 1) if cfg.time_per_step else t[:, None].expand(b, length - 1)
        noised = t[:, None, :, None] * target + (1 - t[:, None, :, None]) * noise
        vel = model.head(fused, noised, t, cond, valid)
        losses.append(((vel - (target - noise)) ** 2).mean(-1)[mask].mean())
    return torch.stack(losses).mean()


class WindowSampler:
    """Random training windows from episodes (objects with rgb, tracks_2d, visible)."""

    def __init__(self, episodes: Sequence, cfg: TrainConfig, model_cfg, rng: np.random.Generator):
        self.cfg, self.model_cfg, self.rng = cfg, model_cfg, rng
        length = cfg.history + cfg.horizon
        self.episodes = [e for e in episodes if len(e.rgb) >= length]
        if not self.episodes:
            raise ValueError(f"no episode has the {length} frames a window needs")

    def batch(self) -> dict[str, torch.Tensor]:
        cfg, windows = self.cfg, []
        for _ in range(50 * cfg.batch_size):
            if len(windows) == cfg.batch_size:
                break
            ep = self.episodes[self.rng.integers(len(self.episodes))]
            current = int(self.rng.integers(cfg.history - 1, len(ep.rgb) - cfg.horizon))
            win = make_window(
                ep,
                current,
                cfg.history,
                cfg.horizon,
                cfg.points,
                self.model_cfg,
                self.rng,
                cfg.motion_temperature,
            )
            if win is not None:
                windows.append(win)
        if len(windows) < cfg.batch_size:
            raise ValueError("episodes hold too few visible tracks to fill a batch")
        flip = self.rng.random(len(windows)) < 0.5 if cfg.flip else None
        return collate(windows, cfg.points, flip, self.model_cfg.coord_size)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def state_path(out: Path) -> Path:
    return out.with_name(out.stem + ".train.safetensors")


def save_state(
    out: Path,
    model: ARFM,
    ema: ARFM,
    opt: torch.optim.Optimizer,
    step: int,
    cfg: TrainConfig,
    losses: list[float],
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    names = dict(model.named_parameters())
    index = {id(p): n for n, p in names.items()}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                tensors[f"opt.{index[id(p)]}.{key}"] = (
                    value if torch.is_tensor(value) else torch.tensor(value)
                )
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    path = state_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(
        tensors, str(tmp), metadata={"step": str(step), "train_config": json.dumps(dataclasses.asdict(cfg))}
    )
    tmp.replace(path)
    path.with_suffix(".json").write_text(
        json.dumps(
            {"step": step, "train_config": dataclasses.asdict(cfg), "recent_losses": losses[-200:]}, indent=1
        )
        + "\n"
    )
    save_model(ema, out, {"train_step": step, "train_config": dataclasses.asdict(cfg)})


def load_state(out: Path, model: ARFM, ema: ARFM, opt: torch.optim.Optimizer) -> int:
    """Restore from ``state_path(out)``; returns the step to continue from."""
    tensors = load_file(str(state_path(out)))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    for name, p in model.named_parameters():
        state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
        if state:
            opt.state[p] = state
    return int(json.loads(state_path(out).with_suffix(".json").read_text())["step"])


def train(
    episodes: Sequence, cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True
) -> dict:
    """Train on ``episodes``; writes ``out`` (.safetensors EMA weights + .json) and its training state.
    Returns a summary (steps, first/last mean loss, seconds)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    model_cfg = by_name(cfg.model)
    model, ema = ARFM(model_cfg), ARFM(model_cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = load_state(out, model, ema, opt) if resume and state_path(out).exists() else 0
    if start:
        log.info("resuming %s from step %d", out, start)
    rng = np.random.default_rng(cfg.seed + start)
    gen = torch.Generator().manual_seed(cfg.seed + start)
    windows = WindowSampler(episodes, cfg, model_cfg, rng)
    losses: list[float] = []
    began = time.perf_counter()
    bar = tqdm(
        range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="train arfm"
    )
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        loss = flow_loss(model, windows.batch(), cfg.history, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        _ema_update(ema, model, min(cfg.ema, (1 + step) / (10 + step)))
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_state(out, model, ema, opt, step + 1, cfg, losses)
    if start >= cfg.steps:
        log.info("%s already trained for %d steps", out, start)
    window = max(1, min(50, len(losses) // 4))
    return {
        "steps": cfg.steps,
        "start": start,
        "seconds": time.perf_counter() - began,
        "loss_first": float(np.mean(losses[:window])) if losses else float("nan"),
        "loss_last": float(np.mean(losses[-window:])) if losses else float("nan"),
    }


@torch.no_grad()
def _ema_update(ema: ARFM, model: ARFM, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
