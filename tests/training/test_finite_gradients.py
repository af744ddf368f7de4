"""A finite loss with a non-finite gradient stops the step before any weight changes, naming the
parameters (`mtcp.callbacks.FiniteGradients`; inside backward, `OptimizerInBackward`)."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from mtcp.balancers import EqualWeights
from mtcp.callbacks import FiniteGradients
from mtcp.models import PlainMTL, TimmBackbone
from mtcp.module import MultiTaskModule

TASKS = {"semseg": 5, "depth": 1}


class _Spoilt(torch.autograd.Function):
    """Identity forward, NaN gradient: a finite loss whose backward is not."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return torch.full_like(grad, float("nan"))


class _SpoiltDepth(nn.Module):
    """A tiny PlainMTL whose depth output back-propagates NaN."""

    def __init__(self, task_channels: dict[str, int]) -> None:
        super().__init__()
        self.inner = PlainMTL(task_channels, TimmBackbone("test_convnext"), dim=8)

    def forward(self, image: Tensor):
        return self.inner(image).map(lambda task, y: _Spoilt.apply(y) if task == "depth" else y)


def _optimizer_over(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=0.1)


def _fake_trainer(scaler: object = None) -> SimpleNamespace:
    return SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), global_step=3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_parameters_with_non_finite_gradients_are_named(bad):
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    net[1].weight.grad[0, 1] = bad
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 3 .* for 1 parameter\(s\): 1\.weight; "
                                                 r"training stopped on every rank before the parameters were updated"):
        FiniteGradients().on_before_optimizer_step(_fake_trainer(), net, _optimizer_over(net))


def test_finite_gradients_huge_ones_included_pass_and_a_scaler_is_left_its_job():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    for p in net.parameters():
        p.grad = torch.full_like(p, 3e38)  # their 2-norm would overflow fp32; their max does not
    FiniteGradients().on_before_optimizer_step(_fake_trainer(), net, _optimizer_over(net))
    net[0].bias.grad[0] = float("nan")
    FiniteGradients().on_before_optimizer_step(_fake_trainer(scaler=object()), net, _optimizer_over(net))
    with pytest.raises(FloatingPointError, match=r"1 parameter\(s\): 0\.bias;"):
        FiniteGradients().on_before_optimizer_step(_fake_trainer(), net, _optimizer_over(net))


def test_more_than_five_are_counted():
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])
    for p in net.parameters():
        p.grad = torch.full_like(p, float("nan"))
    with pytest.raises(FloatingPointError, match=r"8 parameter\(s\): 0\.weight, 0\.bias, 1\.weight, 1\.bias, "
                                                 r"2\.weight and 3 more;"):
        FiniteGradients().on_before_optimizer_step(_fake_trainer(), net, _optimizer_over(net))


def _batches(n: int = 2) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, 32, 32, generator=gen), "semseg": torch.randint(0, 5, (32, 32), generator=gen),
             "depth": torch.rand(1, 32, 32, generator=gen) + 0.5, "meta": {"id": f"s{i}"}} for i in range(n)]


@pytest.mark.parametrize("in_backward", [False, True])
def test_a_fit_stops_at_the_first_non_finite_gradient(in_backward, tmp_path):
    module = MultiTaskModule(TASKS, net=_SpoiltDepth, scheduler=None, optimizer_in_backward=in_backward)
    before = {k: v.detach().clone() for k, v in module.named_parameters()}  # BN statistics do move
    trainer = L.Trainer(max_steps=2, callbacks=[EqualWeights()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(_batches(), batch_size=2)
    expected = (r"these parameters were already updated inside backward" if in_backward
                else r"training stopped on every rank before the parameters were updated")
    # NaN flows back from the depth output into everything but the semseg head
    spoilt = [n for n, _ in module.named_parameters() if not n.startswith("net.inner.heads.semseg")]
    with pytest.raises(FloatingPointError, match=rf"non-finite gradient at step 0 .* for {len(spoilt)} parameter\(s\): "
                                                 rf"net\.inner\.backbone\..*{expected}"):
        trainer.fit(module, loader)
    after = dict(module.named_parameters())
    depth_head = [k for k in before if k.startswith("net.inner.heads.depth")]
    assert depth_head
    if in_backward:  # written before the check could run: said so in the error
        assert not torch.isfinite(after[depth_head[0]]).all()
    else:
        assert all(torch.equal(after[k], v) for k, v in before.items())
