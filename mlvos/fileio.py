"""File helpers: atomic writing (an artifact is either complete or absent, never half-written),
advisory locks between writers, stable JSON text and sha256 sums.

Faults: a write that runs out of space raises DiskFullError (one line: the path, the space left,
what to do) and leaves nothing partial. A write killed midway leaves at most a hidden temporary
named after its pid (`.NAME.<pid>.<random>.tmp`); the first atomic write into that folder by a
later process removes it, its writer being gone. Two processes writing one artifact are kept apart
by `file_lock`. Stdlib only: the runtime imports this module.

For the fault tests (tests/faults), MLVOS_FAULT makes a process fail at its Nth write point
(`_fault_point`): "kill:N" (SIGKILL, the temporary cut to half first), "enospc:N" (ENOSPC),
"stall:N" (block until a line arrives on stdin) or "trace" (report every point on stderr).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mlvos.errors import BusyError, DiskFullError, InputError, MlvosError

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks (writes stay atomic)
    fcntl = None

logger = logging.getLogger(__name__)

FAULT_ENV = "MLVOS_FAULT"
# A temporary of this module: .NAME.<pid>.<mkstemp's random part, no dots>.tmp
_TEMP_NAME = re.compile(r"\..+\.(\d+)\.[^.]+\.tmp", re.DOTALL)
# Below this much free space, a library's write error (torch raises RuntimeError without an
# errno) is taken for a full disk: after a failed write the filesystem has next to nothing left.
_LOW_SPACE = 1 << 20


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_json(data) -> str:
    """JSON text with sorted keys, fixed indentation and a trailing newline: byte-identical for
    identical content, so files written twice compare equal."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file lives in the same directory so the final `os.replace` is atomic.

    Raises:
        DiskFullError: the disk filled up; the temporary is removed and `path` is unchanged.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep_once(path.parent)
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
        os.close(fd)
        tmp = Path(name)
        # mkstemp creates 0600; an artifact gets the permissions a plain open() would give it.
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        _fault_point("write", path, tmp)
        os.replace(tmp, path)
    except Exception as e:
        full = _is_disk_full(e, path.parent)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if full:
            raise _disk_full(path, e) from e
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, force: bool = False, lock_timeout: float = 0.0
) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; move it onto `path` only if the block succeeds.

    The whole block holds `file_lock(path)`, so a second writer of `path` fails at once (or waits
    up to `lock_timeout` seconds) instead of interleaving its renames with this one's. A
    replacement interrupted between its two renames (the old directory moved aside as `.NAME.old`,
    the new one not yet in place) is rolled back here by the next writer.

    Raises:
        FileExistsError: `path` exists and `force` is False.
        BusyError: another process is writing `path`.
        DiskFullError: the disk filled up; the temporary directory is removed, `path` unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, timeout=lock_timeout):
        old = path.with_name(f".{path.name}.old")
        _recover_replaced(path, old)
        if path.exists() and not force:
            raise FileExistsError(
                f"output directory {path} already exists; pass --force to replace it or choose "
                "another"
            )
        tmp = None
        try:
            _sweep_once(path.parent)
            tmp = Path(tempfile.mkdtemp(
                prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
            ))
            os.chmod(tmp, 0o777 & ~_umask())
            yield tmp
            _fault_point("write", path, tmp)
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                _fault_point("rename", path)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except Exception as e:
            full = _is_disk_full(e, path.parent)
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise _disk_full(path, e) from e
            raise
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _recover_replaced(path: Path, old: Path) -> None:
    """Undo what an interrupted atomic_dir replacement of `path` left (caller holds the lock)."""
    if not old.exists():
        return
    if path.exists():  # killed while deleting the replaced directory
        shutil.rmtree(old, ignore_errors=True)
        logger.warning(f"removed {old}, left by an interrupted replacement of {path}")
    else:  # killed between its two renames: the new version never moved in
        os.replace(old, path)
        logger.warning(
            f"restored the previous {path} from {old.name}: a replacement of it was interrupted "
            "before its new version moved in"
        )


@contextlib.contextmanager
def reporting_disk_full(path: str | os.PathLike) -> Iterator[None]:
    """Raise a write error of the block that means the disk is full as DiskFullError naming
    `path` (for writes that do not go through atomic_path / atomic_dir)."""
    try:
        yield
    except Exception as e:
        if _is_disk_full(e, Path(path).parent):
            raise _disk_full(Path(path), e) from e
        raise


