"""Frame sources and sinks for `mlvos run`: image folders (Pillow) and videos (OpenCV), lazily;
the mask overlay drawing, the overlay video and the contact sheet of chosen frames."""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError, require

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class FrameSource:
    """Frames of a folder of images (sorted by name) or of a video file, as (H, W, 3) uint8 RGB."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if not self.files:
                raise DatasetError(f"{self.path} holds no images ({', '.join(IMAGE_EXTS)})")
            self.names = [p.stem for p in self.files]
        elif self.path.is_file() and self.path.suffix.lower() in VIDEO_EXTS:
            cv2 = require("cv2", "ort", "reading video files")
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise DatasetError(
                    f"cannot open video {self.path} (unsupported codec or corrupt file)"
                )
            reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            # Containers misreport their frame count (variable frame rate, damaged indexes):
            # count by walking the stream (grab: no colour conversion), so no frame is dropped.
            n = 0
            while cap.grab():
                n += 1
            cap.release()
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
        if self.files is not None:
            image = require("PIL.Image", "ort", "reading image frames")
            for p in self.files:
                try:
                    with image.open(p) as im:
                        yield np.asarray(im.convert("RGB"))
                except OSError as e:
                    raise DatasetError(f"cannot read frame {p}: {e}") from None
            return
        cv2 = require("cv2", "ort", "reading video files")
        cap = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                i += 1
                yield np.ascontiguousarray(bgr[:, :, ::-1])
            if i == 0:
                raise DatasetError(f"could not decode any frame of {self.path}")
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


class OverlayWriter:
    """Writes frames blended with coloured masks to an .mp4 (OpenCV), atomically on close."""

    def __init__(self, path: str | os.PathLike, fps: float = 25.0):
        self.cv2 = require("cv2", "ort", "writing overlay videos")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self.fps = fps
        self.writer = None

    def write(self, frame: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> None:
        """Append `draw_overlay(frame, labels, palette)`."""
        self.write_image(draw_overlay(frame, labels, palette))

    def write_image(self, image: np.ndarray) -> None:
        """Append an already drawn (H, W, 3) uint8 RGB overlay."""
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = image.shape[:2]
            fourcc = self.cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = self.cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
        self.writer.write(np.ascontiguousarray(image[:, :, ::-1]))

    def close(self, ok: bool = True) -> None:
        if self.writer is not None:
            self.writer.release()
            if ok:
                os.replace(self.tmp, self.path)
            elif self.tmp.exists():
                self.tmp.unlink()


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
