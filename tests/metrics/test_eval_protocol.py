"""Evaluation at the labels' original resolution, every sample once: padding, resizing back, DDP, CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import ROOT, run_env
from fixtures.nyud import build_nyud
from fixtures.pascal import build_pascal
from mtcp.data.collate import PadCollate, align_outputs, align_to_labels
from mtcp.data.datamodule import MultiTaskDataModule
from mtcp.data.samplers import UnpaddedDistributedSampler
from mtcp.data.sources.nyud import NYUDv2
from mtcp.data.sources.pascal import PascalContext
from mtcp.data.transforms import Augmentation
from mtcp.metrics import DepthMetrics, NormalsMetrics, SaliencyMetrics, SegmentationMetrics
from mtcp.models import Predictions
from mtcp.module import MultiTaskModule


class FixedNet(nn.Module):
    """A deterministic per-pixel network (1x1 convolutions): its outputs never depend on batch-mates.

    Its depth is positive and its normals unit already, so that its outputs are also valid labels'
    predictions without the module (whose activations keep them so).
    """

    def __init__(self, task_channels: dict[str, int]) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weights = {t: torch.randn(c, 3, generator=generator) for t, c in task_channels.items()}

    def forward(self, image: torch.Tensor) -> Predictions:
        out = {}
        for task, weight in self.weights.items():
            y = torch.einsum("oc,bchw->bohw", weight, image)
            if task == "depth":  # with a depth step where the red channel crosses 0.5
                y = F.softplus(y) + 0.5 + (image[:, :1] > 0.5).float()
            elif task == "normals":
                y = F.normalize(y, dim=1)
            out[task] = y
        return Predictions(out)


# -- padding and resizing -----------------------------------------------------------------
def test_collate_pads_images_and_labels_without_resampling_labels(tmp_path):
    expected = build_pascal(tmp_path)
    dataset = PascalContext(str(tmp_path)).dataset("val", ["semseg", "human_parts", "sal", "normals", "edge"])
    samples = [dataset[i] for i in range(len(dataset))]
    batch = PadCollate((32, 32))(samples)
    assert batch["image"].shape == (5, 3, 32, 32)
    for i, sample in enumerate(samples):
        h, w = sample["meta"]["size"].tolist()
        assert batch["meta"]["input_size"][i].tolist() == [h, w]  # nothing resized: images <= 32 px
        assert torch.equal(batch["image"][i, :, :h, :w], sample["image"])
        assert (batch["image"][i, :, h:, :] == 0).all() and (batch["image"][i, :, :, w:] == 0).all()
        for task in ("semseg", "human_parts", "sal", "edge"):
            label = batch[task][i]
            assert label.shape == (32, 32)  # the input grid: images, labels and outputs share it
            assert np.array_equal(label[:h, :w].numpy(), expected[sample["meta"]["id"]][task])
            assert (label[h:, :] == 255).all() and (label[:, w:] == 255).all()
        assert (batch["normals"][i, :, h:, :] == 0).all() and (batch["normals"][i, :, :, w:] == 0).all()
        assert torch.equal(batch["meta"]["intrinsics"][i], sample["meta"]["intrinsics"])
    assert batch["meta"]["id"] == [s["meta"]["id"] for s in samples]


def _metric_set() -> dict[str, object]:
    return {"semseg": SegmentationMetrics(40), "depth": DepthMetrics(), "normals": NormalsMetrics(),
            "sal": SaliencyMetrics()}


def _labels_with_sal(sample: dict) -> dict:
    """NYUD has no saliency: derive a 0/1/255 map from the semseg label to test SaliencyMetrics too."""
    sal = (sample["semseg"] % 2).clone()
    sal[sample["semseg"] == 255] = 255
    return {**sample, "sal": sal}


@pytest.mark.parametrize("eval_size,mode", [((32, 32), "pad"), ((16, 20), "pad"), ((20, 20), "resize")])
def test_scores_on_padded_batches_equal_scores_at_each_original_resolution(tmp_path, eval_size, mode):
    """Pad-only, downscale-to-fit and resize: predictions are mapped back to every label's grid."""
    build_nyud(tmp_path / "a", "jpg")  # 24 x 32
    build_nyud(tmp_path / "b", "png")  # 21 x 28: a batch mixes both sizes
    tasks = ["semseg", "depth", "normals"]
    samples = [_labels_with_sal(s) for root in ("a", "b") for s in NYUDv2(str(tmp_path / root)).dataset("val", tasks)]
    channels = {"semseg": 40, "depth": 1, "normals": 3, "sal": 1}
    net = FixedNet(channels)
    collate = PadCollate(eval_size, mode)
    batched, single = _metric_set(), _metric_set()
    for start in range(0, len(samples), 3):
        batch = collate(samples[start : start + 3])
        outputs = align_outputs(net(batch["image"]), batch).final
        for task, metric in batched.items():
            assert outputs[task].shape[-2:] == batch[task].shape[-2:]
            metric.update(outputs[task], batch[task])
    for sample in samples:  # reference: one image at a time, no padding at all, prediction resized by hand
        one = collate([sample])
        h, w = sample["meta"]["size"].tolist()
        ih, iw = one["meta"]["input_size"][0].tolist()
        raw = net(one["image"][:, :, :ih, :iw]).final
        for task, metric in single.items():
            pred = F.interpolate(raw[task], size=(h, w), mode="bilinear", align_corners=False)
            metric.update(pred, sample[task][None])
    for task in batched:
        got, want = batched[task].compute(), single[task].compute()
        for key in want:
            assert got[key].item() == pytest.approx(want[key].item(), rel=1e-9, abs=1e-9), (task, key)


