"""Self-supervised EISEN training from motion (official recipe + bootstrapping / explaining away).

Data: consecutive frame pairs (t, t+1) from sim episodes (generated on the fly, static camera) or sim bags.
Motion target: optical flow t -> t+1 computed from the images with OpenCV DIS (``--flow gt`` uses the sim's
ground-truth flow, as an ablation); pixels with |flow| > threshold are "moving", kept only near a
chromaticity change (``--chroma-support``: a moving shadow or a flow halo over unchanged texture is not an
object), and each 8-connected moving region gets its own target id (``--single-motion-id``: the official one
id for all moving pixels). Loss: the official KL between each moving node's softmax over its sampled
neighbours and the uniform distribution over the samples with the same target id, at 3 scales of the
affinity map.

Bootstrapping (explaining away): at the steps given by ``--bootstrap-at`` the current model segments every
training frame; a predicted segment that lies mostly inside the motion mask (the pusher, an object already
known) gets its own target id, so the remaining co-moving pixels form a separate group and the model learns
to split objects that move together.

Static background (``--static-background``, on by default; not in the official recipe): with a static
camera, map nodes that no motion mask of their episode touches are one more target group, the background,
whose rows get their own averaged KL term, so the table and the floor stop breaking into fragments. With
a moving camera nearly every node moves at some time and the group is empty. Vacated floor
(``--vacated-background D``, not in the official recipe): near motion, the nodes where a frame shows what the
episode's first and last frames show (mean |RGB| difference <= D) join that frame's background group: the
floor that objects uncover and cover as they move, otherwise left unsupervised.

Still objects (``--still-objects D``, not in the official recipe): with a static camera, a region that moves
at some time of its episode is that object's extent in the frames where it stands still: before it moves
(nothing touched it since and the image inside it is unchanged: mean |RGB| difference <= D) and, with
``--still-directions both``, after it came to a stop (the region DIS finds on the reversed pair). Those
regions become target groups of those frames too, so objects get supervised while they do not move, apart
from their still neighbours. A moving camera changes the image inside every region: nothing is claimed.

Depth background (``--depth-background TOL``, off by default; not in the official recipe): episodes with
depth show where the supporting plane is (``segmentation.depth_refine``), so map nodes mostly on it join
each frame's background group and nodes showing anything that stands on it leave that group.

Self mask (``--self-mask``, not in the official recipe): the robot knows where its own end effector is
(joint states and its model; in the sim, the pusher's pose and size), so its body is taken out of the
motion targets and is a target group of its own in every frame (``robot_masks``, ``explain_robot``).
Without it the pusher's motion region is mostly what it pushes (10 training episodes, ground truth only
to measure: 23 % pusher, 50 % other objects, 26 % floor; with it the pusher's group is 81 % pusher). Off by
default: with the model card's recipe it scored 0.488 held-out vs 0.499 without it (more split objects).

Checkpoints: ``OUT/eisen.safetensors`` + ``OUT/eisen.json`` (config), and ``OUT/train_state.safetensors`` +
``OUT/train_state.json`` (optimiser moments, step, targets round) to resume with ``--resume``.

GPU (a previous version took 228 s on one H100 for 4000 steps, batch 32, 160 episodes, with data)::

    MUJOCO_GL=egl python -m perception_nodes.segmentation.train --device cuda --out DIR --no-cache \
        --sim-episodes 120 --workers 12 --steps 3000 --batch 32 --lr 1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from perception_nodes.segmentation import affinity as aff
from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.network import EisenNet, check_state_dict, save_weights
from perception_nodes.segmentation.processor import connected_segments
from perception_nodes.segmentation.segmenter import EisenSegmenter, make_noise

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    out: str = dataclasses.field(
        metadata={"help": "output folder (weights, config, train state, data cache)"}
    )
    preset: str = dataclasses.field(default="small", metadata={"help": "model preset: small or official"})
    steps: int = dataclasses.field(default=3000, metadata={"help": "optimiser steps"})
    batch: int = dataclasses.field(default=8, metadata={"help": "images per step"})
    lr: float = dataclasses.field(default=5e-4, metadata={"help": "Adam learning rate (official 5e-4)"})
    warmup: int = dataclasses.field(
        default=100, metadata={"help": "linear warm-up steps, then poly(0.9) decay"}
    )
    clip: float = dataclasses.field(default=1.0, metadata={"help": "gradient norm clip"})
    flow: str = dataclasses.field(
        default="dis", metadata={"help": "motion source: dis (images) or gt (ablation)"}
    )
    flow_threshold: float = dataclasses.field(
        default=0.5, metadata={"help": "|flow| px above which a pixel moves"}
    )
    chroma_support: float = dataclasses.field(
        default=0.03,
        metadata={"help": "DIS: keep moving pixels near a chromaticity change above this (0: off)"},
    )
    support_radius: int = dataclasses.field(
        default=1, metadata={"help": "DIS: distance in px from a chromaticity change that still counts"}
    )
    single_motion_id: bool = dataclasses.field(
        default=False,
        metadata={"help": "one target id for all moving pixels (official) instead of one per region"},
    )
    max_moving_fraction: float = dataclasses.field(
        default=0.3, metadata={"help": "skip pairs with more moving pixels than this (camera motion)"}
    )
    min_moving_pixels: int = dataclasses.field(
        default=64, metadata={"help": "skip pairs with fewer moving pixels"}
    )
    bootstrap_at: tuple[float, ...] = dataclasses.field(
        default=(0.5,), metadata={"help": "fractions of the run at which targets are re-derived (empty: off)"}
    )
    bootstrap_purity: float = dataclasses.field(
        default=0.8, metadata={"help": "a segment explains motion when this fraction of it moves"}
    )
    sim_episodes: int = dataclasses.field(default=80, metadata={"help": "sim episodes to generate (no bags)"})
    sim_frames: int = dataclasses.field(default=24, metadata={"help": "frames per generated episode"})
    sim_seed: int = dataclasses.field(default=1000, metadata={"help": "seed of the first generated episode"})
    sim_shove_prob: float = dataclasses.field(
        default=0.15,
        metadata={"help": "per object and frame, probability of a random shove (objects move on their own)"},
    )
    static_background: float = dataclasses.field(
        default=1.0,
        metadata={
            "help": "static camera only: nodes that never move during their episode form one background "
            "group whose rows are supervised with this loss weight (0: off, the official loss)"
        },
    )
    background_margin: int = dataclasses.field(
        default=2, metadata={"help": "map pixels kept unsupervised around an episode's motion"}
    )
    vacated_background: float = dataclasses.field(
        default=4.0,
        metadata={
            "help": "static camera only: nodes near motion also join a frame's background group where the "
            "frame matches the episode's first and last frames within this mean |RGB| difference: the "
            "floor an object uncovered (0: off)"
        },
    )
    still_objects: float = dataclasses.field(
        default=4.0,
        metadata={
            "help": "static camera only: a region that moves later in its episode is also a target group "
            "in the earlier frames where it has not moved yet and the image inside it differs by at most "
            "this mean |RGB| difference (0: off)"
        },
    )
    still_directions: str = dataclasses.field(
        default="both",
        metadata={
            "help": "still objects before they move (before) or also after they came to a stop (both: DIS "
            "on the reversed pairs; with the vacated floor, one run each: validation mIoU 0.475 vs 0.468)"
        },
    )
    depth_background: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "episodes with depth: the supporting plane (segmentation.depth_refine, this distance "
            "to it in metres: the sim's exact depth takes 0.003, a depth camera about 0.01) joins every "
            "frame's background group and what stands on it leaves that group (0: off; needs open3d)"
        },
    )
    self_mask: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "the robot's end effector (the sim's pusher), placed from its own pose and shape, is "
            "taken out of the motion targets and is a target group of its own in every frame (held-out "
            "mIoU 0.488 vs 0.499 without it, one run each)"
        },
    )
    supervision: str = dataclasses.field(
        default="motion",
        metadata={
            "help": "motion (self-supervised, the product) or instances (ablation: the same frames' "
            "ground-truth instances as targets, every object its own group and table/floor the background "
            "group, no bootstrapping: what this network and step budget reach with perfect targets)"
        },
    )
    bags: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "sim bags to train on instead"})
    seed: int = dataclasses.field(default=0, metadata={"help": "training seed"})
    device: str = dataclasses.field(default="cpu", metadata={"help": "cpu or cuda"})
    precision: str = dataclasses.field(
        default="fp32",
        metadata={
            "help": "fp32, or bf16: bfloat16 autocast with channels-last convolutions (weights, optimiser "
            "and the loss stay float32; 1.36x faster training steps on a CPU with AVX512-BF16, "
            "bench/bench_segmentation_train.py)"
        },
    )
    threads: int = dataclasses.field(default=2, metadata={"help": "CPU threads"})
    workers: int = dataclasses.field(default=1, metadata={"help": "processes generating sim episodes"})
    no_cache: bool = dataclasses.field(
        default=False, metadata={"help": "do not write OUT/pairs.npz (data cache)"}
    )
    ckpt_every: int = dataclasses.field(default=250, metadata={"help": "checkpoint period in steps"})
    resume: bool = dataclasses.field(default=False, metadata={"help": "continue from OUT's train state"})
    overrides: str = dataclasses.field(default="{}", metadata={"help": "JSON EisenConfig field overrides"})

    def __post_init__(self):
        if self.flow not in ("dis", "gt"):
            raise ValueError(f"flow must be 'dis' or 'gt', got {self.flow!r}")
        if self.steps < 1 or self.batch < 1 or self.lr <= 0:
            raise ValueError("steps, batch must be >= 1 and lr > 0")
        weights = (
            self.static_background,
            self.background_margin,
            self.still_objects,
            self.vacated_background,
            self.depth_background,
        )
        if min(weights) < 0:
            raise ValueError(
                "static_background, background_margin, still_objects, vacated_background, depth_background "
                "must be >= 0"
            )
        if self.still_directions not in ("before", "both"):
            raise ValueError(f"still_directions must be 'before' or 'both', got {self.still_directions!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.supervision not in ("motion", "instances"):
            raise ValueError(f"supervision must be 'motion' or 'instances', got {self.supervision!r}")
        if any(not 0 < f < 1 for f in self.bootstrap_at):
            raise ValueError(f"bootstrap_at fractions must be in (0, 1), got {self.bootstrap_at}")


# -- data ----------------------------------------------------------------------------------------------------


def motion_mask(
    rgb0: np.ndarray,
    rgb1: np.ndarray,
    threshold: float,
    dis=None,
    chroma_support: float = 0.0,
    support_radius: int = 1,
) -> np.ndarray:
    """(H, W) bool: |DIS optical flow rgb0 -> rgb1| > threshold pixels.

    ``chroma_support`` > 0 keeps only moving pixels within ``support_radius`` px of a pixel whose
    chromaticity (r, g, b) / (r + g + b) changed by more than it (L1) between the frames: a moving cast
    shadow changes brightness, not chromaticity, and DIS spreads flow into unchanged texture around moving
    edges. On 56 sim pairs (0.03, radius 1) this raises the precision against ground-truth motion at map
    size from 0.41 to 0.64 (recall 0.91 -> 0.81)."""
    dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g0, g1 = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (rgb0, rgb1))
    flow = dis.calc(g0, g1, None)
    moving = np.linalg.norm(flow, axis=-1) > threshold
    if chroma_support > 0:
        c0, c1 = (_chromaticity(x) for x in (rgb0, rgb1))
        changed = (np.abs(c0 - c1).sum(-1) > chroma_support).astype(np.uint8)
        side = 2 * support_radius + 1
        supported = moving & (cv2.dilate(changed, np.ones((side, side), np.uint8)) > 0)
        moving &= fill_holes(supported)  # a uniform object interior does not change colour when it moves
    return moving


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool with every region that the background cannot reach (flood fill from outside) set."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 1)
    return mask | (padded[1:-1, 1:-1] == 0)


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) float32 rgb / (r + g + b), offset so dark pixels stay stable."""
    f = rgb.astype(np.float32) + 8.0
    return f / f.sum(-1, keepdims=True)


