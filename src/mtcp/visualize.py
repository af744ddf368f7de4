"""Colour-map dense labels and predictions into RGB pictures (uint8 HxWx3 numpy arrays).

Class maps use the palettes papers draw their datasets with (`PALETTES`, a legend per
palette from `legend`); depth a perceptual colour ramp (near = bright yellow, far = dark
blue, invalid = black); normals the usual ``(n + 1) / 2`` RGB encoding (x red, y green,
z blue); saliency and edges a grey ramp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from mtcp.labels import IGNORE_INDEX

Range = tuple[float, float] | None
#: (value, num_classes, is_label, depth_range, palette name) -> RGB: a `mtcp.tasks.Task`'s colour map
#: (`mtcp.tasks.colorize` picks a task's by name)
Picture = Callable[[Tensor, int, bool, Range, str], np.ndarray]

#: anchor colours of the depth ramp (viridis-like), interpolated linearly
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def voc_colormap(size: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: entry k spreads the bits of k over the high bits of R, G and B
    (bit 0 to red, 1 to green, 2 to blue, then the next three one bit lower, ...). Index 0 is
    black (background), 255 is the cream (224, 224, 192) VOC draws ignored pixels with."""
    k = np.arange(size)
    rgb = np.zeros((size, 3), dtype=np.int64)
    for level in range(8):
        for channel in range(3):
            bit = (k >> (3 * level + channel)) & 1
            rgb[:, channel] |= bit << (7 - level)
    return rgb.astype(np.uint8)


def _shifted(table: np.ndarray, by: int) -> np.ndarray:
    """Class k drawn with entry k + by; ignore (255) keeps its colour."""
    out = np.roll(table, -by, axis=0)
    out[IGNORE_INDEX] = table[IGNORE_INDEX]
    return out


#: name -> 256-entry RGB table indexed by class id (255 = ignore)
PALETTES: dict[str, np.ndarray] = {
    # PASCAL VOC / PASCAL-Context semseg: 0 background (black), 1 aeroplane, ... as the VOC label PNGs
    "voc": voc_colormap(),
    # NYUD-v2 40 classes: no official palette exists; the 1-based labels of the NYU toolbox
    # (0 unlabelled) drawn with the VOC colour map, so that our class 0 (wall) is VOC entry 1
    "nyud40": _shifted(voc_colormap(), 1),
    # human parts (0 background, 1 head, 2 torso, 3 upper arms, 4 lower arms, 5 upper legs, 6 lower legs)
    "parts": voc_colormap(),
}


def palette_table(name: str) -> np.ndarray:
    """The 256-entry table of a palette, with an error naming the known ones."""
    if name not in PALETTES:
        raise ValueError(f"unknown palette {name!r}; known palettes are {sorted(PALETTES)}")
    return PALETTES[name]


def colorize_classes(label: Tensor, num_classes: int, palette: str = "voc") -> np.ndarray:
    """[H, W] class ids (255 ignore) -> RGB with the named palette."""
    lab = label.detach().cpu().numpy().astype(np.int64)
    return palette_table(palette)[np.clip(lab, 0, 255)]


def legend(palette: str, num_classes: int, names: Sequence[str] = (), swatch: int = 16) -> np.ndarray:
    """A picture listing each class's colour and name (``class k`` where no name is known)."""
    if names and len(names) != num_classes:
        raise ValueError(f"legend of {palette!r}: {len(names)} class names for {num_classes} classes")
    table = palette_table(palette)
    labels = [f"{k}: {names[k] if names else f'class {k}'}" for k in range(num_classes)]
    font = ImageFont.load_default()
    width = swatch + 8 + max(int(font.getlength(text)) for text in labels) + 8
    canvas = Image.new("RGB", (width, num_classes * (swatch + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(labels):
        top = 4 + k * (swatch + 4)
        draw.rectangle((4, top, 4 + swatch - 1, top + swatch - 1), fill=tuple(int(c) for c in table[k]),
                       outline=(0, 0, 0))
        draw.text((swatch + 10, top + 2), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


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


def class_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range,
                  palette: str = "voc") -> np.ndarray:
    """A class map: the label's ids or the logits' arg-max, palette-coloured."""
    return colorize_classes(value if is_label else value.argmax(0), num_classes, palette)


def depth_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range,
                  palette: str = "voc") -> np.ndarray:
    """Depth on the colour ramp, over ``depth_range`` (else the map's own range)."""
    lo, hi = depth_range if depth_range else (None, None)
    return colorize_depth(value, lo, hi)


def normals_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range,
                    palette: str = "voc") -> np.ndarray:
    return colorize_normals(value)


def probability_picture(value: Tensor, num_classes: int, is_label: bool, depth_range: Range,
                        palette: str = "voc") -> np.ndarray:
    """A binary map: the 0/1/255 label or the logit's sigmoid, grey."""
    return colorize_probability(value if is_label else torch.sigmoid(value))


def image_to_rgb(image: Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> uint8 RGB."""
    return (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
