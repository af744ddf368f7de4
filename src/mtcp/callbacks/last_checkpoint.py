"""``last.ckpt``: the newest state of this run, rewritten at every epoch end.

Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when a top-k
checkpoint is saved at the same step, and a second run in the same folder writes
``last-v1.ckpt`` beside the first run's ``last.ckpt``: "last" can then be an older epoch, or
another run's model. This callback has one job and no such conditions: after every
training epoch (after its validation, when there is one) and when training ends, it
writes the current state to ``<dirpath>/last.ckpt``, replacing whatever file is there.
Resuming (``--ckpt_path .../last.ckpt``), ``make fit``'s validation and the notebooks
all read that file.

With ``every_n_train_steps`` it is also written every that many optimizer steps, mid-epoch:
the checkpoint then holds the training loader's position (`torchdata`'s `StatefulDataLoader`,
restored by Lightning), the balancer's open window and the loop counters, so a run killed
between epoch ends resumes from its last step checkpoint exactly as if it had not stopped
(``tests/training/test_resume.py``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Always ``<dirpath>/last.ckpt`` = the newest epoch-end (or end-of-training) state of this run.

    Args:
        dirpath: the checkpoint folder (the CLI links it to ``checkpoint.dirpath``); None: Lightning's
            default, ``<log dir>/checkpoints``.
        every_n_train_steps: also write it every that many optimizer steps (None: at epoch ends only).
    """

    FILENAME = "last"

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and (isinstance(every_n_train_steps, bool) or every_n_train_steps < 1):
            raise ValueError(f"last_checkpoint.every_n_train_steps must be a positive number of steps or null; "
                             f"got {every_n_train_steps!r}")
        super().__init__(dirpath=dirpath, filename=self.FILENAME, monitor=None, save_top_k=1, save_last=False,
                         every_n_epochs=1, enable_version_counter=False, auto_insert_metric_name=False)
        self.step_interval = every_n_train_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Every ``every_n_train_steps`` optimizer steps (once per step, also with gradient accumulation)."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (self.step_interval and trainer.global_step % self.step_interval == 0
                and not self._should_skip_saving_checkpoint(trainer)):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Also the state of a run that stopped between epoch ends (``max_steps``, a callback's stop)."""
        if not self._should_skip_saving_checkpoint(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
