"""Saliency: maxF (headline) and max mIoU over 15 thresholds, per-image P/R averaged.

Protocol (DESIGN section 4, following the MTI-Net/ATRC evaluation): the sigmoid of
the logit is binarised as ``prob > t`` for t in ``linspace(0.2, 0.9, 15)``; per image
and threshold we take precision, recall and foreground IoU over the non-ignored
pixels; these are averaged over images, and F_beta is computed from the averaged P
and R (not averaged per image). ``maxf`` and ``max_miou`` are maxima over thresholds.

beta^2 defaults to 1 as DESIGN prescribes; ATRC-style code often uses beta^2 = 0.3
(precision-weighted), which gives higher numbers: pass ``beta_sq=0.3`` to compare.

Edge-case conventions (tp, fp, fn counted over non-ignored pixels of one image):
- nothing predicted (tp + fp = 0): precision = 1 (no false alarm was made);
- no positive label (tp + fn = 0): recall = 1 (nothing could be missed);
- both empty: IoU = 1 (a perfect empty prediction), so P = R = IoU = 1;
- an image whose pixels are all ignored (255) is not counted at all.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from mtcp.metrics.resize import check_batch, resize_to_label


def saliency_thresholds(device: torch.device | None = None) -> Tensor:
    """The 15 evaluation thresholds 0.20, 0.25, ..., 0.90 (float32)."""
    return torch.linspace(0.2, 0.9, 15, device=device)


def _ratio_or_one(num: Tensor, den: Tensor) -> Tensor:
    """num/den, and 1 where den = 0 (the convention for empty predictions / labels)."""
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num))


class SaliencyMetrics(Metric):
    """``maxf`` and ``max_miou`` in %, from per-image precision/recall/IoU averaged over images.

    States: float64 sums of per-image P, R, IoU per threshold and an int64 image count,
    all sum-reduced, so DDP gives the single-process values.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    sum_prec: Tensor
    sum_rec: Tensor
    sum_iou: Tensor
    n_images: Tensor

    def __init__(self, beta_sq: float = 1.0, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if beta_sq <= 0:
            raise ValueError(f"beta_sq must be > 0, got {beta_sq}")
        self.beta_sq = float(beta_sq)
        self.ignore_index = int(ignore_index)
        t = len(saliency_thresholds())
        self.add_state("sum_prec", torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_rec", torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_iou", torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, output: Tensor, label: Tensor) -> None:
        """Add a batch: ``output`` one logit [B, 1, h, w], ``label`` int64 [B, H, W] in {0, 1, 255}."""
        check_batch(output, label, label_dims=3)
        if output.shape[1] != 1:
            raise ValueError(f"saliency expects one logit channel, got {tuple(output.shape)}")
        prob = resize_to_label(output, label.shape[-2:]).sigmoid()[:, 0].flatten(1)  # [B, HW]
        label = label.flatten(1)
        valid = label != self.ignore_index
        positive = (label == 1) & valid
        counted = valid.any(dim=1)  # images with at least one labelled pixel
        if not bool(counted.any()):
            return
        prob, valid, positive = prob[counted], valid[counted], positive[counted]
        n_pos = positive.sum(dim=1).double()  # tp + fn
        for i, t in enumerate(saliency_thresholds(prob.device)):
            pred = (prob > t) & valid
            tp = (pred & positive).sum(dim=1).double()
            n_pred = pred.sum(dim=1).double()  # tp + fp
            union = n_pred + n_pos - tp
            self.sum_prec[i] += _ratio_or_one(tp, n_pred).sum()
            self.sum_rec[i] += _ratio_or_one(tp, n_pos).sum()
            self.sum_iou[i] += _ratio_or_one(tp, union).sum()
        self.n_images += counted.sum()

    def compute(self) -> dict[str, Tensor]:
        """``maxf``: max over thresholds of F_beta(mean P, mean R); ``max_miou``: max of mean IoU (both %)."""
        n = self.n_images.double()
        prec, rec = self.sum_prec / n, self.sum_rec / n
        den = self.beta_sq * prec + rec
        f = torch.where(den > 0, (1 + self.beta_sq) * prec * rec / den, torch.zeros_like(den))
        f = torch.where(n > 0, f, torch.full_like(f, float("nan")))
        return {"maxf": f.max() * 100.0, "max_miou": (self.sum_iou / n).max() * 100.0}
