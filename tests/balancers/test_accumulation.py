"""Gradient accumulation: a balancer observes one loss vector per optimizer step, the mean over its
micro-batches (the loss of the batch the step's gradient is for), and keeps its weights within the step.

A real run with ``accumulate_grad_batches=2`` is compared with the balancer's rule fed offline, one
step at a time, with the mean of each pair of micro-batch losses the run recorded. (The run is not
compared with a run at twice the batch size: BatchNorm's batch statistics and the per-batch
normalisation of the masked losses make the network's losses differ, so nothing about the balancer
could be checked exactly that way; the rule's input and output can.)
"""

from __future__ import annotations

import json

import pytest
import torch
from test_balancers import run_epochs

from mtcp.balancers import DWA, FixedWeights, LossPrioritization
from mtcp.cli import cli_main

CASES = {
    "lps": (["--balancer=mtcp.balancers.LossPrioritization", "--balancer.init_args.spread=7.5",
             "--balancer.init_args.window=1"], lambda: LossPrioritization(spread=7.5, window=1)),
    "dwa": (["--balancer=mtcp.balancers.DWA", "--balancer.init_args.window=1"], lambda: DWA(window=1)),
    "fixed": (["--balancer=mtcp.balancers.FixedWeights", "--balancer.init_args.weights={semseg: 2.0, depth: 0.5}"],
              lambda: FixedWeights(weights={"semseg": 2.0, "depth": 0.5})),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_balancer_learns_once_per_optimizer_step_from_the_mean_micro_batch_loss(name, tiny_run, tmp_path):
    args, build = CASES[name]
    probe = {"class_path": "helpers.balancer_probe.BalancerProbe", "init_args": {"out_dir": str(tmp_path / "p")}}
    cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=8", "--trainer.accumulate_grad_batches=2",
              "--trainer.limit_val_batches=1", *args, "--trainer.callbacks+=" + json.dumps(probe)])
    run = torch.load(tmp_path / "p" / "rank0.pt", weights_only=True)
    losses, used = run["losses"], run["weights"]  # per micro-batch: [8, T]
    assert run["steps"] == [0, 1, 1, 2, 2, 3, 3, 4]  # 4 optimizer steps of 2 micro-batches
    assert torch.equal(used[0::2], used[1::2])  # the weights are the step's, not the micro-batch's
    step_means = ((losses[0::2] + losses[1::2]) / 2).tolist()
    expected, _, _ = run_epochs(build(), [step_means])
    for got, want in zip(used[0::2].tolist(), expected, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    if name != "fixed":  # the rule did move the weights, so the comparison says something
        assert len({tuple(w) for w in used[0::2].tolist()}) > 1
