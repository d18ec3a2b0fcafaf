"""Replay throughput and memory: N-frame 640x480 rgb8 bags through the identity node.

Prints frames/s for 100- and 300-frame bags (the goal is >= 150 frames/s on the 2-core machine) and the
peak RSS after each, which must not grow with bag length (messages stream; nothing is kept).
Baseline in the same process: reading the bag alone (deserialisation only), so the node + writer cost is
the difference.

    python bench/bench_replay.py [--frames 100 300 600]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from perception_nodes.nodes.identity import IdentityNode
from perception_nodes.runtime.bag import BagReader
from perception_nodes.runtime.replay import ReplayRunner
from perception_nodes.runtime.testing import IMAGE_TOPIC, write_camera_bag


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_only(bag: Path) -> float:
    start = time.perf_counter()
    with BagReader(bag) as reader:
        n = sum(1 for _ in reader.messages([IMAGE_TOPIC]))
    return n / (time.perf_counter() - start)


def replay(bag: Path, out: Path, passthrough: bool) -> float:
    runner = ReplayRunner(bag, out, passthrough=[IMAGE_TOPIC] if passthrough else [])
    IdentityNode(runner.bus("identity", {"camera_info_topic": "/camera/color/camera_info"}))
    stats = runner.run()
    frames = stats.output_counts["/perception/identity/image"]
    return frames / stats.wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 300, 600])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{'frames':>6} {'read-only fps':>14} {'replay fps':>11} {'+passthrough fps':>17}"
            f" {'peak RSS MB':>12}"
        )
        for n in args.frames:
            bag = Path(tmp) / f"in{n}"
            write_camera_bag(bag, n, 640, 480)
            base = read_only(bag)
            fps = replay(bag, Path(tmp) / f"out{n}", passthrough=False)
            fps_pt = replay(bag, Path(tmp) / f"outpt{n}", passthrough=True)
            print(f"{n:>6} {base:>14.1f} {fps:>11.1f} {fps_pt:>17.1f} {peak_rss_mb():>12.1f}")


if __name__ == "__main__":
    main()
