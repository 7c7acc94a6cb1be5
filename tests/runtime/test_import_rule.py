"""The runtime core's import rule, checked on the source (every import, lazy ones and `require(...)`
included): mlvos.runtime imports the standard library, numpy, its backend libraries and, from
mlvos, only itself, mlvos.errors and the file helpers (mlvos.fileio, mlvos.palette). Tooling that
needs the model, the data generators, onnx or matplotlib lives outside (mlvos.profiling,
mlvos.export, mlvos.calib), so an edge install never reaches it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"

MLVOS_ALLOWED = ("mlvos.runtime", "mlvos.errors", "mlvos.fileio", "mlvos.palette")
# numpy, the backends' libraries (onnxruntime, TensorRT, cuda-python; nvtx for optional Nsight
# ranges), image/video IO (Pillow, OpenCV, PyAV for the H.264 overlay) and tqdm.
THIRD_PARTY_ALLOWED = {
    "numpy", "onnxruntime", "tensorrt", "cuda", "nvtx", "PIL", "cv2", "av", "tqdm"
}
# file (relative to runtime/) -> extra imports it may make, and why.
EXCEPTIONS: dict[str, set[str]] = {
    # The PyTorch reference backend: torch and the model are what it runs.
    "backends/torch_backend.py": {"torch", "mlvos.model"},
    # `mlvos run --data ROOT` reads a DAVIS-layout folder (numpy + pillow, no torch).
    "cli.py": {"mlvos.data.datasets"},
}


def imports_of(source: str) -> set[str]:
    """Every module a source imports: import statements at any depth and require("name", ...)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"relative import at line {node.lineno}: use mlvos.runtime.*")
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(node.args[0].value)
    return found


def violations(rel: str, source: str) -> list[str]:
    extra = EXCEPTIONS.get(rel, set())
    bad = []
    for name in sorted(imports_of(source)):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in THIRD_PARTY_ALLOWED:
            continue
        if any(name == a or name.startswith(a + ".") for a in (*MLVOS_ALLOWED, *extra)):
            continue
        bad.append(name)
    return bad


SOURCES = sorted(p.relative_to(RUNTIME).as_posix() for p in RUNTIME.rglob("*.py"))


@pytest.mark.parametrize("rel", SOURCES)
def test_runtime_module_follows_the_import_rule(rel):
    bad = violations(rel, (RUNTIME / rel).read_text())
    assert not bad, (
        f"runtime/{rel} imports {bad}: the runtime core may import only the standard library, "
        f"{sorted(THIRD_PARTY_ALLOWED)} and {list(MLVOS_ALLOWED)}; move tooling to "
        "mlvos.profiling / mlvos.export / mlvos.calib"
    )


def test_exceptions_are_still_needed():
    for rel, extra in EXCEPTIONS.items():
        used = imports_of((RUNTIME / rel).read_text())
        for allowed in extra:
            assert any(u == allowed or u.startswith(allowed + ".") for u in used), (
                f"runtime/{rel} no longer imports {allowed}: drop it from EXCEPTIONS"
            )


@pytest.mark.parametrize(
    "source, bad",
    [
        ("import torch\n", ["torch"]),
        ("def f():\n    from mlvos.model.network import STMNet\n", ["mlvos.model.network.STMNet"]),
        ("from mlvos.profiling import measure\n", ["mlvos.profiling.measure"]),
        ("x = require('onnx', 'export', 'checking graphs')\n", ["onnx"]),
        ("import matplotlib.pyplot as plt\n", ["matplotlib.pyplot"]),
        ("import numpy as np\nfrom mlvos.errors import InputError\nimport json\n", []),
    ],
)
def test_the_checker_catches_violations(source, bad):
    assert violations("predictor.py", source) == bad
