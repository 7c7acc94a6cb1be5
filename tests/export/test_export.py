"""Export of the tiny variant: I/O contract, dynamic axes, masking, FP16, determinism, --check.

One export (dynamic H/W, capacity 4, fp32 + fp16, validated) is shared by the whole module.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mlvos.errors import InputError
from mlvos.export import check_export, export_checkpoint
from mlvos.export import cli as export_cli
from mlvos.export.constants import VALIDATION_FILE
from mlvos.export.errors import ValidationFailedError
from mlvos.export.onnx_utils import find_attention, io_specs
from mlvos.export.representative import record_propagation
from mlvos.export.wrappers import build_wrapper
from mlvos.fileio import sha256_file
from mlvos.model.checkpoint import load_model, save_checkpoint
from mlvos.model.registry import build_model
from mlvos.runtime.manifest import MANIFEST_FILE
from mlvos.runtime.spec import Graph
from mlvos.runtime.spec import Tensor as T

CAPACITY = 4
SIZE = (64, 96)  # representative (real-data) size; random validation runs at 96x128


@pytest.fixture(scope="module")
def one_thread():
    # Small CPU convolutions are much faster on one OpenMP thread on a 2-vCPU machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_thread, decisive_tiny) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, decisive_tiny())
    return path


def _export(checkpoint: Path, out: Path, **kw) -> Path:
    return export_checkpoint(
        checkpoint,
        out,
        capacity=CAPACITY,
        representative_size=SIZE,
        representative_frames=3,
        **kw,
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, checkpoint) -> Path:
    return _export(checkpoint, tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="module")
def manifest(export_dir) -> dict:
    return json.loads((export_dir / MANIFEST_FILE).read_text())


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)[0]


def _session(export_dir: Path, graph: str, precision: str) -> ort.InferenceSession:
    path = export_dir / f"{graph}.{precision}.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(model, graph: str, feed: dict) -> dict:
    wrapper = build_wrapper(graph, model)
    with torch.no_grad():
        outs = wrapper(*(torch.from_numpy(feed[n]) for n in wrapper.input_names))
    return {n: o.numpy() for n, o in zip(wrapper.output_names, outs, strict=True)}


def _random_feed(model, graph: str, objects: int, height: int, width: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cfg = model.config
    c4, c8, _ = cfg.query_backbone.feature_channels()
    h, w = height // 16, width // 16
    frame = rng.integers(0, 256, (1, 3, height, width), dtype=np.uint8)
    if graph == Graph.QUERY_ENCODER:
        return {T.FRAME: frame}
    if graph == Graph.MEMORY_ENCODER:
        feed = {T.FRAME: frame, T.PROBS: rng.random((objects, height, width), dtype=np.float32)}
        if cfg.shared_key:
            feed[T.QUERY_KEY] = rng.standard_normal((1, cfg.key_dim, h, w)).astype(np.float32)
        return feed
    valid = np.ones((objects, CAPACITY), np.float32)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return {
        T.QUERY_KEY: normal(1, cfg.key_dim, h, w),
        T.QUERY_VALUE: normal(1, cfg.value_dim, h, w),
        T.SKIP8: normal(1, c8, 2 * h, 2 * w),
        T.SKIP4: normal(1, c4, 4 * h, 4 * w),
        T.BANK_KEY: normal(1 if cfg.shared_key else objects, CAPACITY, cfg.key_dim, h, w),
        T.BANK_VALUE: normal(objects, CAPACITY, cfg.value_dim, h, w),
        T.BANK_VALID: valid,
    }


# ------------------------------------------------------------------------------ I/O contract
EXPECTED_NAMES = {
    Graph.QUERY_ENCODER: (
        [T.FRAME],
        [T.QUERY_KEY, T.QUERY_VALUE, T.SKIP8, T.SKIP4],
    ),
    # tiny shares keys: its memory graph takes the frame's query key (STM models: frame, probs)
    Graph.MEMORY_ENCODER: ([T.FRAME, T.PROBS, T.QUERY_KEY], [T.MEM_KEY, T.MEM_VALUE]),
    Graph.READ_DECODER: (
        [T.QUERY_KEY, T.QUERY_VALUE, T.SKIP8, T.SKIP4, T.BANK_KEY, T.BANK_VALUE, T.BANK_VALID],
        [T.LOGITS, T.OBJ_PROBS, T.LABELS],
    ),
}


def test_manifest_header(manifest, checkpoint):
    assert manifest["format"] == "mlvos-export" and manifest["format_version"] == 1
    assert manifest["opset"] == 17 and manifest["stride"] == 32 and manifest["feature_stride"] == 16
    assert manifest["capacity"] == CAPACITY and manifest["static_size"] is None
    assert manifest["padding"] == {"mode": "center", "value": 0, "multiple": 32}
    assert manifest["normalization"]["inside_graph"] is True
    assert manifest["key_dim"] == 32 and manifest["value_dim"] == 64
    ck = manifest["checkpoint"]
    assert ck["file"] == "checkpoint.pt" and ck["variant"] == "tiny"
    assert ck["source"] == str(checkpoint.resolve()) and ck["sha256"] == sha256_file(checkpoint)
    assert manifest["precisions"] == ["fp32", "fp16"]
    assert set(manifest["graphs"]) == set(Graph.ALL)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("graph", Graph.ALL)
def test_graph_io_matches_manifest(export_dir, manifest, graph, precision):
    entry = manifest["graphs"][graph][precision]
    model = onnx.load(str(export_dir / entry["file"]))
    inputs, outputs = io_specs(model)
    assert [s.to_dict() for s in inputs] == entry["inputs"]
    assert [s.to_dict() for s in outputs] == entry["outputs"]
    names_in, names_out = EXPECTED_NAMES[graph]
    assert [s.name for s in inputs] == names_in and [s.name for s in outputs] == names_out
    shapes = {s.name: s.shape for s in [*inputs, *outputs]}
    dtypes = {s.name: s.dtype for s in [*inputs, *outputs]}
    half = "float16" if precision == "fp16" else "float32"
    if graph == Graph.QUERY_ENCODER:
        assert shapes[T.FRAME] == (1, 3, "H", "W") and dtypes[T.FRAME] == "uint8"
        assert shapes[T.QUERY_KEY] == (1, 32, "H/16", "W/16")
        assert shapes[T.SKIP8] == (1, 32, "H/8", "W/8")
        assert shapes[T.SKIP4] == (1, 32, "H/4", "W/4")
        assert dtypes[T.QUERY_VALUE] == half
    elif graph == Graph.MEMORY_ENCODER:
        assert shapes[T.PROBS] == ("O", "H", "W") and dtypes[T.PROBS] == "float32"
        assert shapes[T.MEM_VALUE] == ("O", 64, "H/16", "W/16") and dtypes[T.MEM_KEY] == half
        # tiny's keys are its query keys: once per frame, not per object
        assert shapes[T.MEM_KEY] == (1, 32, "H/16", "W/16")
    else:
        # the object-free key bank: one affinity per frame for every object
        assert shapes[T.BANK_KEY] == (1, CAPACITY, 32, "H/16", "W/16")
        assert shapes[T.BANK_VALUE] == ("O", CAPACITY, 64, "H/16", "W/16")
        assert shapes[T.BANK_VALID] == ("O", CAPACITY) and dtypes[T.BANK_VALID] == "float32"
        assert dtypes[T.BANK_VALUE] == half
        assert shapes[T.LOGITS] == ("O", "H", "W") and dtypes[T.OBJ_PROBS] == "float32"
        assert shapes[T.LABELS] == ("H", "W") and dtypes[T.LABELS] == "uint8"
        # TensorRT's fusable attention survives export and FP16 conversion.
        assert find_attention(model) is not None
    onnx.checker.check_model(model, full_check=True)


def test_sha256_in_manifest_matches_files(export_dir, manifest):
    for per_precision in manifest["graphs"].values():
        for entry in per_precision.values():
            assert sha256_file(export_dir / entry["file"]) == entry["sha256"]
    assert sha256_file(export_dir / "checkpoint.pt") == manifest["checkpoint"]["sha256"]


def test_validation_report(export_dir):
    report = json.loads((export_dir / VALIDATION_FILE).read_text())
    assert report["passed"] and report["failures"] == [] and report["files_ok"]
    for graph in Graph.ALL:
        for precision in ("fp32", "fp16"):
            for kind in ("real", "random"):
                section = report["graphs"][graph][precision][kind]
                assert section["passed"] and section["cases"] >= 1


def test_fp16_keeps_soft_aggregation_in_fp32(manifest):
    entry = manifest["graphs"][Graph.READ_DECODER]["fp16"]
    fp32_ops = {n["op"] for n in entry["fp32_nodes"] if n["name"].startswith("/aggregate/")}
    assert {"Clip", "Log", "Sigmoid", "ReduceProd", "Exp", "ReduceMax", "ReduceSum"} <= fp32_ops
    assert all(n["reason"] for n in entry["fp32_nodes"])
    kept = {n["op"] for n in entry["fp16_kept"]}
    assert kept == {"Add", "Softmax"} and entry["attention_fusable"] is True


def test_stm_read_exports_two_input_memory_graph(tmp_path, one_thread):
    # STM's read (separate keys, dot product; `paper`): the memory graph computes its own keys
    # from frame and probs, and the FP16 attention stays fusable.
    import dataclasses

    from mlvos.model.registry import get_config

    cfg = dataclasses.replace(get_config("tiny"), shared_key=False, similarity="dot")
    ckpt = save_checkpoint(tmp_path / "stm.pt", build_model(config=cfg, seed=0))
    out = _export(ckpt, tmp_path / "stm", precisions=("fp32", "fp16"))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    entry = manifest["graphs"][Graph.READ_DECODER]["fp16"]
    assert {n["op"] for n in entry["fp16_kept"]} == {"Add", "Softmax"}
    assert entry["attention_fusable"] is True
    memory = onnx.load(str(out / f"{Graph.MEMORY_ENCODER}.fp32.onnx"))
    assert [i.name for i in memory.graph.input] == [T.FRAME, T.PROBS]


# --------------------------------------------------------------------------- dynamic axes
@pytest.mark.parametrize("graph", Graph.ALL)
def test_one_file_serves_object_counts_and_resolutions(export_dir, model, graph):
    session = _session(export_dir, graph, "fp32")
    for objects, (height, width) in [(1, (64, 96)), (3, (96, 160))]:
        feed = _random_feed(model, graph, objects, height, width)
        ref = _torch(model, graph, feed)
        got = dict(zip(ref, session.run(list(ref), feed), strict=True))
        for name, r in ref.items():
            assert got[name].shape == r.shape, (graph, name, objects, height, width)
            if r.dtype == np.uint8:
                assert np.mean(got[name] != r) < 1e-3
            else:
                np.testing.assert_allclose(got[name], r, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_empty_slots_are_ignored(export_dir, model, precision):
    # Bank of capacity 4 with 2 valid frames and 2 zero slots == torch read over the 2 frames.
    feed = _random_feed(model, Graph.READ_DECODER, 2, 64, 96, seed=3)
    n_valid = 2
    feed[T.BANK_KEY][:, n_valid:] = 0.0
    feed[T.BANK_VALUE][:, n_valid:] = 0.0
    feed[T.BANK_VALID][:, n_valid:] = 0.0
    small = dict(feed)
    for name in (T.BANK_KEY, T.BANK_VALUE, T.BANK_VALID):
        small[name] = np.ascontiguousarray(feed[name][:, :n_valid])
    ref = _torch(model, Graph.READ_DECODER, small)
    session = _session(export_dir, Graph.READ_DECODER, precision)
    dtypes = {i.name: i.type for i in session.get_inputs()}
    cast = {
        k: v.astype(np.float16) if dtypes[k] == "tensor(float16)" else v for k, v in feed.items()
    }
    logits = session.run([T.LOGITS], cast)[0]
    # fp16: half-precision rounding of logits of a few units (ulp 2e-3 at 2.0)
    scale = float(np.abs(ref[T.LOGITS]).max())
    atol = 1e-5 * max(1.0, scale) if precision == "fp32" else 5e-3 * max(1.0, scale)
    np.testing.assert_allclose(logits, ref[T.LOGITS], atol=atol, rtol=1e-3)


def test_fp16_close_to_fp32_on_real_data(export_dir, model):
    real = record_propagation(model, height=64, width=96, capacity=CAPACITY, frames=4, seed=5)
    decided = flips = pixels = 0
    for graph in Graph.ALL:
        s32, s16 = _session(export_dir, graph, "fp32"), _session(export_dir, graph, "fp16")
        types16 = {i.name: i.type for i in s16.get_inputs()}
        for feed in real.feeds(graph):
            names = [o.name for o in s32.get_outputs()]
            out32 = s32.run(names, feed)
            feed16 = {
                k: v.astype(np.float16) if types16[k] == "tensor(float16)" else v
                for k, v in feed.items()
            }
            out16 = s16.run(names, feed16)
            for name, a, b in zip(names, out32, out16, strict=True):
                if a.dtype == np.uint8:
                    # A random model predicts near-ties between objects; labels must agree
                    # wherever fp32 decides by a margin beyond the probability tolerance.
                    p = out32[names.index(T.OBJ_PROBS)]
                    top2 = np.sort(np.concatenate([1.0 - p.sum(0, keepdims=True), p]), axis=0)
                    decisive = (top2[-1] - top2[-2]) > 0.1
                    decided += int(decisive.sum())
                    flips += int(np.sum(a[decisive] != b[decisive]))
                    pixels += a.size
                else:
                    err = np.abs(a - b.astype(np.float32)).max()
                    assert err <= 2e-3 + 3e-2 * np.abs(a).max(), (graph, name, err)
    # not vacuous: the decided pixels are a fair share of all
    assert decided > 0.15 * pixels, (decided, pixels)
    assert flips < 1e-3 * decided, (flips, decided)


def test_export_leaves_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from mlvos.export.io_spec import graph_io
    from mlvos.export.onnx_export import torch_to_onnx

    inputs, outputs = graph_io(
        Graph.QUERY_ENCODER,
        "fp32",
        key_dim=32,
        value_dim=64,
        skip8_dim=32,
        skip4_dim=32,
        capacity=CAPACITY,
        size=None,
    )
    frame = torch.zeros(1, 3, 64, 96, dtype=torch.uint8)
    torch_to_onnx(
        build_wrapper(Graph.QUERY_ENCODER, model),
        (frame,),
        inputs=inputs,
        outputs=outputs,
        opset=17,
    )
    assert not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------- determinism, --check
def test_reexport_is_byte_identical(export_dir, checkpoint, tmp_path):
    again = _export(checkpoint, tmp_path / "again")
    names = sorted(p.name for p in export_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (export_dir / name).read_bytes() == (again / name).read_bytes(), name


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlvos")
    export_cli.register(parser.add_subparsers())
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def test_check_revalidates(export_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    (copy / VALIDATION_FILE).unlink()
    assert _cli(["--check", str(copy)]) == 0
    assert json.loads((copy / VALIDATION_FILE).read_text())["passed"]
    # A modified graph file is caught by its sha256 (and named).
    path = copy / "read_decoder.fp16.onnx"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValidationFailedError, match="read_decoder.fp16.onnx: sha256"):
        check_export(copy)
    assert not json.loads((copy / VALIDATION_FILE).read_text())["files_ok"]


def test_cli_static_size(checkpoint, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mlvos")
    out = tmp_path / "static"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--height", "64", "--width", "96"]
    assert _cli([*argv, "--capacity", "2", "--precision", "fp32", "--no-validate"]) == 0
    # Progress lines keep the seconds since the export began.
    assert re.fullmatch(rf"\[ *\d+\.\ds\] export complete: {re.escape(str(out))}",
                        caplog.messages[-1])
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["static_size"] == [64, 96] and manifest["precisions"] == ["fp32"]
    entry = manifest["graphs"][Graph.READ_DECODER]["fp32"]
    shapes = {t["name"]: t["shape"] for t in [*entry["inputs"], *entry["outputs"]]}
    assert shapes[T.BANK_KEY] == [1, 2, 32, 4, 6] and shapes[T.LABELS] == [64, 96]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pt", "manifest.json"] + [f"{g}.fp32.onnx" for g in Graph.ALL]
    )


def test_fp16_only_export(checkpoint, tmp_path):
    out = _export(checkpoint, tmp_path / "fp16", precisions=["fp16"])
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["precisions"] == ["fp16"]
    assert all(set(entry) == {"fp16"} for entry in manifest["graphs"].values())
    assert not list(out.glob("*.fp32.onnx"))
    report = json.loads((out / VALIDATION_FILE).read_text())
    assert report["passed"] and set(report["graphs"][Graph.QUERY_ENCODER]) == {"fp16"}


def test_end_to_end_can_be_reported_without_gating(tmp_path, monkeypatch):
    """gate_end_to_end=False (what `mlvos demo` uses): the comparison is recorded and its misses
    are warnings instead of failures. An unreachable bar forces the miss."""
    import json

    from mlvos.export import end_to_end
    from mlvos.export.api import export_checkpoint
    from mlvos.export.errors import ValidationFailedError
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.registry import build_model

    monkeypatch.setitem(end_to_end.BARS, "fp32", 1.01)
    ckpt = save_checkpoint(tmp_path / "t.pt", build_model("tiny", seed=3), stage="main")
    with pytest.raises(ValidationFailedError, match="end to end: ort fp32"):
        export_checkpoint(ckpt, tmp_path / "gated", precisions=("fp32",))
    assert not (tmp_path / "gated").exists()
    out = export_checkpoint(ckpt, tmp_path / "reported", precisions=("fp32",),
                            gate_end_to_end=False)
    report = json.loads((out / "validation.json").read_text())
    assert report["passed"] and not report["failures"]
    assert len(report["warnings"]) == 1 and "end to end: ort fp32" in report["warnings"][0]
    assert "ort_fp32_vs_torch_fp32" in report["end_to_end"]["comparisons"]


def test_shared_key_memory_encoder_takes_the_query_key(export_dir, model):
    # tiny shares keys (STCN): the memory graph reuses the frame's query key instead of running
    # the query backbone again, and its mem_key is that key, once for all objects.
    assert model.config.shared_key
    for precision in ("fp32", "fp16"):
        q = _session(export_dir, Graph.QUERY_ENCODER, precision)
        m = _session(export_dir, Graph.MEMORY_ENCODER, precision)
        assert [i.name for i in m.get_inputs()] == [T.FRAME, T.PROBS, T.QUERY_KEY]
        frame = np.random.default_rng(1).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)
        key = q.run([T.QUERY_KEY], {T.FRAME: frame})[0]
        probs = np.random.default_rng(2).random((3, 64, 96), dtype=np.float32)
        mem_key, mem_value = m.run(
            [T.MEM_KEY, T.MEM_VALUE], {T.FRAME: frame, T.PROBS: probs, T.QUERY_KEY: key}
        )
        np.testing.assert_array_equal(mem_key, key)  # once for all 3 objects
        ref = _torch(model, Graph.MEMORY_ENCODER, {T.FRAME: frame, T.PROBS: probs,
                                                   T.QUERY_KEY: key.astype(np.float32)})
        atol = 1e-4 if precision == "fp32" else 3e-2 * float(np.abs(ref[T.MEM_VALUE]).max())
        np.testing.assert_allclose(mem_value.astype(np.float32), ref[T.MEM_VALUE],
                                   atol=atol, rtol=1e-3)


# ------------------------------------------------------- memory-read priors (top-k, KMN kernel)
PRIOR_TOPK, PRIOR_KERNEL = 80, 1.5  # k = 80 > T*h*w = 64 at 64x64, < 240 at 96x160


@pytest.fixture(scope="module")
def prior_export(tmp_path_factory, checkpoint) -> Path:
    """The decisive tiny model exported (fp32 + fp16, validated) with both read priors
    overriding its checkpoint's (off)."""
    out = tmp_path_factory.mktemp("prior") / "tiny"
    return _export(checkpoint, out, read_topk=PRIOR_TOPK, read_kernel=PRIOR_KERNEL)


