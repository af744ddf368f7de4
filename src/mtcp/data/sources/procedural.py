"""`ProceduralScenes`: the embedded default data source (docs/method.md section 6).

Samples are rendered on the fly from the key (seed, split, index), so the dataset
needs no files, is identical in every process and DataLoader worker, and provides
both task sets (NYUD-like semseg/depth/normals and PASCAL-like human parts/saliency,
plus edges) from the same scenes with exact geometry and known intrinsics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from mtcp.data.procedural.render import intrinsics, render_sample
from mtcp.data.procedural.scene import HUMAN_PART_CLASSES, SEMSEG_CLASSES
from mtcp.data.sources.base import SPLITS, DataSource, Split

__all__ = ["HUMAN_PART_CLASSES", "SEMSEG_CLASSES", "ProceduralScenes"]

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_SETTING = "data.source.init_args"


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _ProceduralDataset(Dataset):
    """One split: item ``i`` is rendered from (seed, split, i) when it is asked for."""

    def __init__(
        self, split: Split, tasks: tuple[str, ...], size: int, seed: int, image_size: tuple[int, int]
    ):
        self.split, self.tasks, self.size, self.seed, self.image_size = split, tasks, size, seed, image_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for the {self.split} split of {self.size} samples")
        index = index % self.size
        h, w = self.image_size
        _, out = render_sample(self.seed, _SPLIT_CODES[self.split], index, h, w)
        sample: dict = {"image": torch.from_numpy(out["image"]).to(torch.float32).div_(255.0)}
        for task in self.tasks:
            if task == "depth":
                sample["depth"] = torch.from_numpy(out["depth"]).unsqueeze(0)
            elif task == "normals":
                sample["normals"] = torch.from_numpy(out["normals"])
            else:  # class maps: semseg, human_parts, sal, edge
                sample[task] = torch.from_numpy(out[task]).to(torch.int64)
        sample["meta"] = {
            "id": f"{self.split}/{index:06d}",
            "intrinsics": torch.tensor(intrinsics(h, w), dtype=torch.float32),
            "size": torch.tensor([h, w], dtype=torch.int64),
        }
        return sample


class ProceduralScenes(DataSource):
    """Procedural indoor scenes rendered by ray casting; see `mtcp.data.procedural`.

    Args:
        image_size: (H, W) of every sample; the camera is the NYU-v2 one scaled to it,
            so any size shows the same scenes.
        seed: selects the family of scenes; (seed, split, index) fixes a sample.
        train_size, val_size, test_size: number of samples of each split.
    """

    tasks = ("semseg", "depth", "normals", "human_parts", "sal", "edge")
    palettes = {"semseg": "nyud40", "human_parts": "parts"}  # class 0 (floor) gets a colour, as NYUD's wall
    class_names = {"semseg": SEMSEG_CLASSES, "human_parts": HUMAN_PART_CLASSES}

    def __init__(
        self,
        image_size: tuple[int, int] = (120, 160),
        seed: int = 0,
        train_size: int = 2000,
        val_size: int = 200,
        test_size: int = 200,
    ) -> None:
        size = tuple(image_size) if isinstance(image_size, (tuple, list)) else None
        if size is None or len(size) != 2 or not all(_is_int(s) and s > 0 for s in size):
            shown = tuple(image_size) if isinstance(image_size, (tuple, list)) else image_size
            raise ValueError(f"{_SETTING}.image_size must be two positive integers (H, W); got {shown}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"{_SETTING}.seed must be a non-negative integer; got {seed!r}")
        for name, n in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if not _is_int(n) or n < 0:
                raise ValueError(f"{_SETTING}.{name} must be a non-negative integer; got {n!r}")
        self._image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.seed = seed
        self.sizes: dict[str, int] = {"train": train_size, "val": val_size, "test": test_size}

    @property
    def num_classes(self) -> dict[str, int]:
        return {"semseg": len(SEMSEG_CLASSES), "human_parts": len(HUMAN_PART_CLASSES)}

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def dataset(self, split: Split, tasks: Sequence[str]) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}; got {split!r}")
        tasks = tuple(tasks)
        self.check_tasks(tasks)
        return _ProceduralDataset(split, tasks, self.sizes[split], self.seed, self._image_size)
