"""`calibrate`: export directory + dataset -> INT8 Q/DQ graphs registered in the export's
manifest as precision "int8", and calibration.json (in --out and in the export directory).

Steps:
  1. check the options, the export (three FP32 graphs whose files match the manifest) and the
     dataset(s) (DAVIS layout, objects in the first frame, frames that fit the model);
  2. record the calibration feeds by propagating the FP32 graphs (record.py), or reuse the cache
     in OUT/cache when its key (FP32 graphs' sha256, dataset fingerprint, options) matches;
  3. per graph: quantize everything the quantizer places Q/DQ on, then each FP32 candidate
     excluded in turn (quantize.py), measure each result against FP32 on the calibration feeds,
     keep the candidates that remove >= KEEP_MIN_GAIN of the error, quantize the final graph;
     check it (ONNX checker, TensorRT 10.3 op list, zero points 0);
  4. optionally (--eval-data) propagate a validation set with FP32 and INT8 and score both
     (accuracy.py);
  5. commit, holding the manifest's lock (calibrations of one export take turns) and after
     re-reading it (another calibration may have committed meanwhile): an int8 registration
     being replaced is first removed from manifest.json, the int8 files are renamed into the
     export directory, and manifest.json is rewritten atomically with only graphs[*]["int8"] and
     "precisions" changed (stable JSON: sorted keys, so every other entry stays
     byte-identical); then calibration.json.
Nothing in the export directory changes before step 5 (the int8 files are staged under hidden
temporary names there and removed on failure; those of a killed calibration are removed by the
next one). A kill during step 5 leaves the old registration or none, never a manifest naming
files it does not match.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlvos.calib.constants import (
    CACHE_DIR,
    CALIBRATION_FILE,
    CALIBRATION_FORMAT,
    CALIBRATION_VERSION,
    CALIBRATORS,
    CANDIDATES,
    DEFAULT_CALIBRATOR,
    DEFAULT_METHOD,
    DEFAULT_SAMPLES,
    DEFAULT_SELECTION,
    KEEP_AUTO,
    KEEP_CHOICES,
    KEEP_MIN_GAIN,
    KEEP_NONE,
    METHODS,
    MIN_SAMPLES,
    PRECISION,
    SELECTIONS,
)
from mlvos.calib.errors import CalibError, MissingFp32Error, QuantizationError, TooFewSamplesError
from mlvos.logs import clock, stamped
from mlvos.runtime.manifest import Manifest, graph_entry, graph_file
from mlvos.runtime.spec import DEFAULT_MEM_EVERY, Graph

logger = logging.getLogger(__name__)


def _check_options(
    *, samples, method, calibrator, keep_fp32, selection, mem_every
) -> tuple[str, tuple[str, ...]]:
    """Argument checks that need no data. Returns (keep mode, explicitly kept candidates)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < MIN_SAMPLES:
        raise TooFewSamplesError(
            f"--samples must be an integer >= {MIN_SAMPLES} (activation ranges from fewer "
            f"frames do not represent a video), got {samples!r}"
        )
    if method not in METHODS:
        raise CalibError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    if calibrator not in CALIBRATORS:
        raise CalibError(
            f"unknown --calibrator {calibrator!r}; choose from {', '.join(CALIBRATORS)}"
        )
    if selection not in SELECTIONS:
        raise CalibError(f"unknown --select {selection!r}; choose from {', '.join(SELECTIONS)}")
    if isinstance(mem_every, bool) or not isinstance(mem_every, int) or mem_every < 1:
        raise CalibError(f"--mem-every must be an integer >= 1, got {mem_every!r}")
    keep = list(dict.fromkeys(keep_fp32 or [KEEP_AUTO]))
    unknown = [k for k in keep if k not in KEEP_CHOICES]
    if unknown:
        raise CalibError(
            f"unknown --keep-fp32 value(s) {unknown}; choose '{KEEP_AUTO}', '{KEEP_NONE}' or "
            f"candidates from {', '.join(CANDIDATES)}"
        )
    if len(keep) > 1 and (KEEP_AUTO in keep or KEEP_NONE in keep):
        raise CalibError(
            f"--keep-fp32 takes '{KEEP_AUTO}', '{KEEP_NONE}' or a list of candidates, not a mix: "
            f"{keep}"
        )
    if keep[0] in (KEEP_AUTO, KEEP_NONE):
        return keep[0], ()
    return "explicit", tuple(keep)


