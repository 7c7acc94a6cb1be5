"""TrtRunner, the engine build and the engine cache on CPU, against stand-ins for `tensorrt` and
`cuda.bindings.runtime` (tests/runtime/fake_trt.py, installed by the `fakes` fixture).

Device memory is host memory there and engines run their ONNX graphs with onnxruntime, which
verifies the runner's data flow - bank layout, in-place slot writes, object moves, buffer sharing
between graphs, shapes, CUDA-graph capture/invalidation - against OrtRunner frame by frame, and
the build recipes and cache keys per TensorRT version. test_trt_gpu.py runs its bodies on the same
fakes and on a real GPU, where kernels, FP16/INT8 numerics and capture legality are checked too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from mlvos.errors import InputError
from mlvos.runtime.backends import cuda_mem
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph, Tensor

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # the export fixture builds a tiny checkpoint
pytestmark = pytest.mark.slow  # one tiny export plus a few short videos on onnxruntime


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from mlvos.export import export_checkpoint
    from mlvos.model.checkpoint import save_checkpoint
    from mlvos.model.registry import build_model

    root = tmp_path_factory.mktemp("trt_fake")
    ckpt = save_checkpoint(root / "tiny.pt", build_model("tiny", seed=0))
    return export_checkpoint(ckpt, root / "export", validate=False)


SMALL = dict(
    max_objects=4, opt_objects=2, max_height=192, max_width=320, opt_height=160, opt_width=288
)


def _runner(export_dir, tmp_path, precision="fp32", **kw):
    from mlvos.runtime.backends.trt import Profile, TrtRunner

    kw.setdefault("profile", Profile(**SMALL))
    return TrtRunner(
        Manifest.load(export_dir),
        precision,
        engine_dir=tmp_path / "engines",
        **kw,
    )


def _propagate(runner, frames, masks, *, later=None, remove_at=None):
    """Run a VideoPredictor; `later` = (frame, mask) adds objects mid-video, `remove_at` =
    (frame, id) drops one."""
    from mlvos.runtime.predictor import VideoPredictor

    probs = []
    read_decode = runner.read_decode

    def recording_read_decode(query, objects):
        p, labels = read_decode(query, objects)
        probs.append(np.array(runner.download(p)))
        return p, labels

    runner.read_decode = recording_read_decode  # the soft probabilities, for a sharper check
    pred = VideoPredictor(runner, mem_every=2)
    pred.add_mask(0, masks[0])
    out = []
    for t, frame in enumerate(frames):
        if later and t == later[0]:
            pred.add_mask(t, later[1])
        if remove_at and t == remove_at[0]:
            pred.remove_object(remove_at[1])
        out.append(pred.step(frame))
    return out, probs


def _video(seed=3, frames=12, h=150, w=270, objects=3):
    from mlvos.data.synth import synth_sequence

    pairs = list(synth_sequence(seed, frames, h, w, num_objects=objects))
    return [f for f, _ in pairs], [m for _, m in pairs]


def _first_mask_subset(mask, keep):
    return np.where(np.isin(mask, keep), mask, 0).astype(np.uint8)


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "cuda-graph"])
def test_runner_matches_ort_frame_by_frame(fakes, export_dir, tmp_path, cuda_graph):
    """Bank writes, growth (an object added at frame 4), compaction (one removed at frame 8),
    eviction (12 frames, capacity 6) and buffer sharing reproduce OrtRunner exactly."""
    from mlvos.runtime.backends.onnxrt import OrtRunner

    frames, masks = _video()
    first = _first_mask_subset(masks[0], [1, 2])
    plan = dict(later=(4, _first_mask_subset(masks[4], [3])), remove_at=(8, 1))
    ref, ref_probs = _propagate(
        OrtRunner(Manifest.load(export_dir), "fp32"), frames, [first], **plan
    )
    with _runner(export_dir, tmp_path, cuda_graph=cuda_graph) as runner:
        got, got_probs = _propagate(runner, frames, [first], **plan)
        assert runner.max_objects == 4 and runner.max_size == (192, 320)
    for t, (a, b) in enumerate(zip(ref, got)):
        assert np.array_equal(a, b), f"frame {t}: {np.mean(a != b):.4f} of the pixels differ"
    assert len(ref_probs) == len(got_probs) == len(frames) - 1
    for t, (a, b) in enumerate(zip(ref_probs, got_probs)):
        assert a.shape == b.shape and np.array_equal(a, b), f"read_decode after frame {t}"
    assert [p.shape[0] for p in got_probs] == [2] * 4 + [3] * 3 + [2] * 4
    if cuda_graph:
        # Captured once per (objects, size): 2 objects, then 3, then 2 again after the removal.
        assert fakes.cuda.captures == 3 and fakes.cuda.launches >= 6
    else:
        assert fakes.cuda.captures == 0
    assert not fakes.cuda.allocs and not fakes.cuda.streams and fakes.cuda.graphs_alive == 0


def test_per_graph_outputs_match_ort(fakes, export_dir, tmp_path):
    """encode_query / encode_memory / read_decode outputs equal onnxruntime's on the same
    inputs, including a bank filled through write_slot into a non-zero slot."""
    import onnxruntime as ort

    manifest = Manifest.load(export_dir)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 3, 160, 288), dtype=np.uint8)
    probs = rng.random((2, 160, 288), dtype=np.float32)
    sess = {g: ort.InferenceSession(str(manifest.graph(g, "fp32").path)) for g in Graph.ALL}
    with _runner(export_dir, tmp_path) as r:
        fd = r.upload(frame)
        q = r.encode_query(fd)
        ref_q = dict(
            zip(
                [o.name for o in sess[Graph.QUERY_ENCODER].get_outputs()],
                sess[Graph.QUERY_ENCODER].run(None, {Tensor.FRAME: frame}),
            )
        )
        for name, value in q.items():
            np.testing.assert_array_equal(r.download(value), ref_q[name])
        # tiny shares keys: the memory graph takes the frame's query key
        rk, rv = sess[Graph.MEMORY_ENCODER].run(
            None, {Tensor.FRAME: frame, Tensor.PROBS: probs, Tensor.QUERY_KEY: ref_q["query_key"]}
        )
        # without the frame's query features the runner encodes the frame as a query first
        k, v = r.encode_memory(fd, r.upload(probs))
        np.testing.assert_array_equal(r.download(k), rk)
        np.testing.assert_array_equal(r.download(v), rv)
        k, v = r.encode_memory(fd, r.upload(probs), q)
        np.testing.assert_array_equal(r.download(k), rk)
        np.testing.assert_array_equal(r.download(v), rv)
        r.allocate_bank(3, 160, 288)
        r.write_slot(4, k, v, 2)
        valid = np.zeros((3, r.capacity), np.float32)
        valid[:2, 4] = 1
        r.set_valid(valid)
        p, labels = r.read_decode(q, 2)
        assert rk.shape[0] == 1  # tiny's object-free key bank: one key row for all objects
        bank_k = np.zeros((1, r.capacity, *rk.shape[1:]), np.float32)
        bank_v = np.zeros((2, r.capacity, *rv.shape[1:]), np.float32)
        bank_k[:, 4], bank_v[:, 4] = rk, rv
        feeds = dict(ref_q, bank_key=bank_k, bank_value=bank_v, bank_valid=valid[:2])
        _, rp, rl = sess[Graph.READ_DECODER].run(None, feeds)
        np.testing.assert_array_equal(r.download(p), rp)
        np.testing.assert_array_equal(r.download(labels), rl)
        # move_object copies object 1's whole memory onto object 0.
        r.move_object(1, 0)
        r.set_valid(valid)
        p2, _ = r.read_decode(q, 1)
        feeds = dict(ref_q, bank_key=bank_k, bank_value=bank_v[1:], bank_valid=valid[:1])
        np.testing.assert_array_equal(r.download(p2), sess[Graph.READ_DECODER].run(None, feeds)[1])


@pytest.mark.parametrize(
    ("version", "source", "network_flags", "builder_flags"),
    [
        ("10.3.0", "fp32", 0, ["FP16", "OBEY_PRECISION_CONSTRAINTS"]),  # JetPack 6: weak typing
        ("10.13.0", "fp16", 1 << 5, []),  # strong typing complete
        ("11.4.0.106", "fp16", 1 << 5, []),  # no BuilderFlag.FP16 at all
    ],
)
def test_fp16_recipe_per_version(
    fakes, export_dir, tmp_path, version, source, network_flags, builder_flags
):
    trt = fakes.use_trt(version)
    with _runner(export_dir, tmp_path, precision="fp16") as r:
        assert [b[2] for b in trt.built] == [f"{g}.{source}.onnx" for g in Graph.ALL]
        assert all(b[0] == network_flags and b[1] == builder_flags for b in trt.built)
        # Both paths carry the fp16 graph's I/O types: the bank is float16 (on the flag path
        # the build sets those I/O tensors to HALF), labels stay uint8.
        assert r.dtypes[Tensor.BANK_KEY] == np.float16 and r.dtypes[Tensor.LABELS] == np.uint8
        assert r.dtypes[Tensor.QUERY_KEY] == np.float16 and r.dtypes[Tensor.PROBS] == np.float32


def test_flag_path_pins_exactly_the_exports_fp32_nodes(fakes, export_dir, tmp_path):
    """TensorRT 10.3 builds fp16 from the FP32 graph + BuilderFlag.FP16; every node the export's
    FP16 conversion kept FP32 (and the soft aggregation) must be an FP32 layer, nothing else."""
    import onnx

    from mlvos.runtime.backends.trt.build import AGGREGATE_SCOPE
    from mlvos.runtime.spec import Precision

    trt = fakes.use_trt("10.3.0")
    manifest = Manifest.load(export_dir)
    with _runner(export_dir, tmp_path, precision="fp16") as r:
        meta = {g: r.records[g].meta["key"] for g in Graph.ALL}
    assert [c[0] for c in trt.constraints] == [f"{g}.fp32.onnx" for g in Graph.ALL]
    for g, (_, pinned, io) in zip(Graph.ALL, trt.constraints):
        nodes = {d["name"] for d in manifest.data["graphs"][g]["fp16"]["fp32_nodes"]}
        scope = {n.name for n in onnx.load(export_dir / f"{g}.fp32.onnx").graph.node
                 if AGGREGATE_SCOPE in n.name}
        assert set(pinned) == nodes | scope, g
        assert meta[g]["fp32_layers"] == sorted(nodes)  # part of the cache key
        assert set(io) == {n for n in Precision.HALF_IO if n in io} and \
            all(v == "float16" for v in io.values())
    assert scope and nodes  # the read_decoder has both: the check is not vacuous
    # A strongly typed build pins nothing: the fp16 graph carries its own types.
    trt = fakes.use_trt("10.13.0")
    with _runner(export_dir, tmp_path / "strong", precision="fp16"):
        pass
    assert trt.constraints and all(not c[1] and not c[2] for c in trt.constraints)


def test_fp16_video_matches_ort_fp16(fakes, export_dir, tmp_path):
    """The strongly typed fp16 path end to end (float16 bank and query features, 2-byte slot
    copies) reproduces OrtRunner on the same fp16 graphs. FP16-vs-FP32 accuracy with real
    kernels is test_trt_gpu's job."""
    from mlvos.runtime.backends.onnxrt import OrtRunner

    fakes.use_trt("11.4.0.106")
    frames, masks = _video(seed=5, frames=8)
    ref, ref_probs = _propagate(OrtRunner(Manifest.load(export_dir), "fp16"), frames, masks)
    with _runner(export_dir, tmp_path, precision="fp16") as r:
        got, got_probs = _propagate(r, frames, masks)
    for t, (a, b) in enumerate(zip(ref, got)):
        assert np.array_equal(a, b), f"frame {t}"
    for a, b in zip(ref_probs, got_probs):
        np.testing.assert_array_equal(a, b)


