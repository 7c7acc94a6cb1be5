"""`mlvos data synth|check` wiring and atomic output on failure."""

from __future__ import annotations

import argparse

import pytest

from mlvos.data import cli, synth
from mlvos.errors import DatasetError, InputError


def _run(argv):
    parser = argparse.ArgumentParser(prog="mlvos")
    cli.register_data(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_synth_then_check(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["data", "synth", "--out", str(out), "--sequences", "2", "--frames", "3",
            "--seed", "4", "--height", "40", "--width", "64", "--split", "train"]
    assert _run(argv) == 0
    assert (out / "ImageSets" / "2017" / "train.txt").read_text() == "synth-0000\nsynth-0001\n"
    with pytest.raises(InputError, match="already exists"):
        _run(argv)
    assert _run(argv + ["--force"]) == 0
    capsys.readouterr()
    assert _run(["data", "check", str(out), "--split", "train"]) == 0
    text = capsys.readouterr().out
    assert "synth-0001" in text and "ok: 2 sequences, 6 frames" in text
    with pytest.raises(DatasetError, match="val.txt"):
        _run(["data", "check", str(out)])
    assert _run(["data"]) == 2  # no subcommand: help


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    import mlvos.palette as palette

    calls = {"n": 0}
    real = palette.encode_mask

    def flaky(ids):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full")
        return real(ids)

    monkeypatch.setattr(palette, "encode_mask", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.make_synthetic_dataset(tmp_path / "ds", sequences=2, frames=3, seed=0,
                                     height=32, width=48)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temp folder
