"""`mlvos infer`: PyTorch reference propagation over a DAVIS-layout dataset (ensembles too)."""

from __future__ import annotations

import argparse

from mlvos.model.config import add_read_prior_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "infer",
        help="PyTorch reference propagation over a DAVIS-layout dataset, writing palette PNGs",
        description="Several --checkpoint files form the paper's ensemble (the models' "
        "soft-aggregated object probabilities are averaged; each model keeps its own memory).",
    )
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more checkpoints")
    p.add_argument(
        "--data", required=True, help="DAVIS-layout root (JPEGImages/480p, Annotations/480p)"
    )
    p.add_argument("--out", required=True, help="output folder of sequence folders of PNGs")
    p.add_argument(
        "--sequences", nargs="*", default=None, help="subset of sequences (default: all)"
    )
    p.add_argument("--resolution", default="480p")
    p.add_argument("--capacity", type=int, default=None, help="memory slots (default from spec)")
    p.add_argument("--mem-every", type=int, default=None, help="permanent memory period")
    p.add_argument("--device", default="cpu")
    add_read_prior_arguments(p)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from tqdm import tqdm

    from mlvos.errors import DatasetError, InputError
    from mlvos.fileio import atomic_dir
    from mlvos.palette import read_frame, read_mask, write_mask
    from mlvos.runtime.backends.ensemble import EnsembleRunner
    from mlvos.runtime.backends.torch_backend import TorchRunner
    from mlvos.runtime.predictor import propagate
    from mlvos.runtime.spec import DEFAULT_CAPACITY, DEFAULT_MEM_EVERY

    capacity = args.capacity or DEFAULT_CAPACITY
    if capacity < 2:
        raise InputError(f"--capacity must be >= 2 (annotated + previous frame), got {capacity}")
    members = [
        TorchRunner(c, device=args.device, capacity=capacity, read_topk=args.read_topk,
                    read_kernel=args.read_kernel)
        for c in args.checkpoint
    ]
    runner = members[0] if len(members) == 1 else EnsembleRunner(members)
    root = Path(args.data)
    img_root = root / "JPEGImages" / args.resolution
    ann_root = root / "Annotations" / args.resolution
    if not img_root.is_dir() or not ann_root.is_dir():
        raise DatasetError(
            f"{root} is not a DAVIS-layout dataset: expected {img_root} and {ann_root}"
        )
    seqs = args.sequences or sorted(p.name for p in img_root.iterdir() if p.is_dir())
    n_frames, t0 = 0, time.perf_counter()
    with runner, atomic_dir(args.out, force=args.force) as out:
        for seq in tqdm(seqs, desc="sequences", unit="seq"):
            frames = sorted((img_root / seq).glob("*.jpg"))
            if not frames:
                raise DatasetError(f"sequence {seq}: no .jpg frames in {img_root / seq}")
            first = ann_root / seq / (frames[0].stem + ".png")
            if not first.is_file():
                raise DatasetError(f"sequence {seq}: first-frame annotation {first} is missing")
            preds = propagate(
                runner,
                (read_frame(f) for f in frames),
                read_mask(first),
                mem_every=args.mem_every or DEFAULT_MEM_EVERY,
            )
            for f, pred in zip(frames, preds):
                write_mask(out / seq / (f.stem + ".png"), pred)
                n_frames += 1
    dt = time.perf_counter() - t0
    print(
        f"wrote {n_frames} masks for {len(seqs)} sequences to {args.out} ({n_frames / dt:.1f} FPS)"
    )
    return 0
