#!/usr/bin/env bash
# The one prepared device check, for a lent GPU machine (H100/H200 with CUDA torch, onnx and CPU
# onnxruntime; no network, no .venv: this repo's own package is installed offline into the
# machine's python3). Run it from the repository root with $OUT set (the device tool sets it);
# it writes gpu_check.json/.csv, the PNG plots and the log under $OUT. Budget: 420 s of checks,
# under 8 minutes in all (profiling/gpu_check.py's docstring has the split); give it timeout 600.
set -o pipefail
: "${OUT:?set OUT to the folder that receives the report}"
python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
BIN=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PYTHONUNBUFFERED=1
if command -v make >/dev/null; then
    make gpu-check OUT="$OUT/gpu" STAMP= BIN="$BIN"
else
    "$BIN/mlvos" profile gpu-check --out "$OUT/gpu"
fi 2>&1 | tee "$OUT/gpu-check.log"
