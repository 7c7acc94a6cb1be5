"""Lucid data dreaming (Khoreva et al., IJCV 2019): training clips from one annotated frame.

The first frame is split into its objects and a background whose object regions are filled with
OpenCV inpainting (`cv2.inpaint`, Telea). A "dream" recomposes the scene: the background under a
small camera-like affine and its own relighting; each object cut out, moved / scaled / rotated,
relit separately and pasted back in a random depth order. A 3-frame clip is three dreams whose
parameters drift by small random increments from frame to frame, so the labels stay consistent
(object i of frame 0 is object i in every frame). The paper fine-tunes with "random translation
and scaling on the first frame with lucid augmentation".

Pure numpy + cv2 (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlvos.data.clips import Clip, sample_video_clip
from mlvos.errors import InputError
from mlvos.model.train.data import NUM_FRAMES, ClipSource


def _cv2():
    import cv2

    return cv2


@dataclass
class _Layer:
    """One object cut out of the first frame: its pixels and mask inside a bounding box."""

    id: int
    rgb: np.ndarray  # (h, w, 3) float32
    alpha: np.ndarray  # (h, w) float32 {0, 1}
    centre: tuple[float, float]  # box centre (x, y) in the source frame
    box: tuple[int, int, int, int]  # x0, y0, x1, y1


def _relight(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness / contrast / per-channel colour shift, (h, w, 3) float32 -> float32."""
    contrast = np.exp(rng.normal(0.0, 0.15 * strength))
    brightness = rng.normal(0.0, 20.0 * strength)
    colour = rng.normal(0.0, 0.06 * strength, size=3) + 1.0
    mean = img.reshape(-1, 3).mean(0) if img.size else np.zeros(3, np.float32)
    out = (img - mean) * contrast + mean + brightness
    return (out * colour).astype(np.float32)


def _affine(centre, dx, dy, scale, angle_deg) -> np.ndarray:
    """2x3 forward matrix: rotate/scale about `centre`, then translate by (dx, dy)."""
    cv2 = _cv2()
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle_deg),
                                float(scale))
    m[:, 2] += (dx, dy)
    return m


