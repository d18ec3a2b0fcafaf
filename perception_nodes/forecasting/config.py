"""Configuration of ARFM (autoregressive flow matching for point-track forecasting, Xie et al. 2025).

Two named configurations:

- ``small``: shipped, own small image encoder, trainable and fast on a CPU;
- ``official``: the released sizes (fusion transformer 12 layers, 768-d, 12 heads; 4-layer DiT flow head;
  352-d dense features from a frozen SAM2.1-Hiera-Tiny at 512², 49 global tokens of 768-d from CLIP
  ViT-B/32, CLIP text 32 tokens). Its encoders are pluggable (``encoder="external"``): features come in as
  tensors. The trainable modules' parameter names map 1:1 onto published ``motion_predictor.*`` weights
  (see ``weights.py``).

Coordinates: the model works in a ``coord_size`` x ``coord_size`` frame (official: 256), pixels x right,
y down; a step's displacement is divided by ``displacement_scale`` before it meets the flow's N(0, I) noise.
Motion input per step (``use_motion_input``): the previous displacement and, with ``motion_window`` W, the
mean displacement over the last W steps (``network.motion_inputs``).
With ``residual_motion`` the flow's variable is what is left of a step's displacement after continuing the
previous one (zero when that one was not observed at both ends), or with a motion window the window's
mean displacement: ``train.residual_targets``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

ENCODERS = ("small_cnn", "external")
SAMPLINGS = ("bilinear", "nearest")


@dataclasses.dataclass(frozen=True)
class ARFMConfig:
    """Network sizes and input conventions."""

    name: str = field(default="arfm_small", metadata={"help": "model name (registry / model_id prefix)"})
    coord_size: int = field(
        default=256, metadata={"help": "side of the square model coordinate frame in pixels"}
    )
    image_size: int = field(default=128, metadata={"help": "side of the square image the dense encoder sees"})
    encoder: str = field(
        default="small_cnn", metadata={"help": "dense/global image encoder: small_cnn or external"}
    )
    feature_dim: int = field(
        default=32, metadata={"help": "channels of the dense feature map sampled at points"}
    )
    global_dim: int = field(default=32, metadata={"help": "channels of the global image tokens"})
    num_global_tokens: int = field(
        default=4, metadata={"help": "global image tokens per frame (a square number)"}
    )
    feature_sampling: str = field(
        default="bilinear", metadata={"help": "point feature lookup: bilinear or nearest"}
    )
    hidden_size: int = field(default=32, metadata={"help": "fusion transformer width"})
    num_layers: int = field(
        default=4, metadata={"help": "fusion layers, alternating causal time / spatial (even)"}
    )
    num_heads: int = field(default=4, metadata={"help": "attention heads of the fusion transformer"})
    intermediate_size: int = field(
        default=64, metadata={"help": "SwiGLU hidden size of the fusion transformer"}
    )
    head_hidden_size: int = field(default=32, metadata={"help": "flow head width"})
    head_layers: int = field(
        default=1, metadata={"help": "DiT blocks (spatial attention, adaLN) in the flow head"}
    )
    head_heads: int = field(default=2, metadata={"help": "attention heads of the flow head"})
    head_intermediate_size: int = field(default=64, metadata={"help": "SwiGLU hidden size of the flow head"})
    frequency_dim: int = field(default=256, metadata={"help": "sinusoidal flow-time embedding size"})
    flow_time_scale: float = field(
        default=1000.0, metadata={"help": "flow time t in [0, 1] is multiplied by this before its embedding"}
    )
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base of the causal time attention"})
    norm_eps: float = field(default=1e-6, metadata={"help": "epsilon of RMS/LayerNorms"})
    max_steps: int = field(
        default=32, metadata={"help": "longest token sequence per point (text + history + horizon)"}
    )
    use_position_input: bool = field(
        default=True,
        metadata={"help": "feed a Fourier embedding of each step's position to the fusion input"},
    )
    num_fourier_bands: int = field(
        default=8, metadata={"help": "Fourier bands per axis of the position input"}
    )
    use_motion_input: bool = field(
        default=True, metadata={"help": "feed each step's previous displacement to the fusion input"}
    )
    motion_window: int = field(
        default=0,
        metadata={
            "help": "with the motion input, also feed each step's mean displacement over the last W steps, "
            "(x_s - x_{s-W}) / W (steps before the first count as still): a velocity that a tracker's "
            "jitter barely moves (0 = off)"
        },
    )
    history_noise_input: bool = field(
        default=False,
        metadata={
            "help": "observed point tokens also carry the history's noise level (std of its positions, model "
            "px) times a learned vector, so that a model trained on jittered histories can still trust "
            "exact ones (training passes each example's jitter std, inference the tracker's noise; tried "
            "for small and not adopted, see models/arfm_small.md)"
        },
    )
    use_camera_motion: bool = field(
        default=False,
        metadata={"help": "adaLN conditioning on a camera-motion class (0 static, 1 moving, 2 unknown)"},
    )
    use_text: bool = field(
        default=False, metadata={"help": "text conditioning (prefix tokens + pooled adaLN)"}
    )
    text_dim: int = field(default=512, metadata={"help": "width of the external text encoder's embeddings"})
    text_tokens: int = field(default=32, metadata={"help": "text prefix tokens per sequence"})
    displacement_scale: float = field(
        default=1.0, metadata={"help": "model-frame pixels per unit of the flow's displacement variable"}
    )
    residual_motion: bool = field(
        default=False,
        metadata={
            "help": "the flow generates a step's change of displacement from the step before (constant "
            "velocity is 0) instead of the displacement itself (False, as the paper)"
        },
    )

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.feature_sampling not in SAMPLINGS:
            raise ValueError(f"feature_sampling must be one of {SAMPLINGS}, got {self.feature_sampling!r}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError("hidden_size must split into an even head size per head")
        if self.head_hidden_size % self.head_heads:
            raise ValueError("head_hidden_size must be divisible by head_heads")
        if self.num_layers < 2 or self.num_layers % 2:
            raise ValueError(f"num_layers must be even and >= 2 (time/spatial pairs), got {self.num_layers}")
        if self.head_layers < 1:
            raise ValueError("head_layers must be >= 1")
        side = round(self.num_global_tokens**0.5)
        if self.num_global_tokens < 0 or side * side != self.num_global_tokens:
            raise ValueError(f"num_global_tokens must be a square number, got {self.num_global_tokens}")
        if self.encoder == "small_cnn" and self.image_size % 16:
            raise ValueError("image_size must be a multiple of 16 for the small encoder")
        if self.motion_window < 0 or (self.motion_window and not self.use_motion_input):
            raise ValueError("motion_window must be >= 0 and needs use_motion_input")
        if self.max_steps < 2 or self.displacement_scale <= 0 or self.coord_size <= 0:
            raise ValueError("max_steps >= 2, displacement_scale > 0 and coord_size > 0 are required")
        if self.use_text and self.text_tokens + 2 > self.max_steps:
            raise ValueError("max_steps must leave room after the text prefix")

    @property
    def motion_dim(self) -> int:
        """Motion input channels per step: previous displacement (2) and the windowed mean (2)."""
        return (2 + 2 * bool(self.motion_window)) if self.use_motion_input else 0

    @property
    def text_prefix(self) -> int:
        """Time positions taken by the text prefix (0 without text)."""
        return self.text_tokens if self.use_text else 0


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How a forecast is drawn: K samples, H steps, few Euler steps, warm start from the last forecast."""

    num_samples: int = field(default=5, metadata={"help": "samples K drawn per forecast (batched)"})
    horizon: int = field(default=15, metadata={"help": "future steps H per forecast"})
    history: int = field(
        default=8, metadata={"help": "observed steps (incl. the current frame) fed as causal past"}
    )
    euler_steps: int = field(
        default=4, metadata={"help": "Euler steps per future step from noise (cold start)"}
    )
    warm_start_t: float = field(
        default=0.8,
        metadata={"help": "flow time the previous forecast is re-noised to (warm start); 0 disables"},
    )
    warm_start_steps: int = field(
        default=1, metadata={"help": "Euler steps that refine a warm-started step (1: as good as 2 on sim)"}
    )
    t_end: float = field(
        default=1.0,
        metadata={
            "help": "flow time the Euler integration stops at (the released code stops at 15/16, which "
            "shortens every step by 1/16 and leaves 1/16 of its noise; the shipped small model forecasts "
            "better at 1.0, see models/arfm_small.md; use 15/16 to follow the released code)"
        },
    )
    seed: int = field(default=0, metadata={"help": "noise seed (-1: nondeterministic)"})
    history_noise_px: float = field(
        default=0.5,
        metadata={
            "help": "position noise (std per coordinate, px at the model's 256 scale) of the tracks the "
            "forecaster reads, told to models with history_noise_input (0: exact tracks, e.g. sim ground "
            "truth); other models ignore it"
        },
    )

    def __post_init__(self):
        if self.history_noise_px < 0:
            raise ValueError("history_noise_px must be >= 0")
        if self.num_samples < 1 or self.horizon < 1 or self.history < 1:
            raise ValueError("num_samples, horizon and history must be >= 1")
        if self.euler_steps < 1 or self.warm_start_steps < 1:
            raise ValueError("euler_steps and warm_start_steps must be >= 1")
        if not 0 <= self.warm_start_t < self.t_end <= 1:
            raise ValueError("0 <= warm_start_t < t_end <= 1 is required")


