"""Pad inputs to a multiple of the backbone's stride, crop outputs back.

Any input size works (e.g. 100x140): the image is zero-padded at the bottom/right to
a multiple of ``multiple``, the network runs, and every output is cropped back to the
input's extent, so pixel (i, j) of an output always refers to pixel (i, j) of the image.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mtcp.models.outputs import Predictions


def pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Zero-pad at the bottom/right to a multiple of ``multiple``, without a branch on the size, so a
    graph traced at one size (``mtcp export`` with dynamic height/width) pads right at every size."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, -w % multiple, 0, -h % multiple))


def crop_outputs(outputs: Predictions, size: tuple[int, int]) -> Predictions:
    h, w = size
    return outputs.map(lambda _, y: y[..., :h, :w])
