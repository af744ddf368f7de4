"""Learning-rate schedules that need the run's total step count."""

from __future__ import annotations

from collections.abc import Callable

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
