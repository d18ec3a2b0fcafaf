"""Inference benchmark: every registered model plus two bench-only reference networks, on every backend.

    python bench/bench_inference.py --device cpu --json /tmp/bench_cpu.json
    python bench/bench_inference.py --device cuda --budget-s 300 --json $OUT/bench_cuda.json
    python bench/bench_inference.py ref_convnet --device cpu --iters 20      # one model
    python bench/bench_inference.py --no-reference ...                      # registered models only

Arguments are those of ``perception-nodes bench`` (perception_nodes/inference/cli.py). The reference
networks are not in the model registry: they exist so the harness measures something realistic (a conv
encoder-decoder on a uint8 image, a small pre-norm transformer) before and besides the stack's own models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception_nodes.inference.cli import main
from perception_nodes.inference.registry import ExportSpec


class RefConvNet(nn.Module):
    """uint8 (B, H, W, 3) RGB -> (B, 64, H/4, W/4) features and (B, 8) pooled logits; ResNet-like stages."""

    def __init__(self, widths=(32, 64, 128, 256)):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([58.4, 57.1, 57.4]).view(1, 3, 1, 1))
        layers, c_in = [], 3
        for c in widths:
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                    nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                )
            )  # fmt: skip
            c_in = c
        self.stages = nn.ModuleList(layers)
        self.lateral = nn.ModuleList(nn.Conv2d(c, 64, 1) for c in widths[1:])
        self.head = nn.Conv2d(64, 64, 3, padding=1)
        self.cls = nn.Linear(widths[-1], 8)

    def forward(self, image: torch.Tensor):
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std  # (B, 3, H, W)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.lateral[-1](feats[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[1:-1]), strict=True):
            y = nn.functional.interpolate(
                y, size=f.shape[-2:], mode="bilinear", align_corners=False
            ) + lateral(f)
        y = nn.functional.interpolate(y, size=feats[0].shape[-2:], mode="bilinear", align_corners=False)
        y = nn.functional.interpolate(y, scale_factor=0.5, mode="bilinear", align_corners=False)
        return self.head(torch.relu(y)), self.cls(feats[-1].mean(dim=(2, 3)))


class Block(nn.Module):
    """Pre-norm transformer block with explicit attention (exports to plain MatMul/Softmax)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)  # (B, heads, N, N)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class RefTransformer(nn.Module):
    """(B, N, 2) points in pixels + (B, N, 64) features -> (B, N, 2) displacements; 4 pre-norm blocks."""

    def __init__(self, dim: int = 256, layers: int = 4, heads: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(2 + 64, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.out = nn.Linear(dim, 2)

    def forward(self, points: torch.Tensor, features: torch.Tensor):
        x = self.embed(torch.cat([points / 256.0, features], dim=-1))
        return self.out(self.blocks(x))


def _image(size: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx, yy, (xx + yy) // 2], axis=-1) % 256  # smooth gradients plus noise, like a scene
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return {"image": img[None]}


def _tokens(n: int = 256) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "points": rng.uniform(0, 256, (1, n, 2)).astype(np.float32),
        "features": rng.standard_normal((1, n, 64)).astype(np.float32),
    }


REFERENCE_SPECS = [
    ExportSpec(
        "ref_convnet",
        {"widths": [32, 64, 128, 256], "size": 256},
        lambda: RefConvNet().eval(),
        _image,
        ["features", "logits"],
        parity_atol=1e-3,
    ),
    ExportSpec(
        "ref_transformer",
        {"dim": 256, "layers": 4, "tokens": 256},
        lambda: RefTransformer().eval(),
        _tokens,
        ["displacement"],
        parity_atol=1e-3,
    ),
]


if __name__ == "__main__":
    argv = sys.argv[1:]
    extra = [] if "--no-reference" in argv else REFERENCE_SPECS
    argv = [a for a in argv if a != "--no-reference"]
    sys.exit(main(["bench", *argv], extra_specs=extra))
