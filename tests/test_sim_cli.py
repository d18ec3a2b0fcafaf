"""``perception-nodes sim``: bags + preview, determinism across worker counts, bad input, missing OpenGL."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from perception_nodes.sim import SimConfig
from perception_nodes.sim.cli import add_arguments, run
from perception_nodes.sim.dataset import read_episodes


def _args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_sim_writes_bags_and_a_preview(tmp_path, capsys):
    out = tmp_path / "sim"
    args = _args(
        "--episodes",
        "2",
        "--frames",
        "4",
        "--size",
        "64x48",
        "--out",
        str(out),
        "--workers",
        "1",
        "--preview",
        "--tracks",
        "32",
        "--quiet",
    )
    assert run(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ep_00000", "ep_00001", "preview.png"]
    sheet = cv2.imread(str(out / "preview.png"))
    assert sheet.shape == (2 * 48 + 18, 7 * 64, 3)
    assert sheet[:96].std() > 10  # not a blank image
    assert "wrote 2 bag(s), 8 frames" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already exist"):
        run(args)


def test_parallel_workers_give_the_same_bags_as_one(tmp_path):
    common = ("--episodes", "2", "--frames", "3", "--size", "64x48", "--tracks", "16", "--quiet")
    assert run(_args(*common, "--out", str(tmp_path / "one"), "--workers", "1")) == 0
    assert run(_args(*common, "--out", str(tmp_path / "two"), "--workers", "2")) == 0
    for a, b in zip(read_episodes(tmp_path / "one"), read_episodes(tmp_path / "two"), strict=True):
        assert a.seed == b.seed
        for name, arr in a.arrays().items():
            assert np.array_equal(arr, b.arrays()[name], equal_nan=arr.dtype.kind == "f"), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_objects": 0}, "min_objects"),
        ({"width": 0}, "image size"),
        ({"frames": -3}, "frames"),
        ({"families": ("mug", "teapot")}, "teapot"),
        ({"fps": 0.0}, "fps"),
    ],
)
def test_impossible_configs_raise_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimConfig(**kwargs)


def test_perception_nodes_cli_prints_one_line_for_bad_arguments(tmp_path, capsys):
    from perception_nodes.cli import main

    assert main(["sim", "--size", "0x48", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "image size" in err and len(err.splitlines()) == 1
    assert main(["sim", "--objects", "0", "0", "--out", str(tmp_path)]) == 2
    assert "min_objects" in capsys.readouterr().err


@pytest.mark.parametrize(
    "env", [{"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "egl"}, {"MUJOCO_GL": "nonsense"}]
)
def test_missing_opengl_backend_says_what_to_install(tmp_path, env):
    cmd = [
        sys.executable,
        "-m",
        "perception_nodes.sim.cli",
        "--episodes",
        "1",
        "--frames",
        "2",
        "--size",
        "32x24",
        "--out",
        str(tmp_path / "x"),
        "--quiet",
    ]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "libosmesa6" in proc.stderr and "MUJOCO_GL" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_bag_is_small_and_readable(tmp_path):
    from perception_nodes.sim import demo_bag

    path = demo_bag(tmp_path / "demo", frames=3, size=(64, 48))
    (ep,) = list(read_episodes(path))
    assert ep.rgb.shape == (3, 48, 64, 3)