def motion_segments(moving: np.ndarray, min_area: int = 4) -> np.ndarray:
    """(h, w) bool motion mask at map size -> (h, w) uint8 ids: one per 8-connected moving region (objects
    pushed apart from each other get different targets), regions under ``min_area`` pixels dropped (0)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(moving.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, np.uint8)
    big = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_area][:254]  # uint8 ids
    keep[big] = np.arange(1, len(big) + 1)
    return keep[labels]


def to_map(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Input-resolution bool mask -> affinity-map resolution (area fraction >= 0.5)."""
    h, w = size
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5


@dataclasses.dataclass
class PairData:
    """Training frames at the input size and their motion targets at the map size."""

    images: np.ndarray  # (P, H, W, 3) uint8
    motion: np.ndarray  # (P, h, w) bool
    instance: np.ndarray  # (P, H, W) uint16 ground truth (diagnostics only, never used by the loss)
    background: np.ndarray | None = None  # (P, h, w) bool: background group (``frame_backgrounds``)
    still: np.ndarray | None = None  # (P, h, w) uint8 ids of regions that move later (``episode_still``)
    robot: np.ndarray | None = None  # (P, h, w) bool: the robot's own end effector (``robot_masks``)


FIELDS = ("images", "motion", "instance", "background", "still", "robot")
STILL_MAX_DIFF = 4.0  # the pairs' still-object masks when --still-objects is 0 (kept in the cache)
BACKGROUND_ID = 255  # target id of the static background group
ROBOT_ID = 254  # target id of the robot's own body (--self-mask; explain_away ids stay below it)
STILL_OFFSET = 128  # still-object ids become STILL_OFFSET + id (motion and explain_away ids stay below)


