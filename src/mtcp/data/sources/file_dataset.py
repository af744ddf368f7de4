"""Datasets read from a dataset folder: `FolderSource` (the source template shared by
NYUD-v2 and PASCAL-Context) and `FileDataset` (one split's samples, with an optional
pass that skips bad samples).

Skip policy (``skip_bad_samples``): off by default, so a damaged dataset fails loudly
at construction (missing files, checked with cheap ``stat`` calls) or at the first
read of a bad sample (decoding errors), naming the file. When on, every sample is
read once at construction; samples whose reading raises `DatasetFileError` are
dropped with one warning that gives the count and the first reasons. The kept ids
are fixed before training starts, so indexing stays deterministic and identical on
every DDP rank. The pass costs one full read of the split.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from torch.utils.data import Dataset

from mtcp.data.sources.base import DataSource, Split
from mtcp.data.sources.files import DatasetFileError, read_split, require_dir

#: at most this many reasons are quoted in the skip warning
_QUOTED = 5


class FileDataset(Dataset):
    """Samples ``read(id)`` for the ids of one split.

    Args:
        name: what the split is, for messages (e.g. ``"NYUDv2 val"``).
        ids: sample ids in split-file order.
        check: cheap per-id existence check (raises `DatasetFileError`); run for every id.
        read: builds the sample dict of one id (raises `DatasetFileError` on bad data).
        skip_bad_samples: drop ids whose check or read fails instead of raising.
    """

    def __init__(self, name: str, ids: Sequence[str], check: Callable[[str], object],
                 read: Callable[[str], dict], skip_bad_samples: bool = False) -> None:
        self.name = name
        self.read = read
        self.skipped: list[tuple[str, str]] = []  # (id, reason)
        kept: list[str] = []
        for sample_id in ids:
            try:
                check(sample_id)
                if skip_bad_samples:
                    read(sample_id)
            except DatasetFileError as err:
                if not skip_bad_samples:
                    raise DatasetFileError(f"{name}, sample {sample_id!r}: {err}") from None
                self.skipped.append((sample_id, str(err)))
                continue
            kept.append(sample_id)
        if self.skipped:
            reasons = "; ".join(f"{i}: {r}" for i, r in self.skipped[:_QUOTED])
            more = f" (and {len(self.skipped) - _QUOTED} more)" if len(self.skipped) > _QUOTED else ""
            warnings.warn(
                f"{name}: skipped {len(self.skipped)} of {len(ids)} bad samples (skip_bad_samples=true): "
                f"{reasons}{more}",
                stacklevel=2,
            )
        if not kept:
            raise DatasetFileError(f"{name}: no readable sample left out of {len(ids)}")
        self.ids = kept

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        sample_id = self.ids[index]
        try:
            return self.read(sample_id)
        except DatasetFileError as err:
            raise DatasetFileError(f"{self.name}, sample {sample_id!r}: {err}") from None


class FolderSource(DataSource):
    """A source whose splits are id lists in a folder, each id's files checked and read.

    Subclasses set ``root`` and ``skip_bad_samples`` and say where a split's ids are
    (`split_file`), which folders a task's labels need (`label_folders`), which files an
    id has (`sample_paths`, a cheap existence check) and how to read it (`read_sample`).
    """

    root: Path
    skip_bad_samples: bool

    @abstractmethod
    def split_file(self, split: Split) -> Path:
        """The text file listing ``split``'s ids, one a line."""

    @abstractmethod
    def label_folders(self, task: str) -> list[tuple[Path, str]]:
        """(folder, what it holds) for every folder that ``task``'s labels are read from."""

    @abstractmethod
    def sample_paths(self, sample_id: str, tasks: Sequence[str]) -> dict[str, Path]:
        """The files of one id (raises `DatasetFileError` naming a missing one)."""

    @abstractmethod
    def read_sample(self, sample_id: str, tasks: Sequence[str]) -> dict:
        """One sample in the convention of `mtcp.data.sources.base`."""

    def dataset(self, split: Split, tasks: Sequence[str]) -> FileDataset:
        self.check_tasks(tasks)
        tasks = list(tasks)
        for task in tasks:
            for folder, what in self.label_folders(task):
                require_dir(folder, what)
        split_file = self.split_file(split)
        return FileDataset(
            f"{type(self).__name__} {split} ({split_file})", read_split(split_file),
            check=partial(self.sample_paths, tasks=tasks),  # partials of methods pickle (spawned workers)
            read=partial(self.read_sample, tasks=tasks),
            skip_bad_samples=self.skip_bad_samples,
        )
