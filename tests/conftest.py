import os

import pytest

# Keep CPU tests deterministic and polite on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Spin-waiting OpenMP threads make small torch convolutions 50-100x slower on a busy 2-core box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def _seed():
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def decisive_tiny():
    """() -> a seeded `tiny` STMNet whose decisions are decisive.

    A random model predicts near-ties that any rounding flips: its logits are shallow, and with
    shared keys its objects differ only through the mask inputs of the memory encoder, which a
    random stem barely weighs. Steeper mask convs and last conv make objects distinct and
    decisions clear, so label comparisons test graphs and runtimes rather than ties.
    """

    def make():
        torch = pytest.importorskip("torch")
        from mlvos.model.registry import build_model

        model = build_model("tiny", seed=0)
        with torch.no_grad():
            for level in model.memory_encoder.backbone.levels:
                for conv in level.down.extra_convs:
                    conv.weight.mul_(300.0)
            model.decoder.pred.weight.mul_(20.0)
            model.decoder.pred.bias.mul_(20.0)
        return model.eval()

    return make
