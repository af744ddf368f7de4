"""Per-task dense losses (DESIGN.md section 3).

Every loss takes the network's output for a task (logits for classification and
binary tasks, metres for depth, unit vectors for normals) and the label in the
sample convention of `mtcp.data.sources.base`. A batch without a single valid pixel
returns ``0 * output.sum()``: a zero that keeps the graph connected (so DDP sees a
gradient for every parameter) and is never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtcp.data.sources.base import IGNORE_INDEX


def _zero(output: Tensor) -> Tensor:
    return output.sum() * 0.0


def cross_entropy(output: Tensor, label: Tensor) -> Tensor:
    """Mean cross-entropy over pixels whose label is not 255."""
    valid = label != IGNORE_INDEX
    if not bool(valid.any()):
        return _zero(output)
    return F.cross_entropy(output, label, ignore_index=IGNORE_INDEX)


def depth_l1(output: Tensor, label: Tensor) -> Tensor:
    """Mean absolute depth error (metres) over pixels with a positive label."""
    valid = label > 0
    if not bool(valid.any()):
        return _zero(output)
    return (output - label).abs()[valid].mean()


def normals_l1(output: Tensor, label: Tensor) -> Tensor:
    """Mean over valid pixels of the L1 distance between unit normals (summed over xyz).

    Valid pixels are those whose label is a non-zero vector. The sum over the three
    components follows the common practice of the NYUD multi-task literature.
    """
    valid = label.abs().sum(dim=1) > 0
    if not bool(valid.any()):
        return _zero(output)
    return (output - label).abs().sum(dim=1)[valid].mean()


def normals_mse(output: Tensor, label: Tensor) -> Tensor:
    """The authors' variant: mean squared error between unit normals over valid pixels."""
    valid = label.abs().sum(dim=1) > 0
    if not bool(valid.any()):
        return _zero(output)
    return (output - label).pow(2).sum(dim=1)[valid].mean()


def balanced_bce(output: Tensor, label: Tensor, min_fraction: float = 0.05) -> Tensor:
    """Class-balanced binary cross-entropy (saliency), as in the ATRC/MTI-Net reference code.

    Positives are weighted by the negative fraction ``1 - p`` and negatives by ``p`` (the
    positive fraction of the batch's valid pixels), averaged over the valid pixels.
    ``p`` is clamped to ``[min_fraction, 1 - min_fraction]`` so that a batch with a
    single class still has a loss (the reference gives such a batch a loss of 0).
    ``output`` is one logit [B, 1, H, W]; ``label`` is {0, 1, 255} [B, H, W].
    """
    logits = output[:, 0]
    valid = label != IGNORE_INDEX
    if not bool(valid.any()):
        return _zero(output)
    target = label[valid].float()
    pos_fraction = target.mean().clamp(min_fraction, 1.0 - min_fraction)
    weight = torch.where(target > 0.5, 1.0 - pos_fraction, pos_fraction)
    loss = F.binary_cross_entropy_with_logits(logits[valid], target, reduction="none")
    return (weight * loss).mean()


def weighted_bce(output: Tensor, label: Tensor, pos_weight: float = 0.95) -> Tensor:
    """Edge loss: BCE with positives weighted ``pos_weight`` and negatives ``1 - pos_weight``."""
    logits = output[:, 0]
    valid = label != IGNORE_INDEX
    if not bool(valid.any()):
        return _zero(output)
    target = label[valid].float()
    weight = torch.where(target > 0.5, pos_weight, 1.0 - pos_weight)
    return (weight * F.binary_cross_entropy_with_logits(logits[valid], target, reduction="none")).mean()


#: losses by name, for ``model.loss_overrides`` (e.g. ``{normals: normals_mse}``, the authors' choice)
LOSSES = {
    "cross_entropy": cross_entropy,
    "depth_l1": depth_l1,
    "normals_l1": normals_l1,
    "normals_mse": normals_mse,
    "balanced_bce": balanced_bce,
    "weighted_bce": weighted_bce,
}
