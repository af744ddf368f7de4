"""The LightningModule: network + per-task losses, balanced total, metrics.

Thin by design: the network lives in `mtcp.models`, the task knowledge in
`mtcp.tasks`, the training objective in the run's balancer callback
(`mtcp.balancers`), which the module calls with its unweighted task losses. The
module owns what must be in the checkpoint and on the device: the network and the
metric states. The network returns raw maps; the module maps them to each task's
output space (``Task.activation``) before losses, metrics and predictions.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from mtcp.balancers.base import Balancer
from mtcp.callbacks.finite_gradients import FiniteGradients
from mtcp.callbacks.optimizer_in_backward import OptimizerInBackward
from mtcp.data.collate import align_outputs
from mtcp.losses import LOSSES
from mtcp.metrics.coherence import coherence_pairs
from mtcp.metrics.delta_m import delta_m, load_single_task_metrics
from mtcp.models.backbone import weights_from_checkpoint
from mtcp.models.outputs import Predictions
from mtcp.optim import PolyLR, SchedulerFactory
from mtcp.tasks import Task, check_task_names, get_task, headlines

NetworkFactory = Callable[[dict[str, int]], nn.Module]
OptimizerFactory = Callable[[Iterable], Optimizer]


def default_network(task_channels: dict[str, int]) -> nn.Module:
    from mtcp.models import PlainMTL

    return PlainMTL(task_channels)


def default_optimizer(params: Iterable) -> Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)


def default_scheduler(optimizer: Optimizer, total_steps: int) -> PolyLR:
    return PolyLR(optimizer, total_steps)


def _call_with_options(fn: Callable[..., Any], arg: Any, options: dict[str, Any], setting: str) -> Any:
    """``fn(arg, **options)``; an option ``fn`` does not take, or a bad value, is named with its setting."""
    try:
        return fn(arg, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{setting} {options}: {err}") from None


def _with_options(loss: Callable[..., Tensor], options: dict[str, Any], setting: str) -> Callable[..., Tensor]:
    """The loss with ``options`` bound, checked against its signature now rather than at the first step."""
    unknown = sorted(set(options) - set(inspect.signature(loss).parameters))
    if unknown:
        raise ValueError(f"{setting}: {getattr(loss, '__name__', loss)} takes no option(s) {unknown}")
    return functools.partial(loss, **options)


def refuse_compiled_bf16_on_cpu(precision: str, device: torch.device) -> None:
    """``model.compile`` with bf16 on the CPU is refused before training (docs/notes.md,
    "torch.compile on the CPU"): inductor's CPU code gave MT-CP non-finite gradients from the first
    step, which the optimizer would write into every weight, and failed to build its bf16 inference."""
    if device.type == "cpu" and precision.startswith("bf16"):
        raise ValueError(
            f"model.compile: true with trainer.precision {precision} on the CPU is refused: torch "
            f"{torch.__version__}'s CPU compiler gave MT-CP non-finite gradients in bf16 from the first step "
            "and failed to build its bf16 inference kernels (docs/notes.md, 'torch.compile on the CPU'); "
            "compile in fp32 (trainer.precision 32-true) on the CPU, or train bf16-mixed without compile")


class MultiTaskModule(L.LightningModule):
    """Train and evaluate a multi-task dense-prediction network.

    Args:
        task_channels: output width per task, in task order (linked from the data module).
        net: builds the network from ``task_channels`` (`mtcp.models.PlainMTL`, MT-CP, ...).
        optimizer: builds the optimizer from the parameters (AdamW by default).
        scheduler: builds the per-step LR schedule from the optimizer and the total
            number of steps (poly decay, power 0.9, by default); None for a constant LR.
        deep_supervision_weight: weight of the intermediate predictions' losses
            (``Predictions.auxiliary``) in each task's loss; the authors use 0.5.
        single_task_metrics: metric JSON files of single-task reference runs (their
            ``test_metrics.json``); when given, ``val/delta_m`` and ``test/delta_m`` are logged
            (`mtcp.metrics.delta_m`).
        loss_overrides: another loss for some tasks, by name from `mtcp.losses.LOSSES`,
            e.g. ``{normals: normals_mse}`` (the authors' normals loss); default: the task's own.
        loss_options: keyword arguments of a task's loss, e.g. ``{depth: {max_depth: 6.5535}}``
            (the authors ignore far depth labels).
        metric_options: keyword arguments of a task's metric, e.g. ``{depth: {max_depth: 6.5535}}``
            or ``{sal: {empty_convention: one}}``.
        delta_m_headlines: another headline metric in Delta_m for some tasks, e.g. the MT-CP
            authors' ``{sal: {metric: max_miou, higher_is_better: true}}`` (`mtcp.tasks.headlines`).
        coherence: log the cross-task coherence metrics (`mtcp.metrics.coherence`) as
            ``<stage>/coherence/...`` for every registered pair of the model's tasks
            (`mtcp.metrics.coherence.COHERENCE_PAIRS`: depth and normals, needing
            ``meta["intrinsics"]``; semseg and depth).
        compile: compile the network with ``torch.compile`` (in place, `nn.Module.compile`, so the
            checkpoint keys are those of the eager network and checkpoints load either way). The
            first forward of each mode (training, evaluation) compiles; its duration is printed on
            rank zero and logged once to the logger as ``perf/compile_seconds`` (training) and
            ``perf/compile_seconds_eval``. Refused with bf16 precision on the CPU
            (`refuse_compiled_bf16_on_cpu`).
        optimizer_in_backward: update each parameter inside backward, as soon as its gradient is
            ready, and free that gradient (`mtcp.optim.StepInBackward`): the same updates, without
            holding the whole network's gradients; one device, no gradient accumulation or clipping
            (`mtcp.callbacks.OptimizerInBackward`, which ``fit`` then runs).
    """

    def __init__(
        self,
        task_channels: dict[str, int],
        net: NetworkFactory = default_network,
        optimizer: OptimizerFactory = default_optimizer,
        scheduler: SchedulerFactory | None = default_scheduler,
        deep_supervision_weight: float = 0.5,
        single_task_metrics: list[str] | None = None,
        coherence: bool = True,
        loss_overrides: dict[str, str] | None = None,
        loss_options: dict[str, dict[str, Any]] | None = None,
        metric_options: dict[str, dict[str, Any]] | None = None,
        delta_m_headlines: dict[str, dict[str, Any]] | None = None,
        compile: bool = False,
        optimizer_in_backward: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_task_names(list(task_channels), setting="model.task_channels")
        if deep_supervision_weight < 0:
            raise ValueError(f"model.deep_supervision_weight must be >= 0; got {deep_supervision_weight}")
        self.task_channels = dict(task_channels)
        self.tasks: list[Task] = [get_task(t) for t in self.task_channels]
        self.loss_fns = {t.name: t.loss for t in self.tasks}
        for name, loss in (loss_overrides or {}).items():
            if name not in self.loss_fns:
                raise ValueError(f"model.loss_overrides: {name!r} is not a task of this model ({self.task_names})")
            if loss not in LOSSES:
                raise ValueError(
                    f"model.loss_overrides.{name}: unknown loss {loss!r}; known losses are {sorted(LOSSES)}"
                )
            self.loss_fns[name] = LOSSES[loss]
        for setting, options in (("loss_options", loss_options), ("metric_options", metric_options)):
            unknown = sorted(set(options or {}) - set(self.task_names))
            if unknown:
                raise ValueError(f"model.{setting}: {unknown} not task(s) of this model ({self.task_names})")
        for name, options in (loss_options or {}).items():
            self.loss_fns[name] = _with_options(self.loss_fns[name], options, f"model.loss_options.{name}")
        self.net = net(self.task_channels)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.deep_supervision_weight = deep_supervision_weight
        self.metrics = nn.ModuleDict({
            stage: nn.ModuleDict({
                t.name: _call_with_options(t.make_metric, c, (metric_options or {}).get(t.name, {}),
                                           f"model.metric_options.{t.name}")
                for t, c in zip(self.tasks, task_channels.values(), strict=True)})
            for stage in ("val", "test")
        })
        self.eval_losses = nn.ModuleDict({
            stage: nn.ModuleDict({t.name: MeanMetric() for t in self.tasks}) for stage in ("val", "test")
        })
        self.headlines = headlines(self.task_names, delta_m_headlines)
        # loaded now, so that a missing or incomplete reference file fails before training
        self.single_task_metrics = (
            load_single_task_metrics(single_task_metrics, self.headlines) if single_task_metrics else None)
        self.coherence_pairs = coherence_pairs(self.task_names) if coherence else []
        self.coherence_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({p.name: p.make() for p in self.coherence_pairs}) for stage in ("val", "test")
        })
        self.compile_network = compile
        self.optimizer_in_backward = optimizer_in_backward
        self._compile_timed: set[bool] = set()  # the modes (self.training) whose first forward was timed

    def configure_model(self) -> None:
        """Compile the network in place when ``compile`` is set (once, however often Lightning calls this)."""
        if self.compile_network and not self._compiled:
            if self._trainer is not None:
                refuse_compiled_bf16_on_cpu(str(self.trainer.precision), self.trainer.strategy.root_device)
            self.net.compile()

    @property
    def _compiled(self) -> bool:
        return getattr(self.net, "_compiled_call_impl", None) is not None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def forward(self, image: Tensor) -> Predictions:
        """The network's raw predictions, each mapped to its task's output space (``Task.activation``)."""
        activations = {t.name: t.activation for t in self.tasks}
        first_compiled = self._compiled and self.training not in self._compile_timed
        raw = self._timed_first_forward(image) if first_compiled else self.net(image)
        return raw.map(lambda task, y: activations[task](y))

    def _timed_first_forward(self, image: Tensor) -> Predictions:
        """The network's first forward in this mode, which compiles it: timed, printed, logged once."""
        start = time.perf_counter()
        outputs = self.net(image)
        seconds = time.perf_counter() - start
        self._compile_timed.add(self.training)
        key = "perf/compile_seconds" if self.training else "perf/compile_seconds_eval"
        rank_zero_info(f"torch.compile: first {'training' if self.training else 'evaluation'} forward "
                       f"(compiling) took {seconds:.1f} s")
        if self._trainer is not None and self.logger is not None:
            self.logger.log_metrics({key: seconds}, step=self.global_step)
        return outputs

    # -- losses --------------------------------------------------------------------------
    def task_losses(self, outputs: Predictions, batch: dict[str, Any]) -> Tensor:
        """Unweighted loss of every task [T]: final prediction + weighted deep supervision."""
        losses = []
        for task in self.tasks:
            label = batch[task.name]
            loss_fn = self.loss_fns[task.name]
            loss = loss_fn(outputs.final[task.name], label)
            for preds in outputs.auxiliary.values():  # also at weight 0: every head stays on the graph (DDP)
                loss = loss + self.deep_supervision_weight * loss_fn(preds[task.name], label)
            losses.append(loss)
        return torch.stack(losses)

    @property
    def balancer(self) -> Balancer:
        """The run's balancer: the one `mtcp.balancers.Balancer` among the trainer's callbacks."""
        found = [c for c in self.trainer.callbacks if isinstance(c, Balancer)]
        if len(found) != 1:
            raise ValueError(
                f"MultiTaskModule needs exactly one balancer callback (mtcp.balancers.*, e.g. EqualWeights()) "
                f"among the trainer's callbacks; found {[type(c).__name__ for c in found]}"
            )
        return found[0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Losses, then the balancer's objective; no host read (the balancer checks finiteness once
        per optimizer step, before the update, see `mtcp.balancers.base`)."""
        outputs = self(batch["image"])
        losses = self.task_losses(outputs, batch)
        total = self.balancer.objective(losses)
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for name, value in zip(self.task_names, losses, strict=True):
            self.log(f"train/loss_{name}", value.detach(), prog_bar=True, batch_size=bs)
        return {"loss": total, "task_losses": losses.detach()}

    # -- evaluation ----------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        raw = self(batch["image"])
        # predictions on the input grid -> each label's original grid (`mtcp.data.collate`)
        outputs = align_outputs(raw, batch)
        losses = self.task_losses(outputs, batch)
        bs = batch["image"].shape[0]
        for task, loss in zip(self.tasks, losses, strict=True):
            self.eval_losses[stage][task.name].update(loss, bs)
            self.metrics[stage][task.name].update(outputs.final[task.name], batch[task.name])
        meta = batch.get("meta", {})
        for pair in self.coherence_pairs:  # on the input grid
            pair.update(self.coherence_metrics[stage][pair.name], raw.final, meta)

    def _eval_epoch_end(self, stage: str) -> None:
        total = 0.0
        computed: dict[str, float] = {}
        for task in self.tasks:
            loss = self.eval_losses[stage][task.name].compute()
            total = total + loss
            self.log(f"{stage}/loss_{task.name}", loss)
            values = self.metrics[stage][task.name].compute()
            self.log_dict({f"{stage}/{task.name}/{k}": v for k, v in values.items()})
            computed.update({f"{stage}/{task.name}/{k}": float(v) for k, v in values.items()})  # for Delta_m
            self.metrics[stage][task.name].reset()
            self.eval_losses[stage][task.name].reset()
        self.log(f"{stage}/loss", total, prog_bar=stage == "val")
        for metric in self.coherence_metrics[stage].values():  # every rank computes: it synchronises
            values = metric.compute()
            self.log_dict({f"{stage}/coherence/{k}": v for k, v in values.items() if bool(torch.isfinite(v))})
            metric.reset()
        if self.single_task_metrics is not None:
            self.log(f"{stage}/delta_m", delta_m(computed, self.single_task_metrics, self.headlines, stage))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"meta": batch["meta"], "predictions": self(batch["image"]).final}

    # -- optimisation --------------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        """The step's guards, whatever trainer runs the module: no non-finite gradient is applied."""
        return [FiniteGradients(), *([OptimizerInBackward()] if self.optimizer_in_backward else [])]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints ---------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> MultiTaskModule:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, without fetching any initial weight: the checkpoint
        holds them all, so a ``pretrained: true`` backbone works offline (`weights_from_checkpoint`).

        ``weights_only`` defaults to True: a checkpoint whose pickle would execute code is refused
        (``pickle.UnpicklingError``); pass ``weights_only=False`` only for a file you trust."""
        kwargs.setdefault("weights_only", True)
        with weights_from_checkpoint():
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = dict(checkpoint.get("hyper_parameters", {}).get("task_channels", {}))
        if saved and saved != self.task_channels:
            raise ValueError(
                f"checkpoint was trained for tasks {saved} but this model is built for {self.task_channels}; "
                f"set data.tasks (and the dataset) to match the checkpoint, e.g. data.tasks={list(saved)}"
            )
