"""`mlvos check`: the numerics of each deployed precision, graph by graph, against the FP32 ONNX
graphs on onnxruntime, through Polygraphy's comparator, on inputs recorded from a real
propagation.

Steps (run_check):
  1. feeds: the runtime's own frame loop (VideoPredictor over the FP32 graphs on onnxruntime,
     the RecordingRunner proxy: calib.record.record) propagates a DAVIS-layout dataset, or a
     short synthetic video, and records what each graph received at `samples` frames;
  2. the feeds are saved in Polygraphy's JSON format, per graph and input dtypes
     (OUT/feeds/<graph>.<precision>.json; fp16 graphs take float16 features and bank, so they get
     their own copy cast to the dtypes the manifest records);
  3. reference: the FP32 graph on onnxruntime's CPU provider (Polygraphy's OnnxrtRunner), its
     outputs saved as OUT/outputs/<graph>.fp32.json;
  4. candidates, backend "trt": the engines mlvos builds (runtime.backends.trt.ensure_engines)
     run by Polygraphy's TrtRunner; backend "ort" (no TensorRT or no GPU): the fp16 / int8
     graphs on onnxruntime, through the same code, which is how CI tests it;
  5. compare: Comparator.compare_accuracy with Polygraphy's simple comparison on the max
     absolute error of each float output, whose limit is atol + rtol * max|reference| over the
     samples (TOLERANCES; the rule of export/validate.py); label maps (uint8) are judged by the
     share of differing pixels where the reference decision is clear, not by an atol;
  6. attention: on TensorRT, whether the memory read became one fused layer (profiling.fusion);
     on onnxruntime, the manifest's `attention_fusable` claim, reported as unverified;
  7. check.json (atomic), and the `polygraphy run` command lines that repeat each comparison by
     hand from the saved files.
Recording, the feed files and the command lines are in profiling.feeds, the reading of engine
layers in profiling.fusion.

Polygraphy and onnx are imported inside the functions (the `export` extra); TensorRT only after
a CUDA device was confirmed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.data.metrics import decisive_agreement
from mlvos.errors import InputError, MlvosError, require
from mlvos.logs import clock, stamped
from mlvos.profiling.check_candidates import (
    BACKENDS,
    Candidate,
    _check_profile,
    _ort_candidates,
    _ort_runner,
    _trt_candidates,
    attention_report,
    resolve_backend,
)
from mlvos.profiling.feeds import (
    Feed,
    FeedFiles,
    load_feeds,
    polygraphy_command,
    record_feeds,
    save_results,
)
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import DEFAULT_MEM_EVERY, Graph, Precision
from mlvos.runtime.spec import Tensor as T

__all__ = [
    "BACKENDS",
    "CHECK_FILE",
    "DEFAULT_SAMPLES",
    "TOLERANCES",
    "TRT_FP32_TOLERANCE",
    "resolve_backend",
    "run_check",
    "summary_table",
]

logger = logging.getLogger(__name__)

# |candidate - reference| <= atol + rtol * max|reference| per float output (max over the samples),
# the rule of export/validate.py. Label maps are judged on "decisive" pixels, whose top-two
# reference probabilities (background included) differ by more than twice the obj_probs
# tolerance: at most `label_mismatch` of them may differ (near-ties flip under any rounding).
# fp32: the same graph on another runtime; only summation order differs (export/validate.py's).
# fp16: half-precision storage and math (10-bit mantissa), FP32 islands; export/validate.py's.
# int8: 8-bit activations and weights (scales from calibration) carry percent-level errors into
#   every feature: the loosest. Measured on the ORT graphs (3-4 samples), the trained demo tiny's
#   worst output is 9.4% of max|ref| (logits), the decisive test model's 8.5% (obj_probs), with
#   no decisive label flipped; rtol 0.2 leaves twice that. (fp16 measured 0.2% on both.)
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-4, "rtol": 1e-3, "label_mismatch": 1e-3},
    "fp16": {"atol": 1e-3, "rtol": 3e-2, "label_mismatch": 1e-2},
    "int8": {"atol": 1e-2, "rtol": 2e-1, "label_mismatch": 5e-2},
}
# TensorRT's FP32 engines (mlvos builds them with TF32 on, TensorRT's default) round the inputs
# of convolutions and matrix products to a 10-bit mantissa, the same as FP16's.
TRT_FP32_TOLERANCE = TOLERANCES["fp16"]

DEFAULT_SAMPLES = 4
CHECK_FILE = "check.json"
CHECK_FORMAT = "mlvos-check"
CHECK_VERSION = 1
FEEDS_DIR, OUTPUTS_DIR = "feeds", "outputs"
REFERENCE = "fp32"


# ------------------------------------------------------------------------------------ compare
def tolerance(precision: str, backend: str, overrides: dict | None = None) -> dict[str, float]:
    """The tolerance of a candidate: TOLERANCES[precision] (TRT_FP32_TOLERANCE for TensorRT
    fp32), with `overrides[precision]` keys replacing its values."""
    base = TRT_FP32_TOLERANCE if (backend, precision) == ("trt", "fp32") else TOLERANCES[precision]
    return {**base, **((overrides or {}).get(precision) or {})}


def _limit(tol: dict[str, float], max_ref: float) -> float:
    """atol + rtol * max|ref|, rounded to 4 significant digits: the value given to Polygraphy
    here and printed in the command line, so both judge with the same number."""
    return float(f"{tol['atol'] + tol['rtol'] * max_ref:.4g}")


def _float(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _worst(results: list, field: str) -> float:
    """The largest `field` of Polygraphy's per-sample results; NaN if any is NaN or missing."""
    values = [float(getattr(r, field, math.nan)) for r in results]
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _label_metrics(ref: list, got: list, probs: list, tol: dict[str, float]) -> dict[str, Any]:
    """Worst mismatch share over the samples, overall and on decisive pixels (see TOLERANCES;
    every pixel is decisive where `probs` holds None)."""
    worst, worst_decisive, decisive_share = 0.0, 0.0, 1.0
    for r, g, p in zip(ref, got, probs):
        if r.shape != g.shape:
            return {"kind": "labels", "mismatch": 1.0, "limit": tol["label_mismatch"],
                    "passed": False, "error": f"shape {g.shape} != reference {r.shape}"}
        m = decisive_agreement(r, g, p, 2.0 * (tol["atol"] + tol["rtol"]))
        worst = max(worst, m["mismatch"])
        worst_decisive = max(worst_decisive, m["decisive_mismatch"])
        decisive_share = min(decisive_share, m["decisive_fraction"])
    return {
        "kind": "labels",
        "mismatch": worst,
        "decisive_mismatch": worst_decisive,
        "decisive_fraction": decisive_share,
        "limit": tol["label_mismatch"],
        "passed": worst_decisive <= tol["label_mismatch"],
    }


