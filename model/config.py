"""Frozen configuration dataclasses; a variant (registry.py) sets only what differs."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mlvos.errors import ConfigError
from mlvos.runtime.spec import DEFAULT_MEM_EVERY

BLOCKS = ("basic", "bottleneck")
PYRAMIDS = ("up", "down")
SIMILARITIES = ("dot", "l2")
MEMORY_FUSIONS = ("stem", "late")


@dataclass(frozen=True)
class BackboneConfig:
    """A (multi-level) ResNet backbone.

    Attributes:
        block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101).
        layers: residual blocks per stage; len(layers) = number of down stages (3 -> stride 16,
            4 -> stride 32).
        stem_width: channels of the stem (64 in torchvision ResNets).
        widths: base width of each stage (64, 128, 256, 512 in torchvision); a bottleneck stage
            outputs 4x its width.
        levels: number of "down-and-up" levels (1 = plain ResNet plus an optional up path).
        up_channels: common width of the up path (MSPN: 256).
        pyramid: which features feed STM: "up" (the last level's up path, every scale enriched
            by the coarser ones; the paper's point) or "down" (the last level's down units, a
            drop-in for ResNet's r2/r3/r4).
        later_widths_scale: width multiplier of levels > 1 (1.0 = full ResNet-like as MSPN).
    """

    block: str = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    stem_width: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    levels: int = 2
    up_channels: int = 256
    pyramid: str = "up"
    later_widths_scale: float = 1.0

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def stride(self) -> int:
        """Total stride of the deepest down stage (the padding multiple)."""
        return 2 ** (len(self.layers) + 1)

    def stage_channels(self, level: int = 0) -> tuple[int, ...]:
        """Output channels of each down stage at `level` (0-based)."""
        scale = 1.0 if level == 0 else self.later_widths_scale
        return tuple(
            int(round(w * scale)) * self.expansion for w in self.widths[: len(self.layers)]
        )

    def feature_channels(self) -> tuple[int, int, int]:
        """Channels of the (stride 4, stride 8, stride 16) features handed to STM."""
        if self.pyramid == "up":
            return (self.up_channels,) * 3
        c = self.stage_channels(self.levels - 1)
        return (c[0], c[1], c[2])

    def validate(self) -> None:
        if self.block not in BLOCKS:
            raise ConfigError(f"backbone.block must be one of {BLOCKS}, got {self.block!r}")
        if self.pyramid not in PYRAMIDS:
            raise ConfigError(f"backbone.pyramid must be one of {PYRAMIDS}, got {self.pyramid!r}")
        if len(self.layers) not in (3, 4):
            raise ConfigError(
                f"backbone.layers needs 3 (stride 16) or 4 (stride 32) stages, got {self.layers}"
            )
        if len(self.widths) < len(self.layers):
            raise ConfigError(
                f"backbone.widths has {len(self.widths)} entries for {len(self.layers)} stages"
            )
        if self.levels < 1:
            raise ConfigError(f"backbone.levels must be >= 1, got {self.levels}")
        if self.levels > 1 and self.pyramid == "down" and self.up_channels <= 0:
            raise ConfigError("a multi-level backbone needs up_channels > 0")


@dataclass(frozen=True)
class ModelConfig:
    """The whole STM network.

    Attributes:
        query_backbone: backbone of the query encoder.
        memory_backbone: backbone of the memory encoder; None = same config as the query's
            (separate weights either way, as in STM).
        key_dim / value_dim: channels of the key (128 in STM) and value (512) projections.
        decoder_dim: width of the refine decoder (256 in STM).
        freeze_bn: keep BatchNorm statistics frozen during training (STM's encoders do).
        shared_key: memory keys come from the query encoder (frame only), as STCN: the affinity
            is then object-agnostic and both sides of the read live in one key space; the
            memory encoder produces values only. False = STM (keys from the memory encoder).
        similarity: "dot" (STM: q.k / sqrt(Ck)) or "l2" (STCN: -|q - k|^2 / sqrt(Ck), which
            drops the query-only term and adds -|k|^2 / sqrt(Ck) as a per-position bias).
        read_topk: memory-read prior (STCN): each query position reads only its k most similar
            memory positions (per object); 0 = off (all T*h*w positions). Adds no parameters.
        read_kernel: memory-read prior (KMN, Seong et al. 2020): sigma, in stride-16 feature
            cells, of the Gaussian around the query position that each memory position matches
            best; 0.0 = off. Adds no parameters. See model/memory.py for both.
        memory_fusion: "stem" (STM: the masks enter the memory backbone's stem, so the backbone
            runs once per object) or "late" (the frame is encoded once and each object adds a
            light mask path fused at stride 16; model/encoders.LateFusionMemoryEncoder).
        mem_every / prev_every: the memory schedule the model was validated with, which the
            runtime uses unless told otherwise (runtime.VideoPredictor): every `mem_every`-th
            frame is kept, and the previous frame's temporary slot is refreshed every
            `prev_every`-th frame (1 = every frame, STM's; a multiple of `mem_every` = no
            previous-frame slot). Not architecture: they add no parameters.
    """

    query_backbone: BackboneConfig = field(default_factory=BackboneConfig)
    memory_backbone: BackboneConfig | None = None
    key_dim: int = 128
    value_dim: int = 512
    decoder_dim: int = 256
    freeze_bn: bool = True
    shared_key: bool = False
    similarity: str = "dot"
    read_topk: int = 0
    read_kernel: float = 0.0
    memory_fusion: str = "stem"
    mem_every: int = DEFAULT_MEM_EVERY
    prev_every: int = 1

    @property
    def memory(self) -> BackboneConfig:
        return self.memory_backbone or self.query_backbone

    @property
    def stride(self) -> int:
        """Padding multiple: the largest total stride of the two backbones."""
        return max(self.query_backbone.stride, self.memory.stride)

    def validate(self) -> None:
        self.query_backbone.validate()
        self.memory.validate()
        if self.similarity not in SIMILARITIES:
            raise ConfigError(
                f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}"
            )
        if self.memory_fusion not in MEMORY_FUSIONS:
            raise ConfigError(
                f"memory_fusion must be one of {MEMORY_FUSIONS}, got {self.memory_fusion!r}"
            )
        for name in ("key_dim", "value_dim", "decoder_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        k = self.read_topk
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(
                f"read_topk must be an integer >= 0 (0 = read every memory position), got {k!r}"
            )
        for name in ("mem_every", "prev_every"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {n!r}")
        s = self.read_kernel
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise ConfigError(
                f"read_kernel must be a finite number >= 0 (the kernel's sigma in stride-16 "
                f"feature cells; 0 = off), got {s!r}"
            )

    @property
    def read_priors(self) -> tuple[str, ...]:
        """The memory-read priors that are on, as short descriptions (empty: plain attention)."""
        on = []
        if self.read_topk:
            on.append(f"top-{self.read_topk}")
        if self.read_kernel:
            on.append(f"KMN kernel sigma {self.read_kernel:g}")
        return tuple(on)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys are an error (a typo must not pass silently)."""
        d = dict(d)
        _reject_unknown(cls, d, "model config")
        for key in ("query_backbone", "memory_backbone"):
            if isinstance(d.get(key), dict):
                sub = dict(d[key])
                _reject_unknown(BackboneConfig, sub, key)
                for k in ("layers", "widths"):
                    if k in sub:
                        sub[k] = tuple(sub[k])
                d[key] = BackboneConfig(**sub)
        cfg = cls(**d)
        cfg.validate()
        return cfg


def add_read_prior_arguments(parser: argparse.ArgumentParser) -> None:
    """--read-topk / --read-kernel: override a checkpoint's memory-read priors (see ModelConfig;
    they add no parameters, so no retraining). Default None keeps the checkpoint's values."""
    parser.add_argument(
        "--read-topk",
        type=int,
        default=None,
        metavar="K",
        help="memory read keeps the K most similar memory positions per query position (STCN "
        "top-k; 0 = all; default: the checkpoint's)",
    )
    parser.add_argument(
        "--read-kernel",
        type=float,
        default=None,
        metavar="SIGMA",
        help="KMN Gaussian kernel of this sigma (stride-16 feature cells) on the memory read "
        "(0 = off; default: the checkpoint's)",
    )


def _reject_unknown(cls: type, d: dict[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown keys in {what}: {unknown}; known keys: {sorted(known)}")
