"""PyTorch reference propagation over a DAVIS-layout dataset (`mlvos infer`), ensembles included.

torch, the runtime and tqdm are imported inside `infer_dataset`, so importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InferResult:
    """What `infer_dataset` wrote: `frames` palette PNGs of `sequences` sequences under `out`, in
    `seconds` of wall-clock time (model loading excluded)."""

    out: Path
    sequences: int
    frames: int
    seconds: float


def infer_dataset(
    *,
    checkpoints: list[str],
    data: str | Path,
    out: str | Path,
    sequences: list[str] | None = None,
    resolution: str = "480p",
    capacity: int,
    mem_every: int | None = None,
    prev_every: int | None = None,
    device: str = "cpu",
    read_topk: int | None = None,
    read_kernel: float | None = None,
    force: bool = False,
) -> InferResult:
    """Propagate every sequence's first-frame annotation through its frames with PyTorch.

    Several checkpoints form the paper's ensemble: the models' soft-aggregated object
    probabilities are averaged, and each model keeps its own memory.

    Args:
        checkpoints: one or more mlvos checkpoint paths.
        data: DAVIS-layout root holding JPEGImages/<resolution> and Annotations/<resolution>.
        out: folder to write, `<seq>/<frame>.png` palette masks (uint8 object ids); written
            atomically, so a failure leaves no partial folder.
        sequences: subset of sequence names; None = every sequence folder, sorted.
        resolution: the dataset's resolution folder name.
        capacity: memory slots (>= 2: the annotated and the previous frame).
        mem_every / prev_every: memory schedule (runtime.VideoPredictor); None = the model's
            (an ensemble's where its members agree, else STM's 5 / 1).
        device: torch device of the models.
        read_topk, read_kernel: memory-read prior overrides (None keeps each checkpoint's).
        force: replace an existing `out` folder.

    Returns:
        An `InferResult` with the counts and the propagation time.

    Raises:
        DatasetError: `data` is not DAVIS-layout, a sequence has no frames or no first-frame
            annotation.
        InputError: `out` exists and `force` is False.
    """
    import time

    from tqdm import tqdm

    from mlvos.errors import DatasetError
    from mlvos.fileio import atomic_dir
    from mlvos.palette import read_frame, read_mask, write_mask
    from mlvos.runtime import predictor
    from mlvos.runtime.backends.ensemble import EnsembleRunner
    from mlvos.runtime.backends.torch_backend import TorchRunner

    members = [
        TorchRunner(c, device=device, capacity=capacity, read_topk=read_topk,
                    read_kernel=read_kernel)
        for c in checkpoints
    ]
    runner = members[0] if len(members) == 1 else EnsembleRunner(members)
    root = Path(data)
    img_root = root / "JPEGImages" / resolution
    ann_root = root / "Annotations" / resolution
    if not img_root.is_dir() or not ann_root.is_dir():
        raise DatasetError(
            f"{root} is not a DAVIS-layout dataset: expected {img_root} and {ann_root}"
        )
    seqs = sequences or sorted(p.name for p in img_root.iterdir() if p.is_dir())
    n_frames, t0 = 0, time.perf_counter()
    with runner, atomic_dir(out, force=force) as tmp:
        for seq in tqdm(seqs, desc="sequences", unit="seq"):
            frames = sorted((img_root / seq).glob("*.jpg"))
            if not frames:
                raise DatasetError(f"sequence {seq}: no .jpg frames in {img_root / seq}")
            first = ann_root / seq / (frames[0].stem + ".png")
            if not first.is_file():
                raise DatasetError(f"sequence {seq}: first-frame annotation {first} is missing")
            preds = predictor.propagate(
                runner, (read_frame(f) for f in frames), read_mask(first), mem_every=mem_every,
                prev_every=prev_every,
            )
            for f, pred in zip(frames, preds):
                write_mask(tmp / seq / (f.stem + ".png"), pred)
                n_frames += 1
    return InferResult(Path(out), len(seqs), n_frames, time.perf_counter() - t0)
