"""GLS, the geometric loss strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019)."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from mtcp.balancers.base import Balancer


class GLS(Balancer):
    """Geometric loss strategy (Chennupati et al., 2019): ``total = (prod_t L_t) ** (1 / T)``.

    Computed as ``exp(mean_t log L_t)`` (the same value, without over- or underflow of the
    product). Its gradient is ``sum_t G / (T L_t) dL_t``: every task is weighted by the
    inverse of its own loss. A task whose loss is exactly 0 (a batch with no labelled pixel
    for it: no gradient either) is left out of that step's mean, otherwise the product and
    every task's gradient would vanish; if all are 0 the total is their (zero) sum.

    The logged weights are informative only: the relative gradient weights
    ``T * (1/L_t) / sum_i (1/L_i)`` of the *previous* step (0 for a zero-loss task; 1 at the
    first step).
    """

    def combine(self, projected: Tensor) -> Tensor:
        # zero losses drop out of the mean without a host-side branch (their log is taken of 1)
        positive = projected > 0
        logs = torch.where(positive, torch.log(torch.where(positive, projected, 1.0)), 0.0)
        total = torch.exp(logs.sum() / positive.sum().clamp_min(1))
        return torch.where(positive.any(), total, projected.sum())

    def update(self, task_losses: Tensor, trainer: L.Trainer) -> Tensor | None:
        positive = task_losses > 0
        if not bool(positive.any()):
            return None
        inv = torch.where(positive, 1.0 / task_losses.clamp_min(1e-300), torch.zeros_like(task_losses))
        return len(task_losses) * inv / inv.sum()
