"""`mlvos train`: every stage runs and writes a checkpoint + log, stages chain, a killed run
resumes bit-exactly, and bad input is a clean CLI error. CPU, tiny variant, 64x64 crops."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlvos.cli import main
from mlvos.data.synth import make_synthetic_dataset
from mlvos.model.checkpoint import load_model, read_checkpoint
from mlvos.palette import read_mask, write_frame

FAST = ["--variant", "tiny", "--size", "64", "--batch", "2", "--lr", "1e-3", "--log-every",
        "1", "--threads", "2"]


def run(argv: list[str]) -> int:
    """`mlvos train ARGV`, in this process."""
    return main(["train", *argv])


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _log(out) if "loss" in r}


@pytest.mark.parametrize("stage,extra", [
    ("pretrain", []),
    ("main", ["--data", "synth", "--max-skip", "2,6"]),
    ("main", ["--data", "synth:96x128"]),
    ("main", ["--data", "synth", "--loss", "bootstrap+dice"]),
])
def test_stage_runs_and_writes_checkpoint_and_log(tmp_path, stage, extra):
    out = tmp_path / "run"
    assert run(["--stage", stage, "--out", str(out), "--steps", "3", *FAST, *extra]) == 0
    state = read_checkpoint(out / "last.pt")  # loads with weights_only=True
    assert state["stage"] == stage and state["iteration"] == 3
    train = state["extra"]["train"]
    assert train["step"] == 3 and train["options"]["stage"] == stage
    assert {"optimizer", "scheduler", "rng"} <= set(train)
    log = _log(out)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["stage"] == stage and r["images_per_s"] > 0
               for r in steps)
    assert log[-1]["event"] == "end"
    load_model(out / "last.pt")  # what `mlvos infer` does


def test_davis_main_training_and_chaining(tmp_path, davis):
    pre = tmp_path / "pre"
    assert run(["--stage", "pretrain", "--out", str(pre), "--steps", "2", *FAST]) == 0
    main = tmp_path / "main"
    fast = [a for a in FAST if a not in ("--variant", "tiny")]
    assert run(["--stage", "main", "--init", str(pre / "last.pt"), "--out", str(main),
                "--steps", "2", "--data", f"davis:{davis}", "--data", "synth", *fast]) == 0
    state = read_checkpoint(main / "last.pt")
    assert state["variant"] == "tiny" and state["stage"] == "main"
    history = state["extra"]["train"]["history"]
    assert history[0]["stage"] == "pretrain" and history[0]["iteration"] == 2


def test_finetune_on_a_synthetic_video(tmp_path, davis):
    video = davis / "JPEGImages" / "480p" / "synth-0000"
    mask = davis / "Annotations" / "480p" / "synth-0000" / "00000.png"
    out = tmp_path / "ft"
    assert run(["--stage", "finetune", "--out", str(out), "--steps", "2", "--video", str(video),
                "--mask", str(mask), *FAST]) == 0
    assert read_checkpoint(out / "last.pt")["stage"] == "finetune"
    out2 = tmp_path / "ft2"
    assert run(["--stage", "finetune", "--out", str(out2), "--steps", "1", "--data",
                f"davis:{davis}", "--split", "train", "--sequence", "synth-0001", *FAST]) == 0


def test_resume_continues_bit_exactly(tmp_path):
    common = ["--stage", "main", "--steps", "5", "--save-every", "2", "--deterministic",
              "--train-bn", *FAST]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run([*common, "--out", str(full)]) == 0
    assert run([*common, "--out", str(part), "--stop-after", "2"]) == 0
    assert read_checkpoint(part / "last.pt")["iteration"] == 2
    # the original command line with --resume: options equal to the run's are accepted
    assert run([*common, "--out", str(part), "--resume", str(part)]) == 0
    a, b = _losses(full), _losses(part)
    assert b.keys() == a.keys() == {1, 2, 3, 4, 5}
    for step in (3, 4, 5):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    assert any(r.get("event") == "resume" and r["step"] == 2 for r in _log(part))


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """Kill -9 a training process after its first checkpoint; the resumed run's next loss
    equals an uninterrupted run's loss at that step."""
    common = ["--stage", "main", "--steps", "200", "--save-every", "2", "--deterministic",
              *FAST]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "mlvos.cli", "train", *common,
                             "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (killed / "last.pt").exists():
            assert proc.poll() is None, "training exited before its first checkpoint"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    k = read_checkpoint(killed / "last.pt")["iteration"]  # atomic: always a complete file
    assert run(["--resume", str(killed), "--stop-after", "1"]) == 0
    ref = tmp_path / "ref"
    assert run([*common, "--out", str(ref), "--stop-after", str(k + 1)]) == 0
    resumed = [r for r in _log(killed) if r.get("step") == k + 1 and "loss" in r][-1]
    assert abs(resumed["loss"] - _losses(ref)[k + 1]) <= 1e-6


