#!/usr/bin/env bash
# GPU check of the inference layer, for a machine with CUDA and torch already installed.
#
#   bench/gpu_check.sh [OUT_DIR]          (OUT_DIR defaults to $OUT)
#
# Installs nothing from the internet: pip runs with --no-index and only installs wheels found in
# $PN_WHEELS (default: shared/wheels) if that folder exists (e.g. onnx, onnxruntime, pytest, rich).
# Runs, in under 8 minutes:
#   1. environment report            -> OUT_DIR/env.json, OUT_DIR/nvidia-smi.txt
#   2. the inference tests with pytest, if importable (GPU tests: torch fp16/bf16 + CUDA graphs,
#      onnxruntime CUDA, TensorRT build/cache/parity; each skips with its reason where a library is absent)
#                                    -> OUT_DIR/pytest_inference.txt
#   3. the benchmark harness on CUDA: fp32 eager baseline, torch fp16, torch fp16 + CUDA graph,
#      onnxruntime (CUDA provider), TensorRT fp16 if importable; missing libraries give skipped rows
#      with the reason                -> OUT_DIR/bench_cuda.json (rewritten after every row), bench_cuda.txt
# Engines are cached under ${TMPDIR:-/tmp}, never in OUT_DIR or the repository.
# GPU_CHECK_DEVICE=cpu runs the same steps on CPU (to try the script on a machine without a GPU).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-${OUT:-}}"
if [ -z "$OUT_DIR" ]; then
  echo "usage: $0 OUT_DIR   (or set OUT)" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT" || exit 2

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PERCEPTION_NODES_CACHE="${PERCEPTION_NODES_CACHE:-${TMPDIR:-/tmp}/perception_nodes_gpu_check/engines}"
START=$(date +%s)
LOG="$OUT_DIR/gpu_check.log"
log() { echo "[gpu_check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
      PY="$candidate"
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  log "no python with torch found (set PYTHON=...)"
  exit 3
fi
log "python: $(command -v "$PY") ($("$PY" -V 2>&1))"

WHEELS="${PN_WHEELS:-$ROOT/shared/wheels}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  log "installing local wheels from $WHEELS (no index)"
  if ! "$PY" -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl >"$OUT_DIR/pip.log" 2>&1; then
    log "installing all wheels together failed (see pip.log); trying one by one"
    for wheel in "$WHEELS"/*.whl; do
      "$PY" -m pip install --no-index --find-links "$WHEELS" "$wheel" >>"$OUT_DIR/pip.log" 2>&1 \
        || log "  could not install $(basename "$wheel")"
    done
  fi
else
  log "no local wheels in $WHEELS; using what is installed"
fi

nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
if ! "$PY" -c "import numpy" 2>/dev/null; then
  log "numpy is not importable: the package needs it (carry a numpy wheel in $WHEELS)"
  exit 3
fi
if ! "$PY" - >"$OUT_DIR/env.json" 2>>"$LOG" <<'EOF'; then
import json
from perception_nodes.inference.bench import environment
print(json.dumps(environment(), indent=2))
EOF
  log "environment report failed (see $LOG)"
fi
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "torch sees no CUDA device; this check needs one"
  exit 3
fi
log "environment: $(tr -s ' \n' ' ' <"$OUT_DIR/env.json" | cut -c1-600)"

if "$PY" -c "import pytest" 2>/dev/null; then
  log "pytest: inference tests (limit 130 s)"
  timeout -k 10 130 "$PY" -m pytest -q -rs -p no:cacheprovider -m "not slow" \
    tests/test_inference_cuda.py tests/test_inference_card.py tests/test_inference_cache.py \
    tests/test_inference_registry.py tests/test_inference_parity.py tests/test_inference_backends.py \
    >"$OUT_DIR/pytest_inference.txt" 2>&1
  log "pytest exit code $? ($(tail -n 1 "$OUT_DIR/pytest_inference.txt"))"
else
  log "pytest is not importable: tests skipped (carry a pytest wheel to run them)"
fi

log "benchmark on $DEVICE (limit 260 s; rows stop starting after 200 s)"
timeout -k 10 260 "$PY" bench/bench_inference.py --device "$DEVICE" --budget-s 200 --max-row-s 6 --warmup 10 \
  --iters 200 --skip-broken-providers --json "$OUT_DIR/bench_$DEVICE.json" >"$OUT_DIR/bench_$DEVICE.txt" 2>&1
BENCH=$?
log "benchmark exit code $BENCH"
cat "$OUT_DIR/bench_$DEVICE.txt"
log "done in $(($(date +%s) - START)) s"
[ -s "$OUT_DIR/bench_$DEVICE.json" ] || exit 4
exit 0