def robot_masks(
    ep, input_size: tuple[int, int], map_size: tuple[int, int], use_depth: bool = True
) -> np.ndarray | None:
    """(T, h, w) bool: where the robot's own end effector (the sim's pusher) is in each frame at
    ``map_size``, from its pose and shape, not from the image (``sim.self_mask.pusher_masks``: the hull of
    its box or capsule projected at ``input_size``, less what the depth sees in front of it with
    ``use_depth``). None when the episode does not give the pusher's size (bags written before it was
    recorded)."""
    from perception_nodes.sim.self_mask import pusher_masks

    H, W = input_size
    depth = _resized_depth(ep, (H, W)) if use_depth else None  # resized only when it is used
    scaled = dataclasses.replace(ep, camera=ep.camera.scaled(W, H), depth=depth)
    body = pusher_masks(scaled, use_depth)
    if body is None:
        return None
    return np.stack([to_map(m, map_size) for m in body])


def _resized_depth(ep, size: tuple[int, int]) -> np.ndarray | None:
    if ep.depth is None or ep.depth.shape[1:] == size:
        return ep.depth
    return np.stack([cv2.resize(d, size[::-1], interpolation=cv2.INTER_NEAREST) for d in ep.depth])


def episode_background(motion: list[np.ndarray], margin: int) -> np.ndarray:
    """(h, w) bool: map nodes that no motion mask of an episode (static camera) touches, ``margin`` map
    pixels away from all of them. An object that moves at any time is excluded where it was while moving;
    an object that never moves in the episode is (wrongly) background: shoves make that rare."""
    union = np.any(np.stack(motion), axis=0).astype(np.uint8)
    if margin:
        union = cv2.dilate(union, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return union == 0


def episode_vacated(
    rgb: np.ndarray, frames: list[int], map_size: tuple[int, int], max_diff: float
) -> list[np.ndarray]:
    """(h, w) bool per frame in ``frames``: map nodes where that frame of a static-camera episode shows what
    its first and last frames show (mean |RGB| over the node at most ``max_diff``, 0-255). An object that
    moved during the episode changes its old or its new place, so what stays alike is mostly floor it
    uncovered (sim check on 8 training episodes: 99.5 % ground-truth background, 59 % of the background left
    unlabelled without it).

    rgb: (T, H, W, 3) uint8 frames at the input size."""
    h, w = map_size
    ends = rgb[[0, -1]].astype(np.int16)  # (2, H, W, 3)
    out = []
    for t in frames:
        diff = np.abs(rgb[t].astype(np.int16) - ends).mean(-1).astype(np.float32)  # (2, H, W)
        node = [cv2.resize(d, (w, h), interpolation=cv2.INTER_AREA) for d in diff]
        out.append(np.maximum(*node) <= max_diff)
    return out


def episode_still(
    motion: list[np.ndarray],
    rgb: np.ndarray,
    frames: list[int],
    max_diff: float,
    arrival: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Still-object targets of a static-camera episode: for each frame s in ``frames``, (h, w) uint8 ids of

    - the motion regions of later pairs t > s that no motion mask of pairs s..t-1 touched (the object has
      not moved yet) and inside which frames s and t differ by at most ``max_diff`` (mean |RGB|, 0-255);
    - with ``arrival``, the regions where objects came to a stop in earlier pairs t < s (``arrival[t]``, on
      frame t + 1) that no motion mask of pairs t+1..s touched and that frames t + 1 and s show alike.

    What moves together is an object; it stays that object while it stands still. Regions that overlap an
    earlier claim are skipped (later motion first, nearest in time first).

    motion: the map-size bool masks of pairs 0..T-2 (on frame t); arrival: the same from the reversed pairs
    (on frame t + 1); rgb: (T, H, W, 3) uint8 frames at the input size."""
    regions = [motion_segments(m) for m in motion]
    arrived = [motion_segments(m) for m in arrival] if arrival is not None else None
    out = []
    for s in frames:
        ids = np.zeros_like(regions[0])
        touched = motion[s].copy()
        for t in range(s + 1, len(motion)):
            _claim(ids, regions[t], touched, rgb[s], rgb[t], max_diff)
            touched |= motion[t]
        touched = motion[s].copy()
        for t in range(s - 1, -1, -1) if arrived is not None else ():
            _claim(ids, arrived[t], touched, rgb[s], rgb[t + 1], max_diff)
            touched |= motion[t]
        out.append(ids)
    return out


def _claim(
    ids: np.ndarray, regions: np.ndarray, touched: np.ndarray, rgb_s: np.ndarray, rgb_t: np.ndarray, max_diff
) -> None:
    """Give each region (uint8 ids) free of ``touched`` and of earlier claims, inside which the two frames
    differ by at most ``max_diff``, the next id in ``ids`` (in place; at most 127 ids)."""
    H, W = rgb_s.shape[:2]
    for k in range(1, int(regions.max()) + 1):
        region = regions == k
        if ids.max() >= 127 or (region & (touched | (ids > 0))).any():
            continue
        full = cv2.resize(region.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0
        if np.abs(rgb_s[full].astype(np.int16) - rgb_t[full].astype(np.int16)).mean() <= max_diff:
            ids[region] = ids.max() + 1


def frame_backgrounds(every, rgb, kept, claimed, map_size, tcfg: TrainConfig) -> list[np.ndarray]:
    """(h, w) bool background group of each kept frame: the episode's background and, with
    ``--vacated-background``, the frame's vacated floor off its motion and its still objects (where they
    meet, the floor rule is wrong more often than not: 41 % background on 2 sim episodes).

    every: map-size motion masks of all pairs; kept: the frames; claimed: their still-object ids."""
    base = episode_background(every, tcfg.background_margin)
    if not tcfg.vacated_background:
        return [base] * len(kept)
    vacated = episode_vacated(rgb, kept, map_size, tcfg.vacated_background)
    return [
        base | (floor & ~every[t] & (ids == 0)) for t, floor, ids in zip(kept, vacated, claimed, strict=True)
    ]


def depth_backgrounds(
    ep, frames: list[int], backgrounds: list[np.ndarray], cfg: EisenConfig, tol: float
) -> list[np.ndarray]:
    """The background groups of ``frames`` with the episode's depth: map nodes mostly on the supporting
    plane join them, nodes that show anything standing on it leave them (episodes without depth, or
    frames without a plane, keep theirs)."""
    from perception_nodes.segmentation.depth_refine import DepthRefineConfig, geometry_masks

    if getattr(ep, "depth", None) is None or getattr(ep, "camera", None) is None:
        return backgrounds
    H, W = cfg.input_size
    camera, h, w = ep.camera.scaled(W, H), *cfg.map_size
    geometry = DepthRefineConfig(support_tol_m=tol)
    out = []
    for t, bg in zip(frames, backgrounds, strict=True):
        depth = cv2.resize(ep.depth[t], (W, H), interpolation=cv2.INTER_NEAREST)
        masks = geometry_masks(depth, camera, geometry)
        if masks is None:
            out.append(bg)
            continue
        obj, support, _ = masks
        touched = cv2.resize(obj.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
        out.append((bg & ~touched) | to_map(support, cfg.map_size))
    return out


def episode_motion(ep, rgb: np.ndarray, cfg: EisenConfig, tcfg: TrainConfig, dis) -> tuple[list, list | None]:
    """Input-size motion masks of an episode's pairs t -> t+1 (on frame t) and, for ``--still-directions
    both`` with DIS, of the reversed pairs (on frame t+1: where a moving object arrived)."""
    H, W = cfg.input_size
    every, arrival = [], [] if tcfg.flow == "dis" and tcfg.still_directions == "both" else None
    for t in range(len(rgb) - 1):
        if tcfg.flow == "gt":
            flow = np.nan_to_num(ep.flow[t])
            moving = np.linalg.norm(flow, axis=-1) * (W / ep.rgb.shape[2]) > tcfg.flow_threshold
            every.append(cv2.resize(moving.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0)
            continue
        args = (tcfg.flow_threshold, dis, tcfg.chroma_support, tcfg.support_radius)
        every.append(motion_mask(rgb[t], rgb[t + 1], *args))
        if arrival is not None:
            arrival.append(to_map(motion_mask(rgb[t + 1], rgb[t], *args), cfg.map_size))
    return every, arrival


def pairs_from_episodes(episodes, cfg: EisenConfig, tcfg: TrainConfig) -> PairData:
    H, W = cfg.input_size
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    images, motion, inst, background, still, robot = [], [], [], [], [], []
    for ep in episodes:
        rgb = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in ep.rgb])
        moving, arrival = episode_motion(ep, rgb, cfg, tcfg, dis)
        every = [to_map(m, cfg.map_size) for m in moving]
        body = robot_masks(ep, cfg.input_size, cfg.map_size) if tcfg.self_mask else None
        if body is None:
            body = np.zeros((len(rgb), *cfg.map_size), bool)
        elif body.any():
            every, arrival = explain_robot(body, every, arrival)
        kept = [
            t
            for t, m in enumerate(moving)
            if m.sum() >= tcfg.min_moving_pixels and m.mean() <= tcfg.max_moving_fraction
        ]
        images += [rgb[t] for t in kept]
        motion += [every[t] for t in kept]
        inst += [cv2.resize(ep.instance[t], (W, H), interpolation=cv2.INTER_NEAREST) for t in kept]
        robot += [body[t] for t in kept]
        if kept:
            claimed = episode_still(every, rgb, kept, tcfg.still_objects or STILL_MAX_DIFF, arrival)
            still += claimed
            frames_bg = frame_backgrounds(every, rgb, kept, claimed, cfg.map_size, tcfg)
            if tcfg.depth_background:
                frames_bg = depth_backgrounds(ep, kept, frames_bg, cfg, tcfg.depth_background)
            background += frames_bg
    if not images:
        raise ValueError("no training pairs with motion found")
    return PairData(*map(np.stack, (images, motion, inst, background, still, robot)))


def explain_robot(body: np.ndarray, every: list, arrival: list | None) -> tuple[list, list | None]:
    """The map-size motion masks (pairs t, on frame t) and arrival masks (on frame t + 1) without the robot's
    body and one node around it (its flow halo): the robot's own motion is not an object's."""
    near = [cv2.dilate(b.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0 for b in body]
    every = [m & ~near[t] for t, m in enumerate(every)]
    if arrival is not None:
        arrival = [m & ~near[t + 1] for t, m in enumerate(arrival)]
    return every, arrival


def sim_episodes(tcfg: TrainConfig, cfg: EisenConfig, seeds=None):
    from perception_nodes.sim import generate_episode
    from perception_nodes.sim.config import SimConfig

    H, W = cfg.input_size
    scfg = SimConfig(
        width=W,
        height=H,
        frames=tcfg.sim_frames,
        camera_motion_prob=0.0,
        num_tracks=0,
        shove_prob=tcfg.sim_shove_prob,
    )
    for seed in seeds if seeds is not None else range(tcfg.sim_seed, tcfg.sim_seed + tcfg.sim_episodes):
        yield generate_episode(scfg, seed)


def _episode_pairs(args) -> PairData | None:
    """Worker: one generated episode -> its training pairs (None when it has no usable motion)."""
    tcfg, cfg, seed = args
    try:
        return pairs_from_episodes(sim_episodes(tcfg, cfg, [seed]), cfg, tcfg)
    except ValueError:
        return None


def _parallel_sim_pairs(tcfg: TrainConfig, cfg: EisenConfig) -> PairData:
    """Generate episodes and their pairs in ``tcfg.workers`` processes (spawned: fresh GL contexts)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    jobs = [(tcfg, cfg, tcfg.sim_seed + k) for k in range(tcfg.sim_episodes)]
    with ProcessPoolExecutor(tcfg.workers, mp_context=mp.get_context("spawn")) as pool:
        parts = [p for p in tqdm(pool.map(_episode_pairs, jobs), total=len(jobs), desc="episodes") if p]
    if not parts:
        raise ValueError("no training pairs with motion found")
    return PairData(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))


