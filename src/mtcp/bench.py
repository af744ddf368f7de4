"""``mtcp bench``: throughput, peak memory, parameters and FLOPs of a configured network.

    mtcp bench --config configs/procedural.yaml --config configs/model/mtcp_tiny.yaml \
        --height 120 --width 160 --batch-size 8

The network is built from the ``model.net`` section of the stacked configs, merged by
jsonargparse with the type the CLI gives it (`mtcp.module.NetworkFactory`), so it is
the network ``mtcp fit`` would train. The tasks come from ``data.tasks`` (else
``--tasks``) and the class counts from ``--num-classes`` or, failing that, from the
configured data source. ``--net-arg KEY=VALUE`` overrides ``model.net.init_args.KEY``.

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

import argparse
import contextlib
import ctypes
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mtcp.module import MultiTaskModule
from mtcp.tasks import check_task_names, get_task

_LIBC: Any = None

#: class counts when neither --num-classes nor a data source gives them (NYUD semseg, PASCAL parts)
DEFAULT_CLASSES = {"semseg": 40, "human_parts": 7}


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


# -- the network from the configs --------------------------------------------------------
def _section(cfg: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(cfg, dict) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def _nested(dotted: str, value: Any) -> dict:
    out: dict = {}
    node = out
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return out


def load_network_factory(
    configs: list[str], overrides: list[str]
) -> tuple[Callable[[dict[str, int]], nn.Module], dict]:
    """The ``model.net`` factory of the stacked configs (jsonargparse merge) and their ``data`` section."""
    from jsonargparse import ArgumentParser

    from mtcp.module import NetworkFactory, default_network

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model.net", type=NetworkFactory)
    cfg = None
    data: dict = {}
    for path in configs:
        content = yaml.safe_load(Path(path).read_text()) or {}
        net = _section(content, "model", "net")
        if net is not None:
            cfg = parser.parse_object({"model": {"net": net}}, cfg_base=cfg)
        data.update(_section(content, "data") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        cfg = parser.parse_object({"model": {"net": {"init_args": _nested(key, yaml.safe_load(value))}}}, cfg_base=cfg)
    if cfg is None:
        return default_network, data
    return parser.instantiate_classes(cfg).model.net, data


def _num_classes(arg: str | None, data: dict) -> dict[str, int]:
    if arg:
        pairs = [p.split("=") for p in arg.split(",") if p]
        return {k.strip(): int(v) for k, v in pairs}
    source = data.get("source")
    if source is None:
        return {}
    from jsonargparse import ArgumentParser

    from mtcp.data.sources.base import DataSource

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--source", type=DataSource)
    try:
        return dict(parser.instantiate_classes(parser.parse_object({"source": source})).source.num_classes)
    except Exception as err:  # a dataset root that is not here, a source not installed
        raise SystemExit(
            f"mtcp bench: cannot read the class counts from data.source ({err}); "
            "pass --num-classes, e.g. --num-classes semseg=40,human_parts=7"
        ) from None


def task_channels_for(tasks: list[str], num_classes: dict[str, int]) -> dict[str, int]:
    check_task_names(tasks, setting="--tasks")
    return {t: get_task(t).out_channels(num_classes) for t in tasks}


# -- measurements ------------------------------------------------------------------------
def random_batch(task_channels: dict[str, int], b: int, h: int, w: int, device: torch.device) -> dict[str, Tensor]:
    """An image and a random but valid label per task (class ids, positive depth, unit normals, 0/1 maps)."""
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 3, h, w, generator=gen)}
    for task, c in task_channels.items():
        if task == "depth":
            batch[task] = torch.rand(b, 1, h, w, generator=gen) + 0.5
        elif task == "normals":
            batch[task] = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1)
        else:
            batch[task] = torch.randint(0, max(c, 2), (b, h, w), generator=gen)
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its table; returns the numbers (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="mtcp bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[], help="YAML config(s), stacked in order")
    parser.add_argument(
        "--net-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override model.net.init_args.KEY (dotted, YAML value)",
    )
    parser.add_argument("--tasks", default=None, help="comma-separated tasks when the configs set no data.tasks")
    parser.add_argument("--num-classes", default=None, help="e.g. semseg=40,human_parts=7")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--skip-train", action="store_true", help="inference only")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    factory, data = load_network_factory(args.config, args.net_arg)
    tasks = args.tasks.split(",") if args.tasks else list(data.get("tasks") or ["semseg", "depth", "normals"])
    num_classes = _num_classes(args.num_classes, data)
    for t in tasks:
        if get_task(t).channels is None and t not in num_classes:
            num_classes[t] = DEFAULT_CLASSES.get(t, 2)
            print(f"mtcp bench: no class count for {t!r}; using {num_classes[t]} (set --num-classes)")
    channels = task_channels_for(tasks, num_classes)
    net = factory(channels).to(device)
    b, h, w = args.batch_size, args.height, args.width
    batch = random_batch(channels, b, h, w, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else contextlib.nullcontext

    params, flops, total_flops = parameters_and_flops(net.eval(), batch["image"][:1])

    results: dict[str, Any] = {
        "params": params,
        "flops": flops,
        "total_flops": total_flops,
        "tasks": channels,
    }
    if not args.skip_train:
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        losses = MultiTaskModule(channels, net=lambda _: net).task_losses  # the training loss, deep supervision 0.5

        def train_step() -> None:
            with autocast():
                outputs = net(batch["image"])
            loss = losses({lv: {t: y.float() for t, y in preds.items()} for lv, preds in outputs.items()}, batch).sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        results["train_ips"], results["train_mem"] = throughput(train_step, b, args.warmup, args.repeats, device)
    net.eval()

    def infer_step() -> None:
        with torch.inference_mode(), autocast():
            net(batch["image"])

    results["infer_ips"], results["infer_mem"] = throughput(infer_step, b, args.warmup, args.repeats, device)

    name = type(net).__name__
    print(
        f"{name} | tasks {channels} | input {b}x3x{h}x{w} | {device.type}"
        f"{' bf16' if args.amp else ''} | torch threads {torch.get_num_threads()}"
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


if __name__ == "__main__":
    main()
