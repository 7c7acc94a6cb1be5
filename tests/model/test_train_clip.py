import torch

from mlvos.model.registry import build_model
from mlvos.model.train.clip import ClipModel


def test_clip_forward_and_backward():
    torch.manual_seed(0)
    net = build_model("tiny", seed=0)
    clip = ClipModel(net).train()
    frames = torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(2, 2, 64, 64)
    masks[0, 0, :20, :20] = 1
    masks[0, 1, 30:, 30:] = 1
    masks[1, 0, 10:40, 10:40] = 1
    valid = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = clip(frames, masks, valid)
    assert out.shape == (2, 2, 3, 64, 64)
    probs = out.softmax(2)
    assert torch.isfinite(out).all()
    # The padding object slot of sample 1 gets (almost) no probability.
    assert probs[1, :, 2].max() < 1e-5
    labels = torch.zeros(2, 2, 64, 64, dtype=torch.long)
    loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), labels.flatten(0, 1))
    loss.backward()
    assert net.decoder.pred.weight.grad is not None
    # BatchNorm statistics stay frozen in training mode.
    bn = net.query_encoder.backbone.levels[0].down.bn1
    assert not bn.training
