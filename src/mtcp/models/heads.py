"""Task heads: conv-BN-ReLU-conv to the task's channels, upsampled to the input size.

The first convolution is 3x3 by default; ``kernel=1`` gives the authors' 1x1 heads (docs/fidelity.md).

The heads return raw maps; the task's activation (softplus for depth, L2 normalisation
for normals; logits stay logits) is task knowledge, applied by the LightningModule
(`mtcp.tasks.Task.activation`). It acts per pixel, so applying it after the upsampling
and crop keeps normals unit at full size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtcp.models.fpn import conv_bn_relu


class TaskHead(nn.Module):
    """Predict one task from a feature map: raw ``out_channels`` maps at ``size``."""

    def __init__(self, in_dim: int, out_channels: int, kernel: int = 3) -> None:
        super().__init__()
        if kernel not in (1, 3):
            raise ValueError(f"model.net.init_args.head_kernel must be 1 or 3; got {kernel}")
        self.block = conv_bn_relu(in_dim, in_dim, kernel)
        self.proj = nn.Conv2d(in_dim, out_channels, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.proj(self.block(x)), size=size, mode="bilinear", align_corners=False)


def make_heads(task_channels: dict[str, int], in_dim: int, kernel: int = 3) -> nn.ModuleDict:
    """One `TaskHead` per task."""
    return nn.ModuleDict({t: TaskHead(in_dim, c, kernel) for t, c in task_channels.items()})
