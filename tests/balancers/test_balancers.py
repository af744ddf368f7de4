"""Loss balancers: each rule driven with scripted losses and checked against hand-worked values.

The balancers are driven through their Lightning hooks with a minimal fake trainer and module
(`run_epochs`); expected weights are worked out by hand in the comments, never by the code
under test. The CLI/checkpoint tests at the end run tiny real fits.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import ROOT
from mtcp.balancers import (
    DWA,
    FAMO,
    GLS,
    RLW,
    Balancer,
    EqualWeights,
    FixedWeights,
    LossPrioritization,
    UncertaintyWeighting,
)
from mtcp.balancers.lps import spread_weights
from mtcp.balancers.rlw import step_seed
from mtcp.cli import cli_main

TASKS = ["semseg", "depth", "normals"]


class FakeModule(nn.Module):
    """What a balancer touches on the LightningModule."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged[name] = float(value)


def fake_trainer() -> SimpleNamespace:
    return SimpleNamespace(global_step=0, current_epoch=0, strategy=None)


def run_step(balancer: Balancer, trainer: SimpleNamespace, module: FakeModule, losses: list[float],
             batch_idx: int = 0) -> list[float]:
    """One training step through the hooks, in Lightning's order; the weights its objective used."""
    batch = {"meta": {"id": [f"id{trainer.global_step}"]}}
    balancer.on_train_batch_start(trainer, module, batch, batch_idx)
    balancer.objective(torch.tensor(losses, dtype=torch.float64))
    balancer.on_before_optimizer_step(trainer, module, None)
    balancer.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.0)}, batch, batch_idx)
    return balancer.used_weights.tolist()


def run_epochs(balancer: Balancer, epochs: list[list[list[float]]], tasks: list[str] | None = None,
               module: FakeModule | None = None, trainer: SimpleNamespace | None = None,
               first_epoch: int = 0) -> tuple[list[list[float]], FakeModule, SimpleNamespace]:
    """Drive the hooks over epochs of scripted per-step losses (one list [T] per step).

    Returns the weights that every step's objective used.
    """
    tasks = tasks or TASKS[: len(epochs[0][0])]
    module = module or FakeModule(tasks)
    trainer = trainer or fake_trainer()
    balancer.setup(trainer, module, "fit")
    used = []
    for e, epoch in enumerate(epochs, start=first_epoch):
        trainer.current_epoch = e
        balancer.on_train_epoch_start(trainer, module)
        for i, losses in enumerate(epoch):
            used.append(run_step(balancer, trainer, module, losses, i))
            trainer.global_step += 1
        balancer.on_train_epoch_end(trainer, module)
    return used, module, trainer


def unproj(p: float) -> float:
    """The raw loss whose LPS projection log(1 + L + 1e-6) is exactly p."""
    return math.expm1(p) - 1e-6


def assert_rows(actual: list[list[float]], expected: list[list[float]], tol: float = 1e-6) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a == pytest.approx(e, abs=tol), (actual, expected)


# -- LPS -------------------------------------------------------------------------------------
# Two tasks (A, B), window 2 steps; projected losses (the history is over projected losses):
#   window 0 (steps 0, 1): A 2.0, 2.0 -> l_A(0) = 2.0 ; B 1.0, 3.0 -> l_B(0) = 2.0 ; l(0) = 4.0
#   window 1 (steps 2, 3): A 1.0, 1.0 -> l_A(1) = 1.0 ; B 1.5, 1.5 -> l_B(1) = 1.5 ; l(1) = 2.5
#   r_A = 1.0/2.0 = 0.5, r_B = 1.5/2.0 = 0.75, R = 2.5/4.0 = 0.625
#   w_A = 0.5/0.625 = 0.8, w_B = 0.75/0.625 = 1.2   (mean 1.0, sum 2 = T already)
LPS_STEPS = [[2.0, 1.0], [2.0, 3.0], [1.0, 1.5], [1.0, 1.5], [1.0, 1.0]]


