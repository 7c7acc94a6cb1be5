"""Frame sources and sinks for `mlvos run`: image folders (Pillow) and videos (OpenCV), lazily."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError, require

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
            cv2 = require("cv2", "train", "reading video files")
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise DatasetError(
                    f"cannot open video {self.path} (unsupported codec or corrupt file)"
                )
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            cap.release()
            self.files = None
            self.names = [f"{i:05d}" for i in range(max(n, 0))]
        else:
            raise InputError(
                f"--input {self.path} is neither a folder of images nor a video "
                f"({', '.join(VIDEO_EXTS)})"
            )

    def __len__(self) -> int:
        return len(self.names)

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
        cv2 = require("cv2", "train", "reading video files")
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


class OverlayWriter:
    """Writes frames blended with coloured masks to an .mp4 (OpenCV), atomically on close."""

    def __init__(self, path: str | os.PathLike, fps: float = 25.0):
        self.cv2 = require("cv2", "train", "writing overlay videos")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self.fps = fps
        self.writer = None

    def write(self, frame: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            fourcc = self.cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = self.cv2.VideoWriter(str(self.tmp), fourcc, self.fps, (w, h))
        color = palette[labels]
        alpha = (labels > 0)[..., None] * 0.5
        out = (frame * (1 - alpha) + color * alpha).astype(np.uint8)
        self.writer.write(np.ascontiguousarray(out[:, :, ::-1]))

    def close(self, ok: bool = True) -> None:
        if self.writer is not None:
            self.writer.release()
            if ok:
                os.replace(self.tmp, self.path)
            elif self.tmp.exists():
                self.tmp.unlink()
