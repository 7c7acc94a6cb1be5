"""Parity of the exported graphs with PyTorch: onnxruntime (CPU) vs the model, per graph, per
precision, on random inputs and on the real inputs of a short synthetic propagation.

validation.json (beside manifest.json):
    format "mlvos-export-validation", format_version 1, passed, tolerances, failures [str],
    files_ok, data {kind: parameters of the inputs},
    graphs {graph: {precision: {kind ("real" / "random"): {cases, passed, outputs {name: {
            max_abs, max_ref, max_rel | mismatch, decisive_fraction, decisive_mismatch,
            passed}}}}}}
`validate_export` builds the report and writes the file; further sections (e.g. an end-to-end
video check) are added to its report dict before it is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mlvos.export.constants import VALIDATION_FILE, VALIDATION_FORMAT, VALIDATION_VERSION
from mlvos.export.errors import ValidationFailedError
from mlvos.export.representative import Samples, random_samples, record_propagation
from mlvos.fileio import atomic_write_text, stable_json
from mlvos.runtime.manifest import Manifest, read_options
from mlvos.runtime.spec import Tensor as T

# |onnx - torch| <= atol + rtol * max|torch| per float output. Labels (argmax slot) are judged
# where the decision is clear: pixels whose top-two slot probabilities (background included)
# differ by more than twice the obj_probs tolerance; there, at most `label_mismatch` of them may
# differ. Near-ties flip under any rounding (an untrained model ties almost everywhere), and an
# obj_probs error inside tolerance may flip them legitimately.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"atol": 1e-4, "rtol": 1e-3, "label_mismatch": 1e-3},
    "fp16": {"atol": 1e-3, "rtol": 3e-2, "label_mismatch": 1e-2},
}


def representative_samples(model, rep: dict[str, Any], capacity: int) -> dict[str, Samples]:
    """Re-create the inputs described by manifest["representative"] with their torch outputs."""
    real, rnd = rep["real"], rep["random"]
    return {
        "real": record_propagation(
            model,
            height=real["size"][0],
            width=real["size"][1],
            capacity=capacity,
            frames=real["frames"],
            objects=real["objects"],
            mem_every=real["mem_every"],
            seed=real["seed"],
        ),
        "random": random_samples(
            model,
            height=rnd["size"][0],
            width=rnd["size"][1],
            capacity=capacity,
            objects=rnd["objects"],
            seed=rnd["seed"],
        ),
    }


def _label_metrics(ref: np.ndarray, got: np.ndarray, obj_probs: np.ndarray | None, tol) -> dict:
    """Labels judged where the decision is clear: the top-two gap exceeds twice obj_probs'
    tolerance (data.metrics.decisive_agreement)."""
    from mlvos.data.metrics import decisive_agreement

    out = decisive_agreement(ref, got, obj_probs, 2.0 * (tol["atol"] + tol["rtol"]))
    return {**out, "passed": out["decisive_mismatch"] <= tol["label_mismatch"]}


def compare_outputs(
    ref: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Per-output error metrics of one case (see TOLERANCES)."""
    out = {}
    for name, r in ref.items():
        g = got[name]
        if r.shape != g.shape:
            out[name] = {"passed": False, "error": f"shape {g.shape} != torch {r.shape}"}
        elif r.dtype == np.uint8:
            out[name] = _label_metrics(r, g, ref.get(T.OBJ_PROBS), tol)
        else:
            r32, g32 = r.astype(np.float32), g.astype(np.float32)
            max_abs = float(np.abs(r32 - g32).max()) if r.size else 0.0
            max_ref = float(np.abs(r32).max()) if r.size else 0.0
            finite = bool(np.isfinite(g32).all())
            out[name] = {
                "max_abs": max_abs,
                "max_ref": max_ref,
                "max_rel": max_abs / max(max_ref, 1e-12),
                "passed": finite and max_abs <= tol["atol"] + tol["rtol"] * max_ref,
            }
            if not finite:
                out[name]["error"] = "non-finite values"
    return out


