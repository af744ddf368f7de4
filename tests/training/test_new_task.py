"""A new task is described once: registered here, in this one file, and trained through the CLI.

"occupancy" is a per-pixel binary map (1 = furniture: table or cabinet), derived from
the procedural scenes' semantic labels by a tiny source subclass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch.utils.data import Dataset

from mtcp import losses, visualize, writers
from mtcp.bench import random_batch
from mtcp.cli import cli_main
from mtcp.data.procedural.scene import CABINET, TABLE
from mtcp.data.sources.base import Split
from mtcp.data.sources.procedural import ProceduralScenes
from mtcp.data.transforms import Augmentation
from mtcp.labels import IGNORE_INDEX, BinaryMap
from mtcp.metrics import SaliencyMetrics
from mtcp.tasks import TASKS, Task, colorize, register

OCCUPANCY = Task("occupancy", 1, losses.balanced_bce, lambda c: SaliencyMetrics(), "maxf", True,
                 label=BinaryMap(), picture=visualize.probability_picture, write=writers.probability_png)


class _Occupancy(Dataset):
    """The procedural samples with ``occupancy`` derived from their semseg label."""

    def __init__(self, base: Dataset, tasks: Sequence[str]) -> None:
        self.base, self.tasks = base, list(tasks)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        sample = self.base[index]
        sem = sample["semseg"]
        occupancy = torch.isin(sem, torch.tensor([TABLE, CABINET])).long()
        sample["occupancy"] = torch.where(sem == IGNORE_INDEX, IGNORE_INDEX, occupancy)
        return {"image": sample["image"], **{t: sample[t] for t in self.tasks}, "meta": sample["meta"]}


class OccupancyScenes(ProceduralScenes):
    tasks = (*ProceduralScenes.tasks, "occupancy")

    def dataset(self, split: Split, tasks: Sequence[str]) -> Dataset:
        self.check_tasks(tasks)
        base = [t for t in tasks if t != "occupancy"]
        return _Occupancy(super().dataset(split, base if "semseg" in base else [*base, "semseg"]), tasks)


@pytest.fixture
def occupancy() -> Iterator[Task]:
    yield register(OCCUPANCY)
    del TASKS["occupancy"]


def test_a_registered_task_trains_through_the_cli(occupancy, tiny_run, tmp_path):
    run = [*tiny_run, f"--data.source={__name__}.OccupancyScenes", "--data.source.init_args.image_size=[64,64]",
           "--data.tasks=[semseg,occupancy]", "--data.augmentation.scales=[1.0,1.25]",
           "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    cli_main(["fit", *run])
    cli_main(["validate", *run, f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])
    metrics = json.loads((tmp_path / "validate_metrics.json").read_text())
    for key in ("val/occupancy/maxf", "val/loss_occupancy", "val/semseg/miou"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    assert 0.0 <= metrics["val/occupancy/maxf"] <= 100.0


def test_a_registered_task_gets_padding_augmentation_pictures_and_random_labels(occupancy):
    sample = OccupancyScenes(image_size=(32, 32), val_size=1).dataset("val", ["occupancy"])[0]
    assert set(sample["occupancy"].unique().tolist()) <= {0, 1, IGNORE_INDEX}
    out = Augmentation(scales=(0.5,), crop_size=(32, 32), flip=False)(sample)
    assert (out["occupancy"][-1] == IGNORE_INDEX).all()  # zoomed out: the border is "no label"
    assert colorize("occupancy", torch.zeros(1, 8, 8)).shape == (8, 8, 3)
    batch = random_batch({"occupancy": 1}, 2, 8, 8, torch.device("cpu"))
    assert batch["occupancy"].shape == (2, 8, 8) and set(batch["occupancy"].unique().tolist()) <= {0, 1}