def test_dice_loss_counts_objects_not_pixels():
    """Soft Dice: 0 for a perfect prediction, near 1 for a missed object whatever its size, and
    padding slots (in no frame's labels) add nothing, so a small object's miss weighs what a
    large one's does (cross-entropy weighs it by its pixel count)."""
    from mlvos.model.train.losses import clip_loss, dice_loss

    labels = torch.zeros(1, 2, 32, 32, dtype=torch.long)
    labels[0, :, 2:4, 2:4] = 1  # 4 pixels
    labels[0, :, 10:30, 10:30] = 2  # 400 pixels

    def logits_for(lab, slots=4):  # slot 3: padding, in no label map
        return torch.nn.functional.one_hot(lab, slots).permute(0, 1, 4, 2, 3).float() * 40 - 20

    assert float(dice_loss(logits_for(labels), labels)) < 1e-3
    miss_small, miss_large = labels.clone(), labels.clone()
    miss_small[labels == 1] = 0
    miss_large[labels == 2] = 0
    small = float(dice_loss(logits_for(miss_small), labels))
    large = float(dice_loss(logits_for(miss_large), labels))
    assert 0.4 < small < 0.6 and 0.4 < large < 0.6  # one of two objects lost: ~0.5 either way
    ce_small = float(clip_loss(logits_for(miss_small), labels, kind="ce"))
    ce_large = float(clip_loss(logits_for(miss_large), labels, kind="ce"))
    assert ce_large > 50 * ce_small
    both = clip_loss(logits_for(miss_small), labels, kind="bootstrap+dice", step=0, total=10)
    assert float(both) == pytest.approx(
        float(clip_loss(logits_for(miss_small), labels, kind="bootstrap", step=0, total=10))
        + small, rel=1e-5)
    assert float(dice_loss(logits_for(torch.zeros_like(labels)), torch.zeros_like(labels))) == 0


