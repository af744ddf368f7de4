"""Cross-task coherence of a model's own predictions (no labels involved).

MT-CP claims that its tasks agree with each other; these metrics measure it.
Both work on the network-input grid (where the intrinsics hold), inside the region
the image occupies (``meta["input_size"]``, padding excluded), with sum-reduced states
so DDP evaluation is exact.

Geometry. Pixel (i, j) has its centre at (u, v) = (j + 0.5, i + 0.5) (the corner-origin
convention the augmentation uses when it scales intrinsics) and back-projects to
``P = ((u - cx) / fx * Z, (v - cy) / fy * Z, Z)`` in the camera frame of the sample
convention (x right, y down, z forward). A **depth discontinuity** is a pixel where
the log-depth changes by more than ``max_log_step`` per pixel (central differences,
either axis). A plane slanted by theta changes log-depth by about tan(theta) / f per
pixel, so the default 0.04 passes planes up to ~88 degrees at NYU's 480x640 focal
length (f ~ 519 px) and up to ~79 degrees at 120x160 (f ~ 130 px), and it catches
depth steps above ~17% even when a network smears them over 4 pixels. The criterion
is per pixel: compare models at one input size.

(a) `DepthNormalsCoherence`: the normal of the surface implied by the predicted depth,
``n = dP/dv x dP/du`` from central differences (oriented towards the camera), against
the predicted normals: mean angle (degrees, headline), RMSE, % under 11.25/22.5/30.
Pixels on a depth discontinuity or next to the image border are skipped (their
derived normal straddles two surfaces). Central differences are exact on planes, so a
planar depth map and its own normals give 0 degrees.

(b) `SemsegDepthCoherence`: do predicted semantic boundaries coincide with predicted
depth discontinuities? Semantic-boundary pixels: the arg-max class differs from a
4-neighbour. With a tolerance of ``tolerance`` pixels (Chebyshev distance):
``precision`` = % of semantic-boundary pixels near a depth discontinuity, ``recall`` =
% of depth-discontinuity pixels near a semantic boundary, ``f`` their harmonic mean.
Even perfect predictions score below 100 (a poster on a wall changes class without a
depth step; a chair before a chair steps without a class change): compare models.
Values depend on the input resolution (a pixel tolerance), so compare at one size.

`COHERENCE_PAIRS` registers each metric by the tasks it needs; a model builds the
pairs its tasks cover (`coherence_pairs`) and feeds them its outputs with `CoherencePair.update`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mtcp.metrics.normals import THRESHOLDS_DEG

MIN_DEPTH = 1e-3


def region_mask(shape: tuple[int, int, int], image_size: Tensor | None, device: torch.device) -> Tensor:
    """bool [B, H, W]: True inside each sample's image region (top-left ``image_size``)."""
    b, h, w = shape
    if image_size is None:
        return torch.ones(b, h, w, dtype=torch.bool, device=device)
    size = torch.as_tensor(image_size, device=device).long().view(b, 2)
    rows = torch.arange(h, device=device).view(1, h, 1) < size[:, 0].view(b, 1, 1)
    cols = torch.arange(w, device=device).view(1, 1, w) < size[:, 1].view(b, 1, 1)
    return rows & cols


def _interior(mask: Tensor) -> Tensor:
    """Pixels of ``mask`` whose 4 neighbours are also in ``mask`` (image border excluded)."""
    out = torch.zeros_like(mask)
    m = mask
    out[:, 1:-1, 1:-1] = (m[:, 1:-1, 1:-1] & m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:])
    return out


