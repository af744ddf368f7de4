"""BoundaryFMeasure: the BSDS/SEISM boundary F-measure with a distance tolerance.

Hand-made edge maps where the tolerance, the thinning, the ignore label or the
ODS/OIS pooling decides the result. Predictions are hard logits (+-10, so every
threshold in (0.01, 0.99) sees the same map) unless a test needs graded scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from mtcp.metrics.boundary import BoundaryFMeasure, match_boundaries, thin
from mtcp.metrics.edge import EdgeMetrics

H, W = 30, 40  # diagonal 50 px: max_dist 0.02 is a 1.0 px tolerance, 0.03 is 1.5 px


def logits(mask: np.ndarray) -> torch.Tensor:
    """[1, 1, H, W] logits: +10 on ``mask``, -10 elsewhere."""
    return torch.from_numpy(np.where(mask, 10.0, -10.0)).float()[None, None]


def label_of(gt: np.ndarray, ignore: np.ndarray | None = None) -> torch.Tensor:
    lab = gt.astype(np.int64)
    if ignore is not None:
        lab[ignore] = 255
    return torch.from_numpy(lab)[None]


def vline(col: int, rows: slice = slice(None), shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows, col] = True
    return m


def scores(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, **kwargs) -> dict[str, float]:
    metric = BoundaryFMeasure(thresholds=kwargs.pop("thresholds", 5), **kwargs)
    metric.update(logits(pred), label_of(gt, ignore))
    return {k: float(v) for k, v in metric.compute().items()}


# --- thinning -----------------------------------------------------------------------------


def test_thin_matches_the_reference_example():
    # the example of skimage.morphology.thin's docstring (same algorithm as MATLAB's bwmorph thin)
    square = np.zeros((7, 7), dtype=bool)
    square[1:-1, 2:-2] = True
    square[0, 1] = True
    expected = np.zeros((7, 7), dtype=bool)
    expected[0, 1] = expected[1, 2] = True
    expected[2:5, 3] = True
    np.testing.assert_array_equal(thin(square), expected)


def test_thin_keeps_one_pixel_curves_and_thins_a_thick_bar():
    line = vline(10) | (np.eye(H, W, k=5, dtype=bool) & ~vline(10, shape=(H, W)))
    np.testing.assert_array_equal(thin(vline(10)), vline(10))
    assert thin(np.eye(H, W, k=5, dtype=bool)).sum() == H  # a diagonal is already thin
    assert thin(line).sum() <= line.sum()
    bar = vline(10) | vline(11)
    thinned = thin(bar)
    assert thinned.any(axis=0).sum() == 1, "a 2-px bar must become one column"
    assert not thin(np.zeros((H, W), dtype=bool)).any()


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_a_maximum_matching(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((12, 12)) < 0.25
    gt = rng.random((12, 12)) < 0.2
    radius = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0][seed]
    p, g = np.argwhere(pred), np.argwhere(gt)
    dist = np.hypot(*(p[:, None, :] - g[None, :, :]).transpose(2, 0, 1))
    allowed = dist <= radius
    rows, cols = linear_sum_assignment(-allowed.astype(float))
    expected = int(allowed[rows, cols].sum())
    assert match_boundaries(pred, gt, radius) == (expected, expected)


# --- the metric on hand-made maps ------------------------------------------------------


def test_one_pixel_shift_is_matched_only_with_a_tolerance():
    gt, pred = vline(10), vline(11)
    exact = EdgeMetrics(num_thresholds=5)
    exact.update(logits(pred), label_of(gt))
    assert float(exact.compute()["odsf"]) == 0.0  # pixel-exact score: no hit
    assert scores(pred, gt, max_dist=0.0) == {"odsf": 0.0, "oisf": 0.0}
    # 0.02 * 50 = 1.0 px: the shifted line is at distance exactly 1 -> every pixel matched
    assert scores(pred, gt, max_dist=0.02) == pytest.approx({"odsf": 100.0, "oisf": 100.0})


def test_shift_beyond_the_tolerance_is_not_matched():
    gt = vline(10)
    assert scores(vline(12), gt, max_dist=0.02) == {"odsf": 0.0, "oisf": 0.0}  # 2 px > 1 px
    assert scores(vline(12), gt, max_dist=0.04) == pytest.approx({"odsf": 100.0, "oisf": 100.0})  # 2 px
    # isolated pixels shifted by (1, 1) are sqrt(2) = 1.41 px away: Euclidean, not chessboard
    dots, shifted = np.zeros((H, W), dtype=bool), np.zeros((H, W), dtype=bool)
    for k in (5, 15, 25):
        dots[k, k] = shifted[k + 1, k + 1] = True
    assert scores(shifted, dots, max_dist=0.02)["odsf"] == 0.0
    assert scores(shifted, dots, max_dist=0.03)["odsf"] == pytest.approx(100.0)  # 1.5 px


def test_thick_prediction_thinning_decides_precision():
    # GT: column 10, rows 1..29 (29 px). Prediction: a 2-px bar, columns 10-11, rows 0..29 (60 px).
    gt = vline(10, slice(1, None))
    bar = vline(10) | vline(11)
    # thinned, the bar becomes column 10 rows 1..29 (its top row goes, as bwmorph does): P = R = 1
    np.testing.assert_array_equal(thin(bar), gt)
    assert scores(bar, gt, max_dist=0.02) == pytest.approx({"odsf": 100.0, "oisf": 100.0})
    # not thinned: all 29 GT pixels matched one-to-one, 29 of 60 predicted pixels matched:
    # P = 29/60, R = 1, F = 2 * P / (P + 1) = 58 / 89
    metric = BoundaryFMeasure(max_dist=0.02, thresholds=5, thin=False)
    metric.update(logits(bar), label_of(gt))
    curves = metric.curves()
    assert curves["precision"].numpy() == pytest.approx(np.full(5, 29 / 60))
    assert curves["recall"].numpy() == pytest.approx(np.ones(5))
    assert float(metric.compute()["odsf"]) == pytest.approx(100 * 58 / 89)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_empty_prediction_and_no_image():
    assert scores(np.zeros((H, W), dtype=bool), vline(10), max_dist=0.02) == {"odsf": 0.0, "oisf": 0.0}
    out = BoundaryFMeasure().compute()
    assert math.isnan(float(out["odsf"])) and math.isnan(float(out["oisf"]))


def test_ignored_pixels_are_removed_from_both_sides():
    gt = vline(10)
    pred = vline(10) | vline(30)  # a spurious line at column 30
    # counted: P = 1/2, R = 1, F = 2/3
    assert scores(pred, gt, max_dist=0.02)["odsf"] == pytest.approx(100 * 2 / 3)
    # column 30 ignored: the spurious line is dropped, P = R = 1
    assert scores(pred, gt, ignore=vline(30), max_dist=0.02)["odsf"] == pytest.approx(100.0)
    # an ignored GT pixel is no GT: half the line ignored, the prediction there dropped too
    half = vline(10, slice(0, 15))
    assert scores(vline(10), gt, ignore=half, max_dist=0.02)["odsf"] == pytest.approx(100.0)
    assert scores(vline(10, slice(15, None)), gt, ignore=half, max_dist=0.02)["odsf"] == pytest.approx(100.0)


def test_padding_with_ignore_does_not_change_the_diagonal():
    # a 30x40 image padded with 255 to 60x80 (as mtcp.data.collate does): the tolerance stays
    # 0.02 * 50 = 1 px, not 0.02 * 100 = 2 px, so a 2-px shift is still unmatched
    gt, pred = np.zeros((60, 80), dtype=bool), np.zeros((60, 80), dtype=bool)
    gt[:H, 10] = True
    pred[:H, 12] = True
    pad = np.ones((60, 80), dtype=bool)
    pad[:H, :W] = False
    assert scores(pred, gt, ignore=pad, max_dist=0.02)["odsf"] == 0.0
    metric = BoundaryFMeasure(max_dist=0.02, thresholds=5)
    metric.update(logits(pred), label_of(gt, pad), sizes=[(H, W)])
    assert float(metric.compute()["odsf"]) == 0.0
    pred[:H, 12], pred[:H, 11] = False, True
    assert scores(pred, gt, ignore=pad, max_dist=0.02)["odsf"] == pytest.approx(100.0)


def test_ods_and_ois_pool_counts_differently():
    """Two images with different best thresholds; tolerance 0, no thinning, thresholds 0.25/0.5/0.75.

    Image A: GT = 10 px (col 5, rows 0..9) scored 0.9; 10 false pixels (col 30) scored 0.6.
      t = 0.25, 0.5: cntP 10, sumP 20, cntR 10, sumR 10 -> P 1/2, R 1, F 2/3
      t = 0.75:      cntP 10, sumP 10, cntR 10, sumR 10 -> F 1        (A's best)
    Image B: GT = 30 px (col 5, rows 0..29); only rows 0..9 predicted, scored 0.6.
      t = 0.25, 0.5: cntP 10, sumP 10, cntR 10, sumR 30 -> P 1, R 1/3, F 1/2 (B's best, the first)
      t = 0.75:      nothing predicted -> F 0
    ODS, counts pooled per threshold:
      t = 0.25, 0.5: cntP 20, sumP 30, cntR 20, sumR 40 -> P 2/3, R 1/2, F = (2/3) / (7/6) = 4/7
      t = 0.75:      cntP 10, sumP 10, cntR 10, sumR 40 -> P 1, R 1/4, F 2/5
      odsF = 4/7 = 57.14
    OIS, each image's counts at its best threshold, summed:
      A@0.75 (10, 10, 10, 10) + B@0.25 (10, 10, 10, 30) -> P 1, R 1/2, oisF = 2/3 = 66.67
      (the mean of per-image best F's would be 75, which BSDS does not do)
    """
    score = np.full((2, H, W), -10.0)
    gt = np.zeros((2, H, W), dtype=np.int64)
    gt[0, 0:10, 5] = 1
    score[0, 0:10, 5] = math.log(0.9 / 0.1)
    score[0, 0:10, 30] = math.log(0.6 / 0.4)
    gt[1, 0:30, 5] = 1
    score[1, 0:10, 5] = math.log(0.6 / 0.4)
    output = torch.from_numpy(score).float()[:, None]
    label = torch.from_numpy(gt)

    metric = BoundaryFMeasure(max_dist=0.0, thresholds=3, thin=False)
    metric.update(output, label)
    out = metric.compute()
    assert float(out["odsf"]) == pytest.approx(100 * 4 / 7)
    assert float(out["oisf"]) == pytest.approx(100 * 2 / 3)

    # one image per update (or per process, with sum-reduced states) gives the same numbers
    split = BoundaryFMeasure(max_dist=0.0, thresholds=3, thin=False)
    split.update(output[1:], label[1:])
    split.update(output[:1], label[:1])
    assert {k: float(v) for k, v in split.compute().items()} == pytest.approx({k: float(v) for k, v in out.items()})


def test_interpolated_ods_like_bsds_maxf():
    # two thresholds with (P, R) = (0, 1) and (1, 0): F = 0 at both; BSDS's maxF interpolates
    # P/R linearly in 100 steps, best at d = 50/99: 2 * (50/99) * (49/99) = 4900/9801
    def odsf(interpolate: bool) -> float:
        metric = BoundaryFMeasure(thresholds=2, interpolate=interpolate)
        metric.cnt_p += torch.tensor([0, 10])
        metric.sum_p += torch.tensor([10, 10])
        metric.cnt_r += torch.tensor([10, 0])
        metric.sum_r += torch.tensor([10, 10])
        metric.n_images += 1
        metric._update_count = 1  # states were set by hand
        return float(metric.compute()["odsf"])

    assert odsf(True) == pytest.approx(100 * 4900 / 9801)
    assert odsf(False) == 0.0


def test_input_checks():
    with pytest.raises(ValueError, match="one logit channel"):
        BoundaryFMeasure().update(torch.zeros(1, 2, H, W), torch.zeros(1, H, W, dtype=torch.int64))
    with pytest.raises(ValueError, match="thresholds"):
        BoundaryFMeasure(thresholds=0)


# --- wiring -------------------------------------------------------------------------------

def test_the_edge_task_scores_with_the_boundary_protocol_when_asked():
    """``model.metric_options: {edge: {protocol: boundary, max_dist: ...}}``: the same one-pixel shift as above
    scores 100 instead of the pixel-exact 0, under the edge task's headline key."""
    from mtcp.module import MultiTaskModule
    from mtcp.tasks import get_task

    gt, pred = vline(10), vline(11)
    pixel = get_task("edge").make_metric(1)
    boundary = get_task("edge").make_metric(1, protocol="boundary", max_dist=0.02, thresholds=5)
    assert isinstance(pixel, EdgeMetrics) and isinstance(boundary, BoundaryFMeasure)
    for metric in (pixel, boundary):
        metric.update(logits(pred), label_of(gt))
    assert float(pixel.compute()["odsf"]) == 0.0
    assert float(boundary.compute()["odsf"]) == pytest.approx(100.0)
    module = MultiTaskModule({"edge": 1, "sal": 1},
                             metric_options={"edge": {"protocol": "boundary", "max_dist": 0.0075}})
    assert isinstance(module.metrics["test"]["edge"], BoundaryFMeasure)
    assert module.metrics["test"]["edge"].max_dist == 0.0075
    with pytest.raises(ValueError, match=r"metric_options.edge.protocol: 'bsds'; choose 'pixel' or 'boundary'"):
        get_task("edge").make_metric(1, protocol="bsds")
