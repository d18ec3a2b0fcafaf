"""EISEN network: DeepLab ResNet backbone + DeepLabV3+ decoder + key/query affinity head (one code path).

Module names follow the official model (neuroailab/EISEN ``EISEN`` with detectron2 layers) so that the
``official`` config's state dict matches the published checkpoint after stripping ``module.``:
``backbone.backbone.{stem,res2..res5}``, ``backbone.decoder.{res2,res3,res5}``, ``feat_conv``,
``key_proj``, ``query_proj``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from perception_nodes.segmentation.config import EisenConfig

log = logging.getLogger(__name__)

PIXEL_MEAN = (123.675, 116.28, 103.53)  # ImageNet mean on the 0-255 scale (RGB)
PIXEL_STD = (58.395, 57.12, 57.375)


class WeightsMismatchError(ValueError):
    """A weights file whose tensors do not match the model built from the config."""


class ConvNorm(nn.Conv2d):
    """Conv2d with an optional ``norm`` submodule and ReLU (detectron2 ``Conv2d`` naming)."""

    def __init__(self, *args, norm: bool = False, relu: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = nn.BatchNorm2d(self.out_channels) if norm else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


class DeepLabStem(nn.Module):
    """Three 3x3 convs (stride 2 first) with BN + ReLU, then a 3x3 max-pool: stride 4."""

    def __init__(self, out_channels: int):
        super().__init__()
        half = out_channels // 2
        self.conv1 = ConvNorm(3, half, 3, stride=2, padding=1, bias=False, norm=True, relu=True)
        self.conv2 = ConvNorm(half, half, 3, padding=1, bias=False, norm=True, relu=True)
        self.conv3 = ConvNorm(half, out_channels, 3, padding=1, bias=False, norm=True, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 with a projection shortcut when channels change."""

    def __init__(self, cin: int, cout: int, bottleneck: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride, bias=False, norm=True) if cin != cout else None
        self.conv1 = ConvNorm(cin, bottleneck, 1, bias=False, norm=True, relu=True)
        self.conv2 = ConvNorm(
            bottleneck,
            bottleneck,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=True,
            relu=True,
        )
        self.conv3 = ConvNorm(bottleneck, cout, 1, bias=False, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        short = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + short)


