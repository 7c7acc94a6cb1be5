"""Shared fixtures of the runtime tests. torch and the exporter are imported inside the fixtures:
some tests in this folder run with torch blocked."""

import importlib.util
import sys
from pathlib import Path

import pytest

FAKE_TRT_MODULE = "mlvos_tests_fake_trt"  # sys.modules name of tests/runtime/fake_trt.py


def _fake_trt():
    """tests/runtime/fake_trt.py as a module, loaded by path once: with --import-mode=importlib
    test files cannot import a sibling module, and it is no test module itself."""
    if FAKE_TRT_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            FAKE_TRT_MODULE, Path(__file__).with_name("fake_trt.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[FAKE_TRT_MODULE] = module  # before exec: dataclasses/enums look their module up
        spec.loader.exec_module(module)
    return sys.modules[FAKE_TRT_MODULE]


@pytest.fixture()
def fakes(monkeypatch):
    """Fake `tensorrt` (10.3.0) and `cuda.bindings.runtime` in sys.modules for one test
    (fake_trt.install): a namespace with `cuda`, `trt` and `use_trt(version)`."""
    return _fake_trt().install(monkeypatch)


@pytest.fixture(scope="module")
def decisive_export(tmp_path_factory, decisive_tiny):
    """make(**export_kwargs) -> export dir of the decisive `tiny` (tests/conftest.py)."""

    def make(**export_kwargs):
        pytest.importorskip("torch")
        from mlvos.export.api import export_checkpoint
        from mlvos.model.checkpoint import save_checkpoint

        root = tmp_path_factory.mktemp("export")
        ckpt = save_checkpoint(root / "tiny.pt", decisive_tiny())
        return export_checkpoint(ckpt, root / "export", **export_kwargs)

    return make
