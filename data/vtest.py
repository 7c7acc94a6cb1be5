"""OpenCV's `vtest.avi` with a hand-drawn first-frame mask: the real-footage check of the tracker.

`vtest.avi` (OpenCV's sample data, Debian package `opencv-doc` 4.6.0+dfsg-12) is 795 frames of
768x576 at 10 FPS from a fixed camera over a square where people walk, meet and leave. There is
no ground truth beyond frame 0, so the check is label-free (`mlvos.data.tracking`): masks must not
grow past twice their first-frame area and must stay in one piece.

Objects of the first-frame mask, outlined by eye on frame 0 (polygons below, in pixels):

1. the person on the left, at the edge of the grass (grey-brown jacket, black trousers). They
   walk right to the lamp post (frame ~24), stand there in a group until about frame 150, walk
   to the right and leave the view at the right edge around frame 210.
2. the person in the centre, walking down (black leather jacket, blue jeans). They join that
   group (partly behind the lamp post's sign from frame ~20 to ~150), walk right, turn back near
   frame 215 and are still in view, left of the lamp post, at frame ~290; from there on several
   people dressed alike cross the square and identity is ambiguous even by eye.
3. the white van parked at the top right (static: a control that must neither drift nor grow).

The third person of frame 0, on the right (long black coat), is not an object: they walk left
into the group, turn back and leave the view at the right edge around frame 148, the earliest of
the three, so the two people that stay longest in view were taken.

`make_vtest` writes a folder holding `vtest.avi`, `00000.png` (DAVIS palette ids) and
`vtest.json` (objects, boxes, areas, source package and sha256s), atomically and cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError

PACKAGE = "opencv-doc"
PACKAGE_VERSION = "4.6.0+dfsg-12"
MEMBER = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
# The polygons are drawn for this exact file; another file is refused rather than mislabelled.
VIDEO_SHA256 = "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"
HEIGHT, WIDTH, NUM_FRAMES, FPS = 576, 768, 795, 10.0

FORMAT = "mlvos-vtest"
FORMAT_VERSION = 1
VIDEO_NAME, MASK_NAME, META_NAME = "vtest.avi", "00000.png", "vtest.json"


@dataclass(frozen=True)
class VtestObject:
    """One annotated object: id in the mask, a description, its outline in frame 0.

    `polygon` holds (x, y) pixel coordinates (x right, y down, origin at the top-left pixel's
    centre); the mask is the filled polygon, outline included.
    """

    id: int
    name: str
    description: str
    polygon: tuple[tuple[int, int], ...]


OBJECTS: tuple[VtestObject, ...] = (
    VtestObject(
        1, "person-left",
        "person at the grass edge, left (grey-brown jacket, black trousers); leaves at the "
        "right edge near frame 210",
        ((265, 221), (271, 221), (274, 225), (274, 232), (272, 234), (274, 240), (276, 250),
         (277, 260), (279, 268), (281, 275), (282, 290), (283, 303), (272, 305), (272, 290),
         (270, 280), (267, 281), (267, 296), (266, 307), (257, 307), (258, 285), (257, 272),
         (254, 270), (254, 245), (256, 236), (262, 233), (263, 226)),
    ),
    VtestObject(
        2, "person-centre",
        "person in the centre walking down (black leather jacket, blue jeans); in view to "
        "frame ~290 at least",
        ((510, 158), (515, 158), (517, 162), (516, 168), (522, 170), (525, 174), (527, 184),
         (528, 192), (529, 199), (526, 200), (524, 194), (522, 198), (521, 210), (520, 222),
         (521, 229), (520, 233), (512, 233), (511, 228), (512, 215), (510, 203), (508, 197),
         (505, 197), (501, 195), (501, 185), (503, 174), (506, 170), (509, 168), (508, 162)),
    ),
    VtestObject(
        3, "van",
        "white van parked at the top right (static)",
        ((658, 46), (668, 44), (708, 45), (711, 48), (713, 56), (714, 63), (721, 66), (721, 80),
         (720, 88), (716, 92), (714, 95), (700, 97), (695, 96), (692, 92), (655, 92), (652, 88),
         (651, 60), (654, 50)),
    ),
)


def first_mask() -> np.ndarray:
    """The first-frame mask, drawn from `OBJECTS` (deterministic).

    Returns:
        (576, 768) uint8 ids: 0 background, 1 and 2 the two people, 3 the van.
    """
    from PIL import Image, ImageDraw

    img = Image.new("L", (WIDTH, HEIGHT), 0)
    draw = ImageDraw.Draw(img)
    for obj in OBJECTS:  # the objects do not overlap, so the drawing order does not matter
        draw.polygon(list(obj.polygon), fill=obj.id, outline=obj.id)
    return np.asarray(img).copy()


def describe_objects(mask: np.ndarray) -> dict[str, dict]:
    """id -> {name, description, bbox [x_min, y_min, x_max, y_max] (inclusive), area px}."""
    out = {}
    for obj in OBJECTS:
        ys, xs = np.nonzero(mask == obj.id)
        out[str(obj.id)] = {
            "name": obj.name, "description": obj.description,
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
            "area": int(xs.size),
        }
    return out


@dataclass(frozen=True)
class VtestFolder:
    """What `make_vtest` produced: the folder, whether it was reused as is, and its metadata."""

    path: Path
    reused: bool
    meta: dict

    @property
    def video(self) -> Path:
        return self.path / VIDEO_NAME

    @property
    def mask(self) -> Path:
        return self.path / MASK_NAME


def _sha256(path_or_bytes: Path | bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return hashlib.sha256(data).hexdigest()


def _read_meta(out: Path) -> dict | None:
    try:
        meta = json.loads((out / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _intact_video(out: Path, meta: dict | None) -> bool:
    video = out / VIDEO_NAME
    return meta is not None and video.is_file() and _sha256(video) == VIDEO_SHA256


def _is_current(out: Path, meta: dict | None, mask_png: bytes) -> bool:
    """A complete folder made by this generator: same format, intact video, same mask bytes."""
    mask = out / MASK_NAME
    return (_intact_video(out, meta) and meta.get("version") == FORMAT_VERSION
            and mask.is_file() and mask.read_bytes() == mask_png)


def _fetch_video() -> tuple[bytes, dict]:
    """vtest.avi from the Debian package, and the package's name/version/sha256."""
    from mlvos.data.debian import fetch_files

    fix = ("or copy vtest.avi from an OpenCV source tree (samples/data/vtest.avi) and pass "
           "--video PATH")
    if shutil.which("apt-get") is None:
        raise DatasetError(
            f"cannot fetch vtest.avi: it comes from the Debian package {PACKAGE} "
            f"{PACKAGE_VERSION}, and apt-get is not available on this system. Run this on a "
            f"Debian/Ubuntu machine, {fix}"
        )
    try:
        deb, files = fetch_files(PACKAGE, PACKAGE_VERSION, [MEMBER],
                                 hint="pass a local copy of vtest.avi with --video PATH")
    except DatasetError as e:
        raise DatasetError(f"cannot fetch vtest.avi ({e}); {fix}") from e
    if not files:
        raise DatasetError(
            f"{PACKAGE} {deb.version} has no {MEMBER}; the package layout changed, {fix}")
    source = {"package": deb.name, "version": deb.version, "requested_version": PACKAGE_VERSION,
              "deb_sha256": deb.sha256, "member": MEMBER}
    return files[0][1], source


