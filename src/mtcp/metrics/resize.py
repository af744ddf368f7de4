"""Shared input handling for the metrics: evaluate at the ground truth's resolution.

Networks often predict at a lower resolution than the (original-size) labels; the
protocol (docs/method.md section 4) scores at the label's size, so every metric brings its
prediction there first, interpolating logits/values rather than hard decisions.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_to_label(output: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
    """Bilinearly resize ``output`` [B, C, h, w] to ``size`` (H, W), as float32.

    align_corners=False matches how the data pipeline scales images. The input is
    returned unchanged (but as float) when the size already matches, so metrics at
    full resolution pay nothing. Half-precision outputs are promoted so that
    thresholds and argmaxes do not depend on the autocast dtype.
    """
    if output.dim() != 4:
        raise ValueError(f"expected a prediction of shape [B, C, h, w], got {tuple(output.shape)}")
    output = output.float()
    size = (int(size[0]), int(size[1]))
    if tuple(output.shape[-2:]) == size:
        return output
    return F.interpolate(output, size=size, mode="bilinear", align_corners=False)


def check_batch(output: Tensor, label: Tensor, label_dims: int) -> None:
    """Fail early, with the shapes, when prediction and label cannot belong together."""
    if label.dim() != label_dims:
        raise ValueError(f"expected a label with {label_dims} dimensions, got shape {tuple(label.shape)}")
    if output.dim() != 4 or output.shape[0] != label.shape[0]:
        raise ValueError(
            f"prediction {tuple(output.shape)} and label {tuple(label.shape)} do not match: "
            "expected [B, C, h, w] and the same batch size"
        )
