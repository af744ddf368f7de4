"""Edge detection: a pixel-exact ODS F-measure.

Caveat: this is NOT the official boundary benchmark. The BSDS protocol used for
PASCAL-Context edges (ODS/OIS via the external MATLAB/C++ toolbox) thins the
prediction (non-maximum suppression) and matches predicted to ground-truth
boundary pixels within a distance tolerance (maxDist = 0.0075 of the diagonal for
PASCAL in MTI-Net/ATRC). Here a predicted pixel is a true positive only if the
label is 1 at exactly that pixel, so values are lower than, and not comparable to,
published odsF numbers; use it to compare runs of this project with each other.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from mtcp.metrics.resize import check_batch, resize_to_label


class EdgeMetrics(Metric):
    """``odsf`` (%): max over fixed thresholds of F1 from TP/FP/FN pooled over the whole split.

    Thresholds are ``k / (num_thresholds + 1)`` for k = 1..num_thresholds (0.01..0.99
    by default); a pixel is predicted as edge when sigmoid(logit) > threshold; label
    255 is ignored. A threshold with TP + FP + FN = 0 has an undefined F and is skipped;
    ``odsf`` is NaN if every threshold is undefined.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: Tensor
    fp: Tensor
    fn: Tensor

    def __init__(self, num_thresholds: int = 99, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
        self.num_thresholds = int(num_thresholds)
        self.ignore_index = int(ignore_index)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(self.num_thresholds, dtype=torch.int64), dist_reduce_fx="sum")

    def thresholds(self, device: torch.device | None = None) -> Tensor:
        """The evaluation thresholds, strictly inside (0, 1)."""
        k = self.num_thresholds
        return torch.linspace(1.0 / (k + 1), k / (k + 1), k, device=device)

    def update(self, output: Tensor, label: Tensor) -> None:
        """Add a batch: ``output`` one logit [B, 1, h, w], ``label`` int64 [B, H, W] in {0, 1, 255}."""
        check_batch(output, label, label_dims=3)
        if output.shape[1] != 1:
            raise ValueError(f"edge expects one logit channel, got {tuple(output.shape)}")
        prob = resize_to_label(output, label.shape[-2:]).sigmoid()[:, 0]
        valid = label != self.ignore_index
        prob = prob[valid]
        positive = label[valid] == 1
        n_pos = positive.sum()
        for i, t in enumerate(self.thresholds(prob.device)):
            pred = prob > t
            tp = (pred & positive).sum()
            self.tp[i] += tp
            self.fp[i] += pred.sum() - tp
            self.fn[i] += n_pos - tp

    def compute(self) -> dict[str, Tensor]:
        """Best F1 over thresholds, in %."""
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        den = 2 * tp + fp + fn
        f = torch.where(den > 0, 2 * tp / den, torch.full_like(den, float("-inf")))
        best = f.max()
        return {"odsf": torch.where(torch.isinf(best), torch.full_like(best, float("nan")), best * 100.0)}
