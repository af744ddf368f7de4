"""Evaluation metrics (docs/method.md section 4) as torchmetrics `Metric`s with sum-reduced states.

Every state is a count, sum, confusion matrix or histogram reduced by summation, so
evaluation split across DDP ranks gives exactly the single-process numbers (as long as
the sampler neither pads nor drops samples). ``update(output, label)`` takes a task's
output and batched label; predictions are resized to the label's size first.
``compute()`` returns a dict of scalar tensors (percent for ratios, metres, degrees).
"""

from mtcp.metrics.depth import DepthMetrics
from mtcp.metrics.edge import EdgeMetrics
from mtcp.metrics.normals import NormalsMetrics
from mtcp.metrics.saliency import SaliencyMetrics
from mtcp.metrics.segmentation import SegmentationMetrics

__all__ = ["DepthMetrics", "EdgeMetrics", "NormalsMetrics", "SaliencyMetrics", "SegmentationMetrics"]
