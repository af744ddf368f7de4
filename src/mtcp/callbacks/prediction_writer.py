"""``mtcp predict``: write every sample's predictions to disk at its original resolution.

``mtcp predict`` adds this writer when none is configured (``configs/predict.yaml`` sets its
options)::

    mtcp predict --config configs/nyud.yaml --data.root /data/NYUD_MT \\
        --ckpt_path runs/nyud/checkpoints/last.ckpt
    mtcp predict --config configs/nyud.yaml --ckpt_path runs/nyud/checkpoints/last.ckpt \\
        --data.source mtcp.data.sources.ImageFolder --data.root photos/

It predicts the ``test`` split of a dataset, or every picture of a folder (`ImageFolder`),
and writes, per task, one file per sample id under ``output_dir`` (default
``<trainer.default_root_dir>/predictions``), in the task's format (`mtcp.tasks.Task.write`,
`mtcp.writers`):

==============  ============================================================
semseg, parts   ``<task>/<id>.png``: uint8 class ids (arg-max)
depth           ``depth/<id>.npy``: float32 [H, W], metres
normals         ``normals/<id>.npy``: float32 [H, W, 3], unit vectors
sal, edge       ``<task>/<id>.png``: uint8 probability * 255
==============  ============================================================

With ``colormap: true`` (the default) every task also gets ``<task>/<id>_color.png``, a
colour-mapped picture for people (`mtcp.tasks.colorize`, `mtcp.visualize`: the dataset's
class palette, depth ramp, normals as RGB), and each class task a ``<task>/legend.png``.

Predictions are brought back to the sample's original size (``meta["size"]``) the way
the evaluation does it (`mtcp.data.collate.align_to_labels`): cropped to the image
region of the input grid, then resized bilinearly on logits/values. Under DDP each rank
writes its own samples; the non-padding sampler gives each sample to exactly one rank.
Set ``return_predictions: false`` (as ``configs/predict.yaml`` does) so a whole split of
logits is not also kept in memory.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from mtcp.data.collate import align_to_labels
from mtcp.tasks import colorize, get_task
from mtcp.visualize import legend


class PredictionWriter(BasePredictionWriter):
    """Write per-sample predictions (see module docs).

    Args:
        output_dir: where to write; default ``<trainer.default_root_dir>/predictions``.
            Must not lie inside the dataset folder.
        tasks: the tasks to write (default: all of the model's).
        colormap: also write a colour-mapped PNG per task and sample.
    """

    def __init__(self, output_dir: str | None = None, tasks: list[str] | None = None, colormap: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.colormap = colormap
        self.output_dir = Path(output_dir).expanduser() if output_dir is not None else None
        self.tasks = list(tasks) if tasks is not None else None
        self.num_written = 0
        self.palettes: dict[str, str] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "predictions"
        source = getattr(getattr(trainer, "datamodule", None), "source", None)
        root = getattr(source, "root", None)
        if root is not None:
            data = Path(root)
            while glob.has_magic(str(data)):  # a glob of pictures: its fixed folder
                data = data.parent
            out, data = self.output_dir.resolve(), data.resolve()
            if out == data or data in out.parents:
                raise ValueError(f"prediction output_dir {str(out)!r} lies inside the dataset folder {str(data)!r}; "
                                 "choose another folder (dataset roots are never written to)")
        names = list(getattr(pl_module, "task_names", []))
        unknown = [t for t in (self.tasks or []) if t not in names]
        if unknown:
            raise ValueError(f"PredictionWriter tasks {unknown} are not predicted by this model ({names})")
        drawing = getattr(getattr(trainer, "datamodule", None), "drawing", {"palettes": {}, "class_names": {}})
        self.palettes = drawing["palettes"]
        if self.colormap and trainer.is_global_zero:
            for task, palette in self.palettes.items():
                if self.tasks is None or task in self.tasks:
                    (self.output_dir / task).mkdir(parents=True, exist_ok=True)
                    picture = legend(palette, pl_module.task_channels[task], drawing["class_names"].get(task, ()))
                    Image.fromarray(picture).save(self.output_dir / task / "legend.png")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        meta, outputs = prediction["meta"], prediction["predictions"]
        assert self.output_dir is not None
        tasks = [t for t in outputs if self.tasks is None or t in self.tasks]
        for task in tasks:
            (self.output_dir / task).mkdir(parents=True, exist_ok=True)
        for i, sample_id in enumerate(meta["id"]):
            one = {k: v[i : i + 1] for k, v in meta.items() if k in ("input_size", "size")}
            for task in tasks:
                pred = outputs[task][i : i + 1].float()
                if "size" in one:  # back to the original resolution, as the evaluation does
                    pred = align_to_labels(pred, one, tuple(int(v) for v in one["size"][0]))
                path = self.output_dir / task / str(sample_id)  # ids may hold folders ("test/000001")
                path.parent.mkdir(parents=True, exist_ok=True)
                get_task(task).write(path, pred[0].cpu())  # the task's format (`mtcp.writers`)
                if self.colormap:
                    channels = pl_module.task_channels[task]
                    picture = colorize(task, pred[0].cpu(), channels, palette=self.palettes.get(task, "voc"))
                    Image.fromarray(picture).save(path.with_name(path.name + "_color.png"))
            self.num_written += 1
