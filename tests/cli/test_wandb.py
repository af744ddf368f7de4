"""`mtcp fit` with the W&B preset, offline: the run directory holds the config, metrics, pictures, the
task-weight chart and the checkpoints as a model artifact."""

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, run_env
from helpers.wandb_log import artifacts, config_keys, history_keys


@pytest.mark.slow
def test_offline_wandb_run_has_config_metrics_and_prediction_panels(tmp_path):
    env = run_env()
    env["WANDB_MODE"] = "offline"
    env["WANDB_DIR"] = str(tmp_path)
    cmd = [
        sys.executable, "-m", "mtcp", "fit",
        "--config", str(ROOT / "configs/procedural.yaml"),
        "--config", str(ROOT / "configs/trainer/debug.yaml"),
        "--config", str(ROOT / "configs/logger/wandb.yaml"),
        "--data.source.init_args.image_size=[64,64]",
        "--model.net.init_args.backbone.init_args.name=test_convnext", "--model.net.init_args.dim=16",
        "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--trainer.logger.init_args.log_model=true",
        "--balancer", "mtcp.balancers.DWA", "--balancer.window", "1",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'checkpoints'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    files = runs[0] / "files"
    # the fully resolved config, as a file and as the run config
    saved = yaml.safe_load((files / "mtcp_config.yaml").read_text())
    assert saved["balancer"]["class_path"] == "mtcp.balancers.DWA"
    assert saved["data"]["source"]["init_args"]["image_size"] == [64, 64]
    # the run log (run-*.wandb) holds the config and every metric's history
    log = next(runs[0].glob("run-*.wandb"))
    assert {"model", "data", "balancer", "trainer", "task_channels"} <= config_keys(log)
    logged = history_keys(log)
    for key in ("train/loss_semseg", "train/weight_depth", "train/proj_loss_normals", "val/semseg/miou",
                "val/normals/mean", "val/depth/rmse", "lr-AdamW", "val/predictions/count"):
        assert key in logged, (key, sorted(logged))
    # one prediction panel per validation epoch
    panels = list((files / "media" / "images" / "val").glob("predictions_*.png"))
    assert len(panels) == 2, list(files.rglob("*.png"))
    # the weights of all tasks in one line chart: a table of (step, task, weight) rows
    tables = list((files / "media" / "table" / "train").glob("weight_history_table_*.table.json"))
    assert len(tables) == 1, list(files.rglob("*.json"))
    import json

    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "lineKey", "lineVal"]
    rows = table["data"]
    assert {r[1] for r in rows} == {"semseg", "depth", "normals"}
    steps = sorted({r[0] for r in rows})
    assert steps == list(range(len(steps))) and len(rows) == 3 * len(steps)  # every optimizer step, every task
    assert len({round(r[2], 6) for r in rows}) > 1  # DWA changed the weights
    # the checkpoints as a model artifact (log_model=true): last.ckpt's content under model.ckpt
    models = [(name, paths) for kind, name, paths in artifacts(log) if kind == "model"]
    assert models and all(paths == ["model.ckpt"] for _, paths in models), artifacts(log)
