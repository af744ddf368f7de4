"""The balancer interface: a Lightning `Callback` that owns the task weights.

The LightningModule computes ``total = sum_t w_t * proj(L_t)`` from its
``task_weights`` buffer and its loss projection; a balancer decides both. It sets the
projection at setup, writes the weights into the module before every training
forward (``on_train_batch_start``) and observes the per-task losses the step returns
(``on_train_batch_end``). A balancer whose objective is not a weighted sum (GLS,
uncertainty weighting, FAMO) also installs a *loss combiner* on the module
(``pl_module.loss_combiner``), which the module then calls instead of the weighted sum.

Distributed training: every statistic a balancer learns from is the *pooled* loss
vector, ``trainer.strategy.reduce(L, reduce_op="mean")`` over the DDP ranks, computed
in ``on_train_batch_end`` (a hook every rank runs), so every rank computes identical
weights from identical inputs. Checkpointing: all state (weights, histories, generator
and optimizer states) goes through ``state_dict``/``load_state_dict``, so a run resumed
from ``last.ckpt`` continues with exactly the weights it would have had.

Non-finite losses: the module raises ``FloatingPointError`` on a non-finite training
loss before any balancer sees it. Should a balancer still be handed a pooled loss
vector with a NaN or inf (another module, a custom step), it **skips that step's
statistics with a warning** and keeps its weights; weights a rule produces are checked
too, and non-finite ones are never installed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtcp.module import PROJECTIONS

#: ``(module, projected_losses [T]) -> total``: an objective other than the weighted sum
LossCombiner = Callable[[L.LightningModule, Tensor], Tensor]


def pool_losses(trainer: Any, losses: Tensor) -> Tensor:
    """Rank-averaged losses, float64 on the CPU (identity without a distributed strategy).

    Reduces a copy: ``strategy.reduce`` works in place and ``losses`` may be shared with
    other callbacks (``outputs["task_losses"]``).
    """
    strategy = getattr(trainer, "strategy", None)
    tensor = losses.detach().float().clone()
    if strategy is not None:
        tensor = strategy.reduce(tensor, reduce_op="mean")
    return tensor.double().cpu()


def renormalise(weights: Tensor, total: float, floor: float) -> Tensor:
    """Clamp to ``floor`` (> 0) and rescale so that the weights sum to ``total``."""
    w = weights.clamp_min(floor)
    return w * (total / w.sum())


class Balancer(L.Callback):
    """Base class; subclasses override `projection` and `update` (and optionally the rest).

    Hooks a subclass may override:

    * ``prepare_step(trainer, pl_module)``: called before every training forward, e.g. to
      draw or read this step's weights (RLW, uncertainty weighting);
    * ``update(pooled_losses, trainer)``: new weights after a step, from the pooled
      (rank-averaged) unweighted losses, or None to keep them;
    * ``end_epoch(trainer)``: new weights at the end of a training epoch, or None;
    * ``combine(pl_module, projected)``: the training objective, for balancers whose
      objective is not ``sum_t w_t proj(L_t)`` (set ``uses_combiner = True``).
    """

    #: "identity" or "log" (``log(1 + L + 1e-6)``), applied by the module to each task loss
    projection: str = "identity"
    #: True where `combine` replaces the module's weighted sum
    uses_combiner: bool = False

    def __init__(self) -> None:
        self.weights: Tensor | None = None
        self.task_names: list[str] = []

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.task_names = list(pl_module.task_names)
        if self.weights is None or len(self.weights) != len(self.task_names):
            self.weights = self.initial_weights(len(self.task_names))
        pl_module.loss_projection = self.projection
        pl_module.loss_combiner = self.combine if self.uses_combiner else None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.prepare_step(trainer, pl_module)
        assert self.weights is not None
        pl_module.task_weights.copy_(self.weights.to(pl_module.task_weights))
        for name, w in zip(self.task_names, self.weights.tolist(), strict=True):
            pl_module.log(f"train/weight_{name}", w, on_step=True, on_epoch=False, prog_bar=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        pooled = pool_losses(trainer, outputs["task_losses"])
        if not bool(torch.isfinite(pooled).all()):
            warnings.warn(
                f"{type(self).__name__}: non-finite pooled task losses {pooled.tolist()} for tasks "
                f"{self.task_names} at step {getattr(trainer, 'global_step', '?')}; this step's statistics "
                "are skipped and the weights kept",
                RuntimeWarning, stacklevel=2,
            )
            return
        projected = PROJECTIONS[self.projection](pooled)
        for name, value in zip(self.task_names, projected.tolist(), strict=True):
            pl_module.log(f"train/proj_loss_{name}", value, on_step=True, on_epoch=False)
        self._install(self.update(pooled, trainer))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(self.start_epoch(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(self.end_epoch(trainer))

    def _install(self, new: Tensor | None) -> None:
        if new is None:
            return
        new = new.detach().double().cpu()
        if not bool(torch.isfinite(new).all()):
            warnings.warn(f"{type(self).__name__}: rule produced non-finite weights {new.tolist()}; "
                          "keeping the previous weights", RuntimeWarning, stacklevel=3)
            return
        self.weights = new.float()

    # -- rule --------------------------------------------------------------------------
    def initial_weights(self, num_tasks: int) -> Tensor:
        return torch.ones(num_tasks)

    def prepare_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set ``self.weights`` for the coming forward where they depend on the step (default: no-op)."""

    def update(self, task_losses: Tensor, trainer: L.Trainer) -> Tensor | None:
        """New weights after a step with pooled unweighted ``task_losses`` [T]; None keeps them."""
        return None

    def start_epoch(self, trainer: L.Trainer) -> Tensor | None:
        """New weights at the start of a training epoch; None keeps them."""
        return None

    def end_epoch(self, trainer: L.Trainer) -> Tensor | None:
        """New weights at the end of a training epoch; None keeps them."""
        return None

    def combine(self, pl_module: L.LightningModule, projected: Tensor) -> Tensor:
        """The training objective from the projected losses [T] (only if ``uses_combiner``)."""
        raise NotImplementedError

    # -- checkpoint --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "task_names": list(self.task_names)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = list(state_dict["task_names"])
        if self.task_names and saved != self.task_names:
            raise ValueError(
                f"{type(self).__name__}: checkpoint balancer state is for tasks {saved} but the model has "
                f"tasks {self.task_names}"
            )
        self.task_names = saved
        self.weights = state_dict["weights"]
