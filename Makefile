# Thin wrapper: every target calls `mlvos` or pytest from the project's virtualenv in .venv.
# The virtualenv is created on first use; torch is pinned to the CPU build (2.13.0) that pip takes
# from this machine's disk (never an unpinned torch: that pulls a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mlvos-installed
EXTRAS := train,export,ort,dev

CKPT ?= .cache/demo/tiny.pt
EXPORT_DIR ?= .cache/export

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-fast info lint clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

venv: $(STAMP) ## create/update the virtualenv in .venv

demo: $(STAMP) ## main job on the CPU: photos -> natural + synthetic videos -> tiny model -> ONNX (+ fp16 check) -> J&F and FPS
	$(BIN)/mlvos demo

.PHONY: train-demo train-plot
train-demo: $(STAMP) ## train the tiny demo model on natural + synthetic clips (a few CPU minutes, cached in CKPT)
	$(BIN)/mlvos train demo --out $(CKPT)

train-plot: $(STAMP) ## loss curve of the demo model's main training (CKPT.runs/3-main/log.jsonl)
	$(BIN)/mlvos train plot $(CKPT).runs/3-main/log.jsonl --out $(CKPT).loss.png

test: $(STAMP) ## run the test suite (CPU; gpu-marked tests skip without a GPU)
	$(BIN)/python -m pytest -q

info: $(STAMP) ## parameters and GMACs of every variant at 480x864
	$(BIN)/mlvos model info

# `export/` is also a source folder: without .PHONY make would call the target up to date.
.PHONY: export
export: $(STAMP) ## export a checkpoint to ONNX (CKPT=...)
	$(BIN)/mlvos export --checkpoint $(CKPT) --out $(EXPORT_DIR) --force

# `make profile`: a seeded, untrained tiny checkpoint -> ONNX export (reused while the checkpoint
# is unchanged) -> a short onnxruntime sweep on the CPU; report.json, CSVs and PNG plots in
# $(PROFILE_DIR)/report. `make gpu-check OUT=dir` needs a CUDA build of torch; on a GPU host
# without .venv, `pip install --no-deps .` into its python and add `STAMP= BIN=<its scripts dir>`
# (profiling/gpu_check.py gives the whole command for a lent device machine).
PROFILE_DIR  ?= .cache/profile
PROFILE_ARGS ?= --resolutions 480p,720p,1080p --objects 1,2 --long 40 --warmup 2 --iters 5
OUT ?= .cache/gpu-check

.PHONY: profile gpu-check run
$(PROFILE_DIR)/tiny.pt: | $(STAMP)
	$(BIN)/mlvos model init --variant tiny --out $@

profile: $(STAMP) $(PROFILE_DIR)/tiny.pt ## CPU latency profile: tiny on onnxruntime (PROFILE_ARGS=...)
	$(BIN)/mlvos profile --checkpoint $(PROFILE_DIR)/tiny.pt --backend ort --out $(PROFILE_DIR)/report $(PROFILE_ARGS)

# `make run`: the runtime CLI on one synthetic video of the demo (its export is made by
# `make demo` if absent): palette PNGs and an overlay video in $(RUN_DIR).
DEMO_DATA ?= .cache/demo/val-3x25-s2026
RUN_SEQ   ?= synth-0000
RUN_DIR   ?= .cache/run

run: $(STAMP) .cache/demo/export/manifest.json ## mlvos run on a synthetic demo video (ORT CPU; RUN_ARGS=...)
	$(BIN)/mlvos run --model .cache/demo/export --input $(DEMO_DATA)/JPEGImages/480p/$(RUN_SEQ) \
		--mask $(DEMO_DATA)/Annotations/480p/$(RUN_SEQ)/00000.png --out $(RUN_DIR)/masks \
		--overlay $(RUN_DIR)/overlay.mp4 $(RUN_ARGS)

# `make vtest`: the tracker on real footage without ground truth (OpenCV's vtest.avi, fetched from
# the Debian package opencv-doc with apt-get, cached in $(VTEST_DIR)) with the demo's export (made
# by `make demo` if absent): masks, overlay video, contact sheet, then the label-free checks
# (area <= 2x the first frame's, one connected piece) per object in $(VTEST_DIR)/track.json.
# The masks folder is emptied first: masks left by an earlier, longer run would be counted.
VTEST_DIR   ?= .cache/vtest
VTEST_MODEL ?= .cache/demo/export
VTEST_SHEET ?= 0,100,200,400,790
VTEST_ARGS  ?=

