"""``mtcp bench``: throughput, MFU, peak memory, parameters and FLOPs of a configured network.

    mtcp bench --config configs/procedural.yaml --config configs/model/mtcp_tiny.yaml \
        --height 120 --width 160 --batch_size 8
    mtcp bench --config configs/procedural.yaml --compare configs/model/mtcp_tiny.yaml

A subcommand of the CLI like ``fit``: the same configs build the same `MultiTaskModule`
(the data module gives the tasks and class counts, ``--model.net.init_args.*`` overrides
the network; ``--model.compile=true`` compiles it after the FLOP count, as fit does, so the warmup
steps compile), never with downloaded weights; ``--trainer.accelerator`` picks the device
and ``--trainer.precision bf16-mixed`` runs the steps under bfloat16 autocast, the very context
Lightning's ``bf16-mixed`` training uses (`bf16_autocast`: its cast weights are not cached).

Measured:

- parameters and forward FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``)
  per module group: the network's top-level children (backbone, pixel decoder, query
  decoder, task decoders, CFM, trace-back, heads); "other" is computation outside
  them (the R fusion, resizing). Attention is counted too: the counter has no formula
  for the CPU flash-attention kernels (``aten._scaled_dot_product_flash_attention_for_cpu``
  and its backward), so `SDPA_FLOPS` gives them torch's own SDPA formulas (QK^T and AV,
  2*B*H*Lq*Lk*D each, forward; five such products backward).
- training throughput: forward, the tasks' real losses on random labels (all levels,
  deep supervision weight 0.5), backward, AdamW step (inside backward with
  ``model.optimizer_in_backward: true``, `mtcp.optim.StepInBackward`); inference: forward in
  ``inference_mode``; images/s over ``--repeats`` steps after ``--warmup`` steps.
- model FLOP utilisation: the device's matmul peak for the dtype of the steps (a square
  ``matmul_size`` matmul in float32, or bfloat16 under bf16, timed after warmup, in the
  same run), then training MFU = 3 x forward FLOPs/image x images/s / peak (backward
  counted as twice the forward) and inference MFU = forward FLOPs/image x images/s / peak.
- peak memory of a step, twice: *above* what is resident before it (weights, optimizer
  state and caches excluded), and the *total* peak of the process during it. CUDA from
  ``max_memory_allocated`` (total; minus ``memory_allocated`` before the step for the
  delta); CPU from the kernel's resident-set high-water mark (``VmHWM``, total), reset
  through ``/proc/self/clear_refs`` after ``malloc_trim`` hands freed heap back, minus the
  resident size before the step (delta). No allocation hooks (tracemalloc does not see
  torch's allocations), no sampling thread; it needs Linux, and reads "n/a" elsewhere.
  The peak of a run is the largest over its timed steps.
- ``--compare CONFIG`` (several: ``--compare [A,B]`` or ``--compare A --compare+=B``; ``A+B``
  stacks two files for one network): a second network from this run's configuration with
  CONFIG stacked on top, timed in the same run with the steps alternated (ABAB...) so that
  machine drift hits both alike; the ratios (second / first) of images/s and peak memory
  are printed. Each network runs at its own configuration's precision (``--compare
  configs/trainer/bf16.yaml`` times bf16 against this run's fp32) and its MFU is against
  the peak of its own dtype. Totals of compared networks include each other's resident
  weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from mtcp.module import MultiTaskModule
from mtcp.optim import StepInBackward
from mtcp.tasks import get_task

_LIBC: Any = None



def _sdpa_forward_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # QK^T and AV


def _sdpa_backward_flops(grad_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                         **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)  # QK^T again, 4 gradients


#: FLOP formulas (of shapes, as `FlopCounterMode`'s ``custom_mapping`` takes them) for the SDPA
#: kernels it misses: torch's own formulas for its CUDA SDPA kernels
SDPA_FLOPS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """A `FlopCounterMode` that also counts the CPU flash-attention kernels (`SDPA_FLOPS`)."""
    return FlopCounterMode(display=False, custom_mapping=SDPA_FLOPS)


# -- memory ------------------------------------------------------------------------------
def _proc_status_kb(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _malloc_trim() -> None:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Yield a dict that on exit holds ``"bytes"``, the peak memory above the level on entry, and
    ``"total"``, the peak itself (CUDA: allocated by torch; CPU: the process's resident set)."""
    result: dict[str, float | None] = {"bytes": None, "total": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        result["bytes"], result["total"] = float(peak - base), float(peak)
        return
    _malloc_trim()
    base = _proc_status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    yield result
    peak = _proc_status_kb("VmHWM")
    if resettable and base is not None and peak is not None:
        result["bytes"], result["total"] = float(max(peak - base, 0) * 1024), float(peak * 1024)


def bf16_autocast(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast of Lightning's ``bf16-mixed`` training, from its own precision plugin.

    Not plain ``torch.autocast``: Lightning turns the cache of cast weights off, and with the cache
    on, the bf16 copies of all weights stay alive until the forward ends, checkpointed parts' too
    (README, "Performance"); the bench must measure what ``fit`` runs.
    """
    return MixedPrecision("bf16-mixed", device.type).forward_context


def training_optimizer(module: MultiTaskModule) -> torch.optim.Optimizer:
    """AdamW over the network, stepped inside backward when the module's ``optimizer_in_backward``
    asks for it, as `fit` would run it (`mtcp.optim.StepInBackward`)."""
    optimizer = torch.optim.AdamW(module.net.parameters(), lr=1e-4)
    if module.optimizer_in_backward:
        StepInBackward(optimizer)
    return optimizer


# -- measurements ------------------------------------------------------------------------
def random_batch(task_channels: dict[str, int], b: int, h: int, w: int, device: torch.device) -> dict[str, Tensor]:
    """An image and a random but valid label per task, drawn by the task's label kind (`mtcp.labels`)."""
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 3, h, w, generator=gen)}
    for task, c in task_channels.items():
        batch[task] = get_task(task).label.random(b, h, w, c, gen)
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def throughput(
    steps: Mapping[str, Callable[[], Any]], images: int, warmup: int, repeats: int, device: torch.device
) -> dict[str, dict[str, float | None]]:
    """Per step name: ``ips`` (images per second), ``mem`` (peak bytes above the resident level) and
    ``total`` (peak bytes of the process), over ``repeats`` timed rounds after ``warmup`` untimed ones.

    Each round runs every step once, in turn (A B A B ...), so that drift of a shared machine
    hits them alike; only the steps themselves are timed, each under its own `peak_memory`.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    _sync(device)
    out: dict[str, dict[str, float | None]] = {name: {"ips": 0.0, "mem": None, "total": None} for name in steps}
    elapsed = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in steps.items():
            with peak_memory(device) as mem:
                start = time.perf_counter()
                step()
                _sync(device)
                elapsed[name] += time.perf_counter() - start
            out[name]["mem"] = _max(out[name]["mem"], mem["bytes"])
            out[name]["total"] = _max(out[name]["total"], mem["total"])
    for name in steps:
        out[name]["ips"] = images * repeats / elapsed[name] if elapsed[name] > 0 else float("nan")
    return out


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, warmup: int = 2,
                      repeats: int = 5) -> float:
    """FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on ``device`` (2 size^3 per product), the
    best of ``repeats`` after ``warmup``: the peak that MFU divides by."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.rand(size, size, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    for _ in range(warmup):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def mfu(flops_per_image: float, images_per_s: float, peak_flops: float, passes: float = 1.0) -> float:
    """Model FLOP utilisation in %: ``passes`` x forward FLOPs/image x images/s over the peak (3 passes
    for a training step: the backward counts as twice the forward)."""
    return 100.0 * passes * flops_per_image * images_per_s / peak_flops


