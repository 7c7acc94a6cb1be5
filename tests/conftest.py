import logging
import os

import pytest

# Keep CPU tests deterministic and polite on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Spin-waiting OpenMP threads make small torch convolutions 50-100x slower on a busy 2-core box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True)
def _mlvos_logging():
    """Undo what a test's mlvos.cli.main call configured on the "mlvos" logger (its handler,
    INFO level, propagate=False): it lasts for the process, and would hide the records of later
    tests from caplog (which listens on the root logger)."""
    logger = logging.getLogger("mlvos")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)  # setLevel, not .level =: it also clears the children's level caches
    logger.propagate = propagate


@pytest.fixture(scope="session", autouse=True)
def _seed():
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
    torch.set_num_threads(2)


def write_photo_folder(root, seed=0, n_bg=4, n_obj=3):
    """A folder of procedural 'photographs' (smooth colour fields + noise) and RGBA cut-outs:
    a stand-in for a photo collection that needs no download."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_bg):
        h, w = 200 + 20 * i, 300
        base = rng.uniform(0, 255, size=(4, 6, 3)).astype(np.float32)
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, 20, size=(h, w, 3)).astype(np.float32)
        cv2.imwrite(str(root / f"bg{i}.jpg"), np.clip(img, 0, 255).astype(np.uint8))
    for i in range(n_obj):
        s = 80 + 10 * i
        rgba = np.zeros((s, s, 4), np.uint8)
        rgba[..., :3] = np.clip(rng.integers(0, 255, size=3) + rng.normal(0, 25, (s, s, 3)),
                                0, 255)
        cv2.circle(rgba, (s // 2, s // 2), s // 3, (0, 0, 0, 255), -1)
        rgba[..., 3] = np.where(rgba[..., 3] > 0, 255, 0)
        rgba[s // 2 - s // 3:s // 2 + s // 3, s // 2 - s // 3:s // 2 + s // 3, :3] = \
            rng.integers(0, 255, size=3)
        cv2.imwrite(str(root / f"obj{i}.png"), rgba)
    return root


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """Path of a small procedural photo folder (see write_photo_folder)."""
    return write_photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def decisive_tiny():
    """() -> a seeded `tiny` STMNet whose decisions are decisive.

    A random model predicts near-ties that any rounding flips: its logits are shallow, and with
    shared keys its objects differ only through the mask inputs of the memory encoder, which a
    random stem (or late-fusion mask path) barely weighs. Steeper mask convs and last conv make
    objects distinct and decisions clear, so label comparisons test graphs and runtimes rather
    than ties. readout_gain (late fusion only) steepens the decoder's readout input: 5 makes a
    propagation decide enough pixels for the TensorRT decision test; INT8 comparisons take 1,
    where INT8's percent-level errors stay within `mlvos check`'s int8 tolerance.
    """

    def make(readout_gain: float = 5.0):
        torch = pytest.importorskip("torch")
        from mlvos.model.registry import build_model

        model = build_model("tiny", seed=0)
        with torch.no_grad():
            encoder = model.memory_encoder
            if hasattr(encoder, "mask_path"):  # late fusion: the masks' own conv path
                width = encoder.mask_path[-1][0].out_channels
                encoder.mask_path[0][0].weight.mul_(30.0)
                encoder.fuse[0][0].weight[:, -width:].mul_(30.0)
                # the readout's half of the decoder's first conv
                model.decoder.convFM.weight[:, : model.config.value_dim].mul_(readout_gain)
            for level in encoder.backbone.levels:  # STM's stem fusion
                for conv in level.down.extra_convs:
                    conv.weight.mul_(300.0)
            model.decoder.pred.weight.mul_(20.0)
            model.decoder.pred.bias.mul_(20.0)
        return model.eval()

    return make
