"""Configuration of the online point tracker (pyramidal Lucas–Kanade with forward–backward checks)."""

from __future__ import annotations

import dataclasses
from dataclasses import field

SEEDING_MODES = ("auto", "grid", "features", "segments", "none")


@dataclasses.dataclass(frozen=True)
class TrackerConfig:
    """Online tracker of N query points: one OpenCV LK pass forward and one backward per frame."""

    num_points: int = field(
        default=256, metadata={"help": "number of track slots N (tracks are re-seeded into dead slots)"}
    )
    win_size: int = field(default=11, metadata={"help": "Lucas–Kanade window side in pixels (odd)"})
    pyramid_levels: int = field(default=3, metadata={"help": "pyramid levels above the full image"})
    max_iterations: int = field(default=20, metadata={"help": "LK iterations per level"})
    epsilon: float = field(default=0.03, metadata={"help": "LK convergence threshold in pixels"})
    fb_threshold_px: float = field(
        default=1.0, metadata={"help": "forward–backward error above which a point is marked occluded"}
    )
    min_eig_threshold: float = field(
        default=1e-4, metadata={"help": "LK minimum-eigenvalue rejection threshold"}
    )
    patch_size: int = field(
        default=9, metadata={"help": "appearance patch side used for the occlusion check"}
    )
    ncc_threshold: float = field(
        default=0.5,
        metadata={
            "help": "normalised cross-correlation with the reference patch below which a point is occluded"
        },
    )
    reference_update: float = field(
        default=0.3,
        metadata={
            "help": "rate at which a confidently visible point's reference patch follows its appearance"
        },
    )
    reacquire_ncc: float = field(
        default=0.8, metadata={"help": "NCC needed to re-acquire an occluded point by template search"}
    )
    search_radius_px: int = field(default=8, metadata={"help": "template search radius for occluded points"})
    max_occluded_frames: int = field(
        default=20, metadata={"help": "frames a point may stay occluded before its slot is freed"}
    )
    neighbours: int = field(
        default=6, metadata={"help": "visible neighbours whose median motion carries an occluded point"}
    )
    use_velocity_prior: bool = field(
        default=True, metadata={"help": "start LK from the constant-velocity prediction of each point"}
    )
    seeding: str = field(
        default="auto",
        metadata={
            "help": "where new tracks start: auto (segments if given, else features), grid, features, "
            "segments, none"
        },
    )
    min_distance_px: float = field(default=6.0, metadata={"help": "minimum distance between seeded points"})
    min_texture: float = field(
        default=1e-4,
        metadata={"help": "minimum structure-tensor eigenvalue (grey in [0, 1], blockSize 5) a seed needs"},
    )
    reseed_fraction: float = field(
        default=0.05,
        metadata={"help": "re-seed when at least this fraction of slots is dead (0: every frame)"},
    )
    border_px: int = field(default=2, metadata={"help": "points closer than this to the border are lost"})
    history: int = field(
        default=16, metadata={"help": "steps of history published per track (PointTracks window)"}
    )
    time_jump_s: float = field(
        default=0.5, metadata={"help": "a gap larger than this (or time going backwards) resets all tracks"}
    )

    def __post_init__(self):
        if self.num_points < 0:
            raise ValueError(f"num_points must be >= 0, got {self.num_points}")
        if self.win_size < 3 or self.win_size % 2 == 0:
            raise ValueError(f"win_size must be an odd number >= 3, got {self.win_size}")
        if self.patch_size < 3 or self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be an odd number >= 3, got {self.patch_size}")
        if not 0 <= self.pyramid_levels <= 8:
            raise ValueError(f"pyramid_levels must be in [0, 8], got {self.pyramid_levels}")
        if self.seeding not in SEEDING_MODES:
            raise ValueError(f"seeding must be one of {SEEDING_MODES}, got {self.seeding!r}")
        for name in ("fb_threshold_px", "epsilon", "min_distance_px", "time_jump_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ncc_threshold", "reacquire_ncc", "reference_update", "reseed_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.history < 1 or self.max_occluded_frames < 0 or self.neighbours < 1:
            raise ValueError("history and neighbours must be >= 1 and max_occluded_frames >= 0")
