"""The Splice generator: a Deep-Image-Prior style encoder-decoder with skip connections.

The authors' `skip()` network (models/unet/skip.py of omerbt/Splice, as `define_G` builds it), module for module:
five scales (down/up channels 16, 32, 64, 128, 128; 4 skip channels each), 3x3 convolutions with zero padding
(`skip()`'s default `pad='zero'`), stride-2 downsampling, bilinear upsampling, BatchNorm, LeakyReLU(0.2), a 1x1 convolution after each up
block, a final 1x1 convolution and a sigmoid. Fully convolutional: any input size gives an output of that size.
"""

from __future__ import annotations

import torch
from torch import nn

DOWN_CHANNELS = (16, 32, 64, 128, 128)
UP_CHANNELS = (16, 32, 64, 128, 128)
SKIP_CHANNELS = (4, 4, 4, 4, 4)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, bias=True)


def _conv_bn_act(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        _conv(in_channels, out_channels, kernel, stride), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2)
    )


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class _Scale(nn.Module):
    """One scale: skip branch, downsampling branch (holding the deeper scales), concatenation, up block."""

    def __init__(self, level: int, in_channels: int):
        super().__init__()
        down, up, skip = DOWN_CHANNELS[level], UP_CHANNELS[level], SKIP_CHANNELS[level]
        self.skip = _conv_bn_act(in_channels, skip, 1)
        self.down = nn.Sequential(_conv_bn_act(in_channels, down, 3, stride=2), _conv_bn_act(down, down, 3))
        self.deeper = _Scale(level + 1, down) if level + 1 < len(DOWN_CHANNELS) else None
        deeper_channels = UP_CHANNELS[level + 1] if self.deeper is not None else down
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.merge_norm = nn.BatchNorm2d(skip + deeper_channels)
        self.up = nn.Sequential(_conv_bn_act(skip + deeper_channels, up, 3), _conv_bn_act(up, up, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x)  # (B, 4, H, W)
        deep = self.down(x)  # (B, down, ceil(H/2), ceil(W/2))
        if self.deeper is not None:
            deep = self.deeper(deep)
        deep = self.upsample(deep)  # (B, C, >= H, >= W): odd sizes come back one pixel larger
        deep = _center_crop(deep, skip.shape[-2], skip.shape[-1])
        return self.up(self.merge_norm(torch.cat([skip, deep], dim=1)))


class SkipGenerator(nn.Module):
    """G: (B, 3, H, W) image in [0, 1] -> (B, 3, H, W) image in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.body = _Scale(0, 3)
        self.head = nn.Conv2d(UP_CHANNELS[0], 3, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Splice's init: Xavier-normal with gain 0.02 for convolutions, BatchNorm weights ~ N(1, 0.02)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight, gain=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.body(x)))
