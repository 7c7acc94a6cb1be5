"""Shared fixtures of the runtime tests. torch and the exporter are imported inside the fixtures:
some tests in this folder run with torch blocked."""

import pytest


@pytest.fixture(scope="module")
def decisive_export(tmp_path_factory):
    """make(**export_kwargs) -> export dir of a seeded `tiny` whose last conv is 20x steeper.

    A random model predicts near-ties that any rounding flips; steeper logits make its decisions
    decisive, so label comparisons test the graphs and the runtime rather than ties.
    """

    def make(**export_kwargs):
        torch = pytest.importorskip("torch")
        from mlvos.export.api import export_checkpoint
        from mlvos.model.checkpoint import save_checkpoint
        from mlvos.model.registry import build_model

        root = tmp_path_factory.mktemp("export")
        model = build_model("tiny", seed=0)
        with torch.no_grad():
            model.decoder.pred.weight.mul_(20.0)
            model.decoder.pred.bias.mul_(20.0)
        ckpt = save_checkpoint(root / "tiny.pt", model)
        return export_checkpoint(ckpt, root / "export", log=None, **export_kwargs)

    return make
