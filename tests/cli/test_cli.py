"""The command line: fit/validate/test on procedural scenes, clear errors, real 2-process DDP."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import ROOT, ddp_fit_command, run_env
from mtcp.cli import cli_main
from mtcp.data.datamodule import MultiTaskDataModule
from mtcp.data.sources.procedural import ProceduralScenes
from mtcp.module import MultiTaskModule


def test_fit_saves_checkpoints_and_validate_writes_metrics(tiny_run, tmp_path):
    cli_main(["fit", *tiny_run])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert any(p.name.startswith("best-") for p in (tmp_path / "checkpoints").iterdir())
    assert (tmp_path / "logs").is_dir()  # CSV logger
    cli_main(["validate", *tiny_run, f"--ckpt_path={last}"])
    metrics = json.loads((tmp_path / "validate_metrics.json").read_text())
    for key in ("val/semseg/miou", "val/depth/rmse", "val/normals/mean", "val/loss"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    assert 0.0 <= metrics["val/semseg/miou"] <= 100.0 and metrics["val/depth/rmse"] > 0
    # a notebook can rebuild the exact network from the checkpoint alone
    loaded = MultiTaskModule.load_from_checkpoint(last, map_location="cpu")
    saved = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    assert loaded.net.backbone.name == "test_convnext" and list(loaded.task_channels) == ["semseg", "depth", "normals"]
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())


def test_checkpoint_from_other_tasks_fails_naming_them(tiny_run, tmp_path):
    cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"trained for tasks .*normals.*built for .*sal"):
        cli_main(["test", *tiny_run, "--data.tasks=[semseg,sal]", f"--ckpt_path={last}"])


@pytest.mark.parametrize("override,needle", [
    ("--data.tasks=[semseg,heat]", r"unknown task.*'heat'.*known tasks are \['depth', 'edge'"),
    ("--data.source.init_args.image_size=[0,64]", r"image_size must be two positive integers"),
    ("--data.batch_size=0", r"data.batch_size"),
])
def test_bad_settings_fail_with_a_clear_error(tiny_run, override, needle):
    with pytest.raises(ValueError, match=needle):
        cli_main(["fit", *tiny_run, override])


def test_command_line_prints_one_line_errors(python, tmp_path):
    cmd = [python, "-m", "mtcp", "fit", "--config", str(ROOT / "configs/procedural.yaml"), "--data.tasks=[semseg,foo]"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "mtcp: error: data.tasks: unknown task(s) ['foo']; known tasks are" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_task_the_source_does_not_provide_is_rejected():
    class DepthOnly(ProceduralScenes):
        tasks = ("depth",)

    expected = r"\['semseg'\] not provided by data source DepthOnly; it provides \['depth'\]"
    with pytest.raises(ValueError, match=expected):
        MultiTaskDataModule(DepthOnly(), tasks=["depth", "semseg"])


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights_and_parameters(tmp_path):
    """`mtcp fit` with strategy=ddp on 2 CPU processes: both ranks agree on everything they learn."""
    out = tmp_path / "ranks"
    recorder = json.dumps({"class_path": "helpers.recorders.RankStateRecorder", "init_args": {"out_dir": str(out)}})
    cmd = ddp_fit_command(tmp_path, f"--trainer.callbacks+={recorder}")
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["pid"] != r1["pid"]
    assert len(r0["weights"]) == 4  # one entry per training step
    assert torch.equal(r0["weights"], r1["weights"])
    assert r0["state"].keys() == r1["state"].keys()
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    changed = [n for n, v in r0["state"].items() if not torch.equal(v, r0["initial"][n])]
    assert len(changed) > len(r0["state"]) // 2  # they trained, and stayed in lock-step
    assert (Path(tmp_path) / "checkpoints" / "last.ckpt").is_file()


def test_predict_writes_files_and_colour_mapped_pictures_for_procedural_ids(tiny_run, tmp_path):
    cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    out = tmp_path / "predictions"
    writer = json.dumps({"class_path": "mtcp.callbacks.PredictionWriter",
                         "init_args": {"output_dir": str(out), "colormap": True}})
    cli_main(["predict", *tiny_run, "--trainer.limit_predict_batches=1", "--return_predictions=false",
              f"--trainer.callbacks+={writer}", f"--ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"])
    import numpy as np
    from PIL import Image

    semseg = np.asarray(Image.open(out / "semseg" / "test" / "000000.png"))
    assert semseg.shape == (64, 64) and semseg.max() < 11  # class ids of the 11 procedural classes
    colour = np.asarray(Image.open(out / "semseg" / "test" / "000000_color.png"))
    assert colour.shape == (64, 64, 3)
    depth = np.load(out / "depth" / "test" / "000000.npy")
    assert depth.shape == (64, 64) and (depth > 0).all()
    assert np.asarray(Image.open(out / "normals" / "test" / "000000_color.png")).shape == (64, 64, 3)
    assert len(list((out / "depth" / "test").glob("*.npy"))) == 4  # one batch of the debug config
