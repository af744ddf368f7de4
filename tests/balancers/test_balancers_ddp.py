"""Balancers in real runs: identical weights on 2 DDP ranks (equal to a single-process computation
from the pooled losses), and a resumed run that continues with exactly the same weights."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from test_balancers import run_epochs

from conftest import TINY_RUN, ddp_fit_command, run_env
from mtcp.balancers import DWA, FAMO, GLS, RLW, EqualWeights, FixedWeights, LossPrioritization, UncertaintyWeighting
from mtcp.cli import cli_main


def _callback(cls: str, **init_args) -> str:
    spec = {"class_path": f"helpers.balancer_probe.{cls}", "init_args": init_args}
    return "--trainer.callbacks+=" + json.dumps(spec)


def _ddp_run(tmp_path: Path, balancer_args: list[str], steps: int) -> tuple[dict, dict]:
    out = tmp_path / "ranks"
    cmd = ddp_fit_command(tmp_path, f"--trainer.limit_train_batches={steps}", "--trainer.limit_val_batches=1",
                          *balancer_args, _callback("BalancerProbe", out_dir=str(out)))
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert len(r0["weights"]) == len(r1["weights"]) == steps
    return r0, r1


def _assert_same_state(a, b) -> None:
    """Nested balancer states equal (tensors exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_state(x, y)
    else:
        assert a == b


def _single_process(balancer, losses: torch.Tensor) -> torch.Tensor:
    """The weights a single process computes when fed ``losses`` [steps, T] (one epoch)."""
    used, _, _ = run_epochs(balancer, [losses.tolist()])
    return torch.tensor(used, dtype=torch.float64)


#: every exported balancer, as (command-line arguments, the same balancer built in-process, learns from losses)
DDP_CASES = {
    "lps": (["--balancer", "mtcp.balancers.LossPrioritization", "--balancer.window", "2",
             "--balancer.init", "equal", "--balancer.spread", "7.5"],
            lambda: LossPrioritization(spread=7.5, window=2, init="equal"), True),
    "famo": (["--balancer", "mtcp.balancers.FAMO"], FAMO, True),
    "dwa": (["--balancer", "mtcp.balancers.DWA", "--balancer.window", "2"], lambda: DWA(window=2), True),
    "gls": (["--balancer", "mtcp.balancers.GLS"], GLS, True),
    "uncertainty": (["--balancer", "mtcp.balancers.UncertaintyWeighting"], UncertaintyWeighting, True),
    "rlw": (["--balancer", "mtcp.balancers.RLW", "--balancer.seed", "3"], lambda: RLW(seed=3), False),
    "fixed": (["--balancer", "mtcp.balancers.FixedWeights", "--balancer.weights", "{depth: 2.0}"],
              lambda: FixedWeights({"depth": 2.0}), False),
    "equal": (["--balancer", "mtcp.balancers.EqualWeights"], EqualWeights, False),
}


def test_the_ddp_cases_cover_every_balancer():
    import mtcp.balancers as package

    covered = {type(make()).__name__ for _, make, _ in DDP_CASES.values()}
    assert covered == set(package.__all__) - {"Balancer"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DDP_CASES))
def test_ddp_ranks_agree_and_match_the_pooled_single_process_weights(tmp_path, name):
    balancer_args, make, learns = DDP_CASES[name]
    r0, r1 = _ddp_run(tmp_path, balancer_args, steps=6)
    # identical weights on both ranks at every step, computed by each rank (not only broadcast)
    assert torch.equal(r0["weights"], r1["weights"])
    _assert_same_state(r0["balancer_state"], r1["balancer_state"])
    # the ranks saw different batches: their own losses differ ...
    assert not torch.allclose(r0["losses"], r1["losses"])
    # ... and the weights are those of one process fed the pooled (rank-averaged) losses
    pooled = (r0["losses"] + r1["losses"]) / 2
    expected = _single_process(make(), pooled)
    torch.testing.assert_close(r0["weights"], expected, atol=2e-5, rtol=0)
    if learns:
        assert not torch.allclose(expected, torch.ones_like(expected))  # the weights did change in the run
        # rank 0's own losses alone would have given other weights: the pooling is what is tested
        assert not torch.allclose(_single_process(make(), r0["losses"]), expected, atol=2e-5, rtol=0)


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_resumed_run_continues_with_the_same_weights_and_metrics(tmp_path, restore_determinism):
    """2 epochs straight vs 1 epoch + resume from last.ckpt + 1 epoch: same weight history, same
    final parameters and metrics. LPS with a 3-step window over 4-step epochs, so the checkpoint
    falls inside a window (a partial window is part of the state). The training data of an epoch
    depend only on (seed, epoch) (`EpochShuffleSampler`), so the resumed run sees the same batches."""

    def args(run: str, probe_dir: str, *extra: str) -> list[str]:
        d = tmp_path / run
        return ["fit", *TINY_RUN, "--trainer.max_epochs=2", "--trainer.limit_val_batches=2",
                "--trainer.deterministic=true", f"--trainer.default_root_dir={d}",
                f"--trainer.logger.init_args.save_dir={d}", f"--checkpoint.dirpath={d / 'checkpoints'}",
                "--balancer", "mtcp.balancers.LossPrioritization", "--balancer.window", "3",
                "--balancer.init", "equal", "--balancer.spread", "1.6",
                _callback("BalancerProbe", out_dir=str(tmp_path / probe_dir)), *extra]

    def probe(name: str) -> dict:
        return torch.load(tmp_path / name / "rank0.pt", weights_only=True)

    cli_main(args("straight", "straight_probe"))
    cli_main(args("interrupted", "first_probe", _callback("StopAfterEpochs", epochs=1)))
    last = tmp_path / "interrupted" / "checkpoints" / "last.ckpt"
    cli_main(args("interrupted", "resumed_probe", f"--ckpt_path={last}"))
    straight, first, resumed = probe("straight_probe"), probe("first_probe"), probe("resumed_probe")
    assert len(straight["weights"]) == 8
    assert first["steps"] == [1, 2, 3, 4] and resumed["steps"] == [5, 6, 7, 8]
    w = straight["weights"]
    assert torch.equal(first["weights"], w[:4])
    # weights: 1 (steps 0-2), equal-contribution weights (3-5), ratio rule (6-7): they do change
    assert torch.equal(w[0], torch.ones(3)) and not torch.equal(w[3], w[0]) and not torch.equal(w[6], w[3])
    assert torch.equal(resumed["weights"], w[4:])
    assert torch.equal(resumed["losses"], straight["losses"][4:])
    for key, value in straight["state"].items():
        assert torch.equal(value, resumed["state"][key]), key
    val = {k: v for k, v in straight["metrics"].items() if k.startswith("val/")}
    assert val and {k: resumed["metrics"][k] for k in val} == val


