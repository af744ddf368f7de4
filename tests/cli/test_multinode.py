"""Multi-node settings resolve through Lightning's launchers (SLURM, torchrun) without running them:
the cluster environment, world size and ranks the CLI's trainer gets from each launcher's variables."""

from __future__ import annotations

import re
import shlex

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from conftest import ROOT, TINY_RUN
from mtcp.cli import cli_main

MULTI_NODE = ["--trainer.num_nodes=2", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.strategy=ddp"]

SLURM = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "mtcp-nyud", "SLURM_JOB_ID": "77",
         "SLURM_NODELIST": "node[0-1]", "SLURM_NODEID": "1", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
TORCHRUN = {"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "TORCHELASTIC_RUN_ID": "r1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}


@pytest.fixture
def restore_rank_zero():
    """Building a trainer with these variables makes this process "rank 3" for Lightning's rank-zero-only
    helpers (logging, loggers' experiments); the following tests run as rank 0 again."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    saved = rank_zero_only.rank, fabric_rank_zero.rank
    yield
    rank_zero_only.rank, fabric_rank_zero.rank = saved


@pytest.mark.parametrize("env,kind,global_rank,node_rank,local_rank", [
    (SLURM, SLURMEnvironment, 3, 1, 1), (TORCHRUN, TorchElasticEnvironment, 2, 1, 0)], ids=["slurm", "torchrun"])
def test_the_launchers_variables_give_the_ranks(env, kind, global_rank, node_rank, local_rank, monkeypatch, tmp_path,
                                                restore_rank_zero):
    for key in [*SLURM, *TORCHRUN]:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cli = cli_main([*TINY_RUN, *MULTI_NODE, f"--trainer.default_root_dir={tmp_path}"], run=False)
    trainer = cli.trainer
    assert isinstance(trainer.strategy.cluster_environment, kind)
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 2, 4)
    assert (trainer.global_rank, trainer.node_rank, trainer.local_rank) == (global_rank, node_rank, local_rank)


def test_the_sbatch_scripts_command_matches_its_allocation_and_parses(capsys, tmp_path):
    script = (ROOT / "scripts/slurm/train_nyud.sbatch").read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", script).group(1))
    tasks = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", script).group(1))
    command = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    assert command[1] == ".venv/bin/mtcp"
    args = command[2:]
    assert f"--trainer.num_nodes={nodes}" in args and f"--trainer.devices={tasks}" in args
    # it parses (nyud swapped for the embedded scenes: no dataset here)
    args = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
    args = [a.replace("configs/nyud.yaml", "configs/procedural.yaml") for a in args]
    drop = args.index("--data.root")
    args = args[:drop] + args[drop + 2:]
    with pytest.raises(SystemExit) as stop:
        cli_main([*args, "--print_config"])
    assert stop.value.code in (0, None)
    assert "num_nodes: 2" in capsys.readouterr().out
