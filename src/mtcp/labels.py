"""Label kinds: what a task's label map is, and so how data code must treat it.

A neutral module (torch only) so losses, data and metrics can share the label
conventions without importing each other. A kind knows its "no label" value (padding
and out-of-image pixels), how a geometric augmentation resamples it, how it follows a
zoom / rotation / flip, and how to draw a random valid label (benchmarks, tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

#: class-map label value of a pixel without a label
IGNORE_INDEX = 255


def resample(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """Sample a [C,H,W] map at ``grid`` ([1,h,w,2], normalised coords); outside -> 0."""
    return F.grid_sample(x[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


@dataclass(frozen=True)
class LabelKind:
    """Base: a float map [C, H, W], 0 = invalid, resampled by nearest neighbour."""

    fill: float = 0.0
    dense_class: bool = False  # int64 [H, W] class ids (classification-type likelihood)

    def warp(self, label: Tensor, grid: Tensor) -> Tensor:
        return resample(label, grid, "nearest")

    def follow(self, label: Tensor, scale: float, angle: float, flip: bool) -> Tensor:
        """The warped label after the scene was zoomed by ``scale``, rotated by ``angle``, flipped."""
        return label

    def random(self, b: int, h: int, w: int, channels: int, gen: torch.Generator) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ClassMap(LabelKind):
    """int64 [H, W] class ids, 255 = ignore (also for binary 0/1 maps)."""

    fill: float = IGNORE_INDEX
    dense_class: bool = True

    def warp(self, label: Tensor, grid: Tensor) -> Tensor:
        # shifted by one so that outside pixels (0) and ignore come back as 255
        shifted = (label.long() + 1) % (IGNORE_INDEX + 1)
        warped = resample(shifted[None].float(), grid, "nearest")[0].round().long()
        return (warped - 1) % (IGNORE_INDEX + 1)

    def random(self, b: int, h: int, w: int, channels: int, gen: torch.Generator) -> Tensor:
        return torch.randint(0, max(channels, 2), (b, h, w), generator=gen)


#: a binary map is a two-class map (channels 1: one logit)
BinaryMap = ClassMap


@dataclass(frozen=True)
class PositiveScalar(LabelKind):
    """float [1, H, W] such as metres, 0 = invalid; a zoom by ``s`` brings the scene ``s`` times closer."""

    def follow(self, label: Tensor, scale: float, angle: float, flip: bool) -> Tensor:
        return label / scale

    def random(self, b: int, h: int, w: int, channels: int, gen: torch.Generator) -> Tensor:
        return torch.rand(b, 1, h, w, generator=gen) + 0.5


@dataclass(frozen=True)
class UnitVector(LabelKind):
    """float [3, H, W] camera-frame unit vectors, 0 = invalid; they turn with the image."""

    def follow(self, label: Tensor, scale: float, angle: float, flip: bool) -> Tensor:
        x, y, z = label[0], label[1], label[2]
        cos, sin = math.cos(angle), math.sin(angle)
        x, y = cos * x - sin * y, sin * x + cos * y
        return torch.stack((-x if flip else x, y, z))

    def random(self, b: int, h: int, w: int, channels: int, gen: torch.Generator) -> Tensor:
        return F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1)