def _load_export(export_dir: Path, force: bool) -> dict[str, Any]:
    """The manifest dict, after checking the FP32 graphs (present, files matching sha256)."""
    manifest = Manifest.load(export_dir)  # ManifestError: not an export directory
    graphs = manifest.data["graphs"]
    missing = [g for g in Graph.ALL if "fp32" not in graphs.get(g, {})]
    if missing:
        raise MissingFp32Error(
            f"{export_dir} has no FP32 version of {missing} (its manifest lists "
            f"{ {g: sorted(v) for g, v in graphs.items()} }); calibration runs the FP32 graphs: "
            "re-export with `mlvos export --checkpoint CKPT --out DIR --precision fp32 fp16`"
        )
    for g in Graph.ALL:
        manifest.graph(g, "fp32", verify=True)  # ManifestError if missing / modified
    present = [g for g in Graph.ALL if PRECISION in graphs.get(g, {})]
    if present and not force:
        raise CalibError(
            f"{export_dir} already holds int8 graphs ({', '.join(present)}); pass --force to "
            "recalibrate and replace them"
        )
    return manifest.data


def _stage_name(graph: str) -> str:
    # fileio's temporary naming (.NAME.<pid>.<tag>.tmp): sweep_stale removes those of a killed run
    return f".{graph_file(graph, PRECISION)}.{os.getpid()}.staged.tmp"


# How long a calibration waits for another one committing to the same export (a few renames).
COMMIT_LOCK_TIMEOUT_S = 60.0


def _commit(export_dir: Path, manifest: dict, entries: dict, staged: list[Path], force: bool):
    """Step 5 of the module docstring: register the staged int8 graphs in the export."""
    from mlvos.fileio import file_lock
    from mlvos.runtime.manifest import MANIFEST_FILE

    with file_lock(export_dir / MANIFEST_FILE, timeout=COMMIT_LOCK_TIMEOUT_S,
                   what=f"the manifest of {export_dir}"):
        current = Manifest.load(export_dir)
        fp32 = {g: (manifest["graphs"][g]["fp32"]["sha256"],
                    current.data["graphs"].get(g, {}).get("fp32", {}).get("sha256"))
                for g in Graph.ALL}
        if any(a != b for a, b in fp32.values()):
            raise CalibError(
                f"the FP32 graphs of {export_dir} changed while this calibration ran (re-exported "
                "meanwhile?); nothing was registered: calibrate the new export"
            )
        registered = [g for g in Graph.ALL if PRECISION in current.data["graphs"].get(g, {})]
        if registered and not force:
            raise CalibError(
                f"another calibration registered int8 graphs in {export_dir} while this one ran "
                f"({', '.join(registered)}); nothing was changed: rerun with --force to replace "
                "them"
            )
        if registered:
            # The files are replaced next: a kill between the renames must not leave the old
            # entries naming new files.
            current.without_precision(PRECISION).write()
        moved = []
        try:
            for graph, path in zip(Graph.ALL, staged, strict=True):
                moved.append(export_dir / graph_file(graph, PRECISION))
                os.replace(path, moved[-1])
            current.with_precision(PRECISION, entries).write()
        except Exception:
            for path in moved:  # no manifest entry names them now
                path.unlink(missing_ok=True)
            raise


