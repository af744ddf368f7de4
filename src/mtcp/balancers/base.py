"""The balancer interface: a Lightning `Callback` that owns the training objective.

The LightningModule hands its unweighted per-task losses to the run's balancer and
minimises what comes back: ``total = balancer.objective(losses)``. The balancer owns
everything about that objective: the projection (``proj``, identity or LPS's log), the
task weights, and any other form (GLS, uncertainty weighting, FAMO override `combine`).
The module keeps no balancer state and no balancer writes into the module.

One step, as the hooks see it:

* ``on_train_batch_start``: `prepare_step` may set this step's weights (RLW, uncertainty);
  the batch's sample ids are kept for error messages;
* ``objective(losses)`` (called by the module's ``training_step``): the total for the
  graph, and the step's statistics: the rank-averaged losses
  (``trainer.strategy.reduce(L, "mean")``, a device collective, no host read);
* ``on_before_optimizer_step`` (after backward, before the parameters change): the
  statistics of the micro-batches since the last optimizer step are read to the host,
  **once per optimizer step** (one device-to-host read; `mtcp.callbacks.FiniteGradients` makes
  the step's other, for the gradients), and checked: a
  non-finite pooled loss stops training on every rank at this same step, with one message
  naming the tasks, ranks and sample ids, before any parameter update (so no NaN reaches a
  weight, and no rank waits in a collective for one that stopped);
* ``on_train_batch_end``: the rule learns from the checked pooled losses (`update`), once per
  optimizer step: with gradient accumulation (``trainer.accumulate_grad_batches``) it sees the
  mean over the step's micro-batches, the loss of the batch that the step's gradient is for,
  and the weights stay fixed within the step (FAMO compares the losses of two parameter
  states, never of one state twice).

Distributed training: every statistic is the pooled loss vector, identical on every rank,
so every rank computes identical weights. Checkpointing: all state (weights, histories,
generator and optimizer states) goes through ``state_dict``/``load_state_dict``, so a run
resumed from ``last.ckpt`` continues with exactly the weights it would have had.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor

#: the loss projections a balancer can ask for
PROJECTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda losses: losses,
    "log": lambda losses: torch.log1p(losses + 1e-6),  # LPS: log(1 + L + 1e-6)
}


def pool_losses(trainer: Any, losses: Tensor) -> Tensor:
    """Rank-averaged detached losses, on their device (identity without a distributed strategy).

    Reduces a copy: ``strategy.reduce`` works in place.
    """
    tensor = losses.detach().float().clone()
    strategy = getattr(trainer, "strategy", None)
    return tensor if strategy is None else strategy.reduce(tensor, reduce_op="mean")


def renormalise(weights: Tensor, total: float, floor: float) -> Tensor:
    """Clamp to ``floor`` (> 0) and rescale so that the weights sum to ``total``."""
    w = weights.clamp_min(floor)
    return w * (total / w.sum())


def _gather(obj: Any) -> list[Any]:
    """``obj`` of every rank (just ``[obj]`` without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Balancer(L.Callback):
    """Base class; subclasses override `projection` and the rule's hooks.

    Hooks a subclass may override:

    * ``prepare_step(trainer, pl_module)``: called before every training forward, e.g. to
      draw or read this step's weights (RLW, uncertainty weighting);
    * ``update(pooled_losses, trainer)``: new weights after a step, from the pooled
      (rank-averaged) unweighted losses (float64, host), or None to keep them;
    * ``start_epoch(trainer)`` / ``end_epoch(trainer)``: new weights at an epoch boundary;
    * ``combine(projected)``: the training objective from the projected losses, for
      balancers whose objective is not ``sum_t w_t proj(L_t)``.
    """

    #: "identity" or "log" (``log(1 + L + 1e-6)``), applied to each task loss by `objective`
    projection: str = "identity"

    def __init__(self) -> None:
        self.weights: Tensor | None = None
        #: the weights the last `objective` call used (what the step's forward was weighted with)
        self.used_weights: Tensor | None = None
        self.task_names: list[str] = []
        self._trainer: Any = None
        self._device_weights: tuple[Tensor | None, Tensor | None] = (None, None)  # (weights, their device copy)
        self._open: list[Tensor] = []  # [2, T] (local, pooled) per micro-batch since the last check, on device
        self._open_ids: list[list[Any]] = []
        self._checked: list[Tensor] = []  # an optimizer step's pooled losses, checked, not yet learnt from
        self._batch_ids: list[Any] = []

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def project(self, losses: Tensor) -> Tensor:
        """The projection this balancer optimises (``proj``)."""
        return PROJECTIONS[self.projection](losses)

    # -- the module's entry point ----------------------------------------------------------
    def objective(self, losses: Tensor) -> Tensor:
        """The training total from this step's unweighted task losses [T] (on the graph).

        Also records the step's statistics: this rank's losses and their rank average, kept
        on the device until `on_before_optimizer_step` reads them.
        """
        if self.weights is None:
            raise RuntimeError(f"{type(self).__name__}.objective called before the balancer's setup; "
                               "pass the balancer to the Trainer's callbacks")
        local = losses.detach().float()
        self._open.append(torch.stack([local, pool_losses(self._trainer, local)]))
        self._open_ids.append(self._batch_ids)
        self.used_weights = self.weights
        return self.combine(self.project(losses))

    def combine(self, projected: Tensor) -> Tensor:
        """The training objective from the projected losses [T]: ``sum_t w_t proj(L_t)`` by default."""
        return (self.weights_on(projected) * projected).sum()

    def weights_on(self, like: Tensor) -> Tensor:
        """The current weights on ``like``'s device and dtype (copied there once per change)."""
        assert self.weights is not None
        source, cached = self._device_weights
        if source is not self.weights or cached is None or cached.device != like.device or cached.dtype != like.dtype:
            cached = self.weights.to(like)
            self._device_weights = (self.weights, cached)
        return cached

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self.task_names = list(pl_module.task_names)
        if self.weights is None or len(self.weights) != len(self.task_names):
            self.weights = self.initial_weights(len(self.task_names))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.prepare_step(trainer, pl_module)
        meta = batch.get("meta", {}) if isinstance(batch, dict) else {}
        self._batch_ids = list(meta.get("id", []))
        assert self.weights is not None
        for name, w in zip(self.task_names, self.weights.tolist(), strict=True):
            pl_module.log(f"train/weight_{name}", w, on_step=True, on_epoch=False, prog_bar=True)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        """Read and check the statistics of this optimizer step's micro-batches (one host read)."""
        if not self._open:
            return
        stats = torch.stack(self._open).double().cpu()  # [k, 2, T]: this hook's one device-to-host read
        ids, self._open, self._open_ids = self._open_ids, [], []
        if not bool(torch.isfinite(stats[:, 1]).all()):  # pooled: the same verdict on every rank
            self._stop_on_non_finite(trainer, stats, ids)
        self._checked.append(stats[:, 1].mean(dim=0))  # one observation per optimizer step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for pooled in self._checked:
            for name, value in zip(self.task_names, self.project(pooled).tolist(), strict=True):
                pl_module.log(f"train/proj_loss_{name}", value, on_step=True, on_epoch=False)
            self._install(self.update(pooled, trainer))
        self._checked = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(self.start_epoch(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(self.end_epoch(trainer))

    def _stop_on_non_finite(self, trainer: Any, stats: Tensor, ids: list[list[Any]]) -> None:
        """Raise the same `FloatingPointError` on every rank, naming what each rank saw."""
        rank = int(getattr(trainer, "global_rank", 0))
        local = [
            (rank, [t for t, ok in zip(self.task_names, torch.isfinite(row[0]).tolist(), strict=True) if not ok],
             batch_ids)
            for row, batch_ids in zip(stats, ids, strict=True)
        ]
        seen = [entry for per_rank in _gather([e for e in local if e[1]]) for entry in per_rank]
        bad_tasks = sorted({t for _, tasks, _ in seen for t in tasks}, key=self.task_names.index)
        where = "; ".join(f"rank {r}: task(s) {tasks}, batch ids {batch_ids}" for r, tasks, batch_ids in seen)
        raise FloatingPointError(
            f"non-finite training loss for task(s) {bad_tasks} at step {getattr(trainer, 'global_step', '?')} "
            f"({where}); check these samples' labels and the learning rate. Training stopped on every rank "
            "before the parameters were updated."
        )

    def _install(self, new: Tensor | None) -> None:
        if new is None:
            return
        new = new.detach().double().cpu()
        if not bool(torch.isfinite(new).all()):
            raise FloatingPointError(f"{type(self).__name__}: the rule produced non-finite weights {new.tolist()} "
                                     f"for tasks {self.task_names}")
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
