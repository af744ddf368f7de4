"""Colour-map dense labels and predictions into RGB pictures (uint8 HxWx3 numpy arrays).

Class maps get a fixed palette (255 = ignore is black), depth a perceptual colour ramp
(near = bright yellow, far = dark blue, invalid = black), normals the usual
``(n + 1) / 2`` RGB encoding, saliency and edges a grey ramp.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mtcp.labels import IGNORE_INDEX

Range = tuple[float, float] | None
#: (value, num_classes, is_label, depth_range) -> RGB: a `mtcp.tasks.Task`'s colour map
#: (`mtcp.tasks.colorize` picks a task's by name)
Picture = Callable[[Tensor, int, bool, Range], np.ndarray]

#: anchor colours of the depth ramp (viridis-like), interpolated linearly
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def palette(num_classes: int) -> np.ndarray:
    """Distinct colours: hues spaced by the golden ratio, alternating lightness."""
    colours = []
    for k in range(num_classes):
        hue = (k * 0.618033988749895) % 1.0
        light = 0.45 if k % 2 else 0.6
        colours.append([round(255 * c) for c in colorsys.hls_to_rgb(hue, light, 0.75)])
    return np.array(colours, dtype=np.uint8).reshape(-1, 3)


def colorize_classes(label: Tensor, num_classes: int) -> np.ndarray:
    """[H, W] class ids (255 ignore) -> RGB."""
    lab = label.detach().cpu().numpy().astype(np.int64)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:num_classes] = palette(num_classes)[: min(num_classes, IGNORE_INDEX)]
    return table[np.clip(lab, 0, 255)]


def colorize_depth(depth: Tensor, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """[1, H, W] or [H, W] metres (0 invalid) -> RGB, near bright, far dark."""
    d = depth.detach().float().cpu().reshape(depth.shape[-2:]).numpy()
    valid = d > 0
    if not valid.any():
        return np.zeros((*d.shape, 3), dtype=np.uint8)
    lo = float(d[valid].min()) if vmin is None else vmin
    hi = float(d[valid].max()) if vmax is None else vmax
    t = 1.0 - np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
    pos = t * (len(_RAMP) - 1)
    i = np.clip(pos.astype(np.int64), 0, len(_RAMP) - 2)
    frac = (pos - i)[..., None]
    rgb = _RAMP[i] * (1 - frac) + _RAMP[i + 1] * frac
    rgb[~valid] = 0
    return rgb.astype(np.uint8)


def colorize_normals(normals: Tensor) -> np.ndarray:
    """[3, H, W] unit vectors (zero invalid) -> RGB ``(n + 1) / 2``; invalid black."""
    n = normals.detach().float().cpu()
    valid = n.abs().sum(0) > 0
    rgb = ((n + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy() * 255
    rgb[~valid.numpy()] = 0
    return rgb.astype(np.uint8)


def colorize_probability(prob: Tensor) -> np.ndarray:
    """[1, H, W] or [H, W] values in [0, 1] (or {0, 1, 255} labels) -> grey RGB; 255 red."""
    p = prob.detach().float().cpu().reshape(prob.shape[-2:])
    ignore = (p == IGNORE_INDEX).numpy()
    grey = (p.clamp(0, 1) * 255).numpy().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[ignore] = (120, 0, 0)
    return rgb


def class_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range) -> np.ndarray:
    """A class map: the label's ids or the logits' arg-max, palette-coloured."""
    return colorize_classes(value if is_label else value.argmax(0), num_classes)


def depth_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range) -> np.ndarray:
    """Depth on the colour ramp, over ``depth_range`` (else the map's own range)."""
    lo, hi = depth_range if depth_range else (None, None)
    return colorize_depth(value, lo, hi)


def normals_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range) -> np.ndarray:
    return colorize_normals(value)


def probability_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range) -> np.ndarray:
    """A binary map: the 0/1/255 label or the logit's sigmoid, grey."""
    return colorize_probability(value if is_label else torch.sigmoid(value))


def image_to_rgb(image: Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> uint8 RGB."""
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
