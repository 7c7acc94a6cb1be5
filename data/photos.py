"""Natural photographs for the natural-video generator: an offline, reproducible photo folder.

`install_photos(out)` (`mlvos data photos --out DIR`) fills a folder from Debian packages that
ship photographs (desktop wallpapers, OpenCV's sample images, Tux Paint's photographic stamps
with alpha masks), fetched with `apt-get download` and read without root (mlvos.data.debian):

    DIR/photos.json                      sources (package, version, sha256, license), files
    DIR/train/backgrounds/*.jpg          wallpapers (lomiri 16.04/20.04, MATE nature, Plasma)
    DIR/train/objects/*.png              Tux Paint stamps (RGBA photo cut-outs), 85 % of them
    DIR/val/backgrounds/*.jpg            OpenCV's sample photographs (opencv-doc)
    DIR/val/objects/*.png                the other 15 % of the stamps (held out by name hash)
    DIR/licenses/<package>.copyright     each package's Debian copyright file

The validation split shares no photograph with the training split: its backgrounds come from
another package, its objects are stamps the training split never sees. scikit-image's bundled
sample images are in neither (they are reserved for independent validation; a test checks).

`PhotoLibrary(root, split)` reads such a folder, or any folder of the user's own images
(COCO, DUTS, a domain's pictures: every image is a background and a texture source; images with
an alpha channel are also cut-out objects), for `--photos DIR`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError

logger = logging.getLogger(__name__)

FORMAT = "mlvos-photos"
FORMAT_VERSION = 1
MANIFEST = "photos.json"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_BACKGROUND_SIDE = 128  # shorter side of a usable photo (pixels)
MIN_OBJECT_SIDE = 24       # shorter side of a usable cut-out's alpha bounding box
BACKGROUND_SHORT_SIDE = 720  # installed backgrounds are downscaled to this shorter side
OBJECT_LONG_SIDE = 384       # installed cut-outs are downscaled to this longer side
VAL_OBJECT_SHARE = 0.15      # stamps held out for the validation split (by name hash)
_TUX = "usr/share/tuxpaint/stamps"


@dataclass(frozen=True)
class PhotoSource:
    """Photographs taken from one Debian package.

    Attributes:
        package, version: Debian binary package and the version pinned for reproducibility.
        role: "background" (opaque photographs) or "object" (RGBA cut-outs).
        split: "train", "val", or "hash" (objects: split by a hash of the file name).
        patterns: fnmatch globs of the package paths to take.
    """

    package: str
    version: str
    role: str
    split: str
    patterns: tuple[str, ...]


def _plasma(*names: str) -> tuple[str, ...]:
    return tuple(f"usr/share/wallpapers/{n}/contents/images/*.jpg" for n in names)


_CV = "usr/share/doc/opencv-doc/examples/data"
SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("lomiri-wallpapers-16.04", "20.04.0-2", "background", "train",
                ("usr/share/backgrounds/*.jpg",)),
    PhotoSource("lomiri-wallpapers-20.04", "20.04.0-2", "background", "train",
                ("usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",)),
    PhotoSource("mate-backgrounds", "1.26.0-1", "background", "train",
                ("usr/share/backgrounds/mate/nature/*.jpg",)),
    PhotoSource("plasma-workspace-wallpapers", "4:5.27.5-2", "background", "train",
                _plasma("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
                        "FallenLeaf", "Grey", "OneStandsOut", "Path", "summer_1am", "Kite")),
    PhotoSource("opencv-doc", "4.6.0+dfsg-12", "background", "val", tuple(
        f"{_CV}/{n}" for n in (
            "aero1.jpg", "aero3.jpg", "aloeL.jpg", "baboon.jpg", "basketball1.png", "board.jpg",
            "building.jpg", "ela_original.jpg", "fruits.jpg", "home.jpg", "leuvenA.jpg",
            "licenseplate_motion.jpg", "messi5.jpg", "squirrel_cls.jpg", "stuff.jpg",
            "graf1.png", "rubberwhale1.png", "box_in_scene.png", "apple.jpg", "orange.jpg",
            "butterfly.jpg", "starry_night.jpg"))),
    # flat icons (symbols/) and weather drawings (naturalforces/) are not photographs
    PhotoSource("tuxpaint-stamps-default", "2022.06.04-1", "object", "hash", tuple(
        f"{_TUX}/{c}/*.png" for c in (
            "animals", "clothes", "food", "hobbies", "household", "medical", "military",
            "people", "plants", "seasonal", "space", "sports", "town", "vehicles"))),
)


def object_split(name: str) -> str:
    """'val' for the stamps held out of training (a stable hash of the file stem), else 'train'.

    Numbered or lettered variants of one stamp (fireman200b, fireman240a) share a split.
    """
    stem = re.sub(r"[\d_\-]+[a-z]?$", "", Path(name).stem.lower()) or Path(name).stem
    return "val" if zlib.crc32(stem.encode()) % 1000 < VAL_OBJECT_SHARE * 1000 else "train"


def _decode(data: bytes, what: str, *, alpha: bool) -> np.ndarray | None:
    import cv2

    flag = cv2.IMREAD_UNCHANGED if alpha else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        return None
    if img.dtype != np.uint8:  # 16-bit PNGs
        img = (img / 257).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def _prepare_background(img: np.ndarray) -> np.ndarray | None:
    import cv2

    h, w = img.shape[:2]
    if min(h, w) < MIN_BACKGROUND_SIDE:
        return None
    if img.shape[2] == 4:
        img = img[..., :3]
    s = BACKGROUND_SHORT_SIDE / min(h, w)
    if s < 1:
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    return img


def _prepare_object(img: np.ndarray) -> np.ndarray | None:
    """BGRA cut-out cropped to its alpha's bounding box, or None when it is not a cut-out."""
    import cv2

    if img.shape[2] != 4:
        return None
    a = img[..., 3]
    solid = a > 127
    cover = solid.mean()
    if cover < 0.02 or a.min() > 127:  # empty, or an opaque rectangle (not a cut-out)
        return None
    ys, xs = np.nonzero(solid)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    img = img[y0:y1, x0:x1]
    if min(img.shape[:2]) < MIN_OBJECT_SIDE or (img[..., 3] > 127).mean() < 0.15:
        return None
    s = OBJECT_LONG_SIDE / max(img.shape[:2])
    if s < 1:
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
    return img


