"""MT-CP: multi-task dense prediction with trace-back coherence and loss prioritization."""

__version__ = "0.1.0"
