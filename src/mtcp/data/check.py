"""`mtcp check-data`: every problem of a dataset copy in one pass, before training meets the first.

A copy of NYUD-v2 or PASCAL-Context is often subtly broken: an interrupted download, the 425x560
variant where 480x640 was meant, a missing ``sal_distill`` folder, normals in another sign
convention. Training finds the first bad file when the loader reaches it, possibly hours in.
`check_data` reads every sample of every split of the configured source (in worker processes),
and reports at once:

- **errors** (the run would fail or learn from wrong labels): a missing label folder; a missing
  file, per sample and task; an unreadable or undecodable file; a sample that breaks the sample
  contract of `mtcp.data.sources.base` (dtype, shape, label size against the image, class ids
  outside ``[0, classes)`` and 255, NaN or infinite values, negative depth, normals neither unit
  nor zero, intrinsics and ``meta["size"]``);
- **warnings** (legal, but worth a look): split sizes other than the published ones, images of
  another size than the layout's, files in a dataset folder that no split lists, classes never
  labelled in the training split, and normals whose statistics suggest another sign convention
  (most valid normals should face the camera, z < 0 in the convention x right, y down, z
  forward, and more should point up, y < 0, than down, in indoor scenes).

The report ends with a summary line; the exit status is non-zero when there is an error (or,
with ``strict``, a warning).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mtcp.data.sources.base import SPLITS, DataSource, Split
from mtcp.data.sources.file_dataset import FolderSource
from mtcp.data.sources.files import DatasetFileError, read_split
from mtcp.labels import IGNORE_INDEX, ClassMap, PositiveScalar, UnitVector
from mtcp.tasks import get_task

Severity = Literal["error", "warning"]
#: |norm - 1| above this is not a unit normal (after the sources' re-normalisation)
_UNIT_TOLERANCE = 1e-3
#: a normal with y below -this points up (y is down in the camera frame), above +this down
_VERTICAL = 0.7
#: at most this many examples are quoted per kind of warning
_QUOTED = 5


@dataclass(frozen=True)
class Finding:
    severity: Severity
    where: str  # "train 0003", "folder normals/", "semseg"
    message: str


@dataclass
class _Stats:
    """What one or more samples add to the report."""

    samples: int = 0
    sizes: Counter = field(default_factory=Counter)
    class_counts: dict[str, np.ndarray] = field(default_factory=dict)
    normals: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.int64))  # valid, facing, up, down

    def add(self, other: _Stats) -> None:
        self.samples += other.samples
        self.sizes.update(other.sizes)
        for task, counts in other.class_counts.items():
            mine = self.class_counts.setdefault(task, np.zeros_like(counts))
            self.class_counts[task] = mine + counts
        self.normals += other.normals


@dataclass
class DataReport:
    """Everything `check_data` found; ``ok`` when there is no error."""

    source: str
    tasks: list[str]
    findings: list[Finding] = field(default_factory=list)
    splits: dict[str, _Stats] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def ok(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)

    def text(self) -> str:
        lines = [f"check-data: {self.source}, tasks {', '.join(self.tasks)}"]
        for split, stats in self.splits.items():
            sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in stats.sizes.most_common(3))
            more = f" and {len(stats.sizes) - 3} more sizes" if len(stats.sizes) > 3 else ""
            lines.append(f"  {split}: {stats.samples} samples read; image sizes {sizes or '-'}{more}")
        normals = sum((s.normals for s in self.splits.values()), np.zeros(4, dtype=np.int64))
        if normals[0]:
            valid, facing, up, down = (int(v) for v in normals)
            lines.append(f"  normals: {valid} valid pixels, {100 * facing / valid:.1f}% face the camera, "
                         f"{100 * up / valid:.1f}% point up, {100 * down / valid:.1f}% down")
        lines += [f"  {f.severity.upper()} {f.where}: {f.message}" for f in self.findings]
        total = sum(s.samples for s in self.splits.values())
        lines.append(f"summary: {len(self.errors)} errors, {len(self.warnings)} warnings; {total} samples read "
                     f"in {self.seconds:.1f} s")
        return "\n".join(lines)


def contract_problems(sample: dict[str, Any], tasks: Sequence[str], num_classes: dict[str, int]) -> list[str]:
    """How ``sample`` breaks the sample contract of `mtcp.data.sources.base` (empty: it keeps it)."""
    problems: list[str] = []
    image = sample.get("image")
    if not isinstance(image, Tensor) or image.dtype != torch.float32 or image.dim() != 3 or image.shape[0] != 3:
        return [f"image must be float32 [3, H, W]; got {_describe(image)}"]
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        problems.append("image values must be finite and in [0, 1]")
    hw = tuple(image.shape[-2:])
    for task in tasks:
        label, kind = sample.get(task), get_task(task).label
        if isinstance(kind, ClassMap):
            if not _is(label, torch.int64, 2, hw):
                problems.append(f"{task} must be int64 [H, W] = {list(hw)}; got {_describe(label)}")
                continue
            classes = num_classes.get(task, 2)  # binary maps (sal, edge): 0/1
            bad = label[(label != IGNORE_INDEX) & ((label < 0) | (label >= classes))]
            if bad.numel():
                problems.append(f"{task} holds class ids {sorted(set(bad.tolist()))[:_QUOTED]}; "
                                f"expected 0..{classes - 1} or {IGNORE_INDEX} (ignore)")
        elif isinstance(kind, (PositiveScalar, UnitVector)):
            channels = 3 if isinstance(kind, UnitVector) else 1
            if not _is(label, torch.float32, 3, hw) or label.shape[0] != channels:
                problems.append(f"{task} must be float32 [{channels}, H, W] with H, W = {list(hw)}; "
                                f"got {_describe(label)}")
                continue
            if not torch.isfinite(label).all():
                problems.append(f"{task} holds NaN or infinite values")
            elif isinstance(kind, PositiveScalar) and (label < 0).any():
                problems.append(f"{task} holds negative values; expected >= 0 (0 = invalid)")
            elif isinstance(kind, UnitVector):
                norm = (label * label).sum(dim=0).sqrt()  # not .norm(dim=0): a slow strided reduction on CPU
                if not ((norm - 1).abs().le(_UNIT_TOLERANCE) | norm.eq(0)).all():
                    problems.append(f"{task} holds vectors that are neither unit length nor zero (invalid)")
    meta = sample.get("meta") or {}
    intrinsics, size = meta.get("intrinsics"), meta.get("size")
    if not isinstance(intrinsics, Tensor) or intrinsics.shape != (4,) or not torch.isfinite(intrinsics).all():
        problems.append(f"meta.intrinsics must be 4 finite numbers (fx, fy, cx, cy); got {_describe(intrinsics)}")
    if not isinstance(size, Tensor) or size.tolist() != list(hw):
        problems.append(f"meta.size must be the label size {list(hw)}; got {_describe(size)}")
    return problems


def _is(x: object, dtype: torch.dtype, dims: int, hw: tuple[int, ...]) -> bool:
    return isinstance(x, Tensor) and x.dtype == dtype and x.dim() == dims and tuple(x.shape[-2:]) == hw


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} {list(x.shape)}" if x.dim() else f"{x.item()}"
    return "nothing" if x is None else type(x).__name__


def _stats_of(sample: dict[str, Any], tasks: Sequence[str], num_classes: dict[str, int]) -> _Stats:
    stats = _Stats(samples=1)
    stats.sizes[tuple(int(v) for v in sample["image"].shape[-2:])] += 1
    for task in tasks:
        if task in num_classes:
            label = sample[task]
            kept = label[(label >= 0) & (label < num_classes[task])]
            stats.class_counts[task] = np.bincount(kept.numpy(), minlength=num_classes[task]).astype(np.int64)
        elif isinstance(get_task(task).label, UnitVector):
            normals = sample[task]
            valid = (normals * normals).sum(dim=0) > 0
            y, z = normals[1][valid], normals[2][valid]
            stats.normals += np.array([valid.sum(), (z < 0).sum(), (y < -_VERTICAL).sum(), (y > _VERTICAL).sum()])
    return stats


# -- reading every sample (in worker processes) ------------------------------------------
@dataclass
class _Job:
    source: DataSource
    tasks: tuple[str, ...]
    split: Split
    dataset: Any = None  # built on first use, in each worker (sources without files)

    def folder_sample(self, sample_id: str) -> tuple[str, list[str], _Stats | None, list[Path]]:
        """One id of a `FolderSource`: every missing file (per task), then reading and the contract."""
        assert isinstance(self.source, FolderSource)
        problems: list[str] = []
        paths: list[Path] = []
        present: list[str] = []
        try:
            paths += self.source.sample_paths(sample_id, []).values()
        except DatasetFileError as err:
            return sample_id, [str(err)], None, paths
        for task in self.tasks:
            try:
                paths += self.source.sample_paths(sample_id, [task]).values()
                present.append(task)
            except DatasetFileError as err:
                problems.append(f"{task}: {err}")
        try:
            sample = self.source.read_sample(sample_id, present)
        except DatasetFileError as err:
            return sample_id, [*problems, str(err)], None, paths
        except Exception as err:  # a reader bug or a format no reader expects: still one finding, not a crash
            return sample_id, [*problems, f"cannot read ({type(err).__name__}: {err})"], None, paths
        return (sample_id, problems + contract_problems(sample, present, self.source.num_classes),
                _stats_of(sample, present, self.source.num_classes), paths)

    def indexed_sample(self, index: int) -> tuple[str, list[str], _Stats | None, list[Path]]:
        """One sample of a source without files (e.g. the procedural scenes)."""
        try:
            if self.dataset is None:
                self.dataset = self.source.dataset(self.split, self.tasks)
            sample = self.dataset[index]
        except Exception as err:
            return str(index), [f"cannot build ({type(err).__name__}: {err})"], None, []
        sample_id = str((sample.get("meta") or {}).get("id", index))
        return (sample_id, contract_problems(sample, self.tasks, self.source.num_classes),
                _stats_of(sample, self.tasks, self.source.num_classes), [])


def _splits(source: DataSource, tasks: Sequence[str]) -> Iterator[tuple[str, Split, list[str] | int]]:
    """(name, split, ids or sample count) per distinct split; splits sharing a file are one (NYUD test = val)."""
    if isinstance(source, FolderSource):
        seen: dict[Path, list[Split]] = {}
        for split in SPLITS:
            seen.setdefault(source.split_file(split), []).append(split)
        for path, names in seen.items():
            yield "/".join(names), names[0], read_split(path)
    else:
        for split in SPLITS:
            yield split, split, len(source.dataset(split, tasks))


def check_data(source: DataSource, tasks: Sequence[str], workers: int = 0) -> DataReport:
    """Read every sample of every split of ``source`` for ``tasks`` and report what is wrong (module doc)."""
    start = time.monotonic()
    source.check_tasks(tasks)
    tasks = list(tasks)
    report = DataReport(f"{type(source).__name__}{f' at {source.root}' if hasattr(source, 'root') else ''}", tasks)
    readable = list(tasks)
    if isinstance(source, FolderSource):
        for task in tasks:
            for folder, what in source.label_folders(task):
                if not folder.is_dir():
                    report.findings.append(Finding("error", task, f"missing folder {str(folder)!r}: expected {what}"))
                    if task in readable:
                        readable.remove(task)
    listed: set[str] = set()
    folders: set[Path] = set()
    pool = (ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=torch.set_num_threads,
                                initargs=(1,)) if workers > 0 else None)  # the workers are the parallelism
    try:
        for name, split, ids in _splits(source, readable):
            job = _Job(source, tuple(readable), split)
            if isinstance(ids, list):
                listed.update(ids)
                fn, items = job.folder_sample, ids
            else:
                fn, items = job.indexed_sample, range(ids)
            results = pool.map(fn, items, chunksize=8) if pool else map(fn, items)
            stats = _Stats()
            for sample_id, problems, sample_stats, paths in results:
                report.findings += [Finding("error", f"{name} {sample_id}", p) for p in problems]
                if sample_stats is not None:
                    stats.add(sample_stats)
                folders.update(p.parent for p in paths)
            report.splits[name] = stats
            _split_warnings(report, source, name, split, len(items), stats)
    finally:
        if pool:
            pool.shutdown()
    _folder_warnings(report, folders, listed)
    _label_warnings(report, source)
    report.seconds = time.monotonic() - start
    return report


def _split_warnings(report: DataReport, source: DataSource, name: str, split: Split, count: int,
                    stats: _Stats) -> None:
    published = (source.published_split_sizes or {}).get(split)
    if published is not None and published != count:
        report.findings.append(Finding("warning", name, f"{count} samples; the published split has {published}"))
    expected = source.expected_image_size
    if expected is not None:
        other = {size: n for size, n in stats.sizes.items() if size != tuple(expected)}
        if other:
            sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in list(other.items())[:_QUOTED])
            report.findings.append(Finding("warning", name, f"images of another size than the layout's "
                                           f"{expected[0]}x{expected[1]}: {sizes}"))


def _folder_warnings(report: DataReport, folders: set[Path], listed: set[str]) -> None:
    for folder in sorted(folders):
        extra = sorted(p.name for p in folder.iterdir() if p.is_file() and p.stem not in listed)
        if extra:
            shown = ", ".join(extra[:_QUOTED]) + (f" (and {len(extra) - _QUOTED} more)" if len(extra) > _QUOTED else "")
            report.findings.append(Finding("warning", f"folder {folder}",
                                           f"{len(extra)} file{'s' if len(extra) > 1 else ''} no split lists: {shown}"))


def _label_warnings(report: DataReport, source: DataSource) -> None:
    train = next((s for n, s in report.splits.items() if n.startswith("train")), None)
    if train is not None:
        for task, counts in train.class_counts.items():
            never = [int(c) for c in np.flatnonzero(counts == 0)]
            if never and counts.sum():
                report.findings.append(Finding("warning", task, f"{len(never)} of {len(counts)} classes are never "
                                               f"labelled in the training split: {never[:10]}"))
    normals = sum((s.normals for s in report.splits.values()), np.zeros(4, dtype=np.int64))
    valid, facing, up, down = (int(v) for v in normals)
    if valid and facing < valid / 2:
        report.findings.append(Finding("warning", "normals", f"only {100 * facing / valid:.1f}% of the valid normals "
                                       "face the camera (z < 0 with x right, y down, z forward): the copy's z axis is "
                                       "probably flipped; set data.source.init_args.normals_signs"))
    if valid and down > up:
        report.findings.append(Finding("warning", "normals", f"more normals point down ({100 * down / valid:.1f}%) "
                                       f"than up ({100 * up / valid:.1f}%; floors): the copy's y axis is probably "
                                       "flipped (y is down in the sample convention); set normals_signs"))
