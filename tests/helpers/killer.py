"""A pre-emption, as a callback: SIGKILL the process right after a given optimizer step."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process when optimizer step ``step`` has ended (on every DDP rank: each kills itself,
    as a job scheduler kills all of a job's processes); nothing after it runs, not even a checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
