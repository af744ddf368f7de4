"""Samplers: deterministic training order, and distributed evaluation without padding.

`EpochShuffleSampler` draws the training order from (seed, epoch) alone and yields
``(epoch, index)`` keys, so the dataset can seed each sample's augmentation from the
same key: a run with other worker counts, or resumed from a checkpoint, sees exactly the
same training data. The order being a function of (seed, epoch), a position in it is two
numbers: the data module stores (epoch, batches taken) in every checkpoint and, on resume,
starts the sampler there (`EpochShuffleSampler.resume_at`), so a run resumed from a
mid-epoch checkpoint continues with the very next batch, whatever the loader's workers had
prefetched when it was killed.

`torch.utils.data.DistributedSampler` pads the index list so that every rank gets the
same count; the duplicated samples would be counted twice by pooled metrics. This
sampler gives rank r the indices r, r + W, r + 2W, ... so each sample is evaluated by
exactly one rank (ranks may differ by one sample). Lightning leaves a sampler that is
already a `DistributedSampler` untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Shuffle from (seed, epoch), shard across DDP ranks, yield ``(epoch, index)`` keys.

    Lightning calls `set_epoch` at every epoch start and leaves an existing
    `DistributedSampler` in place. Without a process group it is a plain seeded shuffle.
    """

    def __init__(self, dataset, seed: int, distributed: bool) -> None:
        replicas = dict(num_replicas=1, rank=0) if not distributed else {}
        super().__init__(dataset, shuffle=True, seed=seed, drop_last=False, **replicas)
        self._resume: tuple[int, int] | None = None  # (epoch, samples of this rank's order to leave out)

    def resume_at(self, epoch: int, samples: int) -> None:
        """Start at ``epoch``, leaving out the first ``samples`` of this rank's order of that epoch
        (once: the next iteration of that epoch only)."""
        self.set_epoch(epoch)
        self._resume = (epoch, samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        order = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1]:]
        self._resume = None
        return ((self.epoch, i) for i in order)


class UnpaddedDistributedSampler(DistributedSampler):
    """Shard a dataset across ranks in order, every index exactly once, no padding."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