def _compare_func(limits: dict[str, float]):
    """Polygraphy's simple comparison on the max absolute error with a per-output atol (rtol 0:
    the relative part is inside the limit), skipping outputs without a limit (labels)."""
    from polygraphy import comparator

    # SimpleCompareFunc where it exists; CompareFunc.simple (deprecated there) on older versions.
    factory = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    return factory(
        atol=dict(limits),
        rtol=dict.fromkeys(limits, 0.0),
        check_error_stat=dict.fromkeys(limits, "max"),
        find_output_func=lambda name, index, other: [name] if name in limits else None,
    )


def _run(runner, feeds: list[Feed]):
    """Comparator.run of one runner on its own feeds (each runner gets feeds in its dtypes)."""
    from polygraphy.comparator import Comparator

    return Comparator.run([runner], data_loader=feeds)


def compare_graph(
    reference_run,
    candidate_run,
    tol: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Per-output metrics of one candidate graph against the reference over all samples.

    Args:
        reference_run / candidate_run: Polygraphy RunResults of one runner each, same samples.
        tol: the candidate's tolerance (TOLERANCES entry).
    """
    from polygraphy.comparator import Comparator, RunResults

    ref_iters = list(reference_run.values())[0]
    got_iters = list(candidate_run.values())[0]
    names = list(ref_iters[0].keys())
    float_names = [
        n for n in names if np.issubdtype(np.asarray(ref_iters[0][n]).dtype, np.floating)
    ]
    max_ref = {
        n: max(float(np.abs(np.asarray(it[n], np.float32)).max(initial=0.0)) for it in ref_iters)
        for n in float_names
    }
    limits = {n: _limit(tol, max_ref[n]) for n in float_names}
    both = RunResults()
    both.extend(candidate_run)
    both.extend(reference_run)
    accuracy = Comparator.compare_accuracy(
        both, comparisons=[(0, 1)], compare_func=_compare_func(limits)
    )
    if not hasattr(accuracy, "values"):  # newer Polygraphy: one AccuracyResult per compare func
        accuracy = accuracy[0]
    per_iteration = list(accuracy.values())[0]  # [{output: OutputCompareResult}] per sample
    out: dict[str, dict[str, Any]] = {}
    for n in float_names:
        # a missing output, or a bare False (Polygraphy's verdict on a shape mismatch), fails
        results = [it.get(n, False) for it in per_iteration]
        max_abs = _worst(results, "max_absdiff")
        finite = all(np.isfinite(np.asarray(it[n], np.float32)).all() for it in got_iters)
        out[n] = {
            "kind": "float",
            "max_abs": _float(max_abs),
            "max_ref": max_ref[n],
            "max_rel": _float(max_abs / max(max_ref[n], 1e-12)),
            "polygraphy_max_reldiff": _float(_worst(results, "max_reldiff")),
            "limit": limits[n],
            "finite": finite,
            "passed": finite and all(bool(r) for r in results),
        }
    # integer outputs (labels): near-ties told by the reference's obj_probs where there are some
    probs: list = [None] * len(ref_iters)
    if T.OBJ_PROBS in float_names:
        probs = [np.asarray(it[T.OBJ_PROBS], np.float32) for it in ref_iters]
    for n in names:
        if n not in out:
            out[n] = _label_metrics(
                [np.asarray(it[n]) for it in ref_iters],
                [np.asarray(it[n]) for it in got_iters],
                probs,
                tol,
            )
    return out


# ------------------------------------------------------------------------------------- check
def _select_precisions(manifest: Manifest, requested: list[str] | None, backend: str) -> list:
    """The candidate precisions: `requested`, checked against the export, or the default (trt:
    every precision of the export; ort: all but fp32, the reference itself).

    Raises:
        InputError: no fp32 reference, an unknown or absent precision, nothing to compare.
    """
    export_dir = manifest.root
    available = manifest.precisions
    if REFERENCE not in available:
        raise InputError(
            f"{export_dir} has no complete fp32 graphs (precisions: {available}); the check's "
            "reference is the FP32 graphs: re-export with `mlvos export --precision fp32 fp16`"
        )
    precisions = requested
    if precisions is None:
        precisions = [p for p in available if backend == "trt" or p != REFERENCE]
        if not precisions:
            raise InputError(
                f"{export_dir} holds only fp32 graphs, the reference of the onnxruntime check: "
                "export fp16 (`mlvos export --precision fp32 fp16`) or calibrate int8 (`mlvos "
                "calib`), or pass --precision fp32 to compare the reference with itself"
            )
    precisions = list(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in Precision.GRAPHS]
    if unknown:
        raise InputError(
            f"unknown precision(s) {unknown}; choose from {', '.join(Precision.GRAPHS)}"
        )
    missing = [p for p in precisions if p not in available]
    if missing:
        raise InputError(
            f"{export_dir} holds no {', '.join(missing)} graphs (it holds {', '.join(available)}); "
            "export fp16 with `mlvos export --precision fp32 fp16`, int8 with `mlvos calib`"
        )
    return precisions


@clock()
def run_check(
    *,
    model: str | Path,
    out: str | Path | None = None,
    data: str | Path | None = None,
    split: str = "val",
    sequences: list[str] | None = None,
    precisions: list[str] | None = None,
    backend: str = "auto",
    samples: int = DEFAULT_SAMPLES,
    mem_every: int = DEFAULT_MEM_EVERY,
    seed: int = 0,
    threads: int | None = None,
    engine_dir: str | Path | None = None,
    device: int = 0,
    tolerances: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Compare each precision's graphs (or engines) with the FP32 graphs on recorded feeds.

    Args:
        model: export directory (manifest.json with the FP32 graphs).
        out: folder for check.json, feeds/ and outputs/ (default: MODEL/check).
        data: DAVIS-layout dataset to propagate; None: a synthetic video (feeds.SYNTH_*).
        split / sequences: the dataset's split and sequences (default: all of the split).
        precisions: candidates (default: trt, every precision of the export; ort, every one but
            fp32, which would compare the reference with itself).
        backend: "auto" (trt when TensorRT and a CUDA device are there, else ort), "ort", "trt".
        samples: recorded frames (each one feed per graph), >= 1.
        mem_every / threads: the recording propagation's memory period and ORT threads.
        seed: seed of the synthetic video.
        engine_dir / device: TensorRT engine cache folder (default MODEL/engines) and device.
        tolerances: {precision: {"atol" | "rtol" | "label_mismatch": value}} replacing values of
            TOLERANCES (0 demands exact equality).

    Returns:
        The report written to OUT/check.json; report["passed"] is the overall verdict.

    Raises:
        ManifestError, InputError, CalibDataError, MissingDependencyError, NoCudaDeviceError,
        MlvosError (a runner failed).
    """
    start = time.perf_counter()
    require("polygraphy", "export", "mlvos check (Polygraphy's comparator)")
    export_dir = Path(model)
    manifest = Manifest.load(export_dir)
    out_dir = Path(out) if out is not None else export_dir / "check"
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"--samples must be an integer >= 1, got {samples!r}")
    chosen, why = resolve_backend(backend, device)
    precisions = _select_precisions(manifest, precisions, chosen)
    for g in Graph.ALL:
        for p in {REFERENCE, *precisions}:
            manifest.graph(g, p, verify=True)  # ManifestError: missing or modified file
    logger.info(stamped(f"backend {chosen}: {why}; candidates {', '.join(precisions)}"))

    feeds, data_info = record_feeds(
        export_dir, manifest, data=data, split=split, sequences=sequences, samples=samples,
        mem_every=mem_every, seed=seed, threads=threads,
    )
    candidates = {
        p: _trt_candidates(manifest, p, engine_dir, device) if chosen == "trt"
        else _ort_candidates(manifest, p)
        for p in precisions
    }

    from polygraphy.logger import G_LOGGER

    graphs: dict[str, dict[str, Any]] = {p: {} for p in precisions}
    commands: list[str] = []
    feed_files: dict[str, dict[str, str]] = {}
    with G_LOGGER.verbosity(G_LOGGER.ERROR):  # Polygraphy's own progress lines: errors only
        for g in Graph.ALL:
            entries, lines, feed_files[g] = _check_graph(
                manifest, g, feeds[g], {p: candidates[p][g] for p in precisions}, out_dir,
                tolerances,
            )
            for p, entry in entries.items():
                graphs[p][g] = entry
            commands += lines
        read = {p: candidates[p][Graph.READ_DECODER] for p in precisions}
        attention = attention_report(manifest, read, chosen)
    per_precision = {
        p: {
            "passed": all(e["passed"] for e in graphs[p].values()),
            "failed": [
                f"{g}.{n}" for g, e in graphs[p].items()
                for n, o in e["outputs"].items() if not o["passed"]
            ],
        }
        for p in precisions
    }
    report = _report(
        export_dir=export_dir, manifest=manifest, backend=chosen, why=why, data=data_info,
        samples=samples, graphs=graphs, per_precision=per_precision, attention=attention,
        commands=commands, feed_files=feed_files, seconds=time.perf_counter() - start,
    )
    from mlvos.fileio import atomic_write_text, stable_json

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / CHECK_FILE, stable_json(report))
    return report


