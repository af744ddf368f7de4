"""Command-line entry point: ``mtcp fit|validate|test|predict|bench|check-data|export --config ...``.

A LightningCLI over `MultiTaskModule` and `MultiTaskDataModule`. The data module
tells the model its tasks' output widths (argument link), the balancer is a required
top-level argument (``balancer:``, so a ``trainer.callbacks`` list in a stacked
config cannot drop it); checkpointing (``checkpoint:``, the best epochs on ``val/loss``;
``last_checkpoint:``, ``last.ckpt`` = the newest state, in the same folder) and prediction
pictures (``pictures:``) are top-level too. ``--trainer.enable_checkpointing=false`` drops
both checkpoint callbacks, ``--trainer.logger=false`` the learning-rate monitor. A command
with ``--ckpt_path`` builds the model without fetching initial weights (no hub, no
``checkpoint_path`` file): the checkpoint holds them all.

Config files compose: a file may start with ``__base__: [preset.yaml, ...]`` (paths relative
to the file), the presets it stacks on; ``--config file`` then reads as ``--config preset ...
--config file``, so ``configs/nyud.yaml`` is three lines over one definition of each concept.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pickle
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mtcp.balancers import Balancer
from mtcp.callbacks.last_checkpoint import LastCheckpoint
from mtcp.callbacks.prediction_grid import PredictionGrid
from mtcp.callbacks.prediction_writer import PredictionWriter
from mtcp.callbacks.save_config import SaveConfigToLoggers
from mtcp.callbacks.weight_chart import WeightChart
from mtcp.checkpoint_io import AtomicCheckpointIO
from mtcp.data.check import DataReport, check_data
from mtcp.data.datamodule import MultiTaskDataModule
from mtcp.export import ExportReport
from mtcp.models.backbone import weights_from_checkpoint
from mtcp.module import MultiTaskModule
from mtcp.tasks import TASKS

#: why a checkpoint was refused (torch.load with weights_only=True met an object it will not rebuild)
UNSAFE_CHECKPOINT = ("the checkpoint holds objects beyond tensors and plain containers, which loading would "
                     "have to execute; it was refused (weights_only=True). Only if you trust its origin, pass "
                     "--weights_only=false")

#: the key of a config file that names the presets it stacks on
BASE_KEY = "__base__"


def config_stack(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """``path`` preceded by the presets its ``__base__`` names (recursively), left to right."""
    path = Path(path)
    if path.resolve() in seen:
        raise ValueError(f"{BASE_KEY} in {str(path)!r}: the configs include each other ({[str(p) for p in seen]})")
    try:
        content = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        content = None  # not ours to report: jsonargparse names the file and the problem
    bases = content.get(BASE_KEY) if isinstance(content, dict) else None
    if bases is None:
        return [path]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{BASE_KEY} in {str(path)!r} must be a list of config paths relative to it; got {bases!r}")
    stack: list[Path] = []
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise FileNotFoundError(
                f"{BASE_KEY} in {str(path)!r} names {base!r}, but {str(base_path)!r} does not exist"
            )
        stack += config_stack(base_path, (*seen, path.resolve()))
    return [*stack, path]


def expand_config_bases(args: list[str]) -> list[str]:
    """Every ``--config FILE`` (or ``--config=FILE``) replaced by the configs of `config_stack`."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            path, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            path, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        out += [f"--config={p}" for p in config_stack(Path(path))]
    return out


