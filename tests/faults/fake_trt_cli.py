"""`mlvos ARGS` with the fake TensorRT and CUDA of tests/runtime/fake_trt.py installed, so that the
fault tests can run `mlvos engine` in a child process (a real SIGKILL) on a CPU.

Usage: python tests/faults/fake_trt_cli.py engine --model EXPORT ...
Not a test module (pytest collects test_*.py only).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def main() -> int:
    path = Path(__file__).resolve().parents[1] / "runtime" / "fake_trt.py"
    spec = importlib.util.spec_from_file_location("mlvos_tests_fake_trt", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # before exec: its dataclasses and enums look it up
    spec.loader.exec_module(module)
    module.install(pytest.MonkeyPatch())  # never undone: the process ends with the command

    from mlvos.cli import main as mlvos_main

    return mlvos_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
