"""The task registry: everything the rest of the code needs to know about a task.

A task is its output width, how the raw head output becomes a prediction, its loss,
its metrics and its headline metric. Adding a task is one `Task` entry in `TASKS`
(plus labels from the data sources that provide it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mtcp import losses
from mtcp.metrics import DepthMetrics, EdgeMetrics, NormalsMetrics, SaliencyMetrics, SegmentationMetrics


def _identity(x: Tensor) -> Tensor:
    return x


def _positive(x: Tensor) -> Tensor:
    return F.softplus(x)


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=1, eps=1e-6)


@dataclass(frozen=True)
class Task:
    """One dense prediction task.

    ``channels`` is None for classification tasks, whose width is the data source's
    class count. ``activation`` maps the head's raw output to the task's output space
    (logits stay logits); losses and metrics both take that output.
    """

    name: str
    channels: int | None
    loss: Callable[[Tensor, Tensor], Tensor]
    make_metric: Callable[[int], Metric]
    headline: str
    higher_is_better: bool
    activation: Callable[[Tensor], Tensor] = _identity
    label_is_dense_class: bool = True  # int64 [H, W] labels with 255 = ignore

    def out_channels(self, num_classes: Mapping[str, int]) -> int:
        if self.channels is not None:
            return self.channels
        if self.name not in num_classes:
            raise ValueError(f"task {self.name!r} needs a class count; got classes for {list(num_classes)}")
        return num_classes[self.name]


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("semseg", None, losses.cross_entropy, lambda c: SegmentationMetrics(c), "miou", True),
        Task("human_parts", None, losses.cross_entropy, lambda c: SegmentationMetrics(c), "miou", True),
        Task("depth", 1, losses.depth_l1, lambda c: DepthMetrics(), "rmse", False, _positive, False),
        Task("normals", 3, losses.normals_l1, lambda c: NormalsMetrics(), "mean", False, _unit, False),
        Task("sal", 1, losses.balanced_bce, lambda c: SaliencyMetrics(), "maxf", True),
        Task("edge", 1, losses.weighted_bce, lambda c: EdgeMetrics(), "odsf", True),
    )
}


def get_task(name: str) -> Task:
    """The registered task ``name``; a clear error listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks are {sorted(TASKS)}") from None


def check_task_names(names: Sequence[str], setting: str = "data.tasks") -> list[str]:
    """Validate a task list from a config: non-empty, known names, no duplicates."""
    names = list(names)
    if not names:
        raise ValueError(f"{setting}: at least one task is required; known tasks are {sorted(TASKS)}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"{setting}: unknown task(s) {unknown}; known tasks are {sorted(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{setting}: duplicate task names in {names}")
    return names
