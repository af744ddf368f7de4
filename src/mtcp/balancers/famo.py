"""FAMO, fast adaptive multitask optimization (Liu, Liang, Kumar, Sun and Yang, "FAMO: Fast
Adaptive Multitask Optimization", NeurIPS 2023)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtcp.balancers.base import Balancer


class FAMO(Balancer):
    """FAMO (Liu et al., NeurIPS 2023), the loss-only form: balance the tasks' log-loss decrease.

    * weights: ``z = softmax(xi)`` over learnable logits ``xi`` (zeros at start); the module's
      weights show ``T * z``;
    * objective: ``T * sum_t z_t log L_t / c`` with ``c = sum_t z_t / L_t`` (detached), whose
      gradient is ``T * sum_t (z_t / L_t) / c * dL_t``: a convex combination of the task
      gradients, scaled by T so that the effective weights sum to T as for the other balancers;
    * logits update after every step k >= 1, from the pooled (rank-averaged) losses of two
      consecutive steps: ``delta_t = log L_t(k-1) - log L_t(k)`` (the per-task log-loss
      decrease), gradient ``g = J_softmax(xi)^T delta``, i.e. ``g_j = z_j (delta_j - z . delta)``,
      and one step of the logits' own Adam (lr 0.025, weight decay 1e-3 as in the paper)
      that *descends* along g: tasks that improved more lose weight.

    The paper recomputes the losses on the same batch after the parameter update; this
    loss-only variant uses consecutive steps' (different batches') losses, so it costs no
    extra forward. A task whose loss is exactly 0 (no labelled pixel in the batch, no
    gradient) is left out of ``c`` and of the objective, and its ``delta`` is 0 for the two
    updates it touches. Logits, their Adam state and the previous losses are in the checkpoint.

    Args:
        lr: learning rate of the logits' Adam.
        weight_decay: Adam's (L2) weight decay on the logits (the paper's gamma).
    """

    def __init__(self, lr: float = 0.025, weight_decay: float = 1e-3) -> None:
        super().__init__()
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"balancer.init_args of FAMO: lr must be > 0 and weight_decay >= 0; got {lr}, "
                             f"{weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.logits: Tensor | None = None
        self.optimizer: torch.optim.Adam | None = None
        self.previous: Tensor | None = None

    def _build(self, num_tasks: int) -> None:
        self.logits = torch.zeros(num_tasks, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=self.lr, weight_decay=self.weight_decay,
                                          foreach=False)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.logits is None or len(self.logits) != self.num_tasks:
            self._build(self.num_tasks)
            self.previous = None

    def current_weights(self) -> Tensor:
        assert self.logits is not None
        return len(self.logits) * torch.softmax(self.logits.detach(), dim=0)

    def combine(self, projected: Tensor) -> Tensor:
        # a zero loss (no labelled pixel) drops out without a host-side branch: its log is taken of 1
        # and its weight is 0; with no positive loss at all the total is the (zero) sum of the losses
        positive = projected > 0
        weights = torch.where(positive, self.weights_on(projected), 0.0)
        safe = torch.where(positive, projected, 1.0)
        c = (weights / safe).sum().detach()
        total = len(projected) * (weights * torch.log(safe)).sum() / c.clamp_min(1e-30)
        return torch.where(positive.any(), total, projected.sum())

    def update(self, task_losses: Tensor, trainer: L.Trainer) -> Tensor | None:
        if self.logits is None:
            self._build(len(task_losses))
        assert self.logits is not None and self.optimizer is not None
        current = task_losses.detach().double().cpu()
        previous, self.previous = self.previous, current
        if previous is None:
            return None
        valid = (previous > 0) & (current > 0)
        log_previous = torch.log(previous.clamp_min(1e-300))
        log_current = torch.log(current.clamp_min(1e-300))
        delta = torch.where(valid, log_previous - log_current, torch.zeros_like(current))
        z = torch.softmax(self.logits.detach(), dim=0)
        self.optimizer.zero_grad()
        self.logits.grad = z * (delta - (z * delta).sum())
        self.optimizer.step()
        return self.current_weights()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "logits": None if self.logits is None else self.logits.detach().clone(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "previous": self.previous,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.previous = state_dict["previous"]
        logits = state_dict["logits"]
        if logits is None:
            self.logits, self.optimizer = None, None
            return
        self._build(len(logits))
        assert self.logits is not None and self.optimizer is not None
        with torch.no_grad():
            self.logits.copy_(logits)
        if state_dict["optimizer"] is not None:
            self.optimizer.load_state_dict(state_dict["optimizer"])
