"""The CLI's info and demo commands on real bags."""

import importlib.util
import json

import cv2
import numpy as np
import pytest

from perception_nodes.cli import main
from perception_nodes.runtime.testing import write_camera_bag


def test_info_lists_topics_counts_rates(tmp_path, capsys):
    bag = tmp_path / "bag"
    write_camera_bag(bag, 31, 32, 24, rate_hz=15.0)
    assert main(["info", str(bag)]) == 0
    out = capsys.readouterr().out
    assert "duration: 2.000 s" in out and "messages: 62" in out
    line = next(row for row in out.splitlines() if row.startswith("/camera/color/image_raw"))
    assert line.split()[1:] == ["sensor_msgs/msg/Image", "31", "15.00"]


def test_info_on_missing_bag_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bag not found" in err[0]


def test_demo_writes_bag_picture_metrics(tmp_path, capsys):
    if importlib.util.find_spec("mujoco") is None:  # not imported here: the sim picks the GL backend first
        pytest.skip("mujoco is not installed")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "6"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    outputs = metrics["replay"]["outputs"]
    assert outputs["/perception/identity/image"] == 6
    assert (
        outputs["/perception/segments"]
        == outputs["/perception/tracks"]
        == outputs["/perception/forecast"]
        == 6
    )
    assert metrics["segmentation"]["images"] == 6 and 0.0 < metrics["segmentation"]["miou"] <= 1.0
    sheet = cv2.imread(str(out / "demo.png"))
    assert sheet is not None and sheet.shape[0] > 100 and sheet.std() > 10  # a real picture, not blank
    assert "png" in capsys.readouterr().out


def test_eval_forecasting_stops_the_flow_where_told(tmp_path, capsys):
    """``--t-end`` reaches the sampler: stopping the Euler integration at t = 0.5 leaves half of each step's
    noise in the forecast, so it lands farther from the truth than the default stop."""
    runs = {}
    for name, extra in (("default", []), ("half", ["--t-end", "0.5", "--warm-t", "0.3"])):
        out = tmp_path / name
        argv = ["eval", "forecasting", "--synthetic", "2", "--sim-frames", "30", "--threads", "1"]
        assert main([*argv, "--out", str(out), *extra]) == 0
        runs[name] = json.loads((out / "forecast_eval.json").read_text())
    capsys.readouterr()
    assert runs["default"]["sampling"]["t_end"] == 1.0
    assert runs["half"]["sampling"]["t_end"] == 0.5
    assert runs["half"]["arfm"]["min_ade"] > 1.2 * runs["default"]["arfm"]["min_ade"]


def test_eval_forecasting_from_tracker_histories(tmp_path, capsys):
    """``--tracker-histories`` feeds the forecaster our LK tracker's histories: on textured synthetic clips
    they sit on the true positions (a half-pixel slip in the frame conventions would read about 0.5 px),
    few points are dropped, and every forecaster is still scored."""
    out = tmp_path / "lk"
    argv = ["eval", "forecasting", "--synthetic", "2", "--sim-frames", "30", "--threads", "1"]
    assert main([*argv, "--out", str(out), "--tracker-histories"]) == 0
    assert "median error" in capsys.readouterr().out
    summary = json.loads((out / "forecast_eval.json").read_text())
    assert summary["tracker_histories"] is True
    assert summary["history_error_px"] < 0.2
    assert summary["tracks_dropped"] < 0.2
    for name in ("arfm", "constant_velocity", "static"):
        assert 0 < summary[name]["min_ade"] < 50


def test_tracker_histories_need_full_frames():
    from perception_nodes.forecasting.eval import tracked_history
    from perception_nodes.forecasting.processor import lighten
    from perception_nodes.tracking.synthetic import make_clip

    episode = lighten(make_clip(0, num_frames=10), 128)  # frames resized only: full_rgb is None
    with pytest.raises(ValueError, match="full-resolution"):
        tracked_history(episode, 7, np.zeros((4, 8, 2), np.float32), 256)


def test_eval_forecasting_on_clips_too_short_for_a_window_is_one_clear_error(tmp_path, capsys):
    argv = ["eval", "forecasting", "--synthetic", "1", "--sim-frames", "20", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "short")]) == 2  # 8 observed + 15 future > 20 frames
    err = capsys.readouterr().err
    assert "no window to score" in err and "23 frames" in err and "[20]" in err
