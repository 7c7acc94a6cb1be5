"""`mlvos model info` and `mlvos model init`."""

from __future__ import annotations

import argparse

READ_PRIORS_NOTE = """\
Memory-read priors against look-alike objects (ModelConfig; off in every variant; no parameters,
so `mlvos infer` and `mlvos export` set them on any checkpoint: --read-topk K --read-kernel SIGMA):
  top-k (STCN; read_topk=K): each query position reads only its K most similar memory positions,
    so many weak matches (a look-alike instance elsewhere in the frame) cannot add up to one
    strong one. Cost: a TopK over the T*h*w memory positions of every query position, and a
    compare and select on the affinity matrix.
  kernel (KMN, Seong et al. 2020; read_kernel=SIGMA): every memory position finds the query
    position it matches best and lends its weight mainly within a Gaussian of SIGMA feature cells
    (stride 16) around it, so a look-alike object away from the target gets little of the
    target's memory. Cost: an ArgMax over the affinity matrix and two elementwise passes on it.
  With either, TensorRT cannot fuse the read's attention (manifest: attention_fusable false)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model variants: sizes, costs, untrained checkpoints")
    msub = p.add_subparsers(dest="model_command", metavar="<model-command>")

    info = msub.add_parser("info", help="parameters and GMACs per stage for each variant")
    info.add_argument("--variant", nargs="*", default=None, help="variants (default: all)")
    info.add_argument("--height", type=int, default=480)
    info.add_argument("--width", type=int, default=864)
    info.add_argument("--capacity", type=int, default=None, help="memory slots for the read cost")
    info.add_argument("--objects", type=int, default=1, help="objects for the per-frame total")
    info.set_defaults(func=main_info)

    init = msub.add_parser(
        "init", help="write a seeded, untrained (or ImageNet-initialized) checkpoint"
    )
    init.add_argument("--variant", required=True)
    init.add_argument("--out", required=True, help="checkpoint path to write")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument(
        "--imagenet-weights",
        default=None,
        metavar="PATH",
        help="a torchvision ResNet ImageNet state dict you downloaded; loaded into every backbone",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    init.set_defaults(func=main_init)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def main_info(args: argparse.Namespace) -> int:
    from mlvos.model.flops import stage_costs
    from mlvos.model.registry import get_config, variants
    from mlvos.runtime.spec import DEFAULT_CAPACITY

    names = args.variant or variants()
    for v in names:
        get_config(v)  # unknown names fail before any work
    cap = args.capacity or DEFAULT_CAPACITY
    print(
        f"GMACs at {args.height}x{args.width} (padded to the stride); memory stage per object; "
        f"read+decode per object over {cap} memory frames; "
        f"frame total with {args.objects} object(s)"
    )
    header = (
        f"{'variant':<10} {'params (M)':>10} {'stride':>6} {'padded':>9} {'query':>8} "
        f"{'memory':>8} {'read+dec':>9} {'frame':>8}"
    )
    print(header)
    print("-" * len(header))
    for v in names:
        c = stage_costs(v, args.height, args.width, cap)
        print(
            f"{v:<10} {c.params_m:>10.2f} {c.stride:>6} {f'{c.height}x{c.width}':>9} "
            f"{c.query_gmac:>8.1f} {c.memory_gmac:>8.1f} {c.read_decode_gmac:>9.1f} "
            f"{c.per_frame(args.objects):>8.1f}"
        )
    print()
    print(READ_PRIORS_NOTE)
    return 0


def main_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mlvos.errors import InputError
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.pretrained import load_imagenet_weights
    from mlvos.model.registry import build_model

    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out} already exists; pass --force to overwrite it")
    model = build_model(args.variant, seed=args.seed)
    stage = "init"
    if args.imagenet_weights:
        n = load_imagenet_weights(model, args.imagenet_weights)
        stage = "imagenet"
        print(f"loaded {n} ImageNet tensors from {args.imagenet_weights}")
    save_checkpoint(out, model, stage=stage, iteration=0, extra={"seed": args.seed})
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} (variant {args.variant}, {n / 1e6:.2f} M parameters, seed {args.seed})")
    return 0
