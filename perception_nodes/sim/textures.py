"""Procedural textures (numpy + OpenCV), so that appearance alone does not give objects away.

The same generator paints the table, the walls and the objects; an object may even wear the table's
texture (camouflage), leaving only geometry and motion to tell it apart.
All images are (S, S, 3) uint8 RGB; cube textures are six such faces stacked vertically (6S, S, 3).
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("plain", "noise", "stripes", "checker", "dots", "marble", "grid")


def random_colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.1, 0.9)) -> np.ndarray:
    """One RGB colour in [0, 255] from a random hue, saturation and value."""
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(0.25, 0.95) * 255]]], np.float32
    )
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]: bicubic-upsampled random grid (value noise)."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.clip(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _pattern(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """(size, size) float32 blend weights in [0, 1] for a two-colour texture."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "plain":
        return 0.15 * _smooth_noise(rng, size, 4)
    if kind == "noise":
        return _smooth_noise(rng, size, int(rng.integers(3, 12)))
    angle, freq = rng.uniform(0, np.pi), rng.integers(2, 9)
    u = xs * np.cos(angle) + ys * np.sin(angle)
    if kind == "stripes":
        return (np.sin(2 * np.pi * freq * u) > rng.uniform(-0.5, 0.5)).astype(np.float32)
    if kind == "checker":
        return ((np.floor(xs * freq) + np.floor(ys * freq)) % 2).astype(np.float32)
    if kind == "dots":
        d = np.hypot((xs * freq) % 1 - 0.5, (ys * freq) % 1 - 0.5)
        return (d < rng.uniform(0.15, 0.4)).astype(np.float32)
    if kind == "marble":
        turb = _smooth_noise(rng, size, 6) * rng.uniform(2, 6)
        return 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + turb)
    if kind == "grid":
        width = rng.uniform(0.05, 0.2)
        return (((xs * freq) % 1 < width) | ((ys * freq) % 1 < width)).astype(np.float32)
    raise ValueError(f"unknown texture kind {kind!r}; known: {', '.join(KINDS)}")


def texture(rng: np.random.Generator, size: int, kind: str | None = None) -> np.ndarray:
    """A (size, size, 3) uint8 two-colour procedural texture with a little grain."""
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    w = _pattern(rng, kind, size)[..., None]
    a, b = random_colour(rng), random_colour(rng)
    img = a * (1 - w) + b * w
    img += rng.normal(0, rng.uniform(2, 10), img.shape[:2])[..., None].astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def cube_faces(face: np.ndarray) -> np.ndarray:
    """Six copies of an (S, S, 3) face, some flipped, stacked into a (6S, S, 3) MuJoCo cube texture."""
    faces = [face, face[::-1], face[:, ::-1], face.transpose(1, 0, 2), face[::-1, ::-1], face]
    return np.ascontiguousarray(np.concatenate(faces, axis=0))
