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
keep the width; with the authors' wide fusion V is zero-padded to the Q/K width), and
they are made contiguous [B, 1, HW, C] before the call, so the saving kernel runs
(``benchmarks/cfm_memory.py`` measures it against the materialised form;
``tests/models/test_mtcp_network.py`` checks the results agree).

Scale: the authors use none (1.0); with ReLU features the softmax is then nearly
one-hot and fp32 gradients lose precision, so the default is 1/sqrt(D).

Precision (``attention_precision``): under ``torch.autocast(..., dtype=torch.bfloat16)`` the
attention may run in bf16 or in fp32. In bf16 the kernels (CPU flash attention, CUDA flash and
memory-efficient attention) still accumulate Q K^T and the softmax in fp32; what bf16 costs is
the rounding of Q, K and V to 8 bits of mantissa, a relative error of ~2^-9 per entry, hence
of ~2^-9 x |logit| in each logit. With the standard scale 1/sqrt(width) the logits are O(1)
and the attention's error is that of any bf16 matmul (measured at D = 256, 60x80 positions,
ReLU features: mean error 0.2 % of the output's standard deviation, largest 1.6 %;
``tests/models/test_checkpointing.py`` bounds it); forward + backward run 3x faster than in
fp32 on this project's CPU (B 2, D 256, 64x80 positions: 0.21 s against 0.64 s). With the authors' unscaled
softmax the logits reach ~100, the weights are near one-hot and bf16 rounding moves them by
tens of percent. So ``"auto"`` (the default) runs in the autocast dtype when the scale is at
most 1/sqrt(width) and in fp32 otherwise; ``"fp32"`` always disables autocast locally, casts
Q, K, V to fp32 and casts the result back to V's dtype; ``"autocast"`` always follows autocast.
Without autocast (fp32 training) the three are the same computation.
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


def _tokens(x: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, C, H, W] -> contiguous [B, 1, H*W, C] of ``dtype`` (one head), the layout the saving
    kernels need, in one copy."""
    return x.flatten(2).transpose(1, 2).unsqueeze(1).to(dtype, memory_format=torch.contiguous_format, copy=True)


#: the precision of the CFM attention under autocast (`CoherenceFusion`'s ``precision``; module doc)
ATTENTION_PRECISIONS = ("auto", "fp32", "autocast")


def attention_in_fp32(precision: str, scale: float, width: int) -> bool:
    """Whether the attention of Q/K ``width`` and softmax ``scale`` runs in fp32 under autocast for
    ``precision`` ``"auto"``, ``"fp32"`` or ``"autocast"`` (module doc, "Precision")."""
    if precision not in ATTENTION_PRECISIONS:
        raise ValueError(f"model.net.init_args.attention_precision: {precision!r}; choose one of "
                         f"{list(ATTENTION_PRECISIONS)}")
    return precision == "fp32" or (precision == "auto" and scale > 1.0 / math.sqrt(width))


def spatial_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, fp32: bool = True) -> Tensor:
    """softmax(Q K^T * scale) V over all positions of [B, C, H, W] maps, in O(HW) memory.

    ``fp32``: compute in (at least) fp32 under autocast too; False: in the autocast dtype when
    autocast is on (module doc, "Precision"). The result has V's dtype.
    A V narrower than Q/K (the authors' wide fusion: Q, K of width (T-1) D, V of width D) is
    zero-padded to their width and the extra output channels dropped: the same result, and
    the memory-saving kernel, which needs equal widths, still runs (docs/notes.md).
    """
    b, c, h, w = v.shape
    if q.shape[1] != k.shape[1] or c > q.shape[1]:
        raise ValueError(f"CFM attention needs Q and K of one width, at least V's; got "
                         f"{q.shape[1]}, {k.shape[1]}, {c}")
    device = v.device.type
    if not fp32 and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.float32
        for x in (q, k, v):
            dtype = torch.promote_types(dtype, x.dtype)  # fp32, or fp64 when given fp64
    with torch.autocast(device, enabled=False):
        v_wide = F.pad(v, (0, 0, 0, 0, 0, q.shape[1] - c)) if c < q.shape[1] else v
        q, k, v_ = (_tokens(x, dtype) for x in (q, k, v_wide))
        out = F.scaled_dot_product_attention(q, k, v_, scale=scale)[..., :c]
    return out.squeeze(1).transpose(1, 2).reshape(b, c, h, w).to(v.dtype)


def naive_spatial_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """The authors' form: the HW x HW affinity materialised (reference for tests and benchmarks)."""
    b, c, h, w = v.shape
    affinity = torch.softmax(torch.bmm(q.flatten(2).transpose(1, 2), k.flatten(2)) * scale, dim=-1)
    return torch.bmm(affinity, v.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)


#: how the CFM fuses the gated auxiliary maps into F (`CoherenceFusion`'s ``fusion``)
CFM_FUSIONS = ("linear", "wide_relu")


class CoherenceFusion(nn.Module):
    """CFM_t: C_t [B, D, H, W] from X_t and the auxiliary tasks' X_a (same shape).

    Args:
        dim: D.
        num_auxiliary: how many other tasks feed the module (at least 1).
        scale: attention scale (see `resolve_scale`).
        fusion: how the gated auxiliary maps become F, the source of Q and K: ``"linear"``, a 1x1
            convolution to D channels; ``"wide_relu"``, the authors' 1x1 convolution that keeps
            all (T-1) D channels, then ReLU, so Q and K are (T-1) D wide (docs/fidelity.md).
        precision: the attention under autocast, ``"auto"``, ``"fp32"`` or ``"autocast"`` (module
            doc, "Precision").
    """

    def __init__(self, dim: int, num_auxiliary: int, scale: float | str | None = None,
                 fusion: str = "linear", precision: str = "auto") -> None:
        super().__init__()
        if num_auxiliary < 1:
            raise ValueError("the CFM needs at least one auxiliary task")
        if fusion not in CFM_FUSIONS:
            raise ValueError(f"model.net.init_args.cfm_fusion: {fusion!r}; choose one of {list(CFM_FUSIONS)}")
        self.scale = resolve_scale(scale, dim)
        self.gates = nn.ModuleList(nn.Conv2d(dim, dim, 1) for _ in range(num_auxiliary))
        wide = num_auxiliary * dim
        if fusion == "linear":
            self.fuse: nn.Module = nn.Conv2d(wide, dim, 1)
            qk = dim
        else:
            self.fuse = nn.Sequential(nn.Conv2d(wide, wide, 1), nn.ReLU(inplace=True))
            qk = wide
        self.attention_fp32 = attention_in_fp32(precision, self.scale, qk)
        self.query = nn.Sequential(CBAM(qk), nn.BatchNorm2d(qk), nn.ReLU(inplace=True))
        self.key = nn.Sequential(CBAM(qk), nn.BatchNorm2d(qk), nn.ReLU(inplace=True))
        self.value = nn.Sequential(CBAM(dim), nn.BatchNorm2d(dim))
        self.out = nn.Sequential(CBAM(dim), nn.BatchNorm2d(dim))

    def forward(self, own: Tensor, auxiliary: list[Tensor]) -> Tensor:
        gated = [a * torch.sigmoid(gate(a)) for gate, a in zip(self.gates, auxiliary, strict=True)]
        fused = self.fuse(torch.cat(gated, dim=1))
        attended = spatial_attention(self.query(fused), self.key(fused), self.value(own), self.scale,
                                     fp32=self.attention_fp32)
        return self.out(attended)
