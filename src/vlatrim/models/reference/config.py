"""The reference VLA's configuration: every field documented, validated on construction.

The language backbone's own configuration is not a field here: it is the live
``vla.backbone.config`` (a transformers ``PretrainedConfig``), saved beside these fields as
``config.json["backbone"]``, so a backbone whose blocks or heads were cut reloads as it now is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.utils.config import strict_from_dict

MODEL_TYPE = "vlatrim_vla"
"""``config.json["model_type"]`` of a reference VLA checkpoint (the policy loader key)."""

CONTINUOUS_LOSSES = ("l1", "mse")
NORMALIZATIONS = ("mean_std", "min_max")


@dataclass
class VLAConfig:
    """Architecture of the reference VLA (everything except the language backbone's own config)."""

    image_size: int = 96
    """Square RGB input size in pixels; images of another size are rejected, not resized."""
    vision_encoder: str = "conv"
    """Vision encoder: ``conv`` (stride-2 conv stack, 16x downsampling) or ``vit`` (patch ViT)."""
    conv_channels: tuple[int, ...] = (32, 64, 128, 128)
    """Output channels of the conv encoder's stride-2 stages; image tokens = (image_size / 2**len)^2."""
    conv_keypoints: int = 0
    """Spatial-softmax keypoints of the conv encoder, embedded as one more image token (0: none)."""
    conv_keypoint_stage: int = 2
    """Conv stage (1-based) whose feature map the keypoints are read from (96 px: stage 2 is 24x24)."""
    vit_patch_size: int = 8
    """ViT patch size in pixels; image tokens = (image_size / patch)^2."""
    vit_dim: int = 128
    """ViT embedding width."""
    vit_depth: int = 2
    """Number of ViT encoder layers."""
    vit_heads: int = 4
    """ViT attention heads (must divide ``vit_dim``)."""
    state_dim: int = 4
    """Proprioceptive state size (Meta-World: hand xyz + gripper); enters the sequence as one token
    (unless ``use_state`` is False)."""
    use_state: bool = True
    """Give the policy the state token. False: image and instruction only, as OpenVLA. With the state,
    behaviour cloning can fit the demonstrations from the hand position alone and leave the camera
    unused (the "copycat" shortcut; docs/training.md measures it on Meta-World)."""
    action_dim: int = 4
    """Action size (Meta-World: xyz delta + gripper)."""
    chunk_size: int = 4
    """Actions predicted per observation (parallel decoding, one learned query per future step)."""
    action_head: str = "continuous"
    """``continuous`` (regression of the whole chunk, OpenVLA-OFT style) or ``discrete`` (256-bin
    tokens per action dimension with cross-entropy, OpenVLA style)."""
    continuous_loss: str = "l1"
    """Regression loss of the continuous head: ``l1`` (default, as OpenVLA-OFT) or ``mse``."""
    n_bins: int = 256
    """Bins per action dimension of the discrete head, uniform over the normalized range [-1, 1]."""
    normalization: str = "mean_std"
    """How states and actions are normalized with the dataset statistics: ``mean_std`` (zero mean,
    unit variance) or ``min_max`` (to [-1, 1]; required by the discrete head, whose bins span it)."""
    max_text_tokens: int = 16
    """Instruction length in tokens (padded / truncated, special tokens included)."""
    backbone_name: str = ""
    """Where the language backbone came from (``minilm``, a preset, a path); informational only."""

    def __post_init__(self) -> None:
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        from vlatrim.models.reference.heads import ACTION_HEADS
        from vlatrim.models.reference.vision import VISION_ENCODERS

        _choice("vision_encoder", self.vision_encoder, tuple(VISION_ENCODERS.names()))
        _choice("action_head", self.action_head, tuple(ACTION_HEADS.names()))
        _choice("continuous_loss", self.continuous_loss, CONTINUOUS_LOSSES)
        _choice("normalization", self.normalization, NORMALIZATIONS)
        for name in ("image_size", "state_dim", "action_dim", "chunk_size", "max_text_tokens",
                     "vit_patch_size", "vit_dim", "vit_depth", "vit_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise VlatrimError(f"VLA config {name}={value!r} must be a positive integer")
        if not isinstance(self.use_state, bool):
            raise VlatrimError(f"VLA config use_state={self.use_state!r} must be true or false")
        if self.n_bins < 2:
            raise VlatrimError(f"VLA config n_bins={self.n_bins!r} must be >= 2")
        if self.max_text_tokens < 2:
            raise VlatrimError(f"VLA config max_text_tokens={self.max_text_tokens!r} must be >= 2")
        if self.action_head == "discrete" and self.normalization != "min_max":
            raise VlatrimError("the discrete action head needs normalization='min_max' (its bins span [-1, 1])")
        if self.conv_keypoints and self.vision_encoder != "conv":
            raise VlatrimError(f"VLA config conv_keypoints={self.conv_keypoints!r} needs vision_encoder='conv', "
                               f"not {self.vision_encoder!r}")
        VISION_ENCODERS.get(self.vision_encoder).check(self)

    @property
    def num_image_tokens(self) -> int:
        """Tokens the vision encoder emits per image."""
        from vlatrim.models.reference.vision import VISION_ENCODERS

        return VISION_ENCODERS.get(self.vision_encoder).num_tokens(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["conv_channels"] = list(self.conv_channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        """Build from a dict (e.g. ``config.json``), rejecting unknown keys by name."""
        return strict_from_dict(cls, data, "VLA config field")


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise VlatrimError(f"VLA config {name}={value!r} is not valid; valid: {', '.join(valid)}")


