"""Checkpoints a user relies on: ``last.ckpt`` is this run's newest state, checkpointing and logging
can be turned off, and a checkpoint reloads offline even when its backbone said ``pretrained: true``."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import ROOT, run_env
from mtcp.cli import cli_main
from mtcp.module import MultiTaskModule


def _spoil(epoch: int) -> str:
    spec = {"class_path": "helpers.recorders.SpoilValidationOfEpoch", "init_args": {"epoch": epoch}}
    return "--trainer.callbacks+=" + json.dumps(spec)


def _state(ckpt) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_last_checkpoint_is_the_final_epoch_even_when_it_is_not_the_best(tiny_run, tmp_path):
    cli = cli_main(["fit", *tiny_run, "--trainer.max_epochs=3", "--trainer.limit_train_batches=2", _spoil(2)])
    ckpts = tmp_path / "checkpoints"
    best = [p for p in ckpts.iterdir() if p.name.startswith("best-")]
    assert len(best) == 1 and best[0].name != "best-002.ckpt"  # epoch 2's val/loss is not the best
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 6
    final = {k: v.cpu() for k, v in cli.model.state_dict().items()}
    assert all(torch.equal(v, final[k]) for k, v in last["state_dict"].items())
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([best[0].name, "last.ckpt"])


def test_make_fit_twice_in_one_folder_validates_the_second_run(tiny_run, tmp_path):
    """`make fit` = fit, then validate <checkpoint.dirpath>/last.ckpt; a second run in the same folder
    replaces last.ckpt (no last-v1.ckpt), so validate scores the second run's model."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=2", "--seed_everything=1"])
    first_val = float(first.trainer.callback_metrics["val/loss"])
    second = cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=2", "--seed_everything=2"])
    second_val = float(second.trainer.callback_metrics["val/loss"])
    assert not (tmp_path / "checkpoints" / "last-v1.ckpt").exists()
    final = {k: v.cpu() for k, v in second.model.state_dict().items()}
    assert all(torch.equal(v, final[k]) for k, v in _state(last).items())
    cli_main(["validate", *tiny_run, f"--ckpt_path={last}"])
    validated = json.loads((tmp_path / "validate_metrics.json").read_text())["val/loss"]
    assert validated == pytest.approx(second_val, rel=1e-6) and validated != pytest.approx(first_val, rel=1e-3)


def test_make_fit_the_notebooks_and_the_readme_use_the_configured_last_checkpoint():
    dirpath = yaml.safe_load((ROOT / "configs/procedural.yaml").read_text())["checkpoint"]["dirpath"]
    last = f"{dirpath}/last.ckpt"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"mtcp validate .*--ckpt_path " + re.escape(last), makefile)
    assert last in (ROOT / "notebooks/inference.ipynb").read_text()
    assert "last-v" not in (ROOT / "README.md").read_text()


def test_checkpointing_off_writes_no_checkpoint(tiny_run, tmp_path):
    cli = cli_main(["fit", *tiny_run, "--trainer.enable_checkpointing=false", "--trainer.limit_train_batches=1"])
    from lightning.pytorch.callbacks import ModelCheckpoint

    assert not any(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks)
    assert not (tmp_path / "checkpoints").exists()
    assert cli.trainer.global_step == 1


def test_logger_off_trains_without_the_learning_rate_monitor(tiny_run, tmp_path):
    cli = cli_main(["fit", *tiny_run, "--trainer.logger=false", "--trainer.limit_train_batches=1"])
    from lightning.pytorch.callbacks import LearningRateMonitor

    assert cli.trainer.loggers == [] and cli.trainer.global_step == 1
    assert not any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_checkpoint_save_last_is_refused_with_the_reason(tiny_run):
    with pytest.raises(ValueError, match=r"checkpoint.save_last: last.ckpt is written by last_checkpoint"):
        cli_main([*tiny_run, "--checkpoint.save_last=true"], run=False)


def test_a_pretrained_backbone_checkpoint_loads_offline(tiny_run, tmp_path, monkeypatch):
    """The checkpoint says `pretrained: true` (timm's hub weights); with HF_HUB_OFFLINE=1 building that
    backbone fails, but test, predict and load_from_checkpoint never build it with weights."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pretrained = "--model.net.init_args.backbone.init_args.pretrained=true"
    with pytest.raises(Exception, match=r"(?i)offline|local|hub|connect"):  # no cached weights: the hub is needed
        cli_main([*tiny_run, pretrained], run=False)
    cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"]["net"]["init_args"]["backbone"]["init_args"]["pretrained"] = True
    torch.save(checkpoint, last)
    loaded = MultiTaskModule.load_from_checkpoint(last, map_location="cpu")
    assert all(torch.equal(v, checkpoint["state_dict"][k]) for k, v in loaded.state_dict().items())
    cli_main(["test", *tiny_run, pretrained, f"--ckpt_path={last}"])
    assert json.loads((tmp_path / "test_metrics.json").read_text())["test/loss"] > 0
    cli_main(["predict", *tiny_run, pretrained, "--trainer.limit_predict_batches=1", f"--ckpt_path={last}"])


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_last_checkpoint_whole(tiny_run, tmp_path):
    """SIGKILL while ``last.ckpt`` of epoch 1 is half written: the file a resume reads is epoch 0's, whole
    (`mtcp.checkpoint_io`); the half-written bytes are only in ``last.ckpt.partial``."""
    marker = tmp_path / "writing"
    slow = {"class_path": "helpers.slow_writer.SlowLastWrite", "init_args": {"marker": str(marker)}}
    cmd = [sys.executable, "-m", "mtcp", "fit", *tiny_run, "--trainer.max_epochs=3",
           "--trainer.callbacks+=" + json.dumps(slow)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the second last.ckpt write never started"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert marker.read_text() == str(last) + ".partial"  # the half write went beside, not into, last.ckpt
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0 and "state_dict" in checkpoint
    with pytest.raises((RuntimeError, EOFError, pickle.UnpicklingError)):  # what a plain writer would leave
        torch.load(str(last) + ".partial", map_location="cpu", weights_only=False)


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a file: what a malicious checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_a_checkpoint_whose_pickle_runs_code_is_refused(tiny_run, tmp_path):
    """The project pins weights_only=True (today also torch's default) for --ckpt_path and load_from_checkpoint."""
    cli_main(["fit", *tiny_run, "--trainer.max_epochs=1"])
    good = tmp_path / "checkpoints" / "last.ckpt"
    assert isinstance(MultiTaskModule.load_from_checkpoint(good), MultiTaskModule)  # ours load with weights_only
    evil = tmp_path / "evil.ckpt"
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    checkpoint["payload"] = _RunsCode(str(tmp_path / "pwned"))
    torch.save(checkpoint, evil)
    with pytest.raises(pickle.UnpicklingError):
        MultiTaskModule.load_from_checkpoint(evil)
    proc = subprocess.run([sys.executable, "-m", "mtcp", "test", *tiny_run, f"--ckpt_path={evil}"], cwd=tmp_path,
                          env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "mtcp: error: the checkpoint holds objects beyond tensors" in proc.stderr
    assert "--weights_only=false" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "pwned").exists()  # nothing ran
    # the payload is real: loaded without the guard (what torch did before 2.6), it runs
    torch.load(evil, map_location="cpu", weights_only=False)
    assert (tmp_path / "pwned").exists()
