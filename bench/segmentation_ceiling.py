#!/usr/bin/env python3
"""How high can the ``small`` EISEN pipeline score on held-out sim frames with perfect affinities?

Prints the official mIoU (same frames as ``perception-nodes eval segmentation --sim-episodes 20
--sim-frames 12 --stride 2``) of:

1. ground-truth instances nearest-downsampled to the 64² affinity map and upsampled back (nearest, and
   edge-aware ``refine_upsample``): the ceiling of any label map at this resolution;
2. ground-truth instances turned into keys/queries (one-hot, so same-object logits are high and all others
   zero) and run through the real fast path (affinities, KProp, competition, connected components): the
   ceiling of the pipeline given perfect affinities.

    python bench/segmentation_ceiling.py [--episodes 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.eval import image_miou
from perception_nodes.segmentation.processor import connected_segments, refine_upsample, upsample_labels
from perception_nodes.segmentation.segmenter import EisenSegmenter, make_noise


class OracleNet(torch.nn.Module):
    """Stands in for the network: keys = queries = 20 x one-hot(ground-truth id mod kq_dim) on the map."""

    def __init__(self, cfg: EisenConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("pixel_mean", torch.zeros(3))
        self.gt_map = torch.zeros(cfg.map_size, dtype=torch.long)

    def forward(self, image: torch.Tensor):
        onehot = torch.nn.functional.one_hot(self.gt_map % self.cfg.kq_dim, self.cfg.kq_dim).float()
        key = 20.0 * onehot.permute(2, 0, 1).unsqueeze(0)  # (1, C, h, w)
        return key, key


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=900000, help="first held-out episode seed")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    from perception_nodes.sim import generate_episode
    from perception_nodes.sim.config import SimConfig

    torch.set_num_threads(1)
    cfg = EisenConfig.small()
    h, w = cfg.map_size
    net = OracleNet(cfg)
    seg = EisenSegmenter(cfg, net).eval()
    scores: dict[str, list[float]] = {
        k: [] for k in ("map_nearest", "map_refined", "fast_nearest", "fast_refined")
    }
    sim = SimConfig(width=256, height=256, frames=12, num_tracks=0)
    for e in range(args.episodes):
        ep = generate_episode(sim, args.seed + e)
        for t in range(0, 12, 2):
            gt, rgb = ep.instance[t].astype(np.int32), ep.rgb[t]
            small = cv2.resize(gt.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST).astype(
                np.int32
            )
            net.gt_map = torch.from_numpy(small).long()
            with torch.no_grad():
                labels, _ = seg(torch.zeros(1, 3, *cfg.input_size), *make_noise(cfg, 1, t + 7).values())
            segs = connected_segments(labels[0].numpy(), cfg.min_segment_area, cfg.max_segments)
            for name, pred in (("map", small), ("fast", segs)):
                scores[f"{name}_nearest"].append(image_miou(upsample_labels(pred, *gt.shape), gt))
                scores[f"{name}_refined"].append(image_miou(refine_upsample(pred, rgb), gt))
    summary = {k: float(np.nanmean(v)) for k, v in scores.items()}
    summary["images"] = len(scores["map_nearest"])
    print(f"held-out sim, {summary['images']} images, official mIoU with ground-truth information:")
    print(
        f"  GT instances on the {h}x{w} map: nearest {summary['map_nearest']:.3f}, "
        f"edge-aware {summary['map_refined']:.3f}"
    )
    print(
        f"  GT affinities through the fast path: nearest {summary['fast_nearest']:.3f}, "
        f"edge-aware {summary['fast_refined']:.3f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