# Why a quantizer leaves a candidate alone (appended to the generic reason).
_UNPLACED = {
    ("modelopt", "attention"): (
        "; ModelOpt leaves the MHA MatMuls unquantized when the key length T*h*w exceeds 512, "
        "and Add/Softmax are not quantizable ops"
    ),
    ("modelopt", "aggregation"): "; Sigmoid/ReduceProd/Log/Softmax/ArgMax are not quantized",
    ("ort", "aggregation"): "; only Conv and MatMul are quantized",
    ("ort-cpu", "first_conv"): (
        "; the first convolutions (3 or 1 input channels) run slower in INT8 than in FP32 on "
        "onnxruntime CPU"
    ),
    ("ort-cpu", "attention"): "; the memory read (MatMul, Softmax, priors) stays FP32",
    ("ort-cpu", "aggregation"): "; the soft aggregation stays FP32",
}


def _plan_graph(
    graph: str,
    fp32_path: Path,
    feeds: list,
    *,
    method: str,
    calibrator: str,
    keep_mode: str,
    requested: tuple[str, ...],
) -> tuple[Any, dict[str, Any]]:
    """Quantize one graph, choosing what stays FP32. Returns (model, report section)."""
    import onnx

    from mlvos.calib.quantize import (
        candidate_nodes,
        ort_cpu_kernels,
        output_error,
        quantize_model,
        quantized_nodes,
        run_model,
    )

    fp32_model = onnx.load(os.fspath(fp32_path))
    reference = run_model(fp32_model, feeds)
    trials: dict[frozenset, tuple[Any, dict]] = {}

    def trial(excluded: frozenset) -> tuple[Any, dict]:
        if excluded not in trials:
            start = time.perf_counter()
            model = quantize_model(
                fp32_path, feeds, method=method, calibrator=calibrator, exclude=sorted(excluded)
            )
            error = output_error(graph, reference, run_model(model, feeds))
            trials[excluded] = (model, error)
            what = f"{len(excluded)} node(s) FP32" if excluded else "all quantized"
            logger.info(stamped(
                f"  {graph}: {what}: error {error['score']:.4g} "
                f"({time.perf_counter() - start:.1f} s)"
            ))
        return trials[excluded]

    base_model, base_error = trial(frozenset())
    in_int8 = set(quantized_nodes(base_model))
    candidates: dict[str, dict[str, Any]] = {}
    kept: set[str] = set()
    for name, nodes in candidate_nodes(fp32_model, graph).items():
        hit = [n for n in nodes if n in in_int8]
        entry: dict[str, Any] = {"nodes": nodes, "quantized_when_allowed": hit, "kept": False}
        candidates[name] = entry
        if not hit:
            entry["reason"] = (
                f"{method} places no Q/DQ on these nodes (its placement rules"
                f"{_UNPLACED.get((method, name), '')}): they stay FP32 without an exclusion"
            )
            continue
        measure = keep_mode == KEEP_AUTO or name in requested
        if not measure:
            entry["reason"] = "not measured (--keep-fp32 none or not listed): quantized"
            continue
        _, err = trial(frozenset(hit))
        base = base_error["score"]
        gain = 1.0 - err["score"] / base if base > 0 else 0.0
        entry.update(error_when_fp32=err["score"], error_when_int8=base, gain=gain)
        if keep_mode == KEEP_AUTO:
            entry["kept"] = gain >= KEEP_MIN_GAIN
            entry["reason"] = (
                f"keeping it FP32 removes {100 * gain:.1f}% of the graph's error "
                f"({base:.4g} -> {err['score']:.4g}); kept when >= {100 * KEEP_MIN_GAIN:.0f}%"
            )
        else:
            entry["kept"] = True
            entry["reason"] = (
                f"requested (--keep-fp32 {name}); keeping it FP32 changes the graph's error "
                f"{base:.4g} -> {err['score']:.4g} ({100 * gain:+.1f}% removed)"
            )
        if entry["kept"]:
            kept.update(hit)
    model, error = trial(frozenset(kept))
    fp32_nodes = [
        {"name": n, "candidate": c, "reason": candidates[c]["reason"]}
        for c, e in candidates.items()
        if e["kept"]
        for n in e["quantized_when_allowed"]
    ]
    section = {
        "error": error,
        "error_all_quantized": base_error,
        "candidates": candidates,
        "fp32_nodes": fp32_nodes,
        "quantized_nodes": len(quantized_nodes(model)),
        # convolutions onnxruntime CPU runs in INT8 vs in FP32 behind DequantizeLinear
        "ort_cpu_kernels": ort_cpu_kernels(model),
        "trials": len(trials),
    }
    return model, section