def _gone(pid: int, seconds: float) -> bool:
    """True once process ``pid`` no longer exists (or is a zombie), waiting up to ``seconds``."""
    import os
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "State:\tZ" in status.read_text():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize(("spoiler", "step", "message"), [
    # an infinite depth label on rank 1: rank 0's message names what rank 1 saw (both reached the check)
    ("InfiniteDepthLabel", 2, r"non-finite training loss for task\(s\) \['depth'\] at step 2 \(rank 1: "
                              r"task\(s\) \['depth'\], batch ids \[.+\]\).*before the parameters were updated"),
    # a NaN gradient born in rank 1's backward, losses finite: DDP averages it into both ranks' gradients
    ("NanGradientOnRank", 1, r"non-finite gradient at step 1 although every task loss was finite, for 1 "
                             r"parameter\(s\): net\.backbone\.\S+; training stopped on every rank before"),
])
def test_ddp_a_non_finite_step_on_one_rank_stops_every_rank_at_that_step(tmp_path, spoiler, step, message):
    """Rank 1 alone goes non-finite at ``step``: both ranks stop at that step, before the update, with
    one message; nobody hangs and nothing half-trained is saved."""
    import time

    out = tmp_path / "pids"
    bad = {"class_path": f"helpers.recorders.{spoiler}", "init_args": {"rank": 1, "step": step, "out_dir": str(out)}}
    cmd = ddp_fit_command(tmp_path, f"--trainer.limit_train_batches={step + 3}",
                          "--trainer.callbacks+=" + json.dumps(bad))
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert re.search(r"mtcp: error: " + message, proc.stderr), proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert elapsed < 240  # a rank left waiting in a collective would sit out gloo's 30-minute timeout
    for rank in (0, 1):  # neither process is left running (a few seconds to be reaped)
        pid = int((out / f"rank{rank}.pid").read_text())
        assert _gone(pid, seconds=15), f"rank {rank} (pid {pid}) still running"
    assert not (tmp_path / "checkpoints").exists()  # stopped inside epoch 0: nothing half-trained was saved


def test_a_training_step_reads_the_device_twice_after_backward(tiny_run, monkeypatch):
    """Device-to-host reads (``.cpu()``, ``.item()``, ``.tolist()``, ``bool()``, ``float()``, ``.numpy()``)
    in the code that runs every step: none in ``training_step`` (forward, losses, objective); exactly one
    in the balancer's ``on_before_optimizer_step`` (the pooled losses, for the check and the rule) and one
    in the gradient check's (`FiniteGradients`: are all gradients finite). The balancer's other hooks
    work on that host copy and on its host-side weights."""
    from torch.overrides import TorchFunctionMode

    from mtcp.callbacks import FiniteGradients

    reads = {"cpu", "item", "tolist", "__bool__", "__float__", "__int__", "numpy"}

    class CountReads(TorchFunctionMode):
        """Counts reads of device tensors; what a `.cpu()` returns, and what is computed from such host
        copies alone, is host data (reading it again costs nothing on a GPU)."""

        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []
            self.host: set[int] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            on_host = bool(tensors) and all(id(t) in self.host for t in tensors)
            result = func(*args, **(kwargs or {}))
            if name in reads and not on_host:
                self.names.append(name)
            if isinstance(result, torch.Tensor) and (on_host or name == "cpu"):
                self.host.add(id(result))
            return result

    counted: dict[str, list[list[str]]] = {"training_step": [], "on_before_optimizer_step": [], "gradients": []}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            with CountReads() as mode:
                result = fn(*args, **kwargs)
            counted[name].append(mode.names)
            return result
        return wrapper

    cli = cli_main([*tiny_run, "--balancer", "mtcp.balancers.LossPrioritization", "--balancer.window", "2",
                    "--balancer.init", "equal",
                    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"], run=False)
    balancer = cli.trainer.callbacks[[type(c).__name__ for c in cli.trainer.callbacks].index("LossPrioritization")]
    cli.model.training_step = counting("training_step", cli.model.training_step)
    balancer.on_before_optimizer_step = counting("on_before_optimizer_step", balancer.on_before_optimizer_step)
    monkeypatch.setattr(FiniteGradients, "on_before_optimizer_step",
                        counting("gradients", FiniteGradients.on_before_optimizer_step))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert counted["training_step"] == [[], [], []]
    assert counted["on_before_optimizer_step"] == [["cpu"]] * 3
    assert counted["gradients"] == [["__bool__"]] * 3
    assert not torch.equal(balancer.weights, torch.ones(3))  # the rule did learn from those reads
