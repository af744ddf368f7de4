"""How a task's prediction is written to disk (`mtcp.callbacks.PredictionWriter`).

Each writer takes the path without extension and one prediction [C, H, W] (the
network output at the sample's original size) and adds its own extension.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

#: (path without extension, prediction [C, H, W]) -> None
Writer = Callable[[Path, Tensor], None]


def class_png(path: Path, pred: Tensor) -> None:
    """``.png``: uint8 class ids (arg-max of the logits)."""
    Image.fromarray(pred.argmax(dim=0).numpy().astype(np.uint8)).save(path.with_name(path.name + ".png"))


def probability_png(path: Path, pred: Tensor) -> None:
    """``.png``: uint8 sigmoid probability * 255 of a one-logit map."""
    prob = pred[0].sigmoid().mul(255).round().numpy().astype(np.uint8)
    Image.fromarray(prob).save(path.with_name(path.name + ".png"))


def scalar_npy(path: Path, pred: Tensor) -> None:
    """``.npy``: float32 [H, W] values (metres for depth)."""
    np.save(path.with_name(path.name + ".npy"), pred[0].numpy().astype(np.float32))


def unit_vector_npy(path: Path, pred: Tensor) -> None:
    """``.npy``: float32 [H, W, 3] unit vectors."""
    unit = F.normalize(pred, dim=0, eps=1e-12)
    np.save(path.with_name(path.name + ".npy"), unit.permute(1, 2, 0).numpy().astype(np.float32))