def test_prior_export_records_config_and_unfusable_attention(prior_export):
    from mlvos.export.trt_ops import find_unsupported

    manifest = json.loads((prior_export / MANIFEST_FILE).read_text())
    assert manifest["config"]["read_topk"] == PRIOR_TOPK
    assert manifest["config"]["read_kernel"] == PRIOR_KERNEL
    for precision in ("fp32", "fp16"):
        entry = manifest["graphs"][Graph.READ_DECODER][precision]
        assert entry["attention_fusable"] is False
        assert "top-80" in entry["attention_note"] and "sigma 1.5" in entry["attention_note"]
        model = onnx.load(str(prior_export / entry["file"]))
        ops = {n.op_type for n in model.graph.node}
        assert {"TopK", "ArgMax", "MatMul", "Softmax"} <= ops
        assert find_unsupported(model) == []  # TensorRT 10.3 parses every node
        assert find_attention(model) is None
    report = json.loads((prior_export / VALIDATION_FILE).read_text())
    assert report["passed"] and report["graphs"][Graph.READ_DECODER]["fp16"]["real"]["passed"]


@pytest.mark.parametrize("objects, height, width", [(2, 64, 64), (1, 96, 160)])
def test_prior_read_decoder_matches_torch_at_two_sizes(prior_export, model, objects, height, width):
    from mlvos.model.checkpoint import with_read_options

    prior = with_read_options(model, topk=PRIOR_TOPK, kernel=PRIOR_KERNEL)
    feed = _random_feed(prior, Graph.READ_DECODER, objects, height, width, seed=4)
    feed[T.BANK_VALID][:, -1] = 0.0  # one empty slot
    ref = _torch(prior, Graph.READ_DECODER, feed)
    got = _session(prior_export, Graph.READ_DECODER, "fp32").run(list(ref), feed)
    for name, g in zip(ref, got, strict=True):
        if g.dtype == np.uint8:
            assert np.mean(g != ref[name]) < 1e-3, name
        else:
            np.testing.assert_allclose(g, ref[name], atol=1e-4, rtol=1e-3, err_msg=name)
    # The priors change the read, so the comparison is not one of plain reads.
    plain = _torch(model, Graph.READ_DECODER, feed)
    assert np.abs(plain[T.LOGITS] - ref[T.LOGITS]).max() > 1e-2


