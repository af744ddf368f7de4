"""Shared test settings: no network, W&B off, small CPU thread pools."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

# Property tests (tests/properties) draw the same examples on every run, so a red CI is never a
# coin toss and needs no example database; HYPOTHESIS_PROFILE=random draws new ones each run.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("random", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

ROOT = Path(__file__).resolve().parents[1]

#: CLI arguments for a seconds-long run: tiny images, a tiny backbone, a few batches
TINY_RUN = [
    "--config", str(ROOT / "configs/procedural.yaml"),
    "--config", str(ROOT / "configs/trainer/debug.yaml"),
    "--data.source.init_args.image_size=[64,64]",
    "--model.net.init_args.backbone.init_args.name=test_convnext",
    "--model.net.init_args.dim=16",
    "--trainer.enable_progress_bar=false",
]


def ddp_fit_command(tmp_path: Path, *extra: str) -> list[str]:
    """`mtcp fit` on 2 gloo CPU processes with the tiny settings, writing into ``tmp_path``."""
    return [
        sys.executable, "-m", "mtcp", "fit",
        "--config", str(ROOT / "configs/procedural.yaml"),
        "--config", str(ROOT / "configs/trainer/debug.yaml"),
        "--config", str(ROOT / "configs/trainer/ddp.yaml"),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.sync_batchnorm=false",  # GPU-only
        "--data.source.init_args.image_size=[64,64]",
        "--model.net.init_args.backbone.init_args.name=test_convnext", "--model.net.init_args.dim=16",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'checkpoints'}",
        *extra,
    ]


def run_env() -> dict[str, str]:
    """Environment for CLI subprocesses: offline, single-threaded BLAS, tests/helpers importable."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture
def tiny_run(tmp_path: Path) -> list[str]:
    """TINY_RUN writing into a temporary directory."""
    return TINY_RUN + [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'checkpoints'}",
    ]


@pytest.fixture
def python() -> str:
    return sys.executable
