"""CBAM: a channel gate followed by a spatial gate (Woo et al., 2018).

Used by the CFM (on its query, key, value and output branches) and by every SRM
(docs/method.md section 2). The channel gate is timm's `ChannelAttn` as is: an MLP with
reduction 16, shared between the average- and max-pooled descriptors, summed, sigmoid.
timm's own spatial gate (`SpatialAttn`, hence `CbamModule`) puts a BatchNorm after its
7x7 convolution, which the design does not have, so the spatial gate is written here:
channel mean and max -> 7x7 convolution -> sigmoid.
"""

from __future__ import annotations

import torch
from timm.layers.cbam import ChannelAttn
from torch import Tensor, nn


class SpatialGate(nn.Module):
    """Weight every position by a sigmoid of a 7x7 convolution over [channel mean, channel max]."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel gate (shared MLP over avg/max pooling, reduction ``reduction``) then spatial gate.

    The hidden width of the channel MLP is ``channels // reduction``, at least 1, so
    the tiny widths of the tests work too.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttn(channels, rd_channels=max(channels // reduction, 1))
        self.spatial = SpatialGate(spatial_kernel)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))
