"""Shared fixtures of the runtime tests. torch and the exporter are imported inside the fixtures:
some tests in this folder run with torch blocked."""

import pytest


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
