"""Fixed, hand-chosen task weights (the usual hand-tuned multi-task baseline)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from mtcp.balancers.base import Balancer


class FixedWeights(Balancer):
    """Constant weights given per task name: ``total = sum_t w_t L_t`` (identity projection).

    E.g. ``weights: {semseg: 1, depth: 1, normals: 10}``. A task of the model that is not
    listed gets ``default`` (1); a listed name that is not a task of the model is an error
    (a typo would otherwise silently train with weight 1). Weights are used as given (no
    renormalisation) and always come from the configuration, also when resuming.

    Args:
        weights: weight per task name (finite, >= 0).
        default: weight of the model's tasks not listed in ``weights``.
    """

    def __init__(self, weights: dict[str, float] | None = None, default: float = 1.0) -> None:
        super().__init__()
        self.task_weight_map = {str(k): float(v) for k, v in (weights or {}).items()}
        for name, value in [*self.task_weight_map.items(), ("default", float(default))]:
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"balancer.init_args.weights: weight of {name!r} must be finite and >= 0; "
                                 f"got {value}")
        self.default = float(default)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        unknown = [n for n in self.task_weight_map if n not in self.task_names]
        if unknown:
            raise ValueError(
                f"balancer.init_args.weights: {unknown} not task(s) of the model; "
                f"its tasks are {self.task_names}"
            )
        self.weights = torch.tensor([self.task_weight_map.get(n, self.default) for n in self.task_names])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        weights = self.weights
        super().load_state_dict(state_dict)
        if weights is not None:  # the configuration, not the checkpoint, decides fixed weights
            self.weights = weights
