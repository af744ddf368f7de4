"""Exact resume after a kill mid-epoch: a run SIGKILLed between epoch ends and resumed from its last
step checkpoint ends bit for bit where the uninterrupted run ends (weights, optimizer and scheduler
states, the balancer's weights and open window, the validation metrics), on one process with 2
loader workers and on 2 DDP processes (gloo) killed together.

The runs: procedural scenes, LPS with a 3-step window (so the checkpoint holds an open window),
6 steps per epoch for 2 epochs, ``last.ckpt`` every 4 steps. The kill comes after step 10, so the
resume starts from the step-8 checkpoint: mid-epoch 1, two batches into that epoch's order.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN, ddp_fit_command, run_env

RUN = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
       "--data.num_workers=2", "--balancer=mtcp.balancers.LossPrioritization", "--balancer.init_args.window=3",
       "--balancer.init_args.spread=7.5", "--last_checkpoint.every_n_train_steps=4"]
KILL = "--trainer.callbacks+=" + json.dumps({"class_path": "helpers.killer.KillAtStep", "init_args": {"step": 10}})


def batch_log(path: Path) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": "helpers.batch_log.BatchLog",
                                                 "init_args": {"path": str(path)}})


def steps(path: Path) -> list[tuple[int, list[str]]]:
    """(step, sample ids) of every logged training step (rank 0's file)."""
    return [(r["step"], r["ids"]) for r in map(json.loads, path.read_text().splitlines())]


def single(folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtcp", "fit", *TINY_RUN, f"--trainer.default_root_dir={folder}",
            f"--trainer.logger.init_args.save_dir={folder}", f"--checkpoint.dirpath={folder / 'checkpoints'}",
            *RUN, *extra]


def ddp(folder: Path, *extra: str) -> list[str]:
    return ddp_fit_command(folder, *RUN, *extra)


def run(cmd: list[str], folder: Path) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cmd, cwd=folder, env=run_env(), capture_output=True, text=True, timeout=600)


def assert_same(a, b, where: str = "") -> None:
    """Nested checkpoint contents equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def last_val_row(folder: Path) -> dict[str, str]:
    rows = [r for p in sorted(folder.glob("**/metrics.csv")) for r in csv.DictReader(p.open()) if r.get("val/loss")]
    return {k: v for k, v in rows[-1].items() if k.startswith("val/") and v}


@pytest.mark.slow
@pytest.mark.parametrize("command", [single, ddp], ids=["one_process", "ddp_2_processes"])
def test_a_run_killed_mid_epoch_resumes_bit_for_bit(command, tmp_path):
    whole, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    proc = run(command(whole, batch_log(tmp_path / "whole.jsonl")), whole)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = run(command(killed, KILL, batch_log(tmp_path / "killed.jsonl")), killed)
    assert proc.returncode != 0 and not (killed / "checkpoints" / "last.ckpt.partial").exists(), proc.stderr[-3000:]
    mid = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (mid["epoch"], mid["global_step"]) == (1, 8)  # the step checkpoint, two batches into epoch 1
    assert mid["callbacks"]["LossPrioritization"]["history"]["count"] == 2  # an open balancer window
    proc = run(command(killed, f"--ckpt_path={killed / 'checkpoints' / 'last.ckpt'}",
                       batch_log(tmp_path / "killed.jsonl")), killed)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the data: steps 0-9 before the kill, then from the step-8 checkpoint the uninterrupted run's steps 8-11
    uninterrupted = steps(tmp_path / "whole.jsonl")
    assert [s for s, _ in uninterrupted] == list(range(12))
    assert steps(tmp_path / "killed.jsonl") == uninterrupted[:10] + uninterrupted[8:]
    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 12)
    assert_same(a["state_dict"], b["state_dict"], "state_dict")
    assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer_states")
    assert_same(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
    assert_same(a["callbacks"]["LossPrioritization"], b["callbacks"]["LossPrioritization"], "balancer")
    assert last_val_row(whole) == last_val_row(killed)
