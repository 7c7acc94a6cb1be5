"""Label-free tracking statistics: how predicted masks behave when there is no ground truth.

Given a folder of predicted id masks (one PNG per frame, as `mlvos run` writes them) and the
first-frame mask, each object of the first-frame mask gets:

- its first-frame area (pixels);
- the largest area over the frames divided by the first-frame area, and the frame where it is;
- the number and share of frames where it is non-empty, and the last such frame;
- the share of non-empty frames where its largest 8-connected component holds >= 90 % of its
  pixels (a tracker that leaks onto other people or background usually scatters fragments).

Two acceptance checks follow (`TrackStats.area_ok`, `TrackStats.connected_ok`): the mask never
exceeds twice its first-frame area, and it is one piece (largest component >= 90 %) in >= 90 %
of the frames where it is non-empty. They catch drift and leaks; an object that is lost (empty)
passes both, which is why presence is reported next to them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, require

MAX_AREA_RATIO = 2.0        # a mask may at most double its first-frame area
MIN_COMPONENT_SHARE = 0.9   # the largest component must hold this share of the object's pixels
MIN_CONNECTED_FRAMES = 0.9  # ... in at least this share of the frames where it is non-empty


@dataclass(frozen=True)
class TrackStats:
    """Statistics of one object over a predicted sequence (frames are named by file stem).

    Shares are fractions in [0, 1]; `connected_share` is None when the object is never present.
    """

    id: int
    first_area: int
    max_area: int
    max_area_ratio: float
    max_area_frame: str
    frames: int
    present_frames: int
    present_share: float
    connected_frames: int
    connected_share: float | None
    last_present_frame: str | None

    @property
    def area_ok(self) -> bool:
        """The mask never exceeds `MAX_AREA_RATIO` times its first-frame area."""
        return self.max_area_ratio <= MAX_AREA_RATIO

    @property
    def connected_ok(self) -> bool:
        """One piece in >= `MIN_CONNECTED_FRAMES` of the frames where it is non-empty."""
        return self.connected_share is not None and self.connected_share >= MIN_CONNECTED_FRAMES

    def to_dict(self) -> dict:
        return {**asdict(self), "area_ok": self.area_ok, "connected_ok": self.connected_ok}


@dataclass(frozen=True)
class TrackingReport:
    """Per-object statistics of one predicted sequence against its first-frame mask."""

    pred: str
    first_mask: str
    frames: list[str]
    objects: list[TrackStats]

    @property
    def passed(self) -> bool:
        return all(o.area_ok and o.connected_ok for o in self.objects)

    def format_table(self) -> str:
        """A per-object table with PASS/FAIL for both checks, then one summary line."""
        head = (f"{'object':>6} {'first area':>10} {'max area (x first @ frame)':>27} "
                f"{'present':>16} {'1 piece':>7} {'last':>6}  "
                f"{f'area<={MAX_AREA_RATIO:g}x':>8} {f'1 piece>={MIN_CONNECTED_FRAMES:.0%}':>12}")
        lines = [head, "-" * len(head)]
        for o in self.objects:
            peak = f"{o.max_area} ({o.max_area_ratio:.2f}x @ {o.max_area_frame})"
            present = f"{o.present_frames}/{o.frames} ({o.present_share:.1%})"
            piece = "-" if o.connected_share is None else f"{o.connected_share:.1%}"
            lines.append(
                f"{o.id:>6} {o.first_area:>10} {peak:>27} {present:>16} {piece:>7} "
                f"{o.last_present_frame or '-':>6}  {_verdict(o.area_ok):>8} "
                f"{_verdict(o.connected_ok):>12}")
        failed = [o.id for o in self.objects if not (o.area_ok and o.connected_ok)]
        lines.append(
            f"{len(self.frames)} frames, {len(self.objects)} objects: "
            + ("all PASS" if not failed else f"FAIL for object(s) {', '.join(map(str, failed))}")
            + f" (checks: area <= {MAX_AREA_RATIO:g}x the first frame's; largest 8-connected "
            f"component >= {MIN_COMPONENT_SHARE:.0%} of the pixels in >= "
            f"{MIN_CONNECTED_FRAMES:.0%} of the frames where present)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "pred": self.pred, "first_mask": self.first_mask, "frames": len(self.frames),
            "first_frame": self.frames[0], "last_frame": self.frames[-1],
            "thresholds": {"max_area_ratio": MAX_AREA_RATIO,
                           "min_component_share": MIN_COMPONENT_SHARE,
                           "min_connected_frames": MIN_CONNECTED_FRAMES},
            "passed": self.passed,
            "objects": [o.to_dict() for o in self.objects],
        }

    def write_json(self, path: str | os.PathLike) -> None:
        from mlvos.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def largest_component_share(binary: np.ndarray) -> float:
    """Share of the True pixels that the largest 8-connected component holds.

    Args:
        binary: (H, W) bool, at least one True pixel.

    Returns:
        a fraction in (0, 1].
    """
    cv2 = require("cv2", "ort", "connected components of the tracking statistics")
    n, _, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    areas = stats[1:n, cv2.CC_STAT_AREA]
    return float(areas.max() / areas.sum())


def tracking_stats(pred: str | os.PathLike, first_mask: str | os.PathLike) -> TrackingReport:
    """Statistics of every object of `first_mask` over the predicted masks in `pred`.

    Args:
        pred: folder of id PNGs (palette or grayscale), one per frame, sorted by name; the
            annotated frame, if present, counts like any other.
        first_mask: the first-frame id PNG; its non-zero ids are the objects.

    Raises:
        DatasetError: a missing folder or mask, a folder without PNGs, a first mask without
            objects, or a predicted mask of another size.
    """
    from mlvos.palette import read_mask

    pred = Path(pred)
    if not pred.is_dir():
        raise DatasetError(f"prediction folder {pred} does not exist (or is not a folder); "
                           "pass the --out folder of `mlvos run`")
    files = sorted(pred.glob("*.png"))
    if not files:
        subdirs = sorted(p.name for p in pred.iterdir() if p.is_dir())
        hint = (f"; it holds folders ({', '.join(subdirs[:3])}...): pass one sequence's folder"
                if subdirs else "")
        raise DatasetError(f"prediction folder {pred} holds no PNG masks{hint}")
    first = read_mask(first_mask)
    ids = [int(i) for i in np.unique(first) if i != 0]
    if not ids:
        raise DatasetError(f"first-frame mask {first_mask} holds no object (all pixels are 0)")
    first_area = {i: int(np.count_nonzero(first == i)) for i in ids}

    n = len(files)
    area = np.zeros((len(ids), n), dtype=np.int64)
    connected = np.zeros((len(ids), n), dtype=bool)
    for t, path in enumerate(files):
        mask = read_mask(path)
        if mask.shape != first.shape:
            raise DatasetError(
                f"predicted mask {path} is {mask.shape[0]}x{mask.shape[1]}, the first-frame mask "
                f"{first.shape[0]}x{first.shape[1]}; predictions must have the frame size")
        # one bincount gives every object's area; components only for the present objects
        counts = np.bincount(mask.ravel(), minlength=256)
        for k, i in enumerate(ids):
            area[k, t] = counts[i]
            if counts[i]:
                connected[k, t] = largest_component_share(mask == i) >= MIN_COMPONENT_SHARE

    names = [p.stem for p in files]
    objects = []
    for k, i in enumerate(ids):
        present = area[k] > 0
        n_present = int(present.sum())
        peak = int(area[k].argmax())
        objects.append(TrackStats(
            id=i, first_area=first_area[i], max_area=int(area[k, peak]),
            max_area_ratio=float(area[k, peak] / first_area[i]), max_area_frame=names[peak],
            frames=n, present_frames=n_present, present_share=n_present / n,
            connected_frames=int(connected[k].sum()),
            connected_share=float(connected[k].sum() / n_present) if n_present else None,
            last_present_frame=names[int(np.flatnonzero(present)[-1])] if n_present else None,
        ))
    return TrackingReport(str(pred), str(first_mask), names, objects)
