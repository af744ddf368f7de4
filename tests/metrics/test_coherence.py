"""Cross-task coherence metrics: exact on planes, the expected angle when perturbed, boundaries aligned."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtcp.metrics.coherence import (
    DepthNormalsCoherence,
    SemsegDepthCoherence,
    backproject,
    depth_to_normals,
)

K = (60.0, 62.0, 33.0, 23.5)  # fx, fy, cx, cy for a 48 x 64 grid
SIZE = (48, 64)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def plane(normal, offset=-3.0) -> torch.Tensor:
    """float64 [1, 1, H, W] depth of the plane ``n . X = offset`` at pixel centres (j + 0.5, i + 0.5)."""
    fx, fy, cx, cy = K
    v, u = np.meshgrid(np.arange(SIZE[0]) + 0.5, np.arange(SIZE[1]) + 0.5, indexing="ij")
    ray = np.stack(((u - cx) / fx, (v - cy) / fy, np.ones_like(u)), axis=-1)
    return torch.from_numpy(offset / (ray @ unit(normal)))[None, None]


def constant_normals(n) -> torch.Tensor:
    return torch.tensor(unit(n)).view(1, 3, 1, 1).expand(1, 3, *SIZE).clone()


def tilt(n, degrees: float) -> np.ndarray:
    """``n`` rotated by ``degrees`` about an axis perpendicular to it (Rodrigues)."""
    n = unit(n)
    axis = unit(np.cross(n, [1.0, 0.0, 0.0]))
    a = math.radians(degrees)
    return n * math.cos(a) + np.cross(axis, n) * math.sin(a) + axis * (axis @ n) * (1 - math.cos(a))


@pytest.mark.parametrize("normal", [(0, 0, -1), (0.3, -0.2, -1), (-0.4, 0.3, -0.8)])
def test_a_planar_depth_map_and_its_exact_normals_agree(normal):
    depth = plane(normal)
    intrinsics = torch.tensor([K])
    derived = depth_to_normals(depth, intrinsics)
    inner = derived[0, :, 1:-1, 1:-1].reshape(3, -1).T.numpy()
    np.testing.assert_allclose(inner, np.broadcast_to(unit(normal), inner.shape), atol=1e-9)
    metric = DepthNormalsCoherence()
    metric.update(depth.float(), constant_normals(normal).float(), intrinsics)
    values = metric.compute()
    assert values["depth_normals_mean"].item() < 0.02  # float32 depth; exact in float64 above
    assert values["depth_normals_a11"].item() == 100.0
    assert metric.n.item() == (SIZE[0] - 2) * (SIZE[1] - 2)  # every interior pixel counts


@pytest.mark.parametrize("degrees", [5.0, 20.0, 45.0])
def test_perturbed_normals_give_the_expected_angle(degrees):
    normal = (0.2, -0.1, -1.0)
    metric = DepthNormalsCoherence()
    tilted = tilt(normal, degrees)
    metric.update(plane(normal).float(), constant_normals(tilted).float(), torch.tensor([K]))
    values = metric.compute()
    assert values["depth_normals_mean"].item() == pytest.approx(degrees, abs=0.02)
    assert values["depth_normals_rmse"].item() == pytest.approx(degrees, abs=0.02)


def test_backprojection_follows_the_pixel_centre_convention():
    depth = torch.full((1, 1, 2, 2), 2.0)
    points = backproject(depth, torch.tensor([[1.0, 2.0, 1.0, 1.0]]))
    # pixel (0, 0) has its centre at (0.5, 0.5): x = (0.5 - 1) / 1 * 2, y = (0.5 - 1) / 2 * 2
    assert points[0, :, 0, 0].tolist() == [-1.0, -0.5, 2.0]


def test_depth_steps_and_padding_are_excluded():
    near, far = plane((0, 0, -1), -2.0), plane((0.4, 0, -1), -4.0)
    depth = torch.where(torch.arange(SIZE[1]) < 30, near, far)
    normals = torch.where(torch.arange(SIZE[1]) < 30, constant_normals((0, 0, -1)), constant_normals((0.4, 0, -1)))
    depth[..., 40:, :] = 0.05  # garbage in the padded rows ...
    normals[..., 40:, :] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # ... and a wrong normal there
    metric = DepthNormalsCoherence()
    metric.update(depth.float(), normals.float(), torch.tensor([K]), image_size=torch.tensor([[40, 64]]))
    assert metric.compute()["depth_normals_mean"].item() < 0.02  # the step and the padding never count
    assert 0 < metric.n.item() < 38 * 62


def test_semantic_boundaries_on_depth_steps_score_100_and_shifted_ones_0():
    depth = torch.where(torch.arange(SIZE[1]) < 30, torch.tensor(2.0), torch.tensor(3.0)).expand(1, 1, *SIZE)
    def logits(column: int) -> torch.Tensor:
        cls = (torch.arange(SIZE[1]) >= column).long().expand(1, *SIZE)
        return torch.nn.functional.one_hot(cls, 3).permute(0, 3, 1, 2).float()

    aligned = SemsegDepthCoherence(tolerance=1)
    aligned.update(logits(30), depth)
    assert {k: v.item() for k, v in aligned.compute().items()} == {
        "semseg_depth_precision": 100.0, "semseg_depth_recall": 100.0, "semseg_depth_f": 100.0}
    shifted = SemsegDepthCoherence(tolerance=2)
    shifted.update(logits(37), depth)
    assert shifted.compute()["semseg_depth_f"].item() == 0.0
    tolerant = SemsegDepthCoherence(tolerance=7)
    tolerant.update(logits(37), depth)
    assert tolerant.compute()["semseg_depth_f"].item() == 100.0
    # a tilted plane is no discontinuity: no depth edges, so a class change there is unmatched
    tilted = SemsegDepthCoherence(tolerance=1)
    tilted.update(logits(30), plane((0.5, 0, -1)).float())
    values = tilted.compute()
    assert tilted.n_depth.item() == 0 and values["semseg_depth_precision"].item() == 0.0


def test_states_split_over_batches_sum_to_the_whole():
    torch.manual_seed(0)
    depth = torch.rand(4, 1, 16, 20) + 1.0
    normals = torch.nn.functional.normalize(torch.randn(4, 3, 16, 20), dim=1)
    semseg = torch.randn(4, 5, 16, 20)
    k = torch.tensor([K] * 4)
    whole_a, whole_b = DepthNormalsCoherence(), SemsegDepthCoherence()
    whole_a.update(depth, normals, k)
    whole_b.update(semseg, depth)
    part_a, part_b = DepthNormalsCoherence(), SemsegDepthCoherence()
    for s in (slice(0, 1), slice(1, 4)):
        part_a.update(depth[s], normals[s], k[s])
        part_b.update(semseg[s], depth[s])
    for whole, part in ((whole_a, part_a), (whole_b, part_b)):
        for key, value in whole.compute().items():
            assert part.compute()[key].item() == pytest.approx(value.item(), rel=1e-12), key