def test_downscaled_inputs_rescale_intrinsics_and_keep_labels(tmp_path):
    build_nyud(tmp_path)
    sample = NYUDv2(str(tmp_path)).dataset("val", ["semseg"])[0]
    batch = PadCollate((14, 16), "pad")([sample])  # 24 x 32 -> fits as 12 x 16, 2 rows of padding
    assert batch["meta"]["input_size"].tolist() == [[12, 16]]
    assert batch["image"].shape == (1, 3, 14, 16) and (batch["image"][0, :, 12:, :] == 0).all()
    assert torch.allclose(batch["meta"]["intrinsics"][0], sample["meta"]["intrinsics"] * 0.5)
    assert torch.equal(batch["semseg"][0, :24, :32], sample["semseg"])  # labels are never resampled
    resized = PadCollate((20, 20), "resize")([sample])
    assert resized["meta"]["input_size"].tolist() == [[20, 20]]
    k = sample["meta"]["intrinsics"]
    assert torch.allclose(resized["meta"]["intrinsics"][0], k * torch.tensor([20 / 32, 20 / 24, 20 / 32, 20 / 24]))
    pred = torch.randn(1, 4, 20, 20)
    aligned = align_to_labels(pred, resized["meta"], (24, 32))
    assert torch.allclose(aligned, F.interpolate(pred, size=(24, 32), mode="bilinear", align_corners=False))


def test_the_data_module_batches_real_layouts(tmp_path):
    build_pascal(tmp_path)
    source = PascalContext(str(tmp_path))
    dm = MultiTaskDataModule(source, tasks=["semseg", "human_parts", "sal"], batch_size=3, num_workers=0,
                             augmentation=Augmentation(scales=(0.75, 1.25), scale_range=True, crop_size=(16, 16),
                                                       rotation=20.0), eval_size=(32, 32))
    assert dm.task_channels == {"semseg": 21, "human_parts": 7, "sal": 1}
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (3, 3, 16, 16) and train["semseg"].shape == (3, 16, 16)
    batch = PadCollate()([source.dataset("train", ["sal"])[i] for i in range(3)])  # training without a crop
    assert batch["image"].shape[-2:] == batch["sal"].shape[-2:] == (22, 26)  # padded to the largest
    val = list(dm.val_dataloader())
    assert [b["image"].shape[0] for b in val] == [3, 2] and all(b["image"].shape[-2:] == (32, 32) for b in val)
    default = MultiTaskDataModule(source, tasks=["sal"], num_workers=0)
    assert default.eval_collate.input_size == (512, 512)  # the source's image_size
    with pytest.raises(ValueError, match=r"data.root='/elsewhere' differs from the source's root"):
        MultiTaskDataModule(source, tasks=["sal"], root="/elsewhere")


