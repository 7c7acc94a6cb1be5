"""The `mlvos demo` pipeline (what `make demo` runs): the whole product on this CPU in a few
minutes.

1. make two validation sets with exact ground truth (DAVIS layout): the standard natural
   validation set (12 x 40 natural-looking videos from the held-out validation photographs,
   installed from Debian packages on first use; the same files as `make natural-val`) and a few
   procedural synthetic videos,
2. train the `tiny` model briefly on natural + synthetic clips (or reuse the cached checkpoint),
3. export it to ONNX, fp32 and fp16 (or reuse the cached export of the same checkpoint),
4. check the fp16 graphs against the fp32 ones on recorded real feeds (`mlvos check`),
5. propagate the first-frame masks with the onnxruntime backend (fp32),
6. print J&F next to the copy-first-mask baseline on each set, and FPS.

Everything is cached under `cache` (`mlvos demo --cache`, default .cache/demo), so a second run
only repeats 4-6.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def run_demo(
    *,
    cache: str | Path,
    sequences: int,
    natural: int,
    frames: int,
    seed: int,
    natural_frames: int,
    natural_seed: int,
    photos: str | None,
    train_minutes: float,
    retrain: bool,
    threads: int | None,
) -> bool:
    """Run the six steps above: progress to the logger mlvos.demo (stdout under `mlvos demo`),
    then the J&F / FPS table printed to stdout. Returns whether the fp16 check passed (the run
    goes on to the scores either way).

    Args:
        cache: folder for the validation sets, checkpoint (tiny.pt), export and predictions.
        sequences: synthetic validation videos.
        natural: natural validation videos.
        frames: frames per synthetic validation video.
        natural_frames: frames per natural validation video (12 x 40 with seed 2027 is the
            standard natural validation set, the one the accuracy bars are measured on).
        seed: seed of the synthetic videos.
        natural_seed: seed of the natural videos.
        photos: photo folder; None = $MLVOS_PHOTOS or ~/.cache/mlvos/photos (installed on
            first use). Training uses its train split, the natural videos its val split.
        train_minutes: training budget when the cached checkpoint cannot be reused.
        retrain: train again even if the cached checkpoint matches.
        threads: CPU threads for onnxruntime (None = its default).
    """
    import json
    import time

    import numpy as np

    from mlvos.data.datasets import DavisDataset
    from mlvos.data.evaluate import copy_first_mask_baseline, evaluate_folders
    from mlvos.data.natural import make_natural_dataset
    from mlvos.data.photos import PhotoLibrary, resolve_photos_dir
    from mlvos.data.synth import make_synthetic_dataset
    from mlvos.fileio import atomic_dir, sha256_file
    from mlvos.palette import write_mask
    from mlvos.runtime.backends import open_runner
    from mlvos.runtime.manifest import Manifest
    from mlvos.runtime.predictor import VideoPredictor

    cache = Path(cache)
    ckpt = cache / "tiny.pt"
    export_dir = cache / "export"
    t_start = time.perf_counter()

    def step(msg: str) -> None:
        logger.info("[demo %6.1fs] %s", time.perf_counter() - t_start, msg)

    photos_dir = resolve_photos_dir(photos)
    natural_dir = cache / f"natural-{natural}x{natural_frames}-s{natural_seed}"
    synth_dir = cache / f"val-{sequences}x{frames}-s{seed}"
    sets = {"natural": natural_dir, "synthetic": synth_dir}
    if not natural_dir.exists():
        step(f"1/6 making {natural} natural videos x {natural_frames} frames -> {natural_dir}")
        make_natural_dataset(natural_dir, PhotoLibrary(photos_dir, split="val"),
                             sequences=natural, frames=natural_frames, seed=natural_seed,
                             progress=True)
    if not synth_dir.exists():
        step(f"1/6 making {sequences} synthetic videos x {frames} frames -> {synth_dir}")
        make_synthetic_dataset(
            synth_dir, sequences=sequences, frames=frames, seed=seed, progress=True
        )
    step(f"1/6 validation videos ready: {natural_dir}, {synth_dir}")

    from mlvos.model.train.demo import is_cached_demo_model, train_demo_model

    # A checkpoint of an older recipe (or other minutes/photos) is retrained, not reused.
    if retrain or not is_cached_demo_model(ckpt, minutes=train_minutes,
                                           photos=str(photos_dir)):
        step(f"2/6 training tiny for {train_minutes:g} min on natural + synthetic clips "
             f"-> {ckpt}")
        train_demo_model(ckpt, minutes=train_minutes, photos=str(photos_dir), force=True)
    else:
        step(f"2/6 reusing checkpoint {ckpt} (--retrain to train again)")

    digest = sha256_file(ckpt)
    fresh = False
    try:
        made = Manifest.load(export_dir)
        fresh = made.data["checkpoint"]["sha256"] == digest and "fp16" in made.precisions
    except Exception:
        fresh = False
    if not fresh:
        from mlvos.export.api import export_checkpoint

        step(f"3/6 exporting to ONNX (fp32 + fp16, validated against PyTorch) -> {export_dir}")
        # Per-graph validation gates; the end-to-end comparison is reported, not gated: a
        # model trained for minutes decides many pixels by near ties, which any rounding flips.
        export_checkpoint(ckpt, export_dir, precisions=("fp32", "fp16"), force=True,
                          gate_end_to_end=False)
        e2e = json.loads((export_dir / "validation.json").read_text())["end_to_end"]
        ious = {k: round(v["min_iou"], 4) for k, v in e2e["comparisons"].items()}
        step(f"   end-to-end min per-frame IoU vs PyTorch fp32 (reported): {ious}")
    else:
        step(f"3/6 reusing export in {export_dir}")

    from mlvos.profiling.compare import run_check, summary_table

    step("4/6 numerics: fp16 graphs vs fp32 on recorded feeds (`mlvos check`)")
    check = run_check(model=export_dir, out=cache / "check", precisions=["fp16"], backend="ort",
                      threads=threads)
    for line in summary_table(check).splitlines():
        if line.strip() and "polygraphy run" not in line and not line.startswith("repeat by"):
            logger.info("   %s", line)
    step(f"   fp16 vs fp32: {'PASS' if check['passed'] else 'FAIL'} "
         f"(details and the polygraphy commands: {cache / 'check' / 'check.json'})")

    step("5/6 propagating with onnxruntime (CPU)")
    n_frames, busy = 0, 0.0
    with open_runner(export_dir, backend="ort", threads=threads) as runner:
        for name, data in sets.items():
            with atomic_dir(cache / f"pred-ort-{name}", force=True) as out:
                for seq in DavisDataset(data, split="val"):
                    predictor = VideoPredictor(runner, profile=True)
                    predictor.add_mask(0, seq.first_mask())
                    for i in range(len(seq)):
                        labels = predictor.step(seq.read_frame(i))
                        write_mask(out / seq.name / f"{seq.frames[i].stem}.png", labels)
                    busy += float(np.sum(predictor.timings["total"]))
                    n_frames += len(seq)
    fps = n_frames / (busy / 1e3)

    step("6/6 scoring with the DAVIS 2017 protocol")
    print()
    print(f"{'videos':<10} {'method':<34} {'J&F':>6} {'J':>6} {'F':>6}")
    for name, data in sets.items():
        gt = data / "Annotations" / "480p"
        baseline_dir = copy_first_mask_baseline(gt, cache / f"pred-copy-first-{name}",
                                                force=True)
        ours = evaluate_folders(gt, cache / f"pred-ort-{name}").summary()
        base = evaluate_folders(gt, baseline_dir).summary()
        print(f"{name:<10} {'copy first-frame mask (baseline)':<34} " + _fmt(base))
        print(f"{name:<10} {'tiny, ONNX fp32 on onnxruntime CPU':<34} " + _fmt(ours))
    print(f"\n{n_frames} frames, {fps:.2f} FPS in the predictor (480p); "
          f"total demo time {time.perf_counter() - t_start:.0f} s")
    if not check["passed"]:
        logger.warning(f"the fp16 graphs failed the numerics check: {cache / 'check'}")
    return bool(check["passed"])


def _fmt(s: dict[str, float]) -> str:
    return f"{100 * s['J&F-Mean']:6.1f} {100 * s['J-Mean']:6.1f} {100 * s['F-Mean']:6.1f}"
