"""EISEN network: official state-dict compatibility, shapes, config validation, weights I/O errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perception_nodes.segmentation.config import EisenConfig
from perception_nodes.segmentation.network import (
    EisenNet,
    WeightsMismatchError,
    load_weights,
    save_weights,
)

KEYS_FILE = Path(__file__).parent / "data" / "eisen_official_keys.txt"


def _official_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        out[key] = tuple(int(s) for s in shape.split(",") if s)
    return out


def test_official_state_dict_matches_published_checkpoint_layout():
    expected = _official_keys()
    assert len(expected) == 349
    model = EisenNet(EisenConfig.official())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}
    params = sum(p.numel() for p in model.parameters())
    assert params == 40_059_168  # 40.06 M, the official count


def test_official_checkpoint_with_module_prefix_loads(tmp_path):
    model = EisenNet(EisenConfig.official())
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        state["module.key_proj.weight"].fill_(0.25)
    path = tmp_path / "ckpt_final.pth"
    torch.save(state, path)
    fresh = EisenNet(EisenConfig.official())
    load_weights(fresh, path)
    assert torch.all(fresh.key_proj.weight == 0.25)


def test_small_forward_shapes_and_stride_4():
    cfg = EisenConfig.small()
    model = EisenNet(cfg).eval()
    with torch.no_grad():
        key, query = model(torch.randint(0, 256, (2, 3, 256, 256)).float())
    assert key.shape == query.shape == (2, cfg.kq_dim, 64, 64)
    assert cfg.map_size == (64, 64)


def test_mismatched_weights_name_the_keys(tmp_path):
    small = EisenNet(EisenConfig.small())
    path = tmp_path / "w.safetensors"
    save_weights(small, path, EisenConfig.small())
    assert path.with_suffix(".json").exists()
    other = EisenNet(EisenConfig.small(decoder_channels=48))
    with pytest.raises(WeightsMismatchError) as err:
        load_weights(other, path)
    assert "backbone.decoder.res2.fuse_conv.0.weight" in str(err.value)
    assert "shape mismatch" in str(err.value)


def test_config_validation_and_json_roundtrip():
    cfg = EisenConfig.official()
    assert EisenConfig.from_json(cfg.to_json()) == cfg
    assert cfg.num_local == 625 and cfg.num_global == 399
    with pytest.raises(ValueError, match="odd"):
        EisenConfig.small(local_window=14)
    with pytest.raises(ValueError, match="multiple"):
        EisenConfig.small(input_size=(250, 256))
    with pytest.raises(ValueError, match="res5_multi_grid"):
        EisenConfig.small(stage_blocks=(1, 1, 1, 2))
    with pytest.raises(ValueError, match="unknown EisenConfig"):
        EisenConfig.from_dict({"nope": 1})
