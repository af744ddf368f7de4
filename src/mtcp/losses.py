"""Per-task dense losses (docs/method.md section 3).

Every loss takes the network's output for a task (logits for classification and
binary tasks, metres for depth, unit vectors for normals) and the label in the
sample convention of `mtcp.data.sources.base`, and averages over the valid pixels
with `masked_mean`: no host synchronisation in the training step, and a batch without
a single valid pixel gives an exact zero that keeps the graph connected (so DDP sees
a gradient for every parameter), never NaN. Regression labels are zeroed where invalid
before the difference, so a NaN in an invalid pixel reaches neither the loss nor its
gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtcp.labels import IGNORE_INDEX


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over the ``valid`` pixels; 0 (with a gradient path) when there are none."""
    return torch.where(valid, values, 0.0).sum() / valid.sum().clamp_min(1)


def cross_entropy(output: Tensor, label: Tensor) -> Tensor:
    """Mean cross-entropy over pixels whose label is not 255."""
    per_pixel = F.cross_entropy(output, label, ignore_index=IGNORE_INDEX, reduction="none")
    return masked_mean(per_pixel, label != IGNORE_INDEX)


def depth_l1(output: Tensor, label: Tensor, max_depth: float | None = None) -> Tensor:
    """Mean absolute depth error (metres) over pixels with a positive label (below ``max_depth`` if set:
    the MT-CP authors ignore labels of 6.5535 m and more, ``model.loss_options: {depth: {max_depth: 6.5535}}``)."""
    valid = label > 0 if max_depth is None else (label > 0) & (label < max_depth)
    return masked_mean((output - torch.where(valid, label, 0.0)).abs(), valid)


def _valid_normals(label: Tensor) -> tuple[Tensor, Tensor]:
    """(valid [B, H, W]: non-zero label vectors, the label with invalid pixels zeroed)."""
    valid = label.abs().sum(dim=1) > 0
    return valid, torch.where(valid[:, None], label, 0.0)


def normals_l1(output: Tensor, label: Tensor) -> Tensor:
    """Mean over valid pixels of the L1 distance between unit normals (summed over xyz).

    Valid pixels are those whose label is a non-zero vector. The sum over the three
    components follows the common practice of the NYUD multi-task literature.
    """
    valid, label = _valid_normals(label)
    return masked_mean((output - label).abs().sum(dim=1), valid)


def normals_mse(output: Tensor, label: Tensor, per: str = "pixel") -> Tensor:
    """Squared error between unit normals over valid pixels.

    ``per="pixel"``: the squared distance summed over xyz, averaged over valid pixels (the
    scale of `normals_l1`). ``per="element"``: averaged over the valid pixels' three components,
    i.e. a third of it, the MT-CP authors' form (``model.loss_options: {normals: {per: element}}``).
    """
    if per not in ("pixel", "element"):
        raise ValueError(f"model.loss_options.normals.per: 'pixel' or 'element'; got {per!r}")
    valid, label = _valid_normals(label)
    per_pixel = (output - label).pow(2).sum(dim=1)
    return masked_mean(per_pixel / 3 if per == "element" else per_pixel, valid)


def balanced_bce(output: Tensor, label: Tensor, min_fraction: float = 0.05) -> Tensor:
    """Class-balanced binary cross-entropy (saliency), as in the ATRC/MTI-Net reference code.

    Positives are weighted by the negative fraction ``1 - p`` and negatives by ``p`` (the
    positive fraction of the batch's valid pixels), averaged over the valid pixels.
    ``p`` is clamped to ``[min_fraction, 1 - min_fraction]`` so that a batch with a
    single class still has a loss (the reference gives such a batch a loss of 0).
    ``output`` is one logit [B, 1, H, W]; ``label`` is {0, 1, 255} [B, H, W].
    """
    valid = label != IGNORE_INDEX
    target = (label == 1).to(output.dtype)
    pos_fraction = masked_mean(target, valid).clamp(min_fraction, 1.0 - min_fraction)
    weight = torch.where(target > 0.5, 1.0 - pos_fraction, pos_fraction)
    loss = F.binary_cross_entropy_with_logits(output[:, 0], target, reduction="none")
    return masked_mean(weight * loss, valid)


def weighted_bce(output: Tensor, label: Tensor, pos_weight: float = 0.95) -> Tensor:
    """Edge loss: BCE with positives weighted ``pos_weight`` and negatives ``1 - pos_weight``."""
    target = (label == 1).to(output.dtype)
    weight = torch.where(target > 0.5, pos_weight, 1.0 - pos_weight)
    loss = F.binary_cross_entropy_with_logits(output[:, 0], target, reduction="none")
    return masked_mean(weight * loss, label != IGNORE_INDEX)

#: losses by name, for ``model.loss_overrides`` (e.g. ``{normals: normals_mse}``, the authors' choice)
LOSSES = {
    "cross_entropy": cross_entropy,
    "depth_l1": depth_l1,
    "normals_l1": normals_l1,
    "normals_mse": normals_mse,
    "balanced_bce": balanced_bce,
    "weighted_bce": weighted_bce,
}
