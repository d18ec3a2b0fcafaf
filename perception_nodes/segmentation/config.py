"""Configuration of EISEN (Chen et al., ECCV 2022): one dataclass for the network, the affinity sampling,
KProp, competition and post-processing, with two presets from one code path:

- ``EisenConfig.official()``: the published architecture (ResNet-50 DeepLab backbone + DeepLabV3+ decoder,
  512² in, 128² affinity map); its state-dict keys/shapes match the official checkpoint (minus ``module.``).
- ``EisenConfig.small()``: the same algorithm on a light backbone, 256² in, 64² affinity map, trainable and
  fast on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import field
from typing import Any

KPROP_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class EisenConfig:
    """Every hyper-parameter of an EISEN model. Defaults are the ``small`` preset."""

    name: str = field(default="eisen_small", metadata={"help": "model name (registry name, model_id prefix)"})
    input_size: tuple[int, int] = field(
        default=(256, 256),
        metadata={"help": "network input (height, width) in pixels; a multiple of 16·tile"},
    )
    # -- backbone (detectron2-style DeepLab ResNet: deep stem, bottleneck stages, dilated res5) ------
    stem_channels: int = field(
        default=32, metadata={"help": "output channels of the 3-conv deep stem (first two convs use half)"}
    )
    stage_blocks: tuple[int, int, int, int] = field(
        default=(1, 1, 2, 1), metadata={"help": "bottleneck blocks in res2..res5 (official: 3, 4, 6, 3)"}
    )
    width: int = field(
        default=16, metadata={"help": "bottleneck channels of res2 (doubles per stage; outputs are 4x)"}
    )
    res5_dilation: int = field(default=2, metadata={"help": "dilation of res5 (output stride 16)"})
    res5_multi_grid: tuple[int, ...] = field(
        default=(1,), metadata={"help": "per-block dilation multipliers of res5 (one per res5 block)"}
    )
    # -- DeepLabV3+ decoder -------------------------------------------------------------------------
    aspp_channels: int = field(default=64, metadata={"help": "ASPP output channels"})
    aspp_dilations: tuple[int, int, int] = field(default=(6, 12, 18), metadata={"help": "ASPP atrous rates"})
    aspp_dropout: float = field(default=0.1, metadata={"help": "dropout on the ASPP output (training only)"})
    project_channels: tuple[int, int] = field(
        default=(16, 32), metadata={"help": "channels res2 and res3 are projected to before fusion"}
    )
    decoder_channels: int = field(
        default=64, metadata={"help": "channels of the fused decoder output at stride 4"}
    )
    # -- affinity head --------------------------------------------------------------------------------
    kq_dim: int = field(default=32, metadata={"help": "key/query dimension of the affinity head"})
    local_window: int = field(
        default=9, metadata={"help": "side of the local sampling window (odd), e.g. 25 -> 625 neighbours"}
    )
    num_samples: int = field(
        default=209, metadata={"help": "sampled neighbours per node S = local window² + global samples"}
    )
    tile: int = field(
        default=8, metadata={"help": "fast path: side of a receiver tile; global samples are shared per tile"}
    )
    sample_seed: int = field(
        default=0, metadata={"help": "seed of the fixed global sample offsets (fast path)"}
    )
    # -- KProp (kernel propagation on the affinity graph) -------------------------------------------
    hidden_dim: int = field(default=32, metadata={"help": "dimension of the KProp state (plateau map)"})
    kprop_iters: int = field(default=25, metadata={"help": "KProp iterations"})
    kprop_thresh: float = field(
        default=0.5,
        metadata={
            "help": "edges with a > thresh are excitatory, with 1-a > thresh inhibitory (official 0.7; the "
            "small model scores best at 0.5 on validation sim episodes)"
        },
    )
    kprop_tol: float = field(
        default=0.0,
        metadata={
            "help": "fast path: stop once the mean state change per iteration is below this (0 = never)"
        },
    )
    kprop_dtype: str = field(
        default="float32", metadata={"help": f"fast path KProp matmul dtype, one of {KPROP_DTYPES}"}
    )
    # -- competition ----------------------------------------------------------------------------------
    num_masks: int = field(default=32, metadata={"help": "competing agents (maximum segments before CC)"})
    competition_rounds: int = field(default=3, metadata={"help": "rounds of competition"})
    mask_thresh: float = field(default=0.5, metadata={"help": "binarisation threshold of agent masks"})
    compete_thresh: float = field(default=0.2, metadata={"help": "mask IoU above which two agents compete"})
    mask_beta: float = field(default=10.0, metadata={"help": "inverse temperature of the final mask softmax"})
    selection_strength: float = field(default=100.0, metadata={"help": "winner phenotype update strength"})
    homing_strength: float = field(default=10.0, metadata={"help": "re-seeded phenotype distance sharpness"})
    fitness_noise: float = field(default=0.1, metadata={"help": "uniform noise added to agent fitness"})
    # -- post-processing --------------------------------------------------------------------------------
    min_segment_area: int = field(
        default=5,
        metadata={
            "help": "connected components smaller than this (map pixels) merge into 0; official 20 on its "
            "128² map, the same area fraction is 5 on the small 64² map"
        },
    )
    max_segments: int = field(default=256, metadata={"help": "largest connected components kept"})
    # -- training ---------------------------------------------------------------------------------------
    supervision_levels: int = field(
        default=3, metadata={"help": "affinity loss scales (strides 1, 2, 4 of the affinity map)"}
    )

    def __post_init__(self):
        h, w = self.input_size
        if len(self.input_size) != 2 or h <= 0 or w <= 0:
            raise ValueError(f"input_size must be (height, width) > 0, got {self.input_size}")
        unit = 4 * self.tile * 2 ** (self.supervision_levels - 1)
        if h % unit or w % unit or h % 16 or w % 16:
            raise ValueError(
                f"input_size {self.input_size} must be a multiple of 16 and of 4·tile·2^(levels-1) = {unit}"
            )
        if len(self.stage_blocks) != 4 or min(self.stage_blocks) < 1:
            raise ValueError(f"stage_blocks needs 4 positive entries, got {self.stage_blocks}")
        if len(self.res5_multi_grid) != self.stage_blocks[3]:
            raise ValueError(
                f"res5_multi_grid {self.res5_multi_grid} needs one entry per res5 block "
                f"({self.stage_blocks[3]})"
            )
        if self.res5_dilation not in (1, 2, 4):
            raise ValueError(f"res5_dilation must be 1, 2 or 4, got {self.res5_dilation}")
        if len(self.aspp_dilations) != 3 or len(self.project_channels) != 2:
            raise ValueError("aspp_dilations needs 3 entries and project_channels 2")
        if not 0.0 <= self.aspp_dropout < 1.0:
            raise ValueError(f"aspp_dropout must be in [0, 1), got {self.aspp_dropout}")
        if self.local_window % 2 == 0 or self.local_window < 1:
            raise ValueError(f"local_window must be odd and positive, got {self.local_window}")
        if self.num_samples < self.local_window**2:
            raise ValueError(
                f"num_samples {self.num_samples} must be >= local_window² = {self.local_window**2}"
            )
        if self.tile < 1 or self.kprop_iters < 1 or self.num_masks < 2 or self.competition_rounds < 0:
            raise ValueError(
                "tile, kprop_iters >= 1, num_masks >= 2 and competition_rounds >= 0 are required"
            )
        if not 0.5 <= self.kprop_thresh < 1.0:
            raise ValueError(f"kprop_thresh must be in [0.5, 1), got {self.kprop_thresh}")
        if self.kprop_dtype not in KPROP_DTYPES:
            raise ValueError(f"kprop_dtype must be one of {KPROP_DTYPES}, got {self.kprop_dtype!r}")
        if self.kprop_tol < 0 or self.min_segment_area < 0 or self.max_segments < 1:
            raise ValueError("kprop_tol and min_segment_area must be >= 0, max_segments >= 1")
        if self.supervision_levels < 1:
            raise ValueError("supervision_levels must be >= 1")

    # -- derived ----------------------------------------------------------------------------------
    @property
    def map_size(self) -> tuple[int, int]:
        """(height, width) of the affinity map (stride 4 of the input)."""
        return self.input_size[0] // 4, self.input_size[1] // 4

    @property
    def num_local(self) -> int:
        return self.local_window**2

    @property
    def num_global(self) -> int:
        return self.num_samples - self.local_window**2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EisenConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown EisenConfig fields: {', '.join(unknown)}")
        typed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**typed)

    @classmethod
    def from_json(cls, text: str) -> EisenConfig:
        return cls.from_dict(json.loads(text))

    def short_hash(self) -> str:
        """8 hex digits identifying the config (for model ids such as ``eisen_small@1a2b3c4d``)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    # -- presets ----------------------------------------------------------------------------------
    @classmethod
    def small(cls, **overrides: Any) -> EisenConfig:
        """Light backbone, 256² in, 64² map; the shipped CPU model."""
        return cls(**overrides)

    @classmethod
    def official(cls, **overrides: Any) -> EisenConfig:
        """The published EISEN network and inference settings (neuroailab/EISEN @ df4854e)."""
        values: dict[str, Any] = dict(
            name="eisen_official",
            input_size=(512, 512),
            stem_channels=128,
            stage_blocks=(3, 4, 6, 3),
            width=64,
            res5_dilation=2,
            res5_multi_grid=(1, 2, 4),
            aspp_channels=256,
            aspp_dilations=(6, 12, 18),
            aspp_dropout=0.1,
            project_channels=(32, 64),
            decoder_channels=128,
            kq_dim=32,
            local_window=25,
            num_samples=1024,
            hidden_dim=32,
            kprop_iters=25,
            kprop_thresh=0.7,
            num_masks=32,
            competition_rounds=3,
            min_segment_area=20,
            max_segments=256,
            supervision_levels=3,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EisenConfig:
        presets = {"small": cls.small, "official": cls.official}
        if name not in presets:
            raise ValueError(f"unknown EISEN preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)


@dataclasses.dataclass(frozen=True)
class EisenComponentConfig:
    """Run-time settings of the streaming EISEN component (the model's own settings are in EisenConfig)."""

    weights: str = field(
        default="",
        metadata={"help": "EISEN .safetensors (config JSON next to it) or official .pth; '' = shipped"},
    )
    preset: str = field(
        default="small", metadata={"help": "preset used when no weights are given: small or official"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device: cpu or cuda"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = leave torch's default)"})
    path: str = field(
        default="fast", metadata={"help": "inference path: fast (default) or reference (official)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of every random draw (h0, KProp seed node, agents)"})
    seed_per_frame: bool = field(
        default=True,
        metadata={
            "help": "mix the frame stamp into the seed (reproducible per frame; steadier ids than fixed)"
        },
    )
    early_exit_tol: float = field(
        default=0.0,
        metadata={
            "help": "stop KProp once the mean state change per iteration is below this (0 = all iterations)"
        },
    )
    kprop_dtype: str = field(
        default="",
        metadata={"help": "KProp matmul dtype override: float32, bfloat16, float16 ('' = the model's)"},
    )
    match_iou: float = field(
        default=0.3, metadata={"help": "IoU with a previous segment needed to keep its id (stable ids)"}
    )
    overlay: bool = field(default=True, metadata={"help": "also produce a colour overlay image"})
    self_mask: bool = field(
        default=True,
        metadata={
            "help": "frames with the robot's own mask (from its kinematics): those pixels become one "
            "segment with id 65535"
        },
    )
    refine: bool = field(
        default=True,
        metadata={"help": "edge-aware upsampling of the segments to the frame (False: nearest, official)"},
    )
    depth_refine: bool = field(
        default=True,
        metadata={
            "help": "with depth and intrinsics, cut segments at the supporting plane (needs open3d; "
            "segmentation.depth_refine)"
        },
    )
    support_tol_m: float = field(
        default=0.01,
        metadata={
            "help": "depth refinement: RANSAC inlier distance and the largest on-plane tolerance, m (the "
            "tolerance used is 3 robust sigmas of the plane's depth noise, at least 3 mm)"
        },
    )
    max_height_m: float = field(
        default=0.5, metadata={"help": "depth refinement: higher above the plane is not a tabletop object, m"}
    )

    def __post_init__(self):
        if self.path not in ("fast", "reference"):
            raise ValueError(f"path must be 'fast' or 'reference', got {self.path!r}")
        if self.preset not in ("small", "official"):
            raise ValueError(f"preset must be 'small' or 'official', got {self.preset!r}")
        if self.kprop_dtype not in ("", *KPROP_DTYPES):
            raise ValueError(f"kprop_dtype must be '' or one of {KPROP_DTYPES}, got {self.kprop_dtype!r}")
        if not 0.0 <= self.match_iou <= 1.0 or self.early_exit_tol < 0 or self.threads < 0:
            raise ValueError("match_iou must be in [0, 1], early_exit_tol and threads >= 0")
        from perception_nodes.segmentation.depth_refine import DepthRefineConfig

        DepthRefineConfig(support_tol_m=self.support_tol_m, max_height_m=self.max_height_m)  # its checks
