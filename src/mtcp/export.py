"""ONNX export of a trained network (``mtcp export``), and its check under onnxruntime.

The exported graph is what ``mtcp predict`` computes: ``image`` [B, 3, H, W], RGB in [0, 1]
(the network normalises it itself), to one output per task, named after the task, in the task's
output space (semantic logits, positive depth, unit normals, saliency/edge logits), at the
input's H x W. The batch is always dynamic. Height and width are dynamic where the network's
computation does not depend on the map size beyond padding: convolutional backbones, the FPN and
the heads (the plain baseline with ResNet or ConvNeXt). Swin window attention (MT-CP's task
decoders, Swin backbones) pads every stage's map to a window multiple and builds its shifted-window
mask for that padded size; traced with symbolic sizes, the smallest MT-CP (test_convnext, D 16)
took over 7 minutes on 2 cores to export (seconds at a fixed size), and a size branch the tracer
follows at the example size is silently kept for every size (the padding here is branch-free for
that reason; the Swin blocks are not), so these networks export at one size (``--height``,
``--width``; by default the data's evaluation grid). docs/export.md says more.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timm.models.swin_transformer import SwinTransformerBlock
from torch import Tensor, nn

#: the exported graph's input name
INPUT = "image"
#: the largest dynamic batch and side length the exporter is told about
MAX_BATCH, MAX_SIDE = 1024, 8192


class TaskOutputs(nn.Module):
    """A `MultiTaskModule`'s final predictions as a tuple in task order: the graph ONNX records."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.task_names = list(module.task_names)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        final = self.module(image).final
        return tuple(final[t] for t in self.task_names)


def size_dependent_parts(net: nn.Module) -> list[str]:
    """The modules of ``net`` whose computation depends on the map size beyond padding (Swin window
    attention: window padding and shift masks), by name; empty when height and width can be dynamic."""
    return [name for name, m in net.named_modules() if isinstance(m, SwinTransformerBlock)]


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote, and how it compares with PyTorch when checked."""

    path: Path
    outputs: tuple[str, ...]
    size: tuple[int, int]
    dynamic_size: bool
    seconds: float
    max_abs_error: dict[str, float] | None = None  # per output, onnxruntime vs eager, when checked

    def text(self) -> str:
        shape = "[batch, 3, height, width]" if self.dynamic_size else f"[batch, 3, {self.size[0]}, {self.size[1]}]"
        lines = [f"wrote {self.path} in {self.seconds:.1f} s: input {INPUT!r} {shape}, RGB in [0, 1]; "
                 f"outputs {list(self.outputs)}"]
        if self.max_abs_error is not None:
            errors = ", ".join(f"{t} {e:.2g}" for t, e in self.max_abs_error.items())
            lines.append(f"onnxruntime vs PyTorch, max abs difference: {errors}")
        return "\n".join(lines)


def export_onnx(module: nn.Module, path: str | Path, size: tuple[int, int], dynamic_size: bool | None = None,
                opset: int | None = None, optimize: bool = True) -> ExportReport:
    """Write ``module``'s network (in eval mode, fp32, on the CPU) to ``path`` as ONNX.

    Args:
        module: a `MultiTaskModule` (its ``net`` and task activations are exported).
        path: the ``.onnx`` file (the weights go into it, or beside it as ``<path>.data`` when large).
        size: (H, W) of the example input; the graph's only size when it is not dynamic.
        dynamic_size: dynamic height and width; None: where the network allows it cheaply
            (`size_dependent_parts` is empty); True for a network with Swin window attention is refused.
        opset: ONNX opset (None: the exporter's default).
        optimize: run the ONNX exporter's graph optimiser (constant folding, dead code).
    """
    fixed = size_dependent_parts(module.net)
    if dynamic_size and fixed:
        raise ValueError(f"dynamic_size: this network's height and width cannot be dynamic: its Swin window "
                         f"attention ({fixed[0]}, and {len(fixed) - 1} more) pads to window multiples and masks for "
                         f"the padded size; export it at a fixed size (--height, --width)")
    dynamic = not fixed if dynamic_size is None else dynamic_size
    graph = TaskOutputs(module).eval().float().cpu()
    example = torch.rand(2, 3, *size)  # a batch of 2: an example batch of 1 would fix the batch at 1
    shapes: dict[int, torch.export.Dim] = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if dynamic:
        shapes |= {2: torch.export.Dim("height", min=1, max=MAX_SIDE),
                   3: torch.export.Dim("width", min=1, max=MAX_SIDE)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT],
                                    output_names=graph.task_names, dynamic_shapes={"image": shapes},
                                    opset_version=opset, optimize=optimize, verify=False)
    program.save(str(path))
    return ExportReport(path, tuple(graph.task_names), (int(size[0]), int(size[1])), dynamic,
                        time.perf_counter() - start)


def onnx_errors(path: str | Path, module: nn.Module, images: Sequence[Tensor]) -> dict[str, float]:
    """The largest absolute difference per output between onnxruntime running ``path`` and ``module``
    in eval mode, over ``images`` (batches [B, 3, H, W] the graph accepts)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("checking an export needs onnxruntime: pip install 'mtcp[export]' "
                          "(or pass --check false)") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = TaskOutputs(module).eval().float().cpu()
    errors = dict.fromkeys(graph.task_names, 0.0)
    for image in images:
        with torch.no_grad():
            expected = graph(image.float().cpu())
        got = session.run(graph.task_names, {INPUT: image.float().cpu().numpy()})
        for task, ours, theirs in zip(graph.task_names, expected, got, strict=True):
            errors[task] = max(errors[task], float(np.abs(ours.numpy() - theirs).max()))
    return errors
