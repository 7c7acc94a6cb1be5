"""Training data: clip sources and the torch Dataset that makes batches a function of the step.

A *source* turns a numpy Generator into one training clip (`mlvos.data.clips.Clip`). The
`ClipDataset` seeds that Generator from (seed, rank, sample index), where sample index =
step * batch + position in the batch, so:

- a run resumed at step k draws exactly the batches an uninterrupted run draws at step k
  (nothing about the data pipeline needs saving beyond the step);
- every DDP rank draws a different stream (the rank is part of the seed), which is what a
  DistributedSampler gives map-style data;
- results do not depend on `num_workers`.

Sources (all pure numpy + cv2; torch appears only in `ClipDataset`):
    SynthVideoSource   on-the-fly procedural videos (mlvos.data.synth), main training
    SynthStaticSource  single synthetic frames simulated into clips, pre-training without images
    NaturalVideoSource natural-looking videos from photographs (mlvos.data.natural)
    NaturalStaticSource one natural frame simulated into a clip (pre-training on photographs)
    StaticSource       image + mask folders simulated into clips (paper's pre-training)
    VideoSource        DAVIS / YouTube-VOS videos with the max-skip curriculum
    MixedSource        uniform mixture of several sources
    (LucidSource, fine-tuning on one annotated frame, lives in lucid.py)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlvos.data.clips import (
    Clip,
    _choose_objects,
    _relabel,
    sample_indices,
    sample_video_clip,
    simulate_clip,
)
from mlvos.errors import DatasetError, InputError

NUM_FRAMES = 3  # STM trains on 3-frame clips
_MAX_DRAWS = 20  # redraws when a clip has no object in its first frame


class ClipSource:
    """Makes one clip from a Generator. Subclasses set `name` and implement `sample`."""

    name = "source"

    def sample(self, rng: np.random.Generator, *, size: int, max_objects: int,
               max_skip: int) -> Clip:
        """Return a Clip of NUM_FRAMES frames at size x size (num_objects may be 0: redrawn)."""
        raise NotImplementedError


def _parse_hw(text: str, what: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"{what}: expected HEIGHTxWIDTH such as 240x427, received {text!r}"
                         ) from None
    if h < 16 or w < 16:
        raise InputError(f"{what}: both sides must be >= 16 pixels, received {text!r}")
    return h, w


@dataclass(frozen=True)
class Canvas:
    """Size of the synthetic frame rendered before the crop (sets the objects' pixel scale:
    mlvos.data.synth sizes objects at 22-50 % of the short side).

    Either fixed (height x width) or a square whose side is drawn uniformly from
    [side_min, side_max] per clip (scale augmentation); None sides mean "the crop size".
    """

    height: int | None = None
    width: int | None = None
    side_min: int | None = None
    side_max: int | None = None

    @classmethod
    def parse(cls, text: str, what: str = "--data synth") -> Canvas:
        """'' (crop size) | 'HxW' (fixed) | 'LO-HI' (random square side)."""
        if not text:
            return cls()
        if "-" in text:
            try:
                lo, hi = (int(v) for v in text.split("-"))
            except ValueError:
                raise InputError(f"{what}:{text}: expected LO-HI such as 160-480") from None
            if not 16 <= lo <= hi:
                raise InputError(f"{what}:{text}: need 16 <= LO <= HI")
            return cls(side_min=lo, side_max=hi)
        h, w = _parse_hw(text, f"{what}:{text}")
        return cls(height=h, width=w)

    def draw(self, rng: np.random.Generator, size: int) -> tuple[int, int]:
        """(H, W) for one clip, never smaller than the crop."""
        if self.side_min is not None:
            side = int(rng.integers(self.side_min, self.side_max + 1))
            return max(side, size), max(side, size)
        return max(self.height or size, size), max(self.width or size, size)


def _canvas(render) -> Canvas:
    if render is None:
        return Canvas()
    if isinstance(render, Canvas):
        return render
    return Canvas(height=int(render[0]), width=int(render[1]))


class _SynthSource(ClipSource):
    """Base of the synthetic sources: the canvas scenes are rendered on and their object count.

    Args:
        render: Canvas, (H, W), or None (render at the crop size).
        scene_objects: (min, max) objects per rendered scene.
    """

    def __init__(self, render=None, scene_objects: tuple[int, int] = (1, 5)):
        self.canvas = _canvas(render)
        self.scene_objects = scene_objects

    def _scene(self, rng: np.random.Generator, size: int, frames: int):
        """A SynthSequence of `frames` frames on a canvas drawn for a size x size crop.

        Returns:
            (sequence, canvas height, canvas width).
        """
        from mlvos.data.synth import SynthSequence

        h, w = self.canvas.draw(rng, size)
        lo, hi = self.scene_objects
        return SynthSequence(rng, frames, h, w, min_objects=lo, max_objects=max(lo, hi)), h, w


class SynthVideoSource(_SynthSource):
    """Fresh procedural sequences (mlvos.data.synth): frames 0, then steps of 1..max_skip,
    a random crop around the objects, and up to `max_objects` of them as targets.

    Args:
        render: Canvas, (H, W), or None (render at the crop size).
        scene_objects: (min, max) objects per rendered scene; those not picked as targets stay
            in the clip as background distractors, which is what teaches telling objects apart
            (mlvos synthetic validation sets hold 1-5 objects).
    """

    name = "synth"

    def sample(self, rng, *, size, max_objects, max_skip):
        seq, _, _ = self._scene(rng, size, max(5, NUM_FRAMES * max(1, max_skip)))
        steps = rng.integers(1, max(1, max_skip) + 1, size=NUM_FRAMES - 1)
        times = np.concatenate([[0], np.cumsum(steps)]).astype(float)
        pairs = [seq.render(t) for t in times]
        return sample_video_clip([p[0] for p in pairs], [p[1] for p in pairs], rng, NUM_FRAMES,
                                 max_skip=1, crop=size, max_objects=max_objects)


class SynthStaticSource(_SynthSource):
    """One synthetic frame simulated into a clip by random affine + elastic warps (pre-training
    without a static image dataset; same simulation as StaticSource).

    Args:
        render: Canvas, (H, W), or None (render at the crop size). On a larger canvas a window
            around the objects is simulated, so the objects keep the rendered scale.
        scene_objects: (min, max) objects per frame; unpicked ones are background distractors.
    """

    name = "synth-static"

    def sample(self, rng, *, size, max_objects, max_skip):
        seq, h, w = self._scene(rng, size, 1)
        image, mask = seq.render(float(rng.uniform(0, 50)))
        zoom = (0.85, 1.15)  # simulate_clip's default
        if (h, w) != (size, size):
            # keep the rendered scale: simulate_clip fits the source's short side into the
            # crop, so cut a window around the objects (3x the crop, so the shifted and
            # rotated crop rarely leaves it) and zoom by the same factor
            side = min(h, w, 3 * size)
            window = sample_video_clip([image], [mask], rng, 1, max_skip=1, crop=side,
                                       max_objects=None)
            image, mask = window.frames[0], window.labels[0]
            zoom = (side / size * 0.85, side / size * 1.15)
        return simulate_clip(image, mask, rng, NUM_FRAMES, size, max_objects=max_objects,
                             scale=zoom)


class _PhotoSource(ClipSource):
    """Base of the photo-based sources: the PhotoLibrary is loaded on first use in the process
    that samples (a DataLoader worker gets the folder name, not 200 MB of pixels)."""

    def __init__(self, photos: str | os.PathLike | None, reference: int = 480):
        from mlvos.data.photos import resolve_photos_dir

        self.photos_dir = resolve_photos_dir(photos)  # installs the default set if missing
        self.reference = int(reference)
        self._library = None
        _ = self.library  # bad photo folders fail here, before any training

    @property
    def library(self):
        if self._library is None:
            from mlvos.data.photos import PhotoLibrary

            self._library = PhotoLibrary(self.photos_dir, split="train")
        return self._library

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_library"] = None
        return state


class NaturalVideoSource(_PhotoSource):
    """Fresh natural-looking sequences (mlvos.data.natural) rendered at the crop size, objects
    sized for a `reference`-pixel frame: frames 0, then steps of 1..max_skip, up to
    `max_objects` targets (the other labelled objects, look-alikes included, are background)."""

    name = "natural"

    def sample(self, rng, *, size, max_objects, max_skip):
        from mlvos.data.natural import natural_clip

        return natural_clip(rng, self.library, NUM_FRAMES, size, max_skip,
                            max_objects=max_objects, reference=self.reference)


class NaturalStaticSource(_PhotoSource):
    """One natural frame (photo background, photo cut-outs, look-alikes) simulated into a clip
    by random affine + elastic warps: the paper's static-image pre-training on photographs."""

    name = "natural-static"

    def sample(self, rng, *, size, max_objects, max_skip):
        from mlvos.data.natural import placed_sequence

        seq = placed_sequence(rng, 1, size, size, self.library, reference=self.reference,
                              max_objects=max(1, max_objects) + 1)
        image, mask = seq.render(0.0)
        keep = _choose_objects(np.unique(mask), rng, max_objects)
        mask = _relabel(mask, keep)
        return simulate_clip(image, mask, rng, NUM_FRAMES, size, max_objects=None)


