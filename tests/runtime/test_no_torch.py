"""mlvos.runtime (and every CLI --help) must work on a machine without torch."""

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "onnx", "onnxruntime", "tensorrt"):
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runtime_imports_without_torch():
    r = _run(
        """
        import pkgutil, importlib, mlvos.runtime
        names = [m.name for m in pkgutil.walk_packages(mlvos.runtime.__path__, "mlvos.runtime.")]
        for n in names:
            importlib.import_module(n)
        from mlvos.runtime import spec
        assert spec.padded_size(241, 427, 32) == (256, 448)
        assert "torch" not in sys.modules
        print("ok", len(names))
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


def test_blocker_really_blocks():
    r = _run("import torch")
    assert r.returncode != 0 and "blocked" in r.stderr


def test_every_cli_help_works_without_optional_packages():
    r = _run(
        """
        from mlvos.cli import COMMANDS, main
        for name in ["", *COMMANDS]:
            try:
                main([name, "--help"] if name else ["--help"])
            except SystemExit as e:
                assert e.code == 0, (name, e.code)
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert r.returncode == 0, r.stderr
