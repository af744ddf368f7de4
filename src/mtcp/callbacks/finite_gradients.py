"""A finite loss with a non-finite gradient stops training before the optimizer writes it.

The balancer stops a step whose losses are not finite (`mtcp.balancers.base`); a step can
still have finite losses and NaN or infinite gradients: an overflow inside backward, a
compiler's wrong kernel (docs/notes.md, "torch.compile on the CPU"), a division by a vanishing
norm. AdamW would then write NaN into every weight it touches, and the checkpoints after it
would hold them. This callback reads, once per optimizer step, whether every gradient is finite
(one fused max-norm over all gradients, one host read) and otherwise raises a
`FloatingPointError` naming the parameters, before any parameter changes.

Under DDP the gradients are already averaged over the ranks when the check runs, so every rank
reaches the same verdict at the same step and none waits in a collective for one that stopped.
With a gradient scaler (``trainer.precision: 16-mixed``) non-finite gradients are the scaler's
business: it skips those steps and lowers its scale, so the check stands aside. With the
optimizer stepped inside backward the gradients are gone by then; `OptimizerInBackward` checks
them there.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

#: how many offending parameters an error message lists
NAMED = 5


def parameter_names(module: nn.Module, params: Iterable[Tensor]) -> list[str]:
    """The names in ``module`` of ``params`` (by identity), in ``module``'s order."""
    wanted = {id(p) for p in params}
    return [name for name, p in module.named_parameters() if id(p) in wanted]


def non_finite_gradient_error(names: list[str], step: int, updated: bool) -> FloatingPointError:
    """The error for a step whose losses were finite but whose gradients were not."""
    listed = ", ".join(names[:NAMED]) + (f" and {len(names) - NAMED} more" if len(names) > NAMED else "")
    consequence = ("these parameters were already updated inside backward (model.optimizer_in_backward), so the "
                   "weights in memory are not usable; the checkpoints written before this step are intact"
                   if updated else "training stopped on every rank before the parameters were updated")
    return FloatingPointError(
        f"non-finite gradient at step {step} although every task loss was finite, for {len(names)} parameter(s): "
        f"{listed}; {consequence}. Lower the learning rate (model.optimizer), or train in fp32 "
        "(trainer.precision 32-true) or without model.compile to find which one produces it.")


class FiniteGradients(L.Callback):
    """Stop, naming the parameters, when a gradient about to be applied is not finite."""

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: Optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # the gradient scaler skips non-finite steps itself
        stepped = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not stepped:
            return
        # max |g|: finite gradients cannot overflow it, and NaN propagates through it
        if bool(torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in stepped], norm_type=float("inf")))):
            return  # the one host read of a healthy step
        bad = [p for p in stepped if not bool(torch.isfinite(p.grad).all())]
        raise non_finite_gradient_error(parameter_names(pl_module, bad), trainer.global_step, updated=False)