class MTCPTrainer(Trainer):
    """Lightning's Trainer with three more commands, ``bench``, ``check_data`` and ``export``
    (``mtcp bench``, ``mtcp check-data``, ``mtcp export``)."""

    #: builds the network (and gives the trainer precision) of a config stacked over this run's
    #: configuration (set by `MTCPCLI.before_bench`)
    build_comparison: Callable[[str], tuple[MultiTaskModule, Any]] | None = None
    #: what the last ``check_data`` found, and whether a warning fails it (read by `MTCPCLI.after_check_data`)
    data_report: DataReport | None = None
    data_report_strict: bool = False
    #: what the last ``export`` wrote (printed by `MTCPCLI.after_export`)
    export_report: ExportReport | None = None

    def check_data(self, model: MultiTaskModule, datamodule: MultiTaskDataModule | None = None,
                   workers: int = 2, strict: bool = False) -> DataReport:
        """Read every sample of every split of the configured source and report every problem at once.

        Args:
            model: unused (the CLI builds it; its weights are not fetched).
            datamodule: the source and tasks to check (`mtcp.data.check`).
            workers: reading processes (0: in this process).
            strict: a warning fails the check too.
        """
        if datamodule is None:
            raise ValueError("check-data needs a data module: pass a config with a data: section")
        if workers < 0:
            raise ValueError(f"check_data.workers must be >= 0; got {workers}")
        self.data_report = check_data(datamodule.source, datamodule.tasks, workers)
        self.data_report_strict = strict
        return self.data_report

    def export(
        self,
        model: MultiTaskModule,
        datamodule: MultiTaskDataModule | None = None,
        ckpt_path: str | None = None,
        output: str | None = None,
        height: int | None = None,
        width: int | None = None,
        dynamic_size: bool | None = None,
        check: bool | None = None,
        tolerance: float = 1e-3,
        opset: int | None = None,
        weights_only: bool | None = None,
    ) -> ExportReport:
        """Write the trained network as ONNX (`mtcp.export`), checked against PyTorch under onnxruntime.

        Args:
            model: the module the checkpoint was trained as (built from the config and the checkpoint's
                hyper-parameters).
            datamodule: gives the default export size (its source's ``image_size``).
            ckpt_path: the checkpoint of ``mtcp fit`` whose weights are exported (required).
            output: the ``.onnx`` file; None: ``<trainer.default_root_dir>/model.onnx``.
            height, width: the example input's size, the graph's only size where it cannot be dynamic;
                None: the data's ``image_size``.
            dynamic_size: dynamic height and width; None: where the network allows (not with Swin
                window attention, `mtcp.export.size_dependent_parts`).
            check: run the file under onnxruntime on batches of 1 and 3 (and another size when dynamic)
                and compare with PyTorch; None: when onnxruntime is installed (``mtcp[export]``).
            tolerance: the largest absolute difference the check accepts (fp32 graphs agree to ~1e-6).
            opset: ONNX opset; None: the exporter's default.
            weights_only: load only tensors from the checkpoint (default True; see ``mtcp fit --help``).
        """
        from mtcp.export import export_onnx, onnx_errors

        if (height is None) != (width is None) or any(v is not None and v <= 0 for v in (height, width)):
            raise ValueError(f"export: --height and --width are two positive sizes given together; "
                             f"got height={height}, width={width}")
        if not ckpt_path:
            raise ValueError("export needs --ckpt_path: the checkpoint (written by mtcp fit) whose weights to export")
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path!r} is not a file (a checkpoint written by mtcp fit)")
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=weights_only is not False)
        if "state_dict" not in checkpoint:
            raise ValueError(f"ckpt_path={ckpt_path!r} holds no state_dict: not a checkpoint of mtcp fit")
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        if height is None:
            if datamodule is None:
                raise ValueError("export: give --height and --width (no data module to take the image size from)")
            height, width = datamodule.source.image_size
        path = Path(output) if output else Path(self.default_root_dir) / "model.onnx"
        report = export_onnx(model, path, (height, width), dynamic_size, opset)
        if check is None:
            check = importlib.util.find_spec("onnxruntime") is not None
            if not check:
                print("export: not checked under onnxruntime, which is not installed (pip install 'mtcp[export]')")
        if check:
            images = [torch.rand(1, 3, height, width), torch.rand(3, 3, height, width)]
            if report.dynamic_size:
                images.append(torch.rand(2, 3, height + 7, width + 13))  # not a multiple of any stride
            errors = onnx_errors(path, model, images)
            report = dataclasses.replace(report, max_abs_error=errors)
            worst = max(errors, key=errors.get)
            if not errors[worst] <= tolerance:
                raise ValueError(f"export: {path} disagrees with PyTorch on {worst!r} by {errors[worst]:.3g} "
                                 f"(max abs; tolerance {tolerance:g}); please report this network and opset")
        self.export_report = report
        return report

    def bench(
        self,
        model: MultiTaskModule,
        datamodule: MultiTaskDataModule | None = None,
        height: int = 120,
        width: int = 160,
        batch_size: int = 8,
        warmup: int = 1,
        repeats: int = 3,
        skip_train: bool = False,
        threads: int | None = None,
        compare: list[str] | str | None = None,
    ) -> dict[str, Any]:
        """Throughput, peak memory, parameters and FLOPs of the configured network (`mtcp.bench`).

        Args:
            model: the module ``fit`` would train (random weights).
            datamodule: unused beyond building ``model`` (it gives the tasks and class counts).
            height, width, batch_size: the random input batch.
            warmup, repeats: untimed and timed steps.
            skip_train: inference only.
            threads: torch CPU threads (1 is steadier on a shared machine).
            compare: configs, each stacked over this run's configuration (its configs and
                ``--key=value`` settings) to build a second network, timed alternately with
                the first in the same run at its own ``trainer.precision``; the ratios (second /
                first) of images/s and peak memory are printed. One: ``--compare a.yaml``; two
                files stacked for one network: ``--compare a.yaml+b.yaml``; several networks:
                ``--compare [a.yaml,b.yaml]`` or ``--compare a.yaml --compare+=b.yaml`` (a second
                plain ``--compare`` replaces the first).
        """
        from mtcp.bench import run

        others: dict[str, MultiTaskModule] = {}
        others_bf16: dict[str, bool] = {}
        for path in [compare] if isinstance(compare, str) else compare or []:
            if self.build_comparison is None:
                raise ValueError("bench.compare: the comparison networks are built by the CLI (mtcp bench --compare)")
            others[path], precision = self.build_comparison(path)
            others_bf16[path] = str(precision).startswith("bf16")
        return run(model, self.strategy.root_device, bf16=str(self.precision).startswith("bf16"), height=height,
                   width=width, batch_size=batch_size, warmup=warmup, repeats=repeats, skip_train=skip_train,
                   threads=threads, compare=others, compare_bf16=others_bf16)


