"""DAVIS 2017 semi-supervised evaluation of prediction folders, as the official toolkit computes it.

Protocol (davisvideochallenge/davis2017-evaluation, `DAVISEvaluation(task='semi-supervised')`):

* Frames of a sequence are the GT folder's PNGs in sorted order; the first and the last frame are
  not evaluated. Predictions are read only for the evaluated frames, by the GT frame names.
* GT value 255 (void) becomes background; void pixels are NOT excluded from J or F (the official
  semi-supervised path passes no void mask).
* The objects are ids 1..max(first GT frame). An id that is missing from the first frame but below
  the maximum is still an object; ids above it that appear later are ignored (background).
* The prediction's object count is the maximum id over its evaluated frames (255 included). More
  objects than the GT is an error; fewer are zero-padded (those objects were predicted empty).
* Per object: J = region IoU per frame (both empty -> 1), F = boundary F-measure per frame with a
  disk of radius ceil(0.008 * image diagonal); mean, recall (> 0.5) and decay via `db_statistics`.
* Global numbers are means over all objects of all sequences; J&F-Mean = (J-Mean + F-Mean) / 2.
  All values are fractions (the official CSV prints them with 3 decimals).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlvos.errors import DatasetError, InputError
from mlvos.fileio import atomic_dir, atomic_write_text

from .metrics import db_eval_clip, db_statistics

VOID_ID = 255
GLOBAL_KEYS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass
class ObjectResult:
    """Per-frame J and F of one object and their statistics (mean, recall, decay)."""

    sequence: str
    object: int
    J: np.ndarray
    F: np.ndarray
    j_mean: float = field(init=False)
    j_recall: float = field(init=False)
    j_decay: float = field(init=False)
    f_mean: float = field(init=False)
    f_recall: float = field(init=False)
    f_decay: float = field(init=False)

    def __post_init__(self) -> None:
        self.j_mean, self.j_recall, self.j_decay = (float(v) for v in db_statistics(self.J))
        self.f_mean, self.f_recall, self.f_decay = (float(v) for v in db_statistics(self.F))

    @property
    def name(self) -> str:
        """Official per-object name, e.g. 'bike-packing_2'."""
        return f"{self.sequence}_{self.object}"


@dataclass
class SequenceResult:
    """All objects of one sequence; `frames` = number of evaluated frames (all but first/last)."""

    name: str
    frames: int
    objects: list[ObjectResult]

    @property
    def j_mean(self) -> float:
        return float(np.mean([o.j_mean for o in self.objects])) if self.objects else float("nan")

    @property
    def f_mean(self) -> float:
        return float(np.mean([o.f_mean for o in self.objects])) if self.objects else float("nan")

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2.0


@dataclass
class EvalResult:
    """Evaluation of a set of sequences; `summary()` holds the official global numbers."""

    sequences: list[SequenceResult]

    @property
    def objects(self) -> list[ObjectResult]:
        return [o for s in self.sequences for o in s.objects]

    def summary(self) -> dict[str, float]:
        """Official global row: J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay."""
        objs = self.objects
        if not objs:
            raise DatasetError(
                "no object to evaluate: every evaluated sequence has an empty first GT frame "
                "(objects are ids 1..max id of the first frame); check the --gt folder"
            )
        jm = np.mean([o.j_mean for o in objs])
        fm = np.mean([o.f_mean for o in objs])
        values = (
            (jm + fm) / 2.0,
            jm,
            np.mean([o.j_recall for o in objs]),
            np.mean([o.j_decay for o in objs]),
            fm,
            np.mean([o.f_recall for o in objs]),
            np.mean([o.f_decay for o in objs]),
        )
        return {k: float(v) for k, v in zip(GLOBAL_KEYS, values, strict=True)}

    def to_json(self) -> dict:
        """JSON-ready dict: the global keys, `per_object` and `per_sequence` lists (fractions)."""

        def num(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        out: dict = dict(self.summary())
        out["frame_J"] = self.frame_j()
        out["num_sequences"] = len(self.sequences)
        out["num_objects"] = len(self.objects)
        out["per_object"] = [
            {
                "sequence": o.sequence,
                "object": o.object,
                "J-Mean": o.j_mean,
                "F-Mean": o.f_mean,
                "J-Recall": o.j_recall,
                "J-Decay": o.j_decay,
                "F-Recall": o.f_recall,
                "F-Decay": o.f_decay,
            }
            for o in self.objects
        ]
        out["per_sequence"] = [
            {
                "sequence": s.name,
                "objects": len(s.objects),
                "frames": s.frames,
                "J-Mean": num(s.j_mean),
                "F-Mean": num(s.f_mean),
                "J&F-Mean": num(s.jf_mean),
            }
            for s in self.sequences
        ]
        return out

    def write_json(self, path: str | os.PathLike, by_attribute: dict | None = None) -> None:
        """Write `to_json()` (plus `by_attribute` when given) atomically (indented, NaN-free)."""
        data = self.to_json()
        if by_attribute:
            data["by_attribute"] = by_attribute
        atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")

    def write_csv(self, path: str | os.PathLike, decimals: int = 3) -> None:
        """Write the official global CSV (one header row, one value row, `%.3f`)."""
        s = self.summary()
        row = ",".join(f"{s[k]:.{decimals}f}" for k in GLOBAL_KEYS)
        atomic_write_text(path, ",".join(GLOBAL_KEYS) + "\n" + row + "\n")

    def write_per_object_csv(self, path: str | os.PathLike, decimals: int = 3) -> None:
        """Write the official per-sequence CSV: `Sequence,J-Mean,F-Mean`, one row per object."""
        lines = ["Sequence,J-Mean,F-Mean"]
        lines += [f"{o.name},{o.j_mean:.{decimals}f},{o.f_mean:.{decimals}f}" for o in self.objects]
        atomic_write_text(path, "\n".join(lines) + "\n")

    def frame_j(self) -> dict[str, float]:
        """Distribution of J over every (object, evaluated frame): min, 5th percentile, median,
        mean and the share >= 0.99. With a reference prediction as --gt (e.g. fp32 vs fp16
        masks) it is the per-frame IoU agreement."""
        j = np.concatenate([o.J for o in self.objects]) if self.objects else np.zeros(0)
        if not j.size:
            return {}
        return {"min": float(j.min()), "p5": float(np.percentile(j, 5)),
                "median": float(np.median(j)), "mean": float(j.mean()),
                "share>=0.99": float(np.mean(j >= 0.99)), "count": int(j.size)}

    def by_attribute(self, attributes: dict[str, dict[str, list[str]]]) -> dict[str, dict]:
        """J&F per attribute: {attribute: {"objects", "J-Mean", "F-Mean", "J&F-Mean"}}.

        Args:
            attributes: {sequence: {object id (str): [attribute, ...]}}, e.g. the "attributes"
                entry of a natural dataset's natural.json. Objects without an attribute are
                grouped under "none"; every evaluated object is also in "all".
        """
        groups: dict[str, list[ObjectResult]] = {"all": list(self.objects)}
        for o in self.objects:
            names = attributes.get(o.sequence, {}).get(str(o.object), [])
            for a in names or ["none"]:
                groups.setdefault(a, []).append(o)
        out = {}
        for a, objs in groups.items():
            jm = float(np.mean([o.j_mean for o in objs]))
            fm = float(np.mean([o.f_mean for o in objs]))
            out[a] = {"objects": len(objs), "J-Mean": jm, "F-Mean": fm, "J&F-Mean": (jm + fm) / 2}
        return out

    @staticmethod
    def format_attributes(table: dict[str, dict]) -> str:
        """The `by_attribute` table as text (one line per attribute, "all" last)."""
        lines = [f"{'attribute':<12} objects  J-Mean  F-Mean     J&F"]
        for a in sorted(table, key=lambda k: (k == "all", k == "none", k)):
            r = table[a]
            lines.append(f"{a:<12} {r['objects']:>7}  {r['J-Mean']:6.3f}  {r['F-Mean']:6.3f}  "
                         f"{r['J&F-Mean']:6.3f}")
        return "\n".join(lines)

    def format_table(self) -> str:
        """Per-sequence table (sequence, objects, J-Mean, F-Mean, J&F) and the global line."""
        width = max([len("sequence")] + [len(s.name) for s in self.sequences])
        lines = [f"{'sequence':<{width}}  objects  J-Mean  F-Mean     J&F"]
        for s in self.sequences:
            lines.append(
                f"{s.name:<{width}}  {len(s.objects):>7}  {s.j_mean:6.3f}  {s.f_mean:6.3f}  "
                f"{s.jf_mean:6.3f}"
            )
        g = self.summary()
        lines.append(
            f"global ({len(self.sequences)} sequences, {len(self.objects)} objects): "
            + "  ".join(f"{k} {g[k]:.3f}" for k in GLOBAL_KEYS)
        )
        fj = self.frame_j()
        lines.append(f"per-frame J over {fj['count']} object-frames: min {fj['min']:.3f}, "
                     f"5th pct {fj['p5']:.3f}, median {fj['median']:.3f}, "
                     f"share >= 0.99 {fj['share>=0.99']:.3f}")
        return "\n".join(lines)


def _objects_and_frames(gt: np.ndarray, name: str) -> tuple[int, np.ndarray]:
    """Number of GT objects (max id of the first frame, void -> 0) and the evaluated GT frames."""
    if gt.ndim != 3:
        raise InputError(
            f"sequence {name}: GT must be (T, H, W) object ids, received shape {gt.shape}"
        )
    if gt.shape[0] < 3:
        raise DatasetError(
            f"sequence {name} has {gt.shape[0]} GT frame(s); the DAVIS protocol skips the first "
            "and last frame, so at least 3 frames are needed"
        )
    gt = np.where(gt == VOID_ID, 0, gt)
    return int(gt[0].max()), gt[1:-1]


def evaluate_sequence(
    gt: np.ndarray,
    pred: np.ndarray,
    name: str = "sequence",
    frame_names: Sequence[str] | None = None,
) -> SequenceResult:
    """Evaluate one sequence held in memory.

    Args:
        gt: (T, H, W) GT object ids of the whole clip (first and last frame included).
        pred: predicted ids, either (T, H, W) (first/last frame are ignored) or (T-2, H, W) for
            the evaluated frames only.
        name: sequence name used in results and messages.
        frame_names: names of the T GT frames, only for error messages.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    n_obj, gt_eval = _objects_and_frames(gt, name)
    t = gt.shape[0]
    if pred.ndim == 3 and pred.shape[0] == t:
        pred = pred[1:-1]
    if pred.shape != gt_eval.shape:
        raise InputError(
            f"sequence {name}: prediction shape {pred.shape} does not match the GT: expected "
            f"({t}, H, W) or ({t - 2}, H, W) with (H, W) = {gt.shape[1:]}"
        )
    n_pred = int(pred.max()) if pred.size else 0
    if n_pred > n_obj:
        where = int(np.argmax(pred.reshape(pred.shape[0], -1).max(axis=1) == n_pred)) + 1
        frame = frame_names[where] if frame_names is not None else f"frame index {where}"
        hint = (
            " (255 is void in GT but an object id in predictions; write 0 there)"
            if n_pred == VOID_ID
            else ""
        )
        raise DatasetError(
            f"sequence {name}: prediction {frame} contains object id {n_pred}{hint}, but the GT "
            f"has {n_obj} object(s) (ids 1..{n_obj} from its first frame); predictions must only "
            "use the GT object ids"
        )
    objects = []
    for k in range(1, n_obj + 1):
        gt_k = gt_eval == k
        pr_k = pred == k  # ids above the prediction's max are all-empty: the official zero padding
        objects.append(ObjectResult(name, k, *db_eval_clip(gt_k, pr_k)))
    return SequenceResult(name, int(gt_eval.shape[0]), objects)


