"""Records the sample ids of every training step, to compare two runs' data orders."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class BatchLog(L.Callback):
    """Append ``{"step", "epoch", "ids"}`` per training step to the JSON-lines file ``path`` (rank 0's batches)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                     "ids": list(batch["meta"]["id"])}) + "\n")
