"""torch -> ONNX export with the checks our TensorRT targets need.

``export_onnx`` writes the graph atomically with the card's stable input/output names (TorchScript exporter,
opset 17 by default; ``exporter="dynamo"`` for the torch.export-based one) and then ``check_onnx`` verifies
it: ``onnx.checker`` (full check), opset within [17, TensorRT max], static shapes on every graph input and
output and no symbolic dimension anywhere after shape inference, I/O names/shapes/dtypes equal to the card,
and only operators from onnx-tensorrt's support list (``trt_ops``) plus a few documented attribute limits.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from perception_nodes.inference import trt_ops
from perception_nodes.inference.card import ModelCard, TensorSpec
from perception_nodes.inference.errors import BackendUnavailableError, ExportError

log = logging.getLogger(__name__)

MIN_OPSET = 17
DEFAULT_OPSET = 17
_ONNX_TO_DTYPE = {
    "FLOAT": "float32",
    "FLOAT16": "float16",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailableError(f"the onnx package is not importable ({exc}); export needs it") from exc
    return onnx


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass
class OnnxReport:
    """What check_onnx found: ``problems`` break the contract, ``notes`` are informational."""

    opset: int
    ops: dict[str, int]
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self, what: str) -> None:
        if self.problems:
            lines = "\n  - ".join(self.problems)
            raise ExportError(f"{what} breaks the export contract:\n  - {lines}")


def export_onnx(
    module: Any,
    card: ModelCard,
    example_inputs: Mapping[str, np.ndarray],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    simplify: bool = False,
    exporter: str = "auto",
    check: bool = True,
) -> OnnxReport:
    """Export ``module`` (CPU, fp32, eval) to ``path`` atomically; return the check report.

    Raises ExportError when the export fails or (with check=True) the graph breaks the contract; the file
    is then not written.
    """
    import torch

    onnx = _import_onnx()
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below the minimum {MIN_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example_inputs[n])) for n in card.input_names)
    module = module.eval().to("cpu", torch.float32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _torch_export(module, args, tmp, card, opset, exporter)
        model = onnx.load(tmp)
        if simplify:
            model = simplify_model(model)
            onnx.save(model, tmp)
        report = check_onnx(model, card)
        if check:
            report.raise_if_failed(f"ONNX graph of model '{card.name}'")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info(
        "exported model '%s' to %s (opset %d, %d nodes)",
        card.name,
        path,
        report.opset,
        sum(report.ops.values()),
    )
    return report


def _torch_export(module: Any, args: tuple, out: str, card: ModelCard, opset: int, exporter: str) -> None:
    """TorchScript exporter (exact opset, fast); "auto" falls back to the dynamo exporter when it fails."""
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ExportError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    if exporter != "auto":
        _run_exporter(module, args, out, card, opset, exporter)
        return
    try:
        _run_exporter(module, args, out, card, opset, "torchscript")
    except ExportError as exc:
        log.warning("%s; retrying with the dynamo exporter", exc)
        _run_exporter(module, args, out, card, opset, "dynamo")


def _run_exporter(module: Any, args: tuple, out: str, card: ModelCard, opset: int, exporter: str) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                out,
                input_names=card.input_names,
                output_names=card.output_names,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=exporter == "dynamo",
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(
                f"torch.onnx.export ({exporter}) failed for model '{card.name}': {exc}"
            ) from exc


def simplify_model(model: Any) -> Any:
    """Constant folding and dead-code removal: onnxsim when installed, else onnxscript's optimizer."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if ok:
            return simplified
        log.warning("onnxsim could not validate its simplification; trying onnxscript's optimizer")
    except ImportError:
        pass
    try:
        import onnxscript.optimizer
    except ImportError as exc:
        raise ExportError("simplification needs onnxsim or onnxscript; neither is importable") from exc
    return onnxscript.optimizer.optimize(model)


def _iter_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph, including nodes of subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _iter_nodes(attr.g)
            for sub in attr.graphs:
                yield from _iter_nodes(sub)


def _tensor_spec(value_info: Any) -> tuple[list[Any], str]:
    """(dims, dtype name) of a graph input/output: dims are ints, or strings for symbolic/unknown ones."""
    import onnx

    ttype = value_info.type.tensor_type
    dims = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims, onnx.TensorProto.DataType.Name(ttype.elem_type)


def _check_io(graph: Any, card: ModelCard | None, problems: list[str]) -> None:
    for kind, values, specs in (
        ("input", graph.input, card.inputs if card else None),
        ("output", graph.output, card.outputs if card else None),
    ):
        initializers = {i.name for i in graph.initializer}
        values = [v for v in values if v.name not in initializers]
        for value in values:
            dims, elem = _tensor_spec(value)
            if any(not isinstance(d, int) for d in dims) or not value.type.tensor_type.HasField("shape"):
                problems.append(f"graph {kind} '{value.name}' has a non-static shape {dims}")
            if elem not in trt_ops.TRT_IO_TYPES:
                problems.append(f"graph {kind} '{value.name}' has type {elem}, not a TensorRT I/O type")
        if specs is not None:
            _compare_with_card(kind, values, specs, problems)