class MTCPCLI(LightningCLI):
    """LightningCLI with the balancer, checkpointing, task linking and ``bench`` wired in."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "bench": {"model", "datamodule"}, "check_data": {"model", "datamodule"},
                "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(f"--{BASE_KEY}", type=list[str] | None, default=None,
                            help="presets a config file stacks on (expanded before parsing; see mtcp.cli)")
        parser.add_lightning_class_args(Balancer, "balancer", subclass_mode=True, required=True)
        parser.set_defaults({"balancer": {"class_path": "mtcp.balancers.EqualWeights"}})
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_last": False,
            "checkpoint.filename": "best-{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.add_lightning_class_args(PredictionGrid, "pictures")
        parser.link_arguments("data.task_channels", "model.task_channels", apply_on="instantiate")
        parser.add_argument("--check_data", type=bool, default=False,
                            help="fit: read every sample first and stop on any problem (mtcp check-data)")

    def instantiate_classes(self) -> None:
        """With ``--ckpt_path`` every weight comes from the checkpoint: build without fetching any."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        no_weights = config.get("ckpt_path") or self.subcommand in ("bench", "check_data", "export")
        with weights_from_checkpoint() if no_weights else nullcontext():
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """A rich progress bar unless the bar is off or another is configured; a learning-rate
        monitor unless there is no logger."""
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer.get("callbacks") or [])
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar(leave=True))
        if trainer.get("logger") is not False and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor("step"))
        loggers = trainer.get("logger")
        if any(isinstance(lg, WandbLogger) for lg in (loggers if isinstance(loggers, list) else [loggers])):
            callbacks.append(WeightChart())  # all tasks' weights in one W&B chart
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())  # `mtcp predict` writes its predictions (configs/predict.yaml)
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """``trainer.enable_checkpointing=false`` turns off the top-level checkpoint callbacks too."""
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        trainer = super()._instantiate_trainer(config, callbacks)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not a user's plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # a kill mid-write never truncates a checkpoint
        return trainer

    def before_instantiate_classes(self) -> None:
        """Check the checkpoint settings; ``--data.root`` is short for the source's ``root``
        (NYUD-v2, PASCAL-Context): copy it there.

        A source without a ``root`` is left alone; the data module then rejects ``data.root``.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        config[BASE_KEY] = None  # already expanded: the saved config is the resolved whole
        if config.get("checkpoint.save_last"):
            raise ValueError(
                "checkpoint.save_last: last.ckpt is written by last_checkpoint (the newest state after every "
                "epoch, in checkpoint.dirpath); leave checkpoint.save_last false"
            )
        if "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True  # --ckpt_path loads tensors only: a checkpoint cannot run code
        root = config.get("data.root")
        init_args = (config.get("data.source") or {}).get("init_args")
        if root is not None and init_args is not None and "root" in init_args:
            init_args.root = root
        if self.subcommand == "predict":
            if config.get("return_predictions") is None:
                config["return_predictions"] = False  # the writer consumes each batch; do not also keep it all
            if init_args is not None and config.get("ckpt_path"):
                _settings_from_checkpoint(init_args, Path(config["ckpt_path"]))
        if self.subcommand == "fit" and os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
            _own_sweep_run_folder(config, Path("sweeps", os.environ["WANDB_SWEEP_ID"], os.environ["WANDB_RUN_ID"]))

    def before_fit(self) -> None:
        """``--check_data true``: every sample of the dataset is read and checked before training starts."""
        if self.config["fit"].get("check_data"):
            report = check_data(self.datamodule.source, self.datamodule.tasks, workers=2)
            if not report.ok():
                raise ValueError(f"--check_data: the dataset has problems; fix them or run without the check\n"
                                 f"{report.text()}")
            print(report.text())

    def after_check_data(self) -> None:
        """Print the report; exit status 1 when the dataset has an error (or, with ``--strict``, a warning)."""
        report = self.trainer.data_report
        print(report.text())
        if not report.ok(self.trainer.data_report_strict):
            sys.exit(1)

    def after_export(self) -> None:
        print(self.trainer.export_report.text())

    def before_bench(self) -> None:
        """``bench --compare``: the trainer builds each comparison network through `_comparison_model`."""
        self.trainer.build_comparison = self._comparison_model

    def _comparison_model(self, path: str) -> tuple[MultiTaskModule, Any]:
        """The model and trainer precision of this run's ``bench`` configuration with the config
        ``path`` (``a.yaml+b.yaml``: both, in that order, and the presets their ``__base__`` names)
        stacked on top, built like the first: without fetching weights."""
        parser = self._parser("bench")
        this_run = parser.dump(self.config["bench"], skip_check=True)  # files and --key=value settings resolved
        stacked = [arg for part in path.split("+") for arg in ("--config", part)]
        config = parser.parse_args(["--config", this_run, *expand_config_bases(stacked)])
        config[BASE_KEY] = None
        config.compare = None
        with weights_from_checkpoint():
            return parser.instantiate_classes(config).model, config.trainer.precision

    def after_validate(self) -> None:
        self._write_metrics("validate")

    def after_test(self) -> None:
        self._write_metrics("test")

    def _write_metrics(self, stage: str) -> None:
        """Save the run's final metrics as ``<default_root_dir>/<stage>_metrics.json``.

        Scripts read this file: the trivial-predictor comparison of `make fit`, and the
        single-task reference metrics that delta-m needs.
        """
        if not self.trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in sorted(self.trainer.callback_metrics.items())}
        path = Path(self.trainer.default_root_dir) / f"{stage}_metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")


def _settings_from_checkpoint(init_args: Any, ckpt_path: Path) -> None:
    """A source's ``num_classes``, ``palettes`` and ``class_names`` left at None (`ImageFolder`: pictures
    without labels) are the training data's: read from the checkpoint (its tasks' output widths and the
    data module's ``drawing``)."""
    wanted = [key for key in ("num_classes", "palettes", "class_names") if key in init_args and init_args[key] is None]
    if not wanted:
        return
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r} is not a file (a checkpoint written by mtcp fit)")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    channels = checkpoint.get("hyper_parameters", {}).get("task_channels")
    if not channels:
        raise ValueError(f"ckpt_path={str(ckpt_path)!r} names no task_channels in its hyper_parameters: "
                         "not a checkpoint of mtcp fit; set data.source.init_args.num_classes")
    drawing = checkpoint.get(MultiTaskDataModule.__qualname__, {}).get("drawing", {})
    found = {"num_classes": {t: int(c) for t, c in channels.items() if t in TASKS and TASKS[t].channels is None},
             "palettes": drawing.get("palettes", {}), "class_names": drawing.get("class_names", {})}
    for key in wanted:
        init_args[key] = found[key]