def group_of(name: str, groups: list[str]) -> str:
    first = name.split(".", 1)[0]
    return first if first in groups else "other"


def _group_flops(counts: dict[str, dict[Any, int]], prefix: str) -> float:
    """FLOPs of the modules under ``prefix``; containers (ModuleDict) are never called, so sum the
    outermost called modules below them (the counts of a module include its children's)."""
    names = [k for k in counts if k == prefix or k.startswith(prefix + ".")]
    outermost = [k for k in names if not any(k.startswith(o + ".") for o in names if o != k)]
    return float(sum(sum(counts[k].values()) for k in outermost))


def parameters_and_flops(net: nn.Module, image: Tensor) -> tuple[dict[str, int], dict[str, float], float]:
    """Parameters and forward FLOPs per image of each top-level child (and ``other``); total FLOPs/image."""
    groups = [n for n, _ in net.named_children()]
    params: dict[str, int] = {g: 0 for g in groups}
    for name, p in net.named_parameters():
        g = group_of(name, groups)
        params[g] = params.get(g, 0) + p.numel()
    with flop_counter() as counter:  # (no_grad trips its module tracker)
        net(image)
    counts = counter.get_flop_counts()
    root = type(net).__name__
    per_image = image.shape[0]
    total = sum(counts.get("Global", {}).values()) / per_image
    flops = {g: _group_flops(counts, f"{root}.{g}") / per_image for g in groups}
    flops["other"] = total - sum(flops.values())
    return params, flops, total


