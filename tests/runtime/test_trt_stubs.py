"""Type check of the runtime/backends/trt package against stubs generated from the real
TensorRT 10.3 and 11.4 Python bindings (tensorrt_facts.md §7). On by default; it skips only where
the wheels cannot be downloaded (no network) or no C compiler exists, and MLVOS_TRT_STUB_CHECK=0
turns it off.

It downloads the bindings wheels from PyPI (about 2 MB; the bindings are real wheels, only the
-libs packages are placeholders), compiles empty stand-ins for the nine libnvinfer /
libnvonnxparser / libnvinfer_plugin symbols the bindings import (so they load on a machine
without TensorRT; nothing is ever called), generates .pyi stubs with pybind11-stubgen, applies
the known fix-ups, and runs mypy on a copy of the package in which `trt` is the statically
imported module, the TRT-object parameters carry TensorRT types and the package's imports of its
own modules point at the copy (so calls between its modules are checked too). Stubs and wheels
live in a temporary directory and are never committed (the bindings are proprietary). The static
ast check in test_trt_api.py is the always-on equivalent; this one also checks argument types.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRT_PACKAGE = ROOT / "runtime" / "backends" / "trt"
COPY = "typed_trt"  # the typed copy's package name
WHEELS = {"10.3": "tensorrt-cu12-bindings==10.3.0", "11.4": "tensorrt-cu13-bindings==11.4.0.106"}
SYMBOLS = """
void* createInferBuilder_INTERNAL(void* a, int b) { return 0; }
void* createInferRefitter_INTERNAL(void* a, void* b, int c) { return 0; }
void* createInferRuntime_INTERNAL(void* a, int b) { return 0; }
void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c) { return 0; }
void* createNvOnnxParser_INTERNAL(void* a, void* b, int c) { return 0; }
void* getBuilderPluginRegistry(int a) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void* getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void* a, const char* b) { return 0; }
"""
PLANTED = """

def _planted(builder: trt.Builder, engine: trt.ICudaEngine, context: trt.IExecutionContext):
    config = builder.create_builder_config()
    config.int8_calibrator = None  # PLANTED removed in 11
    engine.get_binding_index("frame")  # PLANTED removed in 10
    context.set_tensor_address("frame", "0x10")  # PLANTED wrong type
