"""Versions and hardware, for bug reports (`mlvos env`) and profiling reports. Never crashes on a
missing package."""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import sys


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything
        return f"not installed ({type(e).__name__})"
    return str(getattr(mod, "__version__", "installed (no __version__)"))


def _nvidia_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return "none (nvidia-smi not found)"
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return out.stdout.strip() or f"nvidia-smi: {out.stderr.strip()}"


def collect() -> dict[str, str]:
    from mlvos import __version__

    info = {
        "mlvos": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    for name in ("numpy", "torch", "onnx", "onnxruntime", "polygraphy"):
        info[name] = _version(name)
    # Importing tensorrt only loads the bindings; no runtime/builder is created here, which is what
    # segfaults without a GPU.
    info["tensorrt"] = _version("tensorrt")
    try:
        import torch

        info["torch.cuda"] = (
            f"{torch.version.cuda}, {torch.cuda.device_count()} device(s)"
            if torch.cuda.is_available()
            else f"not available (built for CUDA {torch.version.cuda})"
        )
    except Exception:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime providers"] = ", ".join(ort.get_available_providers())
    except Exception:
        pass
    for label, module in (("modelopt", "modelopt"), ("cuda-python", "cuda.bindings"),
                          ("opencv", "cv2"), ("pillow", "PIL")):
        info[label] = _version(module)
    info["cuda"] = _cuda_versions()
    info["gpu"] = _nvidia_smi()
    l4t = _l4t_release()
    if l4t:
        info["L4T (Jetson)"] = l4t
    return info


def _cuda_versions() -> str:
    try:
        from mlvos.runtime.backends import cuda_mem

        v = cuda_mem.cuda_versions()
        return f"driver supports {v['driver']}, runtime {v['runtime']}"
    except Exception as e:  # noqa: BLE001 - a report never crashes
        return f"unknown ({type(e).__name__})"


def _l4t_release() -> str | None:
    """The Jetson Linux release ("R36 (release), REVISION: 4.0" on JetPack 6.1), or None."""
    try:
        with open("/etc/nv_tegra_release") as f:
            return f.readline().strip().lstrip("# ") or None
    except OSError:
        return None