def test_engine_cache_reuse_and_staleness(fakes, export_dir, tmp_path):
    from mlvos.runtime.backends.trt import EngineCacheError, Profile, ensure_engines

    manifest = Manifest.load(export_dir)
    engines = tmp_path / "engines"
    kw = dict(engine_dir=engines, profile=Profile(**SMALL))
    first = ensure_engines(manifest, "fp32", **kw)
    assert all(r.built for r in first.values()) and len(fakes.trt.built) == 3
    # One timing cache, loaded by each build and saved after it.
    assert fakes.trt.loaded_timing_caches == [b"", b"+", b"++"]
    cache_files = list(engines.glob("timing-*.cache"))
    assert len(cache_files) == 1 and "Fake-GPU" in cache_files[0].name
    again = ensure_engines(manifest, "fp32", **kw)
    assert not any(r.built for r in again.values()) and len(fakes.trt.built) == 3
    # No profile given: the cached engines' profile is reused, not the default one.
    assert not any(
        r.built for r in ensure_engines(manifest, "fp32", engine_dir=engines).values()
    )
    # Another TensorRT version: refused without building, rebuilt with building.
    fakes.use_trt("10.16.1")
    with pytest.raises(EngineCacheError, match=r"tensorrt: cached '10.3.0', needed '10.16.1'"):
        ensure_engines(manifest, "fp32", allow_build=False, **kw)
    rebuilt = ensure_engines(manifest, "fp32", **kw)
    assert all(r.built for r in rebuilt.values())
    assert fakes.trt.loaded_timing_caches[0] == b""  # a new version starts its own cache
    # Another GPU: stale.
    fakes.cuda.gpu = "Other GPU"
    with pytest.raises(EngineCacheError, match="gpu: cached 'Fake GPU', needed 'Other GPU'"):
        ensure_engines(manifest, "fp32", allow_build=False, **kw)
    fakes.cuda.gpu = "Fake GPU"
    # A modified engine file is never deserialized.
    path = rebuilt[Graph.READ_DECODER].path
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(EngineCacheError, match="does not match its metadata"):
        ensure_engines(manifest, "fp32", allow_build=False, **kw)
    # A different profile is a different engine.
    with pytest.raises(EngineCacheError, match="profile"):
        ensure_engines(
            manifest,
            "fp32",
            allow_build=False,
            engine_dir=engines,
            profile=Profile(**dict(SMALL, max_objects=5)),
        )


