"""Coherence Fusion Module (CFM): a task attends over its own features with the other tasks' affinity.

docs/method.md section 2: each auxiliary task's map is gated, ``a * sigmoid(conv1x1(a))``,
the gated maps are fused by a 1x1 convolution into F; queries and keys come from F
(CBAM -> BN -> ReLU, two branches), values from the task's own X_t (CBAM -> BN); the
output is CBAM -> BN of ``softmax(Q K^T * scale) V`` over all H/4 x W/4 positions.

Memory: the authors materialise the HW x HW affinity (1.47 GB per image and task at
480x640 in fp32). Here `torch.nn.functional.scaled_dot_product_attention` computes the
same maths in O(HW) memory. Its memory-saving kernels need the value width equal to the
query/key width and contiguous inputs (docs/notes.md, "Attention on the CPU"); otherwise
it silently materialises the affinity. Q, K and V all have width D here (CBAM and BN
keep the width), and they are made contiguous [B, 1, HW, D] before the call, so the
saving kernel runs (``benchmarks/cfm_memory.py`` measures it against the materialised
form; ``tests/models/test_mtcp_network.py`` checks the results agree).

Scale: the authors use none (1.0); with ReLU features the softmax is then nearly
one-hot and fp32 gradients lose precision, so the default is 1/sqrt(D).

Precision: the attention ``softmax(Q K^T * scale) V`` always runs in (at least) fp32.
Under ``torch.autocast(..., dtype=torch.bfloat16)`` (or float16) the call would otherwise
take the lower precision: bf16 keeps 8 bits of mantissa, so logits of size ~100 (the
unscaled, near one-hot softmax) are off by ~0.5 and the attention weights by tens of
percent. `spatial_attention` therefore disables autocast locally, casts Q, K, V to fp32
and casts the result back to V's dtype; the surrounding convolutions stay in the
autocast dtype. Its cost is fp32 copies of the [B, HW, D] tokens (O(HW), the kernel
still saves the affinity: the CPU flash kernel and CUDA's memory-efficient kernel take
fp32). Under CPU bf16 autocast the result equals the fp32 computation to fp32 rounding
(``tests/models/test_checkpointing.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtcp.models.cbam import CBAM


def resolve_scale(scale: float | str | None, dim: int) -> float:
    """None -> 1/sqrt(dim); ``"none"`` -> 1.0 (the authors' choice); a number as given."""
    if scale is None:
        return 1.0 / math.sqrt(dim)
    if isinstance(scale, str):
        if scale.lower() != "none":
            raise ValueError(f"attention scale must be a number, None (1/sqrt(d)) or 'none' (1.0); got {scale!r}")
        return 1.0
    return float(scale)


def _tokens(x: Tensor) -> Tensor:
    """[B, C, H, W] -> contiguous [B, 1, H*W, C] (one head), the layout the saving kernels need."""
    return x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()


def spatial_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """softmax(Q K^T * scale) V over all positions of [B, C, H, W] maps, in O(HW) memory."""
    b, _, h, w = v.shape
    if not q.shape[1] == k.shape[1] == v.shape[1]:
        raise ValueError(
            f"CFM attention needs equal Q/K/V widths (memory-saving kernel); got "
            f"{q.shape[1]}, {k.shape[1]}, {v.shape[1]}"
        )
    dtype = torch.float32
    for x in (q, k, v):
        dtype = torch.promote_types(dtype, x.dtype)  # fp32, or fp64 when given fp64
    with torch.autocast(v.device.type, enabled=False):
        q, k, v_ = (_tokens(x.to(dtype)) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v_, scale=scale)
    return out.squeeze(1).transpose(1, 2).reshape(b, v.shape[1], h, w).to(v.dtype)


def naive_spatial_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """The authors' form: the HW x HW affinity materialised (reference for tests and benchmarks)."""
    b, c, h, w = v.shape
    affinity = torch.softmax(torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2)) * scale, dim=-1)
    return torch.bmm(affinity, v.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)


class CoherenceFusion(nn.Module):
    """CFM_t: C_t [B, D, H, W] from X_t and the auxiliary tasks' X_a (same shape).

    Args:
        dim: D.
        num_auxiliary: how many other tasks feed the module (at least 1).
        scale: attention scale (see `resolve_scale`).
    """

    def __init__(self, dim: int, num_auxiliary: int, scale: float | str | None = None) -> None:
        super().__init__()
        if num_auxiliary < 1:
            raise ValueError("the CFM needs at least one auxiliary task")
        self.scale = resolve_scale(scale, dim)
        self.gates = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in range(num_auxiliary))
        self.fuse = nn.Conv2d(num_auxiliary * dim, dim, 1)
        self.query = nn.Sequential(CBAM(dim), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.key = nn.Sequential(CBAM(dim), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.value = nn.Sequential(CBAM(dim), nn.BatchNorm2d(dim))
        self.out = nn.Sequential(CBAM(dim), nn.BatchNorm2d(dim))

    def forward(self, own: Tensor, auxiliary: list[Tensor]) -> Tensor:
        gated = [a * torch.sigmoid(gate(a)) for gate, a in zip(self.gates, auxiliary, strict=True)]
        fused = self.fuse(torch.cat(gated, dim=1))
        attended = spatial_attention(self.query(fused), self.key(fused), self.value(own), self.scale)
        return self.out(attended)
