"""Joint, label-aware augmentation of one sample (docs/method.md section 5).

Geometry changes every map of the sample consistently: images resample bilinearly,
labels as their task's label kind says (`mtcp.labels`): by nearest neighbour; a zoom
by ``s`` divides depth by ``s`` (the scene looks ``s`` times closer) and scales the
intrinsics; a horizontal flip negates the normals' x component; an in-plane rotation
rotates the normals' (x, y) components; padding fills class labels with 255 and
depth/normals with 0 (invalid). Photometric jitter
touches the image only. Randomness comes from the ``generator`` passed per sample
(seeded from the sample's (seed, epoch, index) by the data module), else from torch's
global generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mtcp.labels import resample
from mtcp.tasks import get_task

Sample = dict[str, object]


def _warp_sample(sample: Sample, matrix: Tensor, out_size: tuple[int, int]) -> Sample:
    """Resample all maps of ``sample`` with the affine map ``matrix`` (output pixel -> input pixel).

    ``matrix`` is 2x3 in pixel-centre coordinates; each label is resampled the way its
    task's label kind says (`mtcp.labels`), e.g. class maps by nearest neighbour with
    out-of-image pixels 255.
    """
    image: Tensor = sample["image"]  # type: ignore[assignment]
    h_in, w_in = image.shape[-2:]
    h, w = out_size
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    src_x = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    src_y = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    grid = torch.stack((src_x / w_in * 2 - 1, src_y / h_in * 2 - 1), dim=-1)[None]
    out: Sample = dict(sample)
    out["image"] = resample(image, grid, "bilinear").clamp(0, 1)
    for key in _label_keys(sample):
        out[key] = get_task(key).label.warp(sample[key], grid)  # type: ignore[arg-type]
    return out


def _label_keys(sample: Sample) -> list[str]:
    return [k for k in sample if k not in ("image", "meta")]


@dataclass
class Augmentation:
    """Training-time augmentation settings; calling it augments one sample.

    ``scales``: zoom factors; with ``scale_range`` true, a factor is drawn uniformly
    from [min(scales), max(scales)], else one of ``scales`` is chosen.
    ``crop_size``: (H, W) of the training crop (pad with ignore where the zoomed image
    is smaller); None keeps the sample's size.
    ``rotation``: maximum in-plane rotation in degrees (uniform in [-r, r]).
    ``color_jitter``: strength of brightness/contrast/saturation jitter (0 = off).
    ``resize``: (H, W) every sample is first resized to, aspect not kept (the MT-CP authors'
    ``FixedResize``, e.g. PASCAL-Context to 512x512); a resize is a change of image grid, not a
    camera zoom, so depth values stay as they are. None (default) keeps the sample's size and
    the crop pads where the image is smaller (the ATRC/InvPT protocol). docs/fidelity.md.
    """

    scales: tuple[float, ...] = (1.0,)
    scale_range: bool = False
    crop_size: tuple[int, int] | None = None
    flip: bool = True
    rotation: float = 0.0
    color_jitter: float = 0.0
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) <= 0):
            raise ValueError(f"data.augmentation.resize must be two positive integers (H, W); got {self.resize}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"data.augmentation.scales must be positive numbers; got {self.scales}")
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) <= 0):
            raise ValueError(f"data.augmentation.crop_size must be two positive integers (H, W); got {self.crop_size}")
        if self.rotation < 0 or self.color_jitter < 0:
            raise ValueError("data.augmentation.rotation and color_jitter must be >= 0")

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        def rand() -> float:
            return float(torch.rand((), generator=generator))

        if self.resize is not None:
            sample = resize_sample(sample, tuple(self.resize))
        image: Tensor = sample["image"]  # type: ignore[assignment]
        h_in, w_in = image.shape[-2:]
        out_h, out_w = self.crop_size or (h_in, w_in)
        lo, hi = min(self.scales), max(self.scales)
        if self.scale_range:
            scale = lo + (hi - lo) * rand()
        else:
            scale = float(self.scales[min(int(rand() * len(self.scales)), len(self.scales) - 1)])
        angle = math.radians((2 * rand() - 1) * self.rotation) if self.rotation else 0.0
        flip = self.flip and rand() < 0.5
        # Forward map input pixel -> output pixel: zoom by `scale` about the origin, rotate
        # about the zoomed image centre, then place the zoomed image in the crop at a random offset.
        zh, zw = h_in * scale, w_in * scale
        off_y = rand() * (zh - out_h) if zh > out_h else (zh - out_h) / 2
        off_x = rand() * (zw - out_w) if zw > out_w else (zw - out_w) / 2
        cos, sin = math.cos(angle), math.sin(angle)
        cx, cy = zw / 2, zh / 2
        # output p -> zoomed q = R^-1 (p + off - c) + c -> input q / scale
        inv = torch.tensor(
            [[cos, sin, 0.0], [-sin, cos, 0.0]], dtype=torch.float64
        )  # R^-1 for a rotation by `angle`
        shift = torch.tensor([off_x - cx, off_y - cy], dtype=torch.float64)
        lin = inv[:, :2] / scale
        trans = (inv[:, :2] @ shift + torch.tensor([cx, cy], dtype=torch.float64)) / scale
        if flip:  # flip the output: p_x -> out_w - p_x
            lin = lin @ torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
            trans = trans + lin[:, 0] * -out_w
        matrix = torch.cat((lin, trans[:, None]), dim=1).float()
        out = _warp_sample(sample, matrix, (out_h, out_w))
        for key in _label_keys(out):  # e.g. depth divided by the zoom, normals turned with the image
            out[key] = get_task(key).label.follow(out[key], scale, angle, flip)  # type: ignore[arg-type]
        out["meta"] = _transform_intrinsics(sample["meta"], scale, off_x, off_y, out_w, flip, angle)
        if self.color_jitter:
            out["image"] = _jitter(out["image"], self.color_jitter, rand)
        return out


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """``sample`` resampled to ``size`` (H, W) without keeping the aspect; labels by their kind, values kept."""
    h_in, w_in = sample["image"].shape[-2:]  # type: ignore[union-attr]
    h, w = size
    if (h_in, w_in) == (h, w):
        return sample
    matrix = torch.tensor([[w_in / w, 0.0, 0.0], [0.0, h_in / h, 0.0]])
    out = _warp_sample(sample, matrix, (h, w))
    fx, fy, cx, cy = (float(v) for v in sample["meta"]["intrinsics"])  # type: ignore[index]
    sx, sy = w / w_in, h / h_in
    out["meta"] = {**sample["meta"], "intrinsics": torch.tensor([fx * sx, fy * sy, cx * sx, cy * sy])}  # type: ignore[dict-item]
    return out


def _transform_intrinsics(meta: dict, scale: float, off_x: float, off_y: float, out_w: int, flip: bool,
                          angle: float) -> dict:
    """Pinhole intrinsics after zoom, crop and flip (a rotation keeps fx, fy; centre approximated)."""
    fx, fy, cx, cy = (float(v) for v in meta["intrinsics"])
    fx, fy, cx, cy = fx * scale, fy * scale, cx * scale - off_x, cy * scale - off_y
    if flip:
        cx = out_w - cx
    return {**meta, "intrinsics": torch.tensor([fx, fy, cx, cy], dtype=torch.float32)}


def _jitter(image: Tensor, strength: float, rand: Callable[[], float]) -> Tensor:
    """Random brightness, contrast and saturation change of an RGB image in [0, 1]."""
    def factor() -> float:
        return 1.0 + strength * (2 * rand() - 1)

    image = image * factor()
    mean = image.mean()
    image = (image - mean) * factor() + mean
    grey = image.mean(dim=0, keepdim=True)
    image = (image - grey) * factor() + grey
    return image.clamp(0, 1)
