"""The LightningModule: balanced total, non-finite guard, any input size, checkpoint task check."""

import math

import pytest
import torch

from mtcp.models import PlainMTL, Predictions, TimmBackbone
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
    out = module(torch.rand(1, 3, *size)).final
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "semseg": (1, 5, *size), "depth": (1, 1, *size), "normals": (1, 3, *size)}
    assert (out["depth"] > 0).all()
    assert torch.allclose(out["normals"].norm(dim=1), torch.ones(1, *size), atol=1e-4)


def test_total_is_the_balancers_objective_of_the_task_losses():
    from types import SimpleNamespace

    from mtcp.balancers import LossPrioritization

    module = MultiTaskModule(TASKS, net=tiny_net)
    lps = LossPrioritization()
    lps.setup(SimpleNamespace(strategy=None), module, "fit")
    lps.weights = torch.tensor([0.5, 2.0, 1.0])
    module.trainer = SimpleNamespace(callbacks=[lps])  # what the module reads from its trainer
    module.log = lambda *a, **k: None  # no real trainer attached
    step = module.training_step(make_batch(), 0)
    losses = step["task_losses"].tolist()
    expected = 0.5 * math.log(1 + losses[0] + 1e-6) + 2.0 * math.log(1 + losses[1] + 1e-6) + math.log(
        1 + losses[2] + 1e-6)
    assert step["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert step["loss"].requires_grad and not step["task_losses"].requires_grad


def test_a_module_without_exactly_one_balancer_says_so():
    from types import SimpleNamespace

    module = MultiTaskModule(TASKS, net=tiny_net)
    module.trainer = SimpleNamespace(callbacks=[])
    with pytest.raises(ValueError, match=r"exactly one balancer callback.*found \[\]"):
        module.training_step(make_batch(), 0)


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
    out = Predictions({"semseg": torch.zeros(2, 5, 32, 32), "depth": batch["depth"].clone(),
                       "normals": -batch["normals"]})
    # opposite unit normals: squared distance |n - (-n)|^2 = 4 at every pixel; L1 would give |2n|_1 != 4
    assert module.task_losses(out, batch)[2].item() == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss 'normals_l2'.*known losses"):
        MultiTaskModule(TASKS, net=tiny_net, loss_overrides={"normals": "normals_l2"})
    with pytest.raises(ValueError, match="'sal' is not a task"):
        MultiTaskModule(TASKS, net=tiny_net, loss_overrides={"sal": "balanced_bce"})


def test_non_finite_loss_stops_the_step_naming_the_task_and_sample():
    from types import SimpleNamespace

    from mtcp.balancers import EqualWeights

    module = MultiTaskModule(TASKS, net=tiny_net)
    balancer = EqualWeights()
    trainer = SimpleNamespace(strategy=None, callbacks=[balancer], global_step=7, global_rank=0)
    balancer.setup(trainer, module, "fit")
    module.trainer = trainer
    module.log = lambda *a, **k: None
    batch = make_batch()
    batch["depth"][1, 0, 0, 0] = float("inf")  # NaN would count as invalid (not > 0)
    balancer.on_train_batch_start(trainer, module, batch, 0)
    module.training_step(batch, 0)  # no host read here: the check comes after backward
    with pytest.raises(FloatingPointError, match=r"\['depth'\] at step 7 \(rank 0: task\(s\) \['depth'\], "
                                                 r"batch ids \['s0', 's1'\]\)"):
        balancer.on_before_optimizer_step(trainer, module, None)


def test_loss_and_metric_options_cap_depth_as_the_authors_do():
    module = MultiTaskModule(TASKS, net=tiny_net, loss_options={"depth": {"max_depth": 2.0}},
                             metric_options={"depth": {"max_depth": 2.0}})
    batch = make_batch(b=1, h=2, w=2)
    batch["depth"] = torch.tensor([[[[1.0, 3.0], [1.5, 0.0]]]])  # 3.0 is beyond the cap, 0 is invalid
    pred = torch.tensor([[[[1.5, 1.0], [1.0, 9.0]]]])
    out = {"final": {"semseg": torch.zeros(1, 5, 2, 2), "depth": pred, "normals": batch["normals"]}}
    from mtcp.models.outputs import Predictions

    # L1 over the two labels below 2 m: (|1.5 - 1| + |1 - 1.5|) / 2 = 0.5 (with the 3 m label: (0.5+2+0.5)/3 = 1)
    assert module.task_losses(Predictions(out["final"], {}), batch)[1].item() == pytest.approx(0.5)
    metric = module.metrics["val"]["depth"]
    metric.update(pred, batch["depth"])
    assert metric.compute()["rmse"].item() == pytest.approx(0.5)  # sqrt((0.25 + 0.25) / 2)
    with pytest.raises(ValueError, match=r"model.loss_options.depth: depth_l1 takes no option\(s\) \['max_dist'\]"):
        MultiTaskModule(TASKS, net=tiny_net, loss_options={"depth": {"max_dist": 2.0}})
    with pytest.raises(ValueError, match=r"model.metric_options.depth .*max_dist"):
        MultiTaskModule(TASKS, net=tiny_net, metric_options={"depth": {"max_dist": 2.0}})
    with pytest.raises(ValueError, match=r"model.metric_options: \['sal'\] not task\(s\) of this model"):
        MultiTaskModule(TASKS, net=tiny_net, metric_options={"sal": {"empty_convention": "one"}})