def _read_ids(path: Path) -> np.ndarray:
    from mlvos.palette import read_mask

    return read_mask(path)


def list_sequences(gt_dir: str | os.PathLike) -> list[str]:
    """Sorted names of the sequence folders in a DAVIS `Annotations/480p`-style folder."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DatasetError(
            f"GT folder {gt_dir} does not exist; pass the folder holding one sub-folder of PNG "
            "masks per sequence (e.g. DAVIS/Annotations/480p)"
        )
    names = sorted(p.name for p in gt_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DatasetError(
            f"GT folder {gt_dir} has no sequence sub-folders; expected <gt>/<sequence>/00000.png"
        )
    return names


def _gt_frames(gt_dir: Path, seq: str) -> list[Path]:
    seq_dir = gt_dir / seq
    if not seq_dir.is_dir():
        raise DatasetError(
            f"sequence {seq}: GT folder {seq_dir} does not exist; check --sequences and --gt"
        )
    frames = sorted(seq_dir.glob("*.png"))
    if not frames:
        raise DatasetError(f"sequence {seq}: GT folder {seq_dir} holds no .png masks")
    return frames


def _stack(paths: Iterable[Path], seq: str, shape: tuple[int, int] | None, what: str):
    arrays = []
    for p in paths:
        a = _read_ids(p)
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise DatasetError(
                f"sequence {seq}: {what} {p} is {a.shape[1]}x{a.shape[0]} (WxH), expected "
                f"{shape[1]}x{shape[0]} like the GT; predictions must have the GT resolution"
            )
        arrays.append(a)
    return np.stack(arrays)


def evaluate_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    sequences: Sequence[str] | None = None,
    *,
    progress: bool = False,
) -> EvalResult:
    """Evaluate `pred_dir/<seq>/<frame>.png` against `gt_dir/<seq>/<frame>.png`.

    Args:
        gt_dir: folder of GT sequence folders of palette (or grayscale id) PNGs.
        pred_dir: folder of predicted sequence folders, same frame names (first/last optional).
        sequences: names to evaluate; default every sequence folder of `gt_dir`.
        progress: show a tqdm bar on stderr.

    Raises:
        DatasetError: missing folder/frame, unreadable or wrong-size mask, too many objects.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    names = list(sequences) if sequences else list_sequences(gt_dir)
    if not pred_dir.is_dir():
        raise DatasetError(
            f"prediction folder {pred_dir} does not exist; expected <pred>/<sequence>/<frame>.png"
        )
    it: Iterable[str] = names
    if progress:
        try:
            from tqdm import tqdm

            it = tqdm(names, desc="eval", unit="seq")
        except ImportError:
            pass
    results = []
    for seq in it:
        frames = _gt_frames(gt_dir, seq)
        gt = _stack(frames, seq, None, "GT mask")
        if gt.shape[0] < 3:
            _objects_and_frames(gt, seq)  # raises the explanatory DatasetError
        pred_seq = pred_dir / seq
        if not pred_seq.is_dir():
            raise DatasetError(
                f"sequence {seq}: prediction folder {pred_seq} does not exist; write one PNG per "
                f"GT frame ({frames[1].name} .. {frames[-2].name} are evaluated)"
            )
        pred_paths = [pred_seq / f.name for f in frames[1:-1]]
        for p in pred_paths:
            if not p.is_file():
                raise DatasetError(
                    f"sequence {seq}: prediction frame {p} is missing; every GT frame except the "
                    "first and last needs a prediction PNG of the same name"
                )
        pred = _stack(pred_paths, seq, gt.shape[1:], "prediction")
        results.append(evaluate_sequence(gt, pred, seq, [f.name for f in frames]))
    return EvalResult(results)


