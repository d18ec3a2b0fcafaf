"""Contact sheet of sim episodes: one row per episode.

Columns: RGB at frame 0 | RGB at the last frame | depth | instances | parts | flow (middle frame) | tracks
(trails of the visible points over the episode on the last frame, one colour per object, hollow = occluded).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from perception_nodes.sim.episode import Episode

COLUMNS = ("rgb t=0", "rgb t=T-1", "depth", "instances", "parts", "flow", "tracks")


def palette(n: int, seed: int = 7) -> np.ndarray:
    """(n, 3) uint8 distinct-ish colours; entry 0 is dark grey (background)."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    hsv = np.stack([hues * 180, np.full(n, 200), np.full(n, 235)], axis=1).astype(np.uint8)[None]
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    out[0] = (40, 40, 40)
    return out


def colour_depth(depth: np.ndarray) -> np.ndarray:
    valid = depth > 0
    lo, hi = np.percentile(depth[valid], [1, 99]) if valid.any() else (0.0, 1.0)
    norm = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    img = cv2.applyColorMap((255 * (1 - norm)).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    img[~valid] = 0
    return img


def colour_flow(flow: np.ndarray) -> np.ndarray:
    """HSV flow coding: hue = direction, value = magnitude (saturating at 10 px)."""
    f = np.nan_to_num(flow)
    mag, ang = cv2.cartToPolar(f[..., 0], f[..., 1])
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / 10 * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def draw_tracks(ep: Episode) -> np.ndarray:
    img = (ep.rgb[-1].astype(np.float32) * 0.6).astype(np.uint8)
    cols = palette(int(max(ep.object_ids.max(initial=0), ep.track_object.max(initial=0))) + 2)
    for n in range(len(ep.track_object)):
        c = tuple(int(v) for v in (cols[ep.track_object[n]] if ep.track_object[n] else (255, 255, 255)))
        pts = ep.tracks_2d[n]
        for t in range(1, ep.num_frames):
            if ep.visible[n, t - 1] and ep.visible[n, t]:
                cv2.line(
                    img,
                    tuple(np.round(pts[t - 1]).astype(int)),
                    tuple(np.round(pts[t]).astype(int)),
                    c,
                    1,
                    cv2.LINE_AA,
                )
        if np.isfinite(pts[-1]).all():
            cv2.circle(img, tuple(np.round(pts[-1]).astype(int)), 2, c, -1 if ep.visible[n, -1] else 1)
    return img


def episode_row(ep: Episode) -> list[np.ndarray]:
    inst_cols = palette(int(ep.object_ids.max(initial=0)) + 2)
    part_cols = palette(len(ep.part_names), seed=3)
    mid = max(ep.num_frames // 2 - 1, 0)
    flow = colour_flow(ep.flow[mid]) if len(ep.flow) else np.zeros_like(ep.rgb[0])
    return [
        ep.rgb[0],
        ep.rgb[-1],
        colour_depth(ep.depth[-1]),
        inst_cols[ep.instance[-1]],
        part_cols[ep.part[-1]],
        flow,
        draw_tracks(ep),
    ]


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = np.ascontiguousarray(img)
    cv2.putText(img, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def legend(ep: Episode, width: int) -> np.ndarray:
    cols = palette(len(ep.part_names), seed=3)
    strip = np.full((18, width, 3), 255, np.uint8)
    x = 4
    for i, name in enumerate(ep.part_names[1:], start=1):
        cv2.rectangle(strip, (x, 4), (x + 10, 14), tuple(int(v) for v in cols[i]), -1)
        cv2.putText(
            strip,
            f"{name}:{ep.part_functions[i]}",
            (x + 13, 13),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.33,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        x += 15 + 7 * len(f"{name}:{ep.part_functions[i]}")
    return strip


def contact_sheet(episodes: list[Episode]) -> np.ndarray:
    """(rows*H + legend, 7*W, 3) uint8 RGB."""
    rows = []
    for ep in episodes:
        cells = episode_row(ep)
        names = ", ".join(n for n in ep.object_names)
        cells[0] = _label(cells[0], f"seed {ep.seed}")
        cells[1] = _label(cells[1], f"{len(ep.moving_objects())} moved")
        cells[3] = _label(cells[3], names[:40])
        rows.append(np.concatenate(cells, axis=1))
    sheet = np.concatenate(rows, axis=0)
    return np.concatenate([sheet, legend(episodes[0], sheet.shape[1])], axis=0)


def write_contact_sheet(episodes: list[Episode], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), contact_sheet(episodes)[..., ::-1]):
        raise OSError(f"could not write {path}")
    return path
