"""Task heads: conv-BN-ReLU-conv to the task's channels, upsampled to the input size.

The task's activation (softplus for depth, L2 normalisation for normals; logits stay
logits) is applied after the bilinear upsampling, so normals are unit at full size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtcp.models.fpn import conv_bn_relu
from mtcp.tasks import get_task


class TaskHead(nn.Module):
    """Predict one task from a feature map; output at ``size`` in the task's output space."""

    def __init__(self, task: str, in_dim: int, out_channels: int) -> None:
        super().__init__()
        self.activation = get_task(task).activation
        self.block = conv_bn_relu(in_dim, in_dim)
        self.proj = nn.Conv2d(in_dim, out_channels, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        out = self.proj(self.block(x))
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return self.activation(out)


def make_heads(task_channels: dict[str, int], in_dim: int) -> nn.ModuleDict:
    """One `TaskHead` per task."""
    return nn.ModuleDict({t: TaskHead(t, in_dim, c) for t, c in task_channels.items()})
