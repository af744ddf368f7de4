"""Uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtcp.balancers.base import Balancer
from mtcp.tasks import get_task


class UncertaintyWeighting(Balancer):
    """Homoscedastic-uncertainty weighting (Kendall et al., CVPR 2018) with learned log-variances.

    ``total = sum_t a_t exp(-s_t) L_t + b_t s_t`` with ``s_t = log sigma_t^2`` learned jointly
    with the network (initialised to ``init_log_var``). Factors:

    * default (``kendall_factors=False``): ``a_t = b_t = 1`` for every task, the uniform form
      most re-implementations use; the optimum is ``s_t = log L_t``;
    * ``kendall_factors=True``: the paper's likelihood factors: regression tasks (depth,
      normals; Gaussian likelihood) ``a_t = b_t = 1/2``, classification tasks (semseg, human
      parts, saliency, edge; scaled softmax) ``a_t = 1, b_t = 1/2``.

    The ``s_t`` belong to this balancer (its state in the checkpoint, restored by Lightning's
    callback state loading) and have their own Adam, like FAMO's logits. Their gradient needs
    no autograd: ``dtotal/ds_t = b_t - a_t exp(-s_t) L_t`` is linear in ``L_t``, so on the pooled
    (rank-averaged) losses it is exactly the rank average of every rank's gradient, and every
    rank takes the same step. The network sees the weights ``a_t exp(-s_t)`` of the current
    ``s`` (the logged weights); the projection is the identity.

    Args:
        kendall_factors: use the paper's per-likelihood factors instead of the uniform form.
        init_log_var: initial ``s_t``.
        lr: learning rate of the log-variances' Adam.
    """

    def __init__(self, kendall_factors: bool = False, init_log_var: float = 0.0, lr: float = 1e-2) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"balancer.init_args.lr of UncertaintyWeighting must be > 0; got {lr}")
        self.kendall_factors = bool(kendall_factors)
        self.init_log_var = float(init_log_var)
        self.lr = float(lr)
        self.loss_factor = torch.ones(0, dtype=torch.float64)
        self.reg_factor = torch.ones(0, dtype=torch.float64)
        self.log_vars: Tensor | None = None
        self.optimizer: torch.optim.Adam | None = None

    def factors(self, task_names: list[str]) -> tuple[Tensor, Tensor]:
        """``(a, b)`` per task: loss and regulariser factors (see the class docstring)."""
        if not self.kendall_factors:
            ones = torch.ones(len(task_names))
            return ones, ones.clone()
        regression = torch.tensor([not get_task(n).label_is_dense_class for n in task_names])
        a = torch.where(regression, torch.tensor(0.5), torch.tensor(1.0))
        return a, torch.full((len(task_names),), 0.5)

    def _build(self, log_vars: Tensor) -> None:
        self.log_vars = log_vars.detach().double().clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.log_vars], lr=self.lr, foreach=False)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        a, b = self.factors(self.task_names)
        self.loss_factor, self.reg_factor = a.double(), b.double()
        if self.log_vars is None or len(self.log_vars) != self.num_tasks:
            self._build(torch.full((self.num_tasks,), self.init_log_var))
        self.weights = self.current_weights()

    def current_weights(self) -> Tensor:
        assert self.log_vars is not None
        return (self.loss_factor * torch.exp(-self.log_vars.detach())).float()

    def combine(self, projected: Tensor) -> Tensor:
        assert self.log_vars is not None
        regulariser = float((self.reg_factor * self.log_vars.detach()).sum())  # host value: no gradient anyway
        return (self.weights_on(projected) * projected).sum() + regulariser

    def update(self, task_losses: Tensor, trainer: L.Trainer) -> Tensor | None:
        assert self.log_vars is not None and self.optimizer is not None
        s = self.log_vars.detach()
        self.optimizer.zero_grad()
        self.log_vars.grad = self.reg_factor - self.loss_factor * torch.exp(-s) * task_losses.double()
        self.optimizer.step()
        return self.current_weights()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "log_vars": None if self.log_vars is None else self.log_vars.detach().clone(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict["log_vars"] is not None:
            self._build(state_dict["log_vars"])
            assert self.optimizer is not None
            self.optimizer.load_state_dict(state_dict["optimizer"])
            if len(self.loss_factor) == len(self.log_vars):  # after setup: the weights of these log-variances
                self.weights = self.current_weights()