class StaticSource(ClipSource):
    """Image + mask folders (COCO / VOC / MSRA10K / ECSSD style) simulated into clips."""

    name = "static"

    def __init__(self, images_dir: str | os.PathLike, masks_dir: str | os.PathLike):
        from mlvos.data.datasets import StaticPairs

        self.pairs = StaticPairs(images_dir, masks_dir)

    def sample(self, rng, *, size, max_objects, max_skip):
        image, mask = self.pairs[int(rng.integers(len(self.pairs)))]
        return simulate_clip(image, mask, rng, NUM_FRAMES, size, max_objects=max_objects)


class VideoSource(ClipSource):
    """Annotated videos (DavisDataset / YouTubeVOS sequences): a random video, then a clip with
    consecutive frames 1..max_skip annotated frames apart, randomly cropped."""

    def __init__(self, videos: Sequence, name: str):
        self.videos = [v for v in videos if len(v.annotated) > 0]
        self.name = name
        if not self.videos:
            raise DatasetError(f"{name}: no video has an annotated frame; check the dataset")

    def sample(self, rng, *, size, max_objects, max_skip):
        video = self.videos[int(rng.integers(len(self.videos)))]
        idx = sample_indices(video.annotated, rng, NUM_FRAMES, max_skip)
        # read only the picked masks (read_mask names the file on a bad mask and handles
        # DAVIS 2016's binary masks); the crop and relabelling are sample_video_clip's
        return sample_video_clip([video.frames[i] for i in idx],
                                 [video.read_mask(i) for i in idx], rng, NUM_FRAMES,
                                 max_skip=1, crop=size, max_objects=max_objects)