def _finish_graph(model, graph: str, checkpoint_sha256: str) -> dict:
    """Stamp and check a quantized graph (ONNX checker, TensorRT ops, zero points)."""
    from mlvos.calib.quantize import qdq_summary
    from mlvos.export.onnx_export import check_graph
    from mlvos.export.onnx_utils import stamp_graph

    stamp_graph(model, graph=graph, precision=PRECISION, checkpoint_sha256=checkpoint_sha256)
    check_graph(model, graph, attention_required=False)  # ExportError / UnsupportedOpError
    summary = qdq_summary(model)
    if summary["nonzero_zero_points"]:
        raise QuantizationError(
            f"{graph}: Q/DQ nodes {summary['nonzero_zero_points'][:5]} have a non-zero or "
            "non-int8 zero point; TensorRT accepts only symmetric INT8 (zero point 0)"
        )
    if summary["quantize_linear"] == 0:
        raise QuantizationError(
            f"{graph}: the quantizer placed no Q/DQ node; nothing would run in INT8"
        )
    return summary


@clock()  # progress lines (also record's, cache's, accuracy's) start with seconds since here
def calibrate(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    samples: int = DEFAULT_SAMPLES,
    sequences: Sequence[str] | None = None,
    split: str = "val",
    selection: str = DEFAULT_SELECTION,
    seed: int = 0,
    method: str = DEFAULT_METHOD,
    calibrator: str = DEFAULT_CALIBRATOR,
    keep_fp32: Sequence[str] = (KEEP_AUTO,),
    mem_every: int = DEFAULT_MEM_EVERY,
    eval_data: str | os.PathLike | None = None,
    eval_split: str = "val",
    eval_sequences: Sequence[str] | None = None,
    force: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Calibrate an export directory to INT8 and register the graphs as precision "int8".

    Args:
        model: export directory (manifest.json with the three FP32 graphs).
        data: DAVIS-layout dataset whose videos are propagated for calibration.
        out: folder for the feed cache (OUT/cache), calibration.json and the predictions.
        samples: calibration samples (frames t >= 1; each gives one feed per graph), >= 4.
        sequences: sequences of `data` to use (default: all of `split`).
        split: ImageSets/2017/<split>.txt of `data`.
        selection: "even" (evenly spaced frames) or "random" (seeded by `seed`).
        method: "modelopt" or "ort" (quantize.py).
        calibrator: "entropy" or "max".
        keep_fp32: ("auto",) measure and choose; ("none",) quantize all; or candidate names
            (constants.CANDIDATES) to keep in FP32.
        mem_every: memory period of the propagations (runtime default 5).
        eval_data / eval_split / eval_sequences: validation set for the FP32-vs-INT8 J&F report;
            None skips the report.
        force: replace int8 graphs the export already holds.
        threads: onnxruntime intra-op threads for the propagations.

    Returns:
        The report written to calibration.json.

    Raises:
        TooFewSamplesError, CalibDataError, MissingFp32Error, CalibError, QuantizationError,
        ManifestError (not an export directory / modified files), UnsupportedOpError.
    """
    start = time.perf_counter()
    keep_mode, requested = _check_options(
        samples=samples,
        method=method,
        calibrator=calibrator,
        keep_fp32=keep_fp32,
        selection=selection,
        mem_every=mem_every,
    )
    export_dir, out = Path(model), Path(out)
    manifest = _load_export(export_dir, force)
    from mlvos.fileio import reporting_disk_full, sweep_stale

    sweep_stale(export_dir)  # int8 files staged by a calibration that was killed

    from mlvos.calib import cache
    from mlvos.calib.record import (
        check_frames,
        check_objects,
        open_dataset,
        record,
        select_positions,
    )

    stride, static = int(manifest["stride"]), manifest.get("static_size")
    ds, names = open_dataset(data, split, sequences, "--data")
    check_objects(ds, names, "--data")
    check_frames(ds, names, stride=stride, static_size=static, what="--data")
    if eval_data is not None:
        eval_ds, eval_names = open_dataset(eval_data, eval_split, eval_sequences, "--eval-data")
        check_objects(eval_ds, eval_names, "--eval-data")
        check_frames(eval_ds, eval_names, stride=stride, static_size=static, what="--eval-data")
    positions = select_positions(
        {n: len(ds[n]) for n in names}, samples, selection=selection, seed=seed
    )
    fp32 = {g: manifest["graphs"][g]["fp32"] for g in Graph.ALL}
    dataset_info = {
        "root": str(Path(data).resolve()),
        "split": split,
        "sequences": list(names),
        "fingerprint": cache.dataset_fingerprint(ds, names),
    }
    key = cache.cache_key(
        fp32_sha256={g: e["sha256"] for g, e in fp32.items()},
        dataset=dataset_info,
        positions=positions,
        mem_every=mem_every,
    )
    recorded, reused = cache.load_or_record(
        out / CACHE_DIR,
        key,
        lambda: record(export_dir, ds, positions, mem_every=mem_every, threads=threads),
    )

    from mlvos.export.onnx_utils import io_specs, save_model
    from mlvos.export.trt_ops import TENSORRT_VERSION
    from mlvos.fileio import atomic_write_text, stable_json

    staged: list[Path] = []
    entries: dict[str, dict[str, Any]] = {}
    graphs_report: dict[str, Any] = {}
    ckpt_sha = manifest.get("checkpoint", {}).get("sha256", "")
    try:
        for graph in Graph.ALL:
            logger.info(stamped(
                f"quantizing {graph} ({method}, {calibrator}, {len(recorded)} samples)"
            ))
            fp32_path = export_dir / fp32[graph]["file"]
            qmodel, section = _plan_graph(
                graph,
                fp32_path,
                recorded.feeds[graph],
                method=method,
                calibrator=calibrator,
                keep_mode=keep_mode,
                requested=requested,
            )
            section["qdq"] = _finish_graph(qmodel, graph, ckpt_sha)
            section["tensorrt_ops"] = f"passed (TensorRT {TENSORRT_VERSION} op list)"
            path = export_dir / _stage_name(graph)
            staged.append(path)
            with reporting_disk_full(export_dir / graph_file(graph, PRECISION)):
                save_model(qmodel, path)
            entry = graph_entry(
                graph, PRECISION, *io_specs(qmodel), written=path, fp32_nodes=section["fp32_nodes"]
            )
            section["file"], section["sha256"] = entry["file"], entry["sha256"]
            entries[graph] = entry
            graphs_report[graph] = section
        new = Manifest(export_dir, manifest).with_precision(PRECISION, entries)

        accuracy: dict[str, Any] = {"skipped": "no --eval-data given"}
        if eval_data is not None:
            accuracy = _accuracy(
                export_dir, manifest, new.data, eval_ds, eval_names, out, mem_every, threads
            )
        _commit(export_dir, manifest, entries, staged, force)
        staged = []
    finally:
        for path in staged:
            path.unlink(missing_ok=True)

    report = _report(
        export_dir=export_dir,
        manifest=manifest,
        method=method,
        calibrator=calibrator,
        keep_mode=keep_mode,
        requested=requested,
        dataset=dataset_info,
        positions=positions,
        selection=selection,
        seed=seed,
        mem_every=mem_every,
        cache_dir=out / CACHE_DIR,
        reused=reused,
        graphs=graphs_report,
        accuracy=accuracy,
        seconds=time.perf_counter() - start,
    )
    text = stable_json(report)
    for folder in (out, export_dir):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / CALIBRATION_FILE, text)
    for line in summary(report):
        logger.info(stamped(line))
    return report


def _accuracy(export_dir, manifest, new, ds, names, out, mem_every, threads) -> dict:
    """FP32 vs INT8 propagation over the validation set, the INT8 graphs read from their staged
    files (the manifest on disk is not changed yet)."""
    from mlvos.calib.accuracy import accuracy_report
    from mlvos.runtime.backends.onnxrt import OrtRunner
    staged = copy.deepcopy(new)
    for graph in Graph.ALL:
        staged["graphs"][graph][PRECISION]["file"] = _stage_name(graph)
    logger.info(stamped(
        f"accuracy: propagating {len(names)} validation sequence(s) with fp32 and int8"
    ))
    with (
        OrtRunner(Manifest(export_dir, manifest), "fp32", threads=threads) as r32,
        OrtRunner(Manifest(export_dir, staged), PRECISION, threads=threads) as r8,
    ):
        report = accuracy_report(
            {"fp32": r32, "int8": r8}, ds, names, out / "pred", mem_every=mem_every
        )
    return report


def _report(**kw) -> dict[str, Any]:
    from mlvos import __version__

    method = kw["method"]
    quantizer: dict[str, Any] = {"name": method, "calibrator": kw["calibrator"]}
    try:
        if method == "modelopt":
            import modelopt

            quantizer.update(
                api="modelopt.onnx.quantization.quantize(quantize_mode='int8')",
                version=modelopt.__version__,
                calibration_eps=["cpu"],
                high_precision_dtype="fp32",
            )
        else:
            import onnxruntime

            from mlvos.runtime.spec import ORT_INT8_SESSION_CONFIG as ORT_SESSION_CONFIG

            ops = "Conv+MatMul" if method == "ort" else "Conv+Relu+Add+Resize+MaxPool"
            quantizer.update(
                api=f"onnxruntime.quantization.quantize_static(QDQ, {ops}, per-channel)",
                version=onnxruntime.__version__,
                symmetric=True,
            )
            if method == "ort-cpu":
                quantizer["ort_session_config"] = dict(ORT_SESSION_CONFIG)
    except ImportError:
        pass
    manifest = kw["manifest"]
    return {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_VERSION,
        "mlvos_version": __version__,
        "export_dir": str(kw["export_dir"].resolve()),
        "checkpoint": {
            k: manifest.get("checkpoint", {}).get(k) for k in ("sha256", "variant", "stage")
        },
        "fp32_graphs_sha256": {g: manifest["graphs"][g]["fp32"]["sha256"] for g in Graph.ALL},
        "method": quantizer,
        "samples": len(kw["positions"]),
        "data": {
            **kw["dataset"],
            "selection": kw["selection"],
            "seed": kw["seed"],
            "mem_every": kw["mem_every"],
            "positions": [[s, t] for s, t in kw["positions"]],
            "cache": {"dir": str(kw["cache_dir"]), "reused": kw["reused"]},
        },
        "keep_fp32": {
            "mode": kw["keep_mode"],
            "requested": list(kw["requested"]),
            "min_gain": KEEP_MIN_GAIN,
            "error_metric": "relative RMS error vs FP32 over the calibration feeds "
            "(read_decoder: obj_probs; encoders: the largest over their outputs)",
        },
        "graphs": kw["graphs"],
        "accuracy": kw["accuracy"],
        "seconds": round(kw["seconds"], 1),
    }


def summary(report: dict[str, Any]) -> list[str]:
    """Human-readable lines: per-graph error and FP32 nodes, and the accuracy numbers."""
    lines = []
    for graph, g in report["graphs"].items():
        kept = sorted({n["candidate"] for n in g["fp32_nodes"]}) or ["none"]
        lines.append(
            f"{graph}: int8 error {g['error']['score']:.4g} (all quantized "
            f"{g['error_all_quantized']['score']:.4g}); kept FP32: {', '.join(kept)}"
        )
    acc = report["accuracy"]
    if "jf" in acc:
        jf = acc["jf"]
        lines.append(
            f"J&F fp32 {100 * jf['fp32']:.2f}  int8 {100 * jf['int8']:.2f}  drop "
            f"{acc['jf_drop_points']:.2f} points; IoU int8 vs fp32 mean "
            f"{acc['iou_int8_vs_fp32']['mean']:.4f} min {acc['iou_int8_vs_fp32']['min']:.4f}"
        )
    return lines