def _unproj_steps(steps: list[list[float]]) -> list[list[float]]:
    return [[unproj(p) for p in step] for step in steps]


def lps_steps() -> list[list[list[float]]]:
    return [_unproj_steps(LPS_STEPS)]


@pytest.mark.parametrize("spread,expected", [
    (1.0, [0.8, 1.2]),
    # kappa 2: 1.0 + 2 * (0.8 - 1.0) = 0.6, 1.0 + 2 * (1.2 - 1.0) = 1.4 (sum 2: no renormalisation)
    (2.0, [0.6, 1.4]),
    # kappa 7.5: 1.0 - 7.5 * 0.2 = -0.5 -> floor 0.01 ; 1.0 + 7.5 * 0.2 = 2.5 ; sum 2.51
    #   renormalised to sum 2: 0.01 * 2/2.51 = 0.00796813, 2.5 * 2/2.51 = 1.99203187
    (7.5, [0.02 / 2.51, 5.0 / 2.51]),
])
def test_lps_ratio_rule_and_spread_by_hand(spread, expected):
    lps = LossPrioritization(spread=spread, window=2)
    used, module, _ = run_epochs(lps, lps_steps())
    # steps 0-3: w = 1 (first window, then init="ones" keeps 1 for the second); step 4: the ratio rule
    assert_rows(used, [[1.0, 1.0]] * 4 + [expected])
    # the objective is sum_t w_t log(1 + L_t + 1e-6): raw losses whose projections are 1 and 2
    total = lps.objective(torch.tensor([unproj(1.0), unproj(2.0)], dtype=torch.float64))
    assert total.item() == pytest.approx(expected[0] * 1.0 + expected[1] * 2.0, abs=1e-6)
    # projected pooled losses are logged every step (here those of the last step: 1.0, 1.0)
    assert module.logged["train/proj_loss_semseg"] == pytest.approx(1.0, abs=1e-6)
    assert module.logged["train/weight_depth"] == pytest.approx(expected[1], abs=1e-6)


def test_lps_init_equal_contributions_by_hand():
    # three tasks, window 1 step; step 0 projected losses l(0) = [2, 1, 0.5], sum 3.5
    #   init "equal": w_t = l(0) / l_t(0) = [1.75, 3.5, 7.0], sum 12.25
    #   renormalised to sum 3: [1.75, 3.5, 7.0] * 3 / 12.25 = [3/7, 6/7, 12/7]
    # step 1 projected [1, 1, 0.5] (l(1) = 2.5): r = [0.5, 1, 1], R = 2.5/3.5 = 5/7
    #   w = r / R = [0.7, 1.4, 1.4], mean 3.5/3, spread 1 keeps it; sum 3.5 -> * 3/3.5 = [0.6, 1.2, 1.2]
    steps = [[[unproj(p) for p in s] for s in ([2.0, 1.0, 0.5], [1.0, 1.0, 0.5], [1.0, 1.0, 1.0])]]
    used, _, _ = run_epochs(LossPrioritization(window=1, init="equal"), steps)
    assert_rows(used, [[1.0, 1.0, 1.0], [3 / 7, 6 / 7, 12 / 7], [0.6, 1.2, 1.2]])


def test_lps_epoch_window_by_hand():
    # window "epoch": epoch 0 = steps [2,1],[2,3] -> l(0) = [2, 2]; epoch 1 = [1,1.5],[1,1.5] -> [1, 1.5]
    # the weights change only after the epoch-1 end: [0.8, 1.2] (same arithmetic as above)
    epochs = [_unproj_steps(LPS_STEPS[:2]), _unproj_steps(LPS_STEPS[2:4]), [[unproj(1.0), unproj(1.0)]]]
    used, _, _ = run_epochs(LossPrioritization(), epochs)
    assert_rows(used, [[1.0, 1.0]] * 4 + [[0.8, 1.2]])