.PHONY: vtest
vtest: $(STAMP) $(VTEST_MODEL)/manifest.json ## demo model on OpenCV's vtest.avi: overlay, contact sheet, tracking checks (VTEST_ARGS=...)
	$(BIN)/mlvos data vtest --out $(VTEST_DIR)
	rm -rf $(VTEST_DIR)/masks
	$(BIN)/mlvos run --model $(VTEST_MODEL) --input $(VTEST_DIR)/vtest.avi \
		--mask $(VTEST_DIR)/00000.png --out $(VTEST_DIR)/masks --overlay $(VTEST_DIR)/overlay.mp4 \
		--contact-sheet $(VTEST_DIR)/contact.jpg --sheet-frames $(VTEST_SHEET) $(VTEST_ARGS)
	$(BIN)/mlvos eval --pred $(VTEST_DIR)/masks --first-mask $(VTEST_DIR)/00000.png \
		--json $(VTEST_DIR)/track.json

# `make natural-val`: the held-out natural validation set (photographs the training never sees:
# OpenCV's samples as backgrounds, held-out Tux Paint cut-outs); `make eval-natural CKPT=...`
# propagates a checkpoint over it with the PyTorch reference and prints J&F per attribute next
# to the copy-first-mask baseline.
NATURAL_VAL ?= .cache/natural-val
NATURAL_DIR ?= .cache/eval-natural

.PHONY: natural-val eval-natural
$(NATURAL_VAL)/natural.json: | $(STAMP)
	$(BIN)/mlvos data synth --style natural --out $(NATURAL_VAL) --sequences 12 --frames 40 \
		--seed 2027 --split val --force

natural-val: $(STAMP) $(NATURAL_VAL)/natural.json ## held-out natural validation set (12 x 40, seed 2027)

eval-natural: $(STAMP) $(NATURAL_VAL)/natural.json ## J&F of CKPT on the natural validation set + copy-first baseline
	$(BIN)/mlvos infer --checkpoint $(CKPT) --data $(NATURAL_VAL) --out $(NATURAL_DIR)/pred --force
	$(BIN)/mlvos eval --gt $(NATURAL_VAL)/Annotations/480p --baseline-out $(NATURAL_DIR)/copy-first \
		--force --json $(NATURAL_DIR)/copy-first.json
	$(BIN)/mlvos eval --gt $(NATURAL_VAL)/Annotations/480p --pred $(NATURAL_DIR)/pred \
		--json $(NATURAL_DIR)/jf.json

gpu-check: $(STAMP) ## time-boxed GPU check (< 8 min, H100): paper + tiny on torch, TensorRT if installed (OUT=dir)
	$(BIN)/mlvos profile gpu-check --out $(OUT)

# `make calib`: INT8 calibration of an export (default: the demo's, made by `make demo` if absent)
# on synthetic calibration videos, scored on other synthetic validation videos (FP32 vs INT8 J&F);
# the int8 graphs are registered in $(CALIB_EXPORT)/manifest.json and the report is
# $(CALIB_DIR)/out/calibration.json. The data sets are made once; the recorded feeds are cached.
CALIB_EXPORT ?= .cache/demo/export
CALIB_DIR    ?= .cache/calib
CALIB_ARGS   ?= --samples 32

.PHONY: calib
.cache/demo/export/manifest.json: | $(STAMP)
	$(BIN)/mlvos demo

$(CALIB_DIR)/calib-data: | $(STAMP)
	$(BIN)/mlvos data synth --out $@ --sequences 6 --frames 30 --seed 4321 --split val

$(CALIB_DIR)/val-data: | $(STAMP)
	$(BIN)/mlvos data synth --out $@ --sequences 10 --frames 30 --seed 1234 --split val

calib: $(STAMP) $(CALIB_EXPORT)/manifest.json $(CALIB_DIR)/calib-data $(CALIB_DIR)/val-data ## INT8 Q/DQ graphs + FP32-vs-INT8 J&F (CALIB_EXPORT=dir)
	$(BIN)/mlvos calib --model $(CALIB_EXPORT) --data $(CALIB_DIR)/calib-data --eval-data $(CALIB_DIR)/val-data --out $(CALIB_DIR)/out --force $(CALIB_ARGS)

# `make benchmark`: one row per backend x precision of the demo's export (made by `make demo` if
# absent; int8 appears once `make calib` ran): size, J&F on the demo's natural videos, ms/frame
# at 480p with 2 objects, peak memory; table.md, table.csv and table.json in $(BENCH_DIR).
BENCH_MODEL ?= .cache/demo/export
BENCH_DIR   ?= .cache/benchmark
BENCH_ARGS  ?=

.PHONY: benchmark
benchmark: $(STAMP) $(BENCH_MODEL)/manifest.json ## size, J&F, ms/frame, memory per backend x precision (BENCH_ARGS=...)
	$(BIN)/mlvos benchmark --model $(BENCH_MODEL) --out $(BENCH_DIR) $(BENCH_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

clean: ## remove caches and generated artifacts (keeps .venv)
	rm -rf .cache .pytest_cache .ruff_cache build *.egg-info
