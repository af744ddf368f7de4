"""The data-source interface: where labelled samples come from.

A source knows which tasks it can label, how many classes its classification tasks
have, and builds one `torch.utils.data.Dataset` per split. The data module
(`mtcp.data.datamodule`) adds augmentation, batching and sharding on top, so a new
dataset is one new `DataSource` subclass.

Sample convention (every source returns exactly this; tensors are CPU, unbatched):

==============  ===================  =====================================================
key             dtype / shape        meaning
==============  ===================  =====================================================
image           float32 [3, H, W]    RGB in [0, 1] (normalisation belongs to the backbone)
semseg          int64   [H, W]       class id, 255 = ignore
human_parts     int64   [H, W]       0 background, 1..6 parts, 255 = ignore (all 255 when
                                     the image has no annotated person)
sal             int64   [H, W]       0/1 saliency, 255 = ignore
edge            int64   [H, W]       0/1 boundary, 255 = ignore
depth           float32 [1, H, W]    metres, 0 = invalid
normals         float32 [3, H, W]    unit vectors in the camera frame (x right, y down,
                                     z forward), facing the camera; all-zero = invalid
meta            dict                 ``id`` (str), ``intrinsics`` float32 [4]
                                     (fx, fy, cx, cy) for the sample's current pixel grid,
                                     ``size`` int64 [2]: the label's original (H, W)
==============  ===================  =====================================================

Only the requested tasks' keys are present (plus ``image`` and ``meta``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

from torch.utils.data import Dataset

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class DataSource(ABC):
    """A labelled dense-prediction dataset, split into train/val/test."""

    #: tasks this source can provide labels for (names from `mtcp.tasks.TASKS`)
    tasks: tuple[str, ...] = ()
    #: sample count of each split as published, for `mtcp check-data`; None: not known
    published_split_sizes: ClassVar[dict[str, int] | None] = None
    #: False for pictures without labels (`ImageFolder`): only ``predict`` may use the source
    labelled: ClassVar[bool] = True
    #: palette name (`mtcp.visualize.PALETTES`) of each class task, as papers draw the dataset;
    #: a task not named here is drawn with the VOC colour map
    palettes: dict[str, str] = {}
    #: class names of each class task, in label order, for the palettes' legends
    class_names: dict[str, tuple[str, ...]] = {}

    @property
    @abstractmethod
    def num_classes(self) -> dict[str, int]:
        """Number of classes of each classification task this source provides."""

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int]:
        """The (H, W) that training crops and evaluation batches are brought to."""

    @property
    def expected_image_size(self) -> tuple[int, int] | None:
        """(H, W) of every image of this copy's layout, for `mtcp check-data`; None: sizes vary."""
        return None

    @abstractmethod
    def dataset(self, split: Split, tasks: Sequence[str]) -> Dataset:
        """The samples of ``split`` carrying labels for ``tasks`` (see module docstring)."""

    def check_tasks(self, tasks: Sequence[str]) -> None:
        """Raise a clear error when a requested task is not provided by this source."""
        missing = [t for t in tasks if t not in self.tasks]
        if missing:
            raise ValueError(
                f"data.tasks: {missing} not provided by data source {type(self).__name__}; "
                f"it provides {list(self.tasks)}"
            )
