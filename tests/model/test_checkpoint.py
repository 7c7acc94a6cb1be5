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
