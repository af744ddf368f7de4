"""Multi-task gain Delta_m (docs/method.md section 4) against single-task reference runs.

``Delta_m = (1/T) sum_t (-1)^{l_t} (M_t - S_t) / S_t * 100`` over the model's tasks,
with M_t / S_t the multi-task / single-task value of task t's headline metric
(`mtcp.tasks`: mIoU, RMSE, mean angle, maxF, ...) and l_t = 1 where lower is better;
the caller passes each task's `Headline` (`mtcp.tasks.headlines`).
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
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Headline:
    """A task's headline metric and its direction; the caller supplies them (`mtcp.tasks.headlines`)."""

    task: str
    metric: str
    higher_is_better: bool

    @property
    def key(self) -> str:
        """``"<task>/<metric>"``: the suffix of the headline metric in logged keys."""
        return f"{self.task}/{self.metric}"


def find_metric(metrics: Mapping[str, float], headline: Headline, stage: str | None = None) -> float:
    """The headline value of a task in ``metrics`` (stage-prefixed or bare keys)."""
    key = headline.key
    candidates = ([f"{stage}/{key}"] if stage else []) + [key, f"test/{key}", f"val/{key}"]
    for candidate in candidates:
        if candidate in metrics:
            return float(metrics[candidate])
    raise KeyError(
        f"no {headline.task!r} headline metric: looked for {candidates}; available keys: {sorted(metrics)}")


def delta_m(multi: Mapping[str, float], single: Mapping[str, float], headlines: Sequence[Headline],
            stage: str | None = None) -> float:
    """Delta_m in percent of the multi-task metrics ``multi`` relative to ``single``."""
    if not headlines:
        raise ValueError("delta_m needs at least one task")
    total = 0.0
    for headline in headlines:
        m, s = find_metric(multi, headline, stage), find_metric(single, headline, stage)
        if s == 0 or not math.isfinite(s):
            raise ValueError(
                f"single-task reference for {headline.task!r} is {s}; Delta_m needs a finite non-zero value")
        sign = 1.0 if headline.higher_is_better else -1.0
        total += sign * (m - s) / s * 100.0
    return total / len(headlines)


def load_single_task_metrics(paths: Sequence[str | Path], headlines: Sequence[Headline]) -> dict[str, float]:
    """The ``headlines`` metrics from metric JSON files (``{key: value}``), merged.

    Only the tasks' headline keys are kept (every run also logs e.g. ``test/loss``, which
    differs between files); one given twice with different values, or a task without a
    headline in any file, is an error naming the files.
    """
    suffixes = {h.key for h in headlines}
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
    missing = [h for h in headlines if not any(k == h.key or k.endswith("/" + h.key) for k in merged)]
    if missing:
        raise ValueError(
            f"single-task metrics {[str(p) for p in paths]} hold no headline metric for task(s) "
            f"{[h.task for h in missing]} (expected keys like {['test/' + h.key for h in missing]})"
        )
    return merged
