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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the weights this rank's objective used at this step
        self.weights.append(pl_module.balancer.used_weights.detach().cpu().clone())

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


class SpoilValidationOfEpoch(L.Callback):
    """Add large noise to every parameter before epoch ``epoch``'s validation: that epoch's
    ``val/loss`` is then the worst, so the best checkpoint is an earlier epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn(p.shape, generator=generator).to(p) * 3.0)


class InfiniteDepthLabel(L.Callback):
    """On rank ``rank`` at training step ``step``, set one valid depth label pixel to +inf (so the
    depth loss becomes inf on that rank only); every rank writes its pid to ``<out_dir>/rank<r>.pid``."""

    def __init__(self, rank: int, step: int, out_dir: str) -> None:
        self.rank, self.step, self.out_dir = rank, step, Path(out_dir)

    def on_train_start(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.pid").write_text(str(os.getpid()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            depth = batch["depth"]
            index = (depth > 0).nonzero()[0]
            depth[tuple(index)] = float("inf")


class NanGradientOnRank(InfiniteDepthLabel):
    """On rank ``rank`` at training step ``step``, turn the first parameter's gradient to NaN *before*
    DDP averages it (a tensor hook, as a NaN born in backward would be); the losses stay finite."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            first = next(pl_module.parameters())
            first.register_hook(lambda grad: torch.full_like(grad, float("nan")))
