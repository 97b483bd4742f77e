"""Vision encoders of the reference VLA: image (B, 3, H, W) float -> tokens (B, N, C).

Each encoder registers itself by name in ``VISION_ENCODERS``; ``VLAConfig.vision_encoder`` picks one.
An encoder class offers ``check(config)`` (raise on a bad config), ``num_tokens(config)`` and
``out_dim(config)`` so the config can be validated before anything is built.
"""

from __future__ import annotations

import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.registry import Registry

VISION_ENCODERS: Registry[type[nn.Module]] = Registry("vision encoder")


@VISION_ENCODERS.register("conv")
class ConvEncoder(nn.Module):
    """A stack of stride-2 3x3 convolutions with GELU, then a per-token LayerNorm and a learned position
    embedding.

    No normalization inside the stack: a per-image norm (GroupNorm) would erase absolute colour and
    brightness, and BatchNorm would make train and eval behave differently; the LayerNorm over channels
    at each grid cell keeps the token scale stable for the projector.

    16x downsampling with the default four stages: 96 px -> 6x6 = 36 tokens, 32 px -> 2x2 = 4 tokens.
    """

    def __init__(self, config) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in config.conv_channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU()]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        # He initialisation with zero biases (torchvision's ResNet convention) keeps the image content's
        # share of the activations through the stack. With PyTorch's default conv init each stage
        # shrinks the content while the biases pile up a constant: two different Meta-World scenes at
        # 96 px gave tokens 0.7% apart at initialisation (12% with this init), and a policy without
        # the state token did not learn at all (docs/training.md).
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.norm = nn.LayerNorm(c_in)
        # Conv features carry no absolute position once flattened; the backbone's own position
        # embedding only orders tokens, so each grid cell gets its own learned offset.
        self.pos = nn.Parameter(torch.zeros(1, self.num_tokens(config), c_in))
        nn.init.normal_(self.pos, std=0.02)

    @staticmethod
    def check(config) -> None:
        stride = 2 ** len(config.conv_channels)
        if not config.conv_channels or any(int(c) < 1 for c in config.conv_channels):
            raise VlatrimError(f"VLA config conv_channels={list(config.conv_channels)!r} must be positive integers")
        if config.image_size % stride:
            raise VlatrimError(
                f"image size {config.image_size} px is not divisible by the conv encoder's stride {stride}; "
                f"use a multiple of {stride} or fewer conv_channels stages")

    @staticmethod
    def num_tokens(config) -> int:
        side = config.image_size // 2 ** len(config.conv_channels)
        return side * side

    @staticmethod
    def out_dim(config) -> int:
        return config.conv_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net(x)  # (B, C, h, w)
        return self.norm(f.flatten(2).transpose(1, 2)) + self.pos  # (B, h*w, C)


@VISION_ENCODERS.register("vit")
class ViTEncoder(nn.Module):
    """A small ViT: non-overlapping patches -> linear embedding + position -> pre-norm encoder layers."""

    def __init__(self, config) -> None:
        super().__init__()
        d = config.vit_dim
        self.patch = nn.Conv2d(3, d, config.vit_patch_size, stride=config.vit_patch_size)
        self.pos = nn.Parameter(torch.zeros(1, self.num_tokens(config), d))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d, config.vit_heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.vit_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    @staticmethod
    def check(config) -> None:
        if config.image_size % config.vit_patch_size:
            raise VlatrimError(
                f"image size {config.image_size} px is not divisible by vit_patch_size {config.vit_patch_size}")
        if config.vit_dim % config.vit_heads:
            raise VlatrimError(f"vit_dim {config.vit_dim} is not divisible by vit_heads {config.vit_heads}")

    @staticmethod
    def num_tokens(config) -> int:
        side = config.image_size // config.vit_patch_size
        return side * side

    @staticmethod
    def out_dim(config) -> int:
        return config.vit_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, N, d)
        return self.norm(self.encoder(t))  # (B, N, d)

