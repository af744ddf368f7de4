"""Spatial Refinement Modules (SRM) and the trace-back chain over a task decoder's stages.

docs/method.md section 2: ``SRM(x, f)``: ``x, f = CBAM(x), CBAM(f)``; x resized to f;
``c = cat(x, f)``; ``pred = ReLU(BN(conv1x1(c)))`` with D channels (to a head) and
``back = ReLU(BN(conv1x1(c)))`` with f's channels, "fed to the next SRM".

Which tensor flows on: ``back``. The design names it as the one fed onward and gives
it f's width, i.e. the chain carries a refined copy of the stage it just visited
(4D@1/16 -> SRM2, 2D@1/8 -> SRM3), while ``pred`` is only read out by the heads:

    SRM1(C_t, S[4D@1/16]) -> pred1 (head "srm1"), back1
    SRM2(back1, S[2D@1/8]) -> pred2 (head "srm2"), back2
    SRM3(back2, S[D@1/4])  -> pred3 (head "final")

SRM3's ``back`` would feed nothing, so it is not built (every parameter must get a
gradient). The seed C_t lives at 1/4 and SRM1 works at 1/16: a map is shrunk by area
averaging (all of C_t's detail contributes) and enlarged bilinearly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtcp.models.cbam import CBAM
from mtcp.models.fpn import conv_bn_relu


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Area-average when shrinking, bilinear when enlarging, identity when equal."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SpatialRefinement(nn.Module):
    """SRM(x, f) -> (pred [B, dim, f's size], back [B, f's width, f's size] or None).

    Args:
        in_dim: width of x (the seed or the previous SRM's ``back``).
        feat_dim: width of f (the task decoder's stage at this level).
        dim: width of ``pred`` (D).
        with_back: build the ``back`` branch (False for the last SRM of a chain).
    """

    def __init__(self, in_dim: int, feat_dim: int, dim: int, with_back: bool = True) -> None:
        super().__init__()
        self.cbam_x = CBAM(in_dim)
        self.cbam_f = CBAM(feat_dim)
        self.pred = conv_bn_relu(in_dim + feat_dim, dim, kernel=1)
        self.back = conv_bn_relu(in_dim + feat_dim, feat_dim, kernel=1) if with_back else None

    def forward(self, x: Tensor, f: Tensor) -> tuple[Tensor, Tensor | None]:
        f = self.cbam_f(f)
        x = resize_to(self.cbam_x(x), f.shape[-2:])
        c = torch.cat([x, f], dim=1)
        return self.pred(c), (self.back(c) if self.back is not None else None)


class TraceBack(nn.Module):
    """Three SRMs coarse to fine over S_t = [D@1/4, 2D@1/8, 4D@1/16], seeded with C_t [D@1/4].

    Returns the ``pred`` maps coarse to fine: [D@1/16, D@1/8, D@1/4].
    """

    def __init__(self, dim: int, stage_widths: Sequence[int]) -> None:
        super().__init__()
        coarse_to_fine = list(reversed(stage_widths))
        inputs = [dim] + coarse_to_fine[:-1]
        self.srms = nn.ModuleList(
            SpatialRefinement(i, f, dim, with_back=n < len(coarse_to_fine) - 1)
            for n, (i, f) in enumerate(zip(inputs, coarse_to_fine, strict=True))
        )

    def forward(self, seed: Tensor, stages: list[Tensor]) -> list[Tensor]:
        x, preds = seed, []
        for srm, f in zip(self.srms, reversed(stages), strict=True):
            pred, x = srm(x, f)
            preds.append(pred)
        return preds
