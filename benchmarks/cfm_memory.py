"""CFM attention: memory-saving `scaled_dot_product_attention` vs the materialised softmax(QK^T)V.

The CFM attends over all H/4 x W/4 positions; the authors materialise the HW x HW
affinity. This script times one forward + backward of both forms on CFM-shaped inputs
(default: 120x160 positions, the R of a 480x640 NYUD image, D = 256, one image) and
reports the peak memory each needs above what is resident before the call (see
`mtcp.bench.peak_memory`), and the largest difference between their outputs.

    python benchmarks/cfm_memory.py [--height 120 --width 160 --dim 256 --device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from mtcp.bench import peak_memory
from mtcp.models.cfm import naive_spatial_attention, resolve_scale, spatial_attention


def run(fn, q, k, v, scale: float, device: torch.device, backward: bool) -> tuple[torch.Tensor, float, float | None]:
    """(output, seconds, peak bytes) of one call of ``fn`` (plus its backward when asked)."""
    q, k, v = (t.detach().requires_grad_(backward) for t in (q, k, v))
    with peak_memory(device) as mem:
        start = time.perf_counter()
        if backward:
            out = fn(q, k, v, scale)
            out.backward(torch.ones_like(out))
        else:
            with torch.inference_mode():
                out = fn(q, k, v, scale)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return out.detach(), seconds, mem["bytes"]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float | None]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--scale", default=None, help="attention scale: unset = 1/sqrt(dim), 'none' = 1.0")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    scale_arg = args.scale if args.scale in (None, "none") else float(args.scale)
    scale = resolve_scale(scale_arg, args.dim)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.dim, args.height, args.width)
    # ReLU'd queries/keys and BN'd values, as in the CFM
    q, k = (torch.randn(*shape, generator=gen).relu().to(device) for _ in range(2))
    v = torch.randn(*shape, generator=gen).to(device)
    results: dict[str, dict[str, float | None]] = {}
    outputs = {}
    for name, fn in (("sdpa (CFM)", spatial_attention), ("materialised", naive_spatial_attention)):
        out, seconds, peak = run(fn, q, k, v, scale, device, backward=not args.forward_only)
        outputs[name] = out
        results[name] = {"seconds": seconds, "peak_bytes": peak}
    diff = (outputs["sdpa (CFM)"] - outputs["materialised"]).abs().max().item()
    positions = args.height * args.width
    print(
        f"CFM attention, {positions} positions ({args.height}x{args.width}), width {args.dim}, batch "
        f"{args.batch_size}, scale {scale:.4g}, {'forward' if args.forward_only else 'forward + backward'}, "
        f"{device.type}, {torch.get_num_threads()} threads"
    )
    for name, r in results.items():
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:,.0f} MiB"
        print(f"  {name:<14} {r['seconds']:7.2f} s   peak {peak}")
    a, b = results["sdpa (CFM)"]["peak_bytes"], results["materialised"]["peak_bytes"]
    if a and b:
        print(f"  memory ratio materialised / sdpa: {b / a:.1f}x")
    print(f"  max |difference| of the outputs: {diff:.2e}")
    return results


if __name__ == "__main__":
    main()
