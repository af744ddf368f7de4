"""Checkpoint files that are whole or absent: write beside, then rename.

Lightning's `TorchCheckpointIO` serialises the checkpoint in memory and writes it through an fsspec
transaction: into a file in the system temp folder, then moved onto the final path. When the temp
folder is on another filesystem than the checkpoints (a node-local ``/tmp``, checkpoints on a network
filesystem: the usual cluster layout) that move is a copy into the final path, and a process killed
during it (pre-emption, a time limit, OOM) leaves a truncated ``last.ckpt``, which the next
``--ckpt_path .../last.ckpt`` then fails to load: the previous epoch's good file is lost too.
`AtomicCheckpointIO` writes ``<path>.partial`` and renames it over ``<path>`` with `os.replace`, which
is atomic on one filesystem, so a reader sees either the old checkpoint or the new one. The CLI
installs it in place of Lightning's default (`mtcp.cli`); a user's own ``CheckpointIO`` plugin is
left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

PARTIAL_SUFFIX = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with write-then-rename saves (module doc); loading is unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        final = Path(path)
        if "://" in str(path):  # a remote filesystem (fsspec): no atomic rename there
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, final)
