"""The TensorRT engine cache under SIGKILL, a full disk, a second build and damaged engines, on the
CPU through the fake TensorRT of tests/runtime/fake_trt.py (`mlvos engine` runs in a child
process with it installed: tests/faults/fake_trt_cli.py).

Write points of `mlvos engine` per graph, in Graph.ALL order: the timing cache, the engine, its
metadata (1-3 for the query encoder, 4-6, 7-9). An engine is used only if its metadata's key
and sha256 match it, so a kill or a damaged byte means a rebuild (or, without building allowed,
a clear refusal), never a torn engine reaching deserialize_cuda_engine."""

from __future__ import annotations

import hashlib

import pytest

from mlvos.cli import main
from mlvos.errors import DiskFullError
from mlvos.fileio import FAULT_ENV
from mlvos.runtime.backends.trt.cache import check_cached, engine_paths, read_metadata
from mlvos.runtime.errors import EngineCacheError
from mlvos.runtime.manifest import Manifest
from mlvos.runtime.spec import Graph

pytest.importorskip("onnxruntime")

PROFILE = dict(max_objects=4, opt_objects=2, max_height=192, max_width=320, opt_height=160,
               opt_width=288)


def _engine(export, engines, *extra: str) -> list[str]:
    return ["engine", "--model", str(export), "--precision", "fp32", "--out", str(engines),
            *[f"--{k.replace('_', '-')}={v}" for k, v in PROFILE.items()], *extra]


def _valid(export, engines) -> list[str]:
    """The graphs whose cached engine would be used as is (key and sha256 match)."""
    from mlvos.runtime.backends.trt import BuildOptions, Profile, plan_engines

    options = BuildOptions(engine_dir=engines, profile=Profile(**PROFILE))
    plan = plan_engines(Manifest.load(export), "fp32", options)
    return [g for g, p in plan.engines.items() if not check_cached(p.path, p.key)]


@pytest.mark.parametrize("point, file", [(2, "engine"), (3, "metadata")])
def test_kill_while_writing_an_engine_then_rebuild(export_dir, tmp_path, capsys, fakes, faults,
                                                   point, file):
    engines = tmp_path / "engines"
    engine, meta = engine_paths(engines, Graph.QUERY_ENCODER, "fp32")
    result = faults.run(_engine(export_dir, engines), fault=f"kill:{point}", trt=True)
    faults.assert_killed(result, point, "write", engine if file == "engine" else meta)
    assert not meta.exists()  # the engine alone (or nothing) is never used
    assert _valid(export_dir, engines) == []

    assert main(_engine(export_dir, engines)) == 0
    o = capsys.readouterr()
    why = "does not exist" if file == "engine" else f"{meta.name} is missing"
    assert f"query_encoder: (re)building because {engine.name if file == 'engine' else ''}" \
           in o.out and why in o.out
    assert "removed 1 partial file(s) that an interrupted write left" in o.err
    assert _valid(export_dir, engines) == list(Graph.ALL)
    assert faults.leftovers(engines) == []


@pytest.mark.parametrize("point, file", [(2, "engine"), (3, "metadata")])
def test_disk_full_while_writing_an_engine(export_dir, tmp_path, capsys, fakes, faults,
                                           monkeypatch, point, file):
    from mlvos.runtime.backends.trt import Profile, ensure_engines

    engines = tmp_path / "engines"
    engine, meta = engine_paths(engines, Graph.QUERY_ENCODER, "fp32")
    monkeypatch.setenv(FAULT_ENV, f"enospc:{point}")
    with pytest.raises(DiskFullError, match="no space left on the device for "
                       f"{engine if file == 'engine' else meta} "):
        ensure_engines(Manifest.load(export_dir), "fp32", engine_dir=engines,
                       profile=Profile(**PROFILE))
    assert not engine.exists() and not meta.exists() and faults.leftovers(engines) == []


@pytest.mark.parametrize("damage", ["bit-flip", "truncated"])
def test_damaged_engine_is_refused_or_rebuilt_never_deserialized(export_dir, tmp_path, fakes,
                                                                 monkeypatch, damage):
    from mlvos.runtime.backends.trt import Profile, TrtRunner, ensure_engines

    manifest, engines = Manifest.load(export_dir), tmp_path / "engines"
    kw = dict(engine_dir=engines, profile=Profile(**PROFILE))
    ensure_engines(manifest, "fp32", **kw)
    engine, meta_path = engine_paths(engines, Graph.READ_DECODER, "fp32")
    data = bytearray(engine.read_bytes())
    if damage == "bit-flip":
        data[len(data) // 2] ^= 0x04
    else:
        data = data[: len(data) // 2]
    engine.write_bytes(bytes(data))

    with pytest.raises(EngineCacheError, match="does not match its metadata .* modified or "
                       "truncated.*Build engines for this GPU with `mlvos engine"):
        TrtRunner(manifest, "fp32", allow_build=False, **kw)

    seen = []  # every blob handed to TensorRT's deserializer
    runtime = fakes.trt.Runtime
    real = runtime.deserialize_cuda_engine
    monkeypatch.setattr(runtime, "deserialize_cuda_engine",
                        lambda self, blob: seen.append(bytes(blob)) or real(self, blob))
    runner = TrtRunner(manifest, "fp32", **kw)  # rebuilds the damaged engine
    assert runner.records[Graph.READ_DECODER].built
    assert [r.built for g, r in runner.records.items() if g != Graph.READ_DECODER] == [False] * 2
    with runner:
        pass
    sums = {read_metadata(engine_paths(engines, g, "fp32")[1])["engine_sha256"]
            for g in Graph.ALL}
    assert len(seen) == 3 and {hashlib.sha256(b).hexdigest() for b in seen} == sums
    assert bytes(data) not in seen


def test_two_builds_of_one_engine(export_dir, tmp_path, fakes, faults):
    """A second `mlvos engine` waits while the first builds the same engine, then reuses it:
    each of the three engines is built once in all."""
    engines = tmp_path / "engines"
    first = faults.start(_engine(export_dir, engines), fault="stall:2", trt=True)
    faults.read_until(first.stderr, "mlvos-fault 2 write")  # building the query encoder's
    second = faults.start(_engine(export_dir, engines), trt=True)
    faults.read_until(second.stdout, f"waiting for pid {first.pid}: ")
    out1, err1 = first.communicate("\n")
    out2, err2 = second.communicate()
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "built by another process meanwhile; reusing it" in out2
    reports = [x for x in (out1 + out2).splitlines() if "(built;" in x or "(cached;" in x]
    assert sum("(built;" in x for x in reports) == 3 and len(reports) == 6  # one line per engine
    assert _valid(export_dir, engines) == list(Graph.ALL)
    assert faults.leftovers(engines) == []
