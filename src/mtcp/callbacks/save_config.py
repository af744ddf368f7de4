"""Save the fully resolved run config next to the logs, and into the W&B run.

LightningCLI writes ``config.yaml`` into the log directory; with a `WandbLogger`
the same resolved config also becomes the W&B run config (searchable, comparable
across a sweep) and a file of the run (``mtcp_config.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class SaveConfigToLoggers(SaveConfigCallback):
    """`SaveConfigCallback` that also hands the config to W&B (rank 0 only, no collectives)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        text = self.parser.dump(self.config, skip_none=False)
        config = yaml.safe_load(text)
        for logger in wandb_loggers:
            run = logger.experiment
            run.config.update(config, allow_val_change=True)
            path = Path(run.dir) / "mtcp_config.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)  # a disabled run's folder is never created
            path.write_text(text)
            run.save(str(path), base_path=run.dir, policy="now")
