"""Files from Debian packages, without root: `apt-get download` + a pure-Python .deb reader.

Used for the offline data the project installs from a package registry (photographs for the
natural-video generator, OpenCV's sample footage). Nothing here installs a package system-wide:
the .deb is downloaded into a temporary folder, the wanted members are read out of its data
archive, and the .deb is deleted.
"""

from __future__ import annotations

import fnmatch
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlvos.errors import DatasetError


@dataclass(frozen=True)
class DebPackage:
    """A downloaded package: name, version actually fetched, the .deb's sha256 and its path."""

    name: str
    version: str
    sha256: str
    path: Path


HINT = "pass your own folder of images with --photos DIR"


def download(package: str, version: str | None, dest: str | os.PathLike, *,
             hint: str = HINT) -> DebPackage:
    """Download `package` (pinned `version` when available) into folder `dest` with apt-get.

    A pinned version that the configured Debian mirrors no longer carry falls back to the
    mirrors' candidate version (the returned DebPackage says which one came).

    Raises:
        DatasetError: apt-get is missing (not a Debian/Ubuntu system) or the package cannot be
            downloaded; the message says how to provide the files another way.
    """
    import hashlib

    apt = shutil.which("apt-get")
    if apt is None:
        raise DatasetError(
            f"cannot fetch Debian package {package!r}: apt-get is not available on this system. "
            f"On a non-Debian machine, {hint}"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    errors = []
    for spec in ([f"{package}={version}"] if version else []) + [package]:
        proc = subprocess.run([apt, "download", "-q", spec], cwd=dest, capture_output=True,
                              text=True, check=False)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and debs:
            deb = debs[-1]
            got = deb.name.split("_")[1].replace("%3a", ":")
            digest = hashlib.sha256(deb.read_bytes()).hexdigest()
            return DebPackage(package, got, digest, deb)
        errors.append(f"`apt-get download {spec}`: {proc.stderr.strip() or proc.stdout.strip()}")
    raise DatasetError(
        f"cannot download Debian package {package!r}:\n  " + "\n  ".join(errors) +
        "\nCheck that the machine reaches its Debian mirror (`apt-get update` may be needed), or "
        f"{hint}"
    )


def _ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each member of an `ar` archive (the .deb container)."""
    if not data.startswith(b"!<arch>\n"):
        raise DatasetError("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        pos += 60
        yield name, data[pos:pos + size]
        pos += size + (size & 1)  # members are 2-byte aligned


def _data_tar(deb: Path) -> tarfile.TarFile:
    for name, content in _ar_members(deb.read_bytes()):
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                try:
                    import zstandard
                except ImportError:
                    raise DatasetError(
                        f"{deb.name} stores its files with zstd; `pip install zstandard` to "
                        "read it") from None
                content = zstandard.ZstdDecompressor().decompressobj().decompress(content)
                return tarfile.open(fileobj=io.BytesIO(content), mode="r:")
            return tarfile.open(fileobj=io.BytesIO(content), mode="r:*")
    raise DatasetError(f"{deb.name} has no data.tar member; is it a Debian binary package?")


def read_members(deb: Path, patterns: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """(path inside the package, content) of the regular files matching any glob in `patterns`.

    Paths are relative to the package root without a leading './' (e.g.
    'usr/share/backgrounds/x.jpg'); patterns use fnmatch syntax on that path.
    """
    with _data_tar(deb) as tar:
        for member in tar:
            if not member.isfile():
                continue
            path = member.name.lstrip("./")
            if any(fnmatch.fnmatchcase(path, p) for p in patterns):
                fh = tar.extractfile(member)
                if fh is not None:
                    yield path, fh.read()


def fetch_files(package: str, version: str | None, patterns: Sequence[str], *,
                hint: str = HINT) -> tuple[DebPackage, list[tuple[str, bytes]]]:
    """Download a package into a temporary folder and return the files matching `patterns`.

    Returns:
        (the DebPackage, whose .deb is already deleted, [(path in package, content), ...]).
    """
    with tempfile.TemporaryDirectory(prefix="mlvos-deb-") as tmp:
        deb = download(package, version, tmp, hint=hint)
        return deb, list(read_members(deb.path, patterns))
