"""Dataset readers: DAVIS 2016/2017, YouTube-VOS 2018/2019, static image+mask folders.

Readers list files and validate the layout up front (image headers only, so construction is
cheap); pixels are read on demand with `mlvos.palette`. numpy + pillow only, no torch.
Every problem raises `DatasetError` naming the offending file and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError
from mlvos.palette import binary_to_ids, frame_size, mask_header, read_frame, read_mask

FRAME_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _list_files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    """Files of `folder` with one of `exts` (case-insensitive), sorted by name; hidden skipped."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file())


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{what} {path} does not exist or is not a folder; {hint}")


# --------------------------------------------------------------------------------------- DAVIS


@dataclass
class VideoSequence:
    """One video: frame paths in temporal order and, per frame, a mask path or None.

    `binary` marks DAVIS 2016 (single object): every non-zero mask pixel reads as id 1.
    """

    name: str
    frames: list[Path]
    masks: list[Path | None]
    binary: bool = False

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def annotated(self) -> list[int]:
        """Indices of frames that have a mask."""
        return [i for i, m in enumerate(self.masks) if m is not None]

    def read_frame(self, i: int) -> np.ndarray:
        """Frame i as (H, W, 3) uint8 RGB."""
        return read_frame(self.frames[i])

    def read_mask(self, i: int) -> np.ndarray:
        """Mask of frame i as (H, W) uint8 object ids; DatasetError if frame i has none."""
        path = self.masks[i]
        if path is None:
            raise DatasetError(f"sequence {self.name}: frame {self.frames[i].name} has no "
                               "annotation; use .annotated for the annotated frame indices")
        ids = read_mask(path)
        return (ids != 0).astype(np.uint8) if self.binary else ids

    def first_mask(self) -> np.ndarray:
        return self.read_mask(0)

    @property
    def num_objects(self) -> int:
        """Highest object id in the first-frame mask (DAVIS numbers objects 1..k)."""
        return int(self.first_mask().max())


class DavisDataset:
    """DAVIS 2016/2017 layout reader.

    root/JPEGImages/<resolution>/<seq>/*.jpg, root/Annotations/<resolution>/<seq>/*.png,
    root/ImageSets/<year>/<split>.txt (one sequence name per line). The original DAVIS 2016
    ImageSets/<resolution>/<split>.txt ("/JPEGImages/480p/bear/00000.jpg /Annotations/...")
    is accepted too. For year 2016 masks read as single object (non-zero -> 1, so binary 0/255
    and multi-object palettes both work).

    Args:
        validate: check every mask's mode and every frame/mask size from image headers
            (fast); otherwise only the file listing and the first-frame annotation are checked.

    Raises:
        DatasetError: missing folders/split file, a listed sequence that is missing, a sequence
            without frames, no annotation for the first frame, a mask whose size differs from
            its frame, or an RGB (non-palette) mask.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", year: str | int = "2017",
                 resolution: str = "480p", *, validate: bool = True):
        self.root = Path(root)
        self.split, self.year, self.resolution = split, str(year), resolution
        if self.year not in ("2016", "2017"):
            raise InputError(f"DAVIS year must be '2016' or '2017', received {year!r}")
        _require_dir(self.root, "DAVIS root", "pass the folder that holds JPEGImages/, "
                     "Annotations/ and ImageSets/")
        self.image_dir = self.root / "JPEGImages" / resolution
        self.mask_dir = self.root / "Annotations" / resolution
        _require_dir(self.image_dir, "frame folder", f"is '{resolution}' the right resolution?")
        _require_dir(self.mask_dir, "annotation folder", f"is '{resolution}' right?")
        self.names = self._read_split()
        self._seqs = {name: self._scan(name) for name in self.names}
        if validate:
            for seq in self._seqs.values():
                check_sequence(seq)

    def _read_split(self) -> list[str]:
        path = self.root / "ImageSets" / self.year / f"{self.split}.txt"
        legacy = self.root / "ImageSets" / self.resolution / f"{self.split}.txt"
        if not path.is_file() and self.year == "2016" and legacy.is_file():
            path = legacy
        if not path.is_file():
            raise DatasetError(
                f"split file {path} does not exist; expected one sequence name per line "
                f"(check split={self.split!r} and year={self.year!r})"
            )
        names: list[str] = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("/"):  # DAVIS 2016 pair format: the sequence is the frame's folder
                line = Path(line.split()[0]).parent.name
            if line not in names:
                names.append(line)
        if not names:
            raise DatasetError(f"split file {path} lists no sequences; add one name per line")
        return names

    def _scan(self, name: str) -> VideoSequence:
        fdir, mdir = self.image_dir / name, self.mask_dir / name
        if not fdir.is_dir():
            raise DatasetError(
                f"sequence '{name}' is listed in the split file but its frame folder {fdir} is "
                "missing; re-extract the dataset or remove it from the split file"
            )
        frames = _list_files(fdir, FRAME_EXTS)
        if not frames:
            raise DatasetError(f"sequence '{name}' is empty: no .jpg/.png frames in {fdir}")
        by_stem = {p.stem: p for p in _list_files(mdir, (".png",))} if mdir.is_dir() else {}
        masks = [by_stem.get(f.stem) for f in frames]
        if masks[0] is None:
            raise DatasetError(
                f"sequence '{name}': missing annotation for the first frame: expected "
                f"{mdir / (frames[0].stem + '.png')} (the first-frame mask defines the objects)"
            )
        return VideoSequence(name, frames, masks, binary=self.year == "2016")

    @property
    def sequences(self) -> list[str]:
        return list(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | str) -> VideoSequence:
        if isinstance(key, (int, np.integer)):
            return self._seqs[self.names[key]]
        if key not in self._seqs:
            raise KeyError(f"no sequence {key!r} in {self.root} ({self.split} {self.year})")
        return self._seqs[key]

    def __iter__(self) -> Iterator[VideoSequence]:
        return (self._seqs[n] for n in self.names)


def check_sequence(seq: VideoSequence) -> None:
    """Header-level check: every mask is palette/grayscale and has its frame's size."""
    size0 = frame_size(seq.frames[0])
    for frame, mask in zip(seq.frames, seq.masks, strict=True):
        size = frame_size(frame) if frame is not seq.frames[0] else size0
        if size != size0:
            raise DatasetError(
                f"frame {frame} is {size[0]}x{size[1]} but {seq.frames[0].name} is "
                f"{size0[0]}x{size0[1]} (WxH); all frames of a sequence must share one size"
            )
        if mask is not None:
            msize = mask_header(mask)
            if msize != size:
                raise DatasetError(
                    f"mask {mask} is {msize[0]}x{msize[1]} but its frame {frame.name} is "
                    f"{size[0]}x{size[1]} (WxH); re-export the mask at the frame resolution"
                )


