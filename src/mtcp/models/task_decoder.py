"""A task's own decoder ("hierarchical feature processing"): three Swin stages over R, then an FPN.

Stage widths D, 2D, 4D at strides 4, 8, 16 (depths 1, 2, 1; 2 heads; window 7; timm's
patch merging between stages), docs/method.md section 2. The stages are timm's
`SwinTransformerStage` (its patch merging, blocks, window attention, MLPs), which work
on NHWC maps, with every block padding before its cyclic shift (`mtcp.models.swin`), so any
map size has the original Swin's shifted-window semantics (at 120x160 inputs the 1/16 map, 8x10,
pads to 14x14 for the attention). ``always_partition`` keeps the window at 7 for small maps and
``dynamic_mask`` builds the mask for each padded size.
"""

from __future__ import annotations

from timm.models.swin_transformer import SwinTransformerStage
from torch import Tensor, nn

from mtcp.models.fpn import FPN
from mtcp.models.outputs import FeatureInfo
from mtcp.models.swin import pad_before_shift


class PaddedSwinStage(nn.Module):
    """timm's Swin stage (optional patch merging, then blocks) for NHWC maps of any size."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, heads: int, window: int, downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.stage = SwinTransformerStage(
            dim=in_dim,
            out_dim=out_dim,
            input_resolution=(2 * window, 2 * window),
            depth=depth,
            downsample=downsample,
            num_heads=heads,
            window_size=window,
            always_partition=True,
            dynamic_mask=True,
        )
        pad_before_shift(self.stage)

    def forward(self, x: Tensor) -> Tensor:
        return self.stage(x)  # patch merging (it pads odd sizes itself), then the pad-first blocks


class TaskDecoder(nn.Module):
    """R [B, D, H, W] -> (X_t [B, D, H, W], S_t = [D@H, 2D@H/2, 4D@H/4]), all NCHW.

    ``feature_info`` declares S_t: its widths, and its strides relative to R.

    Args:
        dim: D, the width of R.
        depths: blocks per stage.
        heads: attention heads of every stage.
        window: Swin window size.
        stage_norm: a LayerNorm on every stage's output (the authors' ``norm{i}``).
        fpn_output: the fusion FPN's output convolution (`mtcp.models.fpn.FPN_OUTPUTS`); ``"conv"``
            is the authors' plain 3x3 convolution.
    """

    def __init__(self, dim: int, depths: tuple[int, ...] = (1, 2, 1), heads: int = 2, window: int = 7,
                 stage_norm: bool = False, fpn_output: str = "conv_bn_relu") -> None:
        super().__init__()
        widths = [dim * 2**i for i in range(len(depths))]
        self.stages = nn.ModuleList(
            PaddedSwinStage(widths[max(i - 1, 0)], widths[i], depth, heads, window, downsample=i > 0)
            for i, depth in enumerate(depths)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(w) if stage_norm else nn.Identity() for w in widths)
        self.fpn = FPN(widths, dim, num_outputs=1, output=fpn_output)
        self.feature_info = FeatureInfo(tuple(widths), tuple(2**i for i in range(len(depths))))

    def forward(self, shared: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = shared.permute(0, 2, 3, 1)
        stages = []
        for stage, norm in zip(self.stages, self.norms, strict=True):
            x = stage(x)  # the next stage reads the map before the norm, as in the authors' Swin
            stages.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return self.fpn(stages)[0], stages