def test_lps_resumes_a_window_left_open_at_an_epoch_end():
    """A checkpoint written after an epoch's last step but before its epoch-end hook: the resumed
    run closes that window when the next epoch starts, reaching the same weights."""
    epochs = [_unproj_steps(LPS_STEPS[:2]), _unproj_steps(LPS_STEPS[2:4])]
    straight, _, _ = run_epochs(LossPrioritization(), epochs + [[[unproj(1.0)] * 2]])
    first = LossPrioritization()
    module, trainer = FakeModule(TASKS[:2]), fake_trainer()
    run_epochs(first, epochs[:1], module=module, trainer=trainer)
    # epoch 1 without its on_train_epoch_end
    trainer.current_epoch = 1
    for i, losses in enumerate(epochs[1]):
        run_step(first, trainer, module, losses, i)
    state = first.state_dict()
    resumed = LossPrioritization()
    resumed.setup(trainer, FakeModule(TASKS[:2]), "fit")
    resumed.load_state_dict(state)
    used, _, _ = run_epochs(resumed, [[[unproj(1.0)] * 2]], tasks=TASKS[:2], first_epoch=2)
    assert used[0] == pytest.approx(straight[-1], abs=1e-6) == [0.8, 1.2]


def test_spread_control_doubles_deviations():
    w = torch.tensor([0.7, 1.0, 1.6], dtype=torch.float64)  # mean 1.1, deviations -0.4, -0.1, 0.5
    assert spread_weights(w, 1.0).tolist() == pytest.approx([0.7, 1.0, 1.6])
    assert spread_weights(w, 2.0).tolist() == pytest.approx([0.3, 0.9, 2.1])  # 1.1 + 2 * dev
    dev1 = spread_weights(w, 1.0) - w.mean()
    dev2 = spread_weights(w, 2.0) - w.mean()
    assert torch.allclose(dev2, 2 * dev1)


@pytest.mark.parametrize("spread", [1.0, 1.6, 7.5, 50.0])
def test_lps_weights_positive_sum_to_t_for_wild_losses(spread):
    gen = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(40):
        kind = torch.rand((), generator=gen)
        if kind < 0.2:
            steps.append([0.0, 0.0, 0.0])
        elif kind < 0.4:
            steps.append(torch.rand(3, generator=gen).mul(1e6).tolist())
        else:
            steps.append(torch.rand(3, generator=gen).mul(torch.tensor([1e-6, 1.0, 50.0])).tolist())
    used, _, _ = run_epochs(LossPrioritization(spread=spread, window=1, init="equal"), [steps])
    w = torch.tensor(used)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w.sum(1).tolist() == pytest.approx([3.0] * len(used), abs=1e-5)
    assert len({tuple(r) for r in used}) > 10  # the weights did move