class MixedSource(ClipSource):
    """Picks one of several sources uniformly per clip (e.g. DAVIS + YouTube-VOS as STM)."""

    def __init__(self, sources: Sequence[ClipSource]):
        if not sources:
            raise InputError("MixedSource needs at least one source")
        self.sources = list(sources)
        self.name = "+".join(s.name for s in self.sources)

    def sample(self, rng, *, size, max_objects, max_skip):
        src = self.sources[int(rng.integers(len(self.sources)))] if len(self.sources) > 1 \
            else self.sources[0]
        return src.sample(rng, size=size, max_objects=max_objects, max_skip=max_skip)


# ------------------------------------------------------------------------------ data specs


@dataclass(frozen=True)
class DataSpec:
    """A parsed `--data` value: kind in {synth, natural, davis, ytvos} plus its argument."""

    kind: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


DATA_KINDS = ("synth", "natural", "davis", "ytvos")


def parse_data_spec(text: str) -> DataSpec:
    """'synth' | 'synth:HxW' | 'synth:LO-HI' | 'natural' | 'natural:REF' | 'davis:ROOT' |
    'ytvos:ROOT' -> DataSpec (natural:REF: objects sized for a REF-pixel frame, default 480).

    Raises:
        InputError: unknown kind or a dataset kind without a root.
    """
    kind, _, arg = text.partition(":")
    if kind not in DATA_KINDS:
        raise InputError(f"--data {text!r}: unknown kind {kind!r}; use one of synth, synth:HxW "
                         "or synth:LO-HI (render size), natural or natural:REF (photographs, "
                         "see --photos), davis:ROOT, ytvos:ROOT")
    if kind == "synth":
        Canvas.parse(arg, "--data synth")
    if kind == "natural" and arg and not (arg.isdigit() and int(arg) >= 32):
        raise InputError(f"--data {text!r}: natural:REF needs the reference frame side in "
                         "pixels (>= 32), e.g. natural:480; photographs come from --photos DIR")
    if kind not in ("synth", "natural") and not arg:
        raise InputError(f"--data {text!r}: {kind} needs its root folder, e.g. {kind}:/data/{kind}")
    return DataSpec(kind, arg)


def parse_static_spec(text: str) -> tuple[str, str]:
    """'IMAGES_DIR:MASKS_DIR' -> (images, masks)."""
    images, sep, masks = text.rpartition(":")
    if not sep or not images or not masks:
        raise InputError(f"--static {text!r}: expected IMAGES_DIR:MASKS_DIR")
    return images, masks


