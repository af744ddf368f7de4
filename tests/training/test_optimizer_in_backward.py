"""The optimizer stepped inside backward (`mtcp.optim.StepInBackward`, ``model.optimizer_in_backward``):
the same parameters as stepping after backward, with no more than one gradient held at a time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import TINY_RUN
from mtcp.callbacks import OptimizerInBackward
from mtcp.cli import cli_main
from mtcp.optim import PolyLR, StepInBackward


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 2))  # for 10x10 inputs


def _train(net: nn.Module, in_backward: bool, steps: int = 4) -> list[float]:
    """``steps`` AdamW steps (weight decay, two groups, a changing learning rate) on fixed data."""
    no_decay = list(net[1].parameters())  # the BatchNorm's
    decay = [p for p in net.parameters() if all(p is not q for q in no_decay)]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=0.01, weight_decay=0.1)
    scheduler = PolyLR(optimizer, total_steps=steps, warmup_steps=2)
    stepper = StepInBackward(optimizer) if in_backward else None
    gen = torch.Generator().manual_seed(1)
    lrs = []
    for _ in range(steps):
        x, y = torch.rand(4, 3, 10, 10, generator=gen), torch.rand(4, 2, generator=gen)
        loss = (net(x) - y).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    if stepper is not None:
        stepper.remove()
    return lrs


def test_stepping_inside_backward_gives_the_parameters_and_state_of_stepping_after_it():
    plain, inside = _net(), _net()
    assert _train(plain, False) == _train(inside, True)
    for (name, p), q in zip(plain.named_parameters(), inside.parameters(), strict=True):
        assert torch.equal(p, q), name
    for name, p in inside.named_parameters():
        assert p.grad is None, name  # freed after each update


def test_no_more_than_one_gradient_is_held_during_backward():
    net = _net()
    params = list(net.parameters())
    optimizer = torch.optim.AdamW(params, lr=0.01)
    StepInBackward(optimizer)
    held = []
    for p in params:  # registered after the stepper's hooks, so they run after them
        p.register_post_accumulate_grad_hook(lambda _: held.append(sum(q.grad is not None for q in params)))
    before = [p.detach().clone() for p in params]
    net(torch.rand(2, 3, 10, 10)).sum().backward()
    assert len(held) == len(params) and max(held) == 0
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))  # every one updated


def test_disarmed_the_gradients_accumulate_and_nothing_moves():
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01)
    stepper = StepInBackward(optimizer)
    stepper.armed = False
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.rand(2, 3, 10, 10)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))


def _fit(out, *extra: str):
    """A seeded 3-step tiny fit through the CLI (no validation, no checkpoint)."""
    return cli_main(["fit", *TINY_RUN, *extra, f"--trainer.default_root_dir={out}",
                     f"--trainer.logger.init_args.save_dir={out}", f"--checkpoint.dirpath={out / 'ckpt'}",
                     "--trainer.enable_checkpointing=false", "--trainer.max_steps=3",
                     "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=0"])


def test_fit_with_the_optimizer_in_backward_trains_the_same_weights(tmp_path, monkeypatch):
    updates = []

    class Counted(StepInBackward):  # records each update made inside backward
        def _updater(self, group):
            update = super()._updater(group)

            def counted(p):
                update(p)
                updates.append(p.grad is None and self.armed)

            return counted

    monkeypatch.setattr("mtcp.callbacks.optimizer_in_backward.StepInBackward", Counted)
    plain = _fit(tmp_path / "plain")
    assert not updates
    inside = _fit(tmp_path / "inside", "--model.optimizer_in_backward=true")
    assert len(updates) == 3 * len(list(inside.model.parameters())) and all(updates)
    assert any(isinstance(c, OptimizerInBackward) for c in inside.trainer.callbacks)
    assert not any(isinstance(c, OptimizerInBackward) for c in plain.trainer.callbacks)
    expected = plain.model.state_dict()
    for name, value in inside.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert inside.trainer.optimizers[0].state_dict()["state"][0]["step"] == 3  # the usual AdamW state
    assert all(p.grad is None for p in inside.model.parameters())


@pytest.mark.parametrize(("settings", "named"), [
    ({"world_size": 2}, r"2 processes \(trainer.devices, trainer.num_nodes\)"),
    ({"accumulate_grad_batches": 4}, "trainer.accumulate_grad_batches=4"),
    ({"gradient_clip_val": 1.0}, "trainer.gradient_clip_val=1.0"),
])
def test_settings_that_need_every_gradient_at_once_are_refused_by_name(settings, named):
    trainer = SimpleNamespace(**{"world_size": 1, "accumulate_grad_batches": 1, "gradient_clip_val": None,
                                 **settings})
    with pytest.raises(ValueError, match=rf"model.optimizer_in_backward: true .*{named}"):
        OptimizerInBackward().setup(trainer, None, "fit")
    OptimizerInBackward().setup(trainer, None, "test")  # only fit steps


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_updates_nothing(bad):
    """The balancer stops the run after backward; by then no parameter may have moved."""
    net = _net()
    callback = OptimizerInBackward()
    trainer = SimpleNamespace(optimizers=[torch.optim.AdamW(net.parameters(), lr=0.01)])
    callback.on_train_start(trainer, None)
    before = [p.detach().clone() for p in net.parameters()]
    loss = net(torch.rand(2, 3, 10, 10)).sum() * bad
    callback.on_before_backward(trainer, None, loss)
    loss.backward()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    assert all(p.grad is not None for p in net.parameters())  # left for the balancer's check
    loss = net(torch.rand(2, 3, 10, 10)).sum()
    callback.on_before_backward(trainer, None, loss)  # finite again: armed
    for p in net.parameters():
        p.grad = None
    loss.backward()
    assert all(not torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    callback.teardown(trainer, None, "fit")
    assert callback.stepper is None
    after = [p.detach().clone() for p in net.parameters()]
    net(torch.rand(2, 3, 10, 10)).sum().backward()  # the hooks are gone: nothing updates any more
    assert all(torch.equal(p, a) for p, a in zip(net.parameters(), after, strict=True))
