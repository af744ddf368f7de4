"""Test-only callbacks for the balancer tests, importable by CLI subprocesses (tests/ on PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class BalancerProbe(L.Callback):
    """Record, per training step on this rank, the task weights the step's forward used and this
    rank's own (unreduced) task losses; write them to ``<out_dir>/rank<r>.pt`` when training ends."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.weights: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []
        self.steps: list[int] = []
        self.ids: list[list[str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the weights this step's objective used, whatever the order of the callbacks
        self.weights.append(pl_module.balancer.used_weights.detach().cpu().double().clone())
        self.losses.append(outputs["task_losses"].detach().cpu().double().clone())
        self.steps.append(int(trainer.global_step))  # optimizer steps done, this one included
        self.ids.append(list(batch["meta"]["id"]))

    def on_train_end(self, trainer, pl_module) -> None:
        from mtcp.balancers import Balancer

        # the balancer's own state on this rank (history, logits, ...): the ranks computed the same
        balancers = [c for c in trainer.callbacks if isinstance(c, Balancer)]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"weights": torch.stack(self.weights), "losses": torch.stack(self.losses), "steps": self.steps,
             "ids": self.ids,
             "world_size": trainer.world_size,
             "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
             "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
             "balancer_state": balancers[0].state_dict() if balancers else None},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


class StopAfterEpochs(L.Callback):
    """Stop training after ``epochs`` epochs (the checkpoint of the last one is still written):
    an interruption at an epoch boundary that keeps the run's ``max_epochs`` (and LR schedule)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
