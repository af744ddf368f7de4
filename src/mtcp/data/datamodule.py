"""The LightningDataModule: a data source, a task list, augmentation and loaders."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from mtcp.data.samplers import UnpaddedDistributedSampler
from mtcp.data.sources.base import DataSource, Split
from mtcp.data.transforms import Augmentation
from mtcp.tasks import check_task_names, get_task


class TransformedDataset(Dataset):
    """Apply a per-sample transform on top of a source's dataset (in the worker)."""

    def __init__(self, dataset: Dataset, transform: Callable[[dict], dict]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return self.transform(self.dataset[index])


class MultiTaskDataModule(L.LightningDataModule):
    """Serves one data source for a set of tasks; hands the model its output widths.

    Args:
        source: where samples come from (procedural scenes, NYUD-v2, PASCAL-Context).
        tasks: the tasks to learn, in order; each must be provided by the source.
        batch_size: samples per GPU (per process) for training.
        eval_batch_size: samples per process for validation/test (default: batch_size).
        num_workers: loader worker processes per GPU.
        pin_memory: page-locked host buffers for faster host-to-GPU copies.
        augmentation: train-time joint augmentation; None trains on raw samples.
    """

    def __init__(
        self,
        source: DataSource,
        tasks: list[str] = ["semseg", "depth", "normals"],  # noqa: B006 (jsonargparse needs a literal)
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        augmentation: Augmentation | None = Augmentation(),  # noqa: B008
    ) -> None:
        super().__init__()
        self.tasks = check_task_names(tasks)
        source.check_tasks(self.tasks)
        if batch_size <= 0 or (eval_batch_size is not None and eval_batch_size <= 0):
            raise ValueError(f"data.batch_size and data.eval_batch_size must be positive; got {batch_size}, "
                             f"{eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0; got {num_workers}")
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augmentation = augmentation
        self._datasets: dict[Split, Dataset] = {}

    @property
    def task_channels(self) -> dict[str, int]:
        """Output width of every task, in task order (linked to the model by the CLI)."""
        return {t: get_task(t).out_channels(self.source.num_classes) for t in self.tasks}

    def dataset(self, split: Split) -> Dataset:
        """The (augmented, for train) dataset of ``split``, built once."""
        if split not in self._datasets:
            ds = self.source.dataset(split, self.tasks)
            if split == "train" and self.augmentation is not None:
                ds = TransformedDataset(ds, self.augmentation)
            self._datasets[split] = ds
        return self._datasets[split]

    def _loader(self, split: Split) -> DataLoader:
        ds = self.dataset(split)
        train = split == "train"
        sampler = None
        if not train and dist.is_available() and dist.is_initialized():
            sampler = UnpaddedDistributedSampler(ds)
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train and len(ds) > self.batch_size,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
