"""Windowed loss history, and the base class of the balancers that learn from it (LPS, DWA).

A window is one training epoch or a fixed number of (accepted) training steps. The
history keeps the running sum of the pooled per-step loss vectors of the open window
and the means of the last two closed windows, which is all LPS and DWA need.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from mtcp.balancers.base import Balancer

Window = Literal["epoch"] | int


def check_window(window: Window, owner: str) -> Window:
    """Validate a ``window`` setting: ``"epoch"`` or a positive number of steps."""
    if window == "epoch":
        return window
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ValueError(f"balancer.init_args.window of {owner} must be 'epoch' or a positive number of "
                         f"steps; got {window!r}")
    return window


class WindowedHistory:
    """Mean loss vector per window; ``closed`` counts the windows closed so far.

    Args:
        window: ``"epoch"`` (closed by `close` at the end of every training epoch) or
            ``k`` (closed automatically after every ``k`` added steps).
    """

    def __init__(self, window: Window) -> None:
        self.window = window
        self.sum: Tensor | None = None
        self.count = 0
        self.open_epoch = -1  # the epoch in which the open window received its first step
        self.means: list[Tensor] = []  # the last two closed windows' means, oldest first
        self.closed = 0

    def add(self, values: Tensor, epoch: int = 0) -> bool:
        """Add one step's loss vector; True when this step closed a k-step window."""
        values = values.detach().double().cpu()
        if self.count == 0:
            self.sum = torch.zeros_like(values)
            self.open_epoch = epoch
        assert self.sum is not None
        self.sum = self.sum + values
        self.count += 1
        if isinstance(self.window, int) and self.count >= self.window:
            return self.close()
        return False

    def close(self) -> bool:
        """Close the open window (if it has any step); True when a window was closed."""
        if self.count == 0 or self.sum is None:
            return False
        self.means = (self.means + [self.sum / self.count])[-2:]
        self.closed += 1
        self.sum, self.count = None, 0
        return True

    def has_stale_epoch_window(self, epoch: int) -> bool:
        """An epoch window left open by an earlier epoch (a run resumed from a checkpoint
        written after the epoch's last step but before its epoch-end hook)."""
        return self.window == "epoch" and self.count > 0 and self.open_epoch < epoch

    @property
    def last(self) -> Tensor:
        return self.means[-1]

    @property
    def previous(self) -> Tensor:
        return self.means[-2]

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum, "count": self.count, "open_epoch": self.open_epoch,
                "means": list(self.means), "closed": self.closed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sum = state["sum"]
        self.count = int(state["count"])
        self.open_epoch = int(state["open_epoch"])
        self.means = list(state["means"])
        self.closed = int(state["closed"])


class WindowedBalancer(Balancer):
    """A balancer whose weights change only when a history window closes.

    Subclasses give `weights_after_window` (the rule, reading ``self.history``) and may
    override `window_values` (what is averaged per step: raw or projected losses).
    """

    def __init__(self, window: Window, owner: str) -> None:
        super().__init__()
        self.window = check_window(window, owner)
        self.history = WindowedHistory(self.window)

    def weights_after_window(self) -> Tensor | None:
        raise NotImplementedError

    def window_values(self, pooled_losses: Tensor) -> Tensor:
        return pooled_losses

    def observe(self, pooled_losses: Tensor, epoch: int = 0) -> Tensor | None:
        """Add one step's pooled raw losses; the new weights if a k-step window closed."""
        if self.history.add(self.window_values(pooled_losses), epoch):
            return self.weights_after_window()
        return None

    def close_window(self) -> Tensor | None:
        """Close the open window (end of an epoch); the new weights, or None if it was empty."""
        return self.weights_after_window() if self.history.close() else None

    def update(self, task_losses: Tensor, trainer: L.Trainer) -> Tensor | None:
        return self.observe(task_losses, int(getattr(trainer, "current_epoch", 0)))

    def start_epoch(self, trainer: L.Trainer) -> Tensor | None:
        if self.history.has_stale_epoch_window(int(trainer.current_epoch)):
            return self.close_window()
        return None

    def end_epoch(self, trainer: L.Trainer) -> Tensor | None:
        return self.close_window() if self.window == "epoch" else None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": self.history.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history.load_state_dict(state_dict["history"])