def build_source(stage: str, data: Sequence[str], static: Sequence[str] = (), *,
                 split: str | None = None, photos: str | None = None) -> ClipSource:
    """The clip source of a pre-training or main-training run.

    Args:
        stage: "pretrain" (static simulation: --static folders, and 'synth' means synthetic
            static frames) or "main" (videos).
        data: --data values ('synth', 'synth:HxW', 'natural', 'davis:ROOT', 'ytvos:ROOT');
            one clip source per distinct value, picked uniformly per clip, so a value given
            twice gets twice the weight (e.g. natural, natural, synth: 2/3 natural).
        static: --static values ('IMAGES:MASKS').
        split: dataset split (default: DAVIS 'train', YouTube-VOS 'train').
        photos: photo folder of the natural sources (None: the default, installed on first
            use; see mlvos.data.photos.resolve_photos_dir).

    Raises:
        InputError / DatasetError: bad specs or dataset folders (the readers name the file).
    """
    specs = [parse_data_spec(d) for d in data]
    sources: list[ClipSource] = []
    made: dict[DataSpec, ClipSource] = {}  # a repeated --data weighs its source, built once
    if stage == "pretrain":
        for s in static:
            sources.append(StaticSource(*parse_static_spec(s)))
        for spec in specs:
            if spec in made:
                sources.append(made[spec])
                continue
            if spec.kind == "natural":
                made[spec] = NaturalStaticSource(photos, int(spec.arg or 480))
                sources.append(made[spec])
                continue
            if spec.kind != "synth":
                raise InputError(f"--data {spec} is a video dataset; pre-training uses static "
                                 "images (--static IMAGES:MASKS), photographs (--data natural) "
                                 "or synthetic frames (--data synth)")
            made[spec] = SynthStaticSource(Canvas.parse(spec.arg))
            sources.append(made[spec])
        if not sources:
            sources.append(SynthStaticSource())
    elif stage == "main":
        if static:
            raise InputError("--static is for --stage pretrain; main training uses videos")
        for spec in specs or [DataSpec("synth")]:
            if spec not in made:
                made[spec] = _video_source(spec, split, photos)
            sources.append(made[spec])
    else:
        raise InputError(f"build_source: stage must be pretrain or main, received {stage!r}")
    return sources[0] if len(sources) == 1 else MixedSource(sources)


def _video_source(spec: DataSpec, split: str | None, photos: str | None = None) -> ClipSource:
    if spec.kind == "synth":
        return SynthVideoSource(Canvas.parse(spec.arg))
    if spec.kind == "natural":
        return NaturalVideoSource(photos, int(spec.arg or 480))
    if spec.kind == "davis":
        from mlvos.data.datasets import DavisDataset

        return VideoSource(list(DavisDataset(spec.arg, split=split or "train")), "davis")
    from mlvos.data.datasets import YouTubeVOS

    return VideoSource(list(YouTubeVOS(spec.arg, split=split or "train")), "ytvos")


# ------------------------------------------------------------------------------- curriculum


def max_skip_at(step: int, total: int, low: int = 5, high: int = 25) -> int:
    """Max-skip curriculum (STM): grows from `low` to `high` in steps of 5 over the first 80 %
    of training, then drops back to `low` for the last 20 % (as STCN's schedule ends)."""
    if high <= low or total <= 0:
        return max(1, low)
    p = step / total
    if p >= 0.8:
        return max(1, low)
    levels = list(range(low, high + 1, 5)) or [low]
    if levels[-1] != high:
        levels.append(high)
    return max(1, levels[min(len(levels) - 1, int(p / 0.8 * len(levels)))])


# ----------------------------------------------------------------------------- torch dataset