def make_vtest(out: str | os.PathLike, *, force: bool = False,
               video: str | os.PathLike | None = None) -> VtestFolder:
    """Write `out/` = vtest.avi + 00000.png + vtest.json, or reuse a complete one.

    A folder this function made before, with an intact video and the same mask, is reused as
    is unless `force`; an older folder of ours (stale mask or format) is rebuilt, reusing its
    video when intact. The folder is written atomically (complete or absent).

    Args:
        out: output folder.
        force: rebuild (and re-download) even if `out` is complete, and replace a folder that
            this function did not make.
        video: a local copy of vtest.avi to use instead of downloading (checked by sha256).

    Raises:
        InputError: `out` exists and is not a vtest folder (without `force`).
        DatasetError: the video cannot be fetched (no apt-get, no mirror) or is not the
            expected file.
    """
    from mlvos.fileio import atomic_dir
    from mlvos.palette import encode_mask

    out = Path(out)
    mask = first_mask()
    mask_png = encode_mask(mask)
    meta = _read_meta(out)
    if not force and _is_current(out, meta, mask_png):
        return VtestFolder(out, True, meta)
    if out.exists() and meta is None and not force:
        raise InputError(f"output directory {out} exists and is not a `mlvos data vtest` "
                         "folder; pass --force to replace it, or choose another path")

    if video is not None:
        data = Path(video).read_bytes()
        source = {"local_file": str(Path(video).resolve())}
    elif not force and _intact_video(out, meta):
        data, source = (out / VIDEO_NAME).read_bytes(), meta["source"]
    else:
        data, source = _fetch_video()
    digest = _sha256(data)
    if digest != VIDEO_SHA256:
        raise DatasetError(
            f"vtest.avi has sha256 {digest}, expected {VIDEO_SHA256} ({PACKAGE} "
            f"{PACKAGE_VERSION}); the first-frame polygons are drawn for that exact file. Use "
            "the file of that package (or OpenCV 4.x samples/data/vtest.avi)"
        )
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "source": source,
        "video": {"file": VIDEO_NAME, "sha256": digest, "bytes": len(data), "frames": NUM_FRAMES,
                  "height": HEIGHT, "width": WIDTH, "fps": FPS},
        "mask": {"file": MASK_NAME, "frame": 0, "sha256": _sha256(mask_png)},
        "bbox_format": "x_min, y_min, x_max, y_max (inclusive pixels)",
        "objects": describe_objects(mask),
    }
    with atomic_dir(out, force=True) as tmp:
        (tmp / VIDEO_NAME).write_bytes(data)
        (tmp / MASK_NAME).write_bytes(mask_png)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return VtestFolder(out, False, meta)
