"""DWA, Dynamic Weight Average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtcp.balancers.history import Window, WindowedBalancer

EPS = 1e-12


class DWA(WindowedBalancer):
    """Dynamic Weight Average (Liu et al., CVPR 2019): weight tasks by their rate of descent.

    With ``L_t(k)`` the mean (pooled, unprojected) loss of task t over epoch k:
    ``w_t(k) = T * exp(r_t(k-1) / tau) / sum_i exp(r_i(k-1) / tau)``,
    ``r_t(k-1) = L_t(k-1) / L_t(k-2)``, and ``w_t = 1`` for the first two epochs (k = 0, 1).
    The total is ``sum_t w_t L_t`` (identity projection); the weights sum to T.
    ``window`` may also be a number of steps instead of an epoch. Zero losses are guarded
    (the denominator is clamped to 1e-12) and the softmax is computed stably.

    Args:
        temperature: tau (the paper uses 2).
        window: ``"epoch"`` (the paper) or a number of training steps per averaging window.
    """

    def __init__(self, temperature: float = 2.0, window: Window = "epoch") -> None:
        super().__init__(window, "DWA")
        if not temperature > 0:
            raise ValueError(f"balancer.init_args.temperature of DWA must be > 0; got {temperature}")
        self.temperature = float(temperature)

    def weights_after_window(self) -> Tensor | None:
        h = self.history
        if h.closed < 2:
            return None
        r = h.last / h.previous.clamp_min(EPS)
        return len(r) * torch.softmax(r / self.temperature, dim=0)
