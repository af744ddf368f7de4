"""Depth: RMSE (headline), log-RMSE, abs-rel and delta < 1.25, pooled over all valid pixels.

Pooled means every valid pixel of the split weighs the same (sums of errors and a
pixel count), not a mean of per-image or per-batch RMSEs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from mtcp.metrics.resize import check_batch, resize_to_label

#: predictions are clamped to this (metres) before logs and ratios, so a zero or
#: negative output gives a large finite error instead of NaN/inf
MIN_DEPTH = 1e-3


class DepthMetrics(Metric):
    """Depth errors over label > 0 pixels: ``rmse``, ``log_rmse`` (natural log), ``abs_rel`` (m, m, ratio)
    and ``delta1`` (% of pixels with max(p/g, g/p) < 1.25).

    All sums are float64, sum-reduced, with an int64 pixel count, so DDP is exact.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    n: Tensor
    sum_sq: Tensor
    sum_log_sq: Tensor
    sum_abs_rel: Tensor
    n_delta1: Tensor

    def __init__(self, max_depth: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_depth is not None and not max_depth > 0:
            raise ValueError(f"depth metric max_depth must be > 0 or None; got {max_depth}")
        #: labels at or beyond it are not scored (the MT-CP authors' 6.5535 m); None scores every positive label
        self.max_depth = max_depth
        self.add_state("n", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_log_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_abs_rel", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_delta1", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, output: Tensor, label: Tensor) -> None:
        """Add a batch: ``output`` [B, 1, h, w], ``label`` [B, 1, H, W] or [B, H, W] (metres; 0 = invalid)."""
        if label.dim() == 3:
            label = label.unsqueeze(1)
        check_batch(output, label, label_dims=4)
        pred = resize_to_label(output, label.shape[-2:])
        valid = label > 0 if self.max_depth is None else (label > 0) & (label < self.max_depth)
        p = pred[valid].double()
        g = label[valid].double()
        p_clamped = p.clamp_min(MIN_DEPTH)
        self.n += valid.sum()
        self.sum_sq += ((p - g) ** 2).sum()
        self.sum_log_sq += ((p_clamped.log() - g.log()) ** 2).sum()
        self.sum_abs_rel += ((p - g).abs() / g).sum()
        self.n_delta1 += (torch.maximum(p_clamped / g, g / p_clamped) < 1.25).sum()

    def compute(self) -> dict[str, Tensor]:
        """Pooled values; NaN when the split had no valid pixel."""
        n = self.n.double()
        return {
            "rmse": (self.sum_sq / n).sqrt(),
            "log_rmse": (self.sum_log_sq / n).sqrt(),
            "abs_rel": self.sum_abs_rel / n,
            "delta1": self.n_delta1.double() / n * 100.0,
        }