class ClipDataset(torch.utils.data.Dataset):
    """Sample n -> one training clip, a pure function of (seed, rank, n).

    Args:
        source: a ClipSource.
        seed, rank: stream identity (each DDP rank gets its own stream).
        batch: samples per step (so step = n // batch for the curriculum).
        size: square crop side; max_objects: object slots K.
        skip: step -> max skip (curriculum); None = always 1.
        length: number of samples (steps * batch).
        reuse: each rendered clip serves `reuse` consecutive steps (the same batch position),
            unchanged the first time and as a cheap variation (`augment_clip`: flip, time
            reversal, zoom, photometric) after that. Rendering natural clips costs about as
            much CPU as a training step of `tiny`; reuse 2 halves it. The first use of a clip is
            the clip that reuse 1 draws at that sample index, and each item stays a pure
            function of (seed, rank, n): a worker keeps the last `batch` clips it rendered, so
            only the speed depends on the worker count.

    Items: dict with "frames" (T, 3, S, S) uint8, "labels" (T, S, S) int64 ids 0..k,
    "num_objects" int64 scalar k in 1..K.
    """

    def __init__(self, source: ClipSource, *, seed: int, rank: int, batch: int, size: int,
                 max_objects: int, skip: Callable[[int], int] | None, length: int,
                 reuse: int = 1):
        if int(reuse) < 1:
            raise InputError(f"reuse must be >= 1, received {reuse}")
        self.source, self.seed, self.rank, self.batch = source, int(seed), int(rank), int(batch)
        self.size, self.max_objects, self.skip, self.length = size, max_objects, skip, length
        self.reuse = int(reuse)
        self._rendered: dict[int, Clip] = {}  # base sample index -> clip (per worker process)

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_rendered"] = {}
        return state

    def clip(self, n: int) -> Clip:
        n = int(n)
        if self.reuse == 1:
            return self._render(n)
        span = self.batch * self.reuse
        base = n // span * span + n % self.batch  # first sample index of this clip's group
        clip = self._rendered.get(base)
        if clip is None:
            clip = self._render(base)
            self._rendered[base] = clip
            while len(self._rendered) > self.batch:
                del self._rendered[min(self._rendered)]
        if base == n:
            return clip
        from mlvos.data.clips import augment_clip

        varied = augment_clip(clip, np.random.default_rng([self.seed, self.rank, n, 1]))
        return varied if varied.num_objects > 0 else clip

    def _render(self, n: int) -> Clip:
        rng = np.random.default_rng([self.seed, self.rank, int(n)])
        max_skip = self.skip(int(n) // self.batch) if self.skip else 1
        for _ in range(_MAX_DRAWS):
            clip = self.source.sample(rng, size=self.size, max_objects=self.max_objects,
                                      max_skip=max_skip)
            if clip.num_objects > 0:
                return clip
        raise DatasetError(f"{self.source.name}: {_MAX_DRAWS} clips in a row had no object in "
                           "their first frame; are the masks empty or the crop too small?")

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        clip = self.clip(n)
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(clip.frames)).permute(0, 3, 1, 2),
            "labels": torch.from_numpy(clip.labels.astype(np.int64)),
            "num_objects": torch.tensor(min(clip.num_objects, self.max_objects)),
        }


class StepSampler(torch.utils.data.Sampler):
    """Sample indices start_step*batch, ..., in order (the data position is just the step)."""

    def __init__(self, start_step: int, total_steps: int, batch: int):
        self.start, self.stop = start_step * batch, total_steps * batch

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # workers share the cores with the training process
    torch.set_num_threads(1)


def make_loader(dataset: ClipDataset, *, start_step: int, total_steps: int, workers: int):
    """A DataLoader yielding batches of steps start_step..total_steps-1 in order."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=dataset.batch,
        sampler=StepSampler(start_step, total_steps, dataset.batch),
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        # spawn, not fork: a child forked after OpenCV's thread pool ran in the parent can
        # deadlock inside cv2 (seen with cv2.resize); spawn costs a second of start-up
        multiprocessing_context="spawn" if workers else None,
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )


def first_frame_masks(labels: torch.Tensor, num_objects: torch.Tensor, k: int):
    """labels (B, T, H, W) int64, num_objects (B,) -> first_masks (B, K, H, W) float,
    obj_valid (B, K) float (the ClipModel inputs)."""
    ids = torch.arange(1, k + 1, device=labels.device)
    first = (labels[:, 0, None] == ids[None, :, None, None]).float()
    valid = (ids[None] <= num_objects[:, None]).float()
    return first, valid


def resolve_video_frames(video_dir: str | os.PathLike) -> list[Path]:
    """Sorted frame files of a folder (for --video)."""
    from mlvos.data.datasets import FRAME_EXTS

    folder = Path(video_dir)
    if not folder.is_dir():
        raise DatasetError(f"--video {folder} is not a folder of frames")
    frames = sorted(p for p in folder.iterdir()
                    if p.suffix.lower() in FRAME_EXTS and not p.name.startswith("."))
    if not frames:
        raise DatasetError(f"--video {folder} holds no .jpg/.png frames; the sequence is empty")
    return frames
