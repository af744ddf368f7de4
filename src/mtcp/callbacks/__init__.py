"""Callbacks for pictures, logging and writing predictions."""

from mtcp.callbacks.prediction_grid import PredictionGrid
from mtcp.callbacks.prediction_writer import PredictionWriter

__all__ = ["PredictionGrid", "PredictionWriter"]