def _own_sweep_run_folder(config: Any, sub: Path) -> None:
    """A run started by a W&B sweep agent (which sets ``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID``) writes into
    ``<folder>/sweeps/<sweep id>/<run id>`` for each configured folder (the run folder, the loggers'
    folders, the checkpoint folder): parallel agents on one filesystem never share a file."""
    if config.get("trainer.default_root_dir"):
        config["trainer.default_root_dir"] = str(Path(config["trainer.default_root_dir"]) / sub)
    for key in ("checkpoint.dirpath", "last_checkpoint.dirpath"):  # (the link between them is already applied)
        if config.get(key):
            config[key] = str(Path(config[key]) / sub)
    loggers = config.get("trainer.logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is not None and init_args.get("save_dir"):
            init_args.save_dir = str(Path(init_args.save_dir) / sub)


def _aliased(args: list[str]) -> list[str]:
    """``mtcp check-data`` is the ``check_data`` command (a Trainer method name cannot hold a dash)."""
    return ["check_data", *args[1:]] if args[:1] == ["check-data"] else args


def cli_main(args: ArgsType = None, run: bool = True) -> MTCPCLI:
    """Run the CLI; ``args`` (a list or dict) lets tests and notebooks call it in-process."""
    if args is None:  # the command line: expand in place (DDP relaunches the other ranks with sys.argv)
        sys.argv[1:] = expand_config_bases(_aliased(sys.argv[1:]))
    elif isinstance(args, list):
        args = expand_config_bases(_aliased(args))
    return MTCPCLI(
        MultiTaskModule,
        MultiTaskDataModule,
        trainer_class=MTCPTrainer,
        args=args,
        run=run,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_callback=SaveConfigToLoggers,
        save_config_kwargs={"overwrite": True},
    )


def main() -> None:
    """Console entry (``mtcp``, ``python -m mtcp``): configuration and data errors as one line.

    A bad setting or dataset file raises ValueError/FileNotFoundError with a message that
    names it; on the command line that message is the whole story, so it is printed as
    ``mtcp: error: ...`` (exit status 2). ``MTCP_TRACEBACK=1`` shows the full traceback.
    """
    try:
        cli_main()
    except pickle.UnpicklingError as err:
        if os.environ.get("MTCP_TRACEBACK") == "1":
            raise
        print(f"mtcp: error: {UNSAFE_CHECKPOINT}\n{str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as err:
        if os.environ.get("MTCP_TRACEBACK") == "1":
            raise
        print(f"mtcp: error: {err}\n(set MTCP_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