def _fmt_bytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f} MiB"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else b / a


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _print_network(r: dict[str, Any], title: str | None = None) -> None:
    if title:
        print(title)
    params, flops = r["params"], r["flops"]
    print(f"{'group':<16}{'params (M)':>12}{'GFLOPs/img':>12}")
    for g in list(params) + (["other"] if "other" not in params else []):
        print(f"{g:<16}{params.get(g, 0) / 1e6:>12.2f}{flops.get(g, 0.0) / 1e9:>12.2f}")
    print(f"{'total':<16}{sum(params.values()) / 1e6:>12.2f}{r['total_flops'] / 1e9:>12.2f}")
    for stage in ("train", "infer"):
        if f"{stage}_ips" in r:
            label = "training:" if stage == "train" else "inference:"
            print(
                f"{label:<11}{r[f'{stage}_ips']:8.2f} images/s   MFU {r[f'{stage}_mfu']:6.2f}%   peak memory "
                f"{_fmt_bytes(r[f'{stage}_peak_total'])} total, {_fmt_bytes(r[f'{stage}_mem'])} above resident"
            )


def run(
    module: MultiTaskModule,
    device: torch.device,
    bf16: bool = False,
    height: int = 120,
    width: int = 160,
    batch_size: int = 8,
    warmup: int = 1,
    repeats: int = 3,
    skip_train: bool = False,
    threads: int | None = None,
    compare: Mapping[str, MultiTaskModule] | None = None,
    matmul_size: int = 2048,
    compare_bf16: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Measure ``module``'s network (and each of ``compare``'s, by name, alternated with it), print the
    table; returns the numbers (for tests and scripts).

    The first network's figures are at the top level: ``params``, ``flops`` (per group),
    ``total_flops`` (forward, per image), ``train_ips``/``infer_ips``, ``train_mfu``/``infer_mfu`` (%),
    ``train_mem``/``infer_mem`` (peak bytes above resident) and ``train_peak_total``/``infer_peak_total``
    (peak bytes in all), with ``peak_flops`` (the matmul peak, FLOP/s) and ``tasks``. With ``compare``,
    ``results["compare"][name]`` holds the same figures of that network and ``results["ratios"][name]``
    its ratios to the first (``train_ips``, ``infer_ips``, ``train_peak_total``, ``infer_peak_total``,
    ``train_mem``, ``infer_mem``: second / first). ``compare_bf16[name]`` runs that network under
    bf16 autocast or not (default: as the first); every network's ``bf16`` and ``peak_flops`` (the
    peak its MFU divides by) are in its figures.
    """
    if threads:
        torch.set_num_threads(threads)
    modules = {"": module, **(compare or {})}
    in_bf16 = {key: (compare_bf16 or {}).get(key, bf16) for key in modules} | {"": bf16}
    b, h, w = batch_size, height, width

    figures: dict[str, dict[str, Any]] = {}
    train_steps: dict[str, Callable[[], None]] = {}
    infer_steps: dict[str, Callable[[], None]] = {}
    for key, mod in modules.items():
        channels = dict(mod.task_channels)
        mod = mod.to(device)
        batch = random_batch(channels, b, h, w, device)
        params, flops, total_flops = parameters_and_flops(mod.net.eval(), batch["image"][:1])
        mod.configure_model()  # as fit does: ``model.compile: true`` compiles the network (warmup compiles)
        figures[key] = {"params": params, "flops": flops, "total_flops": total_flops, "tasks": channels,
                        "bf16": in_bf16[key]}
        autocast = bf16_autocast(device) if in_bf16[key] else contextlib.nullcontext
        train_steps[key], infer_steps[key] = _steps(mod, batch, autocast)

    peaks = {use_bf16: peak_matmul_flops(device, torch.bfloat16 if use_bf16 else torch.float32, size=matmul_size)
             for use_bf16 in sorted(set(in_bf16.values()))}
    for key, f in figures.items():
        f["peak_flops"] = peaks[in_bf16[key]]
    stages = {"infer": infer_steps} if skip_train else {"train": train_steps, "infer": infer_steps}
    for stage, steps in stages.items():
        for mod in modules.values():
            mod.train(stage == "train")
        for key, m in throughput(steps, b, warmup, repeats, device).items():
            f = figures[key]
            f[f"{stage}_ips"], f[f"{stage}_mem"], f[f"{stage}_peak_total"] = m["ips"], m["mem"], m["total"]
            passes = 3.0 if stage == "train" else 1.0
            f[f"{stage}_mfu"] = mfu(f["total_flops"], m["ips"], f["peak_flops"], passes=passes)
    for mod in modules.values():
        mod.eval()

    results = figures.pop("")
    peak_text = ", ".join(f"{'bf16' if k else 'fp32'} {v / 1e9:,.1f}" for k, v in peaks.items())
    print(
        f"{type(module.net).__name__} | tasks {results['tasks']} | input {b}x3x{h}x{w} | {device.type}"
        f"{' bf16' if bf16 else ''} | torch threads {torch.get_num_threads()} | "
        f"matmul peak {peak_text} GFLOP/s"
    )
    _print_network(results)
    if compare:
        results["compare"], results["ratios"] = figures, {}
        for key, f in figures.items():
            _print_network(f, f"\ncompare {key}: {type(compare[key].net).__name__} | tasks {f['tasks']}"
                              f"{' | bf16' if f['bf16'] else ''}")
            ratios = {k: _ratio(results.get(k), f.get(k)) for k in
                      ("train_ips", "infer_ips", "train_peak_total", "infer_peak_total", "train_mem", "infer_mem")}
            results["ratios"][key] = ratios
            print(
                f"ratio {key} / first: training {_fmt_ratio(ratios['train_ips'])} images/s, "
                f"inference {_fmt_ratio(ratios['infer_ips'])} images/s; peak memory training "
                f"{_fmt_ratio(ratios['train_peak_total'])} total ({_fmt_ratio(ratios['train_mem'])} above resident), "
                f"inference {_fmt_ratio(ratios['infer_peak_total'])} total "
                f"({_fmt_ratio(ratios['infer_mem'])} above resident)"
            )
    return results


def _steps(
    module: MultiTaskModule, batch: dict[str, Tensor], autocast: Callable[[], contextlib.AbstractContextManager]
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(training step, inference step) of ``module`` on ``batch``."""
    net = module.net
    optimizer = training_optimizer(module)

    def train_step() -> None:
        with autocast():
            outputs = module(batch["image"])  # the network, then the tasks' activations
        loss = module.task_losses(outputs.map(lambda _, y: y.float()), batch).sum()  # deep supervision too
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step() -> None:
        with torch.inference_mode(), autocast():
            net(batch["image"])

    return train_step, infer_step
