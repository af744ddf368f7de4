"""Callbacks for checkpoints, pictures, logging, writing predictions and guarding the step."""

from mtcp.callbacks.finite_gradients import FiniteGradients
from mtcp.callbacks.last_checkpoint import LastCheckpoint
from mtcp.callbacks.optimizer_in_backward import OptimizerInBackward
from mtcp.callbacks.prediction_grid import PredictionGrid
from mtcp.callbacks.prediction_writer import PredictionWriter
from mtcp.callbacks.weight_chart import WeightChart

__all__ = ["FiniteGradients", "LastCheckpoint", "OptimizerInBackward", "PredictionGrid", "PredictionWriter",
           "WeightChart"]
