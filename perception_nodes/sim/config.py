"""SimConfig: every knob of the MuJoCo tabletop episodes, validated in ``__post_init__``."""

from __future__ import annotations

from dataclasses import dataclass, field

from perception_nodes.sim.objects import FAMILIES


@dataclass(frozen=True)
class SimConfig:
    width: int = field(default=320, metadata={"help": "image width in pixels"})
    height: int = field(default=240, metadata={"help": "image height in pixels"})
    frames: int = field(default=24, metadata={"help": "frames per episode (T)"})
    fps: float = field(default=15.0, metadata={"help": "camera frame rate in Hz (physics runs in between)"})
    min_objects: int = field(default=2, metadata={"help": "fewest objects on the table"})
    max_objects: int = field(default=6, metadata={"help": "most objects on the table"})
    families: tuple[str, ...] = field(default=FAMILIES, metadata={"help": "object families to draw from"})
    num_tracks: int = field(default=256, metadata={"help": "ground-truth point tracks per episode (N)"})
    table_track_fraction: float = field(
        default=0.15, metadata={"help": "fraction of the tracks on the (static) table top"}
    )
    physics_dt: float = field(default=0.002, metadata={"help": "MuJoCo time step in seconds"})
    settle_s: float = field(
        default=0.3, metadata={"help": "physics time to let objects settle before frame 0"}
    )
    camera_motion_prob: float = field(default=0.3, metadata={"help": "probability that the camera moves"})
    camera_distance: tuple[float, float] = field(
        default=(0.45, 0.8), metadata={"help": "camera distance range to the look-at point (m)"}
    )
    camera_elevation_deg: tuple[float, float] = field(
        default=(30.0, 70.0), metadata={"help": "camera elevation range above the table plane (deg)"}
    )
    fovy_deg: tuple[float, float] = field(
        default=(42.0, 62.0), metadata={"help": "vertical field of view range (deg)"}
    )
    principal_jitter: float = field(
        default=0.03, metadata={"help": "principal point offset from the centre, fraction of the image size"}
    )
    camouflage_prob: float = field(
        default=0.25, metadata={"help": "probability that an object wears the table's texture"}
    )
    shove_prob: float = field(
        default=0.0,
        metadata={
            "help": "per object and frame, probability of a random horizontal shove, so that objects also "
            "move on their own (motion for self-supervised segmentation); 0 = only the pusher moves them"
        },
    )
    shove_speed: tuple[float, float] = field(
        default=(0.2, 0.6), metadata={"help": "speed range of a shove (m/s)"}
    )
    shadows: bool = field(default=True, metadata={"help": "render shadows from the key light"})
    texture_size: int = field(
        default=64, metadata={"help": "procedural texture resolution (pixels per side)"}
    )
    visibility_tol_m: float = field(
        default=0.01, metadata={"help": "a track point is visible when the rendered depth is within this (m)"}
    )
    start_ns: int = field(
        default=1_700_000_000_000_000_000,
        metadata={"help": "stamp of frame 0 in nanoseconds (fixed: determinism)"},
    )

    def __post_init__(self):
        if self.width < 8 or self.height < 8 or self.width > 4096 or self.height > 4096:
            raise ValueError(
                f"image size must be between 8 and 4096 pixels per side, got {self.width}x{self.height}"
            )
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ValueError(
                "need 1 <= min_objects <= max_objects <= 8, "
                f"got min={self.min_objects} max={self.max_objects}"
            )
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"unknown or empty object families {unknown}; known: {', '.join(FAMILIES)}")
        if self.num_tracks < 0:
            raise ValueError(f"num_tracks must be >= 0, got {self.num_tracks}")
        if not 0.0 <= self.table_track_fraction <= 1.0:
            raise ValueError(f"table_track_fraction must be in [0, 1], got {self.table_track_fraction}")
        if not 0 < self.physics_dt <= 0.01 or self.settle_s < 0:
            raise ValueError(
                f"need 0 < physics_dt <= 0.01 and settle_s >= 0, got {self.physics_dt}, {self.settle_s}"
            )
        for name in ("camera_distance", "camera_elevation_deg", "fovy_deg"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < lo <= hi, got {(lo, hi)}")
        if self.fovy_deg[1] >= 120 or self.camera_elevation_deg[1] > 90:
            raise ValueError("fovy_deg must stay below 120 and camera_elevation_deg at most 90")
        if not 0 <= self.shove_speed[0] <= self.shove_speed[1] <= 5.0:
            raise ValueError(f"shove_speed must be a range 0 <= lo <= hi <= 5 m/s, got {self.shove_speed}")
        for name in ("camera_motion_prob", "camouflage_prob", "principal_jitter", "shove_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 8 <= self.texture_size <= 1024:
            raise ValueError(f"texture_size must be in [8, 1024], got {self.texture_size}")
        if not self.visibility_tol_m > 0:
            raise ValueError(f"visibility_tol_m must be positive, got {self.visibility_tol_m}")

    @property
    def frame_period_ns(self) -> int:
        return round(1e9 / self.fps)

    def stamp_ns(self, t: int) -> int:
        return self.start_ns + t * self.frame_period_ns
