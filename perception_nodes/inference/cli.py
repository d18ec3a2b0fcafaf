"""The ``export`` and ``bench`` subcommands (wired into perception_nodes/cli.py; also runnable on their own:
``python -m perception_nodes.inference.cli {export,bench} ...``). This is command-line code: it prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from perception_nodes.inference import registry
from perception_nodes.inference.errors import InferenceError
from perception_nodes.inference.registry import ExportSpec

log = logging.getLogger(__name__)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="registered model name, or 'all' for every registered model")
    parser.add_argument(
        "--onnx",
        type=Path,
        help="output .onnx file (a folder when MODEL is 'all'); a card .json is written next to it",
    )
    parser.add_argument(
        "--opset", type=int, default=17, help="ONNX opset (17..20; TensorRT 10.0 parses up to 20)"
    )
    parser.add_argument("--simplify", action="store_true", help="fold constants (onnxsim, else onnxscript)")
    parser.add_argument(
        "--exporter",
        choices=("auto", "torchscript", "dynamo"),
        default="auto",
        help="torch ONNX exporter (auto: TorchScript, then dynamo if that fails)",
    )
    parser.add_argument("--weights", type=Path, help=".safetensors weights to load before export (strict)")
    parser.add_argument(
        "--allow-unsupported",
        action="store_true",
        help="write the graph even if it breaks the TensorRT contract",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the onnxruntime-vs-torch parity check after export"
    )
    parser.add_argument("--list", action="store_true", help="list the registered models and exit")


def _parity(spec: ExportSpec, module, card, path: Path) -> str:
    """'max|Δ| ...' of onnxruntime vs torch on the example inputs (asserted in tolerance), or why not run."""
    from perception_nodes.inference.backends.ort_backend import OrtEngine
    from perception_nodes.inference.backends.torch_backend import TorchEngine
    from perception_nodes.inference.errors import BackendUnavailableError

    try:
        ort_engine = OrtEngine(card, path, provider="cpu")
    except BackendUnavailableError as exc:
        return f"parity not checked ({exc})"
    inputs = spec.example_inputs()
    expected = TorchEngine(card, module, device="cpu", verify=False).run(inputs)
    got = ort_engine.run(inputs)
    worst = 0.0
    for name in card.output_names:
        np.testing.assert_allclose(got[name], expected[name], rtol=spec.parity_rtol, atol=spec.parity_atol)
        worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - expected[name]), initial=0.0)))
    return f"parity with torch: max|Δ| {worst:.2e} (atol {spec.parity_atol:g}, rtol {spec.parity_rtol:g})"


def export_one(name: str, out: Path, args: argparse.Namespace) -> str:
    from perception_nodes.inference.loader import card_from_spec, load_weights
    from perception_nodes.inference.onnx_export import export_onnx

    spec = registry.get(name)
    module = spec.build().eval()
    weights = str(args.weights.resolve()) if args.weights else None
    if weights:
        load_weights(module, name, weights)
    card = card_from_spec(spec, module, weights=weights)
    report = export_onnx(
        module,
        card,
        spec.example_inputs(),
        out,
        opset=args.opset,
        simplify=args.simplify,
        exporter=args.exporter,
        check=not args.allow_unsupported,
    )
    card.with_(onnx=out.name).save(out.with_suffix(".json"))
    ops = ", ".join(f"{op}×{n}" for op, n in sorted(report.ops.items(), key=lambda kv: -kv[1])[:8])
    lines = [f"{name} -> {out} (opset {report.opset}, {sum(report.ops.values())} nodes: {ops})"]
    lines += [f"  problem: {p}" for p in report.problems] + [f"  note: {n}" for n in report.notes]
    if not args.no_verify:
        lines.append("  " + _parity(spec, module, card, out))
    return "\n".join(lines)


def run_export(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(registry.names()) or "no models registered")
        return 0
    if not args.model or args.onnx is None:
        print("export: give MODEL (or 'all') and --onnx OUT", file=sys.stderr)
        return 2
    names = registry.names() if args.model == "all" else [args.model]
    if not names:
        print("export: no models registered yet", file=sys.stderr)
        return 1
    failed = 0
    for name in names:
        out = args.onnx / f"{name}.onnx" if args.model == "all" else args.onnx
        try:
            print(export_one(name, out, args))
        except (InferenceError, AssertionError) as exc:
            failed += 1
            print(f"export of '{name}' failed: {exc}", file=sys.stderr)
    return 1 if failed else 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", help="registered model names (default: all)")
    parser.add_argument(
        "--backend",
        action="append",
        choices=("torch", "onnxruntime", "onnxruntime-trt", "tensorrt", "all"),
        help="backend to compare with the fp32 torch baseline (repeatable; default: all but onnxruntime-trt)",
    )
    parser.add_argument(
        "--device",
        action="append",
        choices=("cpu", "cuda", "auto"),
        help="repeatable; auto = cuda if present else cpu",
    )
    parser.add_argument(
        "--precision",
        action="append",
        choices=("fp32", "fp16", "bf16"),
        help="default: fp16 on CUDA, fp32 on CPU",
    )
    parser.add_argument("--no-cuda-graph", action="store_true", help="do not add the CUDA-graph torch rows")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before timing")
    parser.add_argument("--iters", type=int, default=50, help="timed runs per row (at most)")
    parser.add_argument(
        "--max-row-s", type=float, default=20.0, help="stop timing a row after this many seconds"
    )
    parser.add_argument(
        "--budget-s", type=float, help="skip the remaining rows after this many seconds in all"
    )
    parser.add_argument("--threads", type=int, help="torch and onnxruntime CPU threads")
    parser.add_argument("--cache-dir", help="engine/ONNX cache folder (default $PERCEPTION_NODES_CACHE)")
    parser.add_argument("--json", help="write the results as JSON to this file ('-' prints them)")
    parser.add_argument(
        "--skip-broken-providers",
        action="store_true",
        help="benchmark the models that load and report providers that fail to import (diagnostics only)",
    )


def _devices(asked: Sequence[str] | None) -> list[str]:
    import torch

    out = []
    for device in asked or ["auto"]:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in out:
            out.append(device)
    return out


def run_bench(args: argparse.Namespace, extra_specs: Sequence[ExportSpec] = ()) -> int:
    import torch

    from perception_nodes.inference import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.skip_broken_providers:
        found, errors = registry.discover_tolerant()
        for module, error in errors.items():
            print(f"bench: skipping provider {module}: {error}", file=sys.stderr)
    else:
        found = registry.discover()
    available = {**found, **{s.name: s for s in extra_specs}}
    unknown = [m for m in args.models if m not in available]
    if unknown:
        print(f"bench: unknown models {unknown}; known: {sorted(available)}", file=sys.stderr)
        return 2
    specs = [available[m] for m in args.models] if args.models else list(available.values())
    if not specs:
        print("bench: no models registered yet", file=sys.stderr)
        return 1
    backends = args.backend or ["all"]
    if "all" in backends:
        backends = ["torch", "onnxruntime", "tensorrt"]
    cfg = bench.BenchConfig(
        devices=_devices(args.device),
        backends=backends,
        precisions=args.precision,
        cuda_graph=not args.no_cuda_graph,
        warmup=args.warmup,
        iters=args.iters,
        max_row_s=args.max_row_s,
        budget_s=args.budget_s,
        cache_dir=args.cache_dir,
    )
    write = (lambda partial: bench.write_json(partial, args.json)) if args.json and args.json != "-" else None
    result = bench.run(specs, cfg, on_row=write)
    _print_table(bench.format_table(result))
    if args.json == "-":
        print(json.dumps(result, indent=2, default=str))
    elif args.json:
        bench.write_json(result, args.json)
        print(f"wrote {args.json}")
    return 1 if any(r["status"] == "error" for r in result["rows"]) else 0


def _print_table(table) -> None:
    try:
        from rich.console import Console
    except ImportError:
        print(table)
        return
    Console(width=200).print(table)


def main(argv: Sequence[str] | None = None, extra_specs: Sequence[ExportSpec] = ()) -> int:
    parser = argparse.ArgumentParser(prog="perception-nodes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_arguments(sub.add_parser("export", help="export registered models to ONNX"))
    add_bench_arguments(sub.add_parser("bench", help="benchmark models across backends"))
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "export":
        return run_export(args)
    return run_bench(args, extra_specs)


if __name__ == "__main__":
    sys.exit(main())
