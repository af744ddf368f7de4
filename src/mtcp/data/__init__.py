"""Data: sources (procedural scenes, NYUD-v2, PASCAL-Context), augmentation, the data module."""
