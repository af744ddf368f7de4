"""Log a picture grid of predictions during validation.

One row per sample: the image, then ground truth and prediction side by side for
every task. Sent to every active logger that takes images (W&B, TensorBoard) and
always saved as ``<default_root_dir>/pictures/val_epoch<NNN>.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from mtcp.data.collate import align_outputs
from mtcp.labels import PositiveScalar
from mtcp.models.outputs import Predictions
from mtcp.tasks import colorize, get_task
from mtcp.visualize import image_to_rgb


def _first(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` samples of a collated batch (tensors, lists and the meta dict)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        out[key] = _first(value, n) if isinstance(value, dict) else value[:n]
    return out


def _fit(tile: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB tile to (H, W) when it differs (the image may be on another grid than the labels)."""
    if tile.shape[:2] == size:
        return tile
    return np.asarray(Image.fromarray(tile).resize((size[1], size[0]), Image.BILINEAR))


def prediction_grid(batch: dict[str, Any], outputs: dict[str, torch.Tensor], task_channels: dict[str, int],
                    num_samples: int, gap: int = 2, palettes: dict[str, str] | None = None) -> np.ndarray:
    """Compose image | (label, prediction) per task for the first ``num_samples`` samples.

    ``outputs`` are on the input grid; they are mapped onto each label's grid first. Class maps
    are drawn in ``palettes`` (task -> palette name; the data module's ``drawing``), else VOC.
    """
    palettes = palettes or {}
    n = min(num_samples, batch["image"].shape[0])
    batch = _first(batch, n)
    outputs = align_outputs(Predictions({t: y[:n] for t, y in outputs.items()}), batch).final
    rows = []
    for i in range(n):
        tiles = [image_to_rgb(batch["image"][i])]
        for task, channels in task_channels.items():
            label = batch[task][i]
            depth_range = None
            if isinstance(get_task(task).label, PositiveScalar):  # label and prediction on one colour scale
                valid = label[label > 0]
                depth_range = (float(valid.min()), float(valid.max())) if valid.numel() else None
            palette = palettes.get(task, "voc")
            tiles.append(colorize(task, label, channels, is_label=True, depth_range=depth_range, palette=palette))
            tiles.append(colorize(task, outputs[task][i], channels, depth_range=depth_range, palette=palette))
        size = tiles[1].shape[:2] if len(tiles) > 1 else tiles[0].shape[:2]
        tiles = [_fit(t, size) for t in tiles]
        h = size[0]
        spacer = np.full((h, gap, 3), 255, dtype=np.uint8)
        row = [t for tile in tiles for t in (tile, spacer)][:-1]
        rows.append(np.concatenate(row, axis=1))
    spacer = np.full((gap, rows[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([r for row in rows for r in (row, spacer)][:-1], axis=0)


class PredictionGrid(L.Callback):
    """Every ``every_n_epochs`` validation epochs, picture the first validation batch.

    Args:
        every_n_epochs: how often to draw (1 = every validation epoch, 0 = never).
        num_samples: rows in the grid.
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 4) -> None:
        if every_n_epochs < 0 or num_samples <= 0:
            raise ValueError(f"pictures.every_n_epochs must be >= 0 and pictures.num_samples > 0; got "
                             f"{every_n_epochs}, {num_samples}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self._batch: dict[str, Any] | None = None

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and self.every_n_epochs and trainer.is_global_zero and not trainer.sanity_checking:
            self._batch = batch

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batch, self._batch = self._batch, None
        if batch is None or trainer.current_epoch % self.every_n_epochs:
            return
        with torch.no_grad():
            outputs = pl_module(batch["image"][: self.num_samples]).final
        drawing = getattr(getattr(trainer, "datamodule", None), "drawing", {"palettes": {}})
        grid = prediction_grid(batch, outputs, pl_module.task_channels, self.num_samples,
                               palettes=drawing["palettes"])
        self.publish(trainer, grid)

    def publish(self, trainer: L.Trainer, grid: np.ndarray) -> Path:
        step, epoch = trainer.global_step, trainer.current_epoch
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/predictions", images=[grid], step=step,
                                 caption=[f"epoch {epoch}: image | label, prediction per task"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/predictions", grid, step, dataformats="HWC")
        path = Path(trainer.default_root_dir) / "pictures" / f"val_epoch{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        return path
