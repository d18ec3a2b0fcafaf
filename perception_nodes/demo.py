"""``perception-nodes demo``: the main job on the embedded default, with no robot and no downloads.

1. make a small MuJoCo tabletop bag with ground truth (or reuse ``--bag``);
2. replay it through the perception pipeline (``config/demo.yaml``: every node this installation has);
3. write the output bag, a PNG contact sheet of what the nodes published, and metrics JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from perception_nodes.eval import draw
from perception_nodes.nodes import build_nodes
from perception_nodes.runtime.bag import BagReader
from perception_nodes.runtime.convert import depth_to_metres, image_to_numpy, to_rgb
from perception_nodes.runtime.pipeline import load_pipeline, parse_pipeline
from perception_nodes.runtime.replay import ReplayRunner

log = logging.getLogger("perception_nodes.demo")
PACKAGE_DIR = Path(__file__).resolve().parent
IMAGE = "/camera/color/image_raw"
SEGMENTS = "/perception/segments"
TRACKS = "/perception/tracks"
FORECAST = "/perception/forecast"
DEPTH = "/camera/aligned_depth_to_color/image_raw"
GT_INSTANCES = "/sim/ground_truth/instances"


def make_bag(path: Path, frames: int, seed: int) -> Path:
    """The embedded default: a sim episode bag (MuJoCo), generated once and reused."""
    if path.exists():
        return path
    sim = importlib.import_module("perception_nodes.sim")
    sim.demo_bag(path, frames=frames, seed=seed)
    return path


def available_pipeline(path: Path):
    """The demo pipeline without nodes whose capability this installation lacks (logged)."""
    pipeline = load_pipeline(path)
    from perception_nodes.nodes import node_class

    kept = []
    for spec in pipeline.nodes:
        try:
            node_class(spec.type)
        except ModuleNotFoundError as exc:
            log.warning("demo: skipping node %s (%s)", spec.name, exc)
            continue
        kept.append({"type": spec.type, "name": spec.name, "params": spec.params})
    return parse_pipeline({"nodes": kept, "passthrough": list(pipeline.passthrough)}, str(path))


def replay(bag: Path, out_bag: Path, pipeline_path: Path) -> dict:
    pipeline = available_pipeline(pipeline_path)
    runner = ReplayRunner(bag, out_bag, passthrough=pipeline.passthrough, overwrite=True)
    build_nodes(runner, pipeline)
    total = runner.reader.count(set(runner.subscriptions) | set(pipeline.passthrough))
    with tqdm(total=total, unit="msg", desc="demo replay") as bar:
        stats = runner.run(progress=bar.update)
    return {
        "input_messages": stats.input_messages,
        "wall_s": round(stats.wall_s, 3),
        "messages_per_s": round(stats.rate_hz, 1),
        "outputs": stats.output_counts,
        "nodes": [spec.name for spec in pipeline.nodes],
    }


def _by_stamp(reader: BagReader, topic: str) -> dict[int, object]:
    return {t: m for _, _, t, m in reader.messages([topic])}


def segmentation_metrics(out_bag: Path, in_bag: Path) -> dict | None:
    """EISEN's official metric on the demo episode: per image, Hungarian-matched IoU of each true object."""
    from perception_nodes.segmentation.eval import image_miou

    with BagReader(in_bag) as reader:
        truth = _by_stamp(reader, GT_INSTANCES)
    with BagReader(out_bag) as reader:
        segments = _by_stamp(reader, SEGMENTS)
    scores = [
        image_miou(image_to_numpy(msg.labels), image_to_numpy(truth[stamp]))
        for stamp, msg in segments.items()
        if stamp in truth
    ]
    return {"images": len(scores), "miou": round(float(np.mean(scores)), 4)} if scores else None


def contact_sheet(out_bag: Path, in_bag: Path, png: Path, columns: int = 4) -> Path:
    """RGB | depth | true instances | segments | tracks + forecast for a few frames over the episode."""
    with BagReader(in_bag) as reader:
        depths = _by_stamp(reader, DEPTH)
        truth = _by_stamp(reader, GT_INSTANCES)
    with BagReader(out_bag) as reader:
        images = _by_stamp(reader, IMAGE)
        segments = _by_stamp(reader, SEGMENTS)
        tracks = _by_stamp(reader, TRACKS)
        forecasts = _by_stamp(reader, FORECAST)
    stamps = sorted(images)
    picks = [stamps[i] for i in np.linspace(0, len(stamps) - 1, min(columns, len(stamps))).astype(int)]
    rows = []
    for stamp in picks:
        rgb = to_rgb(images[stamp])
        row = [draw.caption(rgb, f"t={(stamp - stamps[0]) / 1e9:.2f}s")]
        if stamp in depths:
            row.append(draw.caption(draw.colorize_depth(depth_to_metres(depths[stamp])), "depth"))
        if stamp in truth:
            row.append(draw.caption(draw.overlay_labels(rgb, image_to_numpy(truth[stamp])), "true objects"))
        if stamp in segments:
            row.append(
                draw.caption(draw.overlay_labels(rgb, image_to_numpy(segments[stamp].labels)), "segments")
            )
        if stamp in tracks or stamp in forecasts:
            row.append(
                draw.caption(_draw_motion(rgb, tracks.get(stamp), forecasts.get(stamp)), "tracks+forecast")
            )
        rows.append(row)
    return draw.save_png(png, draw.contact_sheet(rows))


def _draw_motion(rgb: np.ndarray, tracks, forecast) -> np.ndarray:
    out = rgb
    if tracks is not None and tracks.num_points:
        pts = np.asarray(tracks.points, np.float32).reshape(tracks.num_points, tracks.num_steps, 2)
        vis = np.asarray(tracks.visible).reshape(tracks.num_points, tracks.num_steps)
        out = draw.draw_tracks(out, pts, vis)
    if forecast is not None and forecast.num_points:
        k, n, h = forecast.num_samples, forecast.num_points, forecast.horizon
        samples = np.asarray(forecast.samples, np.float32).reshape(k, n, h, 2)
        query = np.asarray(forecast.query_points, np.float32).reshape(n, 2)
        out = draw.draw_forecast(out, samples, query)
    return out


def run(args: argparse.Namespace) -> dict:
    """Run the demo; returns the metrics (also written to ``OUT/metrics.json``) with output paths."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bag = make_bag(Path(args.bag) if args.bag else out / "sim_episode", args.frames, args.seed)
    pipeline_path = Path(args.pipeline) if args.pipeline else PACKAGE_DIR / "config" / "demo.yaml"
    metrics = {"bag": str(bag), "replay": replay(bag, out / "perception", pipeline_path)}
    if (seg := segmentation_metrics(out / "perception", bag)) is not None:
        metrics["segmentation"] = seg
    png = contact_sheet(out / "perception", bag, out / "demo.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return {
        **metrics,
        "paths": {"bag": str(out / "perception"), "png": str(png), "metrics": str(out / "metrics.json")},
    }