def _check_graph(
    manifest: Manifest,
    graph: str,
    feeds: list[Feed],
    candidates: dict[str, Candidate],
    out_dir: Path,
    tolerances: dict | None,
) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, str]]:
    """Run one graph's fp32 reference and every candidate on the recorded feeds and compare.

    Returns:
        ({precision: report entry}, the `polygraphy run` lines, {precision: its feed file}).
    """
    files = FeedFiles(out_dir / FEEDS_DIR, manifest, graph, feeds)
    ref_info = manifest.graph(graph, REFERENCE, verify=False)
    ref_feeds = files.path(REFERENCE)
    reference = _guarded(
        f"{graph} fp32 on onnxruntime",
        _run, _ort_runner(ref_info.path, f"ort:{REFERENCE}"), load_feeds(ref_feeds),
    )
    ref_out = out_dir / OUTPUTS_DIR / f"{graph}.{REFERENCE}.json"
    save_results(reference, ref_out)
    commands = [polygraphy_command(ref_info.path, "ort", ref_feeds, save_outputs=ref_out)]
    entries, feed_files = {}, {}
    for p, cand in candidates.items():
        path = files.path(cand.io_precision)
        feed_files[p] = str(path)
        cand_feeds = load_feeds(path)
        if cand.backend == "trt":
            _check_profile(cand, cand_feeds)
        logger.info(stamped(f"{graph}: {p} ({cand.backend}) vs fp32 on {len(cand_feeds)} samples"))
        run = _guarded(f"{graph} {p} on {cand.backend}", _run, cand.runner(), cand_feeds)
        tol = tolerance(p, cand.backend, tolerances)
        outputs = compare_graph(reference, run, tol)
        entries[p] = {
            "file": str(cand.path),
            "io_precision": cand.io_precision,
            "tolerance": tol,
            "outputs": outputs,
            "passed": all(o["passed"] for o in outputs.values()),
        }
        commands.append(polygraphy_command(
            cand.path, cand.backend, path, load_outputs=ref_out,
            limits={n: o["limit"] for n, o in outputs.items() if o["kind"] == "float"},
            unjudged=[n for n, o in outputs.items() if o["kind"] != "float"],
        ))
    return entries, commands, feed_files


