"""Swin blocks that pad *before* the cyclic shift, as the original Swin (and Hugging Face, and the
MT-CP authors) do; timm's block shifts first and pads after.

On a map that is not a multiple of the window, timm's order rolls the content and then pads, so the
shifted-window mask, built for the padded map, no longer matches where the rolled content wraps:
every Swin stage of a 480x640 input (maps of 120x160, 60x80, 30x40, 15x20, none a multiple of 7)
attends differently from the network the pretrained weights were trained as. `PadFirstSwinBlock`
is timm's block with its window attention run on the normalised map zero-padded to a window
multiple first (timm's own padding then has nothing to do, and the shift and the mask are those of
the padded map), cropped back; the MLP runs on the real positions. On window multiples it is
exactly timm's block. `pad_before_shift` converts the blocks of a built timm model in place
(parameters, buffers and checkpoint keys unchanged).

It overrides timm's private ``SwinTransformerBlock._attn``, so timm is pinned to ``<1.1`` in
pyproject.toml, and ``tests/models/test_mtcp_network.py`` checks the parts relied on.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import Tensor, nn


class PadFirstSwinBlock(SwinTransformerBlock):
    """timm's Swin block, padding the attention's input to a window multiple before the shift."""

    def _attn(self, x: Tensor) -> Tensor:
        h, w = x.shape[1:3]
        ph, pw = -h % self.window_size[0], -w % self.window_size[1]
        if not (ph or pw):
            return super()._attn(x)
        return super()._attn(F.pad(x, (0, 0, 0, pw, 0, ph)))[:, :h, :w]


def pad_before_shift(model: nn.Module) -> int:
    """Make every timm Swin block inside ``model`` a `PadFirstSwinBlock` (in place); how many there were."""
    blocks = [m for m in model.modules() if type(m) is SwinTransformerBlock]
    for block in blocks:
        block.__class__ = PadFirstSwinBlock
    return len(blocks)
