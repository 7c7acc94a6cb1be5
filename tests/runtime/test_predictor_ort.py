"""The onnxruntime backend on exported graphs against the PyTorch reference."""

import json
import shutil

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from mlvos.data.metrics import label_map_iou  # noqa: E402
from mlvos.errors import InputError  # noqa: E402
from mlvos.runtime.backends import open_runner  # noqa: E402
from mlvos.runtime.manifest import ManifestError  # noqa: E402
from mlvos.runtime.predictor import VideoPredictor  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(decisive_export):
    return decisive_export(capacity=4)


def _video(n=8, h=90, w=120):
    from mlvos.data.synth import synth_sequence

    return list(synth_sequence(11, n, h, w, num_objects=3))


def _propagate(runner, video, mem_every: int | None = 3):
    pred = VideoPredictor(runner, mem_every=mem_every)
    pred.add_mask(0, video[0][1])
    return [pred.step(f) for f, _ in video]




# fp16 is gated end to end on trained checkpoints by the export's validation (export/end_to_end.py);
# on a random model the propagated masks diverge after a few frames whatever the precision.
@pytest.mark.parametrize("precision, bar", [("fp32", 0.995)])
def test_ort_matches_torch_reference(export_dir, precision, bar):
    video = _video()
    with open_runner(export_dir, backend="torch") as runner:
        ref = _propagate(runner, video)
    with open_runner(export_dir, backend="ort", precision=precision) as runner:
        got = _propagate(runner, video)
    ious = [label_map_iou(a, b) for a, b in zip(ref[1:], got[1:])]
    assert min(ious) >= bar, ious


def test_flushing_denormals_changes_no_mask(export_dir):
    # Flushing is on by default (real footage produces denormal softmax tails that x86 handles
    # ~100x slower); it must not change a single label.
    from mlvos.runtime.backends.onnxrt import OrtRunner
    from mlvos.runtime.manifest import Manifest

    video = _video(n=10)
    with OrtRunner(Manifest.load(export_dir), flush_denormals=False) as runner:
        slow = _propagate(runner, video)
    with open_runner(export_dir, backend="ort") as runner:
        fast = _propagate(runner, video)
    assert all((a == b).all() for a, b in zip(slow, fast))


def test_sessions_do_not_spin_between_graphs(export_dir):
    # Three sessions run one after the other per frame: threads left spinning by one took cores
    # from the next (1.5x slower frames on a 2-core CPU). Every session, every precision.
    with open_runner(export_dir, backend="ort") as runner:
        for graph, sess in runner.sessions.items():
            opts = sess.get_session_options()
            assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0", graph
            assert opts.get_session_config_entry("session.set_denormal_as_zero") == "1", graph


def test_query_encoder_runs_once_per_frame(export_dir):
    # tiny's memory graph takes the frame's query key: the predictor hands over the query it
    # already computed, and only the annotated first frame (no read) is encoded for it.
    video = _video(n=6, h=64, w=96)
    with open_runner(export_dir, backend="ort") as runner:
        assert runner.memory_takes_key
        calls = []
        encode_query = runner.encode_query
        runner.encode_query = lambda frame: calls.append(1) or encode_query(frame)
        _propagate(runner, video)
    assert len(calls) == len(video)


@pytest.mark.parametrize("prev_every", [1, 2, 3])
def test_prev_every_encodes_memory_only_where_the_schedule_says(export_dir, prev_every):
    """The memory encoder runs on the annotated frame, every mem_every-th frame and every
    prev_every-th frame (the previous-frame slot's refreshes)."""
    video = _video(n=10, h=64, w=96)
    with open_runner(export_dir, backend="ort") as runner:
        calls = []
        encode_memory = runner.encode_memory
        runner.encode_memory = lambda *a: calls.append(1) or encode_memory(*a)
        pred = VideoPredictor(runner, mem_every=4, prev_every=prev_every)
        pred.add_mask(0, video[0][1])
        labels = [pred.step(f) for f, _ in video]
    expected = [t for t in range(10) if t % 4 == 0 or t % prev_every == 0]
    assert len(calls) == len(expected)
    assert all(lab.shape == (64, 96) for lab in labels)


