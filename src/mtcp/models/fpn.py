"""Feature pyramid network: fuse a fine-to-coarse pyramid into maps of one width.

Used as the pixel decoder over the backbone and as the "dynamic FPN fusion" over each
task decoder's stages (docs/method.md section 2): 1x1 laterals to ``dim``, top-down
nearest upsampling and addition, a 3x3 output convolution per level: conv-BN-ReLU
(``output="conv_bn_relu"``, non-negative maps) or a plain 3x3 convolution
(``output="conv"``, the authors' task-decoder fusion; docs/fidelity.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


#: the FPN's output convolution per level, by name
FPN_OUTPUTS = {"conv_bn_relu": conv_bn_relu, "conv": lambda i, o: nn.Conv2d(i, o, 3, padding=1)}


class FPN(nn.Module):
    """Top-down feature pyramid; returns every level (finest first) at width ``dim``.

    ``num_outputs`` limits the output convolutions to the finest levels that a caller
    uses, so that no parameter goes without a gradient (DDP with
    ``find_unused_parameters=False``).
    """

    def __init__(self, in_channels: Sequence[int], dim: int, num_outputs: int | None = None,
                 output: str = "conv_bn_relu") -> None:
        super().__init__()
        if output not in FPN_OUTPUTS:
            raise ValueError(f"FPN output {output!r}: choose one of {list(FPN_OUTPUTS)}")
        self.laterals = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.num_outputs = num_outputs or len(in_channels)
        self.outputs = nn.ModuleList(FPN_OUTPUTS[output](dim, dim) for _ in range(self.num_outputs))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        x = self.laterals[-1](feats[-1])
        merged = [x]
        for lateral, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1]), strict=True):
            x = lateral(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
            merged.append(x)
        merged = merged[::-1]  # finest first
        return [conv(m) for conv, m in zip(self.outputs, merged[: self.num_outputs], strict=True)]
