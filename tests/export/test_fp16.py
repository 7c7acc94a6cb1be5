"""FP16 conversion helpers that need no export."""

from __future__ import annotations

import math

import numpy as np

from mlvos.export.fp16 import valid_affinity_absmax
from mlvos.runtime.spec import Tensor as T


def test_valid_affinity_ignores_empty_slots():
    rng = np.random.default_rng(0)
    ck, h, w = 8, 2, 3
    q = rng.standard_normal((1, ck, h, w)).astype(np.float32)
    keys = rng.standard_normal((2, 3, ck, h, w)).astype(np.float32)
    keys[:, 2] = 1e6  # an empty slot holding garbage must not count
    valid = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    feed = {T.QUERY_KEY: q, T.BANK_KEY: keys, T.BANK_VALID: valid}
    qf = q[0].reshape(ck, -1).T / math.sqrt(ck)
    expect = max(np.abs(qf @ keys[o, t].reshape(ck, -1)).max() for o, t in [(0, 0), (0, 1), (1, 0)])
    assert np.isclose(valid_affinity_absmax([feed]), expect, rtol=1e-6)
