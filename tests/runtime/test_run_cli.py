"""`mlvos run` end to end on a tiny export: outputs, summary, backends, and the bad-input errors."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from mlvos.cli import main  # noqa: E402
from mlvos.data.synth import synth_sequence  # noqa: E402
from mlvos.palette import read_mask, write_frame, write_mask  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(decisive_export):
    return decisive_export(precisions=("fp32",), capacity=3)


@pytest.fixture
def video(tmp_path):
    frames = tmp_path / "frames"
    seq = list(synth_sequence(3, 6, 64, 96, num_objects=2))
    for i, (frame, _) in enumerate(seq):
        write_frame(frames / f"{i:05d}.jpg", frame)
    mask = tmp_path / "first.png"
    write_mask(mask, seq[0][1])
    return frames, mask, seq


def _run(export_dir, frames, mask, out, *extra):
    return main(["run", "--model", str(export_dir), "--input", str(frames), "--mask", str(mask),
                 "--out", str(out), *extra])


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_run_writes_a_mask_per_frame_and_a_summary(export_dir, video, tmp_path, capsys, backend):
    frames, mask, seq = video
    out = tmp_path / "masks"
    extra = ["--backend", backend, "--overlay", str(tmp_path / "overlay.mp4")]
    assert _run(export_dir, frames, mask, out, *extra) == 0
    written = sorted(out.glob("*.png"))
    assert [p.stem for p in written] == [f"{i:05d}" for i in range(len(seq))]
    first = read_mask(written[0])
    assert np.array_equal(first, seq[0][1])  # the annotated frame is its ground truth
    ids = set(np.unique(np.concatenate([read_mask(p).ravel() for p in written])))
    assert ids <= set(np.unique(seq[0][1]))  # only the annotated ids (palette kept)
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
    text = capsys.readouterr().out
    assert "6 frames in" in text and "FPS" in text and "read_decoder" in text


def test_run_max_side_keeps_the_input_size(export_dir, video, tmp_path):
    frames, mask, seq = video
    out = tmp_path / "masks"
    assert _run(export_dir, frames, mask, out, "--max-side", "64") == 0
    assert all(read_mask(p).shape == (64, 96) for p in out.glob("*.png"))
    up = tmp_path / "up"
    assert _run(export_dir, frames, mask, up, "--scale", "1.5") == 0
    assert all(read_mask(p).shape == (64, 96) for p in up.glob("*.png"))


def test_frames_of_differing_sizes_are_refused(export_dir, video, tmp_path, capsys):
    frames, mask, seq = video
    write_frame(frames / "00003.jpg", np.zeros((80, 96, 3), np.uint8))
    assert _run(export_dir, frames, mask, tmp_path / "o") == 1
    err = capsys.readouterr().err
    assert "frame 3 is 80x96" in err and "same size" in err


def test_mask_of_another_size_is_refused(export_dir, video, tmp_path, capsys):
    frames, _, _ = video
    mask = tmp_path / "small.png"
    write_mask(mask, np.ones((32, 48), np.uint8))
    assert _run(export_dir, frames, mask, tmp_path / "o") == 1
    assert "small.png is 32x48 but the frames are 64x96" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_unreadable_frame_is_named(export_dir, video, tmp_path, capsys):
    frames, mask, _ = video
    (frames / "00002.jpg").write_bytes(b"not a jpeg")
    assert _run(export_dir, frames, mask, tmp_path / "o") == 1
    assert "00002.jpg" in capsys.readouterr().err


def test_missing_input_is_a_clean_error(export_dir, video, tmp_path, capsys):
    _, mask, _ = video
    assert _run(export_dir, tmp_path / "nope", mask, tmp_path / "o") == 1
    assert "neither a folder of images nor a video" in capsys.readouterr().err


def test_frames_limit_and_contact_sheet(export_dir, video, tmp_path, capsys):
    from PIL import Image

    from mlvos.palette import davis_palette, read_frame
    from mlvos.runtime.video_io import draw_overlay

    frames, mask, seq = video
    out, sheet = tmp_path / "masks", tmp_path / "sheet.png"
    assert _run(export_dir, frames, mask, out, "--frames", "4", "--contact-sheet", str(sheet),
                "--overlay", str(tmp_path / "overlay.mp4")) == 0
    assert [p.stem for p in sorted(out.glob("*.png"))] == ["00000", "00001", "00002", "00003"]
    text = capsys.readouterr().out
    assert "4 frames in" in text and "contact sheet of frames [0, 1, 2, 3]" in text
    # default frames: 5 evenly spaced over the 4 processed -> 0..3, a 2x2 grid with 4 px gaps
    grid = np.asarray(Image.open(sheet))
    assert grid.shape == (2 * 64 + 4, 2 * 96 + 4, 3)
    # the last tile (frame 3) is the --overlay drawing of that frame, away from its label
    expected = draw_overlay(read_frame(frames / "00003.jpg"), read_mask(out / "00003.png"),
                            davis_palette())
    assert np.array_equal(grid[68 + 30:, 100:], expected[30:])
    assert (grid[68 + 30:, 100:] != read_frame(frames / "00003.jpg")[30:]).any()


def test_contact_sheet_frames_past_the_end_are_refused(export_dir, video, tmp_path, capsys):
    frames, mask, _ = video
    argv = ["--frames", "3", "--contact-sheet", str(tmp_path / "s.jpg"), "--sheet-frames", "0,2,5"]
    assert _run(export_dir, frames, mask, tmp_path / "o", *argv) == 1
    err = capsys.readouterr().err
    assert "--sheet-frames [5] are past the last frame to process (2" in err
    assert not (tmp_path / "s.jpg").exists()


def test_run_data_matches_per_video_runs_and_scores(export_dir, tmp_path, capsys):
    """--data ROOT runs every sequence of a DAVIS-layout set; each sequence's masks are those of
    a single-video run, and the folder is what `mlvos eval` reads."""
    from mlvos.data.synth import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "ds", sequences=2, frames=5, seed=3, height=64,
                                  width=96, max_objects=2)
    out = tmp_path / "pred"
    assert main(["run", "--model", str(export_dir), "--data", str(root), "--out", str(out)]) == 0
    assert "2 sequences, 10 frames" in capsys.readouterr().out
    for seq in ("synth-0000", "synth-0001"):
        single = tmp_path / f"single-{seq}"
        assert _run(export_dir, root / "JPEGImages" / "480p" / seq,
                    root / "Annotations" / "480p" / seq / "00000.png", single) == 0
        for p in sorted(single.glob("*.png")):
            assert np.array_equal(read_mask(p), read_mask(out / seq / p.name)), (seq, p.name)
    assert main(["eval", "--gt", str(root / "Annotations" / "480p"), "--pred", str(out)]) == 0


def test_run_data_refuses_single_video_options(export_dir, tmp_path, capsys):
    args = ["run", "--model", str(export_dir), "--data", str(tmp_path), "--out", str(tmp_path)]
    assert main([*args, "--mask", "m.png"]) != 0
    assert "--mask is for --input" in capsys.readouterr().err
    assert main(["run", "--model", str(export_dir), "--input", str(tmp_path),
                 "--out", str(tmp_path / "o")]) != 0
    assert "--input needs --mask" in capsys.readouterr().err


def _write_avi(path, frames):
    cv2 = pytest.importorskip("cv2")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path


def test_start_and_frames_on_a_video_with_an_h264_overlay(export_dir, video, tmp_path, capsys):
    """--start 2 --frames 3 processes frames 2..4, names the masks after them, and --mask is the
    mask of frame 2; the overlay is H.264 with one frame per processed frame."""
    av = pytest.importorskip("av")
    _, _, seq = video
    clip = _write_avi(tmp_path / "clip.avi", [frame for frame, _ in seq])
    write_mask(tmp_path / "m2.png", seq[2][1])
    out, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    assert _run(export_dir, clip, tmp_path / "m2.png", out, "--start", "2", "--frames", "3",
                "--overlay", str(overlay)) == 0
    assert [p.stem for p in sorted(out.glob("*.png"))] == ["00002", "00003", "00004"]
    assert np.array_equal(read_mask(out / "00002.png"), seq[2][1])
    assert "overlay video (H.264, 3 frames)" in capsys.readouterr().out
    with av.open(str(overlay)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert [p.name for p in tmp_path.glob(".*")] == []  # no temporary overlay left


def test_masks_dir_objects_join_later_and_are_reanchored(export_dir, video, tmp_path, capsys):
    frames, _, seq = video
    first, later = seq[0][1].copy(), seq[3][1].copy()
    first[first == 2] = 0  # frame 0 annotates object 1 only
    ann = tmp_path / "ann"
    write_mask(ann / "00000.png", first)
    write_mask(ann / "00003.png", later)  # object 2 joins, object 1 is re-anchored
    write_mask(ann / "00004.png", np.zeros_like(later))  # no object: changes nothing
    (ann / "notes.png").write_bytes(b"")  # names no frame: ignored, said so
    out = tmp_path / "masks"
    assert main(["run", "--model", str(export_dir), "--input", str(frames), "--masks", str(ann),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 annotated frames from 00000; objects joining later: [2] at 00003" in text
    assert "1 PNG file(s) in" in text and "ignored" in text
    labels = [read_mask(out / f"{i:05d}.png") for i in range(len(seq))]
    assert np.array_equal(labels[0], first)
    assert all(2 not in m for m in labels[:3])  # object 2 is unknown before its annotation
    given = later > 0  # frame 3's annotation is ground truth on the pixels it labels
    assert np.array_equal(labels[3][given], later[given])
    assert 2 in labels[4] and 2 in labels[5]  # then tracked


@pytest.mark.parametrize("case, expected", [
    ("both", "--mask and --masks given together"),
    ("no-match", "none of its 1 PNG files (e.g. frame7.png) is named like a processed frame "
                 "(00000..00005)"),
    ("first-missing", "no annotation of the first processed frame 00000 (the first one is "
                      "00002.png): add 00000.png or start there with --start 2"),
    ("size", "00000.png is 32x48 but the frames are 64x96"),
    ("empty-first", "holds no object (all pixels are 0)"),
    ("start", "--start 6 is past the last frame of"),
    ("device", "unknown device 'gpu0': use cpu, cuda or cuda:N"),
    ("precision", "has no 'int8' version in"),
    ("video", "bad.mp4: not a video OpenCV can decode"),
    ("overlay", "unsupported suffix '.gif'"),
])
def test_bad_input_is_one_line_and_writes_nothing(export_dir, video, tmp_path, capsys, case,
                                                  expected):
    frames, mask, seq = video
    ann = tmp_path / "ann"
    write_mask(ann / "00000.png", seq[0][1])
    extra = []
    if case == "both":
        extra = ["--masks", str(ann)]
    elif case in ("no-match", "first-missing", "size", "empty-first"):
        (ann / "00000.png").unlink()
        name, m = {"no-match": ("frame7", seq[0][1]), "first-missing": ("00002", seq[2][1]),
                   "size": ("00000", seq[0][1][:32, :48]),
                   "empty-first": ("00000", np.zeros_like(seq[0][1]))}[case]
        write_mask(ann / f"{name}.png", m)
        argv = ["run", "--model", str(export_dir), "--input", str(frames), "--masks", str(ann)]
    extra += {"start": ["--start", "6"], "device": ["--device", "gpu0"],
              "precision": ["--precision", "int8"], "overlay": ["--overlay", "o.gif"]}.get(case, [])
    if case == "video":
        frames = tmp_path / "bad.mp4"
        frames.write_bytes(b"\x00" * 2000)
    out, overlay = tmp_path / "o", tmp_path / "overlay.mp4"
    if case not in ("no-match", "first-missing", "size", "empty-first"):
        argv = ["run", "--model", str(export_dir), "--input", str(frames), "--mask", str(mask)]
    if case != "overlay":
        extra += ["--overlay", str(overlay)]
    assert main([*argv, "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not out.exists() and not overlay.exists()
    assert [p.name for p in tmp_path.glob(".*")] == []


def test_rerun_after_a_failure_and_with_fewer_frames(export_dir, video, tmp_path, capsys):
    """The run record: a run stopped by an error says so; the rerun starts over and ends with
    the masks of an uninterrupted run; a shorter rerun removes the masks it does not write."""
    import json

    frames, mask, seq = video
    clean = tmp_path / "clean"
    assert _run(export_dir, frames, mask, clean) == 0
    good = (frames / "00003.jpg").read_bytes()
    (frames / "00003.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "masks"
    assert _run(export_dir, frames, mask, out) == 1
    record = json.loads((out / ".mlvos-run.json").read_text())
    assert record["status"] == "failed" and record["done"] == 3
    (frames / "00003.jpg").write_bytes(good)
    capsys.readouterr()
    assert _run(export_dir, frames, mask, out) == 0
    text = capsys.readouterr().out
    assert "a run that failed after 3 of 6 frames (cannot read frame" in text
    assert "with other settings (changed: input); replacing them" in text  # frame 3 fixed
    for p in sorted(clean.glob("*.png")):
        assert np.array_equal(read_mask(p), read_mask(out / p.name)), p.name
    assert _run(export_dir, frames, mask, out, "--frames", "2") == 0
    assert "changed: frames (--start, --frames)" in capsys.readouterr().out
    assert [p.stem for p in sorted(out.glob("*.png"))] == ["00000", "00001"]
    assert json.loads((out / ".mlvos-run.json").read_text())["status"] == "complete"


def test_a_second_run_into_the_same_out_fails_at_once(export_dir, video, tmp_path, capsys):
    import subprocess
    import sys

    frames, mask, _ = video
    out = tmp_path / "masks"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mlvos.fileio import file_lock\n"
         f"with file_lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _run(export_dir, frames, mask, out) == 1
    finally:
        holder.communicate("\n", timeout=30)
    err = capsys.readouterr().err
    assert f"the run folder {out} is being written by another process (pid {holder.pid}" in err
    assert not out.exists()
