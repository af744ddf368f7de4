"""`ImageFolder`: unlabelled pictures (a folder or a glob of JPEG/PNG files) for ``mtcp predict``.

A user's own photos have any size, no labels and no known camera. This source serves them
in the sample contract (`mtcp.data.sources.base`) with only ``image`` and ``meta``:

- ``meta["id"]``: the file's path relative to the folder (or to the glob's fixed part),
  without its extension, so predictions keep the folder structure (``trip/img_001``);
- ``meta["size"]``: the picture's own (H, W), so `mtcp.callbacks.PredictionWriter` writes
  every prediction back at that size;
- ``meta["intrinsics"]``: nominal pinhole values (focal length = the larger side, principal
  point at the centre); the network does not read them, they only keep the contract.

Images are turned upright by their EXIF orientation (phone photos) and converted to RGB.
The class counts and palettes of the model's tasks are those of the training data; with
``mtcp predict --ckpt_path`` the CLI reads them from the checkpoint when they are not given
(`mtcp.cli`). There are no labels, so the source serves ``predict`` only: fit, validate and
test refuse it (`mtcp.data.datamodule`).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from mtcp.data.sources.base import DataSource, Split
from mtcp.data.sources.files import DatasetFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_SETTING = "data.source.init_args"


def find_images(root: str | Path) -> tuple[Path, list[Path]]:
    """The images ``root`` names, sorted, with the folder their ids are relative to.

    ``root`` is a folder (searched recursively for JPEG/PNG files) or a glob pattern
    (``photos/*.jpg``, ``shots/**/*.png``; ``**`` recurses).
    """
    text = str(Path(root).expanduser())
    if glob.has_magic(text):
        base = Path(text)
        while glob.has_magic(str(base)):
            base = base.parent
        files = [Path(p) for p in glob.glob(text, recursive=True)]
        where = f"the pattern {text!r}"
    else:
        base = Path(text)
        if not base.is_dir():
            raise DatasetFileError(f"{_SETTING}.root={text!r} is neither a folder nor a glob pattern of images")
        files = [p for p in base.rglob("*")]
        where = f"the folder {text!r}"
    images = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetFileError(f"{where} holds no JPEG or PNG file ({', '.join(IMAGE_SUFFIXES)}); "
                               f"set data.root to a folder or glob of images")
    return base, images


def read_picture(path: Path) -> torch.Tensor:
    """An image file as float32 [3, H, W] RGB in [0, 1], upright by its EXIF orientation."""
    try:
        with Image.open(path) as picture:
            rgb = ImageOps.exif_transpose(picture).convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetFileError(f"cannot read image {str(path)!r} ({err}); expected a JPEG or PNG file") from err
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


class _PictureDataset(Dataset):
    """Item ``i``: the ``i``-th picture, read when asked for."""

    def __init__(self, base: Path, paths: list[Path]) -> None:
        self.base, self.paths = base, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        image = read_picture(path)
        h, w = image.shape[-2:]
        focal = float(max(h, w))
        return {
            "image": image,
            "meta": {
                "id": path.relative_to(self.base).with_suffix("").as_posix(),
                "intrinsics": torch.tensor([focal, focal, w / 2, h / 2], dtype=torch.float32),
                "size": torch.tensor([h, w], dtype=torch.int64),
            },
        }


class ImageFolder(DataSource):
    """Every JPEG/PNG file of a folder or glob, unlabelled, for ``mtcp predict``.

    Args:
        root: a folder (searched recursively) or a glob pattern of images.
        image_size: the (H, W) input grid: larger pictures are downscaled to fit it, aspect
            kept (``data.eval_mode: pad``), and predictions go back to each picture's size.
            Use the training run's size.
        num_classes: class counts of the model's class tasks (e.g. ``{semseg: 40}``); None:
            read from ``--ckpt_path`` by ``mtcp predict``.
        palettes: palette of each class task (`mtcp.visualize.PALETTES`); None: the training
            data's, read from ``--ckpt_path``, else the VOC colour map.
        class_names: class names of each class task, for the legends; None: as ``palettes``.
    """

    labelled = False
    tasks = ("semseg", "human_parts", "sal", "edge", "depth", "normals")

    def __init__(
        self,
        root: str | None = None,
        image_size: tuple[int, int] = (480, 640),
        num_classes: dict[str, int] | None = None,
        palettes: dict[str, str] | None = None,
        class_names: dict[str, list[str]] | None = None,
    ) -> None:
        if root is None or str(root).strip() == "":
            raise ValueError("ImageFolder needs pictures: set data.root=/path/to/photos (a folder or a glob)")
        if len(image_size) != 2 or min(image_size) <= 0:
            raise ValueError(f"{_SETTING}.image_size must be two positive integers (H, W); got {image_size}")
        self.root = Path(root).expanduser()
        self.base, self.paths = find_images(self.root)
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._num_classes = dict(num_classes) if num_classes is not None else None
        self.palettes = dict(palettes or {})
        self.class_names = {task: tuple(names) for task, names in (class_names or {}).items()}

    @property
    def num_classes(self) -> dict[str, int]:
        if self._num_classes is None:
            raise ValueError(f"{_SETTING}.num_classes is not set: give the training data's class counts "
                             "(e.g. {semseg: 40}) or pass --ckpt_path, from which mtcp predict reads them")
        return self._num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def dataset(self, split: Split, tasks: Sequence[str]) -> Dataset:
        self.check_tasks(tasks)
        return _PictureDataset(self.base, self.paths)