def find_attributes(gt: str | os.PathLike) -> dict[str, dict[str, list[str]]] | None:
    """Per-object attributes of the dataset a GT folder belongs to, or None.

    Looks for natural.json (written by `mlvos data synth --style natural`) in the dataset
    root, i.e. two levels above `<root>/Annotations/480p`.
    """
    for folder in list(Path(gt).resolve().parents)[:2]:
        meta = folder / "natural.json"
        if meta.is_file():
            try:
                return json.loads(meta.read_text())["attributes"]
            except (OSError, ValueError, KeyError) as e:
                raise DatasetError(f"{meta} has no readable 'attributes' ({e})") from None
    return None


def copy_first_mask_baseline(
    gt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sequences: Sequence[str] | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write a prediction folder that repeats each sequence's first GT mask on every frame.

    Void (255) becomes background so the result is a valid prediction. The folder is written
    atomically (complete or absent); `force` replaces an existing one.
    """
    from mlvos.palette import encode_mask

    gt_dir, out_dir = Path(gt_dir), Path(out_dir)
    names = list(sequences) if sequences else list_sequences(gt_dir)
    try:
        with atomic_dir(out_dir, force=force) as tmp:
            for seq in names:
                frames = _gt_frames(gt_dir, seq)
                first = _read_ids(frames[0])
                data = encode_mask(np.where(first == VOID_ID, 0, first).astype(np.uint8))
                (tmp / seq).mkdir()
                for f in frames:
                    (tmp / seq / f.name).write_bytes(data)
    except FileExistsError as e:
        raise InputError(f"{e}") from e
    return out_dir
