"""The LightningModule: balanced total, non-finite guard, any input size, checkpoint task check."""

import math

import pytest
import torch

from mtcp.models import PlainMTL, TimmBackbone
from mtcp.module import MultiTaskModule

TASKS = {"semseg": 5, "depth": 1, "normals": 3}


def tiny_net(task_channels):
    return PlainMTL(task_channels, TimmBackbone("test_convnext"), dim=8)


def make_batch(b: int = 2, h: int = 32, w: int = 32) -> dict:
    torch.manual_seed(0)
    return {
        "image": torch.rand(b, 3, h, w),
        "semseg": torch.randint(0, 5, (b, h, w)),
        "depth": torch.rand(b, 1, h, w) + 0.5,
        "normals": torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1),
        "meta": {"id": [f"s{i}" for i in range(b)]},
    }


@pytest.mark.parametrize("size", [(100, 140), (64, 96), (33, 47)])
def test_outputs_have_the_input_size_for_odd_sizes(size):
    module = MultiTaskModule(TASKS, net=tiny_net).eval()
    out = module(torch.rand(1, 3, *size))["final"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semseg": (1, 5, *size), "depth": (1, 1, *size), "normals": (1, 3, *size)}
    assert (out["depth"] > 0).all()
    assert torch.allclose(out["normals"].norm(dim=1), torch.ones(1, *size), atol=1e-4)


def test_total_is_weighted_sum_of_projected_losses():
    module = MultiTaskModule(TASKS, net=tiny_net)
    batch = make_batch()
    module.task_weights.copy_(torch.tensor([0.5, 2.0, 1.0]))
    module.loss_projection = "log"
    module.log = lambda *a, **k: None  # no trainer attached
    torch.manual_seed(1)
    step = module.training_step(batch, 0)
    losses = step["task_losses"].tolist()
    expected = 0.5 * math.log(1 + losses[0] + 1e-6) + 2.0 * math.log(1 + losses[1] + 1e-6) + math.log(
        1 + losses[2] + 1e-6)
    assert step["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert step["loss"].requires_grad and not step["task_losses"].requires_grad


def test_non_finite_loss_raises_naming_the_task():
    module = MultiTaskModule(TASKS, net=tiny_net)
    module.log = lambda *a, **k: None
    batch = make_batch()
    batch["depth"][0, 0, 0, 0] = float("inf")  # NaN would count as invalid (not > 0)
    with pytest.raises(FloatingPointError, match=r"depth.*s0"):
        module.training_step(batch, 0)


def test_checkpoint_from_other_tasks_is_rejected_with_both_task_sets():
    trained = MultiTaskModule(TASKS, net=tiny_net)
    other = MultiTaskModule({"semseg": 5, "sal": 1}, net=tiny_net)
    checkpoint = {"hyper_parameters": dict(trained.hparams), "state_dict": trained.state_dict()}
    with pytest.raises(ValueError, match=r"trained for tasks .*normals.* built for .*sal"):
        other.on_load_checkpoint(checkpoint)
    trained.on_load_checkpoint(checkpoint)  # same tasks: accepted


def test_unknown_task_in_model_is_rejected():
    with pytest.raises(ValueError, match="model.task_channels"):
        MultiTaskModule({"semseg": 5, "heat": 1}, net=tiny_net)


def test_loss_override_uses_the_authors_normals_mse():
    module = MultiTaskModule(TASKS, net=tiny_net, loss_overrides={"normals": "normals_mse"})
    batch = make_batch()
    out = {"final": {"semseg": torch.zeros(2, 5, 32, 32), "depth": batch["depth"].clone(),
                     "normals": -batch["normals"]}}
    # opposite unit normals: squared distance |n - (-n)|^2 = 4 at every pixel; L1 would give |2n|_1 != 4
    assert module.task_losses(out, batch)[2].item() == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss 'normals_l2'.*known losses"):
        MultiTaskModule(TASKS, net=tiny_net, loss_overrides={"normals": "normals_l2"})
    with pytest.raises(ValueError, match="'sal' is not a task"):
        MultiTaskModule(TASKS, net=tiny_net, loss_overrides={"sal": "balanced_bce"})