def test_out_dir_with_a_run_is_refused_unless_resume_or_force(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--stage", "main", "--out", str(out), "--steps", "1", *FAST]
    assert run(args) == 0
    before = (out / "last.pt").read_bytes()
    assert run(args) == 1
    assert "already holds a training run" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before  # nothing lost
    assert run([*args, "--force"]) == 0
    # a resumed run may not silently change what it trains on
    assert run(["--resume", str(out), "--steps", "3", "--size", "96"]) == 1
    assert "--size 96 (the run has 64)" in capsys.readouterr().err
    # a finished run is extended by a new run from its weights, not by a larger --steps
    assert run(["--resume", str(out), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "the run is finished" in err and f"--init {out / 'last.pt'}" in err
    assert "pass a larger --steps" not in err


def test_resume_rejects_options_that_change_the_trajectory(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--stage", "main", "--out", str(out), "--steps", "3", *FAST]
    assert run([*args, "--stop-after", "1"]) == 0
    assert run(["--resume", str(out), "--steps", "6", "--lr", "1e-2", "--schedule", "cosine",
                "--max-skip", "2,4"]) == 1
    err = capsys.readouterr().err
    for listed in ("--steps 6 (the run has 3)", "--lr 0.01 (the run has 0.001)",
                   "--schedule cosine (the run has constant)",
                   "--max-skip 2,4 (the run has 5,25)"):
        assert listed in err, (listed, err)
    assert "--init CHECKPOINT --out NEW_DIR" in err and "to continue it" not in err
    assert read_checkpoint(out / "last.pt")["iteration"] == 1  # nothing ran
    # the original options again, and options that leave the trajectory alone, are accepted
    assert run([*args, "--resume", str(out), "--save-every", "1", "--log-every", "2",
                "--workers", "0", "--threads", "1", "--time-limit", "60"]) == 0
    state = read_checkpoint(out / "last.pt")
    assert state["iteration"] == 3
    assert state["extra"]["train"]["options"]["steps"] == 3
    assert state["extra"]["train"]["options"]["save_every"] == 1


def test_plot_writes_png(tmp_path):
    out = tmp_path / "run"
    assert run(["--stage", "main", "--out", str(out), "--steps", "3", *FAST]) == 0
    png = tmp_path / "loss.png"
    assert run(["plot", str(out / "log.jsonl"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _corrupt(root: Path, how: str) -> None:
    seq = "synth-0000"
    ann = root / "Annotations" / "480p" / seq
    img = root / "JPEGImages" / "480p" / seq
    if how == "missing-annotation":
        (ann / "00000.png").unlink()
    elif how == "size-mismatch":
        from PIL import Image

        Image.fromarray(read_mask(ann / "00002.png")[:32], mode="L").save(ann / "00002.png")
    elif how == "rgb-mask":
        from PIL import Image

        rgb = np.repeat(read_mask(ann / "00001.png")[..., None], 3, axis=2) * 60
        Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(ann / "00001.png")
    elif how == "empty-sequence":
        for p in img.iterdir():
            p.unlink()


@pytest.mark.parametrize("how,message", [
    ("missing-annotation", "missing annotation"),
    ("size-mismatch", "00002.png"),
    ("rgb-mask", "00001.png"),
    ("empty-sequence", "empty"),
])
def test_bad_dataset_is_a_clean_error(tmp_path, capsys, how, message):
    root = tmp_path / "D"
    make_synthetic_dataset(root, sequences=1, frames=4, seed=1, height=48, width=64,
                           split="train")
    _corrupt(root, how)
    out = tmp_path / "run"
    assert run(["--stage", "main", "--out", str(out), "--steps", "1", "--data",
                f"davis:{root}", *FAST]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlvos train: error:") and message in err
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("args,message", [
    (["--stage", "main", "--steps", "1"], "exactly one of --variant"),
    (["--stage", "main", "--variant", "tiny", "--data", "kitti:/x"], "unknown kind"),
    (["--stage", "finetune", "--variant", "tiny"], "needs --video"),
    (["--stage", "main", "--variant", "tiny", "--size", "16"], "--size must be >= 32"),
    (["--stage", "main", "--init", "/no/such.pt"], "does not exist"),
    (["--resume", "/no/such/dir"], "no such checkpoint"),
])
def test_bad_options_are_clean_errors(tmp_path, capsys, args, message):
    assert run([*args, "--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_cpu_amp_trains_in_bfloat16_or_says_why_not(tmp_path, capsys):
    """--amp on a CPU: bf16 autocast + channels_last where oneDNN has native bf16 (the loss
    stays finite and the checkpoint loads in fp32), else one message and fp32."""
    out = tmp_path / "o"
    assert run(["--stage", "main", "--out", str(out), "--amp", "--steps", "2", *FAST]) == 0
    err = capsys.readouterr().err
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert ("no native bfloat16" in err) != native
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(e["loss"]) for e in log if "loss" in e)
    net, _ = load_model(out / "last.pt")
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_finetune_target_size_mismatch_names_files(tmp_path, davis, capsys):
    video = tmp_path / "frames"
    video.mkdir()
    write_frame(video / "00000.jpg", np.zeros((40, 40, 3), np.uint8))
    mask = davis / "Annotations" / "480p" / "synth-0000" / "00000.png"
    assert run(["--stage", "finetune", "--out", str(tmp_path / "o"), "--video", str(video),
                "--mask", str(mask), "--steps", "1", *FAST]) == 1
    err = capsys.readouterr().err
    assert "00000.png" in err and "must match" in err


def test_demo_recipe_trains_and_caches(tmp_path, photo_folder, monkeypatch):
    from mlvos.model.train import demo
    from mlvos.model.train.demo import is_cached_demo_model, train_demo_model

    ckpt = tmp_path / "tiny.pt"
    assert train_demo_model(ckpt, minutes=0.02, threads=2, photos=str(photo_folder)) == ckpt
    state = read_checkpoint(ckpt)
    assert state["variant"] == "tiny" and state["stage"] == "main"
    assert [h["stage"] for h in state["extra"]["train"]["history"]] == ["pretrain", "main"]
    stamp = ckpt.stat().st_mtime_ns
    train_demo_model(ckpt, minutes=0.02, threads=2, photos=str(photo_folder))  # cached
    assert ckpt.stat().st_mtime_ns == stamp
    # the recipe trains through KMN's read kernel and the checkpoint carries it
    assert load_model(ckpt)[0].config.read_kernel == 2.0
    # `mlvos demo` asks before reusing: other minutes or an older recipe are not this model
    assert is_cached_demo_model(ckpt, minutes=0.02, photos=str(photo_folder))
    assert not is_cached_demo_model(ckpt, minutes=4, photos=str(photo_folder))
    assert not is_cached_demo_model(tmp_path / "missing.pt", minutes=0.02)
    monkeypatch.setattr(demo, "DEMO_RECIPE", demo.DEMO_RECIPE + 1)
    assert not is_cached_demo_model(ckpt, minutes=0.02, photos=str(photo_folder))


def test_bn_calib_sets_frozen_statistics_from_the_runs_data(tmp_path, capsys):
    """--bn-calib: fresh statistics (not the init's), frozen during training (steps do not move
    them), and refused together with --train-bn."""
    assert run(["--stage", "main", "--out", str(tmp_path / "a"), "--steps", "1", *FAST]) == 0
    init = tmp_path / "a" / "last.pt"
    stats = {}
    for name, calib in (("b", "0"), ("c", "3")):
        out = tmp_path / name
        assert run(["--stage", "main", "--init", str(init), "--out", str(out), "--steps", "2",
                    "--bn-calib", calib, *FAST[2:]]) == 0
        stats[name] = read_checkpoint(out / "last.pt")["model"]
    before = read_checkpoint(init)["model"]
    keys = [k for k in before if k.endswith("running_mean")]
    assert keys
    # Frozen without calibration: the init's statistics, bit for bit.
    assert all(torch.equal(before[k], stats["b"][k]) for k in keys)
    # Calibrated: different statistics, and the same ones a 1-step run gets (frozen afterwards).
    assert not all(torch.equal(before[k], stats["c"][k]) for k in keys)
    out = tmp_path / "d"
    assert run(["--stage", "main", "--init", str(init), "--out", str(out), "--steps", "2",
                "--stop-after", "1", "--bn-calib", "3", *FAST[2:]]) == 0
    one = read_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(one[k], stats["c"][k]) for k in keys)
    assert run(["--stage", "main", "--init", str(init), "--out", str(tmp_path / "e"),
                "--bn-calib", "2", "--train-bn", *FAST[2:]]) == 1
    assert "cannot be combined with --train-bn" in capsys.readouterr().err

