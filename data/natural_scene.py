"""The scene of a natural-looking sequence (see mlvos.data.natural for what it draws and why):
`NaturalSequence` draws a background, camera path, objects and hard cases from one rng at
construction, then renders any frame t in closed form.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np

from mlvos.data.natural_objects import SceneObject, apply_homography, draw_motion, warp_object
from mlvos.data.natural_sprites import colour_transfer, cut_out, lab_stats
from mlvos.data.photos import PhotoLibrary
from mlvos.errors import InputError, PlacementError

# the hard cases a sequence can be forced to contain (and measure_attributes reports)
ATTRIBUTES = ("small", "fast", "occluded", "distractor", "camouflage", "exit")


def as_generator(rng_or_seed) -> np.random.Generator:
    """`rng_or_seed` itself if it is a numpy Generator, else np.random.default_rng of it."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


class NaturalSequence:
    """One natural-looking sequence; `render(t)` draws frame t.

    Args:
        rng_or_seed: numpy Generator or seed; all randomness comes from it (deterministic for
            a given library).
        frames: nominal length F (exit/re-entry and occlusions are timed on it).
        height, width: frame size (>= 32).
        photos: a PhotoLibrary (backgrounds and cut-outs).
        num_objects: exact number of targets, or None to draw from [min_objects, max_objects].
        distractors: (min, max) number of unlabelled distractor objects.
        reference: the frame size objects are sized for (short side, pixels); None = the short
            side of this frame. Training renders small crops of a virtual larger frame with it.
        camera: probability that the camera moves (else it is still, as a fixed camera).
        force: attributes that must occur (subset of ATTRIBUTES); others occur at random
            with the probabilities below.
        p_lookalike, p_camouflage, p_occlusion, p_exit, p_fast, p_small: per-sequence
            probabilities of each hard case (ignored for attributes in `force`).
        noise: sensor noise sigma range; illumination: global light drift on/off.
    """

    def __init__(self, rng_or_seed, frames: int, height: int, width: int, photos: PhotoLibrary,
                 num_objects: int | None = None, *, min_objects: int = 1, max_objects: int = 4,
                 distractors: tuple[int, int] = (0, 3), reference: int | None = None,
                 camera: float = 0.7, force: tuple[str, ...] = (), p_lookalike: float = 0.5,
                 p_camouflage: float = 0.2, p_occlusion: float = 0.35, p_exit: float = 0.2,
                 p_fast: float = 0.15, p_small: float = 0.25,
                 noise: tuple[float, float] = (0.5, 4.0), illumination: bool = True):
        for name, v, lo in (("frames", frames, 1), ("height", height, 32), ("width", width, 32)):
            if not isinstance(v, (int, np.integer)) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, received {v!r}")
        if not 1 <= min_objects <= max_objects <= 255:
            raise InputError(f"need 1 <= min_objects <= max_objects <= 255, received "
                             f"{min_objects}, {max_objects}")
        unknown = set(force) - set(ATTRIBUTES)
        if unknown:
            raise InputError(f"unknown attributes {sorted(unknown)}; known: {ATTRIBUTES}")
        if not isinstance(photos, PhotoLibrary):
            raise InputError(f"photos must be a PhotoLibrary, received {type(photos).__name__}")
        rng = as_generator(rng_or_seed)
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.ref = float(reference or min(height, width))
        ref_long = self.ref * max(height, width) / min(height, width)
        self.photos = photos
        want = set(force)

        def happens(attr: str, prob: float) -> bool:
            return attr in want or rng.random() < prob

        # ---- camera: frame pixel -> world (background photo) homography, closed form in t
        bg = photos.backgrounds[int(rng.integers(len(photos.backgrounds)))]
        if rng.random() < 0.5:
            bg = bg[:, ::-1]
        self.background = np.ascontiguousarray(bg).astype(np.float32)
        ph, pw = bg.shape[:2]
        # world px per frame px: a frame of the reference size covers 45-85 % of the photo's
        # fitting extent (a training crop is a window of such a frame, so photo textures keep
        # the scale they have in full validation frames)
        vh, vw = (height, width) if reference is None else \
            (self.ref, self.ref * max(width / height, 854 / 480))
        self.zoom = min(ph / vh, pw / vw) * rng.uniform(0.45, 0.85)
        moving = rng.random() < camera
        room = np.array([pw - width * self.zoom, ph - height * self.zoom]) / 2  # >= 0
        self.cam_c0 = np.array([pw / 2, ph / 2]) + rng.uniform(-0.5, 0.5, 2) * room
        span = max(1.0, frames - 1)
        self.cam_v = (rng.uniform(-0.45, 0.45, 2) * room / span) if moving else np.zeros(2)
        self.cam_amp = (rng.uniform(0, 0.25, 2) * room) if moving else np.zeros(2)
        self.cam_w = 2 * np.pi / rng.uniform(40, 120, 2)
        self.cam_p = rng.uniform(0, 2 * np.pi, 2)
        self.zoom_amp = rng.uniform(0, 0.15) if moving else 0.0
        self.zoom_w, self.zoom_p = 2 * np.pi / rng.uniform(30, 100), rng.uniform(0, 2 * np.pi)
        self.roll_amp = np.deg2rad(rng.uniform(0, 4)) if moving else 0.0
        self.roll_w, self.roll_p = 2 * np.pi / rng.uniform(30, 100), rng.uniform(0, 2 * np.pi)
        self.tilt = rng.uniform(-1, 1, 2) * (0.25 / max(height, width)) if moving else np.zeros(2)
        self.tilt_w = 2 * np.pi / rng.uniform(30, 100)

        # ---- objects
        k = int(num_objects) if num_objects is not None else \
            int(rng.integers(min_objects, max_objects + 1))
        if "small" in want and k == 1 and max_objects > 1:
            k = 2  # a small target beside a normal one
        n_distract = int(rng.integers(distractors[0], distractors[1] + 1))
        self.objects: list[SceneObject] = []
        fast_ids = set(int(i) for i in np.nonzero(rng.random(k) < p_fast)[0])
        if "fast" in want and not fast_ids:
            fast_ids = {int(rng.integers(k))}
        small_ids = {int(rng.integers(k))} if happens("small", p_small) else set()
        camo_id = int(rng.integers(k)) if happens("camouflage", p_camouflage) else -1
        for i in range(k):
            kind = "camouflage" if i == camo_id else None
            ob = self._make_object(rng, label=i + 1, kind=kind, small=i in small_ids,
                                   fast=i in fast_ids, ref_long=ref_long)
            self.objects.append(ob)
        # look-alikes: near copies of one target, as distractors or as other targets
        group = 0
        if happens("distractor", p_lookalike):
            normal = [i for i in range(k) if i not in small_ids] or list(range(k))
            src = self.objects[normal[int(rng.integers(len(normal)))]]
            src.group = group
            copies = int(rng.integers(1, 4))
            for _ in range(copies):
                self.objects.append(self._copy_object(rng, src, label=0, ref_long=ref_long))
            plain = [o for o in self.objects if o.label not in (0, src.label) and not o.attrs]
            if plain and rng.random() < 0.4:  # two targets that look alike too
                other = plain[0]
                twin = self._copy_object(rng, src, label=other.label, ref_long=ref_long)
                self.objects[self.objects.index(other)] = twin
            group += 1
        for _ in range(n_distract):
            self.objects.append(self._make_object(rng, label=0, kind=None,
                                                  small=rng.random() < 0.2, fast=False,
                                                  ref_long=ref_long))
        # depth: a random order, drifting so neighbours swap
        for z, ob in zip(rng.permutation(len(self.objects)), self.objects, strict=True):
            ob.z0 = float(z)
        self._place(rng, ref_long)
        if happens("occluded", p_occlusion):
            self._add_occluder(rng, ref_long)
        if happens("exit", p_exit) and frames >= 5:
            self._add_exit(rng)

        # ---- photometric drift
        self.illumination = illumination
        self.gain_amp = rng.uniform(0.05, 0.3)
        self.tint_amp = rng.uniform(0.0, 0.06, 3)
        self.ill_w = 2 * np.pi / rng.uniform(25, 100, 4)
        self.ill_p = rng.uniform(0, 2 * np.pi, 4)
        self.light = rng.random() < 0.4  # a moving soft light / shadow
        self.light_c = rng.uniform(0, 1, 2)
        self.light_v = rng.uniform(-0.01, 0.01, 2)
        self.light_r = rng.uniform(0.2, 0.6)
        self.light_g = rng.uniform(-0.35, 0.3)
        self.noise_sigma = float(rng.uniform(*noise)) if noise[1] > 0 else 0.0
        self._noise_seed = int(rng.integers(2**63))

    # ------------------------------------------------------------------------- construction
    def _background_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Lab mean and std of the background photo (computed once: it is the costliest part
        of building a training clip)."""
        if getattr(self, "_bg_stats", None) is None:
            self._bg_stats = lab_stats(self.background)[1:]
        return self._bg_stats

    def _sprite_size(self, rng, small: bool) -> float:
        """Longer sprite side in frame pixels (log-uniform, relative to the reference side)."""
        lo, hi = (0.05, 0.09) if small else (0.25, 0.85)
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) * self.ref

    def _make_object(self, rng, *, label: int, kind: str | None, small: bool, fast: bool,
                     ref_long: float) -> SceneObject:
        side = self._sprite_size(rng, small)
        lib = self.photos
        attrs = set()
        if kind == "camouflage":
            sprite = cut_out(rng, self.background, 192, rng.uniform(0.6, 1.6))
            attrs.add("camouflage")
        elif lib.objects and rng.random() < 0.65:
            kind = "stamp"
            src = lib.objects[int(rng.integers(len(lib.objects)))]
            sprite = src.astype(np.float32)
            sprite[..., 3] /= 255.0
            if rng.random() < 0.5:
                sprite = sprite[:, ::-1]
            long = max(sprite.shape[:2])
            if long > 256:  # keep sprites small: they are resampled every frame
                f = 256 / long
                sprite = cv2.resize(np.ascontiguousarray(sprite),
                                    (max(2, round(sprite.shape[1] * f)),
                                     max(2, round(sprite.shape[0] * f))),
                                    interpolation=cv2.INTER_AREA)
        else:
            kind = "cutout"
            photo = lib.backgrounds[int(rng.integers(len(lib.backgrounds)))]
            sprite = cut_out(rng, photo, 192, rng.uniform(0.5, 2.0))
        sprite = np.ascontiguousarray(sprite, dtype=np.float32)
        if kind != "camouflage":
            # overlap colour statistics with the background (no colour shortcut) and jitter
            if rng.random() < 0.5:
                sprite[..., :3] = colour_transfer(sprite[..., :3], sprite[..., 3],
                                                  self._background_stats(),
                                                  rng.uniform(0.2, 0.7))
            gain = rng.uniform(0.75, 1.2) * (1 + rng.uniform(-0.08, 0.08, 3))
            sprite[..., :3] = np.clip(sprite[..., :3] * gain.astype(np.float32), 0, 255)
        ob = SceneObject(sprite=sprite, label=label, c0=np.zeros(2),
                     scale0=side / max(sprite.shape[:2]) * self.zoom, attrs=attrs, kind=kind)
        draw_motion(rng, ob, zoom=self.zoom, frames=self.frames, fast=fast, ref_long=ref_long)
        return ob

    def _copy_object(self, rng, src: SceneObject, *, label: int, ref_long: float) -> SceneObject:
        sprite = src.sprite.copy()
        if rng.random() < 0.5:
            sprite = np.ascontiguousarray(sprite[:, ::-1])
        gain = rng.uniform(0.9, 1.1) * (1 + rng.uniform(-0.04, 0.04, 3))
        sprite[..., :3] = np.clip(sprite[..., :3] * gain.astype(np.float32), 0, 255)
        ob = SceneObject(sprite=sprite, label=label, c0=np.zeros(2),
                     scale0=src.scale0 * rng.uniform(0.85, 1.15), group=src.group,
                     kind=src.kind, attrs=set(src.attrs) & {"camouflage"})
        draw_motion(rng, ob, zoom=self.zoom, frames=self.frames, fast=False,
                    ref_long=ref_long)
        return ob

    def _place(self, rng, ref_long: float) -> None:
        """Start positions: every target clearly visible in frame 0 (redrawn until so)."""
        to_world = self.camera(0.0)
        for attempt in range(40):
            for ob in self.objects:
                fx, fy = rng.uniform(0.12, 0.88) * self.width, rng.uniform(0.12, 0.88) * self.height
                wx, wy = apply_homography(to_world, np.array(fx), np.array(fy))
                ob.c0 = np.array([float(wx), float(wy)])
            if self._visible_ok(0.0):
                return
            if attempt % 8 == 7:
                for ob in self.objects:
                    ob.scale0 *= 0.85
        # crowded tiny frames: keep going with what is visible (targets relabelled below)
        self._drop_invisible()

    def _visible_ok(self, t: float) -> bool:
        _, labels, full = self._compose(t, paint=False)
        counts = np.bincount(labels.ravel(), minlength=256)
        for ob in self.objects:
            if ob.label and (full.get(ob.label, 0) < 16 or
                             counts[ob.label] < max(12, 0.4 * full[ob.label])):
                return False
        return True

    def _drop_invisible(self) -> None:
        _, labels, _ = self._compose(0.0, paint=False)
        present = set(np.unique(labels).tolist()) - {0}
        if not present:
            raise PlacementError(f"cannot place any object visibly in a {self.width}x"
                                 f"{self.height} frame; use a larger size")
        keep = sorted(present)
        remap = {old: new for new, old in enumerate(keep, 1)}
        for ob in self.objects:
            ob.label = remap.get(ob.label, 0)

    def _add_occluder(self, rng, ref_long: float) -> None:
        """An object (new distractor or another target) that passes in front of a target."""
        targets = [o for o in self.objects if o.label]
        victim = targets[int(rng.integers(len(targets)))]
        t_mid = rng.uniform(0.3, 0.7) * max(1, self.frames - 1)
        occ = self._make_object(rng, label=0, kind=None, small=False, fast=False,
                                ref_long=ref_long)
        vs = victim.scale(t_mid) * max(victim.sprite.shape[:2])
        occ.scale0 = max(occ.scale0, 1.1 * vs / max(occ.sprite.shape[:2]))
        # straight crossing: at t_mid the occluder's centre is on the victim's centre
        speed = rng.uniform(0.006, 0.02) * ref_long * self.zoom
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-9
        occ.vel, occ.amp = direction * speed, np.zeros(2)
        occ.c0 = victim.centre(t_mid) - occ.vel * t_mid
        occ.z0, occ.z_amp = max(o.z0 + o.z_amp for o in self.objects) + 2.0, 0.0
        victim.z_amp = min(victim.z_amp, 0.4)
        self.objects.append(occ)
        victim.attrs.add("occluded_by_design")

    def _add_exit(self, rng) -> None:
        """A target that leaves the frame around mid-sequence and comes back (in front)."""
        targets = [o for o in self.objects if o.label and "fast" not in o.attrs] or \
            [o for o in self.objects if o.label]
        ob = targets[int(rng.integers(len(targets)))]
        ob.vel = np.zeros(2)  # no drift: it must come back into view
        ob.amp = np.minimum(np.abs(ob.amp), 0.03 * self.ref * self.zoom) * np.sign(ob.amp)
        to_frame = np.linalg.inv(self.camera(0.0))
        fx, fy = apply_homography(to_frame, np.array(ob.c0[0]), np.array(ob.c0[1]))
        dists = {(-1, 0): float(fx), (1, 0): self.width - float(fx), (0, -1): float(fy),
                 (0, 1): self.height - float(fy)}
        direction = min(dists, key=dists.get)
        radius = ob.scale0 * 1.4 * max(ob.sprite.shape[:2]) / self.zoom
        reach = (dists[direction] + radius + 8.0 + float(np.abs(ob.amp).max()) / self.zoom
                 + float(np.abs(ob.vel).max()) * self.frames / self.zoom) * self.zoom
        ob.exit_vec = np.array(direction, dtype=np.float64) * reach
        ob.exit_period = float(self.frames - 1)
        ob.z0 = max(o.z0 + o.z_amp for o in self.objects) + 1.0
        ob.z_amp = 0.0

    # ------------------------------------------------------------------------------ camera
    def camera(self, t: float) -> np.ndarray:
        """3x3 frame pixel -> world (background photo) coordinates at time t."""
        c = self.cam_c0 + self.cam_v * t + self.cam_amp * (np.sin(self.cam_w * t + self.cam_p)
                                                           - np.sin(self.cam_p))
        s = self.zoom * np.exp(self.zoom_amp * (np.sin(self.zoom_w * t + self.zoom_p)
                                                - np.sin(self.zoom_p)))
        r = self.roll_amp * np.sin(self.roll_w * t + self.roll_p)
        tilt = self.tilt * np.sin(self.tilt_w * t)
        fc = np.array([[1, 0, -(self.width - 1) / 2], [0, 1, -(self.height - 1) / 2], [0, 0, 1]])
        persp = np.array([[1, 0, 0], [0, 1, 0], [tilt[0], tilt[1], 1]])
        cr, sr = np.cos(r) * s, np.sin(r) * s
        rot = np.array([[cr, -sr, c[0]], [sr, cr, c[1]], [0, 0, 1]])
        return rot @ persp @ fc

    # ----------------------------------------------------------------------------- drawing
    def _compose(self, t: float, paint: bool = True):
        """(image float32 or None, labels uint8, unoccluded target areas {label: px})."""
        h, w = self.height, self.width
        cam = self.camera(t)
        labels = np.zeros((h, w), np.uint8)
        front = np.zeros((h, w), bool)  # any object's alpha > 0.5 already painted in front
        img = None
        if paint:
            img = cv2.warpPerspective(self.background, cam, (w, h),
                                      flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                      borderMode=cv2.BORDER_REFLECT_101)
        full: dict[int, int] = {}
        order = sorted(range(len(self.objects)), key=lambda i: (self.objects[i].depth(t), i))
        for i in order:  # back to front
            ob = self.objects[i]
            warped = warp_object(ob, t, cam, h, w, paint)
            if warped is None:
                continue
            y0, x0, rgb, alpha = warped
            mh, mw = alpha.shape
            solid = alpha > 0.5
            if ob.label:
                full[ob.label] = full.get(ob.label, 0) + int(solid.sum())
            region = labels[y0:y0 + mh, x0:x0 + mw]
            region[solid] = ob.label
            front[y0:y0 + mh, x0:x0 + mw] |= solid
            if paint:
                dst = img[y0:y0 + mh, x0:x0 + mw]
                a = alpha[..., None]
                dst *= 1.0 - a
                dst += rgb * a
        return img, labels, full

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Frame t -> (frame (H, W, 3) uint8 RGB, labels (H, W) uint8: target ids, 0 = rest)."""
        img, labels, _ = self._compose(t)
        if self.illumination:
            s = np.sin(self.ill_w * t + self.ill_p)
            gain = (1.0 + self.gain_amp * s[0]) * (1.0 + self.tint_amp * s[1:])
            img *= gain.astype(np.float32)
        if self.light:
            h, w = self.height, self.width
            c = (self.light_c + self.light_v * t) * np.array([w, h])
            yy, xx = np.ogrid[0:h, 0:w]
            r2 = ((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (self.light_r * max(h, w)) ** 2
            img *= (1.0 + self.light_g * np.exp(-r2)).astype(np.float32)[..., None]
        if self.noise_sigma > 0:
            rng = np.random.default_rng([self._noise_seed, int(round(t * 1000))])
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise_sigma)
        return np.clip(img + 0.5, 0, 255).astype(np.uint8), labels

    @property
    def num_objects(self) -> int:
        """Number of targets (label ids 1..num_objects)."""
        return max((o.label for o in self.objects), default=0)

    def target_attributes(self) -> dict[int, set[str]]:
        """Attributes given by construction (camouflage, fast, look-alike group)."""
        out: dict[int, set[str]] = {}
        groups = {}
        for o in self.objects:
            if o.group >= 0:
                groups.setdefault(o.group, []).append(o)
        for o in self.objects:
            if not o.label:
                continue
            a = out.setdefault(o.label, set())
            a |= {x for x in o.attrs if x in ("camouflage", "fast")}
            if o.group >= 0 and len(groups.get(o.group, [])) > 1:
                a.add("distractor")
        return out

    def __len__(self) -> int:
        return self.frames

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for t in range(self.frames):
            yield self.render(float(t))

