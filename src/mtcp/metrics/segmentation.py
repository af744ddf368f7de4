"""Semantic segmentation / human parts: mIoU and pixel accuracy from a pooled confusion matrix.

Which classes count in the mean: a class whose union (label pixels + predicted
pixels - intersection) is zero over the WHOLE split is absent from both labels and
predictions; its IoU is undefined and it is left out of the mean (NaN-mean). It is
not scored as 0, which is what torchmetrics' ``MulticlassJaccardIndex(average="macro")``
does by default and which would penalise e.g. part classes a split never contains.
A class that occurs in the labels but is never predicted (or vice versa) scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from mtcp.metrics.resize import check_batch, resize_to_label


class SegmentationMetrics(Metric):
    """Pooled confusion matrix over the split; ``miou`` (headline) and ``pixel_acc``, in %.

    The confusion matrix is an int64 sum-reduced state (rows = label, columns =
    prediction), so DDP evaluation gives exactly the single-process numbers.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.add_state(
            "confmat",
            torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(self, output: Tensor, label: Tensor) -> None:
        """Add a batch: ``output`` logits [B, C, h, w], ``label`` int64 [B, H, W] (ignore_index skipped)."""
        check_batch(output, label, label_dims=3)
        if output.shape[1] != self.num_classes:
            raise ValueError(
                f"prediction has {output.shape[1]} channels, expected num_classes={self.num_classes}"
            )
        pred = resize_to_label(output, label.shape[-2:]).argmax(dim=1)
        label = label.long()
        valid = label != self.ignore_index
        bad = valid & ((label < 0) | (label >= self.num_classes))
        if bool(bad.any()):
            value = int(label[bad][0])
            raise ValueError(
                f"segmentation label value {value} is out of range: allowed are 0..{self.num_classes - 1} "
                f"and the ignore index {self.ignore_index}"
            )
        index = label[valid] * self.num_classes + pred[valid]
        counts = torch.bincount(index, minlength=self.num_classes**2)
        self.confmat += counts.reshape(self.num_classes, self.num_classes)

    @staticmethod
    def _iou(confmat: Tensor) -> Tensor:
        """Per-class IoU in %, NaN where the class has zero union (absent from labels and predictions)."""
        cm = confmat.double()
        tp = cm.diagonal()
        union = cm.sum(dim=0) + cm.sum(dim=1) - tp
        iou = tp / union * 100.0  # 0/0 -> NaN marks classes that do not count
        return torch.where(union > 0, iou, torch.full_like(iou, float("nan")))

    def compute(self) -> dict[str, Tensor]:
        """``miou``: NaN-mean of per-class IoU (zero-union classes excluded); ``pixel_acc``: correct/valid."""
        iou = self._iou(self.confmat)
        total = self.confmat.sum().double()
        return {
            "miou": iou.nanmean(),  # NaN if no class occurred at all
            "pixel_acc": self.confmat.diagonal().sum().double() / total * 100.0,
        }

    def iou_per_class(self) -> Tensor:
        """Per-class IoU in % (float64 [num_classes]), NaN for classes that do not count in ``miou``.

        A method rather than a ``compute`` key because the module logs only scalars.
        Synchronises across processes like ``compute`` does.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync and not self._is_synced,
            should_unsync=self._should_unsync,
        ):
            return self._iou(self.confmat).clone()
