"""The plain multi-task baseline: shared backbone + FPN pixel decoder + one head per task.

This is what MT-CP is compared against (docs/method.md section 2 without the query decoder,
task decoders and trace-back).
"""

from __future__ import annotations

from torch import Tensor, nn

from mtcp.models.backbone import TimmBackbone
from mtcp.models.fpn import FPN
from mtcp.models.heads import make_heads
from mtcp.models.outputs import Predictions
from mtcp.models.padding import crop_outputs, pad_to_multiple


class PlainMTL(nn.Module):
    """Shared encoder-decoder, task-specific heads on the stride-4 pixel features.

    Args:
        task_channels: output width of every task (given by the data module).
        backbone: the timm backbone adapter.
        dim: width of the pixel decoder.
    """

    def __init__(self, task_channels: dict[str, int], backbone: TimmBackbone | None = None, dim: int = 64) -> None:
        super().__init__()
        self.task_channels = dict(task_channels)
        self.backbone = backbone or TimmBackbone()
        self.pixel_decoder = FPN(self.backbone.feature_info.channels, dim, num_outputs=1)
        self.heads = make_heads(self.task_channels, dim)

    def forward(self, image: Tensor) -> Predictions:
        """Raw predictions per task at the input's size (no deep-supervision levels)."""
        size = image.shape[-2:]
        padded = pad_to_multiple(image, max(self.backbone.feature_info.strides))
        pixels = self.pixel_decoder(self.backbone(padded))[0]
        final = {t: head(pixels, padded.shape[-2:]) for t, head in self.heads.items()}
        return crop_outputs(Predictions(final), size)
