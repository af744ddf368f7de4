"""Every sweep file is valid for W&B and every sampled run parses and runs with the real CLI.

The sampling uses wandb's own sweep engine (`sweeps`), and the command is built with the
agent's own helpers, so `${args_json_file}` holds exactly what a real agent would write.
"""

import json
import os
from pathlib import Path

import pytest
import sweeps
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from conftest import ROOT
from mtcp.cli import cli_main

SWEEP_FILES = sorted((ROOT / "configs/sweeps").glob("*.yaml"))
FAST = ["--trainer.fast_dev_run=true", "--data.batch_size=2", "--data.num_workers=0",
        "--data.source.init_args.image_size=[64,64]", "--trainer.enable_progress_bar=false"]


def agent_args(sweep: dict, run_config: dict, workdir: Path) -> list[str]:
    """The argument list the W&B agent would start, minus the interpreter."""
    command = {"args": run_config}
    json_file = workdir / "args.json"
    json_file.write_text(create_sweep_command_args(command)["args_json"][0])
    argv = []
    for token in create_sweep_command(sweep["command"]):
        if token == "${env}":
            continue
        argv.append(str(json_file) if token == "${args_json_file}" else token)
    assert argv[:3] == [".venv/bin/python", "-m", "mtcp"], "runs must use the project's environment"
    return [str(ROOT / a) if a.startswith("configs/") else a for a in argv[3:]]


def test_there_are_sweep_files():
    assert SWEEP_FILES


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_is_valid_and_sampled_runs_run(path, tmp_path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(sweep) == []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for _ in range(2):
        run = sweeps.next_run(sweep, [])
        args = agent_args(sweep, run.config, tmp_path)
        values = json.loads((tmp_path / "args.json").read_text())
        assert set(values) == set(sweep["parameters"])
        cli = cli_main(args + FAST + [f"--trainer.default_root_dir={tmp_path}"])
        # every swept value reached the parsed run config under its own key
        for key, value in values.items():
            assert cli.config.fit[key] == value, key
    assert os.environ["WANDB_MODE"] == "disabled"


def test_an_unknown_swept_key_fails(tmp_path, monkeypatch):
    sweep = yaml.safe_load(SWEEP_FILES[0].read_text())
    sweep["parameters"] = {"balancer.init_args.spreed": {"values": [2.0]}}
    monkeypatch.chdir(tmp_path)
    run = sweeps.next_run(sweep, [])
    args = agent_args(sweep, run.config, tmp_path)
    with pytest.raises(SystemExit):
        cli_main(args + FAST)


def test_parallel_sweep_runs_write_into_their_own_folders(tmp_path, monkeypatch):
    """Two runs of one sweep (the agent sets WANDB_SWEEP_ID and WANDB_RUN_ID): the second run leaves
    every file of the first as it was and writes its own checkpoint, logs and metrics beside them."""
    import hashlib

    sweep = yaml.safe_load(SWEEP_FILES[0].read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SWEEP_ID", "s1")
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
             "--data.batch_size=2", "--data.num_workers=0", "--data.source.init_args.image_size=[64,64]",
             "--model.net.init_args.backbone.init_args.name=test_convnext", "--model.net.init_args.dim=16",
             "--trainer.enable_progress_bar=false"]

    def files() -> dict[str, str]:
        return {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in tmp_path.rglob("*") if p.is_file() and p.name != "args.json"}

    written = {}
    for run_id in ("r1", "r2"):
        monkeypatch.setenv("WANDB_RUN_ID", run_id)
        before = files()
        cli_main(agent_args(sweep, sweeps.next_run(sweep, []).config, tmp_path) + short)
        after = files()
        changed = [path for path, digest in before.items() if after.get(path) != digest]
        assert not changed, changed  # nothing of the other run touched
        written[run_id] = set(after) - set(before)
    for run_id, paths in written.items():
        assert f"runs/procedural/checkpoints/sweeps/s1/{run_id}/last.ckpt" in paths, sorted(paths)
        assert any(p.startswith(f"runs/procedural/sweeps/s1/{run_id}/") for p in paths)
