"""`export_checkpoint`: checkpoint -> export directory (graphs, manifest, checkpoint copy,
validation report); `check_export`: re-validate an export directory."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlvos.errors import InputError, MlvosError
from mlvos.export.constants import (
    DEFAULT_OPSET,
    DEFAULT_PRECISIONS,
    FEATURE_STRIDE,
    MAX_OPSET,
    MIN_CAPACITY,
    MIN_OPSET,
    PRECISIONS,
    VALIDATION_FILE,
)
from mlvos.export.errors import OutputExistsError, ValidationFailedError
from mlvos.logs import clock, stamped
from mlvos.runtime.manifest import CHECKPOINT_FILE, MANIFEST_FILE, Manifest, graph_entry, graph_file
from mlvos.runtime.spec import DEFAULT_CAPACITY, MIN_SIDE, PIXEL_MEAN, PIXEL_STD, Graph

logger = logging.getLogger(__name__)


def _check_options(
    out: Path,
    capacity: int,
    precisions: Sequence[str],
    size: tuple[int, int] | None,
    opset: int,
    force: bool,
) -> tuple[str, ...]:
    """Argument checks that need no model (they run before anything heavy is imported)."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise InputError(
            f"unknown precision(s) {unknown or '(none given)'}; choose from {', '.join(PRECISIONS)}"
        )
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < MIN_CAPACITY:
        raise InputError(
            f"capacity must be an integer >= {MIN_CAPACITY} (the annotated frame and the previous "
            f"frame), got {capacity!r}"
        )
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(
            f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (TensorRT 10.3 parses "
            f"up to {MAX_OPSET}; FP16 conversion needs >= {MIN_OPSET})"
        )
    if size is not None and (len(size) != 2 or any(v is None for v in size)):
        raise InputError(f"a static size needs both height and width, got {size}")
    if out.exists() and not force:
        raise OutputExistsError(
            f"output directory {out} already exists; pass --force to replace it or choose another"
        )
    # Keep the registry order (fp32 first: fp16 is converted from it) and drop duplicates.
    return tuple(p for p in PRECISIONS if p in precisions)


def _check_size(size: tuple[int, int], stride: int, what: str) -> None:
    h, w = size
    if h % stride or w % stride or h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(
            f"{what} {h}x{w} must be multiples of the model stride {stride} and at least "
            f"{MIN_SIDE}; e.g. mlvos.runtime.spec.padded_size({h}, {w}, {stride}) = "
            f"{-(-h // stride) * stride}x{-(-w // stride) * stride}"
        )


def _check_read_priors(config) -> None:
    from mlvos.export.errors import UnsupportedOpError
    from mlvos.export.trt_ops import TENSORRT_VERSION, TOPK_MAX_K

    if config.read_topk > TOPK_MAX_K:
        raise UnsupportedOpError(
            f"read_topk {config.read_topk} exceeds the K <= {TOPK_MAX_K} that TensorRT "
            f"{TENSORRT_VERSION}'s TopK takes; export with --read-topk {TOPK_MAX_K} or less"
        )


def _attention_note(config) -> str | None:
    """Why the read_decoder's attention is not fusable because of the config (None: it may be)."""
    if not config.read_priors:
        return None
    return (
        f"memory-read priors ({', '.join(config.read_priors)}) put TopK/ArgMax-derived terms "
        "between the Q.K MatMul and the Softmax: TensorRT runs the read unfused (MatMul, "
        "elementwise, Softmax, MatMul)"
    )


def cached_export(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    capacity: int | None = None,
    **options,
) -> tuple[Path, bool]:
    """`out` if it already holds an export of `checkpoint` (same sha256, every precision of
    `precisions`, the same capacity when one is given; graphs added later, e.g. int8 by `mlvos
    calib`, are kept), else export_checkpoint(checkpoint, out, precisions=..., **options) with
    force. Returns (export directory, reused)."""
    from mlvos.fileio import sha256_file

    digest = sha256_file(checkpoint)
    try:
        m = Manifest.load(out)
        same = (m.data.get("checkpoint") or {}).get("sha256") == digest
        if same and set(precisions) <= set(m.precisions) and capacity in (None, m.capacity):
            return Path(out), True
    except (MlvosError, KeyError, TypeError):
        pass
    kwargs = {"capacity": capacity} if capacity else {}
    return export_checkpoint(checkpoint, out, precisions=precisions, force=True, **kwargs,
                             **options), False


@clock()  # progress lines start with the seconds since the export began
def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    capacity: int = DEFAULT_CAPACITY,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    size: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    validate: bool = True,
    representative_size: tuple[int, int] | None = None,
    representative_frames: int = 2,
    representative_objects: int = 2,
    seed: int = 0,
    gate_end_to_end: bool = True,
    read_topk: int | None = None,
    read_kernel: float | None = None,
) -> Path:
    """Export a checkpoint to the three ONNX graphs, write manifest.json, copy the checkpoint,
    and (unless validate=False) validate against PyTorch into validation.json.

    Everything is written into a temporary directory beside `out` and renamed onto it at the end,
    so `out` is either a complete export or untouched. Same inputs -> byte-identical files.

    Args:
        checkpoint: an mlvos checkpoint (mlvos.model.checkpoint.save_checkpoint).
        out: export directory to create.
        capacity: memory-bank slots T of the read_decoder graph (static), >= 2.
        precisions: subset of constants.PRECISIONS.
        size: static padded (H, W), multiples of the model stride; None = dynamic H and W.
        opset: ONNX opset (13..20).
        force: replace an existing `out`.
        validate: compare onnxruntime with PyTorch (validation.json); failures raise.
        representative_size: frame size of the synthetic propagation that provides FP16
            calibration and validation data; default `size`, or 6x10 strides when dynamic.
        representative_frames / representative_objects / seed: that video's length, object
            count and seed.
        gate_end_to_end: see validate.validate_export (False: report, do not fail).
        read_topk / read_kernel: override the checkpoint's memory-read priors (ModelConfig;
            no parameters, no retraining); None keeps them. The manifest's `config` records the
            effective values, and everything that reloads the export's checkpoint applies them.

    Returns:
        Path of the export directory.

    Raises:
        InputError: bad option (precision, capacity, opset, size not a multiple of the stride).
        OutputExistsError: `out` exists and force is False.
        CheckpointError: missing or unreadable checkpoint.
        UnsupportedOpError / ExportError: a graph fails the ONNX or TensorRT checks.
        ValidationFailedError: an output differs from PyTorch beyond tolerance.
    """
    out = Path(out)
    precisions = _check_options(out, capacity, precisions, size, opset, force)

    from mlvos.export.representative import random_samples, record_propagation
    from mlvos.export.validate import summary, validate_export
    from mlvos.fileio import atomic_dir, sha256_file
    from mlvos.model.checkpoint import load_model, with_read_options

    model, state = load_model(checkpoint)
    model = with_read_options(model, topk=read_topk, kernel=read_kernel)
    _check_read_priors(model.config)
    stride = model.stride
    checkpoint = Path(checkpoint)
    logger.info(stamped(f"loaded {checkpoint} (variant {state['variant']}, stride {stride})"))
    if model.config.read_priors:
        logger.info(stamped(
            f"memory-read priors: {', '.join(model.config.read_priors)} (attention not fusable)"
        ))
    if size is not None:
        size = (int(size[0]), int(size[1]))
        _check_size(size, stride, "--height/--width")
        if representative_size is not None and tuple(representative_size) != size:
            raise InputError(
                f"a static export ({size[0]}x{size[1]}) takes representative data of its own "
                f"size; got representative_size={tuple(representative_size)}"
            )
    rep_size = tuple(representative_size or size or (6 * stride, 10 * stride))
    _check_size(rep_size, stride, "representative size")
    # With dynamic H/W the random inputs use another size (and object count) than the real
    # ones, so the validation also exercises the dynamic axes.
    rnd_size = size or (rep_size[0] + stride, rep_size[1] + stride)
    representative = {
        "real": {
            "source": "mlvos.data.synth.synth_sequence propagated by VideoPredictor(TorchRunner)",
            "size": list(rep_size),
            "frames": representative_frames,
            "objects": representative_objects,
            "mem_every": 2,
            "seed": seed,
        },
        "random": {"size": list(rnd_size), "objects": 1, "seed": seed + 1},
    }
    real = record_propagation(
        model,
        height=rep_size[0],
        width=rep_size[1],
        capacity=capacity,
        frames=representative_frames,
        objects=representative_objects,
        mem_every=2,
        seed=seed,
    )
    logger.info(stamped(
        f"recorded a {representative_frames}-frame propagation at {rep_size[0]}x{rep_size[1]}"
    ))

    ckpt_sha = sha256_file(checkpoint)
    precomputed: dict[tuple[str, str, str], list] = {}
    with atomic_dir(out, force=force) as tmp:
        shutil.copyfile(checkpoint, tmp / CHECKPOINT_FILE)
        graphs = {
            graph: _export_one(
                graph,
                model,
                tmp,
                precisions=precisions,
                size=size,
                capacity=capacity,
                opset=opset,
                checkpoint_sha256=ckpt_sha,
                calibration=real.feeds(graph),
                precomputed=precomputed,
            )
            for graph in Graph.ALL
        }
        manifest = _manifest(
            model,
            state,
            checkpoint=checkpoint,
            checkpoint_sha256=ckpt_sha,
            opset=opset,
            capacity=capacity,
            size=size,
            precisions=precisions,
            representative=representative,
            graphs=graphs,
        )
        Manifest.new(tmp, manifest).write()
        logger.info(stamped(f"wrote {MANIFEST_FILE}"))
        if validate:
            rnd = representative["random"]
            samples = {
                "real": real,
                "random": random_samples(
                    model,
                    height=rnd_size[0],
                    width=rnd_size[1],
                    capacity=capacity,
                    objects=rnd["objects"],
                    seed=rnd["seed"],
                ),
            }
            try:
                report = validate_export(
                    tmp, model=model, samples=samples, precomputed=precomputed,
                    gate_end_to_end=gate_end_to_end,
                )
            except ValidationFailedError as e:
                # The export is discarded, but its report is what the user needs to act on.
                kept = out.with_name(f"{out.name}.failed-validation.json")
                shutil.copyfile(tmp / VALIDATION_FILE, kept)
                raise ValidationFailedError(
                    f"{len(e.failures)} validation problem(s); nothing was written "
                    f"to {out}. Report kept in {kept}:\n  - " + "\n  - ".join(e.failures)
                    + "\nRe-export with --no-validate to keep the graphs anyway.",
                    e.failures,
                ) from None
            logger.info(stamped("validated every graph against PyTorch (validation.json)"))
            for line in summary(report):
                logger.info(stamped(f"  {line}"))
    logger.info(stamped(f"export complete: {out}"))
    return out