# ---------------------------------------------------------------------------------- YouTube-VOS


@dataclass
class YTObject:
    """A YouTube-VOS object: its category, the frames it is listed in, and where it first shows."""

    id: int
    category: str
    frames: list[str]

    @property
    def first_frame(self) -> str:
        return self.frames[0]


@dataclass
class YTVideo(VideoSequence):
    """A YouTube-VOS video. `masks[i]` is None for frames without annotation."""

    objects: dict[int, YTObject] = field(default_factory=dict)

    @property
    def frame_names(self) -> list[str]:
        return [p.stem for p in self.frames]

    @property
    def first_appearance(self) -> dict[int, int]:
        """Object id -> index (into `frames`) of the frame where it first appears."""
        index = {n: i for i, n in enumerate(self.frame_names)}
        return {oid: index[o.first_frame] for oid, o in self.objects.items()}


class YouTubeVOS:
    """YouTube-VOS 2018/2019 reader.

    root/<split>/JPEGImages/<vid>/*.jpg, root/<split>/Annotations/<vid>/*.png,
    root/<split>/meta.json = {"videos": {vid: {"objects": {"1": {"category", "frames"}}}}}.
    In 'train' every listed frame of an object is annotated; in 'valid' only the frame where an
    object first appears is.

    Raises:
        DatasetError: missing meta.json / folders, invalid meta.json, a video in meta.json
            without frames, or an object whose first frame has no annotation PNG.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 validate: bool = False):
        self.root = Path(root)
        self.split = split
        base = self.root / split
        _require_dir(base, "YouTube-VOS split folder", f"pass the root that holds {split}/")
        self.image_dir, self.mask_dir = base / "JPEGImages", base / "Annotations"
        _require_dir(self.image_dir, "frame folder", "re-extract the dataset")
        _require_dir(self.mask_dir, "annotation folder", "re-extract the dataset")
        meta_path = base / "meta.json"
        if not meta_path.is_file():
            raise DatasetError(f"{meta_path} does not exist; YouTube-VOS needs meta.json")
        try:
            videos = json.loads(meta_path.read_text())["videos"]
            if not isinstance(videos, dict):
                raise TypeError("'videos' is not an object")
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(
                f"{meta_path} is not a YouTube-VOS meta file ({e}); expected "
                '{"videos": {vid: {"objects": {"1": {"category": ..., "frames": [...]}}}}}'
            ) from e
        self.names = sorted(videos)
        self._videos = {v: self._scan(v, videos[v], meta_path) for v in self.names}
        if validate:
            for video in self._videos.values():
                check_sequence(video)

    def _scan(self, vid: str, entry: dict, meta_path: Path) -> YTVideo:
        fdir = self.image_dir / vid
        if not fdir.is_dir():
            raise DatasetError(f"video '{vid}' is in {meta_path} but {fdir} is missing")
        frames = _list_files(fdir, FRAME_EXTS)
        if not frames:
            raise DatasetError(f"video '{vid}' is empty: no frames in {fdir}")
        mdir = self.mask_dir / vid
        by_stem = {p.stem: p for p in _list_files(mdir, (".png",))} if mdir.is_dir() else {}
        masks = [by_stem.get(f.stem) for f in frames]
        stems = {f.stem for f in frames}
        objects = {}
        try:
            for key, o in entry.get("objects", {}).items():
                names = sorted(str(n) for n in o.get("frames", []))
                objects[int(key)] = YTObject(int(key), str(o.get("category", "")), names)
        except (AttributeError, ValueError, TypeError) as e:
            raise DatasetError(f"{meta_path}: video '{vid}' has a malformed objects entry ({e})"
                               ) from e
        for o in objects.values():
            if not o.frames:
                raise DatasetError(f"{meta_path}: video '{vid}' object {o.id} lists no frames")
            if o.first_frame not in stems:
                raise DatasetError(f"{meta_path}: video '{vid}' object {o.id} starts at frame "
                                   f"{o.first_frame}, which is not in {fdir}")
            if o.first_frame not in by_stem:
                raise DatasetError(
                    f"video '{vid}': missing annotation {mdir / (o.first_frame + '.png')} for "
                    f"object {o.id}'s first frame; re-extract the annotations"
                )
        return YTVideo(vid, frames, masks, objects=objects)

    @property
    def videos(self) -> list[str]:
        return list(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | str) -> YTVideo:
        if isinstance(key, (int, np.integer)):
            return self._videos[self.names[key]]
        if key not in self._videos:
            raise KeyError(f"no video {key!r} in {self.root / self.split}")
        return self._videos[key]

    def __iter__(self) -> Iterator[YTVideo]:
        return (self._videos[n] for n in self.names)


# ------------------------------------------------------------------------------ static pairs


def static_mask_ids(mask: np.ndarray) -> np.ndarray:
    """Normalise a static-dataset mask to object ids.

    Binary 0/255 -> 0/1. Soft saliency maps (many gray levels, e.g. DUTS) -> threshold at 128.
    VOC-style ids with 255 as 'void' boundary -> void becomes background.
    """
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 255}:
        return binary_to_ids(mask)
    if values.size > 32:
        return (mask >= 128).astype(np.uint8)
    if values[-1] == 255:
        return np.where(mask == 255, 0, mask).astype(np.uint8)
    return mask


class StaticPairs:
    """Image + mask folders matched by file stem (COCO / VOC / MSRA10K / ECSSD style).

    Images: .jpg/.jpeg/.png/.bmp; masks: .png (binary 0/255, palette or grayscale ids).
    Images without a mask are skipped (listed in `.unmatched`).

    Raises:
        DatasetError: a folder is missing or no image has a mask.
    """

    def __init__(self, images_dir: str | os.PathLike, masks_dir: str | os.PathLike):
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        _require_dir(self.images_dir, "image folder", "check the path")
        _require_dir(self.masks_dir, "mask folder", "check the path")
        masks = {p.stem: p for p in _list_files(self.masks_dir, (".png",))}
        self.pairs: list[tuple[Path, Path]] = []
        self.unmatched: list[Path] = []
        for img in _list_files(self.images_dir, FRAME_EXTS):
            if img.stem in masks:
                self.pairs.append((img, masks[img.stem]))
            else:
                self.unmatched.append(img)
        if not self.pairs:
            raise DatasetError(
                f"no image in {self.images_dir} has a mask with the same stem in "
                f"{self.masks_dir} (e.g. 0001.jpg <-> 0001.png); check the two folders"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8 RGB, mask (H, W) uint8 object ids)."""
        img_path, mask_path = self.pairs[i]
        image, mask = read_frame(img_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {img_path.name}"
                f" is {image.shape[1]}x{image.shape[0]} (WxH); they must match"
            )
        return image, static_mask_ids(mask)