def backproject(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Camera-frame points [B, 3, H, W] of a depth map [B, 1, H, W] with (fx, fy, cx, cy) [B, 4]."""
    b, _, h, w = depth.shape
    k = intrinsics.to(depth).view(b, 4, 1, 1)
    u = torch.arange(w, device=depth.device, dtype=depth.dtype).view(1, 1, 1, w) + 0.5
    v = torch.arange(h, device=depth.device, dtype=depth.dtype).view(1, 1, h, 1) + 0.5
    z = depth
    return torch.cat(((u - k[:, 2:3]) / k[:, 0:1] * z, (v - k[:, 3:4]) / k[:, 1:2] * z, z), dim=1)


def depth_discontinuities(depth: Tensor, max_log_step: float) -> Tensor:
    """bool [B, H, W]: |d log Z| per pixel (central differences) above ``max_log_step`` on either axis.

    The outermost rows/columns use one-sided neighbours (replicate padding).
    """
    log_z = depth.clamp_min(MIN_DEPTH).log()[:, 0]
    padded = F.pad(log_z[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]).abs() / 2
    dy = (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]).abs() / 2
    return (dx > max_log_step) | (dy > max_log_step)


def depth_to_normals(depth: Tensor, intrinsics: Tensor) -> Tensor:
    """Unit normals [B, 3, H, W] implied by a depth map, facing the camera; zero on the border."""
    p = backproject(depth.double(), intrinsics.double())
    pu = torch.zeros_like(p)
    pv = torch.zeros_like(p)
    pu[..., 1:-1, 1:-1] = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    pv[..., 1:-1, 1:-1] = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    n = torch.linalg.cross(pv, pu, dim=1)
    n = torch.where((n * p).sum(dim=1, keepdim=True) > 0, -n, n)  # face the camera
    return F.normalize(n, dim=1, eps=1e-12)


class DepthNormalsCoherence(Metric):
    """(a) Angle between predicted normals and the normals of the predicted depth (module docs).

    ``compute()`` keys: ``depth_normals_mean`` (degrees), ``depth_normals_rmse``,
    ``depth_normals_a11`` / ``a22`` / ``a30`` (% of pixels under the threshold).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    n: Tensor
    sum_angle: Tensor
    sum_sq: Tensor
    n_under: Tensor

    def __init__(self, max_log_step: float = 0.04, **kwargs) -> None:
        super().__init__(**kwargs)
        if not max_log_step > 0:
            raise ValueError(f"max_log_step must be > 0, got {max_log_step}")
        self.max_log_step = float(max_log_step)
        self.add_state("n", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sum_angle", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_under", torch.zeros(len(THRESHOLDS_DEG), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, depth: Tensor, normals: Tensor, intrinsics: Tensor, image_size: Tensor | None = None) -> None:
        """``depth`` [B, 1, H, W] metres, ``normals`` [B, 3, H, W], ``intrinsics`` [B, 4] of this grid,
        ``image_size`` [B, 2]: the (h, w) region holding the image (None: all of it)."""
        if depth.dim() != 4 or depth.shape[1] != 1 or normals.dim() != 4 or normals.shape[1] != 3:
            raise ValueError(f"expected depth [B,1,H,W] and normals [B,3,H,W]; got {tuple(depth.shape)}, "
                             f"{tuple(normals.shape)}")
        if normals.shape[-2:] != depth.shape[-2:]:
            normals = F.interpolate(normals.float(), size=depth.shape[-2:], mode="bilinear", align_corners=False)
        depth = depth.detach().float()
        b, _, h, w = depth.shape
        ok = region_mask((b, h, w), image_size, depth.device) & (depth[:, 0] > MIN_DEPTH)
        ok = _interior(ok) & ~depth_discontinuities(depth, self.max_log_step)
        derived = depth_to_normals(depth, intrinsics)
        pred = F.normalize(normals.detach().double(), dim=1, eps=1e-12)
        cos = (pred * derived).sum(dim=1)[ok].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        self.n += ok.sum()
        self.sum_angle += angle.sum()
        self.sum_sq += (angle**2).sum()
        for i, t in enumerate(THRESHOLDS_DEG):
            self.n_under[i] += (angle < t).sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.n.double()
        under = self.n_under.double() / n * 100.0
        return {
            "depth_normals_mean": self.sum_angle / n,
            "depth_normals_rmse": (self.sum_sq / n).sqrt(),
            "depth_normals_a11": under[0],
            "depth_normals_a22": under[1],
            "depth_normals_a30": under[2],
        }


def semantic_boundaries(labels: Tensor) -> Tensor:
    """bool [B, H, W]: the class differs from at least one 4-neighbour (both sides marked)."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    dx = labels[:, :, 1:] != labels[:, :, :-1]
    dy = labels[:, 1:, :] != labels[:, :-1, :]
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    return edge


def _near(mask: Tensor, radius: int) -> Tensor:
    """Pixels within ``radius`` (Chebyshev) of a True pixel of ``mask``."""
    if radius == 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


class SemsegDepthCoherence(Metric):
    """(b) Agreement of predicted semantic boundaries with predicted depth discontinuities.

    ``compute()`` keys (in %): ``semseg_depth_precision``, ``semseg_depth_recall``,
    ``semseg_depth_f`` (module docs for the definitions).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    n_sem: Tensor
    n_sem_matched: Tensor
    n_depth: Tensor
    n_depth_matched: Tensor

    def __init__(self, tolerance: int = 2, max_log_step: float = 0.04, **kwargs) -> None:
        super().__init__(**kwargs)
        if tolerance < 0 or not max_log_step > 0:
            raise ValueError(f"tolerance must be >= 0 and max_log_step > 0; got {tolerance}, {max_log_step}")
        self.tolerance = int(tolerance)
        self.max_log_step = float(max_log_step)
        for name in ("n_sem", "n_sem_matched", "n_depth", "n_depth_matched"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, semseg: Tensor, depth: Tensor, image_size: Tensor | None = None) -> None:
        """``semseg`` logits [B, C, H, W], ``depth`` [B, 1, H, W], ``image_size`` [B, 2] or None."""
        if semseg.shape[-2:] != depth.shape[-2:]:
            semseg = F.interpolate(semseg.float(), size=depth.shape[-2:], mode="bilinear", align_corners=False)
        depth = depth.detach().float()
        b, _, h, w = depth.shape
        inside = region_mask((b, h, w), image_size, depth.device)
        # judge only pixels whose neighbours are all inside the image (no edge against the padding)
        ok = _interior(inside)
        sem = semantic_boundaries(semseg.detach().argmax(dim=1)) & ok
        geo = depth_discontinuities(depth, self.max_log_step) & ok
        self.n_sem += sem.sum()
        self.n_sem_matched += (sem & _near(geo, self.tolerance)).sum()
        self.n_depth += geo.sum()
        self.n_depth_matched += (geo & _near(sem, self.tolerance)).sum()

    def compute(self) -> dict[str, Tensor]:
        precision = self.n_sem_matched.double() / self.n_sem.double() * 100.0
        recall = self.n_depth_matched.double() / self.n_depth.double() * 100.0
        total = precision + recall  # NaN if either is undefined (no boundary of that kind at all)
        f = torch.where(total > 0, 2 * precision * recall / total, total * 0.0)
        return {"semseg_depth_precision": precision, "semseg_depth_recall": recall, "semseg_depth_f": f}


@dataclass(frozen=True)
class CoherencePair:
    """A coherence metric for the tasks ``tasks``: how to build it and how to feed it one batch.

    ``update(metric, outputs, meta)`` takes the network's final outputs by task on the
    input grid and the batch ``meta``; it may skip a batch lacking what it needs.
    """

    name: str
    tasks: tuple[str, ...]
    make: Callable[[], Metric]
    update: Callable[[Metric, Mapping[str, Tensor], Mapping[str, Any]], None]


def _update_depth_normals(metric: Metric, outputs: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    if "intrinsics" in meta:  # on the input grid, where the intrinsics hold
        metric.update(outputs["depth"], outputs["normals"], meta["intrinsics"], meta.get("input_size"))


def _update_semseg_depth(metric: Metric, outputs: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    metric.update(outputs["semseg"], outputs["depth"], meta.get("input_size"))


COHERENCE_PAIRS: list[CoherencePair] = [
    CoherencePair("depth_normals", ("depth", "normals"), DepthNormalsCoherence, _update_depth_normals),
    CoherencePair("semseg_depth", ("semseg", "depth"), SemsegDepthCoherence, _update_semseg_depth),
]


def coherence_pairs(task_names: Sequence[str]) -> list[CoherencePair]:
    """The registered pairs whose tasks are all among ``task_names``."""
    return [p for p in COHERENCE_PAIRS if set(p.tasks) <= set(task_names)]