def load_pairs(tcfg: TrainConfig, cfg: EisenConfig) -> PairData:
    """Build (or reuse from OUT/pairs.npz) the training pairs."""
    cache = Path(tcfg.out) / "pairs.npz"
    key = json.dumps(
        [
            tcfg.flow,
            tcfg.flow_threshold,
            tcfg.chroma_support,
            tcfg.support_radius,
            tcfg.sim_episodes,
            tcfg.sim_frames,
            tcfg.sim_seed,
            tcfg.sim_shove_prob,
            tcfg.background_margin,
            tcfg.vacated_background,
            tcfg.still_objects or STILL_MAX_DIFF,
            tcfg.still_directions,
            tcfg.self_mask,
            tcfg.depth_background,
            list(tcfg.bags),
            list(cfg.input_size),
        ]
    )
    if cache.exists():
        data = np.load(cache)
        if str(data["key"]) == key:
            log.info("reusing %d training pairs from %s", len(data["images"]), cache)
            return PairData(*(data[f] for f in FIELDS))
    from tqdm import tqdm

    if tcfg.bags:
        from perception_nodes.sim import read_episodes

        pairs = pairs_from_episodes(tqdm(read_episodes(list(tcfg.bags)), desc="bags", unit="ep"), cfg, tcfg)
    elif tcfg.workers > 1:
        pairs = _parallel_sim_pairs(tcfg, cfg)
    else:
        episodes = tqdm(sim_episodes(tcfg, cfg), total=tcfg.sim_episodes, desc="episodes", unit="ep")
        pairs = pairs_from_episodes(episodes, cfg, tcfg)
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not tcfg.no_cache:
        np.savez(cache, **{f: getattr(pairs, f) for f in FIELDS}, key=key)
    return pairs


