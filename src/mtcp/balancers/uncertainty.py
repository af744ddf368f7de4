"""Uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018)."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from mtcp.balancers.base import Balancer
from mtcp.tasks import get_task

#: the key of the log-variances in the module's ``balancer_params``
PARAM_NAME = "uncertainty_log_vars"


class UncertaintyWeighting(Balancer):
    """Homoscedastic-uncertainty weighting (Kendall et al., CVPR 2018) with learned log-variances.

    ``total = sum_t a_t exp(-s_t) L_t + b_t s_t`` with ``s_t = log sigma_t^2`` learned jointly
    with the network (initialised to ``init_log_var``). Factors:

    * default (``kendall_factors=False``): ``a_t = b_t = 1`` for every task, the uniform form
      most re-implementations use; the optimum is ``s_t = log L_t``;
    * ``kendall_factors=True``: the paper's likelihood factors: regression tasks (depth,
      normals; Gaussian likelihood) ``a_t = b_t = 1/2``, classification tasks (semseg, human
      parts, saliency, edge; scaled softmax) ``a_t = 1, b_t = 1/2``.

    The ``s_t`` are parameters of the LightningModule (``pl_module.balancer_params``, key
    ``"uncertainty_log_vars"``), created by this callback's ``setup`` for ``fit``, which Lightning
    runs before ``configure_optimizers`` and before the DDP wrapping: the optimizer updates them
    (in their own parameter group, without weight decay), DDP synchronises their gradients,
    and the checkpoint holds them (``MultiTaskModule.on_load_checkpoint`` recreates them, so
    ``load_from_checkpoint`` works without this balancer). The logged weights are the
    effective ``a_t exp(-s_t)`` of the coming step; the projection is the identity.

    Args:
        kendall_factors: use the paper's per-likelihood factors instead of the uniform form.
        init_log_var: initial ``s_t``.
    """

    def __init__(self, kendall_factors: bool = False, init_log_var: float = 0.0) -> None:
        super().__init__()
        self.kendall_factors = bool(kendall_factors)
        self.init_log_var = float(init_log_var)
        self.loss_factor = torch.ones(0)
        self.reg_factor = torch.ones(0)

    def factors(self, task_names: list[str]) -> tuple[Tensor, Tensor]:
        """``(a, b)`` per task: loss and regulariser factors (see the class docstring)."""
        if not self.kendall_factors:
            ones = torch.ones(len(task_names))
            return ones, ones.clone()
        regression = torch.tensor([not get_task(n).label_is_dense_class for n in task_names])
        a = torch.where(regression, torch.tensor(0.5), torch.tensor(1.0))
        return a, torch.full((len(task_names),), 0.5)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.loss_factor, self.reg_factor = self.factors(self.task_names)
        params = pl_module.balancer_params
        if stage == "fit" and PARAM_NAME not in params:
            params[PARAM_NAME] = nn.Parameter(torch.full((self.num_tasks,), self.init_log_var))
        self._log_vars = params[PARAM_NAME] if PARAM_NAME in params else None

    def log_vars(self, pl_module: L.LightningModule) -> Tensor:
        return pl_module.balancer_params[PARAM_NAME]

    def prepare_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = self.log_vars(pl_module).detach().cpu().float()
        self.weights = self.loss_factor * torch.exp(-s)

    def combine(self, projected: Tensor) -> Tensor:
        s = self._log_vars
        a, b = self.loss_factor.to(s), self.reg_factor.to(s)
        return (a * torch.exp(-s) * projected + b * s).sum()
