"""Learning-rate schedules that need the run's total step count; the optimizer stepped inside backward."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

#: builds a scheduler from the optimizer and the run's total number of optimizer steps
SchedulerFactory = Callable[[Optimizer, int], LRScheduler]


class PolyLR(LambdaLR):
    """Polynomial decay ``lr * (1 - step / total) ** power`` after an optional linear warm-up.

    The paper's schedule (power 0.9), stepped every optimizer step.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> None:
        if total_steps <= 0:
            raise ValueError(f"PolyLR needs a positive number of total steps; got {total_steps}")
        self.total_steps, self.power, self.warmup_steps = int(total_steps), power, warmup_steps
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.0, 1.0 - step / self.total_steps) ** self.power


class StepInBackward:
    """Update each parameter as soon as backward has accumulated its gradient, then free the gradient.

    What it saves: the gradients of the whole network are never held at once (154 M parameters,
    0.57 GiB in fp32, for the paper's MT-CP), so the peak of a step drops by up to that much
    (README, "Performance"). The update is the optimizer's own ``step`` run on a one-parameter view
    of the parameter's group (its hyper-parameters, the current learning rate included, and its
    state in ``optimizer.state``), hence the very update of ``optimizer.step()`` for optimizers that
    update every parameter on its own (SGD, Adam, AdamW, ...); not for those that couple parameters
    (LBFGS, a global gradient norm). The optimizer's ``state_dict`` is the usual one, and its own
    ``step`` afterwards finds no gradient and changes nothing.

    ``armed`` switches the updates off (the gradients then accumulate as usual); ``remove`` takes the
    hooks out. Each applied gradient's finiteness is recorded on its device, without a host read;
    `take_non_finite` reads them once after backward.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.armed = True
        self._applied: list[tuple[Tensor, Tensor]] = []  # (parameter, its gradient was finite) since the last read
        self._handles = [p.register_post_accumulate_grad_hook(self._updater(group))
                         for group in optimizer.param_groups for p in group["params"]]

    def _updater(self, group: dict) -> Callable[[Tensor], None]:
        def update(param: Tensor) -> None:
            if not self.armed:
                return
            self._applied.append((param, torch.isfinite(param.grad).all()))
            groups = self.optimizer.param_groups
            self.optimizer.param_groups = [{**group, "params": [param]}]  # the group's current settings
            try:
                self.optimizer.step()
            finally:
                self.optimizer.param_groups = groups
            param.grad = None

        return update

    def take_non_finite(self) -> list[Tensor]:
        """The parameters updated with a non-finite gradient since the last call (one host read)."""
        applied, self._applied = self._applied, []
        if not applied:
            return []
        finite = torch.stack([flag for _, flag in applied]).cpu()
        return [param for (param, _), ok in zip(applied, finite.tolist(), strict=True) if not ok]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