class LucidDreamer:
    """Dream up training clips from one frame and its mask.

    Args:
        image: (H, W, 3) uint8 RGB first frame.
        mask: (H, W) uint8 object ids (0 background), at least one object.
        translate: max object shift per dream, fraction of the frame's short side.
        scale: max log-scale change per dream (0.15 -> x0.86..x1.16).
        rotation: max rotation per dream in degrees.
        relight: strength of the separate object / background relighting (0 = off).
        motion: fraction of the above used as frame-to-frame increments inside a clip.

    Raises:
        InputError: image/mask shapes differ or the mask holds no object.
    """

    def __init__(self, image: np.ndarray, mask: np.ndarray, *, translate: float = 0.15,
                 scale: float = 0.15, rotation: float = 15.0, relight: float = 1.0,
                 motion: float = 0.3):
        cv2 = _cv2()
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"lucid: image must be (H, W, 3) uint8 RGB, received {image.shape} "
                             f"{image.dtype}")
        if mask.shape != image.shape[:2] or mask.dtype != np.uint8:
            raise InputError(f"lucid: mask must be (H, W) uint8 ids of the image's size "
                             f"{image.shape[:2]}, received {mask.shape} {mask.dtype}")
        ids = [int(i) for i in np.unique(mask) if i != 0]
        if not ids:
            raise InputError("lucid: the first-frame mask has no object (all pixels are 0); "
                             "fine-tuning needs at least one annotated object")
        self.height, self.width = mask.shape
        self.ids = ids
        self.translate, self.scale, self.rotation = translate, scale, rotation
        self.relight, self.motion = relight, motion
        # background: objects removed (dilated, so no object fringe survives) and inpainted
        fg = (mask != 0).astype(np.uint8)
        k = max(3, int(0.01 * min(self.height, self.width)) | 1)
        hole = cv2.dilate(fg, np.ones((k, k), np.uint8))
        self.background = cv2.inpaint(image, hole * 255, max(3, k), cv2.INPAINT_TELEA
                                      ).astype(np.float32)
        self.layers = []
        for i in ids:
            ys, xs = np.nonzero(mask == i)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            alpha = (mask[y0:y1, x0:x1] == i).astype(np.float32)
            rgb = image[y0:y1, x0:x1].astype(np.float32)
            centre = ((x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0)
            self.layers.append(_Layer(i, rgb, alpha, centre, (x0, y0, x1, y1)))

    def _params(self, rng: np.random.Generator, amount: float) -> dict:
        short = min(self.height, self.width)
        return {
            "dx": rng.uniform(-1, 1) * self.translate * short * amount,
            "dy": rng.uniform(-1, 1) * self.translate * short * amount,
            "log_s": rng.uniform(-1, 1) * self.scale * amount,
            "angle": rng.uniform(-1, 1) * self.rotation * amount,
        }

    @staticmethod
    def _drift(p: dict, q: dict) -> dict:
        return {k: p[k] + q[k] for k in p}

    def render(self, bg: dict, objs: list[dict], order: list[int], light_seeds: list[int]
               ) -> tuple[np.ndarray, np.ndarray]:
        """One dream -> (frame (H, W, 3) uint8, labels (H, W) uint8 with the original ids)."""
        cv2 = _cv2()
        h, w = self.height, self.width
        centre = ((w - 1) / 2.0, (h - 1) / 2.0)
        m = _affine(centre, bg["dx"], bg["dy"], np.exp(bg["log_s"]), bg["angle"])
        canvas = cv2.warpAffine(self.background, m, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
        canvas = _relight(canvas, np.random.default_rng(light_seeds[0]), self.relight)
        labels = np.zeros((h, w), dtype=np.uint8)
        for j in order:
            layer, p = self.layers[j], objs[j]
            x0, y0, _, _ = layer.box
            # object box -> frame: place at its source position, then move about its centre
            lc = (layer.centre[0] - x0, layer.centre[1] - y0)
            mo = _affine(lc, layer.centre[0] - lc[0] + p["dx"], layer.centre[1] - lc[1] + p["dy"],
                         np.exp(p["log_s"]), p["angle"])
            rgb = _relight(layer.rgb, np.random.default_rng(light_seeds[1 + j]), self.relight)
            obj = cv2.warpAffine(rgb, mo, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT)
            a = cv2.warpAffine(layer.alpha, mo, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT)
            hard = a > 0.5  # one mask for the label and the painted pixels (exact labels)
            canvas[hard] = obj[hard]
            labels[hard] = layer.id
        frame = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        return frame, labels

    def dream_clip(self, rng: np.random.Generator, frames: int = NUM_FRAMES):
        """`frames` consecutive dreams: list of frames (H, W, 3) uint8, list of labels (H, W)."""
        n = len(self.layers)
        bg = self._params(rng, 0.3)
        objs = [self._params(rng, 1.0) for _ in range(n)]
        order = list(range(n)) if rng.random() < 0.5 else [int(i) for i in rng.permutation(n)]
        light = [int(s) for s in rng.integers(2**62, size=n + 1)]  # one relighting per clip
        out_f, out_l = [], []
        for t in range(frames):
            if t:
                bg = self._drift(bg, self._params(rng, 0.3 * self.motion))
                objs = [self._drift(p, self._params(rng, self.motion)) for p in objs]
            f, lab = self.render(bg, objs, order, light)
            out_f.append(f)
            out_l.append(lab)
        return out_f, out_l


class LucidSource(ClipSource):
    """Fine-tuning clips from one annotated frame (lucid dreaming, then a random crop).

    The crop side is `size`; frames smaller than that are resized up by sample_video_clip.
    """

    name = "lucid"

    def __init__(self, image: np.ndarray, mask: np.ndarray, **options):
        self.dreamer = LucidDreamer(image, mask, **options)

    def sample(self, rng, *, size, max_objects, max_skip):
        frames, labels = self.dreamer.dream_clip(rng, NUM_FRAMES)
        return sample_video_clip(frames, labels, rng, NUM_FRAMES, max_skip=1, crop=size,
                                 max_objects=max_objects)


def dream_clip(image: np.ndarray, mask: np.ndarray, rng, frames: int = NUM_FRAMES,
               **options) -> Clip:
    """Convenience: one full-size lucid clip (labels keep the mask's ids)."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    f, lab = LucidDreamer(image, mask, **options).dream_clip(rng, frames)
    return Clip(np.stack(f), np.stack(lab), len(np.unique(mask)) - 1)
