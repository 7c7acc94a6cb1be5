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
    assert "mask is 32x48 but the frame is 64x96" in capsys.readouterr().err


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