def test_prior_fp16_stays_finite(prior_export, model):
    from mlvos.model.checkpoint import with_read_options

    prior = with_read_options(model, topk=PRIOR_TOPK, kernel=PRIOR_KERNEL)
    session = _session(prior_export, Graph.READ_DECODER, "fp16")
    types = {i.name: i.type for i in session.get_inputs()}
    for height, width in [(64, 64), (96, 160)]:
        feed = _random_feed(prior, Graph.READ_DECODER, 2, height, width, seed=5)
        feed[T.BANK_VALID][1, 1:] = 0.0
        ref = _torch(prior, Graph.READ_DECODER, feed)
        feed16 = {k: v.astype(np.float16) if types[k] == "tensor(float16)" else v
                  for k, v in feed.items()}
        logits, probs = session.run([T.LOGITS, T.OBJ_PROBS], feed16)
        assert np.isfinite(logits).all() and np.isfinite(probs).all()
        scale = float(np.abs(ref[T.LOGITS]).max())
        np.testing.assert_allclose(logits, ref[T.LOGITS], atol=3e-2 * max(1.0, scale), rtol=0)


def test_torch_backend_runs_the_exported_read(prior_export):
    # checkpoint.pt has the priors off; the manifest's config has them on.
    from mlvos.runtime.backends import open_runner

    with open_runner(prior_export, backend="torch") as runner:
        config = runner.model.config
    assert (config.read_topk, config.read_kernel) == (PRIOR_TOPK, PRIOR_KERNEL)


def test_cli_read_overrides_and_check(checkpoint, prior_export, tmp_path):
    out = tmp_path / "cli"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--capacity", "2"]
    assert _cli([*argv, "--precision", "fp32", "--no-validate", "--read-topk", "5",
                 "--read-kernel", "2"]) == 0
    config = json.loads((out / MANIFEST_FILE).read_text())["config"]
    assert (config["read_topk"], config["read_kernel"]) == (5, 2.0)
    # --check rebuilds the model from checkpoint.pt (priors off) + the manifest's config (on):
    # ORT and PyTorch agree only if the overrides reach the torch side too.
    copy = tmp_path / "check"
    shutil.copytree(prior_export, copy)
    assert _cli(["--check", str(copy)]) == 0
    with pytest.raises(InputError, match="--check DIR takes no"):
        _cli(["--check", str(copy), "--read-topk", "3"])
