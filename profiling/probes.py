"""What a profile measurement reads: stage timers, the timed runner proxy and memory probes.

torch is never imported here: torch timers and probes use the module the runner holds.
"""

from __future__ import annotations

import resource
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from mlvos.runtime.spec import WORK_STAGES

__all__ = [
    "WORK_STAGES",
    "DeviceMemoryProbe",
    "StageTimer",
    "TorchCudaTimer",
    "WallTimer",
    "device_memory_probe",
    "host_memory",
    "reset_peak_rss",
    "timer_for",
]

# Stages that do work; "total" is end to end.


# ------------------------------------------------------------------------------------ timers
class StageTimer(ABC):
    """Measures spans of work: `a = mark(); ...; b = mark(); elapsed_ms(a, b)`.

    `kind` is "wall" (host clock after a device synchronize) or "device" (events on the device's
    timeline, e.g. CUDA events). Marks are cheap; `elapsed_ms` may wait for the device, so call it
    after the frame, not between stages.
    """

    kind: str = "wall"
    name: str = "wall clock"

    @abstractmethod
    def mark(self) -> Any:
        """Record a point in time (on the host or in the device's stream)."""

    @abstractmethod
    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks."""


class WallTimer(StageTimer):
    """time.perf_counter after `sync()` (the runner's synchronize: a no-op on CPU backends)."""

    kind, name = "wall", "wall clock (perf_counter after synchronize)"

    def __init__(self, sync: Callable[[], None] | None = None):
        self.sync = sync

    def mark(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3


class TorchCudaTimer(StageTimer):
    """CUDA events recorded on torch's current stream of `device`."""

    kind, name = "device", "CUDA events (torch.cuda.Event)"

    def __init__(self, torch: Any, device: Any):
        self.torch, self.device = torch, device

    def mark(self) -> Any:
        ev = self.torch.cuda.Event(enable_timing=True)
        ev.record(self.torch.cuda.current_stream(self.device))
        return ev

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))


def _torch_cuda_device(runner: Any) -> Any | None:
    """The runner's torch.device if it is the torch backend on CUDA, else None."""
    device = getattr(runner, "device", None)
    if getattr(runner, "name", "") == "torch" and getattr(device, "type", "") == "cuda":
        return device
    return None


def timer_for(runner: Any) -> StageTimer:
    """The most precise timer for a runner: its own `make_timer()`, CUDA events for torch on
    CUDA, else the wall clock after `runner.synchronize()`."""
    make = getattr(runner, "make_timer", None)
    if callable(make):
        return make()
    device = _torch_cuda_device(runner)
    if device is None:
        return WallTimer(getattr(runner, "synchronize", None))
    return TorchCudaTimer(runner.torch, device)


# ---------------------------------------------------------------------------- memory probes
def _proc_status() -> dict[str, float]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return out


def host_memory() -> dict[str, float]:
    """{"rss_mb": current RSS, "peak_rss_mb": peak RSS (since the last reset_peak_rss)} in MiB."""
    st = _proc_status()
    if "VmRSS" in st and "VmHWM" in st:
        return {"rss_mb": st["VmRSS"], "peak_rss_mb": st["VmHWM"]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes vs kB
    return {"rss_mb": float("nan"), "peak_rss_mb": peak_mb}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class DeviceMemoryProbe:
    """Peak device memory of a torch CUDA device (torch.cuda.max_memory_allocated)."""

    def __init__(self, torch: Any, device: Any):
        self.torch, self.device = torch, device

    def reset(self) -> None:
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float:
        return self.torch.cuda.max_memory_allocated(self.device) / 2**20


def device_memory_probe(runner: Any) -> Any | None:
    """The runner's own `device_memory_probe()` if it has one, torch's for torch on CUDA, or
    None (host memory only)."""
    own = getattr(runner, "device_memory_probe", None)
    if callable(own):
        return own()
    device = _torch_cuda_device(runner)
    return None if device is None else DeviceMemoryProbe(runner.torch, device)