# -- distributed evaluation -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate(root: str, out: str | None, rank: int = 0, world: int = 1, port: int = 0) -> dict[str, float]:
    """Run the module's real evaluation step over NYUD val; with world > 1 as one DDP rank (gloo)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    dm = MultiTaskDataModule(NYUDv2(root), tasks=["semseg", "depth", "normals"], batch_size=2, num_workers=0,
                             eval_size=(32, 32))
    module = MultiTaskModule(dm.task_channels, net=FixedNet).eval()
    loader = dm.val_dataloader()
    ids = []
    with torch.no_grad():
        for batch in loader:
            ids += batch["meta"]["id"]
            module._eval_step("val", batch)
    results: dict[str, float] = {}
    for name, metric in [*module.metrics["val"].items(), *module.coherence_metrics["val"].items()]:
        results.update({f"{name}/{k}": float(v) for k, v in metric.compute().items()})
    results["num_batches"] = len(loader)
    if world > 1:
        assert isinstance(loader.sampler, UnpaddedDistributedSampler)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, ids)
        results["ids"] = gathered
        if rank == 0 and out is not None:
            Path(out).write_text(json.dumps(results))
        dist.destroy_process_group()
    else:
        results["ids"] = ids
    return results


def _ddp_worker(rank: int, root: str, out: str, world: int, port: int) -> None:
    _evaluate(root, out, rank, world, port)


def test_ddp_evaluation_over_an_odd_split_equals_one_process(tmp_path):
    """2 gloo ranks, 5 validation samples (3 + 2, none padded): exactly the single-process metrics."""
    build_nyud(tmp_path, train=1, val=5)
    single = _evaluate(str(tmp_path), None)
    out = tmp_path / "ddp.json"
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path), str(out), 2, _free_port()), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    assert ddp.pop("ids") == [["0002", "0004", "0006"], ["0003", "0005"]]  # every sample exactly once
    assert single.pop("ids") == ["0002", "0003", "0004", "0005", "0006"]
    ddp.pop("num_batches"), single.pop("num_batches")
    assert set(ddp) == set(single) and "depth_normals/depth_normals_mean" in ddp
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


# -- the module and the command line ----------------------------------------------------------
def test_module_logs_delta_m_and_coherence(tmp_path):
    import lightning as L

    build_nyud(tmp_path / "data")
    reference = tmp_path / "st.json"
    reference.write_text(json.dumps({"test/semseg/miou": 2.0, "test/depth/rmse": 1.5, "test/normals/mean": 40.0}))
    dm = MultiTaskDataModule(NYUDv2(str(tmp_path / "data")), tasks=["semseg", "depth", "normals"], batch_size=2,
                             num_workers=0, eval_size=(32, 32))
    module = MultiTaskModule(dm.task_channels, net=FixedNet, single_task_metrics=[str(reference)])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        run(module, datamodule=dm, verbose=False)
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        multi = {f"{stage}/semseg/miou": m[f"{stage}/semseg/miou"], f"{stage}/depth/rmse": m[f"{stage}/depth/rmse"],
                 f"{stage}/normals/mean": m[f"{stage}/normals/mean"]}
        by_hand = ((multi[f"{stage}/semseg/miou"] - 2.0) / 2.0 - (multi[f"{stage}/depth/rmse"] - 1.5) / 1.5
                   - (multi[f"{stage}/normals/mean"] - 40.0) / 40.0) / 3 * 100
        assert m[f"{stage}/delta_m"] == pytest.approx(by_hand, rel=1e-5)
        for key in ("depth_normals_mean", "depth_normals_a11", "semseg_depth_f"):
            assert f"{stage}/coherence/{key}" in m, key
        assert 0.0 <= m[f"{stage}/coherence/depth_normals_mean"] <= 180.0


def _tiny_override(tmp_path: Path) -> Path:
    """A stacked config: a tiny backbone and decoder instead of Swin-S (the paper's config otherwise)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "model:\n  net:\n    init_args:\n      backbone:\n        init_args:\n"
        "          name: test_convnext\n          pretrained: false\n          img_size: null\n"
        "          model_kwargs: null\n      dim: 16\n      num_queries: 4\n      query_layers: 1\n"
        "      query_ffn_dim: 32\n"
    )
    return path


def _cli_args(config: str, root: Path, tmp_path: Path) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / config), "--config", str(_tiny_override(tmp_path)),
        f"--data.root={root}", "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
        "--trainer.sync_batchnorm=false", "--data.num_workers=0", "--data.augmentation.crop_size=[32,32]",
        "--data.eval_size=[32,32]", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
    ]


@pytest.mark.parametrize("config,builder", [("nyud.yaml", build_nyud), ("pascal.yaml", build_pascal)])
def test_fit_fast_dev_run_with_the_paper_config(tmp_path, config, builder):
    from mtcp.cli import cli_main

    builder(tmp_path / "data")
    cli = cli_main(["fit", *_cli_args(config, tmp_path / "data", tmp_path), "--trainer.fast_dev_run=true"])
    assert cli is not None and cli.trainer.state.finished
    assert type(cli.model.net).__name__ == "MTCPNet"
    balancer = [c for c in cli.trainer.callbacks if type(c).__name__ == "LossPrioritization"]
    assert len(balancer) == 1 and balancer[0].spread == (7.5 if config == "nyud.yaml" else 1.6)
    assert cli.datamodule.source.root == tmp_path / "data"


def test_missing_root_fails_clearly_from_the_cli(tmp_path):
    from mtcp.cli import cli_main

    args = [a for a in _cli_args("nyud.yaml", tmp_path, tmp_path) if not a.startswith("--data.root")]
    with pytest.raises(ValueError, match=r"NYUDv2 needs the dataset folder: set data.root="):
        cli_main(["fit", *args, "--trainer.fast_dev_run=true"])


