"""End-to-end check of an export: a synthetic video propagated by the runtime's frame loop on the
exported graphs (onnxruntime CPU) against the PyTorch reference, per-frame mask IoU.

What each comparison proves:
- ort fp32 vs torch fp32: the exported graphs and the runtime's loop (padding, memory schedule,
  aggregation, id mapping) reproduce the model. Bar: IoU >= 0.995 on every frame.
- ort fp16 vs torch fp32: the mixed-precision graph conversion (casts, FP32 islands, float16
  bank) keeps the masks. onnxruntime's x86 CPU kernels upcast most fp16 ops to fp32, so this
  tests the conversion's storage rounding, not fp16 arithmetic. Bar: IoU >= 0.99 on every frame.
- torch bf16 (CPU) vs torch fp32: the model's own sensitivity to reduced-precision arithmetic,
  the part a GPU fp16 run adds and onnxruntime CPU cannot show. Reported, not gated.
An untrained checkpoint (stage "init"/"imagenet") predicts near-ties almost everywhere, where
even 1e-6 of rounding flips labels and the flips propagate through memory; its comparisons are
reported but not gated (fp32 typically still reaches ~0.99).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlvos.data.metrics import label_map_iou
from mlvos.runtime.spec import Precision

BARS = {"fp32": 0.995, "fp16": 0.99}
UNTRAINED_STAGES = ("init", "imagenet")


def _propagate(runner, video, mem_every: int) -> list[np.ndarray]:
    from mlvos.runtime.predictor import propagate

    # prev_every=1 whatever the model's schedule: every frame runs all three graphs
    return list(propagate(runner, (f for f, _ in video), video[0][1], mem_every=mem_every,
                          prev_every=1))


def validate_end_to_end(
    export_dir: str | Path,
    manifest: dict[str, Any],
    *,
    frames: int = 6,
    objects: int = 2,
    size: tuple[int, int] | None = None,
    mem_every: int = 2,
    seed: int = 1,
    bf16: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """Propagate one synthetic video with every exported precision and compare with PyTorch.

    Returns:
        (report section, failures).
    """
    from mlvos.data.synth import synth_sequence
    from mlvos.runtime.backends import open_runner
    from mlvos.runtime.backends.torch_backend import TorchRunner
    from mlvos.runtime.manifest import read_options

    export_dir = Path(export_dir)
    rep = manifest.get("representative", {})
    h, w = size or manifest.get("static_size") or rep.get("real", {}).get("size") or (192, 320)
    video = list(synth_sequence(seed, frames, int(h), int(w), num_objects=objects))
    stage = manifest.get("checkpoint", {}).get("stage", "unknown")
    untrained = stage in UNTRAINED_STAGES
    with open_runner(export_dir, backend="torch") as runner:
        reference = _propagate(runner, video, mem_every)

    def compare(labels: list[np.ndarray]) -> dict[str, Any]:
        ious = [label_map_iou(r, x) for r, x in zip(reference[1:], labels[1:])]
        return {"per_frame_iou": [round(v, 6) for v in ious], "min_iou": min(ious, default=1.0)}

    section: dict[str, Any] = {
        "video": {"frames": frames, "size": [int(h), int(w)], "objects": objects, "seed": seed,
                  "mem_every": mem_every, "generator": "mlvos.data.synth.synth_sequence"},
        "checkpoint_stage": stage,
        "bars": BARS,
        "comparisons": {},
    }
    failures: list[str] = []
    precisions = [p for p in Precision.GRAPHS if p in _precisions(manifest)]
    for precision in precisions:
        with open_runner(export_dir, backend="ort", precision=precision) as runner:
            result = compare(_propagate(runner, video, mem_every))
        bar = BARS.get(precision)
        gated = bar is not None and not untrained
        result.update(bar=bar, gated=gated, passed=bar is None or result["min_iou"] >= bar)
        if gated and not result["passed"]:
            failures.append(
                f"end to end: ort {precision} vs torch fp32 min per-frame IoU "
                f"{result['min_iou']:.4f} < {bar}"
            )
        if not gated and bar is not None:
            result["note"] = "untrained checkpoint: near-tie predictions; reported, not gated"
        section["comparisons"][f"ort_{precision}_vs_torch_fp32"] = result
    if bf16:
        ckpt = export_dir / manifest["checkpoint"]["file"]
        runner = TorchRunner(
            ckpt, precision="bf16", capacity=int(manifest["capacity"]), **read_options(manifest)
        )
        with runner:
            result = compare(_propagate(runner, video, mem_every))
        result.update(gated=False, note="model sensitivity to bf16 arithmetic (CPU); reported")
        section["comparisons"]["torch_bf16_vs_torch_fp32"] = result
    section["passed"] = not failures
    return section, failures


def _precisions(manifest: dict[str, Any]) -> set[str]:
    graphs = manifest.get("graphs", {})
    sets = [set(v) for v in graphs.values()]
    return set.intersection(*sets) if sets else set()