# ------------------------------------------------------------------------------- disk full
def _free_bytes(folder: Path) -> int | None:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error` means the disk is full: ENOSPC/EDQUOT in its chain, or a library's own
    error (not an mlvos one) while the filesystem has almost nothing left."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    if isinstance(error, MlvosError):
        return False
    free = _free_bytes(folder)
    return free is not None and free < _LOW_SPACE


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _disk_full(path: Path, error: BaseException) -> DiskFullError:
    """One-line DiskFullError for a failed write of `path` (call after removing the partial)."""
    cause = error
    while isinstance(cause, DiskFullError) and cause.__cause__ is not None:
        cause = cause.__cause__  # a nested atomic write already wrapped it: name the first error
    detail = " ".join(str(cause).split())[:160] or "no message"
    full = DiskFullError(
        f"no space left on the device for {path} ({_size(_free_bytes(path.parent))} free there "
        f"now; {type(cause).__name__}: {detail}); nothing was written: free some space or write "
        "to another disk, then run again"
    )
    full.errno = errno.ENOSPC
    return full


# ------------------------------------------------------------------- leftovers of a killed write
_swept: set[str] = set()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in `folder` (`.NAME.<pid>.<random>.tmp`, files or directories)
    whose writing process no longer runs on this machine: what a killed write left. Logs and
    returns what it removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if m is None or _alive(int(m[1])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed.append(Path(entry.path))
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        logger.warning(
            f"removed {len(removed)} partial file(s) that an interrupted write left in {folder} "
            f"({names}; their process is gone)"
        )
    return removed


def _sweep_once(folder: Path) -> None:
    """sweep_stale(folder) on the first atomic write into `folder` of this process: once is
    enough (a later leftover needs a later crash), and a folder of thousands of masks is not
    listed once per mask."""
    key = os.path.abspath(folder)
    if key not in _swept:
        _swept.add(key)
        sweep_stale(folder)


# -------------------------------------------------------------------------------------- locks
_held: dict[str, int] = {}


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of `target`: `.NAME.lock` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def file_lock(
    target: str | os.PathLike, *, timeout: float = 0.0, what: str | None = None
) -> Iterator[None]:
    """Hold the exclusive advisory lock of `target` (fcntl.flock on lock_path(target), which
    holds this process's pid and command line) for the block.

    Writers of one artifact take it; readers need not (artifacts are replaced by renames). The
    kernel drops the lock when its holder exits, SIGKILL included, so a lock never outlives its
    writer; the lock file is removed on release. Re-entrant within a process. A no-op where
    fcntl does not exist.

    Args:
        target: the artifact (file or directory; it need not exist; its folder is created).
        timeout: seconds to wait for another holder to finish (0: fail at once).
        what: the artifact as messages name it (default: its path).

    Raises:
        BusyError: another process still held the lock after `timeout` seconds (the message
            names its pid and command).
    """
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(lock)
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _acquire(lock, timeout, what or str(target))
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        # Unlinked while still locked: a waiter that opened this file sees another inode (or
        # none) once it gets the lock, and retries on a fresh file (_acquire).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _acquire(lock: Path, timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(lock)
            if time.monotonic() >= deadline:
                waited = f" for {timeout:g} s" if timeout else ""
                raise BusyError(
                    f"{what} is being written by another process ({holder}){waited}; wait for it "
                    f"to finish, or write elsewhere (its lock {lock.name} is released when that "
                    "process exits)"
                ) from None
            if not announced:
                logger.info(f"waiting for {holder}, which is writing {what} (up to "
                            f"{timeout:g} s)")
                announced = True
            time.sleep(0.1)
            continue
        try:
            st = os.stat(lock)
            same = (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev)
        except FileNotFoundError:
            same = False
        if same:
            cmd = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {cmd[:300]}\n".encode())
            return fd
        os.close(fd)  # the previous holder removed this file on release: lock the new one


def _holder(lock: Path) -> str:
    try:
        pid, _, cmd = lock.read_text().strip().partition(" ")
    except OSError:
        pid = cmd = ""
    return f"pid {pid}: {cmd}" if pid.isdigit() else "a process that is starting"


# ------------------------------------------------------------------------------ fault hook
_fault_count = 0
_FAULT_SPEC = re.compile(r"(?P<action>kill|enospc|stall):(?P<n>[1-9][0-9]*)|trace")


def _fault_point(kind: str, target: Path, written: Path | None = None) -> None:
    """Test hook: act at the Nth point named by MLVOS_FAULT; a no-op when it is unset.

    Points are counted per process: kind "write" where a temporary holds a whole artifact that
    is not yet renamed onto `target`; kind "rename" between the two renames of an atomic_dir
    replacing a directory (not counted by enospc: a rename needs no space). The acting point
    (every point, for "trace") is reported on stderr as "mlvos-fault N KIND TARGET[: ACTION]".
    """
    global _fault_count
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    m = _FAULT_SPEC.fullmatch(spec)
    if m is None:
        raise InputError(
            f"{FAULT_ENV}={spec!r} is not a fault: use kill:N, enospc:N, stall:N or trace "
            "(N >= 1), or unset it"
        )
    action = m["action"] or "trace"
    if action == "enospc" and kind != "write":
        return
    _fault_count += 1
    if action != "trace" and _fault_count != int(m["n"]):
        return
    print(f"mlvos-fault {_fault_count} {kind} {target}" + ("" if action == "trace" else
          f": {action}"), file=sys.stderr, flush=True)
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(written or target))
    if action == "stall":
        sys.stdin.readline()
    elif action == "kill":
        if written is not None:
            _tear(written)  # what a crash in the middle of the write leaves
        os.kill(os.getpid(), signal.SIGKILL)


def _tear(path: Path) -> None:
    """Cut a file, or a directory's largest file, to half its size."""
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        if not files:
            return
        path = max(files, key=lambda p: p.stat().st_size)
    os.truncate(path, path.stat().st_size // 2)
