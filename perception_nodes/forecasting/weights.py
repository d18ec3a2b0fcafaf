"""ARFM weights: our checkpoints (.safetensors + config JSON) and the mapping of published ARFM weights.

Published checkpoints (Hugging Face folders such as ``jxie/autorf-zero_shot-motion_predictor``) hold the
trainable modules under ``motion_predictor.*`` and their EMA copy under ``ema_model.ema_model.*`` (the
released inference uses the EMA). Their leaf names equal ours; only the module prefixes differ
(``OFFICIAL_PREFIXES``). Frozen encoders (SAM2, CLIP vision, CLIP text) and the unused absolute Fourier
tables are skipped: our ``official`` config takes those features as inputs.

Checked once against the released modules (transformers 4.44.2, their JointTrackModel and
DenoisingJointTrackPredictor at toy sizes, random non-zero weights mapped with this table): our fusion
transformer and flow head give the same outputs to 7e-7 (float32). The released code is not vendored here,
so that check is not part of the test suite; ``tests/test_forecasting_model.py`` checks names and shapes.

Known behavioural differences of the released code that a mapped model does not reproduce (documented, on
purpose): its point "visibility" embedding index is computed from the point index rather than the step;
its spatial attention masks add a per-row constant (a no-op); padded text tokens are masked there (our text
prefix assumes all ``text_tokens`` valid); its global tokens count only frame 0 as observed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from perception_nodes.forecasting.config import ARFMConfig
from perception_nodes.forecasting.network import ARFM

log = logging.getLogger(__name__)

#: (prefix in MotionPredictor, prefix in our ARFM); first match wins.
OFFICIAL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("track_predictor_head.", "head."),
    ("track_predictor.", "fusion."),
    ("feature_to_predictor_projection.", "point_projection."),
    ("global_feature_to_predictor_projection.", "global_projection."),
    ("global_visibility_indicator_embeddings.", "global_observed_embedding."),
    ("visibility_indicator_embeddings.", "point_observed_embedding."),
    ("camera_motion_embedder.embedding_table.", "camera_motion_embedding."),
    ("text_encoder.projection.", "text_projection."),
    ("text_encoder.pooled_projection.", "text_pooled_projection."),
    ("text_encoder.embedding_mask_tokens", "text_mask_tokens"),
    ("text_encoder.pooled_mask_token", "text_pooled_mask_token"),
)

#: Official keys we deliberately do not load (frozen encoders, unused fixed tables).
OFFICIAL_IGNORED: tuple[str, ...] = (
    "video_encoder.",
    "global_video_encoder.",
    "text_encoder.text_encoder.",
    "track_predictor_head.fourier_embeddings.",
)

OFFICIAL_ROOTS = ("ema_model.ema_model.", "motion_predictor.")


def map_official_key(key: str) -> str | None:
    """Our parameter name for an official key below its root (e.g. 'track_predictor.norm.weight'),
    or None when the key is deliberately skipped. Raises KeyError for keys we do not know."""
    if key.startswith(OFFICIAL_IGNORED):
        return None
    for theirs, ours in OFFICIAL_PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    raise KeyError(f"unknown ARFM parameter {key!r}")


def convert_official(state: dict[str, torch.Tensor], prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """Our state dict from a published ARFM state dict (EMA weights when present and ``prefer_ema``)."""
    roots = OFFICIAL_ROOTS if prefer_ema else OFFICIAL_ROOTS[::-1]
    root = next((r for r in roots if any(k.startswith(r) for k in state)), None)
    if root is None:
        raise KeyError(f"no key starts with {' or '.join(OFFICIAL_ROOTS)}: not an ARFM checkpoint")
    out = {}
    for key, value in state.items():
        if key.startswith(root):
            ours = map_official_key(key[len(root) :])
            if ours is not None:
                out[ours] = value
    log.info("mapped %d tensors from %s*", len(out), root)
    return out


def load_official(model: ARFM, path: str | Path, prefer_ema: bool = True) -> ARFM:
    """Load a published checkpoint (a .safetensors / .bin file, or a folder holding one) into ``model``
    (built with ``config.official()``); every trainable parameter must be covered."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not found:
            raise FileNotFoundError(f"no .safetensors or .bin weights in {path}")
        path = found[0]
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_official(state, prefer_ema), strict=True)
    return model


# -- our checkpoints ---------------------------------------------------------------------------------
def config_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_model(model: ARFM, path: str | Path, extra: dict | None = None) -> None:
    """Write ``path`` (.safetensors) and the config next to it (same stem, .json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"config": json.dumps(dataclasses.asdict(model.cfg))})
    tmp.replace(path)
    record = {"config": dataclasses.asdict(model.cfg), **(extra or {})}
    config_path(path).write_text(json.dumps(record, indent=2) + "\n")


def read_config(path: str | Path) -> ARFMConfig:
    record = json.loads(config_path(path).read_text())
    return ARFMConfig(**record["config"])


def load_model(path: str | Path, device: str = "cpu") -> ARFM:
    """An eval-mode ARFM from our .safetensors + .json pair."""
    model = ARFM(read_config(path))
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.to(device).eval()
