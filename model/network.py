"""The STM network with a multi-level backbone, exposed as stage methods that map 1:1 to the
exported graphs (query_encoder, memory_encoder, read_decoder). `forward` is not used for inference:
the frame loop and memory management live in the runtime; training uses model.train.clip.
"""

from __future__ import annotations

import torch
from torch import nn

from mlvos.errors import InputError
from mlvos.model.config import ModelConfig
from mlvos.model.decoder import Decoder, aggregate_outputs, per_object, soft_aggregate
from mlvos.model.encoders import (
    LateFusionMemoryEncoder,
    MemoryEncoder,
    QueryEncoder,
    QueryFeatures,
)
from mlvos.model.memory import memory_read
from mlvos.runtime.spec import FEATURE_STRIDE, MIN_SIDE


def _checking() -> bool:
    # Shape checks are Python control flow; skip them while tracing for export.
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


class STMNet(nn.Module):
    """STM space-time memory network.

    Args:
        config: the model configuration (see registry.py for the variants).
        variant: registry name, stored in checkpoints.
    """

    def __init__(self, config: ModelConfig, variant: str = "custom"):
        super().__init__()
        config.validate()
        self.config = config
        self.variant = variant
        self.query_encoder = QueryEncoder(config.query_backbone, config.key_dim, config.value_dim)
        encoder = LateFusionMemoryEncoder if config.memory_fusion == "late" else MemoryEncoder
        self.memory_encoder = encoder(
            config.memory, None if config.shared_key else config.key_dim, config.value_dim
        )
        c4, c8, _ = config.query_backbone.feature_channels()
        self.decoder = Decoder(2 * config.value_dim, c8, c4, config.decoder_dim)

    @property
    def stride(self) -> int:
        """H and W of every input must be multiples of this (pad with runtime.spec.padding_for)."""
        return self.config.stride

    # ----------------------------------------------------------------------------------- stages
    def encode_query(self, frame: torch.Tensor) -> QueryFeatures:
        """Query encoder.

        Args:
            frame: (B, 3, H, W) RGB pixels in [0, 255], uint8 or float; H, W multiples of
                `stride`.

        Returns:
            QueryFeatures (key, value at stride 16; skips at strides 8 and 4).
        """
        if _checking():
            self.check_frame(frame)
        return self.query_encoder(frame)

    def encode_memory(
        self, frame: torch.Tensor, probs: torch.Tensor, query_key: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory encoder, batched over the objects of one frame.

        Args:
            frame: (1, 3, H, W) RGB pixels in [0, 255].
            probs: (O, H, W) float object probabilities in [0, 1] (soft, not binarized).
            query_key: (1, Ck, H/16, W/16) the query key of `frame`, for a shared-key model
                (config.shared_key) that already encoded `frame` as a query; computed when None.
                Ignored by STM's separate keys.

        Returns:
            key (O, Ck, H/16, W/16) and value (O, Cv, H/16, W/16). With shared keys the key is
            the query encoder's key of `frame`, once for all objects: (1, Ck, H/16, W/16).
        """
        if _checking():
            self.check_frame(frame)
            self.check_probs(probs, frame)
            if query_key is not None and self.config.shared_key:
                fs = FEATURE_STRIDE
                expected = (1, self.config.key_dim, *(s // fs for s in frame.shape[-2:]))
                if tuple(query_key.shape) != expected:
                    raise InputError(
                        f"query_key must be {expected} (the query key of this frame), "
                        f"got {tuple(query_key.shape)}"
                    )
        if self.config.shared_key:
            # object-free: the bank stores the frame's key once (see read_decode)
            _, value = self.memory_encoder(frame, probs.unsqueeze(0))
            key = query_key if query_key is not None else self.query_encoder.key_only(frame)
            return key, value
        return self.memory_kv(frame, probs.unsqueeze(0), query_key)

    def memory_kv(
        self, frame: torch.Tensor, probs: torch.Tensor, key: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched memory encoding (training): frame (B, 3, H, W), probs (B, K, H, W).

        key: (B, Ck, h, w) query keys of the frames when already computed (shared keys only).
        Returns key and value (B*K, C, h, w), objects of a frame contiguous.
        """
        mk, mv = self.memory_encoder(frame, probs)
        if self.config.shared_key:
            if key is None:
                key = self.query_encoder.key_only(frame)
            b, k = probs.shape[:2]
            mk = key.unsqueeze(1).expand(b, k, *key.shape[1:]).reshape(b * k, *key.shape[1:])
        return mk, mv

    def read_decode(
        self,
        query: QueryFeatures,
        bank_key: torch.Tensor,
        bank_value: torch.Tensor,
        bank_valid: torch.Tensor,
    ) -> torch.Tensor:
        """Memory read over a fixed-capacity bank (with the config's read priors), then decoder.

        Args:
            query: QueryFeatures with batch 1 (shared by all objects), O, or B (training: B
                frames of O // B objects each, objects of a frame contiguous).
            bank_key: (O, T, Ck, h, w), or (1, T, Ck, h, w) for a shared-key model's
                object-free bank (one affinity per frame for all objects:
                memory.shared_memory_read);
                bank_value: (O, T, Cv, h, w); empty slots zero-filled.
            bank_valid: (O, T) float, 1.0 = filled slot; >= 1 filled slot per object.

        Returns:
            (O, H, W) per-object foreground logits at the padded input resolution.
        """
        if _checking():
            self.check_bank(query, bank_key, bank_value, bank_valid)
        o = bank_value.shape[0]
        key, value, skip8, skip4 = query
        if bank_key.shape[0] != 1:
            key = per_object(key, o).expand(o, *key.shape[1:])  # one affinity per object
        cfg = self.config
        readout = memory_read(
            key,
            bank_key,
            bank_value,
            bank_valid,
            cfg.similarity,
            topk=cfg.read_topk,
            kernel=cfg.read_kernel,
        )
        # the decoder runs the object-independent parts (query value, skips) once at batch 1
        return self.decoder(readout, value, skip8, skip4)

    @staticmethod
    def aggregate_outputs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(O, H, W) logits -> obj_probs (O, H, W) float32, labels (H, W) uint8 (argmax slot)."""
        return aggregate_outputs(logits)

    @staticmethod
    def aggregate(logits: torch.Tensor) -> torch.Tensor:
        """(O, H, W) foreground logits -> (O+1, H, W) probabilities, background first."""
        return soft_aggregate(logits)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "STMNet has no single forward: use encode_query / encode_memory / read_decode, "
            "mlvos.model.train.clip.ClipModel for training, or the runtime for videos"
        )

    # ------------------------------------------------------------------------------- checking
    def check_frame(self, frame: torch.Tensor) -> None:
        if not isinstance(frame, torch.Tensor):
            raise InputError(
                f"frame must be a torch.Tensor (B, 3, H, W), got {type(frame).__name__}"
            )
        if frame.dim() != 4 or frame.shape[1] != 3:
            raise InputError(
                f"frame must be (B, 3, H, W) RGB, got shape {tuple(frame.shape)}; convert "
                "grayscale/RGBA to RGB and put channels first"
            )
        if frame.dtype not in (torch.uint8, torch.float32, torch.float16, torch.bfloat16):
            raise InputError(f"frame dtype must be uint8 or float in [0, 255], got {frame.dtype}")
        h, w = frame.shape[-2:]
        if h < MIN_SIDE or w < MIN_SIDE:
            raise InputError(f"frame is {h}x{w}; both sides must be at least {MIN_SIDE} pixels")
        if h % self.stride or w % self.stride:
            raise InputError(
                f"frame is {h}x{w}, not a multiple of the network stride {self.stride}; pad it "
                "with mlvos.runtime.spec.padding_for(h, w, stride) (centered zero padding)"
            )

    @staticmethod
    def check_probs(probs: torch.Tensor, frame: torch.Tensor) -> None:
        if probs.dim() != 3:
            raise InputError(f"probs must be (O, H, W), got shape {tuple(probs.shape)}")
        if probs.shape[-2:] != frame.shape[-2:]:
            raise InputError(
                f"probs are {tuple(probs.shape[-2:])} but the frame is {tuple(frame.shape[-2:])}; "
                "masks must have the frame's (padded) size"
            )
        if not probs.is_floating_point():
            raise InputError(f"probs must be float in [0, 1], got {probs.dtype}")

    def check_bank(self, query, bank_key, bank_value, bank_valid) -> None:
        ck, cv = self.config.key_dim, self.config.value_dim
        if bank_key.dim() != 5 or bank_key.shape[2] != ck:
            raise InputError(f"bank_key must be (O, T, {ck}, h, w), got {tuple(bank_key.shape)}")
        _, t, _, h, w = bank_key.shape
        o = bank_value.shape[0]
        if tuple(bank_value.shape) != (o, t, cv, h, w) or bank_key.shape[0] not in (1, o):
            raise InputError(
                f"bank_value must be (O, {t}, {cv}, {h}, {w}) with bank_key (O or 1, {t}, {ck}, "
                f"{h}, {w}), got bank_value {tuple(bank_value.shape)} and bank_key "
                f"{tuple(bank_key.shape)}"
            )
        if bank_key.shape[0] == 1 and o > 1 and not self.config.shared_key:
            raise InputError("an object-free bank_key (1, T, ...) needs a shared-key model "
                             "(ModelConfig.shared_key); this model's keys depend on the object")
        if tuple(bank_valid.shape) != (o, t):
            raise InputError(f"bank_valid must be {(o, t)}, got {tuple(bank_valid.shape)}")
        if query.key.shape[-2:] != (h, w):
            raise InputError(
                f"query features are {tuple(query.key.shape[-2:])} but the bank is {(h, w)}; "
                "all frames of a video must have the same size"
            )
        if query.key.shape[0] == 0 or o % query.key.shape[0]:
            raise InputError(f"query batch must be 1, {o} (objects) or divide it (frames of equal "
                             f"object counts), got {query.key.shape[0]}")
        # A value check needs a device->host sync (and breaks CUDA-graph capture): CPU only.
        if bank_valid.device.type == "cpu" and bool((bank_valid.sum(dim=1) < 1).any()):
            raise InputError("every object needs at least one valid memory slot in bank_valid")
