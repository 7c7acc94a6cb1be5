import pytest
import torch

from mlvos.errors import CheckpointError
from mlvos.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from mlvos.model.pretrained import load_imagenet_weights
from mlvos.model.registry import build_model
from mlvos.model.resnet import ResNetDown


@pytest.fixture
def tiny_ckpt(tmp_path):
    model = build_model("tiny", seed=3)
    path = save_checkpoint(tmp_path / "tiny.pt", model, stage="main", iteration=42)
    return model, path


def test_round_trip_rebuilds_model_from_file_alone(tiny_ckpt):
    model, path = tiny_ckpt
    raw = torch.load(path, weights_only=True)  # must load safely
    assert raw["variant"] == "tiny" and raw["stage"] == "main" and raw["iteration"] == 42
    assert raw["mlvos_version"] and raw["config"]["key_dim"] == 32
    loaded, state = load_model(path)
    assert loaded.variant == "tiny" and loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(f.name.startswith(".") for f in path.parent.iterdir())  # no temp files left


def test_seeded_init_is_reproducible():
    a, b = build_model("tiny", seed=7), build_model("tiny", seed=7)
    c = build_model("tiny", seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_truncated_checkpoint(tiny_ckpt, tmp_path):
    _, path = tiny_ckpt
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        load_model(bad)


def test_not_a_checkpoint(tmp_path):
    txt = tmp_path / "notes.pt"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(txt)
    sd = tmp_path / "bare.pt"
    torch.save(build_model("tiny").state_dict(), sd)
    with pytest.raises(CheckpointError, match="not an mlvos checkpoint"):
        read_checkpoint(sd)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_wrong_variant_and_key_mismatch(tiny_ckpt, tmp_path):
    _, path = tiny_ckpt
    with pytest.raises(CheckpointError, match="variant 'tiny', expected 'paper'"):
        load_model(path, variant="paper")
    state = torch.load(path, weights_only=True)
    del state["model"]["decoder.pred.weight"]
    state["model"]["decoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "mismatch.pt"
    torch.save(state, bad)
    with pytest.raises(
        CheckpointError, match=r"1 missing keys .*decoder\.pred\.weight.*1 unexpected"
    ):
        load_model(bad)


def test_imagenet_weights_load_into_every_backbone(tmp_path):
    # A torchvision-layout ResNet-50 state dict (same parameter names, plus the fc head).
    ref = ResNetDown("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512))
    for p in ref.parameters():
        torch.nn.init.normal_(p)
    sd = dict(ref.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    for name in ("conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var"):
        assert name in sd  # torchvision's names
    path = tmp_path / "resnet50.pth"
    torch.save(sd, path)
    model = build_model("paper")
    n = load_imagenet_weights(model, path)
    assert n > 0
    for enc in (model.query_encoder, model.memory_encoder):
        for level in enc.backbone.levels:
            assert torch.equal(level.down.layer3[2].conv2.weight, sd["layer3.2.conv2.weight"])
        assert torch.equal(enc.backbone.levels[0].down.conv1.weight, sd["conv1.weight"])
    with pytest.raises(CheckpointError, match="do not fit"):
        load_imagenet_weights(build_model("tiny"), path)


# ---------------------------------------------------------------------- memory-read priors
def test_read_priors_config_round_trip_and_old_configs(tiny_ckpt):
    import dataclasses

    from mlvos.model.config import ModelConfig

    model, path = tiny_ckpt
    cfg = dataclasses.replace(model.config, read_topk=20, read_kernel=7.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.read_priors == ("top-20", "KMN kernel sigma 7")
    # A checkpoint written before the options existed has neither key: both default to off.
    old = torch.load(path, weights_only=True)["config"]
    for key in ("read_topk", "read_kernel"):
        old.pop(key)
    loaded = ModelConfig.from_dict(old)
    assert (loaded.read_topk, loaded.read_kernel, loaded.read_priors) == (0, 0.0, ())


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"read_topk": -1}, "read_topk must be an integer >= 0"),
        ({"read_topk": 2.5}, "read_topk must be an integer >= 0"),
        ({"read_topk": True}, "read_topk must be an integer >= 0"),
        ({"read_kernel": -0.5}, "read_kernel must be a finite number >= 0"),
        ({"read_kernel": float("nan")}, "read_kernel must be a finite number >= 0"),
        ({"read_kernel": "7"}, "read_kernel must be a finite number >= 0"),
    ],
)
def test_read_priors_bad_values(tiny_ckpt, changes, match):
    from mlvos.errors import ConfigError
    from mlvos.model.checkpoint import with_read_options
    from mlvos.model.config import ModelConfig

    model, _ = tiny_ckpt
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict({**model.config.to_dict(), **changes})
    key, value = next(iter(changes.items()))
    with pytest.raises(ConfigError, match=match):
        with_read_options(model, **{key.removeprefix("read_"): value})


@pytest.mark.parametrize("changes", [{"mem_every": 0}, {"prev_every": -1}, {"prev_every": 2.0},
                                     {"mem_every": True}])
def test_schedule_bad_values(changes):
    from mlvos.errors import ConfigError
    from mlvos.model.config import ModelConfig
    from mlvos.model.registry import get_config

    key = next(iter(changes))
    with pytest.raises(ConfigError, match=f"{key} must be an integer >= 1"):
        ModelConfig.from_dict({**get_config("tiny").to_dict(), **changes})


def test_schedule_of_old_configs_is_stms():
    # tiny is validated without a previous-frame slot; paper and configs written before the
    # fields existed keep STM's schedule
    from mlvos.model.config import ModelConfig
    from mlvos.model.registry import get_config

    tiny = get_config("tiny")
    assert (tiny.mem_every, tiny.prev_every) == (5, 5)
    assert (get_config("paper").mem_every, get_config("paper").prev_every) == (5, 1)
    old = tiny.to_dict()
    del old["mem_every"], old["prev_every"]
    assert (ModelConfig.from_dict(old).mem_every, ModelConfig.from_dict(old).prev_every) == (5, 1)


def test_with_read_options_keeps_weights_and_changes_the_read(tiny_ckpt):
    from mlvos.model.checkpoint import with_read_options

    model, _ = tiny_ckpt
    model.eval()
    assert with_read_options(model) is model and with_read_options(model, topk=0) is model
    rng = torch.random.get_rng_state()
    prior = with_read_options(model, topk=3, kernel=1)
    assert torch.equal(rng, torch.random.get_rng_state())  # nothing re-initialized
    assert (prior.config.read_topk, prior.config.read_kernel) == (3, 1.0)
    assert model.config.read_topk == 0 and not prior.training and prior.variant == "tiny"
    for (k, a), (_, b) in zip(model.state_dict().items(), prior.state_dict().items()):
        assert a.data_ptr() == b.data_ptr(), k  # shared, not copied
    x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        q = model.encode_query(x)
        k, v = model.encode_memory(x, torch.rand(2, 64, 96), q.key)
        bank = (k[:, None], v[:, None], torch.ones(2, 1))
        assert not torch.equal(prior.read_decode(q, *bank), model.read_decode(q, *bank))
        back = with_read_options(prior, topk=0, kernel=0.0)
        assert back.config == model.config
        assert torch.equal(back.read_decode(q, *bank), model.read_decode(q, *bank))


def test_infer_cli_applies_read_overrides(tiny_ckpt, tmp_path, monkeypatch):
    import argparse

    import numpy as np

    from mlvos.data.synth import make_synthetic_dataset
    from mlvos.model import cli
    from mlvos.runtime import predictor

    _, path = tiny_ckpt
    data = make_synthetic_dataset(tmp_path / "D", sequences=1, frames=2, seed=1, height=64,
                                  width=64)
    seen = []

    def fake_propagate(runner, frames, mask, **kw):  # records the model, segments nothing
        seen.append(runner.model)
        return (np.zeros_like(mask) for _ in frames)

    monkeypatch.setattr(predictor, "propagate", fake_propagate)
    parser = argparse.ArgumentParser()
    cli.register_infer(parser.add_subparsers())
    base = ["infer", "--checkpoint", str(path), "--data", str(data)]
    with torch.enable_grad():  # restored on exit: `mlvos infer` disables autograd globally
        args = parser.parse_args([*base, "--out", str(tmp_path / "a"), "--read-topk", "20",
                                  "--read-kernel", "7"])
        assert args.func(args) == 0
        args = parser.parse_args([*base, "--out", str(tmp_path / "b")])
        assert args.func(args) == 0
    assert [(m.config.read_topk, m.config.read_kernel) for m in seen] == [(20, 7.0), (0, 0.0)]
