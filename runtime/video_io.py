"""Frame sources and sinks for `mlvos run`: image folders (Pillow) and videos (OpenCV), lazily;
the mask overlay drawing, the overlay video (H.264 through PyAV) and the contact sheet of chosen
frames."""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError, MlvosError, require

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class FrameSource:
    """Frames of a folder of images (sorted by name) or of a video file, as (H, W, 3) uint8 RGB.

    A video's frames are named by their 0-based index, zero-padded to 5 digits ("00042"); a
    folder's by their file names without suffix.
    """

    def __init__(self, path: str | os.PathLike, *, progress=None):
        """
        Args:
            path: a folder of images or a video file.
            progress: optional tqdm-like factory, called as progress(total=..., desc=...,
                unit=...), whose bar follows the counting of a video's frames.

        Raises:
            InputError: `path` is neither a folder nor a video file.
            DatasetError: no images in the folder, or a video that cannot be opened or holds no
                decodable frame.
        """
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not self.files:
                raise DatasetError(f"{self.path} holds no images ({', '.join(IMAGE_EXTS)})")
            self.names = [p.stem for p in self.files]
        elif self.path.is_file() and self.path.suffix.lower() in VIDEO_EXTS:
            cv2 = require("cv2", "ort", "reading video files")
            # FFmpeg's own lines ("moov atom not found") would precede the one-line error below;
            # read per capture, so an explicit setting of the user's wins
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise DatasetError(
                    f"cannot open video {self.path}: not a video OpenCV can decode (corrupt, "
                    "truncated or an unsupported codec); re-download it or re-encode it to H.264"
                )
            reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            # Containers misreport their frame count (variable frame rate, damaged indexes):
            # count by walking the stream (grab: no colour conversion), so no frame is dropped.
            bar = progress(total=max(reported, 0) or None, desc="counting frames", unit="frame",
                           leave=False) if progress else None
            n = 0
            while cap.grab():
                n += 1
                if bar is not None:
                    bar.update(1)
            cap.release()
            if bar is not None:
                bar.close()
            if n == 0:
                raise DatasetError(
                    f"cannot decode any frame of video {self.path} (its header reports "
                    f"{reported}); the file is truncated or corrupt: re-encode or re-download it"
                )
            if n != reported:
                logger.warning(f"{self.path}: the container reports {reported} frames, the "
                               f"stream holds {n}; using {n}")
            self.files = None
            self.names = [f"{i:05d}" for i in range(max(n, 0))]
        else:
            raise InputError(
                f"--input {self.path} is neither a folder of images nor a video "
                f"({', '.join(VIDEO_EXTS)})"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames, read from the first image or the video's header."""
        if self.files is not None:
            image = require("PIL.Image", "ort", "reading image frames")
            try:
                with image.open(self.files[0]) as im:
                    return im.height, im.width
            except OSError as e:
                raise DatasetError(f"cannot read frame {self.files[0]}: {e}") from None
        cv2 = require("cv2", "ort", "reading video files")
        cap = cv2.VideoCapture(str(self.path))
        try:
            return int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        finally:
            cap.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, frame in self.read():
            yield frame

    def read(self, start: int = 0, count: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(name, frame) of frames start, start + 1, ... (`count` of them, default: to the end).

        A video is walked from its first frame (frames before `start` are grabbed, not
        converted): seeking by frame number is inexact in containers with a wrong index.
        """
        stop = len(self) if count is None else min(len(self), start + count)
        if self.files is not None:
            image = require("PIL.Image", "ort", "reading image frames")
            for name, p in zip(self.names[start:stop], self.files[start:stop]):
                try:
                    with image.open(p) as im:
                        frame = np.asarray(im.convert("RGB"))
                except OSError as e:
                    raise DatasetError(f"cannot read frame {p}: {e}") from None
                yield name, frame
            return
        cv2 = require("cv2", "ort", "reading video files")
        cap = cv2.VideoCapture(str(self.path))
        try:
            for _ in range(start):
                if not cap.grab():
                    break
            for i in range(start, stop):
                ok, bgr = cap.read()
                if not ok:
                    raise DatasetError(
                        f"video {self.path} ended at frame {i}, but {len(self)} frames were "
                        "counted when it was opened; was the file changed meanwhile?"
                    )
                yield self.names[i], np.ascontiguousarray(bgr[:, :, ::-1])
        finally:
            cap.release()


def draw_overlay(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray, *,
                 alpha: float = 0.5) -> np.ndarray:
    """A frame with its masks blended in their palette colours and outlined (numpy only).

    Outlines are 2 px wide (both pixels of every label change), in the object's colour lifted
    halfway to white, so that they stay visible on dark objects and after a 2x downscale.

    Args:
        frame: (H, W, 3) uint8 RGB.
        labels: (H, W) uint8 object ids (0 = background).
        palette: (256, 3) uint8 colours indexed by id.
        alpha: weight of the mask colour inside objects, in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB.
    """
    color = palette[labels].astype(np.float32)
    weight = (labels > 0)[..., None] * alpha
    out = frame * (1 - weight) + color * weight
    edge = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:] != labels[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    # on a boundary between two objects each side takes its own colour; background gets none
    edge &= labels > 0
    out[edge] = (color[edge] + 255.0) / 2
    return out.astype(np.uint8)


# Overlay container by suffix (PyAV format names); the video inside is always H.264.
OVERLAY_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


class OverlayWriter:
    """Writes overlay frames to an H.264 video that browsers play, atomically.

    H.264 (libx264, yuv420p, High profile) through PyAV, whose wheels bundle FFmpeg with libx264
    (OpenCV's wheels cannot encode H.264). Frames go to a temporary file beside `path`
    (mlvos.fileio.atomic_path) that close(ok=True) renames onto it; close(ok=False) removes it,
    so `path` never holds a partial video. Odd frame sides are padded by one replicated pixel
    (yuv420p needs even sides).
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0):
        """
        Args:
            path: the video to write: .mp4 (with the index first, for streaming), .mov or .mkv.
            fps: frame rate; 29.97-like rates are kept exact (30000/1001).

        Raises:
            InputError: an unsupported suffix.
            MissingDependencyError: PyAV is not installed (names the pip extra).
        """
        self.path = Path(path)
        self.format = OVERLAY_FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise InputError(
                f"overlay {self.path}: unsupported suffix {self.path.suffix!r}, expected one of "
                f"{', '.join(OVERLAY_FORMATS)} (H.264 video)"
            )
        self.av = require("av", "ort", "writing H.264 overlay videos")
        self.rate = Fraction(fps if fps and fps > 0 else 25.0).limit_denominator(1001)
        self.frames = 0
        self._atomic = None  # the atomic_path context, entered by the first frame
        self._container = self._stream = None

    def write(self, frame: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> None:
        """Append `draw_overlay(frame, labels, palette)`."""
        self.write_image(draw_overlay(frame, labels, palette))

    def write_image(self, image: np.ndarray) -> None:
        """Append an already drawn (H, W, 3) uint8 RGB overlay."""
        h, w = image.shape[:2]
        if h % 2 or w % 2:
            image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._container is None:
            self._open(*image.shape[:2])
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        self._mux(self._stream.encode(frame))
        self.frames += 1

    def _open(self, height: int, width: int) -> None:
        from mlvos.fileio import atomic_path

        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        # +faststart moves the index to the front, so a browser plays while downloading
        options = {"movflags": "+faststart"} if self.format in ("mp4", "mov") else {}
        self._container = self.av.open(str(tmp), mode="w", format=self.format, options=options)
        self._stream = self._container.add_stream("libx264", rate=self.rate)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"  # what browsers decode (yuv444p/High 4:4:4 is not)

    def _mux(self, packets) -> None:
        try:
            self._container.mux(packets)
        except self.av.FFmpegError as e:
            raise MlvosError(
                f"cannot write the overlay video {self.path}: {e}; check the disk space and "
                "permissions of its folder"
            ) from None

    def close(self, ok: bool = True) -> None:
        """Finish the video and rename it onto `path` (ok), or discard it (not ok)."""
        if self._container is None:
            return
        error = None
        if ok:
            try:
                self._mux(self._stream.encode())  # flush the encoder's delayed frames
            except MlvosError as e:
                error = e
        container, atomic = self._container, self._atomic
        self._container = self._atomic = None
        try:
            container.close()  # writes the index
        except self.av.FFmpegError as e:
            if ok and error is None:
                error = MlvosError(f"cannot finish the overlay video {self.path}: {e}; check "
                                   "the disk space of its folder")
        if ok and error is None:
            atomic.__exit__(None, None, None)  # os.replace onto path
            return
        # leave the atomic_path block as a failed one: the temporary file is removed
        atomic.__exit__(RuntimeError, RuntimeError("overlay discarded"), None)
        if error is not None:
            raise error


class ContactSheet:
    """A grid of chosen frames' overlays, each labelled with its frame number, saved as one image.

    Tiles are downscaled so that the sheet is at most `max_width` pixels wide; `add` keeps only
    the small tile, so memory does not grow with the video. Pillow only (no OpenCV), so it works
    with the runtime-only install.
    """

    GAP = 4  # pixels between tiles (black)

    def __init__(self, path: str | os.PathLike, frames: list[int], *, max_width: int = 1600):
        """
        Args:
            path: output image; JPEG for .jpg/.jpeg, PNG for .png.
            frames: 0-based frame indices to show, in the order of the grid.
            max_width: the sheet's largest width in pixels.

        Raises:
            InputError: no frames, a negative index, or an unsupported suffix.
        """
        self.pil = require("PIL.Image", "ort", "drawing the contact sheet")
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".jpg", ".jpeg", ".png"):
            raise InputError(f"contact sheet {self.path}: unsupported suffix {suffix!r}, "
                             "expected .jpg, .jpeg or .png")
        if not frames or min(frames) < 0:
            raise InputError(f"contact sheet frames must be >= 0, received {frames}")
        self.frames = list(dict.fromkeys(frames))
        self.cols = math.ceil(math.sqrt(len(self.frames)))
        self.max_width = max_width
        self.tiles: dict[int, np.ndarray] = {}

    def wants(self, index: int) -> bool:
        return index in self.frames and index not in self.tiles

    def add(self, index: int, image: np.ndarray) -> None:
        """Keep frame `index`'s overlay, (H, W, 3) uint8 RGB, as a labelled tile."""
        from PIL import ImageDraw, ImageFont

        h, w = image.shape[:2]
        tile_w = min(w, (self.max_width - self.GAP * (self.cols - 1)) // self.cols)
        tile = self.pil.fromarray(np.ascontiguousarray(image))
        if tile_w < w:
            tile = tile.resize((tile_w, max(1, round(h * tile_w / w))), self.pil.Resampling.BOX)
        draw = ImageDraw.Draw(tile)
        try:
            font = ImageFont.load_default(size=16)
        except TypeError:  # Pillow < 10.1: the fixed bitmap font
            font = ImageFont.load_default()
        text = f"frame {index}"
        _, _, right, bottom = draw.textbbox((4, 2), text, font=font)
        draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.text((4, 2), text, fill=(255, 255, 255), font=font)
        self.tiles[index] = np.asarray(tile)

    @property
    def missing(self) -> list[int]:
        """Requested frames that were never added (the video was shorter)."""
        return [i for i in self.frames if i not in self.tiles]

    def save(self) -> Path:
        """Write the grid of the added tiles (in the requested order), atomically.

        Raises:
            InputError: no requested frame was added.
        """
        from mlvos.fileio import atomic_write_bytes

        tiles = [self.tiles[i] for i in self.frames if i in self.tiles]
        if not tiles:
            raise InputError(f"none of the contact sheet frames {self.frames} was processed")
        cols = min(self.cols, len(tiles))
        rows = math.ceil(len(tiles) / cols)
        th, tw = tiles[0].shape[:2]
        sheet = np.zeros((rows * th + (rows - 1) * self.GAP, cols * tw + (cols - 1) * self.GAP, 3),
                         dtype=np.uint8)
        for k, tile in enumerate(tiles):
            r, c = divmod(k, cols)
            y, x = r * (th + self.GAP), c * (tw + self.GAP)
            sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        buf = io.BytesIO()
        if self.path.suffix.lower() == ".png":
            self.pil.fromarray(sheet).save(buf, format="PNG")
        else:
            self.pil.fromarray(sheet).save(buf, format="JPEG", quality=90)
        atomic_write_bytes(self.path, buf.getvalue())
        return self.path
