"""Procedural indoor scenes with exact geometry: the embedded default dataset.

`scene` draws a deterministic random layout, `primitives` intersects rays with its
shapes analytically, `render` turns it into RGB and every label; the `DataSource`
wrapper lives in `mtcp.data.sources.procedural`.
"""

from mtcp.data.procedural.render import intrinsics, render_sample, render_scene
from mtcp.data.procedural.scene import HUMAN_PART_CLASSES, SEMSEG_CLASSES, Scene, sample_scene

__all__ = [
    "HUMAN_PART_CLASSES",
    "SEMSEG_CLASSES",
    "Scene",
    "intrinsics",
    "render_sample",
    "render_scene",
    "sample_scene",
]
