"""Synthetic camera bags for tests and benchmarks: moving gradient frames with camera_info.

Frames are deterministic functions of the frame index, so a test can check every pixel after a replay.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from perception_nodes.runtime.convert import camera_to_info, numpy_to_image
from perception_nodes.runtime.typestore import make, typestore
from perception_nodes.types import CameraModel

IMAGE_TOPIC = "/camera/color/image_raw"
INFO_TOPIC = "/camera/color/camera_info"


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: a diagonal gradient shifted by ``index`` pixels, channel-distinct."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = (xs + 2 * ys + 3 * index).astype(np.uint16)
    return np.stack([base % 256, (base // 2 + 85) % 256, (255 - base % 256)], axis=-1).astype(np.uint8)


def write_camera_bag(
    path: str | Path,
    frames: int,
    width: int = 640,
    height: int = 480,
    rate_hz: float = 30.0,
    storage: str = "mcap",
    distro: str = "jazzy",
    info_size: tuple[int, int] | None = None,
    encoding: str = "rgb8",
    start_ns: int = 1_700_000_000_000_000_000,
) -> list[int]:
    """Write ``frames`` images + camera_info to a rosbag2; returns the stamps (ns).

    ``storage`` is "mcap" or "sqlite3"; ``info_size`` overrides camera_info's (width, height) to make
    deliberately inconsistent bags.
    """
    store = typestore(distro)
    mk = functools.partial(make, store)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    info_w, info_h = info_size or (width, height)
    camera = CameraModel(info_w, info_h, 0.8 * info_w, 0.8 * info_w, (info_w - 1) / 2, (info_h - 1) / 2)
    stamps = [start_ns + int(i * 1e9 / rate_hz) for i in range(frames)]
    with Writer(Path(path), version=8 if distro == "humble" else 9, storage_plugin=plugin) as writer:
        img_conn = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        info_conn = writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=store)
        for i, stamp in enumerate(stamps):
            header = mk("std_msgs/msg/Header", stamp=_time(mk, stamp), frame_id="camera_color_optical_frame")
            rgb = synthetic_frame(i, width, height)
            image = _encode(rgb, encoding)
            msg = numpy_to_image(mk, image, encoding, header)
            info = camera_to_info(mk, camera, header)
            writer.write(info_conn, stamp, store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            writer.write(img_conn, stamp, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return stamps


def _time(mk, stamp: int):
    return mk("builtin_interfaces/msg/Time", sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)


def _encode(rgb: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[..., ::-1])
    if encoding == "mono8":
        return np.ascontiguousarray(rgb[..., 0])
    raise ValueError(f"synthetic bags support rgb8, bgr8 and mono8, not {encoding!r}")
