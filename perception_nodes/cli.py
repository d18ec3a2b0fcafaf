"""``perception-nodes``: one command with subcommands (info, replay, demo, sim, train, eval, export, bench).

Errors the user can fix (bad bag, bad arguments, bad config) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

# Subcommands implemented next to their capability: name -> (module, add_arguments, run, help).
_PLUGINS: dict[str, tuple[str, str, str, str]] = {
    "sim": (
        "perception_nodes.sim.cli",
        "add_arguments",
        "run",
        "generate MuJoCo tabletop episodes as bags",
    ),
    "export": (
        "perception_nodes.inference.cli",
        "add_export_arguments",
        "run_export",
        "export a model to ONNX",
    ),
    "bench": (
        "perception_nodes.inference.cli",
        "add_bench_arguments",
        "run_bench",
        "benchmark models per backend",
    ),
}
# train/eval dispatch on a capability: name -> module with add_{train,eval}_arguments and run_{train,eval}.
_CAPABILITIES: dict[str, str] = {
    "segmentation": "perception_nodes.segmentation.cli",
    "forecasting": "perception_nodes.forecasting.cli",
    "tracking": "perception_nodes.tracking.cli",
}

PACKAGE_DIR = Path(__file__).resolve().parent


class UserError(Exception):
    """An error message for the user (one line, non-zero exit)."""


def cmd_info(args: argparse.Namespace) -> int:
    from perception_nodes.runtime.bag import BagReader

    with BagReader(args.bag) as reader:
        rows = reader.summary()
        duration = (reader.end_ns - reader.start_ns) / 1e9 if rows else 0.0
    print(f"bag: {args.bag}\nduration: {duration:.3f} s\nmessages: {sum(r.count for r in rows)}")
    width = max((len(r.topic) for r in rows), default=5)
    print(f"{'topic':<{width}}  {'type':<40} {'count':>7} {'rate_hz':>8}")
    for r in rows:
        print(f"{r.topic:<{width}}  {r.typename:<40} {r.count:>7} {r.rate_hz:>8.2f}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from perception_nodes.nodes import build_nodes
    from perception_nodes.runtime.pipeline import load_pipeline
    from perception_nodes.runtime.replay import ReplayRunner

    pipeline = load_pipeline(args.pipeline)
    runner = ReplayRunner(
        args.bag,
        args.out,
        distro=args.distro,
        passthrough=pipeline.passthrough,
        realtime=args.realtime,
        strict=not args.keep_going,
        overwrite=args.overwrite,
    )
    build_nodes(runner, pipeline)
    total = runner.reader.count(set(runner.subscriptions) | set(pipeline.passthrough))
    with tqdm(total=total, unit="msg", desc="replay", disable=args.quiet) as bar:
        stats = runner.run(progress=bar.update)
    print(f"replayed {stats.input_messages} messages in {stats.wall_s:.2f} s ({stats.rate_hz:.1f} msg/s)")
    for topic, count in sorted(stats.output_counts.items()):
        print(f"  {topic}: {count}")
    if stats.errors:
        print(f"{stats.errors} message(s) failed (see log)")
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import json

    demo = importlib.import_module("perception_nodes.demo")
    result = demo.run(args)
    for name, path in result.pop("paths").items():
        print(f"{name:>8}: {path}")
    print(json.dumps(result, indent=2))
    return 0


def _add_plugin(sub: argparse._SubParsersAction, name: str) -> None:
    module, add, run, help_text = _PLUGINS[name]
    parser = sub.add_parser(name, help=help_text)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        parser.set_defaults(func=_unavailable(name, exc))
        return
    getattr(mod, add)(parser)
    parser.set_defaults(func=getattr(mod, run))


def _add_capability_commands(sub: argparse._SubParsersAction, verb: str) -> None:
    parser = sub.add_parser(verb, help=f"{verb} a model ({', '.join(_CAPABILITIES)})")
    caps = parser.add_subparsers(dest="capability", required=True)
    for cap, module in _CAPABILITIES.items():
        cap_parser = caps.add_parser(cap)
        try:
            mod = importlib.import_module(module)
            add, run = getattr(mod, f"add_{verb}_arguments"), getattr(mod, f"run_{verb}")
        except (ModuleNotFoundError, AttributeError) as exc:
            cap_parser.set_defaults(func=_unavailable(f"{verb} {cap}", exc))
            continue
        add(cap_parser)
        cap_parser.set_defaults(func=run)


def _unavailable(name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        raise UserError(f"'{name}' is not available in this installation ({exc})")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perception-nodes", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="topics, types, counts, rates and duration of a bag")
    info.add_argument("bag", help="rosbag2 folder or .mcap/.db3 file")
    info.set_defaults(func=cmd_info)

    replay = sub.add_parser("replay", help="run a pipeline of nodes over a bag, write an output bag")
    replay.add_argument("bag", help="input rosbag2 (MCAP or sqlite3)")
    replay.add_argument(
        "--pipeline", default=str(PACKAGE_DIR / "config" / "identity.yaml"), help="pipeline YAML"
    )
    replay.add_argument("--out", required=True, help="output bag folder (MCAP), written atomically")
    replay.add_argument(
        "--distro", default="jazzy", choices=["jazzy", "humble"], help="typestore for standard types"
    )
    replay.add_argument(
        "--realtime", type=float, default=0.0, help="pace at this multiple of real time (0 = fast)"
    )
    replay.add_argument("--keep-going", action="store_true", help="log failing messages and continue")
    replay.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=cmd_replay)

    demo = sub.add_parser("demo", help="sim bag -> perception pipeline -> output bag, pictures, metrics")
    demo.add_argument("--out", default="demo_out", help="output folder")
    demo.add_argument("--frames", type=int, default=24, help="frames of the generated sim episode")
    demo.add_argument("--seed", type=int, default=0, help="scene seed")
    demo.add_argument("--bag", help="use this bag instead of generating a sim episode")
    demo.add_argument("--pipeline", help="pipeline YAML (default: config/demo.yaml)")
    demo.set_defaults(func=cmd_demo)

    for name in _PLUGINS:
        _add_plugin(sub, name)
    for verb in ("train", "eval"):
        _add_capability_commands(sub, verb)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from perception_nodes.runtime.bag import BagError
    from perception_nodes.runtime.replay import ReplayError
    from perception_nodes.sim.errors import SimError
    from perception_nodes.types import ConversionError

    try:
        return int(args.func(args) or 0)
    except (
        UserError,
        BagError,
        ReplayError,
        SimError,
        ConversionError,
        ValueError,
        FileNotFoundError,
    ) as exc:
        print(f"perception-nodes {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early, e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
