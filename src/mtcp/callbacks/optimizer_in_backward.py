"""The optimizer stepped inside backward during ``fit`` (``model.optimizer_in_backward: true``).

`mtcp.optim.StepInBackward` does the stepping; this callback fits it into Lightning's loop. It
refuses, before training, the settings that need every gradient of a step at once, and it keeps
the balancer's promise that no non-finite loss reaches a weight: the balancer checks the losses
after backward (`mtcp.balancers.base`), too late once backward itself updates, so the loss is read
once before backward and a non-finite one leaves the stepper disarmed for that step; the
gradients then accumulate as usual and the balancer's check stops the run with its message.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from mtcp.callbacks.finite_gradients import non_finite_gradient_error, parameter_names
from mtcp.optim import StepInBackward

SETTING = "model.optimizer_in_backward"


class OptimizerInBackward(L.Callback):
    """Update every parameter as soon as its gradient is ready (`StepInBackward`), for ``fit``."""

    def __init__(self) -> None:
        self.stepper: StepInBackward | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        conflicts = []
        if trainer.world_size > 1:  # every rank raises the same error: none waits for the others
            conflicts.append(f"{trainer.world_size} processes (trainer.devices, trainer.num_nodes): each would "
                             "update with its own gradient before DDP averages them")
        if trainer.accumulate_grad_batches > 1:
            conflicts.append(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: the gradient "
                             "must be summed over the micro-batches first")
        if trainer.gradient_clip_val:
            conflicts.append(f"trainer.gradient_clip_val={trainer.gradient_clip_val}: clipping needs every "
                             "gradient of the step at once")
        if conflicts:
            raise ValueError(f"{SETTING}: true updates each parameter inside backward, as soon as its gradient "
                             f"is ready; it cannot run with {'; '.join(conflicts)}. Turn one of them off.")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"{SETTING}: true needs exactly one optimizer; configure_optimizers gave "
                             f"{len(trainer.optimizers)}")
        self.stepper = StepInBackward(trainer.optimizers[0])

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if self.stepper is not None:
            self.stepper.armed = bool(torch.isfinite(loss.detach()).all())  # one host read per step

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self.stepper is not None and (bad := self.stepper.take_non_finite()):
            raise non_finite_gradient_error(parameter_names(pl_module, bad), trainer.global_step, updated=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.stepper is not None:
            self.stepper.remove()
            self.stepper = None
