"""What `mlvos profile` feeds the predictor: real footage (`--input VIDEO`), natural-looking
frames (the default, when the photo library is installed) or the procedural generator.

The content matters for latency, not only for accuracy: on real frames the trained memory read
produced float32 denormals that x86 runs ~100x slower (README, Measured), which flat synthetic
frames never trigger. Every report names the content it was measured on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mlvos.errors import InputError
from mlvos.profiling.measure import SyntheticVideo, synthetic_video
from mlvos.runtime.spec import resize_bilinear, resize_nearest

CONTENTS = ("natural", "synthetic")

logger = logging.getLogger(__name__)


def input_size(path: str) -> tuple[int, int]:
    """(height, width) of a video file or frames folder."""
    from mlvos.runtime.video_io import FrameSource

    return FrameSource(path).size


def _blobs(height: int, width: int, objects: int) -> np.ndarray:
    """A first-frame label with `objects` ellipses side by side (for --input without --mask:
    the memory read costs the same whatever the objects are)."""
    yy, xx = np.mgrid[0:height, 0:width]
    label = np.zeros((height, width), np.uint8)
    ry, rx = 0.15 * height, 0.4 * width / max(objects, 1)
    for k in range(objects):
        cy, cx = 0.5 * height, (k + 0.5) * width / objects
        label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = k + 1
    return label


def input_video(path: str, mask: str | None, height: int, width: int, objects: int,
                frames: int) -> SyntheticVideo:
    """The first `frames` frames of a video file or frames folder, resized to height x width
    when their size differs, with the first `objects` ids of `mask` (a PNG of the first
    frame's ids) or, without a mask, `objects` ellipses.

    Raises:
        InputError: unreadable input, a mask of another size, fewer ids than `objects`.
    """
    from mlvos.palette import read_mask
    from mlvos.runtime.video_io import FrameSource

    source = FrameSource(path)
    images = []
    for frame in source:
        if frame.shape[:2] != (height, width):
            frame = resize_bilinear(frame, height, width)
        images.append(frame)
        if len(images) >= frames:
            break
    if len(images) < 2:
        raise InputError(f"--input {path}: {len(images)} frame(s) decoded; profiling needs >= 2")
    if mask is None:
        label = _blobs(height, width, objects)
        what = f"{objects} ellipse(s) as objects (no --mask)"
    else:
        label = read_mask(mask)
        if label.shape != tuple(source.size):
            raise InputError(f"--mask {mask} is {label.shape[0]}x{label.shape[1]} but the frames "
                             f"of {path} are {source.size[0]}x{source.size[1]}; give the first "
                             "frame's mask")
        ids = [int(i) for i in np.unique(label) if i]
        if len(ids) < objects:
            raise InputError(f"--mask {mask} holds {len(ids)} object(s) {ids}; the sweep asks for "
                             f"{objects}: lower --objects")
        label = np.where(np.isin(label, ids[:objects]), label, 0).astype(np.uint8)
        if label.shape != (height, width):
            label = resize_nearest(label, height, width)
        what = f"objects {ids[:objects]} of {Path(mask).name}"
    source_text = (f"real footage: {len(images)} frames of {Path(path).name} "
                   f"({source.size[0]}x{source.size[1]}"
                   + (f", resized to {height}x{width}" if source.size != (height, width) else "")
                   + f"), {what}")
    present = int(np.count_nonzero(np.unique(label)))
    return SyntheticVideo(images, label, present, source_text)


def natural_video(seed: int, height: int, width: int, objects: int, frames: int,
                  photos: str | None = None) -> SyntheticVideo | None:
    """A natural-looking video (photo backgrounds and cut-outs, camera motion, noise, JPEG-free
    frames) from the installed photo library; None where the library or OpenCV is missing (the
    profile then says it fell back to the procedural generator)."""
    try:
        from mlvos.data.natural import placed_sequence
        from mlvos.data.photos import MANIFEST, PhotoLibrary, default_photos_dir
    except ImportError:
        return None
    root = Path(photos) if photos else default_photos_dir()
    if not (root / MANIFEST).is_file():
        return None
    library = PhotoLibrary(root, split="val")
    seq = placed_sequence(seed, frames, height, width, library, num_objects=objects)
    pairs = list(seq)
    present = int(np.count_nonzero(np.unique(pairs[0][1])))
    return SyntheticVideo([f for f, _ in pairs], pairs[0][1], present,
                          f"natural-looking frames (mlvos.data.natural, seed {seed}, "
                          f"validation photos of {root})")


def profile_video(content: str, seed: int, height: int, width: int, objects: int, *,
                  frames: int, input: str | None = None, mask: str | None = None,
                  photos: str | None = None) -> SyntheticVideo:
    """The frames of one profile configuration: `input` when given, else `content`
    ("natural", falling back to "synthetic" without a photo library)."""
    if input is not None:
        return input_video(input, mask, height, width, objects, frames)
    if content not in CONTENTS:
        raise InputError(f"content must be one of {CONTENTS}, got {content!r}")
    if content == "natural":
        video = natural_video(seed, height, width, objects, frames, photos)
        if video is not None:
            return video
        logger.warning("no photo library (`mlvos data photos`; MLVOS_PHOTOS): profiling on the "
                       "procedural generator's frames, which can hide content-dependent costs")
    video = synthetic_video(seed, height, width, objects, unique=frames)
    video.source = f"procedural frames ({video.source})"
    return video
