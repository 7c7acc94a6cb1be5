"""`mlvos demo` (what `make demo` runs): the whole product on this CPU in a few minutes.

1. make a small synthetic validation set (DAVIS layout, exact ground truth),
2. train the `tiny` model briefly on synthetic data (or reuse the cached checkpoint),
3. export it to ONNX (or reuse the cached export of the same checkpoint),
4. propagate the first-frame masks with the onnxruntime backend,
5. print J&F next to the copy-first-mask baseline, and FPS.

Everything is cached under --cache (default .cache/demo), so a second run only repeats 4-5.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="synthetic video -> train tiny -> export -> ORT propagation -> J&F"
    )
    p.add_argument("--cache", default=".cache/demo", help="cache folder (data, checkpoint, export)")
    p.add_argument("--sequences", type=int, default=3)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--seed", type=int, default=2026, help="seed of the validation videos")
    p.add_argument("--train-minutes", type=float, default=4.0, help="training budget (first run)")
    p.add_argument("--retrain", action="store_true", help="ignore the cached checkpoint")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import numpy as np

    from mlvos.data.datasets import DavisDataset
    from mlvos.data.evaluate import copy_first_mask_baseline, evaluate_folders
    from mlvos.data.palette import write_mask
    from mlvos.data.synth import make_synthetic_dataset
    from mlvos.fileio import atomic_dir
    from mlvos.runtime.loader import open_runner
    from mlvos.runtime.manifest import Manifest, sha256_file
    from mlvos.runtime.predictor import VideoPredictor

    cache = Path(args.cache)
    data = cache / f"val-{args.sequences}x{args.frames}-s{args.seed}"
    ckpt = cache / "tiny.pt"
    export_dir = cache / "export"
    t_start = time.perf_counter()

    def step(msg: str) -> None:
        print(f"[demo {time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    if not data.exists():
        step(f"1/5 making {args.sequences} synthetic videos x {args.frames} frames -> {data}")
        make_synthetic_dataset(
            data, sequences=args.sequences, frames=args.frames, seed=args.seed, progress=True
        )
    else:
        step(f"1/5 reusing synthetic videos in {data}")

    if args.retrain or not ckpt.exists():
        from mlvos.model.train.demo import train_demo_model

        step(f"2/5 training tiny for {args.train_minutes:g} min on synthetic clips -> {ckpt}")
        train_demo_model(ckpt, minutes=args.train_minutes)
    else:
        step(f"2/5 reusing checkpoint {ckpt} (--retrain to train again)")

    digest = sha256_file(ckpt)
    fresh = False
    try:
        fresh = Manifest.load(export_dir).data["checkpoint"]["sha256"] == digest
    except Exception:
        fresh = False
    if not fresh:
        from mlvos.export.api import export_checkpoint

        step(f"3/5 exporting to ONNX (fp32, validated against PyTorch) -> {export_dir}")
        # Per-graph validation gates; the end-to-end comparison is reported, not gated: a
        # model trained for minutes decides many pixels by near ties, which any rounding flips.
        export_checkpoint(ckpt, export_dir, precisions=("fp32",), force=True,
                          gate_end_to_end=False)
        e2e = json.loads((export_dir / "validation.json").read_text())["end_to_end"]
        ious = {k: round(v["min_iou"], 4) for k, v in e2e["comparisons"].items()}
        step(f"   end-to-end min per-frame IoU vs PyTorch fp32 (reported): {ious}")
    else:
        step(f"3/5 reusing export in {export_dir}")

    pred_dir = cache / "pred-ort"
    step("4/5 propagating with onnxruntime (CPU)")
    dataset = DavisDataset(data, split="val")
    n_frames, busy = 0, 0.0
    with open_runner(export_dir, backend="ort", threads=args.threads) as runner, atomic_dir(
        pred_dir, force=True
    ) as out:
        for seq in dataset:
            predictor = VideoPredictor(runner, profile=True)
            predictor.add_mask(0, seq.first_mask())
            for i in range(len(seq)):
                labels = predictor.step(seq.read_frame(i))
                write_mask(out / seq.name / f"{seq.frames[i].stem}.png", labels)
            busy += float(np.sum(predictor.timings["total"]))
            n_frames += len(seq)
    fps = n_frames / (busy / 1e3)

    step("5/5 scoring with the DAVIS 2017 protocol")
    gt = data / "Annotations" / "480p"
    baseline_dir = copy_first_mask_baseline(gt, cache / "pred-copy-first", force=True)
    ours = evaluate_folders(gt, pred_dir).summary()
    base = evaluate_folders(gt, baseline_dir).summary()
    print()
    print(f"{'method':<34} {'J&F':>6} {'J':>6} {'F':>6}")
    print(f"{'copy first-frame mask (baseline)':<34} " + _fmt(base))
    print(f"{'tiny, ONNX fp32 on onnxruntime CPU':<34} " + _fmt(ours))
    print(f"\n{n_frames} frames, {fps:.2f} FPS in the predictor (480p, {args.sequences} videos); "
          f"total demo time {time.perf_counter() - t_start:.0f} s")
    return 0


def _fmt(s: dict[str, float]) -> str:
    return f"{100 * s['J&F-Mean']:6.1f} {100 * s['J-Mean']:6.1f} {100 * s['F-Mean']:6.1f}"
