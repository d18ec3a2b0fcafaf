"""Exportable EISEN networks for the inference layer (``EXPORTS``).

- ``eisen_small`` / ``eisen_official``: image (1, 3, H, W) uint8 RGB -> key, query (1, 32, H/4, W/4): the
  backbone, decoder and affinity head (continuous outputs, exact parity).
- ``segmenter_spec()`` (not registered, see below): the whole static fast path before connected
  components: image + the frame's noise tensors -> agent labels (1, h, w) int32 and confidence (1, h, w)
  (KProp unrolled, Gumbel-top-k competition; ~6k ONNX nodes, TensorRT-parsable ops, static shapes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from perception_nodes.inference.registry import ExportSpec
from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.network import EisenNet, load_weights
from perception_nodes.segmentation.segmenter import EisenSegmenter, make_noise

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SHIPPED = {"small": MODELS_DIR / "eisen_small.safetensors"}


def shipped_config(preset: str) -> EisenConfig:
    """The config of the shipped weights when present (their JSON), else the preset."""
    path = SHIPPED.get(preset)
    if path is not None and path.with_suffix(".json").exists():
        return EisenConfig.from_json(path.with_suffix(".json").read_text())
    return EisenConfig.preset(preset)


def build_net(preset: str) -> EisenNet:
    """Eval-mode network: shipped weights if present, else a seeded random initialisation."""
    cfg = shipped_config(preset)
    torch.manual_seed(0)
    net = EisenNet(cfg)
    path = SHIPPED.get(preset)
    if path is not None and path.exists():
        load_weights(net, path)
    else:
        log.info("no shipped weights for eisen %s; using a seeded random initialisation", preset)
    return net.eval()


def example_image(cfg: EisenConfig) -> np.ndarray:
    """A deterministic tabletop-like picture (1, 3, H, W) uint8: textured ground and a few blobs."""
    H, W = cfg.input_size
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    rng = np.random.default_rng(0)
    img = np.stack(
        [120 + 60 * np.sin(xx / 9), 140 + 50 * np.cos(yy / 13), 110 + 40 * np.sin((xx + yy) / 17)], -1
    )
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8) * H, rng.uniform(0.2, 0.8) * W, rng.uniform(0.06, 0.15) * H
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[inside] = rng.uniform(20, 235, 3)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)[None]


class SegmenterExport(nn.Module):
    """uint8 image + noise -> (labels, confidence): ``EisenSegmenter`` with a uint8 input."""

    def __init__(self, segmenter: EisenSegmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image, h0_noise, seed_noise, gumbel, fitness_noise):
        return self.segmenter(image.float(), h0_noise, seed_noise, gumbel, fitness_noise)


def _segmenter_inputs(cfg: EisenConfig) -> dict[str, np.ndarray]:
    noise = make_noise(cfg, 1, seed=0)
    return {"image": example_image(cfg), **{k: v.numpy() for k, v in noise.items()}}


def _spec(preset: str, name: str, slow: bool) -> ExportSpec:
    cfg = shipped_config(preset)
    return ExportSpec(
        name=name,
        config=cfg,
        build=lambda: build_net(preset),
        example_inputs=lambda: {"image": example_image(cfg)},
        output_names=["key", "query"],
        parity_atol=1e-3 if slow else 1e-4,
        slow=slow,
    )


def segmenter_spec(preset: str = "small", slow: bool = True) -> ExportSpec:
    """The full static segmenter (image + noise -> labels, confidence) as an ExportSpec."""
    cfg = shipped_config(preset)
    return ExportSpec(
        name=f"eisen_{preset}_segmenter",
        config=cfg,
        build=lambda: SegmenterExport(EisenSegmenter(cfg, build_net(preset))).eval(),
        example_inputs=lambda: _segmenter_inputs(cfg),
        output_names=["labels", "confidence"],
        parity_atol=1e-3,
        parity_rtol=1e-3,
        slow=slow,
    )


EXPORTS: list[ExportSpec] = [
    _spec("small", "eisen_small", slow=False),
    _spec("official", "eisen_official", slow=True),
]
# ``segmenter_spec("small")`` (the static KProp + competition path) is exported and checked by
# tests/test_segmentation_component.py::test_exported_segmenter_matches_torch; it is not registered because
# its argmax labels can flip on a handful of pixels between torch and onnxruntime (1 of 4096 with the
# shipped weights), which the registry's element-wise parity tolerance cannot express.