def test_limits_raise_clear_errors(fakes, export_dir, tmp_path):
    with _runner(export_dir, tmp_path) as r:
        with pytest.raises(InputError, match="exceeds the engine's maximum"):
            r.upload(np.zeros((1, 3, 224, 320), np.uint8))
        with pytest.raises(InputError, match="--max-objects 5"):
            r.read_decode({}, 5)
        r.allocate_bank(8, 160, 288)  # more than the engines hold: clamped, not an error
        assert r._bank_objects == 4


def test_cuda_failures_name_the_call(fakes, export_dir, tmp_path):
    fakes.cuda.fail.add("cudaMalloc")
    with pytest.raises(
        cuda_mem.CudaError,
        match=r"cudaMalloc\(.*\) failed with "
        r"cudaErrorMemoryAllocation",
    ):
        with _runner(export_dir, tmp_path):
            pass
    assert not fakes.cuda.streams  # open() cleaned up after itself


def test_engine_cli_builds_then_reuses(fakes, export_dir, tmp_path, capsys):
    from mlvos.runtime import cli

    parser = argparse.ArgumentParser()
    cli.register_engine(parser.add_subparsers())
    argv = [
        "engine",
        "--model",
        str(export_dir),
        "--precision",
        "fp32",
        "--out",
        str(tmp_path / "e"),
        "--max-height",
        "180",
        "--max-width",
        "300",
        "--max-objects",
        "3",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("built") == 3 and "up to 3 objects at 192x320" in out
    args = parser.parse_args([*argv, "--check"])
    assert args.func(args) == 0 and capsys.readouterr().out.count("cached") == 3
    fakes.use_trt("10.4.0")
    assert args.func(args) == 1 and "needs a build" in capsys.readouterr().out


def test_dla_engines_have_static_shapes(fakes, export_dir, tmp_path):
    """DLA runs min = opt = max only: a DLA build is a fixed-size engine at the profile's max."""
    from mlvos.runtime.backends.trt import BuildOptions, Profile, ensure_engines

    fakes.trt.Builder.num_DLA_cores = 2
    records = ensure_engines(
        Manifest.load(export_dir), "fp16",
        options=BuildOptions(engine_dir=tmp_path / "dla", profile=Profile(**SMALL), dla_core=1),
    )
    for record in records.values():
        shapes = record.meta["key"]["shapes"]
        assert shapes and all(lo == opt == hi for lo, opt, hi in shapes.values())
        assert record.meta["key"]["dla_core"] == 1
    frame = records[Graph.QUERY_ENCODER].meta["key"]["shapes"][Tensor.FRAME][0]
    assert frame[-2:] == [192, 320]  # SMALL's max, padded to the stride


def test_default_engines_take_1080p(fakes, export_dir, tmp_path):
    """README's example: open_runner(backend="trt") with no profile and VideoPredictor(max_side=
    1080) on 1080p frames. The default profile takes full 1080p frames (padded 1088x1920); the
    video runs at max_side 1080 (608x1088 padded: full 1080p attention would not fit this CPU's
    memory through the fake engines' onnxruntime)."""
    from mlvos.runtime.backends import open_runner
    from mlvos.runtime.predictor import VideoPredictor

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8) for _ in range(2)]
    mask = np.zeros((1080, 1920), np.uint8)
    mask[400:700, 800:1200] = 1
    with open_runner(export_dir, backend="trt", precision="fp32",
                     engine_dir=tmp_path / "e") as runner:
        assert runner.max_size == (1088, 1920)
        runner._check_fits(Tensor.FRAME, (1, 3, 1088, 1920))  # a full 1080p frame fits
        with pytest.raises(InputError, match="exceeds the engine's maximum"):
            runner._check_fits(Tensor.FRAME, (1, 3, 1920, 1088))  # portrait needs a profile
        pred = VideoPredictor(runner, max_side=1080)
        pred.add_mask(0, mask)
        out = [pred.step(f) for f in frames]
    assert all(o.shape == (1080, 1920) for o in out) and (out[0] == mask).all()