# -- targets and bootstrapping -------------------------------------------------------------------------------


@torch.no_grad()
def bootstrap_targets(
    net: EisenNet,
    cfg: EisenConfig,
    pairs: PairData,
    base: np.ndarray,
    purity: float,
    device: str,
    batch: int = 8,
) -> np.ndarray:
    """(P, h, w) uint8 target ids: ``base`` (the motion-region ids, ``initial_targets``) with every
    *confident* predicted segment that lies mostly inside the motion (and leaves some of it) explained away
    with an id of its own.

    Confident = stable: found again (IoU >= 0.7) by a second inference with other random draws (agent
    seeds, KProp start); fragments of a poorly learned object change between draws, a well-known object
    (the pusher) does not."""
    net.eval()
    fast_cfg = dataclasses.replace(cfg, kprop_tol=max(cfg.kprop_tol, 4e-3))
    seg = EisenSegmenter(fast_cfg, net, early_exit=True).to(device).eval()
    targets = base.copy()
    with torch.no_grad():
        for start in range(0, len(pairs.images), batch):
            imgs = (
                torch.from_numpy(pairs.images[start : start + batch]).permute(0, 3, 1, 2).float().to(device)
            )
            runs = []
            for draw in range(2):
                noise = make_noise(cfg, len(imgs), seed=start * 2 + draw + 7919 * draw)
                labels, _ = seg(imgs, *(v.to(device) for v in noise.values()))
                runs.append(
                    [
                        connected_segments(x, cfg.min_segment_area, cfg.max_segments)
                        for x in labels.cpu().numpy()
                    ]
                )
            for i, (first, second) in enumerate(zip(*runs, strict=True)):
                targets[start + i] = explain_away(first, base[start + i], purity, second)
    net.train()
    return targets


