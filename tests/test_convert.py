"""Image / CameraInfo conversions for every encoding, padded rows, endianness and bad input."""

import functools
import sys

import numpy as np
import pytest

from perception_nodes.runtime.convert import (
    ConversionError,
    camera_from_info,
    camera_to_info,
    compressed_to_numpy,
    depth_to_metres,
    image_to_numpy,
    numpy_to_compressed,
    numpy_to_image,
    to_rgb,
)
from perception_nodes.runtime.typestore import make, typestore
from perception_nodes.types import CameraModel, Frame

STORE = typestore()
MK = functools.partial(make, STORE)
RNG = np.random.default_rng(1)

CASES = {
    "rgb8": RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8),
    "bgr8": RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8),
    "rgba8": RNG.integers(0, 256, (7, 5, 4), dtype=np.uint8),
    "bgra8": RNG.integers(0, 256, (7, 5, 4), dtype=np.uint8),
    "mono8": RNG.integers(0, 256, (7, 5), dtype=np.uint8),
    "mono16": RNG.integers(0, 65536, (7, 5), dtype=np.uint16),
    "16UC1": RNG.integers(0, 65536, (7, 5), dtype=np.uint16),
    "32FC1": RNG.normal(size=(7, 5)).astype(np.float32),
}


def _cdr(msg):
    """Through real CDR bytes, as a bag or DDS would carry it."""
    return STORE.deserialize_cdr(STORE.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)


@pytest.mark.parametrize("encoding", CASES)
def test_round_trip_every_encoding(encoding):
    arr = CASES[encoding]
    msg = _cdr(numpy_to_image(MK, arr, encoding))
    assert (msg.height, msg.width, msg.encoding) == (7, 5, encoding)
    np.testing.assert_array_equal(image_to_numpy(msg), arr)


def _padded(arr, encoding, pad, bigendian=False):
    """An Image whose rows carry ``pad`` junk bytes after the pixels (step > width * bytes)."""
    data = (
        arr.astype(arr.dtype.newbyteorder(">" if bigendian else "<")).view(np.uint8).reshape(arr.shape[0], -1)
    )
    junk = np.full((arr.shape[0], pad), 0xAB, np.uint8)
    rows = np.concatenate([data, junk], axis=1)
    return MK(
        "sensor_msgs/msg/Image",
        height=arr.shape[0],
        width=arr.shape[1],
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1],
        data=rows.reshape(-1),
    )


@pytest.mark.parametrize("encoding", CASES)
def test_padded_step(encoding):
    arr = CASES[encoding]
    np.testing.assert_array_equal(image_to_numpy(_cdr(_padded(arr, encoding, pad=6))), arr)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian(encoding):
    arr = CASES[encoding]
    np.testing.assert_array_equal(image_to_numpy(_padded(arr, encoding, pad=0, bigendian=True)), arr)
    assert numpy_to_image(MK, arr, encoding).is_bigendian == int(sys.byteorder == "big")


def test_depth_units():
    mm = np.array([[0, 1000], [1500, 65535]], np.uint16)
    np.testing.assert_allclose(depth_to_metres(numpy_to_image(MK, mm, "16UC1")), mm / 1000.0, rtol=1e-6)
    m = np.array([[0.5, np.nan]], np.float32)
    np.testing.assert_array_equal(depth_to_metres(numpy_to_image(MK, m, "32FC1")), m)
    with pytest.raises(ConversionError, match="not a depth encoding"):
        depth_to_metres(numpy_to_image(MK, CASES["rgb8"], "rgb8"))


def test_to_rgb_channel_order():
    rgb = CASES["rgb8"]
    np.testing.assert_array_equal(to_rgb(numpy_to_image(MK, rgb[..., ::-1].copy(), "bgr8")), rgb)
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb(numpy_to_image(MK, rgba, "rgba8")), rgb)
    bgra = np.concatenate([rgb[..., ::-1], rgba[..., 3:]], axis=2)
    np.testing.assert_array_equal(to_rgb(numpy_to_image(MK, bgra, "bgra8")), rgb)
    gray = to_rgb(numpy_to_image(MK, CASES["mono8"], "mono8"))
    assert gray.shape == (7, 5, 3) and (gray[..., 0] == CASES["mono8"]).all()


def test_unsupported_encoding_is_named():
    msg = MK(
        "sensor_msgs/msg/Image", height=2, width=2, encoding="yuv422", step=4, data=np.zeros(8, np.uint8)
    )
    with pytest.raises(ConversionError, match="'yuv422'"):
        image_to_numpy(msg)


def test_short_data_and_step_are_rejected():
    msg = numpy_to_image(MK, CASES["rgb8"], "rgb8")
    msg.data = msg.data[:-1]
    with pytest.raises(ConversionError, match="expected step\\*height"):
        image_to_numpy(msg)
    msg = numpy_to_image(MK, CASES["rgb8"], "rgb8")
    msg.step = 3
    with pytest.raises(ConversionError, match="step 3"):
        image_to_numpy(msg)


def test_wrong_dtype_or_channels_for_encoding():
    with pytest.raises(ConversionError, match="needs dtype"):
        numpy_to_image(MK, CASES["rgb8"].astype(np.float32), "rgb8")
    with pytest.raises(ConversionError, match="channel"):
        numpy_to_image(MK, CASES["mono8"], "rgb8")


def test_compressed_round_trip():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[8:24, 10:30] = (200, 40, 10)
    png = _cdr(numpy_to_compressed(MK, rgb, "png"))
    np.testing.assert_array_equal(compressed_to_numpy(png), rgb)
    jpeg = numpy_to_compressed(MK, rgb, "jpeg")
    assert jpeg.format == "jpeg"
    assert np.abs(compressed_to_numpy(jpeg).astype(int) - rgb).mean() < 4
    with pytest.raises(ConversionError, match="cannot decode"):
        compressed_to_numpy(MK("sensor_msgs/msg/CompressedImage", format="jpeg", data=np.ones(10, np.uint8)))


def test_camera_info_round_trip_and_geometry():
    cam = CameraModel(640, 480, 525.0, 520.0, 319.5, 239.5, distortion=(0.1, -0.2, 0.0, 0.0, 0.01))
    back = camera_from_info(_cdr(camera_to_info(MK, cam)))
    assert back == cam
    pts = np.array([[0.1, -0.2, 1.5], [-0.3, 0.25, 0.8]])
    px = cam.project(pts)
    np.testing.assert_allclose(cam.backproject(px, pts[:, 2]), pts, atol=1e-12)
    half = cam.scaled(320, 240)
    np.testing.assert_allclose(half.project(pts), (px + 0.5) / 2 - 0.5, atol=1e-9)


def test_camera_size_mismatch_and_bad_intrinsics():
    cam = CameraModel(640, 480, 500, 500, 320, 240)
    with pytest.raises(ConversionError, match="camera_info is 640x480 but the image is 320x240"):
        cam.check_image(240, 320)
    with pytest.raises(ConversionError, match="focal"):
        CameraModel(640, 480, 0, 500, 320, 240)
    with pytest.raises(ConversionError, match="the image is 4x4"):
        Frame(0, np.zeros((4, 4, 3), np.uint8), camera=cam)
    with pytest.raises(ConversionError, match="does not match"):
        Frame(0, np.zeros((4, 4, 3), np.uint8), depth=np.zeros((4, 5), np.float32))
