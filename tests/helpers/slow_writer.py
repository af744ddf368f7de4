"""A checkpoint writer slowed down mid-file, so that a test can kill a run during a write."""

from __future__ import annotations

import io
import time
from pathlib import Path

import lightning as L
import lightning.fabric.plugins.io.torch_io as torch_io
import torch


class SlowLastWrite(L.Callback):
    """From the second write of a ``last*`` file on: write half the bytes, touch ``marker``, sleep.

    Replaces the byte writer of Lightning's `TorchCheckpointIO` (which `AtomicCheckpointIO` calls) in
    this process; earlier writes and every other file go through unchanged.
    """

    def __init__(self, marker: str, sleep_s: float = 120.0) -> None:
        self.marker = Path(marker)
        self.sleep_s = sleep_s

    def setup(self, trainer, pl_module, stage) -> None:
        original = torch_io._atomic_save
        seen = {"last": 0}

        def slow_save(checkpoint, filepath) -> None:
            if not Path(str(filepath)).name.startswith("last"):
                return original(checkpoint, filepath)
            seen["last"] += 1
            if seen["last"] == 1:
                return original(checkpoint, filepath)
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            data = buffer.getvalue()
            with open(filepath, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                self.marker.write_text(str(filepath))
                time.sleep(self.sleep_s)  # killed here
                handle.write(data[len(data) // 2:])
            return None

        torch_io._atomic_save = slow_save
