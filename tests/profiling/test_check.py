"""`mlvos check` on the CPU path: onnxruntime fp16 and int8 graphs of the decisive tiny model
(tests/conftest.py) against its fp32 graphs through Polygraphy's comparator; the saved feeds and
the printed `polygraphy run` lines; failures (zero tolerance, a corrupted fp16 graph); backend
choice; and the attention-fusion reading of TensorRT layer names (no TensorRT needed)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")
onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from mlvos.cli import COMMANDS, main  # noqa: E402
from mlvos.errors import InputError, MissingDependencyError  # noqa: E402
from mlvos.profiling import check_candidates, compare  # noqa: E402
from mlvos.profiling.compare import CHECK_FILE, TOLERANCES, run_check, summary_table  # noqa: E402
from mlvos.profiling.fusion import (  # noqa: E402
    FUSED,
    UNFUSED,
    UNKNOWN,
    attention_chain,
    classify_attention,
    layer_nodes,
)
from mlvos.runtime.errors import NoCudaDeviceError  # noqa: E402
from mlvos.runtime.manifest import Manifest  # noqa: E402
from mlvos.runtime.spec import Graph  # noqa: E402

HEIGHT, WIDTH = 64, 96
OUTPUTS = {
    Graph.QUERY_ENCODER: ["query_key", "query_value", "skip8", "skip4"],
    Graph.MEMORY_ENCODER: ["mem_key", "mem_value"],
    Graph.READ_DECODER: ["logits", "obj_probs", "labels"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mlvos.data.synth import make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("check-data") / "synth", sequences=1, frames=6, seed=5,
        height=HEIGHT, width=WIDTH, min_objects=2, max_objects=2,
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, decisive_tiny, data) -> Path:
    """fp32 + fp16 graphs of the decisive tiny model, plus int8 from a quick calibration."""
    import torch

    from mlvos.calib.api import calibrate
    from mlvos.export.api import export_checkpoint
    from mlvos.model.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("check-export")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a 2-vCPU machine
    try:
        # a gentler readout: INT8 errors through a steep one exceed the int8 tolerance
        ckpt = save_checkpoint(root / "tiny.pt", decisive_tiny(readout_gain=1.0))
        export = export_checkpoint(
            ckpt, root / "export", capacity=4, precisions=("fp32", "fp16"), validate=False,
            representative_size=(HEIGHT, WIDTH),
        )
    finally:
        torch.set_num_threads(before)
    calibrate(export, data, root / "calib", samples=4, keep_fp32=("none",), method="ort")
    return Path(export)


@pytest.fixture(scope="module")
def checked(export_dir, data, tmp_path_factory):
    """`mlvos check --data ... --precision fp16 int8` through the real entry point."""
    out = tmp_path_factory.mktemp("check-out")
    argv = ["check", "--model", str(export_dir), "--data", str(data), "--out", str(out),
            "--precision", "fp16", "int8", "--samples", "3", "--threads", "1"]
    # capsys and the autouse logging fixture (tests/conftest.py) are per test; this fixture is
    # per module, so it captures stdout and undoes main()'s logging configuration itself.
    logger = logging.getLogger("mlvos")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            rc = main(argv)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    return rc, buf.getvalue(), json.loads((out / CHECK_FILE).read_text()), out


def _copy(export_dir: Path, dest: Path) -> Path:
    shutil.copytree(export_dir, dest, ignore=shutil.ignore_patterns("check"))
    return dest


# ------------------------------------------------------------------------------ the CPU path
def test_check_is_registered_after_profile():
    names = list(COMMANDS)
    assert names[names.index("profile") + 1] == "check"
    assert COMMANDS["check"] == "mlvos.profiling.cli"


def test_check_prints_table_and_passes(checked):
    rc, text, _, _ = checked
    assert rc == 0, text
    for graph, outputs in OUTPUTS.items():
        for precision in ("fp16", "int8"):
            for name in outputs:
                row = next(
                    (line for line in text.splitlines()
                     if line.split()[:3] == [precision, graph, name]),
                    None,
                )
                assert row is not None, f"no row {precision} {graph} {name}:\n{text}"
                assert row.endswith("pass")
    assert "fp16: PASS" in text and "int8: PASS" in text and "overall: PASS" in text
    assert "max abs" in text and "max rel" in text
    assert "attention (fp16): unverified; manifest claims fusable" in text


def test_report_json(checked, export_dir):
    _, _, report, out = checked
    assert report["format"] == "mlvos-check" and report["passed"] is True
    assert report["backend"] == "ort" and report["data"]["kind"] == "dataset"
    assert len(report["data"]["positions"]) == report["samples"] == 3
    assert set(report["precisions"]) == {"fp16", "int8"}
    for precision in ("fp16", "int8"):
        assert report["precisions"][precision] == {"passed": True, "failed": []}
        for graph, outputs in OUTPUTS.items():
            entry = report["graphs"][precision][graph]
            assert entry["tolerance"]["atol"] == TOLERANCES[precision]["atol"]
            assert sorted(entry["outputs"]) == sorted(outputs)
            for name, o in entry["outputs"].items():
                if name == "labels":
                    assert o["kind"] == "labels" and 0 <= o["decisive_mismatch"] <= o["limit"]
                    continue
                tol = TOLERANCES[precision]
                assert o["limit"] == pytest.approx(tol["atol"] + tol["rtol"] * o["max_ref"],
                                                   rel=1e-3)
                assert 0 <= o["max_abs"] <= o["limit"] and o["finite"]
                assert o["max_rel"] == pytest.approx(o["max_abs"] / o["max_ref"])
    # fp16 differs from fp32 (it is a real comparison), int8 differs more.
    fp16 = report["graphs"]["fp16"][Graph.READ_DECODER]["outputs"]["obj_probs"]["max_abs"]
    int8 = report["graphs"]["int8"][Graph.READ_DECODER]["outputs"]["obj_probs"]["max_abs"]
    assert 0 < fp16 < int8
    attention = report["attention"]["fp16"]
    assert attention["status"] == "unverified" and attention["claimed_fusable"] is True
    assert attention["onnx_pattern"] is not None and attention["inspect_command"] is None
    assert not list(out.glob(".*"))  # atomic writes leave no temporary files


def test_feeds_are_polygraphy_json_in_each_precision_dtypes(checked):
    from polygraphy.json import load_json

    _, _, report, out = checked
    feeds = report["feeds"][Graph.READ_DECODER]
    # fp16 takes float16 features and bank: its own file; int8 keeps the fp32 dtypes.
    assert Path(feeds["fp16"]).name == "read_decoder.fp16.json"
    assert Path(feeds["int8"]).name == "read_decoder.fp32.json"
    half, full = load_json(feeds["fp16"]), load_json(feeds["int8"])
    assert len(half) == len(full) == 3
    assert half[0]["bank_key"].dtype == np.float16 and full[0]["bank_key"].dtype == np.float32
    assert half[0]["bank_valid"].dtype == np.float32  # validity stays fp32 (spec.Precision)
    np.testing.assert_array_equal(half[2]["bank_key"], full[2]["bank_key"].astype(np.float16))
    # the query encoder's only input (uint8 frame) is the same for every precision: one file
    assert {Path(p).name for p in report["feeds"][Graph.QUERY_ENCODER].values()} == {
        "query_encoder.fp32.json"
    }
    assert (out / "outputs" / "read_decoder.fp32.json").is_file()


def test_printed_polygraphy_command_repeats_the_comparison(checked):
    _, text, report, _ = checked
    line = next(c for c in report["polygraphy_commands"]
                if "read_decoder.fp16.onnx" in c and "--load-outputs" in c)
    assert line in text and "--atol" in line and "labels:255" in line
    exe = Path(sys.executable).with_name("polygraphy")
    if not exe.is_file():
        pytest.skip("the polygraphy command is not installed beside this python")
    argv = line.split()
    done = subprocess.run([str(exe), *argv[1:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PASSED" in done.stdout


# ---------------------------------------------------------------------------------- failures
def test_zero_tolerance_fails_on_synthetic_video(export_dir, tmp_path):
    """Without --data a synthetic video is recorded; fp16 cannot equal fp32 exactly."""
    zero = {"atol": 0.0, "rtol": 0.0, "label_mismatch": 0.0}
    report = run_check(model=export_dir, out=tmp_path, precisions=["fp16"], samples=2,
                       threads=1, tolerances={"fp16": zero})
    assert report["data"]["kind"] == "synthetic"
    assert report["passed"] is False and report["precisions"]["fp16"]["passed"] is False
    assert "query_encoder.query_key" in report["precisions"]["fp16"]["failed"]
    text = summary_table(report)
    assert "fp16: FAIL" in text and "overall: FAIL" in text
    assert json.loads((tmp_path / CHECK_FILE).read_text())["passed"] is False


def test_corrupted_fp16_graph_fails_with_exit_code_1(export_dir, tmp_path, capsys):
    from onnx import numpy_helper

    from mlvos.fileio import sha256_file

    export = _copy(export_dir, tmp_path / "export")
    manifest = Manifest.load(export)
    path = manifest.graph(Graph.READ_DECODER, "fp16").path
    model = onnx.load(str(path))
    # the decoder's last conv (the per-object logits): scale its weights
    conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    inits = {i.name: i for i in model.graph.initializer}
    weight = next(inits[name] for name in conv.input[1:2] if name in inits)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 3, weight.name))
    onnx.save(model, str(path))
    manifest.data["graphs"][Graph.READ_DECODER]["fp16"]["sha256"] = sha256_file(path)
    manifest.write()
    rc = main(["check", "--model", str(export), "--precision", "fp16", "--samples", "2",
               "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 1, text
    assert "fp16: FAIL (read_decoder.logits" in text and "overall: FAIL" in text
    report = json.loads((export / "check" / CHECK_FILE).read_text())  # default --out
    assert report["graphs"]["fp16"][Graph.QUERY_ENCODER]["passed"] is True
    assert report["graphs"]["fp16"][Graph.READ_DECODER]["passed"] is False


def test_precision_errors(export_dir, tmp_path):
    with pytest.raises(InputError, match=r"unknown precision\(s\) \[.bf16.\]"):
        run_check(model=export_dir, out=tmp_path, precisions=["bf16"])
    export = _copy(export_dir, tmp_path / "export")
    manifest = Manifest.load(export)
    for graph in Graph.ALL:
        del manifest.data["graphs"][graph]["int8"]
    manifest.write()
    with pytest.raises(InputError, match=r"holds no int8 graphs .*mlvos calib"):
        run_check(model=export, out=tmp_path, precisions=["int8"])
    with pytest.raises(InputError, match="--samples must be an integer >= 1"):
        run_check(model=export, out=tmp_path, samples=0)
    for graph in Graph.ALL:
        del manifest.data["graphs"][graph]["fp16"]
    manifest.write()
    with pytest.raises(InputError, match="holds only fp32 graphs.*--precision fp32"):
        run_check(model=export, out=tmp_path)  # ort default: every precision but fp32


def test_backend_choice(monkeypatch):
    with pytest.raises(InputError, match="unknown backend 'gpu'"):
        check_candidates.resolve_backend("gpu")
    assert check_candidates.resolve_backend("ort") == ("ort", "requested")
    monkeypatch.setattr(check_candidates.importlib.util, "find_spec", lambda name: None)
    assert check_candidates.resolve_backend("auto") == ("ort", "tensorrt is not installed")
    with pytest.raises(MissingDependencyError, match="pip install 'mlvos\\[trt\\]'"):
        check_candidates.resolve_backend("trt")
    # TensorRT installed but no GPU: never imported, auto falls back, trt is refused.
    from mlvos.runtime.backends import cuda_mem

    monkeypatch.setattr(check_candidates.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(cuda_mem, "cuda_device_status", lambda device=0: (False, "no GPU here"))
    assert check_candidates.resolve_backend("auto") == ("ort", "no GPU here")
    with pytest.raises(NoCudaDeviceError, match="no GPU here. Use --backend ort"):
        check_candidates.resolve_backend("trt")
    assert "tensorrt" not in sys.modules


# ------------------------------------------------------------------------- attention fusion
CHAIN = ["/read/MatMul", "/read/Softmax", "/read/MatMul_1"]
ORDER = ["/read/Mul", "/read/MatMul", "/read/Add", "/read/Softmax", "/read/MatMul_1",
         "/dec/Conv"]


def test_layer_nodes_reads_fusions_and_regions():
    order = {n: i for i, n in enumerate(ORDER)}
    assert layer_nodes("/read/MatMul_1", order) == {"/read/MatMul_1"}  # exact, not a prefix
    assert layer_nodes("/read/Add + /read/Softmax", order) == {"/read/Add", "/read/Softmax"}
    assert layer_nodes("{ForeignNode[/read/Mul.../read/MatMul_1]}", order) == set(ORDER[:5])
    assert layer_nodes("Reformatting CopyNode for Input Tensor 0 to /read/MatMul", order) == set()


@pytest.mark.parametrize(
    ("layers", "status"),
    [
        (["/read/Mul", "{ForeignNode[/read/MatMul.../read/MatMul_1]}", "/dec/Conv"], FUSED),
        (["{ForeignNode[/read/Mul.../dec/Conv]}"], FUSED),
        (["/read/MatMul", "/read/Add + /read/Softmax", "/read/MatMul_1", "/dec/Conv"], UNFUSED),
        (["{ForeignNode[/read/Mul.../read/Softmax]}", "/read/MatMul_1"], UNFUSED),
        (["__myl_MulMatMulAddSoftMatMul", "/dec/Conv"], UNKNOWN),
    ],
)
def test_classify_attention(layers, status):
    result = classify_attention(layers, CHAIN, ORDER)
    assert result["status"] == status, result["detail"]
    if status == FUSED:
        assert len({tuple(v) for v in result["layers"].values()}) == 1


def test_attention_chain_of_the_exported_graphs(export_dir):
    manifest = Manifest.load(export_dir)
    chain, order = attention_chain(manifest.graph(Graph.READ_DECODER, "fp16").path)
    assert len(chain) == 3 and all(n in order for n in chain)
    assert order.index(chain[0]) < order.index(chain[1]) < order.index(chain[2])
    assert attention_chain(manifest.graph(Graph.QUERY_ENCODER, "fp16").path) is None


def test_attention_report_reads_the_engine_layers_on_trt(export_dir, monkeypatch, tmp_path):
    """The TensorRT branch without TensorRT: the engine's layer names come from a stand-in."""
    from mlvos.profiling import fusion

    manifest = Manifest.load(export_dir)
    onnx_path = manifest.graph(Graph.READ_DECODER, "fp16").path
    chain, _ = attention_chain(onnx_path)
    engine = tmp_path / "read_decoder.fp16.engine"
    layers = {
        "fused": ["/skip/Conv", f"{{ForeignNode[{chain[0]}...{chain[2]}]}}"],
        "split": [chain[0], chain[1], chain[2]],
    }
    monkeypatch.setattr(check_candidates, "require", lambda *a: "tensorrt stand-in")
    for case, expected in (("fused", FUSED), ("split", UNFUSED)):
        monkeypatch.setattr(fusion, "engine_layer_names", lambda trt, path, c=case: layers[c])
        cand = check_candidates.Candidate(
            "fp16", Graph.READ_DECODER, "trt", engine, "fp16", onnx_path
        )
        report = check_candidates.attention_report(manifest, {"fp16": cand}, "trt")["fp16"]
        assert report["status"] == expected and report["claimed_fusable"] is True
        assert report["engine_layers"] == len(layers[case])
        assert report["inspect_command"].startswith(f"polygraphy inspect model {engine}")


def test_feeds_outside_the_engine_profile_are_refused(tmp_path):
    engine = tmp_path / "read_decoder.fp16.engine"
    shapes = {"bank_valid": [[1, 4], [2, 4], [3, 4]]}
    meta = {"format": "mlvos-trt-engine", "key": {"shapes": shapes}}
    (tmp_path / "read_decoder.fp16.engine.json").write_text(json.dumps(meta))
    cand = check_candidates.Candidate("fp16", Graph.READ_DECODER, "trt", engine, "fp16", engine)
    compare._check_profile(cand, [{"bank_valid": np.zeros((3, 4), np.float32)}])
    with pytest.raises(InputError, match=r"bank_valid of shape \(4, 4\) is outside"):
        compare._check_profile(cand, [{"bank_valid": np.zeros((4, 4), np.float32)}])
