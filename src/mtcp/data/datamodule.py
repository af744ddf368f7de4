"""The LightningDataModule: a data source, a task list, augmentation and loaders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from mtcp.data.collate import PadCollate
from mtcp.data.samplers import EpochShuffleSampler, UnpaddedDistributedSampler
from mtcp.data.sources.base import DataSource, Split
from mtcp.data.transforms import Augmentation
from mtcp.tasks import check_task_names, get_task


class TransformedDataset(Dataset):
    """Apply a random per-sample transform on top of a source's dataset (in the worker).

    Indexed by ``(epoch, index)`` keys (`EpochShuffleSampler`), the transform draws from a
    generator seeded by (seed, epoch, index): the same key gives the same augmented sample
    in any worker or process, and after a resume from an epoch-end checkpoint. A plain
    index uses torch's global generator.
    """

    def __init__(self, dataset: Dataset, transform: Callable[..., dict] | None, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if self.transform is None:
            return self.dataset[key[1] if isinstance(key, tuple) else key]
        if isinstance(key, tuple):
            epoch, index = key
            state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, dtype=np.uint64)[0]
            generator = torch.Generator().manual_seed(int(state))
            return self.transform(self.dataset[index], generator=generator)
        return self.transform(self.dataset[key])


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
        seed: seed of the training order and augmentation (default: the run's
            ``seed_everything`` value); see `mtcp.data.samplers.EpochShuffleSampler`.
        eval_size: (H, W) input grid of validation/test/predict batches (default: the
            source's ``image_size``); labels stay at their original size (`mtcp.data.collate`).
        eval_mode: ``"pad"`` pads images to ``eval_size`` (downscaling only larger ones);
            ``"resize"`` resizes every image to ``eval_size``. Predictions are mapped back
            to each label's original resolution before scoring either way.
        root: the dataset folder, for sources that read one (NYUD-v2, PASCAL-Context); the
            CLI hands it to the source (``--data.root`` is short for
            ``--data.source.init_args.root``).
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
        seed: int | None = None,
        eval_size: tuple[int, int] | None = None,
        eval_mode: Literal["pad", "resize"] = "pad",
        root: str | None = None,
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
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.train_collate = PadCollate()
        self.eval_collate = PadCollate(tuple(eval_size or source.image_size), eval_mode)  # type: ignore[arg-type]
        if root is not None:
            source_root = getattr(source, "root", None)
            if source_root is None:
                raise ValueError(f"data.root is set but data source {type(source).__name__} reads no dataset folder")
            if Path(root).expanduser() != Path(source_root):
                raise ValueError(f"data.root={root!r} differs from the source's root {str(source_root)!r}")
        self._datasets: dict[Split, Dataset] = {}
        self._resume: dict[str, int] | None = None  # where a resumed run's training order starts

    @property
    def task_channels(self) -> dict[str, int]:
        """Output width of every task, in task order (linked to the model by the CLI)."""
        return {t: get_task(t).out_channels(self.source.num_classes) for t in self.tasks}

    @property
    def drawing(self) -> dict[str, dict[str, Any]]:
        """How the class tasks are drawn: ``palettes`` (task -> `mtcp.visualize.PALETTES` name, VOC
        where the source names none) and ``class_names`` (task -> names, where known). Saved in every
        checkpoint, so pictures of a model's predictions on other images use its dataset's colours."""
        classes = [t for t in self.tasks if get_task(t).channels is None]  # widths = the source's class counts
        names = self.source.class_names
        return {"palettes": {t: self.source.palettes.get(t, "voc") for t in classes},
                "class_names": {t: list(names[t]) for t in classes if t in names}}

    def setup(self, stage: str) -> None:
        """A source without labels (`mtcp.data.sources.image_folder.ImageFolder`) serves predict only."""
        stage = str(getattr(stage, "value", stage))  # Lightning passes its TrainerFn
        if not self.source.labelled and stage != "predict":
            raise ValueError(f"data.source: {type(self.source).__name__} has no labels, so it cannot {stage}; "
                             "use it with mtcp predict (fit, validate and test need a labelled dataset)")

    def dataset(self, split: Split) -> Dataset:
        """The (augmented, for train) dataset of ``split``, built once."""
        if split not in self._datasets:
            ds = self.source.dataset(split, self.tasks)
            if split == "train":  # keyed by (epoch, index) from EpochShuffleSampler, augmented or not
                ds = TransformedDataset(ds, self.augmentation, self.seed)
            self._datasets[split] = ds
        return self._datasets[split]

    def _loader(self, split: Split) -> DataLoader:
        ds = self.dataset(split)
        train = split == "train"
        distributed = dist.is_available() and dist.is_initialized()
        if train:
            sampler = EpochShuffleSampler(ds, self.seed, distributed)
            if self._resume is not None:
                sampler.resume_at(self._resume["epoch"], self._resume["batches"] * self.batch_size)
                self._resume = None
        else:
            sampler = UnpaddedDistributedSampler(ds) if distributed else None
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train and len(sampler) > self.batch_size,  # this rank's share, not the whole set
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.train_collate if train else self.eval_collate,
        )

    def state_dict(self) -> dict[str, Any]:
        """What every checkpoint keeps of the data: how its classes are drawn (`drawing`) and, in fit,
        where the training order stands: the epoch and the batches the loop has taken in it; at an
        epoch end, the next epoch from its first batch (`mtcp.data.samplers`)."""
        trainer = self.trainer
        state: dict[str, Any] = {"drawing": self.drawing}
        if trainer is None or trainer.state.fn != "fit":
            return state
        taken = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        epoch = int(trainer.current_epoch)
        if taken >= trainer.num_training_batches:
            epoch, taken = epoch + 1, 0
        return {**state, "train_order": {"epoch": epoch, "batches": taken}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resumed run's training loader starts where the checkpoint's run stood."""
        self._resume = state_dict.get("train_order")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
