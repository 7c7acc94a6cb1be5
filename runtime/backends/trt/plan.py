"""What to build: the optimization profile (ranges of the dynamic dims), the concrete input shapes
it gives each graph, and the precision recipe (which ONNX graph, typing mode and builder flags).

Everything here is pure Python except `recipe_for`, which reads the imported TensorRT module
handed to it; nothing here imports TensorRT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from mlvos.errors import InputError
from mlvos.runtime.manifest import GraphInfo, Manifest
from mlvos.runtime.spec import MAX_OBJECT_ID, MIN_SIDE, Precision, padded_size, resolve_shape

PRECISIONS: tuple[str, ...] = Precision.GRAPHS
FP16_RECIPES: tuple[str, ...] = ("auto", "strong", "flag")
# Strong typing covers every layer from 10.12 on (NVIDIA's strong-typing migration notes).
STRONG_TYPING_COMPLETE = (10, 12)


def version_tuple(version: str) -> tuple[int, ...]:
    """Parse a version string: "10.3.0.26" -> (10, 3, 0, 26); a non-numeric part ends it."""
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


# ----------------------------------------------------------------------------------- profiles
@dataclass(frozen=True)
class Profile:
    """Optimization profile: ranges of the dynamic dims O (objects) and H, W (padded frame size).

    Minimums are fixed: 1 object and the smallest legal frame (MIN_SIDE padded to the stride).
    Heights and widths are rounded up to the stride by `fitted`; T (capacity) is static. The
    default covers landscape 1080p (1080x1920, padded 1088x1920) and is tuned for 480p;
    `covering` makes one for the frames a run will actually see.
    """

    max_objects: int = 6
    opt_objects: int = 2
    max_height: int = 1080
    max_width: int = 1920
    opt_height: int = 480
    opt_width: int = 864

    @classmethod
    def covering(cls, sizes: list[tuple[int, int]], base: Profile | None = None) -> Profile:
        """A profile whose maximum covers `base` (default: the default profile) and every
        (height, width) in `sizes` (frame sizes as the network sees them), tuned (opt) for the
        largest of `sizes`."""
        base = base or cls()
        if not sizes:
            return base
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        return replace(
            base, max_height=max(base.max_height, h), max_width=max(base.max_width, w),
            opt_height=h, opt_width=w,
        )

    def covers(self, manifest: Manifest, height: int, width: int) -> bool:
        """Whether engines of this profile run a (height, width) frame once padded."""
        fitted = self.fitted(manifest)
        ph, pw = padded_size(height, width, manifest.stride)
        return ph <= fitted.max_height and pw <= fitted.max_width

    def fitted(self, manifest: Manifest) -> Profile:
        """This profile made legal for `manifest`: sizes padded to the stride (or pinned to a
        static export size), optimum clamped into [min, max].

        Raises:
            InputError: an object count or size outside what the runtime supports.
        """
        if not 1 <= self.max_objects <= MAX_OBJECT_ID:
            raise InputError(f"max objects must be in 1..{MAX_OBJECT_ID}, got {self.max_objects}")
        if self.opt_objects < 1:
            raise InputError(f"opt objects must be >= 1, got {self.opt_objects}")
        static = manifest.static_size
        if static is not None:
            h, w = static
            return replace(
                self,
                opt_objects=min(self.opt_objects, self.max_objects),
                max_height=h,
                max_width=w,
                opt_height=h,
                opt_width=w,
            )
        stride = manifest.stride
        for name in ("max_height", "max_width", "opt_height", "opt_width"):
            if getattr(self, name) < MIN_SIDE:
                raise InputError(
                    f"{name.replace('_', ' ')} must be >= {MIN_SIDE}, got {getattr(self, name)}"
                )
        max_h, max_w = padded_size(self.max_height, self.max_width, stride)
        opt_h, opt_w = padded_size(self.opt_height, self.opt_width, stride)
        return replace(
            self,
            opt_objects=min(self.opt_objects, self.max_objects),
            max_height=max_h,
            max_width=max_w,
            opt_height=min(opt_h, max_h),
            opt_width=min(opt_w, max_w),
        )

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown profile keys {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()})


def min_side(stride: int) -> int:
    return padded_size(MIN_SIDE, MIN_SIDE, stride)[0]


def profile_shapes(info: GraphInfo, profile: Profile, stride: int) -> dict[str, list[list[int]]]:
    """{input name: [min, opt, max] shape} for every input of `info` with a dynamic dim."""
    lo = min_side(stride)
    envs = (
        {"O": 1, "H": lo, "W": lo},
        {"O": profile.opt_objects, "H": profile.opt_height, "W": profile.opt_width},
        {"O": profile.max_objects, "H": profile.max_height, "W": profile.max_width},
    )
    return {
        t.name: [list(resolve_shape(t.shape, env)) for env in envs]
        for t in info.inputs
        if any(not isinstance(d, int) for d in t.shape)
    }


# ------------------------------------------------------------------------------------ recipes
@dataclass(frozen=True)
class Recipe:
    """How an engine of a given precision is built.

    source: which ONNX graph of the manifest is parsed ("fp32", "fp16", "int8").
    strongly_typed: create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED.
    fp16_flag: set BuilderFlag.FP16 (weak typing; TensorRT 10.x only).
    tf32: allow TF32 for FP32 math (TensorRT's default; off for exact FP32 parity checks).
    """

    source: str
    strongly_typed: bool
    fp16_flag: bool = False
    tf32: bool = True


def plan_recipe(
    precision: str,
    trt_version: str,
    has_fp16_flag: bool,
    fp16_recipe: str = "auto",
    tf32: bool = True,
) -> Recipe:
    """Pick the build recipe for `precision` on a TensorRT version.

    Args:
        precision: "fp32", "fp16" or "int8".
        trt_version: tensorrt.__version__.
        has_fp16_flag: whether tensorrt.BuilderFlag has FP16 (removed in 11).
        fp16_recipe: "auto"; "strong" forces the strongly typed fp16 graph (also on 10.3);
            "flag" forces fp32 graph + BuilderFlag.FP16 (only where the flag exists).
        tf32: allow TF32 for FP32 math.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if fp16_recipe not in FP16_RECIPES:
        raise InputError(f"unknown fp16 recipe {fp16_recipe!r}; choose one of {FP16_RECIPES}")
    complete = version_tuple(trt_version)[:2] >= STRONG_TYPING_COMPLETE
    if precision == "int8":
        return Recipe("int8", True, tf32=tf32)
    if precision == "fp32":
        return Recipe("fp32", complete, tf32=tf32)
    if fp16_recipe == "flag" and not has_fp16_flag:
        raise InputError(
            f"TensorRT {trt_version} has no BuilderFlag.FP16 (removed in 11); use the strongly "
            "typed fp16 graph (--fp16-recipe auto or strong)"
        )
    if fp16_recipe == "strong" or (fp16_recipe == "auto" and (complete or not has_fp16_flag)):
        return Recipe("fp16", True, tf32=tf32)
    return Recipe("fp32", False, fp16_flag=True, tf32=tf32)


def recipe_for(trt: Any, precision: str, fp16_recipe: str = "auto", tf32: bool = True) -> Recipe:
    """plan_recipe for the imported TensorRT module."""
    return plan_recipe(
        precision,
        trt.__version__,
        # trt-compat: FP16 feature probe (the flag is absent in 11.x)
        hasattr(trt.BuilderFlag, "FP16"),
        fp16_recipe,
        tf32,
    )
