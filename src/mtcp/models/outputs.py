"""What the networks return and what their parts declare: typed, so no consumer indexes by magic keys.

`Predictions` are raw per-task maps (logits, unbounded depth and normals); the task's
activation belongs to the training side (`mtcp.tasks`), which the LightningModule
applies. `FeatureInfo` declares a list of feature maps' channels and strides, as
timm's ``feature_info`` does, so that a decoder is built from what its input declares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True)
class Predictions:
    """Per-task maps [B, C_t, H, W]: the prediction, and the deep-supervision levels by name.

    ``auxiliary`` is empty for single-level networks; MT-CP's levels are ``initial`` (the
    head on C_t) and ``srm1``, ``srm2`` (the trace-back's coarser SRMs).
    """

    final: dict[str, Tensor]
    auxiliary: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def map(self, fn: Callable[[str, Tensor], Tensor]) -> Predictions:
        """``fn(task, map)`` applied to every task's map at every level."""
        return Predictions(
            {t: fn(t, y) for t, y in self.final.items()},
            {level: {t: fn(t, y) for t, y in preds.items()} for level, preds in self.auxiliary.items()},
        )


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and strides of a module's feature maps, finest first (timm's ``feature_info``)."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]