def _guarded(what: str, fn, *args):
    """fn(*args); a Polygraphy or backend failure becomes an MlvosError that names the step."""
    from polygraphy.exception import PolygraphyException

    try:
        return fn(*args)
    except MlvosError:
        raise
    except (PolygraphyException, RuntimeError, ValueError) as e:
        raise MlvosError(f"running {what} failed: {e}") from e


def _report(**kw) -> dict[str, Any]:
    from mlvos import __version__

    versions = {}
    for name in ("polygraphy", "onnxruntime", "tensorrt"):
        with contextlib.suppress(Exception):
            if name != "tensorrt" or kw["backend"] == "trt":
                versions[name] = importlib.import_module(name).__version__
    return {
        "format": CHECK_FORMAT,
        "format_version": CHECK_VERSION,
        "mlvos_version": __version__,
        "versions": versions,
        "export_dir": str(kw["export_dir"].resolve()),
        "checkpoint_sha256": (kw["manifest"].data.get("checkpoint") or {}).get("sha256"),
        "backend": kw["backend"],
        "backend_reason": kw["why"],
        "reference": "fp32 graphs on onnxruntime (CPU), Polygraphy OnnxrtRunner",
        "rule": "float outputs: max|candidate - reference| <= atol + rtol * max|reference| over "
        "the samples; labels: share of differing pixels among those whose top-two reference "
        "probabilities differ by > 2 (atol + rtol) <= label_mismatch",
        "data": kw["data"],
        "samples": kw["samples"],
        "precisions": kw["per_precision"],
        "graphs": kw["graphs"],
        "attention": kw["attention"],
        "feeds": kw["feed_files"],
        "polygraphy_commands": kw["commands"],
        "passed": all(v["passed"] for v in kw["per_precision"].values()),
        "seconds": round(kw["seconds"], 1),
    }