def test_predict_writes_every_sample_at_its_original_size(tmp_path):
    from mtcp.cli import cli_main

    expected = build_nyud(tmp_path / "data", "png")  # 21 x 28, evaluated on a smaller 16 x 16 grid
    out = tmp_path / "pred"
    args = _cli_args("nyud.yaml", tmp_path / "data", tmp_path)
    args = [a if not a.startswith("--data.eval_size") else "--data.eval_size=[16,16]" for a in args]
    cli_main(["predict", *args, "--config", str(ROOT / "configs/predict.yaml"),
              f"--trainer.callbacks.init_args.output_dir={out}", "--trainer.callbacks.init_args.colormap=false"])
    val_ids = sorted(expected)[3:]
    for task, suffix in (("semseg", ".png"), ("depth", ".npy"), ("normals", ".npy")):
        assert sorted(p.name for p in (out / task).iterdir()) == [i + suffix for i in val_ids], task
    semseg = np.array(Image.open(out / "semseg" / f"{val_ids[0]}.png"))
    depth = np.load(out / "depth" / f"{val_ids[0]}.npy")
    normals = np.load(out / "normals" / f"{val_ids[0]}.npy")
    assert semseg.shape == (21, 28) and semseg.dtype == np.uint8 and semseg.max() < 40
    assert depth.shape == (21, 28) and depth.dtype == np.float32 and (depth > 0).all()
    assert normals.shape == (21, 28, 3) and np.allclose(np.linalg.norm(normals, axis=2), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match=r"lies inside the dataset folder"):
        cli_main(["predict", *args, "--config", str(ROOT / "configs/predict.yaml"),
                  f"--trainer.callbacks.init_args.output_dir={tmp_path / 'data' / 'pred'}"])


def test_predict_writes_pascal_parts_and_saliency_at_each_image_size(tmp_path):
    from mtcp.cli import cli_main

    expected = build_pascal(tmp_path / "data")
    out = tmp_path / "pred"
    cli_main(["predict", *_cli_args("pascal.yaml", tmp_path / "data", tmp_path), "--config",
              str(ROOT / "configs/predict.yaml"), f"--trainer.callbacks.init_args.output_dir={out}"])
    for sample_id in sorted(expected)[3:]:
        size = expected[sample_id]["size"]
        parts = np.array(Image.open(out / "human_parts" / f"{sample_id}.png"))
        sal = np.array(Image.open(out / "sal" / f"{sample_id}.png"))
        semseg = np.array(Image.open(out / "semseg" / f"{sample_id}.png"))
        assert parts.shape == sal.shape == semseg.shape == size
        assert parts.max() < 7 and semseg.max() < 21 and sal.dtype == np.uint8


def test_data_root_for_a_source_without_a_folder_is_rejected(tmp_path, tiny_run):
    from mtcp.cli import cli_main

    with pytest.raises(ValueError, match=r"data.root is set but data source .*ProceduralScenes reads no dataset"):
        cli_main(["fit", *tiny_run, f"--data.root={tmp_path}"])


@pytest.mark.slow
def test_cli_validate_under_ddp_equals_one_process(tmp_path):
    """The real path: `mtcp validate` with strategy=ddp on 2 CPU processes over an odd split."""
    build_nyud(tmp_path / "data", train=2, val=5)
    base = [sys.executable, "-m", "mtcp", "validate", "--config", str(ROOT / "configs/procedural.yaml"),
            "--data.source=mtcp.data.sources.nyud.NYUDv2", f"--data.root={tmp_path / 'data'}",
            "--data.eval_size=[32,32]", "--data.eval_batch_size=2", "--data.num_workers=0",
            "--model.net.init_args.backbone.init_args.name=test_convnext", "--model.net.init_args.dim=8",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--pictures.every_n_epochs=0"]
    metrics = {}
    for name, extra in (("one", ["--trainer.devices=1"]),
                        ("ddp", ["--trainer.devices=2", "--trainer.strategy=ddp"])):
        run_dir = tmp_path / name
        cmd = [*base, *extra, f"--trainer.default_root_dir={run_dir}", f"--trainer.logger.init_args.save_dir={run_dir}"]
        proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        metrics[name] = json.loads((run_dir / "validate_metrics.json").read_text())
    assert set(metrics["one"]) == set(metrics["ddp"]) and "val/coherence/depth_normals_mean" in metrics["one"]
    for key, value in metrics["one"].items():
        if key.startswith("val/loss"):  # per-batch mean losses depend on the batching; metrics do not
            continue
        assert metrics["ddp"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
