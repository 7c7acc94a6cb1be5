"""Variant registry: each variant is a short function returning only what differs.

- `paper`:   2-level multi-level ResNet-50 (MSPN-like full-width levels, stages to stride 32,
             256-ch up path) in both encoders; STM's key 128 / value 512 / decoder 256.
- `stm-r50`: plain STM: ResNet-50 to layer3 (stride 16), down features r2/r3/r4 (Table 2 baseline).
- `tiny`:    2-level multi-level ResNet-18-style net at quarter width with one block per stage,
             for CPU tests and the demo; STCN's shared keys and L2 affinity (see ModelConfig),
             without which a 20-minute CPU training never learnt to tell objects apart; a
             late-fusion memory encoder (the frame encoded once, a light mask path per object),
             so that an added object costs a fraction of the first; no previous-frame memory
             slot by default (prev_every 5: measured better on the natural and synthetic
             validation sets, README Memory schedule). Checkpoints of the earlier `tiny` (STM's
             stem fusion and schedule) carry their config and still load.
"""

from __future__ import annotations

from collections.abc import Callable

from mlvos.errors import ConfigError
from mlvos.model.config import BackboneConfig, ModelConfig

_VARIANTS: dict[str, Callable[[], ModelConfig]] = {}


def register(name: str):
    def deco(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        _VARIANTS[name] = fn
        return fn

    return deco


@register("paper")
def _paper() -> ModelConfig:
    # Both encoders use the multi-level backbone: the paper swaps "the backbone" of STM, whose
    # query and memory encoders are both ResNet-50 (see README, "Design choices").
    return ModelConfig(query_backbone=BackboneConfig(levels=2, pyramid="up"))


@register("stm-r50")
def _stm_r50() -> ModelConfig:
    return ModelConfig(query_backbone=BackboneConfig(layers=(3, 4, 6), levels=1, pyramid="down"))


@register("tiny")
def _tiny() -> ModelConfig:
    bb = BackboneConfig(
        block="basic",
        layers=(1, 1, 1, 1),
        stem_width=16,
        widths=(16, 32, 64, 128),
        levels=2,
        up_channels=32,
        pyramid="up",
    )
    return ModelConfig(query_backbone=bb, key_dim=32, value_dim=64, decoder_dim=32,
                       shared_key=True, similarity="l2", memory_fusion="late", prev_every=5)


def variants() -> list[str]:
    return list(_VARIANTS)


def get_config(variant: str) -> ModelConfig:
    if variant not in _VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; available: {', '.join(_VARIANTS)}")
    cfg = _VARIANTS[variant]()
    cfg.validate()
    return cfg


def build_model(
    variant: str | None = None, config: ModelConfig | None = None, *, seed: int | None = None
):
    """Build an STMNet from a registered variant or an explicit config.

    Args:
        variant: registry name; used for the config unless `config` is given.
        config: explicit configuration (e.g. from a checkpoint).
        seed: seed for the random initialization (reproducible untrained models).
    """
    import torch

    from mlvos.model.network import STMNet

    if config is None:
        if variant is None:
            raise ConfigError("build_model needs a variant name or a config")
        config = get_config(variant)
    if seed is not None:
        torch.manual_seed(seed)
    return STMNet(config, variant=variant or "custom")
