"""Batching samples of different sizes, and scoring at the labels' original resolution.

Evaluation protocol (docs/method.md section 4): metrics are computed on the original label
maps, every sample once. Real datasets mix image sizes (PASCAL) and networks may be
run at another input size, so batching works in two grids:

- the **input grid**: each image is optionally downscaled to fit ``input_size`` (mode
  ``"pad"``, aspect kept) or resized to exactly ``input_size`` (mode ``"resize"``, the
  ATRC/MTI-Net PASCAL protocol), then zero-padded at the bottom/right to ``input_size``.
  ``meta["input_size"]`` records the (h, w) the image occupies; ``meta["intrinsics"]``
  are rescaled with the image. A fixed pad target also makes every prediction
  independent of its batch-mates (padding can reach the image through the receptive
  field), which DDP-exact evaluation needs.
- the **label grid**: labels are never resampled, only padded at the bottom/right with
  their invalid value (255 for class maps, 0 for depth and normals), so padded pixels
  never count, to the largest label of the batch or the input grid, whichever is larger
  (so that without resizing, images, labels and predictions share one grid).

`align_to_labels` maps a prediction from the input grid to the label grid: per sample,
crop to ``meta["input_size"]``, resize (bilinear, on logits/values) to the original
label size ``meta["size"]``, place at the top-left. Metrics on the padded label grid
then equal metrics at each image's original resolution. When nothing was resized the
two grids share their origin and the alignment is a crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

from mtcp.models.outputs import Predictions
from mtcp.tasks import get_task


def fitted_size(size: tuple[int, int], target: tuple[int, int], mode: str) -> tuple[int, int]:
    """The (h, w) an image of ``size`` gets on an input grid of ``target``."""
    if mode == "resize":
        return target
    scale = min(1.0, target[0] / size[0], target[1] / size[1])
    if scale == 1.0:
        return size
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _pad(x: Tensor, hw: tuple[int, int], value: float) -> Tensor:
    h, w = x.shape[-2:]
    if (h, w) == hw:
        return x
    return F.pad(x, (0, hw[1] - w, 0, hw[0] - h), value=value)


@dataclass
class PadCollate:
    """A ``collate_fn`` that brings images to one input grid and pads labels (see module docs).

    Args:
        input_size: (H, W) of the input grid; None pads to the largest image of the batch
            (and never resizes), which is what training batches need.
        mode: ``"pad"`` downscales only images larger than ``input_size`` (aspect kept);
            ``"resize"`` resizes every image to exactly ``input_size``.
    """

    input_size: tuple[int, int] | None = None
    mode: Literal["pad", "resize"] = "pad"

    def __post_init__(self) -> None:
        if self.mode not in ("pad", "resize"):
            raise ValueError(f"eval mode must be 'pad' or 'resize'; got {self.mode!r}")
        if self.input_size is not None:
            if len(self.input_size) != 2 or min(self.input_size) <= 0:
                raise ValueError(f"eval size must be two positive integers (H, W); got {self.input_size}")
            self.input_size = (int(self.input_size[0]), int(self.input_size[1]))

    def _place_image(self, sample: dict[str, Any]) -> tuple[Tensor, dict]:
        image: Tensor = sample["image"]
        meta = dict(sample.get("meta", {}))
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if self.input_size is not None:
            new = fitted_size(size, self.input_size, self.mode)
            if new != size:
                image = F.interpolate(image[None], size=new, mode="bilinear", align_corners=False,
                                      antialias=new[0] < size[0] or new[1] < size[1])[0].clamp(0, 1)
                if "intrinsics" in meta:
                    sy, sx = new[0] / size[0], new[1] / size[1]
                    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
                    meta["intrinsics"] = torch.as_tensor(meta["intrinsics"], dtype=torch.float32) * scale
                size = new
        meta["input_size"] = torch.tensor(size, dtype=torch.int64)
        return image, meta

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        placed = [self._place_image(s) for s in samples]
        if self.input_size is not None:
            grid = self.input_size
        else:
            grid = (max(int(im.shape[-2]) for im, _ in placed), max(int(im.shape[-1]) for im, _ in placed))
        keys = [k for k in samples[0] if k not in ("image", "meta")]
        # at least the input grid: when nothing was resized, labels, images and predictions share one grid
        label_hw = (
            max([int(s[k].shape[-2]) for s in samples for k in keys] + [grid[0]]),
            max([int(s[k].shape[-1]) for s in samples for k in keys] + [grid[1]]),
        )
        batch: dict[str, Any] = {"image": torch.stack([_pad(im, grid, 0.0) for im, _ in placed])}
        for key in keys:
            fill = get_task(key).label.fill  # "no label"
            batch[key] = torch.stack([_pad(s[key], label_hw, fill) for s in samples])
        batch["meta"] = default_collate([m for _, m in placed])
        return batch


def align_to_labels(pred: Tensor, meta: dict[str, Any], label_hw: tuple[int, int] | torch.Size) -> Tensor:
    """``pred`` [B, C, h, w] on the input grid -> [B, C, H, W] on the (padded) label grid.

    Needs ``meta["input_size"]`` (set by `PadCollate`) and ``meta["size"]`` (the original
    label sizes); without them ``pred`` is returned unchanged (the metrics then resize it
    to the label size as a whole).
    """
    if "input_size" not in meta or "size" not in meta:
        return pred
    hw = (int(label_hw[0]), int(label_hw[1]))
    input_size, size = meta["input_size"].tolist(), meta["size"].tolist()
    if input_size == size and pred.shape[-2] >= hw[0] and pred.shape[-1] >= hw[1]:
        return pred[..., : hw[0], : hw[1]]  # same grid: the padding differs only
    out = pred.new_zeros(pred.shape[0], pred.shape[1], *hw)
    for i, ((ih, iw), (h, w)) in enumerate(zip(input_size, size, strict=True)):
        crop = pred[i : i + 1, :, :ih, :iw]
        if (ih, iw) != (h, w):
            crop = F.interpolate(crop.float(), size=(h, w), mode="bilinear", align_corners=False).to(pred.dtype)
        out[i, :, :h, :w] = crop[0]
    return out


def align_outputs(outputs: Predictions, batch: dict[str, Any]) -> Predictions:
    """`align_to_labels` for every level and task of a network's outputs (tasks with a label)."""
    meta = batch.get("meta", {})
    return outputs.map(lambda t, y: align_to_labels(y, meta, batch[t].shape[-2:]) if t in batch else y)