@dataclasses.dataclass(frozen=True)
class ForecastingConfig:
    """Forecast component: model, sampling and publishing."""

    model: ARFMConfig = field(default_factory=ARFMConfig, metadata={"help": "network"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "sampling"})
    weights: str = field(
        default="", metadata={"help": ".safetensors weights ('' = shipped weights for the model name)"}
    )
    forecast_period_s: float = field(
        default=0.0, metadata={"help": "minimum time between forecasts (0 = every frame)"}
    )
    max_points: int = field(
        default=100, metadata={"help": "forecast at most this many tracks (most visible first)"}
    )
    step_dt_s: float = field(
        default=0.0, metadata={"help": "time between forecast steps (0 = the tracks' median step interval)"}
    )
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self):
        if self.forecast_period_s < 0 or self.step_dt_s < 0:
            raise ValueError("forecast_period_s and step_dt_s must be >= 0")
        if self.max_points < 1:
            raise ValueError("max_points must be >= 1")
        if self.sampling.history + self.sampling.horizon + self.model.text_prefix > self.model.max_steps:
            raise ValueError(
                f"history {self.sampling.history} + horizon {self.sampling.horizon} (+ text) exceeds "
                f"model.max_steps {self.model.max_steps}"
            )


def small() -> ARFMConfig:
    """The shipped CPU model: 2 fusion layers (one causal-time, one spatial) of 2 heads, so that a streaming
    forecast update (K = 5, N = 100, H = 15) takes about 50 ms on one CPU core (4 layers x 4 heads took 2x
    as long and forecast worse on held-out sim windows), with the 4-step mean displacement as a second
    motion input (``motion_window``: trained on jittered histories, the model without it shrank slow points'
    first step to 0.58 px against a true 0.88 px; 7 steps did worse). See models/arfm_small.md."""
    return dataclasses.replace(ARFMConfig(), num_layers=2, num_heads=2, motion_window=4)


def small_residual() -> ARFMConfig:
    """``small`` generating what is left after continuing the window's mean displacement
    (``residual_motion``): the card's experiment, not adopted."""
    return dataclasses.replace(small(), residual_motion=True)


def official() -> ARFMConfig:
    """The released ARFM sizes (jxie/autorf-*-motion_predictor), encoders external."""
    return ARFMConfig(
        name="arfm_official",
        coord_size=256,
        image_size=512,
        encoder="external",
        feature_dim=352,
        global_dim=768,
        num_global_tokens=49,
        feature_sampling="nearest",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=2046,
        head_hidden_size=768,
        head_layers=4,
        head_heads=12,
        head_intermediate_size=2046,
        frequency_dim=256,
        flow_time_scale=1.0,
        max_steps=32 + 51,
        use_position_input=False,
        use_motion_input=False,
        use_camera_motion=True,
        use_text=True,
        text_dim=512,
        text_tokens=32,
    )


CONFIGS = {"small": small, "small_residual": small_residual, "official": official}


def by_name(name: str) -> ARFMConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown ARFM config {name!r}; choose from {sorted(CONFIGS)}")
    return CONFIGS[name]()
