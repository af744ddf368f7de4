"""A dataset of sample ids read from files, with an optional pass that skips bad samples.

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
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from mtcp.data.sources.files import DatasetFileError

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