def _export_one(
    graph: str,
    model,
    folder: Path,
    *,
    precisions: tuple[str, ...],
    size: tuple[int, int] | None,
    capacity: int,
    opset: int,
    checkpoint_sha256: str,
    calibration: list,
    precomputed: dict,
) -> dict[str, dict[str, Any]]:
    """Write one graph's files into `folder`; return its manifest entries by precision."""
    from mlvos.export.fp16 import convert_fp16
    from mlvos.export.io_spec import graph_io
    from mlvos.export.onnx_export import export_graph
    from mlvos.export.onnx_utils import find_attention, io_specs, save_model, stamp_graph
    from mlvos.export.wrappers import build_wrapper

    cfg = model.config
    c4, c8, _ = cfg.query_backbone.feature_channels()
    dims = dict(
        key_dim=cfg.key_dim,
        value_dim=cfg.value_dim,
        skip8_dim=c8,
        skip4_dim=c4,
        capacity=capacity,
        size=size,
        shared_key=cfg.shared_key,
    )
    inputs, outputs = graph_io(graph, "fp32", **dims)
    fp32_model = export_graph(
        build_wrapper(graph, model),
        graph=graph,
        trace_io=graph_io(graph, "fp32", **{**dims, "size": None}),
        inputs=inputs,
        outputs=outputs,
        stride=model.stride,
        opset=opset,
    )
    stamp_graph(fp32_model, graph=graph, precision="fp32", checkpoint_sha256=checkpoint_sha256)
    fp32_path = folder / graph_file(graph, "fp32")
    save_model(fp32_model, fp32_path)  # fp16 is converted from this file
    logger.info(stamped(f"exported {graph} fp32 ({len(fp32_model.graph.node)} nodes)"))
    models = {"fp32": fp32_model}
    extras: dict[str, dict[str, Any]] = {"fp32": {}}
    if "fp16" in precisions:
        inputs16, outputs16 = graph_io(graph, "fp16", **dims)
        result = convert_fp16(
            fp32_path,
            graph=graph,
            calibration=calibration,
            inputs=inputs16,
            outputs=outputs16,
            opset=opset,
            similarity=cfg.similarity,
            plain_attention=not cfg.read_priors,
        )
        if "fp32" in precisions:
            # The conversion ran the fp32 file on the real feeds already (onnxruntime CPU).
            precomputed[(graph, "fp32", "real")] = result.fp32_outputs
        stamp_graph(
            result.model, graph=graph, precision="fp16", checkpoint_sha256=checkpoint_sha256
        )
        save_model(result.model, folder / graph_file(graph, "fp16"))
        models["fp16"] = result.model
        extras["fp16"] = {"fp32_nodes": result.fp32_nodes, "fp16_kept": result.fp16_kept}
        if graph == Graph.READ_DECODER and not cfg.read_priors:
            fusable = find_attention(result.model) is not None
            extras["fp16"]["attention_fusable"] = fusable
            if not fusable:
                logger.warning(
                    stamped("warning: the fp16 memory read stays FP32 (its affinities overflow "
                            "FP16)")
                )
        logger.info(stamped(
            f"converted {graph} to fp16 ({len(result.fp32_nodes)} nodes stay FP32)"
        ))
    note = _attention_note(cfg)
    if graph == Graph.READ_DECODER and note is not None:
        for extra in extras.values():
            extra.update(attention_fusable=False, attention_note=note)
    if "fp32" not in precisions:
        fp32_path.unlink()
        del models["fp32"]
    return {
        precision: graph_entry(
            graph, precision, *io_specs(m), written=folder / graph_file(graph, precision),
            **extras[precision],
        )
        for precision, m in models.items()
    }


