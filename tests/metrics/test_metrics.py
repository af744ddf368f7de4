"""Metrics against values worked out by hand, and DDP (2 gloo ranks) equal to one process."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mtcp.metrics import DepthMetrics, EdgeMetrics, NormalsMetrics, SaliencyMetrics, SegmentationMetrics

IGN = 255


def seg_logits(pred: list[list[int]], num_classes: int) -> torch.Tensor:
    """Logits [1, C, H, W] whose argmax is ``pred``."""
    return F.one_hot(torch.tensor(pred), num_classes).permute(2, 0, 1)[None].float() * 5.0


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def prob_map(probs: list[list[float]]) -> torch.Tensor:
    """Logits [1, 1, H, W] whose sigmoid is ``probs``."""
    return torch.tensor([[[logit(p) for p in row] for row in probs]])[None]


def lab(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)[None]


def close(value: torch.Tensor, expected: float, tol: float = 1e-6) -> bool:
    return abs(float(value) - expected) <= tol


# ----------------------------------------------------------------------------- segmentation


def test_segmentation_pooled_ignore_and_absent_class() -> None:
    m = SegmentationMetrics(num_classes=3)
    # batch 1: valid (label, pred) pairs: (0,0) (0,1) (1,1) (1,1) (0,0); the 255 pixel is skipped
    m.update(seg_logits([[0, 1, 1], [1, 2, 0]], 3), lab([[0, 0, 1], [1, IGN, 0]]))
    # batch 2: (1,1) (1,0) (1,1) (0,0); two ignored pixels
    m.update(seg_logits([[1, 0, 1], [0, 2, 2]], 3), lab([[1, 1, 1], [0, IGN, IGN]]))
    # pooled confusion (rows label): label0 -> pred0 3, pred1 1; label1 -> pred0 1, pred1 4; class 2 nowhere
    # IoU0 = 3 / (4 + 4 - 3) = 3/5; IoU1 = 4 / (5 + 5 - 4) = 4/6; class 2 union 0 -> excluded
    # mIoU = (0.6 + 0.666667) / 2 = 63.3333 %   (scoring class 2 as 0 would give 42.22; the mean of
    # per-batch mIoUs would be (66.667 + 58.333) / 2 = 62.5)
    out = m.compute()
    assert set(out) == {"miou", "pixel_acc"}
    assert close(out["miou"], (3 / 5 + 4 / 6) / 2 * 100)
    assert close(out["pixel_acc"], 7 / 9 * 100)  # 7 correct of 9 valid
    iou = m.iou_per_class()
    assert close(iou[0], 60.0) and close(iou[1], 400 / 6) and torch.isnan(iou[2])


def test_segmentation_resizes_constant_prediction() -> None:
    m = SegmentationMetrics(num_classes=3)
    # a 1x1 prediction of class 1 upsampled to 2x3 predicts class 1 everywhere
    m.update(seg_logits([[1]], 3), lab([[1, 1, 0], [IGN, 1, 1]]))
    # label1 -> pred1: 4, label0 -> pred1: 1. IoU0 = 0 / (1 + 0) = 0; IoU1 = 4 / (4 + 5 - 4) = 0.8
    out = m.compute()
    assert close(out["miou"], 40.0)  # (0 + 80) / 2, class 2 excluded
    assert close(out["pixel_acc"], 80.0)  # 4 / 5


def test_segmentation_resizes_bilinearly_on_logits() -> None:
    m = SegmentationMetrics(num_classes=2)
    # width 2 -> 4 with align_corners=False samples source x = -0.25, 0.25, 0.75, 1.25 (clamped to 0 / 1):
    # class-0 logits [1, -1] become [1, 0.5, -0.5, -1], class 1 the opposite -> argmax [0, 0, 1, 1]
    logits = torch.tensor([[[[1.0, -1.0]], [[-1.0, 1.0]]]])
    m.update(logits, lab([[0, 1, 1, 1]]))
    # pairs (0,0) (1,0) (1,1) (1,1): IoU0 = 1 / (1 + 2 - 1) = 1/2, IoU1 = 2 / (3 + 2 - 2) = 2/3
    out = m.compute()
    assert close(out["miou"], (1 / 2 + 2 / 3) / 2 * 100)
    assert close(out["pixel_acc"], 75.0)


@pytest.mark.parametrize("bad", [7, -1])
def test_segmentation_out_of_range_label_raises(bad: int) -> None:
    m = SegmentationMetrics(num_classes=3)
    with pytest.raises(ValueError, match=rf"{bad}.*0\.\.2"):
        m.update(seg_logits([[0, 1]], 3), lab([[0, bad]]))


# ----------------------------------------------------------------------------- depth


def depth(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)[None, None]


def test_depth_values_and_invalid_pixels() -> None:
    m = DepthMetrics()
    # valid (g, p): (1, 2) (2, 2) (4, 3) (2, 1); label 0 is invalid whatever is predicted
    m.update(depth([[2, 2, 5], [3, 1, 1]]), depth([[1, 2, 0], [4, 0, 2]]))
    out = m.compute()
    assert set(out) == {"rmse", "log_rmse", "abs_rel", "delta1"}
    assert close(out["rmse"], math.sqrt(3 / 4))  # squared errors 1 + 0 + 1 + 1 = 3 over 4 pixels
    # log errors ln2, 0, ln(3/4), -ln2
    assert close(out["log_rmse"], math.sqrt((2 * math.log(2) ** 2 + math.log(4 / 3) ** 2) / 4))
    assert close(out["abs_rel"], (1 / 1 + 0 / 2 + 1 / 4 + 1 / 2) / 4)  # = 0.4375
    assert close(out["delta1"], 25.0)  # ratios 2, 1, 4/3, 2: only one < 1.25


def test_depth_pooled_over_updates() -> None:
    m = DepthMetrics()
    m.update(depth([[2, 2, 5], [3, 1, 1]]), depth([[1, 2, 0], [4, 0, 2]]))  # 4 pixels, sum sq 3, sum rel 1.75
    m.update(depth([[9, 5]]), depth([[0, 2]]))  # one valid pixel: err 3 -> sq 9, rel 1.5, ratio 2.5
    out = m.compute()
    assert close(out["rmse"], math.sqrt((3 + 9) / 5))  # 1.5492, not the mean of per-batch 0.866 and 3
    assert close(out["abs_rel"], (1.75 + 1.5) / 5)
    assert close(out["delta1"], 20.0)  # 1 of 5


def test_depth_resize_and_clamp() -> None:
    m = DepthMetrics()
    # [1, 3] upsampled to width 4 -> [1, 1.5, 2.5, 3]; label [1, 2, 0, 3] -> errors 0, 0.5, (invalid), 0
    m.update(depth([[1.0, 3.0]]), depth([[1.0, 2.0, 0.0, 3.0]]))
    assert close(m.compute()["rmse"], math.sqrt(0.25 / 3))
    m2 = DepthMetrics()
    m2.update(depth([[0.0]]), depth([[1.0]]))  # prediction 0 is clamped to 1e-3 for the log and ratio
    out = m2.compute()
    assert close(out["log_rmse"], math.log(1000.0))  # |ln(1e-3) - ln 1|
    assert close(out["rmse"], 1.0) and close(out["abs_rel"], 1.0) and close(out["delta1"], 0.0)


# ----------------------------------------------------------------------------- normals


def unit_at(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg)), 0.0]


def normals(pixels: list[list[float]], h: int, w: int) -> torch.Tensor:
    """[1, 3, h, w] from a row-major list of h*w vectors."""
    return torch.tensor(pixels).T.reshape(3, h, w)[None]


def test_normals_values() -> None:
    m = NormalsMetrics()
    pred = [
        [1, 0, 0],  # vs (1,0,0): 0 deg
        [0, 1, 0],  # vs (1,0,0): 90 deg
        [2 * c for c in unit_at(15)],  # not unit length: re-normalised, 15 deg
        unit_at(25),  # 25 deg
        [0, 0, -1],  # vs (0,0,1): 180 deg
        [0, 1, 0],  # label zero vector: invalid
    ]
    label = [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]]
    m.update(normals(pred, 2, 3), normals(label, 2, 3))
    out = m.compute()
    assert set(out) == {"mean", "median", "rmse", "a11", "a22", "a30"}
    # angles 0, 90, 15, 25, 180
    assert close(out["mean"], (0 + 90 + 15 + 25 + 180) / 5, 1e-4)  # 62
    assert close(out["rmse"], math.sqrt((0 + 8100 + 225 + 625 + 32400) / 5), 1e-4)  # sqrt(8270)
    assert abs(float(out["median"]) - 25.0) <= 0.005 + 1e-9  # histogram precision: half a 0.01 deg bin
    assert close(out["a11"], 20.0)  # {0}
    assert close(out["a22"], 40.0)  # {0, 15}
    assert close(out["a30"], 60.0)  # {0, 15, 25}


def test_normals_pooled_even_median() -> None:
    m = NormalsMetrics()
    pred = [[1, 0, 0], [0, 1, 0], unit_at(15), unit_at(25), [0, 0, -1], [0, 1, 0]]
    label = [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]]
    m.update(normals(pred, 2, 3), normals(label, 2, 3))
    m.update(normals([[0, 0, 1]], 1, 1), normals([[0, 1, 0]], 1, 1))  # one more angle: 90
    out = m.compute()
    # angles sorted 0 15 25 90 90 180: median (25 + 90) / 2 = 57.5, mean 400 / 6
    assert abs(float(out["median"]) - 57.5) <= 0.005 + 1e-9
    assert close(out["mean"], 400 / 6, 1e-4)
    assert close(out["a30"], 50.0)  # 3 of 6


def test_normals_resize_constant_prediction() -> None:
    m = NormalsMetrics()
    # 1x1 prediction (0, 0, 2) upsampled to 2x3 and re-normalised: (0, 0, 1) everywhere
    label = [[0, 0, 1]] * 4 + [[0, 1, 0], [0, 0, 0]]  # angles 0, 0, 0, 0, 90; last pixel invalid
    m.update(torch.tensor([0.0, 0.0, 2.0]).reshape(1, 3, 1, 1), normals(label, 2, 3))
    out = m.compute()
    assert close(out["mean"], 18.0, 1e-6)  # 90 / 5
    assert abs(float(out["median"]) - 0.0) <= 0.005 + 1e-9
    assert close(out["a11"], 80.0)


# ----------------------------------------------------------------------------- saliency
# Default convention = the ASTMT/MTI-Net reference: per image P = tp/(tp+fp+1e-12), R = tp/(tp+fn+1e-12),
# so an empty prediction has P 0 and an empty label R 0; IoU is 1 when both are empty, else tp/union.
# "one" = mtcp's former convention (empty prediction P 1, empty label R 1).

# thresholds 0.20, 0.25, ..., 0.90 (15). Probabilities below avoid every threshold.
SAL_A_PROB = [[0.97, 0.42, 0.62], [0.1, 0.97, 0.1]]
SAL_A_LAB = [[1, 1, 0], [0, IGN, 1]]
# image A valid (label, prob): (1,.97) (1,.42) (0,.62) (0,.1) (1,.1)
#   t in 0.20..0.40 (5 thr): predicted .97 .42 .62 -> tp 2 fp 1 fn 1: P 2/3, R 2/3, IoU 2/4
#   t in 0.45..0.60 (4 thr): predicted .97 .62     -> tp 1 fp 1 fn 2: P 1/2, R 1/3, IoU 1/4
#   t in 0.65..0.90 (6 thr): predicted .97         -> tp 1 fp 0 fn 2: P 1,   R 1/3, IoU 1/3
# image B: all background, nothing predicted at any threshold (empty label and prediction):
#   reference P 0, R 0, IoU 1;  "one" P 1, R 1, IoU 1
# image C: all ignored -> not counted
# means over A and B, reference: group 1 P 1/3 R 1/3 IoU 3/4; group 2 P 1/4 R 1/6 IoU 5/8;
#                                group 3 P 1/2 R 1/6 IoU 2/3
# means over A and B, "one":     group 1 P 5/6 R 5/6 IoU 3/4; group 2 P 3/4 R 2/3 IoU 5/8;
#                                group 3 P 1   R 2/3 IoU 2/3
SAL_B_PROB = [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]]
SAL_B_LAB = [[0, 0, 0], [0, 0, 0]]
SAL_C_LAB = [[IGN, IGN, IGN], [IGN, IGN, IGN]]

# 4-pixel images for the empty-case tests (one row each)
SAL_EMPTY_PROB, SAL_EMPTY_LAB = [[0.1, 0.1, 0.1, 0.1]], [[0, 0, 0, 0]]  # E: empty label and prediction
# E, every threshold: tp 0 fp 0 fn 0 -> reference P 0, R 0, IoU 1 ("one": P 1, R 1, IoU 1)
SAL_FADE_PROB, SAL_FADE_LAB = [[0.57, 0.1, 0.1, 0.1]], [[1, 1, 1, 0]]  # F: prediction empties for t >= 0.60
# F, t in 0.20..0.55 (8 thr): predicted .57 -> tp 1 fp 0 fn 2: P 1, R 1/3, IoU 1/3
# F, t in 0.60..0.90 (7 thr): nothing predicted -> tp 0 fp 0 fn 3: reference P 0, R 0, IoU 0/3 = 0
#                                                               ("one": P 1, R 0, IoU 0)
SAL_ORD_PROB, SAL_ORD_LAB = [[0.97, 0.57, 0.57, 0.57]], [[1, 0, 0, 0]]  # G: an ordinary image
# G, t in 0.20..0.55 (8 thr): all 4 predicted -> tp 1 fp 3 fn 0: P 1/4, R 1, IoU 1/4
# G, t in 0.60..0.90 (7 thr): predicted .97   -> tp 1 fp 0 fn 0: P 1,   R 1, IoU 1


def test_saliency_values_beta1() -> None:
    m = SaliencyMetrics()
    m.update(prob_map(SAL_A_PROB), lab(SAL_A_LAB))
    # second batch: B, and A's prediction over C's all-ignored label
    m.update(
        torch.cat([prob_map(SAL_B_PROB), prob_map(SAL_A_PROB)]),
        torch.cat([lab(SAL_B_LAB), lab(SAL_C_LAB)]),
    )
    out = m.compute()
    assert set(out) == {"maxf", "max_miou"}
    assert int(m.n_images) == 2  # C not counted
    # reference F1: group 1: 1/3 (P = R); group 2: 2*(1/4)(1/6)/(1/4+1/6) = (1/12)/(5/12) = 1/5;
    # group 3: 2*(1/2)(1/6)/(1/2+1/6) = (1/6)/(2/3) = 1/4  -> maxF 1/3 ("one" would give 5/6)
    assert close(out["maxf"], 100 / 3)
    assert close(out["max_miou"], 75.0)  # group 1


def test_saliency_beta_sq_03() -> None:
    m = SaliencyMetrics(beta_sq=0.3)
    m.update(
        torch.cat([prob_map(SAL_A_PROB), prob_map(SAL_B_PROB)]),
        torch.cat([lab(SAL_A_LAB), lab(SAL_B_LAB)]),
    )
    # reference, F_0.3 = 1.3 P R / (0.3 P + R): group 1 (P = R) 1/3 = 0.3333;
    # group 2 1.3*(1/24)/(0.3/4 + 1/6) = (1.3/24)/(29/120) = 13/58 = 0.2241;
    # group 3 1.3*(1/12)/(0.3/2 + 1/6) = (1.3/12)/(19/60) = 13/38 = 0.3421  -> maxF 13/38
    assert close(m.compute()["maxf"], 1300 / 38)


def test_saliency_empty_label_and_prediction_reference() -> None:
    m = SaliencyMetrics()
    m.update(prob_map(SAL_EMPTY_PROB), lab(SAL_EMPTY_LAB))
    c = m.curves()
    # E: P 0, R 0, IoU 1 at all 15 thresholds -> F 0 everywhere
    assert torch.equal(c["precision"], torch.zeros(15, dtype=torch.float64))
    assert torch.equal(c["recall"], torch.zeros(15, dtype=torch.float64))
    assert torch.equal(c["iou"], torch.ones(15, dtype=torch.float64))
    out = m.compute()
    assert close(out["maxf"], 0.0)  # "one" would give P = R = 1 -> 100
    assert close(out["max_miou"], 100.0)


def test_saliency_prediction_empties_at_high_thresholds_reference() -> None:
    m = SaliencyMetrics()
    m.update(prob_map(SAL_FADE_PROB), lab(SAL_FADE_LAB))
    c = m.curves()
    low, high = slice(0, 8), slice(8, 15)  # t 0.20..0.55 | t 0.60..0.90
    assert torch.allclose(c["precision"][low], torch.ones(8, dtype=torch.float64))
    assert torch.equal(c["precision"][high], torch.zeros(7, dtype=torch.float64))  # "one": 1
    assert torch.allclose(c["recall"][low], torch.full((8,), 1 / 3, dtype=torch.float64))
    assert torch.equal(c["recall"][high], torch.zeros(7, dtype=torch.float64))
    assert torch.equal(c["iou"][high], torch.zeros(7, dtype=torch.float64))
    # F1 low: 2*1*(1/3)/(1 + 1/3) = 1/2; high: 0
    out = m.compute()
    assert close(out["maxf"], 50.0)
    assert close(out["max_miou"], 100 / 3)


def test_saliency_batch_mixing_empty_cases_reference() -> None:
    m = SaliencyMetrics()
    m.update(
        torch.cat([prob_map(SAL_EMPTY_PROB), prob_map(SAL_FADE_PROB), prob_map(SAL_ORD_PROB)]),
        torch.cat([lab(SAL_EMPTY_LAB), lab(SAL_FADE_LAB), lab(SAL_ORD_LAB)]),
    )
    # means over E, F, G (reference):
    #   t 0.20..0.55: P (0 + 1 + 1/4)/3 = 5/12, R (0 + 1/3 + 1)/3 = 4/9, IoU (1 + 1/3 + 1/4)/3 = 19/36
    #     F1 = 2*(5/12)(4/9)/(5/12 + 4/9) = (10/27)/(31/36) = 40/93 = 0.4301
    #   t 0.60..0.90: P (0 + 0 + 1)/3 = 1/3, R (0 + 0 + 1)/3 = 1/3, IoU (1 + 0 + 1)/3 = 2/3, F1 = 1/3
    # maxF 40/93 = 43.01 % ("one" gives 80 %); the mean of per-image F would be
    # max((0 + 1/2 + 2/5)/3, (0 + 0 + 1)/3) = 1/3
    out = m.compute()
    assert close(out["maxf"], 4000 / 93)
    assert close(out["max_miou"], 200 / 3)
    # same images one at a time: per-image states, so the batching does not matter
    single = SaliencyMetrics()
    for p, y in ((SAL_EMPTY_PROB, SAL_EMPTY_LAB), (SAL_FADE_PROB, SAL_FADE_LAB), (SAL_ORD_PROB, SAL_ORD_LAB)):
        single.update(prob_map(p), lab(y))
    assert close(single.compute()["maxf"], 4000 / 93)


def test_saliency_one_convention_keeps_former_values() -> None:
    m = SaliencyMetrics(empty_convention="one")
    m.update(
        torch.cat([prob_map(SAL_A_PROB), prob_map(SAL_B_PROB)]),
        torch.cat([lab(SAL_A_LAB), lab(SAL_B_LAB)]),
    )
    # "one" F1 over A and B: group 1: 5/6 (P = R); group 2: 2*(3/4)(2/3)/(3/4+2/3) = 12/17;
    # group 3: 2*(2/3)/(5/3) = 4/5  -> maxF 5/6; max mIoU 3/4 (IoU does not depend on the convention)
    out = m.compute()
    assert close(out["maxf"], 500 / 6)
    assert close(out["max_miou"], 75.0)
    m = SaliencyMetrics(empty_convention="one")
    m.update(
        torch.cat([prob_map(SAL_EMPTY_PROB), prob_map(SAL_FADE_PROB), prob_map(SAL_ORD_PROB)]),
        torch.cat([lab(SAL_EMPTY_LAB), lab(SAL_FADE_LAB), lab(SAL_ORD_LAB)]),
    )
    # "one" over E, F, G: t 0.20..0.55: P (1 + 1 + 1/4)/3 = 3/4, R (1 + 1/3 + 1)/3 = 7/9,
    #   F1 = 2*(3/4)(7/9)/(3/4 + 7/9) = (7/6)/(55/36) = 42/55 = 0.7636;
    # t 0.60..0.90: P (1 + 1 + 1)/3 = 1, R (1 + 0 + 1)/3 = 2/3, F1 = (4/3)/(5/3) = 4/5  -> maxF 80 %
    out = m.compute()
    assert close(out["maxf"], 80.0)
    assert close(out["max_miou"], 200 / 3)


def test_saliency_empty_convention_is_validated() -> None:
    with pytest.raises(ValueError, match=r"empty_convention.*'reference', 'one'.*'ones'"):
        SaliencyMetrics(empty_convention="ones")


def test_saliency_edge_cases_average_p_and_r() -> None:
    ref, one = SaliencyMetrics(), SaliencyMetrics(empty_convention="one")
    for m in (ref, one):
        # D: a positive, nothing predicted -> tp 0 fp 0 fn 1: reference P 0 ("one" P 1), R 0, IoU 0
        m.update(prob_map([[0.1, 0.1]]), lab([[1, 0]]))
        # H: no positive, one false alarm at every threshold -> tp 0 fp 1 fn 0: P 0,
        #    reference R 0 ("one" R 1), IoU 0
        m.update(prob_map([[0.97, 0.1]]), lab([[0, 0]]))
    # reference: mean P 0, mean R 0 -> F 0
    assert close(ref.compute()["maxf"], 0.0)
    assert close(ref.compute()["max_miou"], 0.0)
    # "one": mean P 1/2, mean R 1/2 -> F1 1/2 (the mean of per-image F would be 0)
    assert close(one.compute()["maxf"], 50.0)
    assert close(one.compute()["max_miou"], 0.0)


def test_saliency_resizes_constant_prediction() -> None:
    m = SaliencyMetrics()
    m.update(prob_map([[0.97]]), lab([[1, 1, 0], [1, IGN, 1]]))  # all 5 valid predicted: tp 4 fp 1 fn 0
    out = m.compute()
    assert close(out["maxf"], 2 * 0.8 * 1 / 1.8 * 100)  # P 4/5, R 1
    assert close(out["max_miou"], 80.0)  # 4 / 5


# ----------------------------------------------------------------------------- edge


def test_edge_pooled_over_updates() -> None:
    m = EdgeMetrics(num_thresholds=3)  # thresholds 0.25, 0.5, 0.75
    m.update(prob_map([[0.9, 0.6, 0.4], [0.1, 0.9, 0.1]]), lab([[1, 0, 1], [0, IGN, 1]]))
    # valid (label, prob): (1,.9) (0,.6) (1,.4) (0,.1) (1,.1)
    #   t .25: tp 2 fp 1 fn 1; t .5: tp 1 fp 1 fn 2; t .75: tp 1 fp 0 fn 2
    m.update(prob_map([[0.6, 0.9]]), lab([[0, 1]]))
    #   t .25: tp 1 fp 1 fn 0; t .5: tp 1 fp 1 fn 0; t .75: tp 1 fp 0 fn 0
    # pooled: t .25: 3/2/1 -> F = 6/9; t .5: 2/2/2 -> 4/8; t .75: 2/0/2 -> 4/6
    # (per-batch best F would be 4/6 and 1, mean 0.833: pooling matters)
    out = m.compute()
    assert set(out) == {"odsf"}
    assert close(out["odsf"], 200 / 3)


def test_edge_default_thresholds_and_resize() -> None:
    m = EdgeMetrics()  # thresholds 0.01 .. 0.99
    m.update(prob_map([[0.985]]), lab([[1, 0, 1], [IGN, 1, 1]]))
    # t <= 0.98: all 5 valid predicted: tp 4 fp 1 fn 0 -> F = 8/9; t = 0.99: nothing predicted -> F = 0
    assert close(m.compute()["odsf"], 800 / 9)


# ----------------------------------------------------------------------------- DDP equality


def _ddp_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """5 samples per task; predictions at half the label resolution so resizing is exercised."""
    g = torch.Generator().manual_seed(0)
    n, h, w = 5, 6, 8
    seg_lab = torch.randint(0, 3, (n, h, w), generator=g)  # class 3 of 4 never labelled
    seg_lab[torch.rand(n, h, w, generator=g) < 0.2] = IGN
    dep_lab = torch.rand(n, 1, h, w, generator=g) * 5 + 0.5
    dep_lab[torch.rand(n, 1, h, w, generator=g) < 0.3] = 0
    nor_lab = F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1)
    nor_lab[:, :, :2] = 0
    bin_lab = torch.randint(0, 2, (n, h, w), generator=g)
    bin_lab[torch.rand(n, h, w, generator=g) < 0.2] = IGN
    bin_lab[4] = IGN  # one fully ignored image
    return {
        "seg": (torch.randn(n, 4, h // 2, w // 2, generator=g), seg_lab),
        "depth": (torch.rand(n, 1, h // 2, w // 2, generator=g) * 5 + 0.1, dep_lab),
        "normals": (torch.randn(n, 3, h // 2, w // 2, generator=g), nor_lab),
        "sal": (torch.randn(n, 1, h // 2, w // 2, generator=g) * 2, bin_lab),
        "edge": (torch.randn(n, 1, h // 2, w // 2, generator=g) * 2, bin_lab),
    }


def _make_metrics() -> dict:
    return {
        "seg": SegmentationMetrics(4),
        "depth": DepthMetrics(),
        "normals": NormalsMetrics(),
        "sal": SaliencyMetrics(),
        "edge": EdgeMetrics(),
    }


def _evaluate(chunks: list[slice], data: dict) -> dict[str, torch.Tensor]:
    metrics = _make_metrics()
    for name, metric in metrics.items():
        out, label = data[name]
        for s in chunks:
            metric.update(out[s], label[s])
    results = {f"{name}/{k}": v for name, metric in metrics.items() for k, v in metric.compute().items()}
    results["seg/iou_per_class"] = metrics["seg"].iou_per_class()
    return results


def _ddp_worker(rank: int, port: int, data: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        # odd split of 5 samples: rank 0 gets 3 (in two updates), rank 1 gets 2
        chunks = [slice(0, 2), slice(2, 3)] if rank == 0 else [slice(3, 5)]
        torch.save(_evaluate(chunks, data), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_equal_single_process(tmp_path: Path) -> None:
    data = _ddp_data()
    single = _evaluate([slice(0, 5)], data)
    mp.spawn(_ddp_worker, args=(_free_port(), data, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        ddp = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(ddp) == set(single)
        for key, value in single.items():
            same = torch.allclose(ddp[key], value, atol=1e-6, rtol=0, equal_nan=True)
            assert same, (rank, key, ddp[key], value)
    assert all(bool(torch.isfinite(v).all()) for v in single.values())  # a real comparison, not NaN == NaN
