"""The balancer's task weights over training as one W&B line chart (``train/weight_history``).

Every logger already gets each weight as a scalar per step (``train/weight_<task>``, in the CSV,
TensorBoard and W&B histories); W&B draws those as one panel per task. This chart puts all tasks'
weights in one panel against the optimizer step, which is how the balancers are compared. The CLI
adds the callback when a `WandbLogger` is configured.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from mtcp.balancers import Balancer


class WeightChart(L.Callback):
    """Record the weights each optimizer step uses; at the end of fit, log them as one line chart.

    Args:
        key: the W&B key of the chart.
    """

    def __init__(self, key: str = "train/weight_history") -> None:
        self.key = key
        self.steps: list[int] = []
        self.weights: list[list[float]] = []
        self.task_names: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        balancer = next((c for c in trainer.callbacks if isinstance(c, Balancer)), None)
        if balancer is None or balancer.weights is None or (self.steps and self.steps[-1] == trainer.global_step):
            return  # no balancer, or a further micro-batch of the same optimizer step
        self.task_names = list(balancer.task_names)
        self.steps.append(int(trainer.global_step))
        self.weights.append([float(w) for w in balancer.weights.tolist()])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not self.steps or not trainer.is_global_zero:
            return
        import wandb

        per_task = [list(series) for series in zip(*self.weights, strict=True)]
        chart = wandb.plot.line_series(xs=self.steps, ys=per_task, keys=self.task_names, title="task weights",
                                       xname="optimizer step")
        for logger in loggers:
            logger.experiment.log({self.key: chart})
