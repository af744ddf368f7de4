"""``mtcp bench``: throughput, peak memory, parameters and FLOPs of a configured network.

    mtcp bench --config configs/procedural.yaml --config configs/model/mtcp_tiny.yaml \
        --height 120 --width 160 --batch_size 8

A subcommand of the CLI like ``fit``: the same configs build the same `MultiTaskModule`
(the data module gives the tasks and class counts, ``--model.net.init_args.*`` overrides
the network), never with downloaded weights; ``--trainer.accelerator`` picks the device
and ``--trainer.precision bf16-mixed`` runs the steps under bfloat16 autocast.

Measured:

- training throughput: forward, the tasks' real losses on random labels (all levels,
  deep supervision weight 0.5), backward, AdamW step; inference: forward in
  ``inference_mode``; images/s over ``--repeats`` steps after ``--warmup`` steps.
- peak memory of one step *above* what is resident before it (weights, optimizer
  state and caches excluded): CUDA from ``max_memory_allocated``; CPU from the kernel's
  resident-set high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs``
  after ``malloc_trim`` hands freed heap back, minus the resident size before the step.
  No allocation hooks (tracemalloc does not see torch's allocations), no sampling
  thread; it needs Linux, and reads "n/a" elsewhere.
- parameters and forward FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``)
  per module group: the network's top-level children (backbone, pixel decoder, query
  decoder, task decoders, CFM, trace-back, heads); "other" is computation outside
  them (the R fusion, resizing).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mtcp.module import MultiTaskModule
from mtcp.tasks import get_task

_LIBC: Any = None


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
    """Yield a dict whose ``"bytes"`` is, on exit, the peak memory above the level on entry."""
    result: dict[str, float | None] = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["bytes"] = float(torch.cuda.max_memory_allocated(device) - base)
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
        result["bytes"] = float(max(peak - base, 0) * 1024)


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


def throughput(
    step: Callable[[], Any], images: int, warmup: int, repeats: int, device: torch.device
) -> tuple[float, float | None]:
    """(images per second, peak bytes above the resident level) of ``step``."""
    for _ in range(warmup):
        step()
    _sync(device)
    with peak_memory(device) as mem:
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        _sync(device)
        elapsed = time.perf_counter() - start
    return images * repeats / elapsed, mem["bytes"]


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
    with FlopCounterMode(display=False) as counter:  # (no_grad trips its module tracker)
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
) -> dict[str, Any]:
    """Measure ``module``'s network, print the table; returns the numbers (for tests and scripts)."""
    if threads:
        torch.set_num_threads(threads)
    channels = dict(module.task_channels)
    module = module.to(device)
    net = module.net
    b, h, w = batch_size, height, width
    batch = random_batch(channels, b, h, w, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    params, flops, total_flops = parameters_and_flops(net.eval(), batch["image"][:1])

    results: dict[str, Any] = {
        "params": params,
        "flops": flops,
        "total_flops": total_flops,
        "tasks": channels,
    }
    if not skip_train:
        module.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def train_step() -> None:
            with autocast():
                outputs = module(batch["image"])  # the network, then the tasks' activations
            loss = module.task_losses(outputs.map(lambda _, y: y.float()), batch).sum()  # deep supervision too
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results["train_ips"], results["train_mem"] = throughput(train_step, b, warmup, repeats, device)
    net.eval()

    def infer_step() -> None:
        with torch.inference_mode(), autocast():
            net(batch["image"])

    results["infer_ips"], results["infer_mem"] = throughput(infer_step, b, warmup, repeats, device)

    name = type(net).__name__
    print(
        f"{name} | tasks {channels} | input {b}x3x{h}x{w} | {device.type}"
        f"{' bf16' if bf16 else ''} | torch threads {torch.get_num_threads()}"
    )
    print(f"{'group':<16}{'params (M)':>12}{'GFLOPs/img':>12}")
    for g in list(params) + (["other"] if "other" not in params else []):
        print(f"{g:<16}{params.get(g, 0) / 1e6:>12.2f}{flops.get(g, 0.0) / 1e9:>12.2f}")
    print(f"{'total':<16}{sum(params.values()) / 1e6:>12.2f}{total_flops / 1e9:>12.2f}")
    if "train_ips" in results:
        print(
            f"training:  {results['train_ips']:8.2f} images/s   peak memory above resident "
            f"{_fmt_bytes(results['train_mem'])}"
        )
    print(
        f"inference: {results['infer_ips']:8.2f} images/s   peak memory above resident "
        f"{_fmt_bytes(results['infer_mem'])}"
    )
    return results
