"""Saliency: maxF (headline) and max mIoU over 15 thresholds, per-image P/R averaged.

Protocol (following the ASTMT evaluation that MTI-Net, ATRC, InvPT and the MT-CP
authors reuse): the sigmoid of the logit is binarised as ``prob > t`` for t in
``linspace(0.2, 0.9, 15)``; per image and threshold we take precision, recall and
foreground IoU over the non-ignored pixels; these are averaged over images, and
F_beta is computed from the averaged P and R (not averaged per image). ``maxf`` and
``max_miou`` are maxima over thresholds.

beta^2 defaults to 1 (F = 2PR / (P + R)), as in the reference ``maxF``; some
ATRC/InvPT-derived code also reports a pooled, precision-weighted variant with
beta^2 = 0.3, which gives higher numbers: ``beta_sq=0.3`` changes the weight here
(the per-image averaging stays).

Edge cases (tp, fp, fn counted over the non-ignored pixels of one image), chosen by
``empty_convention``:

- ``"reference"`` (default): P = tp / (tp + fp) and R = tp / (tp + fn) with 0 for an
  empty denominator, i.e. the reference's ``tp / (tp + fp + 1e-12)`` and
  ``tp / (tp + fn + 1e-12)``. An image with nothing predicted at a threshold has
  precision 0; an image without a salient pixel has recall 0; so an image empty in
  both label and prediction scores P = R = 0. With this default, ``maxf`` can be
  compared with the saliency maxF that ASTMT, MTI-Net, ATRC, InvPT and MT-CP report
  on PASCAL-Context.
- ``"one"`` (the convention mtcp used before): an empty denominator scores 1, i.e.
  nothing predicted gives precision 1 and no salient pixel gives recall 1, so a
  both-empty image scores P = R = 1. Higher, and not comparable with those papers.

In both, IoU is intersection / union, and 1 when prediction and label are both empty
(the reference ``jaccard``); ``max_miou`` does not depend on the convention. An image
whose pixels are all ignored (255) is not counted at all.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from mtcp.metrics.resize import check_batch, resize_to_label

EMPTY_CONVENTIONS = ("reference", "one")


def saliency_thresholds(device: torch.device | None = None) -> Tensor:
    """The 15 evaluation thresholds 0.20, 0.25, ..., 0.90 (float32)."""
    return torch.linspace(0.2, 0.9, 15, device=device)


def _ratio_or(num: Tensor, den: Tensor, fill: float) -> Tensor:
    """num/den, and ``fill`` where den = 0 (an empty prediction, label or union)."""
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, fill))


class SaliencyMetrics(Metric):
    """``maxf`` and ``max_miou`` in %, from per-image precision/recall/IoU averaged over images.

    ``empty_convention``: ``"reference"`` (default; an empty prediction has precision 0
    and an empty label recall 0, as in the ASTMT / MTI-Net / ATRC / InvPT / MT-CP
    evaluation) or ``"one"`` (both score 1; mtcp's former convention). See the module
    docstring.

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

    def __init__(
        self,
        beta_sq: float = 1.0,
        ignore_index: int = 255,
        empty_convention: Literal["reference", "one"] = "reference",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if beta_sq <= 0:
            raise ValueError(f"beta_sq must be > 0, got {beta_sq}")
        if empty_convention not in EMPTY_CONVENTIONS:
            raise ValueError(
                f"empty_convention must be one of {', '.join(map(repr, EMPTY_CONVENTIONS))}, got {empty_convention!r}"
            )
        self.beta_sq = float(beta_sq)
        self.ignore_index = int(ignore_index)
        self.empty_convention = empty_convention
        self._empty_pr = 0.0 if empty_convention == "reference" else 1.0  # P (R) of an empty prediction (label)
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
            self.sum_prec[i] += _ratio_or(tp, n_pred, self._empty_pr).sum()
            self.sum_rec[i] += _ratio_or(tp, n_pos, self._empty_pr).sum()
            self.sum_iou[i] += _ratio_or(tp, union, 1.0).sum()  # both empty: IoU 1
        self.n_images += counted.sum()

    def curves(self) -> dict[str, Tensor]:
        """Per-threshold (15) mean ``precision``, ``recall``, ``iou`` over images and ``f`` (fractions, float64).

        Reads this process's states; under DDP, ``compute()`` is what synchronises them.
        """
        n = self.n_images.double()
        prec, rec = self.sum_prec / n, self.sum_rec / n
        den = self.beta_sq * prec + rec
        f = torch.where(den > 0, (1 + self.beta_sq) * prec * rec / den, torch.zeros_like(den))
        f = torch.where(n > 0, f, torch.full_like(f, float("nan")))
        return {"precision": prec, "recall": rec, "f": f, "iou": self.sum_iou / n}

    def compute(self) -> dict[str, Tensor]:
        """``maxf``: max over thresholds of F_beta(mean P, mean R); ``max_miou``: max of mean IoU (both %)."""
        c = self.curves()
        return {"maxf": c["f"].max() * 100.0, "max_miou": c["iou"].max() * 100.0}
