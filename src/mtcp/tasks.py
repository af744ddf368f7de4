"""The task registry: everything the rest of the code needs to know about a task.

A task is its output width, how the raw head output becomes a prediction, its loss,
its metrics and headline metric, its kind of label (`mtcp.labels`: padding value,
augmentation, random labels), its picture (`mtcp.visualize`) and its prediction file
format (`mtcp.writers`). Nothing else in the code dispatches on task names.

Adding a task:

1. ``register(Task(...))`` here (or from your own module before the run is built),
   reusing a label kind, loss, metric, picture and writer or adding new ones;
2. a data source lists the task in ``tasks`` and puts its label under the task's name
   in every sample (``num_classes`` too for a class task with ``channels=None``);
3. optionally a cross-task coherence metric for a pair of tasks
   (`mtcp.metrics.coherence.COHERENCE_PAIRS`).

``tests/training/test_new_task.py`` adds and trains one this way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mtcp import losses, visualize, writers
from mtcp.labels import BinaryMap, ClassMap, LabelKind, PositiveScalar, UnitVector
from mtcp.metrics import DepthMetrics, EdgeMetrics, NormalsMetrics, SaliencyMetrics, SegmentationMetrics
from mtcp.metrics.boundary import BoundaryFMeasure
from mtcp.metrics.delta_m import Headline


def _identity(x: Tensor) -> Tensor:
    return x


def _positive(x: Tensor) -> Tensor:
    return F.softplus(x)


def _unit(x: Tensor) -> Tensor:
    """``F.normalize(x, dim=1, eps=1e-6)``, 30x faster on the CPU: its norm over the 3-wide channel
    dimension takes a slow strided reduction (40 ms forward + backward at 8x3x120x160 here), a sum of
    squares does not (1.2 ms); equal to rounding (tests/training/test_losses.py)."""
    return x * torch.rsqrt((x * x).sum(dim=1, keepdim=True).clamp_min(1e-12))


@dataclass(frozen=True)
class Task:
    """One dense prediction task.

    ``channels`` is None for classification tasks, whose width is the data source's
    class count. ``activation`` maps the head's raw output to the task's output space
    (logits stay logits); losses and metrics both take that output. ``picture`` colours
    a label or output (`colorize`), ``write`` saves a prediction
    (`mtcp.writers`).
    """

    name: str
    channels: int | None
    loss: Callable[[Tensor, Tensor], Tensor]
    make_metric: Callable[..., Metric]  # (channels, **options from model.metric_options)
    headline: str
    higher_is_better: bool
    label: LabelKind
    picture: visualize.Picture
    write: writers.Writer
    activation: Callable[[Tensor], Tensor] = _identity

    @property
    def label_is_dense_class(self) -> bool:
        return self.label.dense_class

    def out_channels(self, num_classes: Mapping[str, int]) -> int:
        if self.channels is not None:
            return self.channels
        if self.name not in num_classes:
            raise ValueError(f"task {self.name!r} needs a class count; got classes for {list(num_classes)}")
        return num_classes[self.name]


_CLASS = dict(label=ClassMap(), picture=visualize.class_picture, write=writers.class_png)
_BINARY = dict(label=BinaryMap(), picture=visualize.probability_picture, write=writers.probability_png)

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to the registry (a new name only: a task is described once)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def edge_metric(protocol: str = "pixel", **options: Any) -> Metric:
    """The edge task's metric: ``protocol: pixel`` (default, `EdgeMetrics`, pixel-exact, fast) or
    ``protocol: boundary`` (`BoundaryFMeasure`, the BSDS/SEISM protocol with a distance tolerance, e.g.
    ``model.metric_options: {edge: {protocol: boundary, max_dist: 0.0075}}``, comparable with papers)."""
    if protocol == "pixel":
        return EdgeMetrics(**options)
    if protocol == "boundary":
        return BoundaryFMeasure(**options)
    raise ValueError(f"model.metric_options.edge.protocol: {protocol!r}; choose 'pixel' or 'boundary'")


for _task in (
    Task("semseg", None, losses.cross_entropy, lambda c, **o: SegmentationMetrics(c, **o), "miou", True, **_CLASS),
    Task("human_parts", None, losses.cross_entropy, lambda c, **o: SegmentationMetrics(c, **o), "miou", True, **_CLASS),
    Task("depth", 1, losses.depth_l1, lambda c, **o: DepthMetrics(**o), "rmse", False, PositiveScalar(),
         visualize.depth_picture, writers.scalar_npy, _positive),
    Task("normals", 3, losses.normals_l1, lambda c, **o: NormalsMetrics(**o), "mean", False, UnitVector(),
         visualize.normals_picture, writers.unit_vector_npy, _unit),
    Task("sal", 1, losses.balanced_bce, lambda c, **o: SaliencyMetrics(**o), "maxf", True, **_BINARY),
    Task("edge", 1, losses.weighted_bce, lambda c, **o: edge_metric(**o), "odsf", True, **_BINARY),
):
    register(_task)


def get_task(name: str) -> Task:
    """The registered task ``name``; a clear error listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks are {sorted(TASKS)}") from None


def headlines(names: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[Headline]:
    """The tasks' headline metrics and directions, for `mtcp.metrics.delta_m`.

    ``overrides``: another headline for some tasks, ``{task: {metric: ..., higher_is_better: ...}}``
    (``model.delta_m_headlines``; e.g. the MT-CP authors' Delta_m reads saliency's ``max_miou``
    where the ATRC/InvPT protocol reads ``maxf``).
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"model.delta_m_headlines: {unknown} not task(s) of this model ({list(names)})")
    result = []
    for task in map(get_task, names):
        line = Headline(task.name, task.headline, task.higher_is_better)
        if task.name in overrides:
            given = dict(overrides[task.name])
            if set(given) != {"metric", "higher_is_better"}:
                raise ValueError(f"model.delta_m_headlines.{task.name}: give exactly metric and higher_is_better; "
                                 f"got {sorted(given)}")
            line = Headline(task.name, str(given["metric"]), bool(given["higher_is_better"]))
        result.append(line)
    return result


def colorize(task: str, value: Tensor, num_classes: int = 0, is_label: bool = False,
             depth_range: visualize.Range = None, palette: str = "voc") -> np.ndarray:
    """A task's label or network output (one sample, no batch dim) as an RGB picture; class maps in
    ``palette`` (`mtcp.visualize.PALETTES`; a data source's ``palettes`` name each task's)."""
    return get_task(task).picture(value, num_classes, is_label, depth_range, palette)


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
