"""Stand-in encoders with the shapes and rough cost of the ``official`` configuration's frozen encoders.

The released ARFM uses SAM2.1-Hiera-Tiny (dense, 512², three levels 32@128², 64@64², 256@32² = 352
channels) and CLIP ViT-B/32 (global, 224², 49 tokens of 768). No pretrained weights are available here, so
these random-weight stand-ins exist to time the ``official`` pipeline end to end and to exercise the
pluggable-encoder interface; plug the real encoders in for real forecasts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ViTB32StandIn(nn.Module):
    """CLIP ViT-B/32 vision tower shape: 224² -> (B, 49, 768) patch tokens (12 layers, 12 heads, MLP 3072)."""

    def __init__(
        self, image_size: int = 224, patch: int = 32, dim: int = 768, depth: int = 12, heads: int = 12
    ):
        super().__init__()
        self.image_size = image_size
        self.patch_embed = nn.Conv2d(3, dim, patch, patch, bias=False)
        n = (image_size // patch) ** 2
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, S, S) in [0, 1] (resized to 224) -> (B, 49, 768)."""
        x = F.interpolate(
            image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), dim=1) + self.pos
        return self.norm(self.blocks(x))[:, 1:]


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.GroupNorm(1, dim)
        self.pw1 = nn.Conv2d(dim, 4 * dim, 1)
        self.pw2 = nn.Conv2d(4 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))


class HieraTinyStandIn(nn.Module):
    """Hiera-Tiny widths/depths (96, 192, 384, 768 / 1, 2, 7, 2) as conv blocks, 512² input, and SAM2-like
    outputs: [32 @ S/4, 64 @ S/8, 256 @ S/16] (352 channels in total)."""

    def __init__(self, image_size: int = 512, dims=(96, 192, 384, 768), depths=(1, 2, 7, 2)):
        super().__init__()
        self.image_size = image_size
        self.stem = nn.Conv2d(3, dims[0], 4, 4)
        stages, downs = [], []
        for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
            downs.append(nn.Identity() if i == 0 else nn.Conv2d(dims[i - 1], d, 2, 2))
            stages.append(nn.Sequential(*[_Block(d) for _ in range(n)]))
        self.downs, self.stages = nn.ModuleList(downs), nn.ModuleList(stages)
        self.lateral = nn.ModuleList([nn.Conv2d(d, 256, 1) for d in dims])
        self.conv_s0 = nn.Conv2d(256, 32, 1)
        self.conv_s1 = nn.Conv2d(256, 64, 1)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(
            image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        x = self.stem(x)
        feats = []
        for down, stage in zip(self.downs, self.stages, strict=True):
            x = stage(down(x))
            feats.append(x)
        top = self.lateral[3](feats[3])
        p16 = self.lateral[2](feats[2]) + F.interpolate(top, scale_factor=2.0, mode="nearest")
        p8 = self.lateral[1](feats[1]) + F.interpolate(p16, scale_factor=2.0, mode="nearest")
        p4 = self.lateral[0](feats[0]) + F.interpolate(p8, scale_factor=2.0, mode="nearest")
        return [self.conv_s0(p4), self.conv_s1(p8), p16]