def test_lps_zero_losses_give_finite_weights():
    # an all-zero window: projected 1e-6 each; a later window with real losses gives huge ratios,
    # clamped and renormalised: finite, positive, sum T
    steps = [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 0.0, 2.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    used, _, _ = run_epochs(LossPrioritization(spread=7.5, window=1, init="equal"), [steps])
    w = torch.tensor(used)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w.sum(1).tolist() == pytest.approx([3.0] * 5, abs=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_stops_before_the_update_naming_task_and_ids(bad):
    # the LPS_STEPS run with a non-finite depth loss at step 2: the check after backward raises,
    # naming the task, the step and the batch's sample ids; the rule never sees that step
    lps = LossPrioritization(window=2)
    _, module, trainer = run_epochs(lps, [lps_steps()[0][:2]])
    history = lps.history.state_dict()
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['depth'\] at step 2 \(rank 0: task\(s\) "
                                                 r"\['depth'\], batch ids \['id2'\]\).*before the parameters"):
        run_step(lps, trainer, module, [1.0, bad])
    assert lps.history.state_dict() == history and lps.weights.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("make", [lambda: LossPrioritization(spread=7.5, window=1), lambda: DWA(window=1),
                                  GLS, FAMO, lambda: RLW(seed=3), UncertaintyWeighting])
def test_no_balancer_produces_non_finite_weights(make):
    steps = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1e30, 1.0, 1.0], [0.0, 5.0, 1e-300], [1e-30, 1e6, 0.0],
             [2.0, 2.0, 2.0], [0.0, 1.0, 1.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        used, _, _ = run_epochs(make(), [steps])
    assert torch.isfinite(torch.tensor(used)).all()


def test_lps_rejects_bad_settings():
    with pytest.raises(ValueError, match="spread"):
        LossPrioritization(spread=0)
    with pytest.raises(ValueError, match="window"):
        LossPrioritization(window=0)
    with pytest.raises(ValueError, match="init"):
        LossPrioritization(init="authors")  # type: ignore[arg-type]


def test_lps_state_round_trip_continues_identically(tmp_path):
    steps = [[[unproj(p) for p in s] for s in LPS_STEPS[:3]]]  # stop inside window 1
    rest = [[[unproj(p) for p in s] for s in LPS_STEPS[3:]]]
    straight, _, _ = run_epochs(LossPrioritization(spread=2.0, window=2), lps_steps())
    first = LossPrioritization(spread=2.0, window=2)
    _, _, trainer = run_epochs(first, steps, tasks=TASKS[:2])
    resumed = LossPrioritization(spread=2.0, window=2)
    resumed.setup(trainer, FakeModule(TASKS[:2]), "fit")
    resumed.load_state_dict(torch.load(_saved(first.state_dict(), tmp_path / "state.pt"), weights_only=True))
    used, _, _ = run_epochs(resumed, rest, tasks=TASKS[:2], trainer=trainer)
    assert_rows(straight[3:], used)


def _saved(state: dict, path: Path) -> Path:
    """``state`` written with torch.save, as in a checkpoint (reloaded with weights_only)."""
    torch.save(state, path)
    return path


def _every_balancer() -> list:
    """Every balancer class the package exports, with its defaults; plus the windowed variants."""
    import mtcp.balancers as package

    classes = [getattr(package, n) for n in package.__all__ if getattr(package, n) is not Balancer]
    return [*classes, lambda: LossPrioritization(spread=7.5, window=3), lambda: DWA(window=2),
            lambda: RLW(seed=5), lambda: FixedWeights({"depth": 2.0})]


STATIC = (EqualWeights, FixedWeights)


@pytest.mark.parametrize("make", _every_balancer())
def test_state_round_trip_through_a_checkpoint_file_continues_identically(make, tmp_path):
    """Epochs 0-2 straight vs epoch 0 + state saved and loaded into a fresh balancer + epochs 1-2."""
    gen = torch.Generator().manual_seed(1)
    epochs = [torch.rand(4, 3, generator=gen).add(0.1).tolist() for _ in range(3)]
    straight, _, _ = run_epochs(make(), epochs)
    first = make()
    _, _, trainer = run_epochs(first, epochs[:1])
    resumed = make()
    resumed.setup(trainer, FakeModule(TASKS), "fit")
    resumed.load_state_dict(torch.load(_saved(first.state_dict(), tmp_path / "state.pt"), weights_only=True))
    used, _, _ = run_epochs(resumed, epochs[1:], trainer=trainer, first_epoch=1)
    assert used == straight[4:]
    assert len({tuple(r) for r in straight}) > 1 or isinstance(resumed, STATIC)


def test_balancer_state_refuses_other_tasks():
    b = LossPrioritization()
    b.setup(fake_trainer(), FakeModule(["semseg", "depth"]), "fit")
    state = b.state_dict()
    other = LossPrioritization()
    other.setup(fake_trainer(), FakeModule(["semseg", "normals"]), "fit")
    with pytest.raises(ValueError,
                       match=r"for tasks \['semseg', 'depth'\].*model has tasks \['semseg', 'normals'\]"):
        other.load_state_dict(state)


# -- DWA -------------------------------------------------------------------------------------
def test_dwa_by_hand():
    # epoch means (raw losses): L(0) = [2, 4] (steps [1,3],[3,5]); L(1) = [1, 3] (steps [1,2],[1,4])
    # epochs 0 and 1 use w = 1; epoch 2: r = [1/2, 3/4], tau = 2:
    #   w_A = 2 * e^{0.25} / (e^{0.25} + e^{0.375}) = 2 / (1 + e^{0.125}), w_B = 2 - w_A
    epochs = [[[1.0, 3.0], [3.0, 5.0]], [[1.0, 2.0], [1.0, 4.0]], [[1.0, 1.0]]]
    dwa = DWA()
    used, module, _ = run_epochs(dwa, epochs)
    w_a = 2 / (1 + math.exp(0.125))
    assert_rows(used, [[1.0, 1.0]] * 4 + [[w_a, 2 - w_a]])
    # identity projection: the objective is w_A L_A + w_B L_B = 0.25 * 1 + 1.75 * 2
    dwa.weights = torch.tensor([0.25, 1.75])
    assert dwa.objective(torch.tensor([1.0, 2.0])).item() == pytest.approx(3.75, rel=1e-6)
    assert w_a == pytest.approx(0.937581, abs=1e-6)


# -- fixed, equal ----------------------------------------------------------------------------
def test_fixed_weights_by_name():
    used, _, _ = run_epochs(FixedWeights({"semseg": 1, "depth": 1, "normals": 10}), [[[1.0, 1.0, 1.0]] * 2])
    assert_rows(used, [[1.0, 1.0, 10.0]] * 2)
    used, _, _ = run_epochs(FixedWeights({"normals": 10}, default=0.5), [[[1.0, 1.0, 1.0]]])
    assert_rows(used, [[0.5, 0.5, 10.0]])


def test_fixed_weights_reject_unknown_and_negative_names():
    with pytest.raises(ValueError, match=r"\['sal'\] not task\(s\) of the model; its tasks are "
                                         r"\['semseg', 'depth', 'normals'\]"):
        run_epochs(FixedWeights({"semseg": 1, "sal": 2}), [[[1.0, 1.0, 1.0]]])
    with pytest.raises(ValueError, match="finite and >= 0"):
        FixedWeights({"depth": -1})


def test_equal_weights_stay_one():
    equal = EqualWeights()
    used, module, _ = run_epochs(equal, [[[1.0, 5.0, 0.1]] * 3])
    assert_rows(used, [[1.0, 1.0, 1.0]] * 3)
    assert equal.objective(torch.tensor([1.0, 5.0, 0.1])).item() == pytest.approx(6.1, rel=1e-6)


# -- GLS -------------------------------------------------------------------------------------
def test_gls_objective_and_gradient_by_hand():
    gls = GLS()
    module = FakeModule(TASKS)
    gls.setup(fake_trainer(), module, "fit")
    losses = torch.tensor([1.0, 4.0, 16.0], requires_grad=True)
    total = gls.objective(losses)
    # (1 * 4 * 16)^(1/3) = 64^(1/3) = 4 ; dG/dL_t = G / (T L_t) = 4/3, 4/12, 4/48
    assert total.item() == pytest.approx(4.0, rel=1e-6)
    total.backward()
    assert losses.grad.tolist() == pytest.approx([4 / 3, 1 / 3, 1 / 12], rel=1e-5)
    # a zero loss (no labelled pixel) is left out: (4 * 16)^(1/2) = 8
    assert gls.objective(torch.tensor([0.0, 4.0, 16.0])).item() == pytest.approx(8.0, rel=1e-6)
    assert gls.objective(torch.zeros(3)).item() == 0.0


def test_gls_logged_weights_by_hand():
    # after a step with L = [1, 4, 16]: 1/L = [1, 0.25, 0.0625], sum 1.3125 -> 3 * (1/L) / 1.3125
    used, _, _ = run_epochs(GLS(), [[[1.0, 4.0, 16.0], [1.0, 1.0, 1.0]]])
    assert_rows(used, [[1.0, 1.0, 1.0], [3 / 1.3125, 0.75 / 1.3125, 0.1875 / 1.3125]])


# -- RLW -------------------------------------------------------------------------------------
def test_rlw_by_hand_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    used, _, _ = run_epochs(RLW(seed=7), [[[1.0, 1.0, 1.0]] * 3])
    assert torch.equal(before, torch.random.get_rng_state())
    for step, w in enumerate(used):
        # by hand: noise from a generator seeded with sha256("7:<step>") (first 8 bytes, little-endian,
        # 63 bits); w_t = 3 * e^{n_t} / sum_i e^{n_i}
        import hashlib

        seed = int.from_bytes(hashlib.sha256(f"7:{step}".encode()).digest()[:8], "little") & (2**63 - 1)
        assert seed == step_seed(7, step)
        n = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
        e = [math.exp(x) for x in n]
        assert w == pytest.approx([3 * x / sum(e) for x in e], rel=1e-6)
        assert sum(w) == pytest.approx(3.0, rel=1e-6)
    assert used[0] != used[1]
    again, _, _ = run_epochs(RLW(seed=7), [[[2.0, 2.0, 2.0]] * 3])  # depends on (seed, step) only
    assert again == used
    other, _, _ = run_epochs(RLW(seed=8), [[[1.0, 1.0, 1.0]] * 3])
    assert other != used


# -- FAMO ------------------------------------------------------------------------------------
def test_famo_logit_updates_by_hand():
    # step 0 L = [1, 1]; step 1 L = [e^-1, e^-0.5]; step 2 L = [e^-1, e^-0.5] (no change)
    steps = [[1.0, 1.0], [math.exp(-1.0), math.exp(-0.5)], [math.exp(-1.0), math.exp(-0.5)], [1.0, 1.0]]
    used, module, _ = run_epochs(FAMO(), [steps])
    lr, wd, b1, b2, eps = 0.025, 1e-3, 0.9, 0.999, 1e-8
    # after step 1: delta = log L(0) - log L(1) = [1, 0.5]; z = softmax(0) = [0.5, 0.5], z.delta = 0.75
    #   g = z * (delta - 0.75) = [0.125, -0.125]; xi = 0 so the weight decay adds nothing
    #   Adam step 1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2 -> xi -= lr * g / (|g| + eps)
    g1 = [0.125, -0.125]
    xi = [-lr * g / (abs(g) + eps) for g in g1]
    m = [(1 - b1) * g for g in g1]
    v = [(1 - b2) * g * g for g in g1]
    w1 = [2 * math.exp(x) / sum(math.exp(y) for y in xi) for x in xi]  # 2 / (1 + e^0.05), ...
    assert w1[0] == pytest.approx(2 / (1 + math.exp(0.05)), abs=1e-6)
    # after step 2: delta = 0 -> g = 0, plus weight decay: g' = wd * xi
    #   m = b1 m + (1-b1) g', v = b2 v + (1-b2) g'^2, bias corrections 1 - b^2
    g2 = [wd * x for x in xi]
    m = [b1 * a + (1 - b1) * g for a, g in zip(m, g2, strict=True)]
    v = [b2 * a + (1 - b2) * g * g for a, g in zip(v, g2, strict=True)]
    xi2 = [x - lr * (a / (1 - b1**2)) / (math.sqrt(c / (1 - b2**2)) + eps)
           for x, a, c in zip(xi, m, v, strict=True)]
    w2 = [2 * math.exp(x) / sum(math.exp(y) for y in xi2) for x in xi2]
    assert_rows(used, [[1.0, 1.0], [1.0, 1.0], w1, w2], tol=1e-7)
    assert w2[0] < w1[0]  # the momentum keeps lowering the weight of the task that improved more


def test_famo_objective_gradient_by_hand():
    famo = FAMO()
    module = FakeModule(TASKS[:2])
    famo.setup(fake_trainer(), module, "fit")
    famo.weights = torch.tensor([0.5, 1.5])  # T z with z = [0.25, 0.75]
    losses = torch.tensor([1.0, 0.5], requires_grad=True)
    famo.objective(losses).backward()
    # c = 0.25/1 + 0.75/0.5 = 1.75; dTotal/dL_t = T (z_t / L_t) / c = 2 * [0.25, 1.5] / 1.75
    assert losses.grad.tolist() == pytest.approx([0.5 / 1.75, 3.0 / 1.75], rel=1e-6)
    assert sum(losses.grad.tolist()) == pytest.approx(2.0)


def test_famo_state_round_trip_continues_identically(tmp_path):
    steps = [[1.0, 2.0], [0.8, 1.9], [0.7, 1.5], [0.6, 1.4], [0.65, 1.2], [0.5, 1.1]]
    straight, _, _ = run_epochs(FAMO(), [steps])
    first = FAMO()
    _, _, trainer = run_epochs(first, [steps[:3]])
    resumed = FAMO()
    resumed.setup(trainer, FakeModule(TASKS[:2]), "fit")
    resumed.load_state_dict(torch.load(_saved(first.state_dict(), tmp_path / "state.pt"), weights_only=True))
    used, _, _ = run_epochs(resumed, [steps[3:]], tasks=TASKS[:2], trainer=trainer)
    assert used == straight[3:]


# -- uncertainty -----------------------------------------------------------------------------
@pytest.mark.parametrize("kendall,total,grad,weights", [
    # uniform: exp(-0) 3 + 0 + exp(-log 2) 4 + log 2 = 5 + log 2 ; d/ds = -exp(-s) L + 1 = [-2, -1]
    (False, 5 + math.log(2), [-2.0, -1.0], [1.0, 0.5]),
    # Kendall factors, semseg (classification: a=1, b=1/2), depth (regression: a=b=1/2):
    #   3 + 0 + 0.5 * 0.5 * 4 + 0.5 log 2 = 4 + 0.5 log 2 ; d/ds = [-3 + 0.5, -0.5*0.5*4 + 0.5]
    (True, 4 + 0.5 * math.log(2), [-2.5, -0.5], [1.0, 0.25]),
])
def test_uncertainty_objective_and_log_variance_step_by_hand(kendall, total, grad, weights):
    lr = 0.01
    uw = UncertaintyWeighting(kendall_factors=kendall, lr=lr)
    module = FakeModule(["semseg", "depth"])
    trainer = fake_trainer()
    uw.setup(trainer, module, "fit")
    assert uw.log_vars.tolist() == [0.0, 0.0]
    uw.load_state_dict({**uw.state_dict(), "log_vars": torch.tensor([0.0, math.log(2)], dtype=torch.float64)})
    uw.on_train_batch_start(trainer, module, {}, 0)
    assert uw.weights.tolist() == pytest.approx(weights, rel=1e-6)  # a exp(-s)
    assert uw.objective(torch.tensor([3.0, 4.0])).item() == pytest.approx(total, rel=1e-6)
    # the log-variances' gradient d total / d s = b - a exp(-s) L is `grad`; Adam's first step
    # moves each s_t by -lr * g_t / (|g_t| + 1e-8), i.e. +lr for these negative gradients
    uw.on_before_optimizer_step(trainer, module, None)
    uw.on_train_batch_end(trainer, module, {}, {}, 0)
    expected = [s - lr * g / (abs(g) + 1e-8) for s, g in zip([0.0, math.log(2)], grad, strict=True)]
    assert uw.log_vars.tolist() == pytest.approx(expected, abs=1e-9)
    factors = [1.0, 1.0] if not kendall else [1.0, 0.5]
    assert uw.weights.tolist() == pytest.approx([f * math.exp(-x) for f, x in zip(factors, expected, strict=True)],
                                                rel=1e-6)


def test_uncertainty_log_variances_are_trained_checkpointed_and_restored(tiny_run, tmp_path):
    from mtcp.module import MultiTaskModule

    cli = cli_main(["fit", *tiny_run, "--balancer=mtcp.balancers.UncertaintyWeighting",
                    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"])
    balancer = _balancer(cli)
    s = balancer.log_vars.detach().clone()
    assert not torch.equal(s, torch.zeros(3, dtype=torch.float64))  # trained
    last = tmp_path / "checkpoints" / "last.ckpt"
    states = torch.load(last, map_location="cpu", weights_only=False)["callbacks"]
    saved = [v for k, v in states.items() if k.startswith("UncertaintyWeighting")]
    assert len(saved) == 1 and torch.equal(saved[0]["log_vars"], s)
    restored = UncertaintyWeighting()
    restored.setup(fake_trainer(), FakeModule(TASKS), "fit")
    restored.load_state_dict(saved[0])
    assert torch.equal(restored.log_vars.detach(), s) and restored.weights.tolist() == pytest.approx(
        torch.exp(-s).tolist(), rel=1e-6)
    # the network's checkpoint holds no balancer state: it reloads and validates with any balancer
    MultiTaskModule.load_from_checkpoint(last, map_location="cpu")
    cli_main(["validate", *tiny_run, f"--ckpt_path={last}", "--trainer.limit_val_batches=1"])
    assert json.loads((tmp_path / "validate_metrics.json").read_text())["val/loss"] > 0


# -- selection from the command line and from YAML ---------------------------------------------
def _balancer(cli) -> Balancer:
    found = [c for c in cli.trainer.callbacks if isinstance(c, Balancer)]
    assert len(found) == 1, found
    return found[0]


def test_selectable_from_the_command_line(tiny_run):
    cli = cli_main([*tiny_run, "--balancer", "mtcp.balancers.LossPrioritization", "--balancer.spread", "7.5",
                    "--balancer.window", "3"], run=False)
    b = _balancer(cli)
    assert type(b) is LossPrioritization and b.spread == 7.5 and b.window == 3 and b.init == "ones"


def test_selectable_from_yaml_configs(tiny_run):
    expected = {
        "lps_nyud": (LossPrioritization, {"spread": 7.5, "window": "epoch"}),
        "lps_pascal": (LossPrioritization, {"spread": 1.6}),
        "equal": (EqualWeights, {}),
        "fixed": (FixedWeights, {"task_weight_map": {"semseg": 1.0, "depth": 1.0, "normals": 10.0}}),
        "dwa": (DWA, {"temperature": 2.0}),
        "uncertainty": (UncertaintyWeighting, {"kendall_factors": False}),
        "gls": (GLS, {}),
        "rlw": (RLW, {"seed": 0}),
        "famo": (FAMO, {"lr": 0.025, "weight_decay": 1e-3}),
    }
    assert {p.stem for p in (ROOT / "configs/balancer").glob("*.yaml")} == set(expected)
    for name, (cls, attrs) in expected.items():
        cli = cli_main([*tiny_run, "--config", str(ROOT / f"configs/balancer/{name}.yaml")], run=False)
        b = _balancer(cli)
        assert type(b) is cls, name
        for key, value in attrs.items():
            assert getattr(b, key) == value, (name, key)
    # stacked: the later file wins
    cli = cli_main([*tiny_run, "--config", str(ROOT / "configs/balancer/lps_nyud.yaml"),
                    "--config", str(ROOT / "configs/balancer/lps_pascal.yaml")], run=False)
    assert _balancer(cli).spread == 1.6
