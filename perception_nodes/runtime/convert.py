"""sensor_msgs Image / CompressedImage / CameraInfo <-> numpy, duck-typed.

Works on rclpy messages and rosbags dataclasses alike: only attributes are read (``data`` may be bytes,
array.array or a numpy array). Outgoing messages are built through ``make`` (``Bus.make`` or
``typestore.make`` bound to a store), so both backends get native messages.

Image arrays are (H, W, C) or (H, W), row 0 at the top, x right, y down. Colour arrays from
``image_to_numpy`` keep the message's channel order; ``to_rgb`` converts any supported encoding to RGB.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from perception_nodes.types import CameraModel, ConversionError

__all__ = [
    "ENCODINGS",
    "CameraModel",
    "ConversionError",
    "camera_from_info",
    "camera_to_info",
    "compressed_to_numpy",
    "depth_to_metres",
    "image_to_numpy",
    "numpy_to_compressed",
    "numpy_to_image",
    "to_rgb",
]

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("uint8", 3),
    "bgr8": ("uint8", 3),
    "rgba8": ("uint8", 4),
    "bgra8": ("uint8", 4),
    "mono8": ("uint8", 1),
    "8UC1": ("uint8", 1),
    "mono16": ("uint16", 1),
    "16UC1": ("uint16", 1),
    "32FC1": ("float32", 1),
}


def _check_encoding(encoding: str) -> tuple[np.dtype, int]:
    if encoding not in ENCODINGS:
        raise ConversionError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    return np.dtype(dtype), channels


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image into (H, W, C) or (H, W) honouring ``step`` padding and endianness."""
    dtype, channels = _check_encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ConversionError(f"image step {step} < width*channels*bytes = {row_bytes} ({msg.encoding})")
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buf.size < step * height:
        raise ConversionError(f"image data has {buf.size} bytes, expected step*height = {step * height}")
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    order = ">" if msg.is_bigendian else "<"
    arr = np.ascontiguousarray(rows).view(dtype.newbyteorder(order))
    arr = arr.astype(dtype, copy=False) if dtype.itemsize > 1 else arr
    shape = (height, width, channels) if channels > 1 else (height, width)
    return arr.reshape(shape)


def to_rgb(msg: Any) -> np.ndarray:
    """Any supported colour or mono8 Image as an (H, W, 3) uint8 RGB array."""
    arr = image_to_numpy(msg)
    enc = msg.encoding
    if enc == "rgb8":
        return arr
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(arr[..., 2::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(arr[..., :3])
    if enc in ("mono8", "8UC1"):
        return np.repeat(arr[..., None], 3, axis=2)
    raise ConversionError(f"image encoding {enc!r} is not a colour image")


def depth_to_metres(msg: Any) -> np.ndarray:
    """A depth Image (16UC1/mono16 millimetres or 32FC1 metres) as float32 metres; 0 or NaN = no data."""
    arr = image_to_numpy(msg)
    if msg.encoding in ("16UC1", "mono16"):
        return arr.astype(np.float32) * np.float32(0.001)
    if msg.encoding == "32FC1":
        return arr.astype(np.float32, copy=False)
    raise ConversionError(f"image encoding {msg.encoding!r} is not a depth encoding (16UC1 or 32FC1)")


def numpy_to_image(make: Callable[..., Any], array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Build a sensor_msgs/Image from ``array`` with ``make('sensor_msgs/msg/Image', **fields)``."""
    dtype, channels = _check_encoding(encoding)
    if array.dtype != dtype:
        raise ConversionError(f"encoding {encoding} needs dtype {dtype}, got {array.dtype}")
    shape_channels = 1 if array.ndim == 2 else array.shape[2]
    if array.ndim not in (2, 3) or shape_channels != channels:
        raise ConversionError(f"encoding {encoding} needs {channels} channel(s), got shape {array.shape}")
    height, width = array.shape[:2]
    data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
    fields = dict(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(sys.byteorder == "big"),
        step=width * channels * dtype.itemsize,
        data=data,
    )
    if header is not None:
        fields["header"] = header
    return make("sensor_msgs/msg/Image", **fields)


def compressed_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg/png) into (H, W, 3) uint8 RGB or a mono/16-bit array."""
    import cv2

    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ConversionError(f"cannot decode CompressedImage with format {msg.format!r}")
    if arr.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
        arr = cv2.cvtColor(arr, code)
    return arr


def numpy_to_compressed(
    make: Callable[..., Any], rgb: np.ndarray, fmt: str = "jpeg", header: Any = None
) -> Any:
    """Encode an (H, W, 3) RGB uint8 array (or (H, W) mono) as a sensor_msgs/CompressedImage."""
    import cv2

    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ConversionError(f"unsupported CompressedImage format {fmt!r}; use jpeg or png")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, enc = cv2.imencode(ext, bgr)
    if not ok:
        raise ConversionError(f"OpenCV could not encode image of shape {rgb.shape} as {fmt}")
    fields = dict(format=fmt if fmt != "jpg" else "jpeg", data=enc.reshape(-1))
    if header is not None:
        fields["header"] = header
    return make("sensor_msgs/msg/CompressedImage", **fields)


def camera_from_info(msg: Any) -> CameraModel:
    """CameraModel from a sensor_msgs/CameraInfo (K row-major: fx 0 cx / 0 fy cy / 0 0 1)."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise ConversionError(f"CameraInfo.k must have 9 entries, got {k.size}")
    return CameraModel(
        width=int(msg.width),
        height=int(msg.height),
        fx=float(k[0]),
        fy=float(k[4]),
        cx=float(k[2]),
        cy=float(k[5]),
        distortion_model=str(msg.distortion_model),
        distortion=tuple(float(v) for v in np.asarray(msg.d).reshape(-1)),
    )


def camera_to_info(make: Callable[..., Any], cam: CameraModel, header: Any = None) -> Any:
    """Build a sensor_msgs/CameraInfo for ``cam`` (identity R, P = [K | 0])."""
    p = np.zeros((3, 4))
    p[:, :3] = cam.K
    fields = dict(
        height=cam.height,
        width=cam.width,
        distortion_model=cam.distortion_model,
        d=np.asarray(cam.distortion or (0.0,) * 5, dtype=np.float64),
        k=cam.K.reshape(-1),
        r=np.eye(3).reshape(-1),
        p=p.reshape(-1),
    )
    if header is not None:
        fields["header"] = header
    return make("sensor_msgs/msg/CameraInfo", **fields)