def test_run_cli_picks_a_profile_that_covers_the_video(fakes, export_dir, tmp_path):
    """`mlvos run --backend trt` on a video larger than the cached engines' profile rebuilds
    with one that covers it (keeping the cached range), then reuses those engines for a video
    they cover."""
    from mlvos.cli import main
    from mlvos.palette import write_frame, write_mask
    from mlvos.runtime.backends.trt import stored_profile

    engines = tmp_path / "engines"
    assert main(["engine", "--model", str(export_dir), "--precision", "fp32", "--out",
                 str(engines), "--resolution", "160x288"]) == 0
    video = tmp_path / "video"
    for i in range(2):
        write_frame(video / f"{i:05d}.jpg", np.full((250, 200, 3), 40 * i, np.uint8))
    mask = np.zeros((250, 200), np.uint8)
    mask[100:180, 50:150] = 2
    write_mask(tmp_path / "first.png", mask)
    argv = ["run", "--model", str(export_dir), "--backend", "trt", "--precision", "fp32",
            "--engine-dir", str(engines), "--input", str(video), "--mask",
            str(tmp_path / "first.png")]
    assert main([*argv, "--out", str(tmp_path / "m1")]) == 0
    profile = stored_profile(engines, "fp32")
    assert profile.covers(Manifest.load(export_dir), 250, 200)
    assert (profile.max_height, profile.max_width) == (256, 288)  # cached range kept
    built = len(fakes.trt.built)
    assert main([*argv, "--out", str(tmp_path / "m2"), "--max-side", "160"]) == 0
    assert len(fakes.trt.built) == built  # covered: the engines are reused, nothing rebuilt