def _safe_name(package: str, path: str) -> str:
    keep = path.split("/")
    # wallpapers keep their folder name (Plasma: <Name>/contents/images/<size>.jpg)
    base = keep[-4] if "contents" in keep else Path(path).stem
    base = "".join(c if c.isalnum() or c in "-_" else "_" for c in base)
    return f"{package}--{base}"


def install_photos(out: str | os.PathLike, *, force: bool = False, progress: bool = False,
                   sources: Sequence[PhotoSource] = SOURCES) -> Path:
    """Fill `out` with the photo folder described in the module docstring; return its path.

    Cached: a complete folder made from the same sources is reused (force=True rebuilds).
    Written atomically (temporary folder + rename), so a failed run leaves nothing behind.

    Raises:
        DatasetError: a package cannot be downloaded (no apt-get, no mirror) or yields no usable
            photograph.
    """
    import cv2
    from tqdm import tqdm

    from mlvos.data.debian import fetch_files
    from mlvos.fileio import atomic_dir

    out = Path(out)
    wanted = [s.__dict__ for s in sources]
    if (out / MANIFEST).is_file() and not force:
        try:
            meta = json.loads((out / MANIFEST).read_text())
            if meta.get("format") == FORMAT and meta.get("version") == FORMAT_VERSION and \
                    meta.get("requested") == wanted:
                return out
        except (OSError, ValueError):
            pass  # unreadable manifest: rebuild
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "requested": wanted, "packages": [],
            "files": []}
    with atomic_dir(out, force=True) as tmp, \
            tqdm(total=len(sources), unit="package", desc="photos", disable=not progress) as bar:
        for src in sources:
            bar.set_postfix_str(src.package)
            doc = f"usr/share/doc/{src.package}/copyright"
            deb, files = fetch_files(src.package, src.version, (*src.patterns, doc))
            kept = 0
            seen: set[str] = set()
            for path, data in sorted(files):
                if path == doc:
                    (tmp / "licenses").mkdir(exist_ok=True)
                    (tmp / "licenses" / f"{src.package}.copyright").write_bytes(data)
                    continue
                name = _safe_name(src.package, path)
                if name in seen:  # one picture per wallpaper (Plasma ships several sizes)
                    continue
                img = _decode(data, path, alpha=src.role == "object")
                if img is None:
                    continue
                if src.role == "object":
                    img, ext = _prepare_object(img), ".png"
                    split = object_split(path) if src.split == "hash" else src.split
                else:
                    img, ext = _prepare_background(img), ".jpg"
                    split = src.split
                if img is None:
                    continue
                seen.add(name)
                rel = Path(split) / f"{src.role}s" / (name + ext)
                (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
                params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else \
                    [cv2.IMWRITE_PNG_COMPRESSION, 6]
                ok, buf = cv2.imencode(ext, img, params)
                if not ok:
                    raise DatasetError(f"cannot encode {path} from {src.package}")
                (tmp / rel).write_bytes(buf.tobytes())
                meta["files"].append({"path": rel.as_posix(), "split": split, "role": src.role,
                                      "package": src.package, "source": path,
                                      "sha256": hashlib.sha256(buf.tobytes()).hexdigest()})
                kept += 1
            if kept == 0:
                raise DatasetError(f"{src.package} {deb.version}: no usable photograph matched "
                                   f"{list(src.patterns)}")
            meta["packages"].append({"package": src.package, "version": deb.version,
                                     "pinned": src.version, "deb_sha256": deb.sha256,
                                     "files": kept})
            bar.update(1)
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def default_photos_dir() -> Path:
    """$MLVOS_PHOTOS, else $XDG_CACHE_HOME/mlvos/photos (~/.cache/mlvos/photos)."""
    if os.environ.get("MLVOS_PHOTOS"):
        return Path(os.environ["MLVOS_PHOTOS"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mlvos" / "photos"


def resolve_photos_dir(photos: str | os.PathLike | None, *, progress: bool = True) -> Path:
    """The photo folder to use: `photos` as given (checked to exist), or the default folder,
    installed from Debian packages on first use (see install_photos).

    Raises:
        InputError: a given folder does not exist or is a file.
        DatasetError: the default folder cannot be installed (no apt-get, no mirror).
    """
    if photos is not None:
        p = Path(photos)
        if not p.is_dir():
            raise InputError(f"--photos {p}: {'not a folder' if p.exists() else 'no such folder'}"
                             "; make one with `mlvos data photos --out DIR` or point at a folder "
                             "of images")
        return p
    d = default_photos_dir()
    if not (d / MANIFEST).is_file():
        logger.info(f"installing the default photo set into {d} (Debian packages, once; "
                    "set MLVOS_PHOTOS or pass --photos DIR to use another folder)")
        install_photos(d, progress=progress)
    return d


# ------------------------------------------------------------------------------------ reading


def _imread(path: Path, *, alpha: bool) -> np.ndarray:
    """RGB (H, W, 3) or RGBA (H, W, 4) uint8; DatasetError naming the file when unreadable."""
    import cv2

    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read photo {path}: {e}") from None
    img = _decode(data, str(path), alpha=alpha)
    if img is None:
        raise DatasetError(f"cannot decode photo {path}: not an image OpenCV reads "
                           f"({', '.join(IMAGE_EXTS)}), or the file is corrupt")
    code = cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(img, code)


class PhotoLibrary:
    """Photographs for the natural-video generator, loaded once into memory.

    Args:
        root: an `mlvos data photos` folder (has photos.json) or any folder of images
            (searched recursively; hidden files skipped).
        split: "train" or "val" for an `mlvos data photos` folder; ignored for a plain folder
            (use separate folders for training and validation photos).

    Attributes:
        backgrounds: list of (H, W, 3) uint8 RGB photographs (short side >= 128 px).
        objects: list of (h, w, 4) uint8 RGBA cut-outs (may be empty: the generator then cuts
            objects out of the backgrounds with random masks).
        name: a short description for logs and dataset metadata.

    Raises:
        InputError: root missing, not a folder, holding no image, or split unknown.
        DatasetError: an image cannot be read, or no photograph is large enough.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        self.root = Path(root)
        if not self.root.exists():
            raise InputError(f"--photos {self.root}: no such folder; make one with "
                             "`mlvos data photos --out DIR` or point at a folder of images")
        if not self.root.is_dir():
            raise InputError(f"--photos {self.root} is a file; it must be a folder of images")
        manifest = self.root / MANIFEST
        if manifest.is_file():
            if split not in ("train", "val"):
                raise InputError(f"photo split must be 'train' or 'val', received {split!r}")
            try:
                meta = json.loads(manifest.read_text())
            except (OSError, ValueError) as e:
                raise DatasetError(f"{manifest} is not readable JSON ({e}); rebuild it with "
                                   "`mlvos data photos --out DIR --force`") from None
            if meta.get("format") != FORMAT:
                raise DatasetError(f"{manifest} is not an mlvos photo manifest")
            entries = [f for f in meta.get("files", []) if f.get("split") == split]
            bg = [self.root / f["path"] for f in entries if f["role"] == "background"]
            ob = [self.root / f["path"] for f in entries if f["role"] == "object"]
            self.name = f"mlvos-photos:{split}"
        else:
            files = sorted(p for p in self.root.rglob("*")
                           if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                           and not any(part.startswith(".") for part in
                                       p.relative_to(self.root).parts))
            if not files:
                raise InputError(f"--photos {self.root} holds no image files "
                                 f"({', '.join(IMAGE_EXTS)})")
            bg, ob = files, [p for p in files if p.suffix.lower() in (".png", ".webp", ".tif",
                                                                     ".tiff")]
            self.name = f"folder:{self.root.name}"
        self.backgrounds: list[np.ndarray] = []
        small = []
        for p in bg:
            img = _imread(p, alpha=False)
            if min(img.shape[:2]) < MIN_BACKGROUND_SIDE:
                small.append(f"{p.name} ({img.shape[1]}x{img.shape[0]})")
                continue
            self.backgrounds.append(img)
        if not self.backgrounds:
            raise DatasetError(
                f"--photos {self.root}: no photograph has a shorter side >= "
                f"{MIN_BACKGROUND_SIDE} px (too small: {', '.join(small[:5])}"
                f"{', ...' if len(small) > 5 else ''}); use larger images")
        self.objects: list[np.ndarray] = []
        for p in ob:
            img = _imread(p, alpha=True)
            if img.shape[2] == 4 and (img[..., 3] > 127).any() and img[..., 3].min() <= 127:
                ys, xs = np.nonzero(img[..., 3] > 127)
                crop = img[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                if min(crop.shape[:2]) >= MIN_OBJECT_SIDE:
                    self.objects.append(np.ascontiguousarray(crop))

    def __repr__(self) -> str:
        return (f"PhotoLibrary({self.name}: {len(self.backgrounds)} backgrounds, "
                f"{len(self.objects)} cut-outs)")