# -------------------------------------------------------------------------------------- text
def _sci(x: float | None) -> str:
    return "nan" if x is None else f"{x:.2e}"


def _data_text(data: dict[str, Any]) -> str:
    if data["kind"] == "synthetic":
        h, w = data["size"]
        return f"a synthetic video ({h}x{w}, {data['objects']} objects)"
    return f"{data['root']} ({data['split']}, {len(data['sequences'])} sequence(s))"


def summary_table(report: dict[str, Any]) -> str:
    """The check as text: one row per precision, graph and output; verdicts; attention."""
    head = f"{'precision':<10}{'graph':<16}{'output':<11}{'max abs':>10}{'max|ref|':>10}"
    head += f"{'max rel':>10}{'limit':>10}  result"
    lines = [
        f"mlvos check, backend {report['backend']} ({report['backend_reason']}): "
        f"{', '.join(report['precisions'])} vs fp32 on onnxruntime (CPU), "
        f"{report['samples']} samples recorded from {_data_text(report['data'])}",
        head,
        "-" * len(head),
    ]
    for p, per_graph in report["graphs"].items():
        for g, entry in per_graph.items():
            for n, o in entry["outputs"].items():
                row = f"{p:<10}{g:<16}{n:<11}"
                if o["kind"] == "float":
                    row += f"{_sci(o['max_abs']):>10}{_sci(o['max_ref']):>10}"
                    row += f"{_sci(o['max_rel']):>10}{_sci(o['limit']):>10}"
                else:  # labels: share of differing pixels (decisive ones decide)
                    text = f"mismatch {100 * o['mismatch']:.2f}%"
                    if "decisive_mismatch" in o:
                        text += f", decisive {100 * o['decisive_mismatch']:.2f}%"
                    limit = f"{100 * o['limit']:.2f}%"
                    row += f"{text:>30}{limit:>10}"
                lines.append(f"{row}  {'pass' if o['passed'] else 'FAIL'}")
    lines.append("")
    for p, v in report["precisions"].items():
        failed = f" ({', '.join(v['failed'])})" if v["failed"] else ""
        lines.append(f"{p}: {'PASS' if v['passed'] else 'FAIL'}{failed}")
    claims = {True: "claims fusable", False: "claims not fusable", None: "makes no claim"}
    for p, a in report["attention"].items():
        lines.append(
            f"attention ({p}): {a['status']}; manifest {claims[a['claimed_fusable']]}; "
            f"{a['detail']}"
        )
    lines.append(f"overall: {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)
