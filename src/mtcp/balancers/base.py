"""The balancer interface: a Lightning `Callback` that owns the task weights.

The LightningModule computes ``total = sum_t w_t * proj(L_t)`` from its
``task_weights`` buffer and its loss projection; a balancer decides both. It sets the
projection at setup, writes the weights into the module before every training
forward (``on_train_batch_start``) and observes the per-task losses the step returns
(``on_train_batch_end``). Statistics it learns from must be reduced across DDP ranks
(``trainer.strategy.reduce``), so every rank computes the same weights; its state goes
into the checkpoint through ``state_dict``/``load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor


class Balancer(L.Callback):
    """Base class; subclasses override `projection` and `update`."""

    #: "identity" or "log" (``log(1 + L + 1e-6)``), applied by the module to each task loss
    projection: str = "identity"

    def __init__(self) -> None:
        self.weights: Tensor | None = None
        self.task_names: list[str] = []

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.task_names = list(pl_module.task_names)
        if self.weights is None or len(self.weights) != len(self.task_names):
            self.weights = self.initial_weights(len(self.task_names))
        pl_module.loss_projection = self.projection

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        assert self.weights is not None
        pl_module.task_weights.copy_(self.weights.to(pl_module.task_weights))
        for name, w in zip(self.task_names, self.weights.tolist(), strict=True):
            pl_module.log(f"train/weight_{name}", w, on_step=True, on_epoch=False, prog_bar=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        losses = outputs["task_losses"].detach().float()
        new = self.update(losses, trainer)
        if new is not None:
            self.weights = new.detach().float().cpu()

    # -- rule --------------------------------------------------------------------------
    def initial_weights(self, num_tasks: int) -> Tensor:
        return torch.ones(num_tasks)

    def update(self, task_losses: Tensor, trainer: L.Trainer) -> Tensor | None:
        """New weights after a step with unweighted ``task_losses`` [T]; None keeps them."""
        return None

    # -- checkpoint --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "task_names": self.task_names}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights = state_dict["weights"]
        self.task_names = state_dict["task_names"]
