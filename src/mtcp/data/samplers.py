"""Samplers: deterministic training order, and distributed evaluation without padding.

`EpochShuffleSampler` draws the training order from (seed, epoch) alone and yields
``(epoch, index)`` keys, so the dataset can seed each sample's augmentation from the
same key: a run with other worker counts, or resumed from a checkpoint written at an
epoch end (``last.ckpt``), sees exactly the same training data. A checkpoint written
mid-epoch restarts that epoch's order (Lightning does not restore a loader's position).

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

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((self.epoch, i) for i in super().__iter__())


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
