import pytest
import torch

from mlvos.errors import ConfigError, InputError
from mlvos.model.registry import build_model, get_config, variants
from mlvos.runtime.spec import padding_for


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def models():
    return {v: build_model(v, seed=0).eval() for v in variants()}


def _frame(h, w, stride, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
    return torch.nn.functional.pad(x, padding_for(h, w, stride).as_torch)


def test_registry_has_required_variants():
    assert {"paper", "stm-r50", "tiny"} <= set(variants())
    assert get_config("paper").query_backbone.levels == 2
    assert get_config("stm-r50").query_backbone.levels == 1


@pytest.mark.parametrize("variant", ["tiny", "stm-r50", "paper"])
@pytest.mark.parametrize("objects", [1, 3])
def test_stage_shapes_at_odd_size(models, variant, objects):
    m = models[variant]
    x = _frame(241, 427, m.stride)
    H, W = x.shape[-2:]
    assert H % m.stride == 0 and W % m.stride == 0 and H >= 241 and W >= 427
    q = m.encode_query(x)
    ck, cv = m.config.key_dim, m.config.value_dim
    h, w = H // 16, W // 16
    assert q.key.shape == (1, ck, h, w) and q.value.shape == (1, cv, h, w)
    assert q.skip8.shape[-2:] == (2 * h, 2 * w) and q.skip4.shape[-2:] == (4 * h, 4 * w)
    probs = torch.rand(objects, H, W)
    mk, mv = m.encode_memory(x, probs)
    # a shared-key model stores the frame's key once for all objects (object-free key bank)
    key_rows = 1 if m.config.shared_key else objects
    assert mk.shape == (key_rows, ck, h, w) and mv.shape == (objects, cv, h, w)
    bank_k = torch.stack([mk, mk], dim=1)
    bank_v = torch.stack([mv, mv], dim=1)
    logits = m.read_decode(q, bank_k, bank_v, torch.ones(objects, 2))
    assert logits.shape == (objects, H, W)
    probs_out = m.aggregate(logits)
    assert probs_out.shape == (objects + 1, H, W)
    for t in (*q, mk, mv, logits, probs_out):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(probs_out.sum(0), torch.ones(H, W), atol=1e-5, rtol=0)


def test_soft_aggregation_sums_to_one_and_orders(models):
    logits = torch.randn(4, 33, 17) * 10
    p = models["tiny"].aggregate(logits)
    torch.testing.assert_close(p.sum(0), torch.ones(33, 17), atol=1e-5, rtol=0)
    assert (p >= 0).all()
    # A confident object wins its pixels.
    logits = torch.full((2, 8, 8), -20.0)
    logits[1, :4] = 20.0
    assert (models["tiny"].aggregate(logits).argmax(0)[:4] == 2).all()


def test_partially_valid_bank_equals_read_over_valid_frames(models):
    m = models["tiny"]
    x = _frame(64, 96, m.stride)
    q = m.encode_query(x)
    keys, values = zip(
        *(
            m.encode_memory(_frame(64, 96, m.stride, s), torch.rand(2, *x.shape[-2:]))
            for s in range(3)
        )
    )
    full_k, full_v = torch.stack(keys, 1), torch.stack(values, 1)
    ref = m.read_decode(q, full_k, full_v, torch.ones(2, 3))
    # Same three frames in a 6-slot bank whose other slots are empty (zero-filled), shuffled.
    cap_k = torch.zeros(full_k.shape[0], 6, *full_k.shape[2:])
    cap_v = torch.zeros(2, 6, *full_v.shape[2:])
    valid = torch.zeros(2, 6)
    for src, dst in zip(range(3), (4, 0, 2)):
        cap_k[:, dst], cap_v[:, dst], valid[:, dst] = full_k[:, src], full_v[:, src], 1.0
    out = m.read_decode(q, cap_k, cap_v, valid)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # Garbage (finite) in empty slots must not matter either.
    cap_k[:, 1] = 50.0
    cap_v[:, 1] = -50.0
    torch.testing.assert_close(m.read_decode(q, cap_k, cap_v, valid), ref, atol=1e-4, rtol=1e-4)
    # Per-object validity: object 1 sees only one frame.
    valid2 = valid.clone()
    valid2[1] = 0
    valid2[1, 4] = 1
    one = m.read_decode(q, full_k[-1:, :1], full_v[1:, :1], torch.ones(1, 1))
    torch.testing.assert_close(
        m.read_decode(q, cap_k, cap_v, valid2)[1:], one, atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("grad", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("kernel", [0.0, 2.0])
def test_object_free_key_bank_equals_per_object_keys(models, kernel, grad):
    """One affinity per frame for all objects (shared_memory_read) gives what a read per object
    over its own copy of the keys gives, per-object validity (an object joining later)
    included; and the decoder's shared query parts equal the per-object ones."""
    import dataclasses

    from mlvos.model.network import STMNet

    base = models["tiny"]
    m = STMNet(dataclasses.replace(base.config, read_kernel=kernel), "tiny").eval()
    m.load_state_dict(base.state_dict())
    # the inference and the training forms of the read (model/memory.py)
    with torch.set_grad_enabled(grad):
        x = _frame(64, 96, m.stride)
        q = m.encode_query(x)
        keys, values = zip(*(m.encode_memory(_frame(64, 96, m.stride, s), torch.rand(3, 64, 96))
                             for s in range(4)))
        bank_k, bank_v = torch.stack(keys, 1), torch.stack(values, 1)  # (1, 4, ...), (3, 4, ...)
        assert bank_k.shape[0] == 1 and bank_v.shape[0] == 3
        valid = torch.ones(3, 4)
        valid[2, :2] = 0  # object 3 joined at the third stored frame
        shared = m.read_decode(q, bank_k, bank_v, valid)
        per_object = m.read_decode(q, bank_k.expand(3, *bank_k.shape[1:]), bank_v, valid)
        torch.testing.assert_close(shared, per_object, atol=2e-4, rtol=1e-4)
        # the per-object reference with query features expanded to O (the old contract)
        expanded = type(q)(*(t.expand(3, *t.shape[1:]) for t in q))
        old = m.read_decode(expanded, bank_k.expand(3, *bank_k.shape[1:]), bank_v, valid)
        torch.testing.assert_close(shared, old, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "frame, match",
    [
        (torch.zeros(1, 4, 64, 64, dtype=torch.uint8), "RGB"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.int32), "dtype"),
        (torch.zeros(1, 3, 16, 64, dtype=torch.uint8), "at least"),
        (torch.zeros(1, 3, 70, 64, dtype=torch.uint8), "multiple of the network stride"),
        (torch.zeros(3, 64, 64, dtype=torch.uint8), r"\(B, 3, H, W\)"),
    ],
)
def test_bad_frames(models, frame, match):
    with pytest.raises(InputError, match=match):
        models["tiny"].encode_query(frame)


def test_bad_masks_and_bank(models):
    m = models["tiny"]
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(InputError, match="frame's"):
        m.encode_memory(x, torch.zeros(1, 32, 64))
    with pytest.raises(InputError, match="float"):
        m.encode_memory(x, torch.zeros(1, 64, 64, dtype=torch.uint8))
    q = m.encode_query(x)
    k, v = m.encode_memory(x, torch.zeros(1, 64, 64))
    with pytest.raises(InputError, match="at least one valid"):
        m.read_decode(q, k[:, None], v[:, None], torch.zeros(1, 1))
    with pytest.raises(InputError, match="bank_value"):
        m.read_decode(q, k[:, None], v[:, None, :5], torch.ones(1, 1))


def test_forward_is_not_the_api(models):
    with pytest.raises(NotImplementedError, match="encode_query"):
        models["tiny"](torch.zeros(1))


def test_l2_read_is_softmax_of_negative_squared_distance():
    from mlvos.model.memory import memory_read

    g = torch.Generator().manual_seed(0)
    o, t, ck, cv, h, w = 2, 3, 8, 5, 4, 6
    q = torch.randn(o, ck, h, w, generator=g)
    k = torch.randn(o, t, ck, h, w, generator=g) * 2
    v = torch.randn(o, t, cv, h, w, generator=g)
    valid = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    qf = q.flatten(2).transpose(1, 2)  # (O, hw, Ck)
    kf = k.permute(0, 1, 3, 4, 2).reshape(o, t * h * w, ck)
    vf = v.permute(0, 1, 3, 4, 2).reshape(o, t * h * w, cv)
    d2 = torch.cdist(qf, kf) ** 2  # (O, hw, Thw)
    mask = valid.repeat_interleave(h * w, dim=1)[:, None]  # (O, 1, Thw)
    ref = torch.softmax(-d2 / ck**0.5 + (mask - 1) * 1e4, dim=-1) @ vf
    ref = ref.transpose(1, 2).reshape(o, cv, h, w)
    out = memory_read(q, k, v, valid, "l2")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # ... and differs from the dot product where key norms differ.
    assert (memory_read(q, k, v, valid, "dot") - ref).abs().max() > 1e-2


def test_shared_key_memory_key_is_the_query_key(models):
    from mlvos.model.config import ModelConfig

    m = models["tiny"]
    assert m.config.shared_key and m.config.similarity == "l2"
    # No key projection in the memory encoder: keys come from the query encoder.
    assert not any(".kv.key." in n for n, _ in m.memory_encoder.named_parameters(prefix="m"))
    x = _frame(64, 96, m.stride)
    k, v = m.encode_memory(x, torch.rand(3, *x.shape[-2:]))
    qk = m.encode_query(x).key
    torch.testing.assert_close(k, qk, atol=0, rtol=0)  # once for the 3 objects
    assert v.shape[0] == 3
    # STM's separate keys stay available (and the default of the other variants).
    assert not models["paper"].config.shared_key
    assert any(".kv.key." in n for n, _ in
               models["paper"].memory_encoder.named_parameters(prefix="m"))
    assert ModelConfig.from_dict(m.config.to_dict()) == m.config
    with pytest.raises(ConfigError, match="similarity"):
        ModelConfig.from_dict({**m.config.to_dict(), "similarity": "cosine"})


def test_late_fusion_memory_encoder_encodes_the_frame_once_and_objects_independently():
    import dataclasses

    cfg = dataclasses.replace(get_config("tiny"), memory_fusion="late")
    m = build_model(config=cfg, seed=0).eval()
    x = _frame(64, 96, m.stride)
    probs = torch.rand(3, *x.shape[-2:])
    calls = []
    hook = m.memory_encoder.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        key, value = m.encode_memory(x, probs)
    finally:
        hook.remove()
    assert len(calls) == 1  # the frame's features are shared by the three objects
    assert key.shape[0] == 1 and value.shape[0] == 3
    # each object's value depends on its own and the others' probabilities, not on the order
    perm = torch.tensor([2, 0, 1])
    _, swapped = m.encode_memory(x, probs[perm])
    torch.testing.assert_close(swapped, value[perm], atol=1e-5, rtol=1e-5)
    # and on the mask: a different mask of object 0 changes object 0's value
    other = probs.clone()
    other[0] = 1.0 - other[0]
    _, changed = m.encode_memory(x, other)
    assert (changed[0] - value[0]).abs().max() > 1e-3


def test_memory_fusion_is_validated():
    import dataclasses

    with pytest.raises(ConfigError, match="memory_fusion must be one of"):
        dataclasses.replace(get_config("tiny"), memory_fusion="early").validate()
