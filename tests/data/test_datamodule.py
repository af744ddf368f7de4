"""The data module: deterministic training data across workers and epochs, exact sharding."""

import torch

from mtcp.data.datamodule import MultiTaskDataModule
from mtcp.data.samplers import EpochShuffleSampler, UnpaddedDistributedSampler
from mtcp.data.sources.procedural import ProceduralScenes
from mtcp.data.transforms import Augmentation


def make_dm(num_workers: int, seed: int = 3) -> MultiTaskDataModule:
    source = ProceduralScenes(image_size=(32, 48), train_size=12, val_size=5, test_size=5)
    aug = Augmentation(scales=(1.0, 1.5), flip=True, color_jitter=0.3)
    return MultiTaskDataModule(source, ["semseg", "depth", "normals"], batch_size=4, num_workers=num_workers,
                               augmentation=aug, seed=seed)


def epoch_batches(dm: MultiTaskDataModule, epoch: int) -> list[dict]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_training_data_depends_only_on_seed_and_epoch_not_on_workers():
    torch.manual_seed(123)  # the global RNG must not matter
    a = epoch_batches(make_dm(num_workers=0), epoch=1)
    torch.manual_seed(999)
    b = epoch_batches(make_dm(num_workers=2), epoch=1)
    assert [x["meta"]["id"] for x in a] == [y["meta"]["id"] for y in b]
    for x, y in zip(a, b, strict=True):
        for key in ("image", "semseg", "depth", "normals"):
            assert torch.equal(x[key], y[key]), key


def test_epochs_and_seeds_change_order_and_augmentation():
    dm = make_dm(num_workers=0)
    e1, e2 = epoch_batches(dm, 1), epoch_batches(dm, 2)
    assert [x["meta"]["id"] for x in e1] != [x["meta"]["id"] for x in e2]
    other = epoch_batches(make_dm(num_workers=0, seed=4), 1)
    assert [x["meta"]["id"] for x in e1] != [x["meta"]["id"] for x in other]
    assert sorted(i for x in e1 for i in x["meta"]["id"]) == sorted(i for x in e2 for i in x["meta"]["id"])


def test_epoch_sampler_covers_the_dataset_and_shards_ranks_disjointly():
    ds = list(range(10))
    keys = list(EpochShuffleSampler(ds, seed=0, distributed=False))
    assert sorted(i for _, i in keys) == list(range(10)) and {e for e, _ in keys} == {0}
    ranks = []
    for r in range(2):  # what a 2-process group would build
        s = EpochShuffleSampler(ds, seed=0, distributed=False)
        s.num_replicas, s.rank = 2, r
        s.num_samples, s.total_size = 5, 10
        ranks.append([i for _, i in s])
    assert set(ranks[0]).isdisjoint(ranks[1]) and sorted(ranks[0] + ranks[1]) == list(range(10))


def test_unpadded_sampler_counts_every_sample_once():
    ds = list(range(5))
    parts = [list(UnpaddedDistributedSampler(ds, num_replicas=2, rank=r)) for r in range(2)]
    assert parts == [[0, 2, 4], [1, 3]]
    assert [len(UnpaddedDistributedSampler(ds, num_replicas=2, rank=r)) for r in range(2)] == [3, 2]
