#!/usr/bin/env bash
# The one prepared device check, for a lent GPU machine (H100/H200 with CUDA torch, onnx and CPU
# onnxruntime; no network, no .venv: this repo's own package is installed offline into the
# machine's python3). Run it from the repository root with $OUT set (the device tool sets it);
# it writes gpu_check.json/.csv, the PNG plots and the log under $OUT. Budget: 420 s of checks,
# under 8 minutes in all (profiling/gpu_check.py's docstring has the split); give it timeout 600.
set -o pipefail
: "${OUT:?set OUT to the folder that receives the report}"
# Offline and without build isolation, the image's own setuptools builds the package. PEP 639's
# `license = "<SPDX id>"` and `license-files` need setuptools>=77 (pyproject's build requires,
# which cannot be fetched here); an older one builds a copy of the tree whose pyproject.toml
# states the same licence in the pre-PEP-639 table form.
SRC=.
if ! python3 -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)'
then
    SRC=$(mktemp -d)/mlvos
    mkdir -p "$SRC"
    tar --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./build -cf - . \
        | tar -xf - -C "$SRC" || exit 1
    sed -i -E 's/^license = "([^"]+)"$/license = { text = "\1" }/; /^license-files = /d' \
        "$SRC/pyproject.toml"
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation "$SRC" || exit 1
BIN=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PYTHONUNBUFFERED=1
if command -v make >/dev/null; then
    make gpu-check OUT="$OUT/gpu" STAMP= BIN="$BIN"
else
    "$BIN/mlvos" profile gpu-check --out "$OUT/gpu"
fi 2>&1 | tee "$OUT/gpu-check.log"
