"""Multi-task gain Delta_m (DESIGN.md section 4) against single-task reference runs.

``Delta_m = (1/T) sum_t (-1)^{l_t} (M_t - S_t) / S_t * 100`` over the model's tasks,
with M_t / S_t the multi-task / single-task value of task t's headline metric
(`mtcp.tasks`: mIoU, RMSE, mean angle, maxF, ...) and l_t = 1 where lower is better.
Positive means the multi-task model is better on average.

The references come from this project's own single-task runs: ``mtcp test`` writes
``<default_root_dir>/test_metrics.json`` (keys like ``"test/depth/rmse"``); give one
file per task (or one holding several) and they are merged. A metric is looked up
under the evaluated stage first (``val/...`` for validation), then ``test/...``,
then ``val/...``: NYUD and PASCAL evaluate ``val`` and ``test`` on the same images, so
a single-task test file also serves validation there. For datasets with distinct
val/test splits, pass the single-task ``validate_metrics.json`` too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mtcp.tasks import get_task


def metric_key(task: str) -> str:
    """``"<task>/<headline>"``: the suffix of the task's headline metric in logged keys."""
    return f"{task}/{get_task(task).headline}"


def find_metric(metrics: Mapping[str, float], task: str, stage: str | None = None) -> float:
    """The headline value of ``task`` in ``metrics`` (stage-prefixed or bare keys)."""
    key = metric_key(task)
    candidates = ([f"{stage}/{key}"] if stage else []) + [key, f"test/{key}", f"val/{key}"]
    for candidate in candidates:
        if candidate in metrics:
            return float(metrics[candidate])
    raise KeyError(f"no {task!r} headline metric: looked for {candidates}; available keys: {sorted(metrics)}")


def delta_m(multi: Mapping[str, float], single: Mapping[str, float], tasks: Sequence[str],
            stage: str | None = None) -> float:
    """Delta_m in percent of the multi-task metrics ``multi`` relative to ``single``."""
    if not tasks:
        raise ValueError("delta_m needs at least one task")
    total = 0.0
    for task in tasks:
        m, s = find_metric(multi, task, stage), find_metric(single, task, stage)
        if s == 0 or not math.isfinite(s):
            raise ValueError(f"single-task reference for {task!r} is {s}; Delta_m needs a finite non-zero value")
        sign = 1.0 if get_task(task).higher_is_better else -1.0
        total += sign * (m - s) / s * 100.0
    return total / len(tasks)


def load_single_task_metrics(paths: Sequence[str | Path], tasks: Sequence[str]) -> dict[str, float]:
    """The headline metrics of ``tasks`` from metric JSON files (``{key: value}``), merged.

    Only the tasks' headline keys are kept (every run also logs e.g. ``test/loss``, which
    differs between files); one given twice with different values, or a task without a
    headline in any file, is an error naming the files.
    """
    suffixes = {metric_key(t) for t in tasks}
    merged: dict[str, float] = {}
    origin: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"single-task metrics file {str(path)!r} does not exist; a single-task `mtcp test` run "
                "writes <default_root_dir>/test_metrics.json"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"single-task metrics file {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"single-task metrics file {str(path)!r} must hold a JSON object of metric values")
        for key, value in data.items():
            if key not in suffixes and key.split("/", 1)[-1] not in suffixes:
                continue
            value = float(value)
            if key in merged and merged[key] != value:
                raise ValueError(
                    f"metric {key!r} differs between single-task files {str(origin[key])!r} ({merged[key]}) and "
                    f"{str(path)!r} ({value}); give each task's reference once"
                )
            merged[key], origin[key] = value, path
    missing = [t for t in tasks if not any(k == metric_key(t) or k.endswith("/" + metric_key(t)) for k in merged)]
    if missing:
        raise ValueError(
            f"single-task metrics {[str(p) for p in paths]} hold no headline metric for task(s) {missing} "
            f"(expected keys like {['test/' + metric_key(t) for t in missing]})"
        )
    return merged
