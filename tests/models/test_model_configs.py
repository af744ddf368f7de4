"""Every network config under configs/model/ builds through the CLI and trains every parameter
(parametrised over the files, so a new config is covered without editing this test)."""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT
from mtcp.bench import random_batch
from mtcp.cli import cli_main
from mtcp.models.backbone import weights_from_checkpoint

MODEL_CONFIGS = sorted((ROOT / "configs/model").glob("*.yaml"))


def _stack(path) -> list[str]:
    """A network config over the embedded default; an option preset (no class_path) over MT-CP tiny too."""
    under = ["configs/procedural.yaml"] + ([] if "class_path" in path.read_text() else ["configs/model/mtcp_tiny.yaml"])
    return [a for c in [*(ROOT / u for u in under), path] for a in ("--config", str(c))]


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=[p.stem for p in MODEL_CONFIGS])
def test_model_config_builds_and_every_parameter_gets_a_gradient(path):
    hub = (["--config", str(ROOT / "tests/fixtures/random_encoder.yaml")]  # offline: random weights
           if "mask2former-swin" in path.read_text() else [])
    with weights_from_checkpoint():  # random weights: no download
        cli = cli_main(_stack(path) + hub, run=False)
    module = cli.model
    batch = random_batch(module.task_channels, 1, 64, 96, torch.device("cpu"))
    module.train()
    module.task_losses(module(batch["image"]), batch).sum().backward()
    # on the graph (what DDP with find_unused_parameters=False needs); a gradient can still be exactly 0
    # at initialisation (timm's ResNets zero the last BN of every block)
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:10]
    assert sum(int(p.grad.any()) for p in module.parameters()) > len(list(module.parameters())) // 2