def _compare_with_card(
    kind: str, values: list[Any], specs: tuple[TensorSpec, ...], problems: list[str]
) -> None:
    names = [v.name for v in values]
    expected = [s.name for s in specs]
    if names != expected:
        hint = " (an input the network never uses is dropped by the exporter)" if kind == "input" else ""
        problems.append(f"graph {kind}s are {names}, the card says {expected}{hint}")
        return
    for value, spec in zip(values, specs, strict=True):
        dims, elem = _tensor_spec(value)
        dtype = _ONNX_TO_DTYPE.get(elem, elem)
        if tuple(dims) != spec.shape or dtype != spec.dtype:
            found, said = f"{tuple(dims)} {dtype}", f"{spec.shape} {spec.dtype}"
            problems.append(f"graph {kind} '{spec.name}' is {found}, the card says {said}")


def _check_symbolic_dims(model: Any, problems: list[str]) -> None:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # shape inference is best effort; the checker already ran
        problems.append(f"ONNX shape inference failed: {exc}")
        return
    dynamic = []
    for value in inferred.graph.value_info:
        dims, _ = _tensor_spec(value)
        if any(isinstance(d, str) and d != "?" for d in dims):
            dynamic.append(f"{value.name} {dims}")
    if dynamic:
        shown = ", ".join(dynamic[:5]) + (f" and {len(dynamic) - 5} more" if len(dynamic) > 5 else "")
        problems.append(f"intermediate tensors with data-dependent (symbolic) shapes: {shown}")


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _check_node(node: Any, constants: dict[str, np.ndarray], problems: list[str]) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        problems.append(
            f"node '{node.name}' is {node.domain}::{op}, a custom op that needs a TensorRT plugin"
        )
        return
    if op in trt_ops.PROJECT_FORBIDDEN:
        problems.append(f"node '{node.name}' is {op}: {trt_ops.PROJECT_FORBIDDEN[op]}")
    elif op not in trt_ops.TRT_SUPPORTED_OPS:
        why = (
            "documented as unsupported" if op in trt_ops.TRT_UNSUPPORTED_OPS else "not in the supported list"
        )
        problems.append(f"node '{node.name}' is {op}: {why} by onnx-tensorrt (TensorRT 10)")
    elif op == "Resize":
        _check_resize(node, problems)
    elif op == "MaxPool" and len([o for o in node.output if o]) > 1:
        problems.append(f"node '{node.name}' is MaxPool with an Indices output, unsupported by TensorRT")
    elif op == "TopK":
        k = constants.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            problems.append(f"node '{node.name}' is TopK with a K that is not a constant")
        elif int(np.asarray(k).reshape(-1)[0]) > trt_ops.TOPK_MAX_K:
            problems.append(f"node '{node.name}' is TopK with K > {trt_ops.TOPK_MAX_K}")


def _check_resize(node: Any, problems: list[str]) -> None:
    mode = _attr(node, "mode", "nearest")
    coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    if mode not in trt_ops.RESIZE_MODES:
        problems.append(f"node '{node.name}' is Resize mode '{mode}'; TensorRT supports nearest and linear")
    if coord not in trt_ops.RESIZE_COORDINATE_MODES:
        problems.append(
            f"node '{node.name}' is Resize with coordinate mode '{coord}', unsupported by TensorRT"
        )
    if mode == "nearest" and nearest not in trt_ops.RESIZE_NEAREST_MODES:
        problems.append(
            f"node '{node.name}' is Resize with nearest mode '{nearest}', unsupported by TensorRT"
        )
    if _attr(node, "antialias", 0):
        problems.append(f"node '{node.name}' is Resize with antialiasing, unsupported by TensorRT")


def _constants(graph: Any) -> dict[str, np.ndarray]:
    import onnx.numpy_helper as nh

    found = {init.name: nh.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value")
            if value is not None and hasattr(value, "dims"):
                found[node.output[0]] = nh.to_array(value)
    return found


def check_onnx(model: Any, card: ModelCard | None = None) -> OnnxReport:
    """Check a ModelProto (or a path) against our TensorRT export contract; never raises for a bad graph."""
    onnx = _import_onnx()
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    problems: list[str] = []
    notes: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx.checker: {str(exc).strip().splitlines()[0]}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET <= opset <= trt_ops.TRT_MAX_OPSET:
        problems.append(
            f"opset {opset} is outside [{MIN_OPSET}, {trt_ops.TRT_MAX_OPSET}] (ours / TensorRT 10.0)"
        )
    _check_io(model.graph, card, problems)
    _check_symbolic_dims(model, problems)
    constants = _constants(model.graph)
    ops: collections.Counter[str] = collections.Counter()
    for node in _iter_nodes(model.graph):
        ops[node.op_type] += 1
        _check_node(node, constants, problems)
    if any(i.data_type == onnx.TensorProto.DOUBLE for i in model.graph.initializer):
        notes.append("float64 initializers: TensorRT casts them down to float32")
    return OnnxReport(opset=opset, ops=dict(ops), problems=problems, notes=notes)