def explain_away(
    segments: np.ndarray,
    moving: np.ndarray,
    purity: float,
    check: np.ndarray | None = None,
    min_iou: float = 0.7,
) -> np.ndarray:
    """Give each segment that lies mostly inside ``moving`` its own id; the rest of ``moving`` keeps its id.

    ``moving``: (h, w) bool mask or uint8 motion-region ids (0 = static). With ``check`` (a second
    segmentation), only segments it reproduces (IoU >= ``min_iou``) count."""
    out = moving.astype(np.uint8)
    total = (out > 0).sum()
    next_id = max(2, int(out.max()) + 1)
    moving = out > 0
    for k in np.unique(segments):
        if k == 0:
            continue
        m = segments == k
        inside = (m & moving).sum()
        if inside < purity * m.sum() or inside >= 0.9 * total or next_id >= ROBOT_ID:
            continue
        if check is not None:
            cand, counts = np.unique(check[m], return_counts=True)
            best = cand[np.argmax(counts)]
            if (m & (check == best)).sum() / (m | (check == best)).sum() < min_iou:
                continue
        out[m & moving] = next_id
        next_id += 1
    return out


def instance_targets(instance: np.ndarray, map_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ablation targets from ground truth: input-size instances (P, H, W) (0 = table/floor/walls) ->
    map-size target ids (P, h, w) uint8, each frame's objects numbered 1..n (nearest sampling), and the
    background group (P, h, w) bool."""
    h, w = map_size
    small = np.stack([cv2.resize(i, (w, h), interpolation=cv2.INTER_NEAREST) for i in instance])
    ids = np.stack([np.unique(f, return_inverse=True)[1].reshape(f.shape) for f in small])
    ids = ids + (small.reshape(len(small), -1).min(1) > 0)[:, None, None]  # frames without background
    if ids.max() >= STILL_OFFSET:
        raise ValueError(f"{ids.max()} objects in a frame: at most {STILL_OFFSET - 1} target ids")
    return ids.astype(np.uint8), small == 0


def initial_targets(motion: np.ndarray, single_id: bool) -> np.ndarray:
    """(P, h, w) bool motion masks -> uint8 target ids before bootstrapping."""
    if single_id:
        return motion.astype(np.uint8)
    return np.stack([motion_segments(m) for m in motion])


# -- model step ----------------------------------------------------------------------------------------------


def affinity_loss(
    net: EisenNet,
    cfg: EisenConfig,
    images: torch.Tensor,
    targets: torch.Tensor,
    gen: torch.Generator,
    background_weight: float = 0.0,
) -> torch.Tensor:
    """Sum over ``cfg.supervision_levels`` scales of the KL affinity loss. targets (B, h, w) long, with
    ``BACKGROUND_ID`` rows weighted by ``background_weight`` (see ``aff.affinity_kl_loss``)."""
    bg = BACKGROUND_ID if background_weight > 0 else None
    key, query = net(images)
    total = key.new_zeros(())
    m = aff.num_global_tiles(cfg.num_global, cfg.tile)
    for level in range(cfg.supervision_levels):
        s = 2**level
        k, q, t = key[:, :, ::s, ::s], query[:, :, ::s, ::s], targets[:, ::s, ::s]
        h, w = t.shape[-2:]
        layout = aff.make_layout(
            h, w, cfg.tile, cfg.local_window, aff.random_global_offsets(h, w, cfg.tile, m, gen)
        )
        layout = layout.to(key.device)
        total = total + aff.affinity_kl_loss(k, q, t, layout, bg, background_weight)
    return total


def lr_at(step: int, tcfg: TrainConfig) -> float:
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    return tcfg.lr * (1 - (step - tcfg.warmup) / max(1, tcfg.steps - tcfg.warmup)) ** 0.9


def sample_batch(
    pairs: PairData,
    targets: np.ndarray,
    batch: int,
    rng: np.random.Generator,
    device: str,
    background: bool = False,
    still: bool = False,
):
    """Random flipped images (B, 3, H, W) float and targets (B, h, w) long; the robot's body
    (``pairs.robot``, when present) gets ``ROBOT_ID``; with ``background`` the episode's static background
    (``pairs.background``) gets ``BACKGROUND_ID`` where no other id is, with ``still`` the still objects
    (``pairs.still``) get ``STILL_OFFSET`` + their id there."""
    idx = rng.integers(0, len(pairs.images), size=batch)
    imgs, tg = pairs.images[idx].copy(), targets[idx].copy()
    if pairs.robot is not None:
        tg[pairs.robot[idx]] = ROBOT_ID
    if background:
        tg[(tg == 0) & pairs.background[idx]] = BACKGROUND_ID
    if still:
        ids = pairs.still[idx]
        free = (tg == 0) & (ids > 0)
        tg[free] = STILL_OFFSET + ids[free]
    flip = rng.random(batch) < 0.5
    imgs[flip], tg[flip] = imgs[flip, :, ::-1], tg[flip, :, ::-1]
    images = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().to(device)
    return images, torch.from_numpy(np.ascontiguousarray(tg)).long().to(device)


# -- checkpoints ---------------------------------------------------------------------------------------------


def save_state(
    out: Path,
    net: EisenNet,
    cfg: EisenConfig,
    opt: torch.optim.Optimizer,
    step: int,
    round_: int,
    targets: np.ndarray,
) -> None:
    from safetensors.torch import save_file

    save_weights(net, out / "eisen.safetensors", cfg)
    tensors = {"targets": torch.from_numpy(targets)}
    names = {id(p): n for n, p in net.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                for k in ("exp_avg", "exp_avg_sq"):
                    tensors[f"{names[id(p)]}::{k}"] = st[k].detach().cpu().contiguous()
                tensors[f"{names[id(p)]}::step"] = torch.as_tensor(st["step"]).reshape(1).float()
    save_file(tensors, str(out / "train_state.safetensors.tmp"))
    (out / "train_state.safetensors.tmp").replace(out / "train_state.safetensors")
    (out / "train_state.json").write_text(json.dumps({"step": step, "round": round_}))


def load_state(out: Path, net: EisenNet, opt: torch.optim.Optimizer) -> tuple[int, int, np.ndarray]:
    from safetensors.torch import load_file

    weights = load_file(str(out / "eisen.safetensors"))
    check_state_dict(net, weights)
    net.load_state_dict(weights)
    tensors = load_file(str(out / "train_state.safetensors"))
    meta = json.loads((out / "train_state.json").read_text())
    for name, p in net.named_parameters():
        if f"{name}::exp_avg" in tensors:
            opt.state[p] = {
                "step": tensors[f"{name}::step"].reshape(()).to(p.device),
                "exp_avg": tensors[f"{name}::exp_avg"].to(p.device),
                "exp_avg_sq": tensors[f"{name}::exp_avg_sq"].to(p.device),
            }
    return int(meta["step"]), int(meta["round"]), tensors["targets"].numpy()


# -- training loop -------------------------------------------------------------------------------------------


def prepare_targets(
    tcfg: TrainConfig, cfg: EisenConfig, pairs: PairData
) -> tuple[TrainConfig, PairData, np.ndarray]:
    """The run's effective config, pairs and first target ids (P, h, w): motion regions, or the ground-truth
    instances for the ``instances`` ablation (which also replaces the background group and turns still
    objects, the robot and bootstrapping off); options the pairs cannot serve are turned off, with a
    warning."""
    if tcfg.supervision == "instances":
        base, background = instance_targets(pairs.instance, cfg.map_size)
        pairs = dataclasses.replace(pairs, background=background, robot=None)
        tcfg = dataclasses.replace(tcfg, still_objects=0.0, bootstrap_at=())
        log.info("ablation: ground-truth instance targets (%.2f ids per frame)", _ids_per_frame(base))
    else:
        base = initial_targets(pairs.motion, tcfg.single_motion_id)
    if tcfg.static_background > 0 and pairs.background is None:
        log.warning("the training pairs have no background masks: training without --static-background")
        tcfg = dataclasses.replace(tcfg, static_background=0.0)
    if tcfg.still_objects > 0 and pairs.still is None:
        log.warning("the training pairs have no still-object masks: training without --still-objects")
        tcfg = dataclasses.replace(tcfg, still_objects=0.0)
    return tcfg, pairs, base


def train(tcfg: TrainConfig, progress: bool = True, pairs: PairData | None = None) -> dict:
    """Run training; returns a summary dict (losses, timings). Writes weights to ``tcfg.out``.

    ``pairs`` replaces the sim/bag data (tests, custom data).
    """
    from tqdm import tqdm

    torch.manual_seed(tcfg.seed)
    if tcfg.device == "cpu":
        torch.set_num_threads(tcfg.threads)
    else:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = EisenConfig.preset(tcfg.preset, **json.loads(tcfg.overrides))
    out = Path(tcfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pairs = pairs if pairs is not None else load_pairs(tcfg, cfg)
    tcfg, pairs, base = prepare_targets(tcfg, cfg, pairs)
    data_s = time.perf_counter() - t0
    net = EisenNet(cfg).to(tcfg.device).train()
    if tcfg.precision == "bf16":
        _check_bf16(tcfg.device)
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=tcfg.lr)
    step, round_, targets = 0, 0, base
    if tcfg.resume and (out / "train_state.json").exists():
        step, round_, targets = load_state(out, net, opt)
        log.info("resumed at step %d (targets round %d)", step, round_)
    boots = [int(f * tcfg.steps) for f in tcfg.bootstrap_at]
    rng = np.random.default_rng(tcfg.seed + step)
    gen = torch.Generator().manual_seed(tcfg.seed + step)
    losses: list[float] = []
    bar = tqdm(total=tcfg.steps, initial=step, desc="train eisen", unit="step", disable=not progress)
    t1 = time.perf_counter()
    while step < tcfg.steps:
        if round_ < len(boots) and step >= boots[round_]:
            targets = bootstrap_targets(net, cfg, pairs, base, tcfg.bootstrap_purity, tcfg.device)
            round_ += 1
            log.info("bootstrapped targets (round %d): %.2f ids per frame", round_, _ids_per_frame(targets))
        batch = sample_batch(
            pairs, targets, tcfg.batch, rng, tcfg.device, tcfg.static_background > 0, tcfg.still_objects > 0
        )
        loss = _step(net, cfg, opt, tcfg, *batch, gen, step)
        losses.append(loss)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if step % tcfg.ckpt_every == 0 or step == tcfg.steps:
            save_state(out, net, cfg, opt, step, round_, targets)
    bar.close()
    summary = {
        "pairs": len(pairs.images),
        "data_s": data_s,
        "train_s": time.perf_counter() - t1,
        "first_loss": float(np.mean(losses[:20])) if losses else None,
        "last_loss": float(np.mean(losses[-20:])) if losses else None,
        "steps": step,
        "losses": losses,
    }
    record = {**summary, "losses": [round(v, 4) for v in losses], "train_config": dataclasses.asdict(tcfg)}
    (out / "train_summary.json").write_text(json.dumps(record, indent=1))
    return summary


def _ids_per_frame(targets: np.ndarray) -> float:
    return float(np.mean([len(np.unique(t[t > 0])) for t in targets]))


def _check_bf16(device: str) -> None:
    """Log when bfloat16 training will be slow: a CPU without native bfloat16 (AVX512-BF16 or AMX)."""
    if torch.device(device).type != "cpu":
        return
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private oneDNN query: absent from some builds
        native = False
    if not native:
        log.warning("--precision bf16 on a CPU without native bfloat16: steps may be slower than fp32")


def _autocast(tcfg: TrainConfig):
    """bfloat16 autocast for ``precision == "bf16"`` (convolutions and matmuls), else a no-op."""
    device = torch.device(tcfg.device).type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=tcfg.precision == "bf16")


def _step(net, cfg, opt, tcfg, images, targets, gen, step) -> float:
    for group in opt.param_groups:
        group["lr"] = lr_at(step, tcfg)
    opt.zero_grad(set_to_none=True)
    with _autocast(tcfg):
        loss = affinity_loss(net, cfg, images, targets, gen, tcfg.static_background)
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), tcfg.clip)
    opt.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss at step {step}")
    return value


# -- command line --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.name == "out":
            parser.add_argument(flag, required=True, help=help_text)
        elif f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.name in ("bootstrap_at", "bags"):
            kind = float if f.name == "bootstrap_at" else str
            parser.add_argument(flag, type=kind, nargs="*", default=list(f.default), help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default {f.default})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["bootstrap_at"] = tuple(values["bootstrap_at"])
    values["bags"] = tuple(values["bags"])
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = train(config_from_args(args))
    log.info("done: %s", json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
