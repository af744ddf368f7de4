"""LPS, the Loss Prioritization Scheme of MT-CP (Multi-Task Coherence and Prioritization, WACV 2025)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtcp.balancers.base import renormalise
from mtcp.balancers.history import Window, WindowedBalancer

#: guards the ratios' denominators (projected losses are >= log(1 + 1e-6) ~ 1e-6 anyway)
EPS = 1e-12


def spread_weights(weights: Tensor, spread: float) -> Tensor:
    """Spread control: ``w_t <- mean(w) + kappa * (w_t - mean(w))`` (before clamping)."""
    mean = weights.mean()
    return mean + spread * (weights - mean)


def ratio_weights(previous: Tensor, current: Tensor) -> Tensor:
    """``w_t = r_t / R`` with ``r_t = l_t(k) / l_t(k-1)`` and ``R = l(k) / l(k-1)``, ``l = sum_t l_t``."""
    r = current / previous.clamp_min(EPS)
    big_r = current.sum() / previous.sum().clamp_min(EPS)
    return r / big_r.clamp_min(EPS)


class LossPrioritization(WindowedBalancer):
    """Loss Prioritization Scheme (LPS; MT-CP, WACV 2025): weight tasks by how slowly they improve.

    The rule, on the pooled (rank-averaged) losses:

    * projection: the module minimises ``sum_t w_t proj(L_t)`` with ``proj(L) = log(1 + L + 1e-6)``;
    * history: ``l_t(k)``, the mean projected loss of task t over window k (one training
      epoch by default, or every ``window`` steps), and ``l(k) = sum_t l_t(k)``;
    * during the first window ``w_t = 1``; when it closes, ``init="ones"`` (default, the
      paper's description) keeps ``w_t = 1``, ``init="equal"`` (the authors' released code)
      sets ``w_t = l(0) / l_t(0)`` (equal contributions), clamped and renormalised as below;
    * after each later window k: ``r_t = l_t(k) / l_t(k-1)``, ``R = l(k) / l(k-1)``,
      ``w_t = r_t / R`` (a task whose loss falls slower than the total gets ``w_t > 1``);
    * spread control ``w_t <- mean(w) + spread * (w_t - mean(w))`` (the paper's kappa:
      7.5 on NYUD-v2, 1.6 on PASCAL-Context; 1 leaves the ratios as they are);
    * clamp to ``min_weight`` (> 0; the authors' weights can go negative) and renormalise so
      that ``sum_t w_t = T``.

    The authors' released code computes these weights but never applies them to the loss;
    this implementation applies them (in `objective`), from the step after
    the window closes. Weights are detached and identical on every rank; the history is
    part of the checkpoint. A step whose pooled losses are non-finite stops training before
    the rule sees it (see `mtcp.balancers.base`); zero losses are valid values
    (``proj(0) ~ 1e-6``) and give large but finite ratios, bounded by the renormalisation.

    Args:
        spread: kappa of the spread control (> 0).
        window: ``"epoch"`` or a number of training steps per history window.
        init: weights after the first window: ``"ones"`` or ``"equal"`` (``l(0) / l_t(0)``).
        min_weight: positive floor of every weight before the renormalisation.
    """

    projection = "log"

    def __init__(self, spread: float = 1.0, window: Window = "epoch", init: Literal["ones", "equal"] = "ones",
                 min_weight: float = 1e-2) -> None:
        super().__init__(window, "LossPrioritization")
        if not spread > 0:
            raise ValueError(f"balancer.init_args.spread of LossPrioritization must be > 0; got {spread}")
        if init not in ("ones", "equal"):
            raise ValueError(f"balancer.init_args.init of LossPrioritization must be 'ones' or 'equal'; "
                             f"got {init!r}")
        if not min_weight > 0:
            raise ValueError(f"balancer.init_args.min_weight must be > 0; got {min_weight}")
        self.spread = float(spread)
        self.init = init
        self.min_weight = float(min_weight)

    # -- the rule ------------------------------------------------------------------------
    def weights_after_window(self) -> Tensor | None:
        """Weights once the history has just closed a window (None: keep the current ones)."""
        h = self.history
        num = len(h.last)
        if h.closed == 1:
            if self.init == "ones":
                return torch.ones(num, dtype=torch.float64)
            return renormalise(h.last.sum() / h.last.clamp_min(EPS), num, self.min_weight)
        w = spread_weights(ratio_weights(h.previous, h.last), self.spread)
        return renormalise(w, num, self.min_weight)

    def window_values(self, pooled_losses: Tensor) -> Tensor:
        return self.project(pooled_losses.double())
