"""End to end calibration of the tiny variant (64x96 frames, 4 samples): int8 graphs registered
in the manifest, symmetric Q/DQ, FP32 exclusions honoured, errors and accuracy reported, the feed
cache reused, int8 propagation through the runtime.

One ModelOpt run with explicit FP32 parts is shared by the module; a second run (onnxruntime
quantizer, automatic choice) on a copy of the export reuses the first run's feed cache.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mlvos.calib import calibrate
from mlvos.calib.constants import CACHE_DIR, CALIBRATION_FILE
from mlvos.export.onnx_utils import producers_consumers
from mlvos.export.trt_ops import find_unsupported
from mlvos.fileio import sha256_file
from mlvos.fileio import stable_json as dumps
from mlvos.runtime.spec import Graph

KEEP = ("first_conv", "logits_conv")


@pytest.fixture(scope="module")
def calibrated(tiny_export, calib_data, val_data, tmp_path_factory):
    export = tmp_path_factory.mktemp("calibrated") / "export"
    shutil.copytree(tiny_export, export)
    before = (export / "manifest.json").read_text()
    out = tmp_path_factory.mktemp("calib-out")
    report = calibrate(
        export,
        calib_data,
        out,
        samples=4,
        keep_fp32=KEEP,
        eval_data=val_data,
    )
    return export, out, report, before


def _manifest(export: Path) -> dict:
    return json.loads((export / "manifest.json").read_text())


def test_int8_registered_with_sha256_and_io(calibrated):
    export, _, _, before = calibrated
    manifest = _manifest(export)
    for graph in Graph.ALL:
        entry = manifest["graphs"][graph]["int8"]
        assert entry["file"] == f"{graph}.int8.onnx"
        assert sha256_file(export / entry["file"]) == entry["sha256"]
        fp32 = manifest["graphs"][graph]["fp32"]
        assert entry["inputs"] == fp32["inputs"] and entry["outputs"] == fp32["outputs"]
    assert manifest["precisions"] == ["fp32", "int8"]
    # Every other entry is byte-identical: undoing the two changes gives the old file back.
    for graph in Graph.ALL:
        del manifest["graphs"][graph]["int8"]
    manifest["precisions"] = ["fp32"]
    assert dumps(manifest) == before


def test_qdq_present_symmetric_and_tensorrt_parsable(calibrated):
    export, *_ = calibrated
    for graph in Graph.ALL:
        model = onnx.load(export / f"{graph}.int8.onnx")
        consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert any(n.op_type == "QuantizeLinear" for n in qdq), graph
        for n in qdq:
            zero_point = consts[n.input[2]]
            assert zero_point.dtype == np.int8 and not zero_point.any(), (graph, n.name)
        assert find_unsupported(model) == [], graph
        props = {p.key: p.value for p in model.metadata_props}
        assert props["mlvos.precision"] == "int8" and props["mlvos.graph"] == graph


def test_excluded_nodes_really_unquantized(calibrated):
    export, _, report, _ = calibrated
    manifest = _manifest(export)
    kept_somewhere = set()
    for graph in Graph.ALL:
        nodes = manifest["graphs"][graph]["int8"]["fp32_nodes"]
        assert nodes == report["graphs"][graph]["fp32_nodes"]
        model = onnx.load(export / f"{graph}.int8.onnx")
        prod, _ = producers_consumers(model)
        by_name = {n.name: n for n in model.graph.node}
        floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        for entry in nodes:
            kept_somewhere.add(entry["candidate"])
            node = by_name[entry["name"]]
            for t in node.input:
                assert t not in prod or prod[t].op_type != "DequantizeLinear", (graph, t)
            assert node.input[1] in floats  # the weight is the FP32 initializer itself
    # The tiny graphs quantize both candidates when allowed, so both were kept on request.
    assert kept_somewhere == set(KEEP)


def test_errors_and_accuracy_recorded(calibrated):
    export, out, report, _ = calibrated
    assert json.loads((out / CALIBRATION_FILE).read_text()) == report
    assert (export / CALIBRATION_FILE).read_text() == (out / CALIBRATION_FILE).read_text()
    assert report["samples"] == 4 and report["method"]["name"] == "modelopt"
    for graph in Graph.ALL:
        section = report["graphs"][graph]
        assert math.isfinite(section["error"]["score"]) and section["error"]["score"] >= 0
        assert section["qdq"]["nonzero_zero_points"] == []
        for name, cand in section["candidates"].items():
            if name in KEEP and cand["quantized_when_allowed"]:
                assert cand["kept"] and math.isfinite(cand["error_when_fp32"])
    acc = report["accuracy"]
    assert set(acc["jf"]) == {"fp32", "int8"}
    assert 0.0 <= acc["iou_int8_vs_fp32"]["min"] <= acc["iou_int8_vs_fp32"]["mean"] <= 1.0
    assert (out / "pred" / "int8" / acc["sequences"][0] / "00002.png").is_file()


def test_int8_propagation_through_open_runner(calibrated, val_data):
    from mlvos.data.datasets import DavisDataset
    from mlvos.runtime.backends import open_runner
    from mlvos.runtime.predictor import VideoPredictor

    export, *_ = calibrated
    seq = DavisDataset(val_data)[0]
    with open_runner(export, backend="ort", precision="int8") as runner:
        assert runner.bank_dtype == np.float32
        # the session options under which "ort-cpu" graphs keep their fused INT8 kernels
        from mlvos.runtime.spec import ORT_INT8_SESSION_CONFIG

        for sess in runner.sessions.values():
            opts = sess.get_session_options()
            for key, value in ORT_INT8_SESSION_CONFIG.items():
                assert opts.get_session_config_entry(key) == value
        predictor = VideoPredictor(runner, mem_every=2)
        predictor.add_mask(0, seq.first_mask())
        labels = [predictor.step(seq.read_frame(t)) for t in range(len(seq))]
    assert all(lab.shape == seq.first_mask().shape and lab.dtype == np.uint8 for lab in labels)
    assert set(np.unique(labels[-1])) <= set(np.unique(seq.first_mask()))


def test_rerun_reuses_cache_ort_auto(calibrated, calib_data, tmp_path):
    """Second run (other quantizer, automatic choice) on a copy: the feeds come from the cache;
    every candidate the quantizer touches is measured with and without quantization."""
    export, out, _, _ = calibrated
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    meta = (out / CACHE_DIR / "meta.json").stat().st_mtime_ns
    report = calibrate(
        copy, calib_data, out, samples=4, method="ort", calibrator="max", force=True
    )
    assert report["data"]["cache"]["reused"] is True
    assert (out / CACHE_DIR / "meta.json").stat().st_mtime_ns == meta
    assert report["accuracy"] == {"skipped": "no --eval-data given"}
    measured = 0
    for graph in Graph.ALL:
        for cand in report["graphs"][graph]["candidates"].values():
            if cand["quantized_when_allowed"]:
                measured += 1
                assert math.isfinite(cand["gain"]) and isinstance(cand["kept"], bool)
            else:
                assert not cand["kept"] and "places no Q/DQ" in cand["reason"]
    assert measured >= 3  # first convs of both encoders, and the read's attention / logits conv
    manifest = _manifest(copy)
    assert (
        sha256_file(copy / "read_decoder.int8.onnx")
        == (manifest["graphs"]["read_decoder"]["int8"]["sha256"])
    )


def test_read_prior_graph_calibrates(calib_data, tmp_path):
    # A read with priors (top-k, KMN kernel) has no fusable attention chain; its "attention"
    # candidate is the read's MatMuls, which stay FP32 when kept.
    import torch

    from mlvos.export.api import export_checkpoint
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.registry import build_model

    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("tiny", seed=0))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export = export_checkpoint(ckpt, tmp_path / "export", capacity=4,
                                   precisions=("fp32",), validate=False,
                                   representative_size=(64, 96), representative_frames=2,
                                   read_topk=20, read_kernel=2.0)
    finally:
        torch.set_num_threads(before)
    report = calibrate(export, calib_data, tmp_path / "out", samples=4,
                       keep_fp32=("attention", "logits_conv"))
    section = report["graphs"][Graph.READ_DECODER]
    assert {"attention", "logits_conv"} <= set(section["candidates"])
    entry = _manifest(export)["graphs"][Graph.READ_DECODER]["int8"]
    model = onnx.load(str(export / entry["file"]))
    products = [n for n in model.graph.node if n.op_type == "MatMul"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert products and not any(
        producers[i].op_type == "DequantizeLinear" for n in products for i in n.input
        if i in producers
    )  # the kept memory read: no Q/DQ on its inputs
    assert find_unsupported(model) == []
    assert {"TopK", "ArgMax"} <= {n.op_type for n in model.graph.node}