"""

pytestmark = pytest.mark.skipif(
    os.environ.get("MLVOS_TRT_STUB_CHECK") == "0",
    reason="turned off with MLVOS_TRT_STUB_CHECK=0 (it downloads TensorRT bindings wheels)",
)


def _sh(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the stand-in TensorRT libraries")
    root = tmp_path_factory.mktemp("trt_stubs")
    r = _sh(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--target",
        str(root / "tools"),
        "pybind11-stubgen==3.0.0",
        "mypy",
    )
    if r.returncode:
        pytest.skip(f"cannot install pybind11-stubgen/mypy: {r.stderr[-300:]}")
    src = root / "stand.c"
    src.write_text(SYMBOLS)
    (root / "libs").mkdir()
    for major in (10, 11):
        for lib in ("nvinfer", "nvonnxparser", "nvinfer_plugin"):
            name = f"lib{lib}.so.{major}"
            r = _sh(
                "cc",
                "-shared",
                "-fPIC",
                f"-Wl,-soname,{name}",
                "-o",
                str(root / "libs" / name),
                str(src),
            )
            assert r.returncode == 0, r.stderr
    return root


def _stubs(tools: Path, version: str) -> Path:
    wheels = tools / f"wheels{version}"
    r = _sh(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        WHEELS[version],
        "-d",
        str(wheels),
    )
    if r.returncode:
        pytest.skip(f"cannot download {WHEELS[version]}: {r.stderr[-300:]}")
    site = tools / f"site{version}"
    for whl in wheels.glob("*.whl"):
        zipfile.ZipFile(whl).extractall(site)
    out = tools / f"stubs{version}"
    env = dict(
        os.environ,
        LD_LIBRARY_PATH=str(tools / "libs"),
        PYTHONPATH=f"{site}{os.pathsep}{tools / 'tools'}",
    )
    r = _sh(
        sys.executable,
        "-m",
        "pybind11_stubgen",
        "tensorrt_bindings",
        "-o",
        str(out),
        "--ignore-all-errors",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    pyi = out / "tensorrt_bindings" / "tensorrt.pyi"
    text = pyi.read_text()
    # Fix-ups (tensorrt_facts.md §7): parameters named `in`; a defaulted argument before a
    # required one; Dims parameters accept any sequence of ints (the bindings convert them);
    # IHostMemory and Dims support the buffer / sequence protocols.
    text = re.sub(r"\bin: ", "in_: ", text)
    text = re.sub(r"(power: Weights = None, channel_axis: [\w.]+)\)", r"\1 = 0)", text)
    text = re.sub(r"(\w+): Dims([,)])", r"\1: Dims | typing.Sequence[typing.SupportsInt]\2", text)
    text = text.replace(
        "class IHostMemory:",
        "class IHostMemory:\n    def __buffer__(self, flags: int) -> memoryview: ...",
        1,
    )
    text = text.replace(
        "class Dims:", "class Dims:\n    def __iter__(self) -> typing.Iterator[int]: ...", 1
    )
    pyi.write_text(text)
    (out / "tensorrt").mkdir()
    (out / "tensorrt" / "__init__.pyi").write_text(
        "from tensorrt_bindings import *\nfrom tensorrt_bindings.tensorrt import *\n"
        "__version__: str\n"
    )
    return out


def _typed_copy(dest: Path) -> Path:
    """The backend package copied to dest/typed_trt with `trt` imported statically, TRT-object
    parameters typed, its imports of its own modules pointing at the copy, and PLANTED appended
    to build.py. Each rule must match at least `at_least` times over the whole package."""
    rules = [
        (r"from __future__ import annotations\n", "\\g<0>\nimport tensorrt as trt\n", 1),
        (r"\n(\s+)trt = _import_trt\(\)\n", r"\n\1pass\n", 3),
        (r"\btrt: Any,", "_unused_trt: Any,", 3),
        (r"\bconfig: Any\b", "config: trt.IBuilderConfig", 1),
        (r"\bbuilder: Any\b", "builder: trt.Builder", 1),
        (r"\blogger: Any\b", "logger: trt.ILogger", 1),
        (
            r"engine: Any, context: Any",
            "engine: trt.ICudaEngine, context: trt.IExecutionContext",
            1,
        ),
    ]
    sources = sorted(TRT_PACKAGE.rglob("*.py"))
    assert TRT_PACKAGE / "build.py" in sources, f"no {TRT_PACKAGE}/build.py to plant errors in"
    matched = [0] * len(rules)
    out = dest / COPY
    for source in sources:
        text = re.sub(r"\bmlvos\.runtime\.backends\.trt\b", COPY, source.read_text())
        for i, (pattern, repl, _) in enumerate(rules):
            text, n = re.subn(pattern, repl, text)
            matched[i] += n
        if source.name == "build.py" and source.parent == TRT_PACKAGE:
            text += PLANTED
        path = out / source.relative_to(TRT_PACKAGE)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for (pattern, _, at_least), n in zip(rules, matched):
        assert n >= at_least, (
            f"the trt package changed shape: {pattern!r} matched {n} times; update rules"
        )
    return out


@pytest.mark.parametrize("version", sorted(WHEELS))
def test_trt_backend_type_checks_against_real_stubs(tools, version, tmp_path):
    stubs = _stubs(tools, version)
    probe = _typed_copy(tmp_path)
    env = dict(os.environ, MYPYPATH=str(stubs), PYTHONPATH=str(tools / "tools"))
    r = _sh(
        sys.executable,
        "-m",
        "mypy",
        "--check-untyped-defs",
        "--ignore-missing-imports",
        "--follow-imports=silent",
        "--no-error-summary",
        "--no-incremental",
        probe.name,
        env=env,
        cwd=tmp_path,
    )
    # Only the copy's own lines count (the generated stubs have harmless errors of their own).
    errors = [
        e for e in r.stdout.splitlines() if e.startswith(probe.name + "/") and ": error:" in e
    ]
    planted = {
        (path.relative_to(tmp_path).as_posix(), i + 1)
        for path in probe.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines())
        if "# PLANTED" in line
    }
    flagged = {(e.split(":")[0], int(e.split(":")[1])) for e in errors}
    missed = planted - flagged
    assert not missed, f"mypy missed planted errors at {sorted(missed)}:\n{r.stdout}"
    real = [e for e in errors if (e.split(":")[0], int(e.split(":")[1])) not in planted]
    assert not real, f"the trt package vs TensorRT {version} stubs:\n" + "\n".join(real)
