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

    With ``conv_keypoints=K > 0`` one more token carries K spatial-softmax keypoints (Levine et al.,
    2016, as in the robomimic and Diffusion Policy image encoders) read from the output of stage
    ``conv_keypoint_stage``: a 1x1 conv gives K maps, a softmax over each map's positions gives its
    expected (x, y), and the 2K coordinates are embedded as one token. The coarse grid says *what* is
    in each cell; the keypoints say *where*, finer than a cell (a 9-token grid cell is 32 px wide at
    96 px, the reach goal ~2 px).
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
        self.keypoint_stage = config.conv_keypoint_stage
        self.keypoints = (SpatialSoftmaxToken(config.conv_channels[self.keypoint_stage - 1], config.conv_keypoints, c_in)
                          if config.conv_keypoints else None)
        # Conv features carry no absolute position once flattened; the backbone's own position
        # embedding only orders tokens, so each grid cell gets its own learned offset.
        self.pos = nn.Parameter(torch.zeros(1, self.num_tokens(config), c_in))
        nn.init.normal_(self.pos, std=0.02)

    @staticmethod
    def check(config) -> None:
        stride = 2 ** len(config.conv_channels)
        if not config.conv_channels or any(int(c) < 1 for c in config.conv_channels):
            raise VlatrimError(f"VLA config conv_channels={list(config.conv_channels)!r} must be positive integers")
        if isinstance(config.conv_keypoints, bool) or not isinstance(config.conv_keypoints, int) or config.conv_keypoints < 0:
            raise VlatrimError(f"VLA config conv_keypoints={config.conv_keypoints!r} must be an integer >= 0 (0: none)")
        if (isinstance(config.conv_keypoint_stage, bool) or not isinstance(config.conv_keypoint_stage, int)
                or not 1 <= config.conv_keypoint_stage <= len(config.conv_channels)):
            raise VlatrimError(f"VLA config conv_keypoint_stage={config.conv_keypoint_stage!r} must be a conv stage "
                               f"in 1..{len(config.conv_channels)}")
        if config.image_size % stride:
            raise VlatrimError(
                f"image size {config.image_size} px is not divisible by the conv encoder's stride {stride}; "
                f"use a multiple of {stride} or fewer conv_channels stages")

    @staticmethod
    def num_tokens(config) -> int:
        side = config.image_size // 2 ** len(config.conv_channels)
        return side * side + (1 if config.conv_keypoints else 0)

    @staticmethod
    def out_dim(config) -> int:
        return config.conv_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = 2 * self.keypoint_stage  # (conv, GELU) per stage
        mid = self.net[:cut](x)  # (B, C_k, H_k, W_k): the keypoints' feature map
        f = self.net[cut:](mid)  # (B, C, h, w)
        tokens = self.norm(f.flatten(2).transpose(1, 2))  # (B, h*w, C)
        if self.keypoints is not None:
            tokens = torch.cat([tokens, self.keypoints(mid)], dim=1)  # (B, h*w + 1, C)
        return tokens + self.pos


class SpatialSoftmaxToken(nn.Module):
    """K keypoints of a feature map as one token: 1x1 conv -> ``keypoint_coords`` -> Linear(2K, C) ->
    LayerNorm. A learned temperature (starting at 1) sharpens or widens each softmax."""

    def __init__(self, in_channels: int, k: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, k, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.embed = nn.Linear(2 * k, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        coords = keypoint_coords(self.conv(f) / self.log_temperature.exp())  # (B, K, 2) float32
        return self.norm(self.embed(coords.flatten(1).to(f.dtype))).unsqueeze(1)  # (B, 1, C)


def keypoint_coords(logits: torch.Tensor) -> torch.Tensor:
    """Spatial softmax: (B, K, h, w) logits -> (B, K, 2) expected (x, y) of each map, in float32.

    x runs left to right and y top to bottom over [-1, 1] (the centres of the first and last column /
    row), so a map peaked on one cell returns that cell's coordinates.
    """
    h, w = logits.shape[-2:]
    attn = torch.softmax(logits.flatten(2).float(), dim=-1)  # (B, K, h*w), row-major
    ys = torch.linspace(-1.0, 1.0, h, device=logits.device)
    xs = torch.linspace(-1.0, 1.0, w, device=logits.device)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)  # (h*w, [x, y])
    return attn @ grid


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