def test_default_schedule_is_the_models(export_dir, tmp_path):
    """Without mem_every / prev_every the predictor takes the schedule of the model's config
    (tiny: no previous-frame slot), explicit values win, and an export whose config predates
    the fields runs STM's schedule (5 / 1): its masks are those of prev_every=1."""
    video = _video(n=7, h=64, w=96)
    with open_runner(export_dir, backend="ort") as runner:
        assert runner.schedule == (5, 5)
        pred = VideoPredictor(runner)
        assert (pred.mem_every, pred.prev_every) == (5, 5)
        pred = VideoPredictor(runner, prev_every=2)
        assert (pred.mem_every, pred.prev_every) == (5, 2)
        pred = VideoPredictor(runner, prev_every=1)
        pred.add_mask(0, video[0][1])
        stm = [pred.step(f) for f, _ in video]
    with open_runner(export_dir, backend="torch") as runner:
        assert runner.schedule == (5, 5)  # the checkpoint's config
    copy = tmp_path / "old"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["config"]["mem_every"], manifest["config"]["prev_every"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with open_runner(copy, backend="ort") as runner:
        assert runner.schedule == (5, 1)
        old = _propagate(runner, video, mem_every=None)
    assert all((a == b).all() for a, b in zip(stm, old))


def test_bad_prev_every(export_dir):
    with open_runner(export_dir, backend="ort") as runner:
        for bad in (0, -1, 1.5, True):
            with pytest.raises(InputError, match="prev_every"):
                VideoPredictor(runner, prev_every=bad)


def test_bank_stays_bounded_and_reused(export_dir):
    video = _video(n=12, h=64, w=64)
    with open_runner(export_dir, backend="ort") as runner:
        pred = VideoPredictor(runner, mem_every=2)
        pred.add_mask(0, video[0][1])
        pred.step(video[0][0])
        bank = runner.bank_key
        for f, _ in video[1:]:
            pred.step(f)
        assert runner.bank_key is bank  # written in place, never reallocated
        assert bank.shape[1] == runner.capacity == 4
        assert len(pred.policy.slots) <= 4


def test_tampered_graph_is_refused(export_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["graphs"]["query_encoder"]["fp32"]
    (copy / entry["file"]).write_bytes((copy / entry["file"]).read_bytes() + b"x")
    with pytest.raises(ManifestError, match="does not match the manifest"):
        open_runner(copy, backend="ort")
    with pytest.raises(ManifestError, match="no 'int8' version"):
        open_runner(export_dir, backend="ort", precision="int8")
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        open_runner(tmp_path, backend="ort")


def _scripted(runner, video, banks=None):
    """Objects join at frames 0 and 3 (the bank grows), one leaves at frame 6 (compaction)."""
    import numpy as np

    pred = VideoPredictor(runner, mem_every=2)
    first = video[0][1]
    ids = [int(i) for i in np.unique(first) if i]
    pred.add_mask(0, first, ids[:1])
    out = []
    for t, (frame, mask) in enumerate(video):
        if t == 3:
            pred.add_mask(3, mask, [int(i) for i in np.unique(mask) if i][1:])
        if t == 6:
            pred.remove_object(pred.object_ids[0])
        out.append(pred.step(frame))
        if banks is not None:
            banks.append(runner.bank_key.data_ptr())
    return out


def _ort_device(device: str) -> str:
    """`device`, or a skip with the reason when it is "cuda" and this machine cannot run
    onnxruntime's CUDA provider (onnxruntime-gpu and a CUDA device, probed by cuda-python)."""
    if device == "cuda":
        import onnxruntime as ort

        from mlvos.runtime.backends import cuda_mem

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime has no CUDAExecutionProvider (pip install 'mlvos[ort-gpu]')")
        ok, why = cuda_mem.cuda_device_status()
        if not ok:
            pytest.skip(f"no usable CUDA device: {why}")
    return device


# Label pixels per frame that may differ on CUDA: two sessions may pick different cuDNN
# convolution algorithms (onnxruntime searches per session), so rounding differs.
CUDA_DIFF_MAX = 5e-3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_io_binding_runner_reproduces_numpy_runner(export_dir, device):
    """OrtBoundRunner (bank and features in OrtValues, slot writes by address) gives the same
    masks as OrtRunner through growth, removal and eviction. On the CPU the copies are memmoves,
    on CUDA cuda-python's pitched device copies: the same code path otherwise."""
    import numpy as np

    from mlvos.runtime.backends.onnxrt import OrtBoundRunner

    device = _ort_device(device)
    video = _video(n=10, h=64, w=96)
    with open_runner(export_dir, backend="ort", device=device, io_binding=False) as runner:
        ref = _scripted(runner, video)
    with open_runner(export_dir, backend="ort", device=device, io_binding=True) as runner:
        assert isinstance(runner, OrtBoundRunner) and runner.device == device
        banks = []
        got = _scripted(runner, video, banks)
    assert len(set(banks[3:])) == 1  # sized once for the second object, then written in place
    assert len(ref) == len(got) == 10
    for t, (a, b) in enumerate(zip(ref, got)):
        if device == "cpu":
            assert np.array_equal(a, b), f"frame {t} differs"
        else:
            assert np.mean(a != b) <= CUDA_DIFF_MAX, f"frame {t}: {np.mean(a != b):.4f} differ"
    assert any(len(np.unique(a)) > 2 for a in ref[3:6])  # the second object was tracked


def test_ort_cuda_without_gpu_build_names_extra(export_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(Exception, match=r"mlvos\[ort-gpu\]"):
        open_runner(export_dir, backend="ort", device="cuda")


def test_reanchoring_cuts_a_spread_object_back_to_its_mask(export_dir):
    """A later annotation of a tracked id is that object's ground truth: its prediction outside
    the new mask is dropped (it reappears there only if the memory read puts it back)."""
    import numpy as np

    video = _video(n=4, h=64, w=96)
    with open_runner(export_dir, backend="ort") as runner:
        pred = VideoPredictor(runner, mem_every=5)
        first = video[0][1]
        pred.add_mask(0, first)
        pred.step(video[0][0])
        oid = pred.object_ids[0]
        tiny = np.zeros_like(first)
        tiny[:8, :8] = oid  # object `oid` re-annotated as a small corner patch
        pred.add_mask(1, tiny, object_ids=[oid])
        # frame 1's output: the annotated object exactly at its mask
        out = pred.step(video[1][0])
        assert ((out == oid) == (tiny == oid)).all()
