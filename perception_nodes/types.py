"""Plain data types shared by every layer (no ROS, no torch): camera model and the per-frame input.

Conventions: pixels x right, y down, the centre of the top-left pixel at (0, 0); camera frame is the
REP-103 optical frame (x right, y down, z forward), metres.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class ConversionError(ValueError):
    """An image or camera message that cannot be converted (unsupported encoding, bad sizes)."""


@dataclasses.dataclass(frozen=True)
class CameraModel:
    """Pinhole camera (from CameraInfo): intrinsics in pixels, optional distortion coefficients."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = ()

    def __post_init__(self):
        if self.width <= 0 or self.height <= 0:
            raise ConversionError(f"camera size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ConversionError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - standard name
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) camera-frame metres -> (..., 2) pixels (no distortion)."""
        z = points[..., 2]
        return np.stack(
            [self.fx * points[..., 0] / z + self.cx, self.fy * points[..., 1] / z + self.cy], axis=-1
        )

    def backproject(self, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """(..., 2) pixels and (...) depth in metres -> (..., 3) camera-frame points."""
        x = (pixels[..., 0] - self.cx) / self.fx * depth
        y = (pixels[..., 1] - self.cy) / self.fy * depth
        return np.stack([x, y, depth], axis=-1)

    def scaled(self, width: int, height: int) -> CameraModel:
        """The same camera for an image resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        return dataclasses.replace(
            self,
            width=width,
            height=height,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
        )

    def check_image(self, height: int, width: int) -> None:
        """Raise ConversionError if an image of ``height`` x ``width`` does not match this camera."""
        if (height, width) != (self.height, self.width):
            raise ConversionError(
                f"camera_info is {self.width}x{self.height} but the image is {width}x{height}"
            )


@dataclasses.dataclass
class Frame:
    """One camera frame as every component's ``step`` receives it.

    rgb: (H, W, 3) uint8 RGB. depth: (H, W) float32 metres (0 or NaN = unknown) or None.
    camera: intrinsics matching rgb's size, or None. stamp_ns: capture time, nanoseconds since the epoch.
    self_mask: (H, W) bool, where the robot's own body is in this image as the robot knows it from its
    kinematics and geometry (not from the image), or None.
    """

    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray | None = None
    camera: CameraModel | None = None
    frame_id: str = ""
    self_mask: np.ndarray | None = None

    def __post_init__(self):
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ConversionError(f"Frame.rgb must be (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if self.depth is not None and self.depth.shape != self.rgb.shape[:2]:
            raise ConversionError(f"depth {self.depth.shape} does not match rgb {self.rgb.shape[:2]}")
        if self.self_mask is not None and (
            self.self_mask.shape != self.rgb.shape[:2] or self.self_mask.dtype != np.bool_
        ):
            raise ConversionError(
                f"self_mask must be (H, W) bool like rgb {self.rgb.shape[:2]}, got "
                f"{self.self_mask.shape} {self.self_mask.dtype}"
            )
        if self.camera is not None:
            self.camera.check_image(*self.rgb.shape[:2])
