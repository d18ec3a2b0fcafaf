"""Tiny synthetic clips with exact ground truth: textured shapes gliding and bouncing over a textured table.

For tests and smoke runs where the MuJoCo sim is not at hand. A clip has the field names of the sim's
``Episode`` that trackers and forecasters read (rgb, instance, tracks_2d, visible, track_object, stamps_ns),
so code written against one runs on the other. Objects move with smooth random accelerations and bounce
elastically off the image border; a later object occludes earlier ones.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass
class SyntheticClip:
    rgb: np.ndarray  # (T, H, W, 3) uint8
    instance: np.ndarray  # (T, H, W) uint16, 0 = background, k = object k
    tracks_2d: np.ndarray  # (N, T, 2) float32 pixels, x right, y down
    visible: np.ndarray  # (N, T) bool
    track_object: np.ndarray  # (N,) uint16 object id of each track (0 = background)
    stamps_ns: np.ndarray  # (T,) int64


def _texture(rng: np.random.Generator, h: int, w: int, blur: float) -> np.ndarray:
    base = rng.random((h, w, 3)) * 255
    tint = rng.uniform(0.4, 1.0, 3)
    return cv2.GaussianBlur((base * tint).astype(np.uint8), (0, 0), blur)


@dataclasses.dataclass
class _Shape:
    texture: np.ndarray  # (s, s, 3) uint8
    mask: np.ndarray  # (s, s) uint8, 1 inside
    pos: np.ndarray  # (2,) centre pixels
    vel: np.ndarray  # (2,) pixels per frame
    angle: float
    omega: float


def _make_shape(rng: np.random.Generator, width: int, height: int, speed: float) -> _Shape:
    s = int(rng.integers(36, 64))
    mask = np.zeros((s, s), np.uint8)
    if rng.random() < 0.5:
        a, b = int(rng.integers(s // 4, s // 2)), int(rng.integers(s // 4, s // 2))
        cv2.ellipse(mask, (s // 2, s // 2), (a, b), 0, 0, 360, 1, -1)
    else:
        a, b = int(rng.integers(s // 4, s // 2)), int(rng.integers(s // 4, s // 2))
        mask[s // 2 - b : s // 2 + b, s // 2 - a : s // 2 + a] = 1
    pos = np.array([rng.uniform(s, width - s), rng.uniform(s, height - s)])
    vel = rng.normal(0, speed, 2)
    return _Shape(
        _texture(rng, s, s, 1.2), mask, pos, vel, float(rng.uniform(0, 360)), float(rng.normal(0, 1.0))
    )


def _shape_matrix(shape: _Shape) -> np.ndarray:
    """2x3 affine map from shape-texture pixels to image pixels."""
    s = shape.mask.shape[0]
    m = cv2.getRotationMatrix2D(((s - 1) / 2, (s - 1) / 2), shape.angle, 1.0)
    m[:, 2] += shape.pos - (s - 1) / 2
    return m


def _advance(shape: _Shape, rng: np.random.Generator, width: int, height: int, accel: float) -> None:
    shape.vel += rng.normal(0, accel, 2)
    shape.pos += shape.vel
    margin = shape.mask.shape[0] / 3
    for axis, limit in ((0, width), (1, height)):
        if shape.pos[axis] < margin or shape.pos[axis] > limit - margin:
            shape.vel[axis] = -shape.vel[axis]
            shape.pos[axis] = np.clip(shape.pos[axis], margin, limit - margin)
    shape.angle += shape.omega


def make_clip(
    seed: int,
    num_frames: int = 24,
    width: int = 320,
    height: int = 240,
    num_objects: int = 3,
    num_tracks: int = 128,
    speed: float = 2.0,
    accel: float = 0.15,
    fps: float = 15.0,
) -> SyntheticClip:
    """A clip of ``num_frames`` frames with ``num_tracks`` ground-truth tracks (most on objects)."""
    rng = np.random.default_rng(seed)
    background = _texture(rng, height, width, 1.5)
    shapes = [_make_shape(rng, width, height, speed) for _ in range(num_objects)]
    local = _sample_local_points(rng, shapes, num_tracks)
    frames, instances = [], []
    tracks = np.zeros((num_tracks, num_frames, 2), np.float32)
    for t in range(num_frames):
        frame, inst = background.copy(), np.zeros((height, width), np.uint16)
        for k, shape in enumerate(shapes, start=1):
            m = _shape_matrix(shape)
            warped = cv2.warpAffine(shape.texture, m, (width, height), flags=cv2.INTER_LINEAR)
            inside = cv2.warpAffine(shape.mask, m, (width, height), flags=cv2.INTER_NEAREST) > 0
            frame[inside], inst[inside] = warped[inside], k
        tracks[:, t] = _track_positions(local, shapes, width, height)
        frames.append(frame)
        instances.append(inst)
        for shape in shapes:
            _advance(shape, rng, width, height, accel)
    rgb, instance = np.stack(frames), np.stack(instances)
    obj = local["object"].astype(np.uint16)
    visible = _visibility(tracks, instance, obj)
    stamps = (np.arange(num_frames) * (1e9 / fps)).astype(np.int64)
    return SyntheticClip(rgb, instance, tracks, visible, obj, stamps)


def _sample_local_points(rng: np.random.Generator, shapes: list[_Shape], n: int) -> dict[str, np.ndarray]:
    """Track anchors: 80 % on objects (uniform inside each mask, eroded), the rest on the background."""
    n_obj = round(0.8 * n) if shapes else 0
    owner = rng.integers(1, len(shapes) + 1, n_obj) if shapes else np.zeros(0, int)
    xy = np.zeros((n, 2))
    for i, k in enumerate(owner):
        inner = cv2.erode(shapes[k - 1].mask, np.ones((7, 7), np.uint8))
        ys, xs = np.nonzero(inner if inner.any() else shapes[k - 1].mask)
        j = rng.integers(len(xs))
        xy[i] = (xs[j] + rng.uniform(-0.5, 0.5), ys[j] + rng.uniform(-0.5, 0.5))
    return {
        "xy": xy,
        "object": np.concatenate([owner, np.zeros(n - n_obj, int)]),
        "bg": rng.uniform(0.05, 0.95, (n - n_obj, 2)),
    }


def _track_positions(
    local: dict[str, np.ndarray], shapes: list[_Shape], width: int, height: int
) -> np.ndarray:
    out = np.zeros_like(local["xy"])
    for k, shape in enumerate(shapes, start=1):
        sel = local["object"] == k
        m = _shape_matrix(shape)
        out[sel] = local["xy"][sel] @ m[:, :2].T + m[:, 2]
    bg = local["object"] == 0
    out[bg] = local["bg"] * [width, height]  # background anchors are fractions of the frame
    return out


def _visibility(tracks: np.ndarray, instance: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """A point is visible where it is inside the frame and the top-most object there is its own."""
    t = tracks.shape[1]
    _, h, w = instance.shape
    xy = np.round(tracks).astype(int)
    inside = (xy[..., 0] >= 0) & (xy[..., 0] < w) & (xy[..., 1] >= 0) & (xy[..., 1] < h)
    x, y = np.clip(xy[..., 0], 0, w - 1), np.clip(xy[..., 1], 0, h - 1)
    top = instance[np.arange(t)[None, :], y, x]
    return inside & (top == obj[:, None])
