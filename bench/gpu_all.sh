#!/usr/bin/env bash
# Every GPU check of the stack in one run (about 8 minutes on an H100), for a machine with CUDA torch:
#
#   bench/gpu_all.sh OUT_DIR [--train]
#
#   1. EISEN `official` fast path at 512² (fp16, CUDA graphs) vs the reference path  -> gpu_segmentation.json
#   2. ARFM `official` forecast update (KV cache, bf16, CUDA graphs) vs the naive loop -> gpu_forecasting.json
#   3. inference layer: CUDA/TensorRT tests + bench harness on every registered model -> bench_cuda.json
#   4. with --train: sim data rendered with EGL and the shipped `small` EISEN trained on the GPU
# Each step has its own time limit, so one slow step never starves the others. Logs and everything else
# go into OUT_DIR/all.tgz; a one-screen summary into OUT_DIR/summary.txt. Installs nothing from the
# internet: extra wheels are installed only from $PN_WHEELS (default .whl/) with --no-index.
set -uo pipefail
OUT_DIR="${1:?usage: bench/gpu_all.sh OUT_DIR [--train]}"
TRAIN="${2:-}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
SUMMARY="$OUT_DIR/summary.txt"
START=$(date +%s)
say() { echo "[gpu_all +$(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }

WHEELS="${PN_WHEELS:-$ROOT/.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/pn_site "$WHEELS"/*.whl \
    >"$WORK/pip.log" 2>&1 || say "some wheels did not install (see pip.log)"
  export PYTHONPATH="/tmp/pn_site"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MUJOCO_GL="${MUJOCO_GL:-egl}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$SUMMARY"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$SUMMARY"

step() {  # step NAME LIMIT_S CMD...: run with a time limit, log to WORK, put the log's tail in the summary
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  say "$name: start (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" >"$WORK/$name.log" 2>&1
  say "$name: exit $? after $(($(date +%s) - t0))s"
  tail -n "${TAIL:-30}" "$WORK/$name.log" | sed 's/\r/\n/g' | tail -n "${TAIL:-30}" >>"$SUMMARY"
}

step segmentation 120 python3 bench/gpu_segmentation.py "$WORK" --budget-s 95
step forecasting 120 python3 bench/gpu_forecasting.py "$WORK/gpu_forecasting.json"
step inference_tests 70 python3 -m pytest -q -rs -p no:cacheprovider -m "gpu or not slow" tests/test_inference_cuda.py
step inference_bench 130 python3 bench/bench_inference.py --device cuda --budget-s 100 --max-row-s 5 --warmup 5 \
  --iters 100 --skip-broken-providers --json "$WORK/bench_cuda.json"
if [ "$TRAIN" = "--train" ]; then
  step train_segmentation 170 python3 -m perception_nodes.segmentation.train --device cuda --out "$WORK/seg_gpu" \
    ${SEG_TRAIN_ARGS:-}
fi
for f in gpu_segmentation.json gpu_forecasting.json bench_cuda.json; do
  [ -s "$WORK/$f" ] && cp "$WORK/$f" "$OUT_DIR/"
done
tar czf "$OUT_DIR/all.tgz" -C "$WORK" . 2>/dev/null
say "done in $(($(date +%s) - START))s"
