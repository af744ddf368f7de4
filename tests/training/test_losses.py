"""Losses: hand-computed values, and zero (never NaN) when a batch has no valid pixel."""

import math

import pytest
import torch

from mtcp import losses


def test_depth_l1_averages_over_valid_pixels_only():
    out = torch.tensor([[[[1.0, 2.0], [3.0, 9.0]]]])
    label = torch.tensor([[[[2.0, 2.0], [1.0, 0.0]]]])  # last pixel invalid
    assert losses.depth_l1(out, label).item() == pytest.approx((1 + 0 + 2) / 3)


def test_normals_l1_sums_components_over_valid_pixels():
    out = torch.zeros(1, 3, 1, 2)
    out[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    out[0, :, 0, 1] = torch.tensor([1.0, 0.0, 0.0])
    label = torch.zeros(1, 3, 1, 2)
    label[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # |0|+|1-0|... = 0 + 1 + 1 = 2
    assert losses.normals_l1(out, label).item() == pytest.approx(2.0)


def test_cross_entropy_ignores_255():
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # [1, 2, 1, 1]
    label = torch.tensor([[[0]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert losses.cross_entropy(logits, label).item() == pytest.approx(expected, rel=1e-5)
    logits2 = torch.cat([logits, logits], dim=-1)
    label2 = torch.tensor([[[0, 255]]])
    assert losses.cross_entropy(logits2, label2).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_bce_weights_positives_by_negative_fraction():
    logits = torch.zeros(1, 1, 1, 4)  # every pixel: BCE = log 2
    label = torch.tensor([[[1, 0, 0, 0]]])
    # p = 1/4: the positive weighs 3/4, each negative 1/4; mean over 4 pixels = (3/4 + 3/4) / 4 * log 2
    assert losses.balanced_bce(logits, label).item() == pytest.approx(0.375 * math.log(2), rel=1e-6)
    logits = torch.tensor([[[[0.0, 10.0, 10.0, 10.0]]]])
    expected = (0.75 * math.log(2) + 3 * 0.25 * math.log1p(math.exp(10))) / 4
    assert losses.balanced_bce(logits, label).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_bce_keeps_a_loss_for_single_class_batches():
    logits = torch.zeros(1, 1, 1, 4)
    label = torch.ones(1, 1, 4, dtype=torch.long)
    # p = 1 clamped to 0.95: every positive weighs 0.05, so the loss is 0.05 * log 2, not 0
    assert losses.balanced_bce(logits, label).item() == pytest.approx(0.05 * math.log(2), rel=1e-5)


@pytest.mark.parametrize("fn,out,label", [
    (losses.cross_entropy, torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 255)),
    (losses.depth_l1, torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)),
    (losses.normals_l1, torch.randn(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)),
    (losses.balanced_bce, torch.randn(2, 1, 4, 4), torch.full((2, 4, 4), 255)),
    (losses.weighted_bce, torch.randn(2, 1, 4, 4), torch.full((2, 4, 4), 255)),
])
def test_no_valid_pixel_gives_zero_with_a_gradient_path(fn, out, label):
    out = out.clone().requires_grad_(True)
    loss = fn(out, label)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert out.grad is not None and torch.equal(out.grad, torch.zeros_like(out))


@pytest.mark.parametrize("fn,channels", [(losses.depth_l1, 1), (losses.normals_l1, 3), (losses.normals_mse, 3)])
def test_nan_in_an_invalid_label_pixel_reaches_neither_loss_nor_gradient(fn, channels):
    out = torch.ones(1, channels, 1, 2, requires_grad=True)
    label = torch.full((1, channels, 1, 2), 0.5)
    label[0, :, 0, 1] = float("nan")  # invalid: NaN > 0 is false, |NaN| sums to NaN
    clean = label.clone()
    clean[0, :, 0, 1] = 0.0  # the same pixel marked invalid the usual way
    loss = fn(out, label)
    loss.backward()
    assert torch.isfinite(out.grad).all() and out.grad[0, :, 0, 1].eq(0).all()
    assert loss.item() == pytest.approx(fn(out.detach(), clean).item())


def test_the_normals_activation_equals_f_normalize_forward_and_backward():
    from mtcp.tasks import get_task

    unit = get_task("normals").activation
    x = torch.randn(2, 3, 17, 23, dtype=torch.float64)
    x[0, :, 0, 0] = 1e-9  # below eps: both clamp the norm (to 1e-6)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = torch.nn.functional.normalize(a, dim=1, eps=1e-6)
    got = unit(b)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(x)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(b.grad[..., 1:, :], a.grad[..., 1:, :], rtol=1e-10, atol=1e-10)
