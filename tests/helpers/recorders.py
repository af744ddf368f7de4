"""Test-only callbacks, importable by CLI subprocesses (tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch


class RankStateRecorder(L.Callback):
    """Write every rank's task-weight history and final parameters to ``<out_dir>/rank<r>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.weights: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # runs after the balancer (callbacks given on the command line come after `balancer:`)
        self.weights.append(pl_module.task_weights.detach().cpu().clone())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # parameters only: BN running statistics are per-rank between DDP's buffer broadcasts
        state = {k: v.detach().cpu().clone() for k, v in pl_module.named_parameters()}
        torch.save(
            {"weights": torch.stack(self.weights), "state": state, "initial": self.initial,
             "world_size": trainer.world_size,
             "pid": os.getpid()},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )
