import numpy as np
import pytest

from mlvos.errors import InputError
from mlvos.runtime import spec


@pytest.mark.parametrize(
    "h, w, stride", [(241, 427, 32), (480, 854, 32), (480, 854, 16), (64, 64, 32)]
)
def test_padding_round_trip(h, w, stride):
    pad = spec.padding_for(h, w, stride)
    x = np.arange(h * w, dtype=np.float32).reshape(1, h, w)
    y = spec.pad_array(x, pad)
    assert y.shape[-2] % stride == 0 and y.shape[-1] % stride == 0
    assert y.shape[-2:] == spec.padded_size(h, w, stride)
    # Centered: the extra row/column goes after (STM's floor(diff / 2) before).
    assert pad.top <= pad.bottom <= pad.top + 1 and pad.left <= pad.right <= pad.left + 1
    assert np.array_equal(spec.unpad_array(y, pad), x)


def test_torch_order():
    pad = spec.Padding(1, 2, 3, 4)
    assert pad.as_torch == (3, 4, 1, 2)


@pytest.mark.parametrize(
    "text, expected",
    [("480p", ("480p", 480, 854)), ("1080p", ("1080p", 1080, 1920)), ("4K", ("4k", 2160, 3840)),
     ("64x96", ("64x96", 64, 96))],
)
def test_parse_resolution(text, expected):
    assert spec.parse_resolution(text) == expected


@pytest.mark.parametrize("text", ["8k", "16x16", "axb"])
def test_parse_resolution_rejects(text):
    with pytest.raises(InputError, match="resolution"):
        spec.parse_resolution(text)


@pytest.mark.parametrize(
    "text, expected",
    [("cpu", ("cpu", 0)), ("CUDA", ("cuda", 0)), ("cuda:1", ("cuda", 1)), ("2", ("cuda", 2))],
)
def test_parse_device(text, expected):
    assert spec.parse_device(text) == expected


@pytest.mark.parametrize("text", ["gpu0", "cuda:x", "cuda:-1", ""])
def test_parse_device_rejects(text):
    with pytest.raises(InputError, match="use cpu, cuda or cuda:N"):
        spec.parse_device(text)


def test_one_device_syntax_and_default_precision_everywhere():
    import argparse

    from mlvos.runtime import cli
    from mlvos.runtime.backends import DEFAULT_PRECISION, open_runner

    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        open_runner("no-such-export", backend="ort", device="gpu0")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.register_engine(sub)
    cli.register_run(sub)
    args = parser.parse_args(["engine", "--model", "m", "--device", "cuda:1"])
    assert args.device == 1 and args.precision == DEFAULT_PRECISION["trt"] == "fp16"
    with pytest.raises(SystemExit):  # TensorRT builds on a GPU
        parser.parse_args(["engine", "--model", "m", "--device", "cpu"])
    run = parser.parse_args(["run", "--model", "m", "--input", "v", "--out", "o"])
    assert run.precision is None  # main_run takes DEFAULT_PRECISION[--backend]
    assert DEFAULT_PRECISION == {"ort": "fp32", "trt": "fp16", "torch": "fp32"}
