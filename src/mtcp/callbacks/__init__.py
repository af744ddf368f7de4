"""Callbacks for checkpoints, pictures, logging and writing predictions."""

from mtcp.callbacks.last_checkpoint import LastCheckpoint
from mtcp.callbacks.optimizer_in_backward import OptimizerInBackward
from mtcp.callbacks.prediction_grid import PredictionGrid
from mtcp.callbacks.prediction_writer import PredictionWriter
from mtcp.callbacks.weight_chart import WeightChart

__all__ = ["LastCheckpoint", "OptimizerInBackward", "PredictionGrid", "PredictionWriter", "WeightChart"]
