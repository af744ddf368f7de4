"""Callbacks for pictures and logging."""

from mtcp.callbacks.prediction_grid import PredictionGrid

__all__ = ["PredictionGrid"]