class ResNet(nn.Module):
    """Deep stem + res2..res5; res5 dilated (no stride) so the output stride is 16."""

    def __init__(self, cfg: EisenConfig):
        super().__init__()
        self.stem = DeepLabStem(cfg.stem_channels)
        cin, cout, bott = cfg.stem_channels, 4 * cfg.width, cfg.width
        for idx, nblocks in enumerate(cfg.stage_blocks):
            stage = idx + 2
            dilation = cfg.res5_dilation if stage == 5 else 1
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            blocks = []
            for b in range(nblocks):
                block_dilation = dilation * cfg.res5_multi_grid[b] if stage == 5 else dilation
                stride = first_stride if b == 0 else 1
                blocks.append(Bottleneck(cin if b == 0 else cout, cout, bott, stride, block_dilation))
            self.add_module(f"res{stage}", nn.Sequential(*blocks))
            cin, cout, bott = cout, cout * 2, bott * 2
        self.out_channels = {"res2": 4 * cfg.width, "res3": 8 * cfg.width, "res5": 32 * cfg.width}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        feats = {}
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            feats[name] = x
        return feats


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling without norm/bias (the official head uses norm=None)."""

    def __init__(self, cin: int, cout: int, dilations: tuple[int, int, int], dropout: float):
        super().__init__()
        convs: list[nn.Module] = [ConvNorm(cin, cout, 1, bias=False, relu=True)]
        for d in dilations:
            convs.append(ConvNorm(cin, cout, 3, padding=d, dilation=d, bias=False, relu=True))
        convs.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvNorm(cin, cout, 1, bias=True, relu=True)))
        self.convs = nn.ModuleList(convs)
        self.project = ConvNorm(5 * cout, cout, 1, bias=False, relu=True)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = [conv(x) for conv in self.convs]
        res[-1] = res[-1] + torch.zeros_like(res[0])  # bilinear upsampling of a 1x1 map = broadcast
        out = self.project(torch.cat(res, dim=1))
        return F.dropout(out, self.dropout, training=self.training) if self.dropout > 0 else out


class DeepLabV3Plus(nn.Module):
    """Backbone (``.backbone``) + DeepLabV3+ decoder (``.decoder``): image -> features at stride 4."""

    def __init__(self, cfg: EisenConfig):
        super().__init__()
        ch = 32 * cfg.width
        proj2, proj3 = cfg.project_channels
        dec = cfg.decoder_channels
        self.decoder = nn.ModuleDict(
            {
                "res2": nn.ModuleDict(
                    {
                        "project_conv": ConvNorm(4 * cfg.width, proj2, 1, bias=False, relu=True),
                        "fuse_conv": _fuse(proj2 + dec, dec),
                    }
                ),
                "res3": nn.ModuleDict(
                    {
                        "project_conv": ConvNorm(8 * cfg.width, proj3, 1, bias=False, relu=True),
                        "fuse_conv": _fuse(proj3 + cfg.aspp_channels, dec),
                    }
                ),
                "res5": nn.ModuleDict(
                    {"project_conv": ASPP(ch, cfg.aspp_channels, cfg.aspp_dilations, cfg.aspp_dropout)}
                ),
            }
        )
        self.backbone = ResNet(cfg)
        self.output_dim = dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        y = self.decoder["res5"]["project_conv"](feats["res5"])
        for name in ("res3", "res2"):
            proj = self.decoder[name]["project_conv"](feats[name])
            y = F.interpolate(y, size=proj.shape[-2:], mode="bilinear", align_corners=False)
            y = self.decoder[name]["fuse_conv"](torch.cat([proj, y], dim=1))
        return y


def _fuse(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        ConvNorm(cin, cout, 3, padding=1, bias=False, relu=True),
        ConvNorm(cout, cout, 3, padding=1, bias=False, relu=True),
    )


class EisenNet(nn.Module):
    """Image -> (key, query) affinity embeddings at stride 4.

    forward(image): image (B, 3, H, W) float RGB on the 0-255 scale (uint8 values) ->
    key, query (B, kq_dim, H/4, W/4).
    """

    def __init__(self, cfg: EisenConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = DeepLabV3Plus(cfg)
        self.feat_conv = nn.Conv2d(self.backbone.output_dim, cfg.kq_dim, kernel_size=1, bias=True)
        self.key_proj = nn.Linear(cfg.kq_dim, cfg.kq_dim)
        self.query_proj = nn.Linear(cfg.kq_dim, cfg.kq_dim)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        _init_weights(self)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (image.float() - self.pixel_mean) / self.pixel_std
        feats = self.feat_conv(self.backbone(x)).permute(0, 2, 3, 1)  # (B, h, w, C)
        key = self.key_proj(feats).permute(0, 3, 1, 2)  # (B, C, h, w)
        query = self.query_proj(feats).permute(0, 3, 1, 2)
        return key, query


def _init_weights(model: nn.Module) -> None:
    """MSRA init for backbone convs, Xavier for the decoder (detectron2's c2 fills), zero biases."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if ".decoder." in f".{name}":
                nn.init.kaiming_uniform_(m.weight, a=1)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# -- weights I/O -------------------------------------------------------------------------------------


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise WeightsMismatchError naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise WeightsMismatchError("weights do not match the config: " + "; ".join(parts))


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel prefix from every key that has it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``.safetensors`` (ours) or an official ``.pth`` (weights_only, ``module.`` stripped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    state = strip_prefix(state)
    check_state_dict(model, state)
    model.load_state_dict(state)
    log.info("loaded %d tensors from %s", len(state), path)


def save_weights(model: nn.Module, path: str | Path, cfg: EisenConfig | None = None) -> None:
    """Write ``path`` (.safetensors) and, when ``cfg`` is given, ``path`` with suffix ``.json``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    if cfg is not None:
        path.with_suffix(".json").write_text(cfg.to_json())
