"""Where a training step's memory goes: the peak of each phase of one step, on random data.

`mtcp bench` reports one peak per step; this script splits it, so that a memory target can be
traced to its owner: what is resident before the step (weights, optimizer state, libraries), the
forward (activations kept for backward), the backward (gradients) and the optimizer step. Each
phase is measured with `mtcp.bench.peak_memory` (CPU: the process's resident set; CUDA: torch's
allocator), over the configured network and AdamW, at the configuration's `trainer.precision`.

    python benchmarks/step_memory.py --config configs/procedural.yaml \
        --config configs/model/mtcp_swin_s.yaml --config configs/trainer/bf16.yaml \
        --config configs/model/checkpointing.yaml --height 240 --width 320 --batch_size 2 \
        --model.net.init_args.backbone.init_args.pretrained=false

Other arguments are passed to the CLI as settings: `pretrained=false` builds the backbone with
random weights offline (the memory is the same), `--trainer.accelerator=gpu` measures on CUDA.
"""

from __future__ import annotations

import argparse
import warnings

from mtcp.bench import peak_memory, random_batch, training_optimizer
from mtcp.cli import cli_main

GIB = 2**30


def main(argv: list[str] | None = None) -> list[dict[str, dict[str, float | None]]]:
    """Print the peaks; returns them, per step and phase (``"total"`` and ``"bytes"`` above entry)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="the run's config file(s), stacked")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="steps measured (the first allocates AdamW's state)")
    args, cli_settings = parser.parse_known_args(argv)  # the rest: `--key=value` settings for the CLI

    cli_args = [a for c in args.config for a in ("--config", c)] + cli_settings + ["--trainer.logger=false"]
    with warnings.catch_warnings():  # this script's own options are not the CLI's, as Lightning suspects
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = cli_main(cli_args, run=False)
    module, device = cli.model, cli.trainer.strategy.root_device
    module = module.to(device).train()
    bf16 = str(cli.trainer.precision).startswith("bf16")
    autocast = cli.trainer.precision_plugin.forward_context  # what `fit` runs the forward under
    batch = random_batch(dict(module.task_channels), args.batch_size, args.height, args.width, device)
    optimizer = training_optimizer(module)  # with optimizer_in_backward, it updates in the backward phase

    print(f"{type(module.net).__name__} | input {args.batch_size}x3x{args.height}x{args.width} | {device.type}"
          f"{' bf16' if bf16 else ''} | peak of each phase, total (above the level on entering it)")
    steps = []
    for step in range(args.steps):
        phases = {}
        with peak_memory(device) as phases["forward"]:
            with autocast():
                outputs = module(batch["image"])
            loss = module.task_losses(outputs.map(lambda _, y: y.float()), batch).sum()
        with peak_memory(device) as phases["backward"]:
            loss.backward()
        del outputs, loss
        with peak_memory(device) as phases["optimizer step"]:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"step {step}: " + ", ".join(
            f"{name} {m['total'] / GIB:.2f} GiB (+{m['bytes'] / GIB:.2f})" if m["total"] is not None
            else f"{name} n/a" for name, m in phases.items()))
        steps.append(phases)
    return steps


if __name__ == "__main__":
    main()