def _manifest(
    model,
    state: dict[str, Any],
    *,
    checkpoint: Path,
    checkpoint_sha256: str,
    opset: int,
    capacity: int,
    size: tuple[int, int] | None,
    precisions: tuple[str, ...],
    representative: dict[str, Any],
    graphs: dict[str, Any],
) -> dict[str, Any]:
    from mlvos import __version__
    from mlvos.export.trt_ops import OPSET_RANGE, SOURCE, TENSORRT_VERSION

    cfg = model.config
    return {
        "mlvos_version": __version__,
        "checkpoint": {
            "file": CHECKPOINT_FILE,
            # The original file too, for `--backend torch` users who keep checkpoints elsewhere.
            "source": os.fspath(checkpoint.resolve()),
            "source_name": checkpoint.name,
            "sha256": checkpoint_sha256,
            "variant": state["variant"],
            "stage": state.get("stage"),
            "iteration": state.get("iteration"),
        },
        "config": cfg.to_dict(),
        "opset": opset,
        "stride": model.stride,
        "feature_stride": FEATURE_STRIDE,
        "capacity": capacity,
        "normalization": {
            "mean": list(PIXEL_MEAN),
            "std": list(PIXEL_STD),
            "scale": "0..255",
            "inside_graph": True,
        },
        "padding": {"mode": "center", "value": 0, "multiple": model.stride},
        "key_dim": cfg.key_dim,
        "value_dim": cfg.value_dim,
        "static_size": list(size) if size is not None else None,
        "precisions": list(precisions),
        "representative": representative,
        "tensorrt": {
            "version": TENSORRT_VERSION,
            "opset_range": list(OPSET_RANGE),
            "op_list_source": SOURCE,
        },
        "graphs": graphs,
    }


def check_export(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Re-run the validation of an export directory (files' sha256, every graph vs PyTorch on
    the recorded kinds of inputs) and rewrite its validation.json.

    Raises:
        ManifestError: not an export directory. ValidationFailedError: any check failed.
    """
    from mlvos.export.validate import summary, validate_export

    start = time.perf_counter()
    report = validate_export(export_dir)
    logger.info("[%6.1fs] %s: validation passed", time.perf_counter() - start, export_dir)
    for line in summary(report):
        logger.info("  %s", line)
    return report