def _merge(acc: dict[str, dict], case: dict[str, dict]) -> None:
    """Keep the worst value of every metric over the cases."""
    for name, m in case.items():
        if name not in acc:
            acc[name] = dict(m)
            continue
        a = acc[name]
        for k, v in m.items():
            if k == "passed":
                a[k] = a[k] and v
            elif k == "decisive_fraction":
                a[k] = min(a.get(k, v), v)
            elif isinstance(v, float):
                a[k] = max(a.get(k, v), v)
            else:
                a.setdefault(k, v)


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def validate_graphs(
    export_dir: str | os.PathLike,
    manifest: dict[str, Any],
    samples: dict[str, Samples],
    precomputed: dict[tuple[str, str, str], list[dict[str, np.ndarray]]] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Run every graph file of the manifest on `samples` and compare with the torch outputs.

    Args:
        precomputed: {(graph, precision, kind): onnxruntime outputs of the graph file for each
            case of samples[kind]}, for runs already made (the FP16 conversion runs the fp32
            graphs on the real feeds); those cases are not run again.

    Returns:
        (report["graphs"] section, failure lines).
    """
    export_dir = Path(export_dir)
    report: dict[str, Any] = {}
    failures: list[str] = []
    for graph, per_precision in manifest["graphs"].items():
        for precision, entry in per_precision.items():
            tol = TOLERANCES.get(precision)
            if tol is None:
                # int8 (mlvos calib) is judged against FP32 by calibration.json and by the
                # end-to-end section, not by a torch-parity tolerance.
                continue
            session = _session(export_dir / entry["file"])
            dtypes = {t["name"]: np.dtype(t["dtype"]) for t in entry["inputs"]}
            section = report.setdefault(graph, {}).setdefault(precision, {})
            for kind, smp in samples.items():
                cases = smp.cases.get(graph, [])
                metrics: dict[str, dict] = {}
                done = (precomputed or {}).get((graph, precision, kind))
                for i, (feed, ref) in enumerate(cases):
                    if done is not None:
                        got = done[i]
                    else:
                        feed = {
                            k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in feed.items()
                        }
                        names = list(ref)
                        got = dict(zip(names, session.run(names, feed), strict=True))
                    _merge(metrics, compare_outputs(ref, got, tol))
                passed = all(m["passed"] for m in metrics.values())
                section[kind] = {"cases": len(cases), "passed": passed, "outputs": metrics}
                for name, m in metrics.items():
                    if not m["passed"]:
                        if "error" in m:
                            detail = m["error"]
                        elif "decisive_mismatch" in m:
                            detail = (
                                f"{m['decisive_mismatch']:.2%} of the pixels with a clear argmax "
                                f"differ (tolerance {tol['label_mismatch']:.2%})"
                            )
                        else:
                            detail = (
                                f"max |onnx - torch| = {m['max_abs']:.3g} (max |torch| = "
                                f"{m['max_ref']:.3g}, tolerance {tol['atol']:g} + "
                                f"{tol['rtol']:g} * max |torch|)"
                            )
                        failures.append(f"{graph} {precision} {kind} inputs: {name}: {detail}")
    return report, failures


def summary(report: dict[str, Any]) -> list[str]:
    """One line per graph: the worst relative error of each precision over all inputs."""
    lines = []
    for graph, per_precision in report["graphs"].items():
        parts = []
        for precision, kinds in per_precision.items():
            worst = max(
                (m.get("max_rel", 0.0) for k in kinds.values() for m in k["outputs"].values()),
                default=0.0,
            )
            parts.append(f"{precision} max rel err {worst:.2g}")
        lines.append(f"{graph}: " + ", ".join(parts))
    lines += [f"warning (not gated): {w}" for w in report.get("warnings", [])]
    return lines


def validate_export(
    export_dir: str | os.PathLike,
    *,
    model=None,
    samples: dict[str, Samples] | None = None,
    precomputed: dict[tuple[str, str, str], list[dict[str, np.ndarray]]] | None = None,
    raise_on_failure: bool = True,
    gate_end_to_end: bool = True,
) -> dict[str, Any]:
    """Validate an export directory and write its validation.json.

    Args:
        export_dir: directory holding manifest.json, the graphs and checkpoint.pt.
        model: the STMNet the graphs came from; default: loaded from the directory's checkpoint.
        samples: {"real": ..., "random": ...} inputs with torch outputs; default: re-created
            from manifest["representative"] (deterministic).
        precomputed: onnxruntime outputs already computed (see validate_graphs).
        raise_on_failure: raise ValidationFailedError listing every failure.
        gate_end_to_end: False records the end-to-end comparison (its misses go to "warnings")
            without failing on it: for models whose own decisions are near ties (a few minutes
            of training), where any rounding difference flips labels that then propagate.

    Returns:
        The report written to validation.json.

    Raises:
        ManifestError: not an export directory. ValidationFailedError: a file or output failed.
    """
    export_dir = Path(export_dir)
    loaded = Manifest.load(export_dir)  # ManifestError: not an export directory
    manifest = loaded.data
    file_problems = loaded.verify()
    if model is None:
        from mlvos.model.checkpoint import load_model, with_read_options

        model, _ = load_model(export_dir / manifest["checkpoint"]["file"])
        options = read_options(manifest)  # the export may override the checkpoint's priors
        model = with_read_options(
            model, topk=options["read_topk"], kernel=options["read_kernel"]
        )
    if samples is None:
        samples = representative_samples(model, manifest["representative"], manifest["capacity"])
    graphs, graph_failures = validate_graphs(export_dir, manifest, samples, precomputed)
    failures = file_problems + graph_failures
    end_to_end = None
    warnings: list[str] = []
    if not file_problems:
        from mlvos.export.end_to_end import validate_end_to_end

        end_to_end, e2e_failures = validate_end_to_end(export_dir, manifest)
        if gate_end_to_end:
            failures += e2e_failures
        else:
            warnings += e2e_failures
    report = {
        "format": VALIDATION_FORMAT,
        "format_version": VALIDATION_VERSION,
        "passed": not failures,
        "failures": failures,
        "warnings": warnings,
        "files_ok": not file_problems,
        "tolerances": TOLERANCES,
        "data": manifest["representative"],
        "graphs": graphs,
        "end_to_end": end_to_end,
    }
    atomic_write_text(export_dir / VALIDATION_FILE, stable_json(report))
    if failures and raise_on_failure:
        raise ValidationFailedError(
            f"validation of {export_dir} failed ({len(failures)} problem(s)); details in "
            f"{export_dir / VALIDATION_FILE}:\n  - " + "\n  - ".join(failures),
            failures,
        )
    return report
