"""Surface normals: angular error statistics over valid (non-zero label) pixels.

The median cannot be pooled exactly from sums, so it is read from a sum-reduced
histogram of angles over [0, 180] degrees with ``bins_per_degree`` bins per degree
(default 100, i.e. 0.01 degree bins). The reported median is the midpoint of the
bin holding the middle angle (for an even count, the mean of the midpoints of the
two middle angles' bins), so it is within half a bin (0.005 degree by default) of
the exact median. Mean, RMSE and the threshold percentages are exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mtcp.metrics.resize import check_batch, resize_to_label

THRESHOLDS_DEG = (11.25, 22.5, 30.0)


class NormalsMetrics(Metric):
    """Angle (degrees) between re-normalised prediction and label: ``mean`` (headline), ``median``,
    ``rmse``, and ``a11``/``a22``/``a30`` (% of pixels under 11.25/22.5/30 degrees).

    A zero predicted vector has no direction; it normalises to zero and counts as 90 degrees.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    n: Tensor
    sum_angle: Tensor
    sum_sq: Tensor
    n_under: Tensor
    hist: Tensor

    def __init__(self, bins_per_degree: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        if bins_per_degree < 1:
            raise ValueError(f"bins_per_degree must be >= 1, got {bins_per_degree}")
        self.bins_per_degree = int(bins_per_degree)
        self.num_bins = 180 * self.bins_per_degree
        self.add_state("n", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_angle", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_under", torch.zeros(len(THRESHOLDS_DEG), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hist", torch.zeros(self.num_bins, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, output: Tensor, label: Tensor) -> None:
        """Add a batch: ``output`` [B, 3, h, w], ``label`` [B, 3, H, W] with all-zero vectors invalid."""
        check_batch(output, label, label_dims=4)
        if output.shape[1] != 3 or label.shape[1] != 3:
            raise ValueError(
                f"normals need 3 channels, got prediction {tuple(output.shape)}, label {tuple(label.shape)}"
            )
        # resizing averages neighbouring unit vectors, so re-normalise afterwards;
        # float64 because acos loses precision near 0 degrees
        pred = F.normalize(resize_to_label(output, label.shape[-2:]).double(), dim=1, eps=1e-12)
        gt = F.normalize(label.double(), dim=1, eps=1e-12)
        valid = label.abs().sum(dim=1) > 0  # [B, H, W]
        cos = (pred * gt).sum(dim=1)[valid].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        self.n += valid.sum()
        self.sum_angle += angle.sum()
        self.sum_sq += (angle**2).sum()
        for i, t in enumerate(THRESHOLDS_DEG):
            self.n_under[i] += (angle < t).sum()
        bins = (angle * self.bins_per_degree).floor().long().clamp(0, self.num_bins - 1)
        self.hist += torch.bincount(bins, minlength=self.num_bins)

    def _median(self) -> Tensor:
        """Median from the histogram: midpoint of the middle element's bin (mean of two for even n)."""
        n = int(self.n)
        if n == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.hist.device)
        cum = self.hist.cumsum(0)
        ranks = torch.tensor([(n + 1) // 2, n // 2 + 1], device=cum.device, dtype=cum.dtype)  # 1-based
        idx = torch.searchsorted(cum, ranks)  # first bin whose cumulative count reaches the rank
        mids = (idx.double() + 0.5) / self.bins_per_degree
        return mids.mean()  # both ranks coincide for odd n

    def compute(self) -> dict[str, Tensor]:
        """Pooled statistics in degrees / %; NaN when the split had no valid pixel."""
        n = self.n.double()
        under = self.n_under.double() / n * 100.0
        return {
            "mean": self.sum_angle / n,
            "median": self._median(),
            "rmse": (self.sum_sq / n).sqrt(),
            "a11": under[0],
            "a22": under[1],
            "a30": under[2],
        }
