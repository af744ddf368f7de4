"""`mtcp check-data`: every defect of a dataset copy in one run, a non-zero exit, and a clean bill for a
good copy; `fit --check_data true` stops before training on a broken one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, run_env
from fixtures.nyud import build_nyud
from mtcp.data.check import check_data, contract_problems
from mtcp.data.sources.nyud import NYUDv2
from mtcp.data.sources.procedural import ProceduralScenes

TASKS = ["semseg", "depth", "normals", "edge"]


def nyud_args(root) -> list[str]:
    """The NYUD data preset on a fixture tree, with the tiny model of the procedural preset."""
    return ["--config", str(ROOT / "configs/procedural.yaml"), "--config", str(ROOT / "configs/data/nyud.yaml"),
            f"--data.root={root}", "--data.tasks=[semseg,depth,normals,edge]",
            "--model.net.init_args.backbone.init_args.name=test_convnext", "--model.net.init_args.dim=16"]


def check_data_command(root, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtcp", "check-data", *nyud_args(root), *extra]


def break_nyud(root) -> dict[str, str]:
    """Seven defects at once; {where: what the report must say}."""
    (root / "depth" / "0002.npy").unlink()  # a missing file
    image = root / "images" / "0003.jpg"
    image.write_bytes(image.read_bytes()[:200])  # a truncated download
    seg = np.asarray(Image.open(root / "segmentation" / "0004.png")).copy()
    seg[0, 0] = 200
    Image.fromarray(seg).save(root / "segmentation" / "0004.png")  # a class id beyond the 40 classes
    normals = np.load(root / "normals" / "0005.npy")
    normals[0, 0] = np.nan
    np.save(root / "normals" / "0005.npy", normals)  # NaN
    np.save(root / "depth" / "0006.npy", np.ones((10, 10), dtype=np.float32))  # another size than its image
    (root / "edge" / "0007.npy").unlink()  # a second missing file, another task
    (root / "images" / "9999.jpg").write_bytes(image.read_bytes())  # a file no split lists
    return {"train 0002": "depth/0002.npy", "train 0003": "cannot decode image", "val/test 0004": "value 200",
            "val/test 0005": "NaN", "val/test 0006": "shape (10, 10)", "val/test 0007": "edge/0007.npy",
            "folder": "9999.jpg"}


def test_every_defect_is_reported_in_one_run_with_a_nonzero_exit(tmp_path):
    build_nyud(tmp_path, train=3, val=5)
    expected = break_nyud(tmp_path)
    proc = subprocess.run(check_data_command(tmp_path, "--workers=2"), cwd=tmp_path, env=run_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for where, what in expected.items():
        assert any(where in line and what in line for line in lines), (where, what, proc.stdout)
    assert lines[-1].startswith("summary: 6 errors, 5 warnings; 4 samples read"), lines[-1]
    # what can be read is still checked: 0002 lacks only its depth, 0007 only its edge map
    assert lines[1].startswith("  train: 2 samples read") and lines[2].startswith("  val/test: 2 samples read")


def test_a_good_tree_passes_with_a_summary_and_warns_only_about_what_is_legal(tmp_path):
    build_nyud(tmp_path, train=3, val=5)
    proc = subprocess.run(check_data_command(tmp_path), cwd=tmp_path, env=run_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1].startswith("summary: 0 errors, 4 warnings; 8 samples read")
    assert "3 samples; the published split has 795" in proc.stdout  # a tiny copy is legal, but not NYUD-v2
    assert "images of another size than the layout's 480x640: 24x32 (3)" in proc.stdout
    strict = subprocess.run(check_data_command(tmp_path, "--strict=true"), cwd=tmp_path, env=run_env(),
                            capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1


def test_normals_in_another_sign_convention_are_flagged(tmp_path):
    build_nyud(tmp_path, train=2, val=2)
    for path in (tmp_path / "normals").iterdir():  # a floor seen from above: up (y < 0) and facing the camera
        normals = np.load(path)
        normals[(normals != 0).any(axis=2)] = (0.0, -0.8, -0.6)
        np.save(path, normals)

    def messages(signs):
        report = check_data(NYUDv2(str(tmp_path), normals_signs=signs), TASKS)
        assert report.ok()  # legal values: warnings, not errors
        return " ".join(f.message for f in report.warnings if f.where == "normals")

    assert messages((1.0, 1.0, 1.0)) == ""
    assert "z axis is probably flipped" in messages((1.0, 1.0, -1.0))
    assert "y axis is probably flipped" in messages((1.0, -1.0, 1.0))


def test_a_missing_label_folder_is_one_error_and_the_other_tasks_are_still_read(tmp_path):
    build_nyud(tmp_path, train=2, val=3)
    for path in (tmp_path / "edge").iterdir():
        path.unlink()
    (tmp_path / "edge").rmdir()
    report = check_data(NYUDv2(str(tmp_path)), TASKS, workers=0)
    assert [(f.where, "missing folder" in f.message) for f in report.errors] == [("edge", True)]
    assert {n: s.samples for n, s in report.splits.items()} == {"train": 2, "val/test": 3}


def test_the_procedural_scenes_keep_the_sample_contract():
    report = check_data(ProceduralScenes(train_size=6, val_size=3, test_size=3, image_size=(24, 32)),
                        ["semseg", "depth", "normals", "sal"], workers=0)
    assert report.ok(strict=True), report.text()
    assert {n: s.samples for n, s in report.splits.items()} == {"train": 6, "val": 3, "test": 3}


@pytest.mark.parametrize("change, needle", [
    (lambda s: s.update(image=s["image"].double()), "image must be float32 [3, H, W]"),
    (lambda s: s.update(semseg=s["semseg"][:-1]), "semseg must be int64 [H, W] = [4, 5]"),
    (lambda s: s["semseg"].__setitem__((0, 0), 7), "semseg holds class ids [7]; expected 0..4 or 255"),
    (lambda s: s["depth"].__setitem__((0, 0, 0), -1.0), "depth holds negative values"),
    (lambda s: s["depth"].__setitem__((0, 0, 0), float("inf")), "depth holds NaN or infinite values"),
    (lambda s: s["normals"].__setitem__((0, 0, 0), 0.5), "normals holds vectors that are neither unit length"),
    (lambda s: s["meta"].update(size=torch.tensor([5, 4])), "meta.size must be the label size [4, 5]"),
])
def test_each_contract_breach_is_named(change, needle):
    sample = {"image": torch.rand(3, 4, 5), "semseg": torch.zeros(4, 5, dtype=torch.int64),
              "depth": torch.ones(1, 4, 5), "normals": torch.tensor([0.0, 0.0, -1.0])[:, None, None].repeat(1, 4, 5),
              "meta": {"id": "a", "intrinsics": torch.ones(4), "size": torch.tensor([4, 5])}}
    assert contract_problems(sample, ["semseg", "depth", "normals"], {"semseg": 5}) == []
    change(sample)
    problems = contract_problems(sample, ["semseg", "depth", "normals"], {"semseg": 5})
    assert len(problems) == 1 and needle in problems[0], problems


def test_fit_can_check_the_data_first(tmp_path):
    build_nyud(tmp_path, train=2, val=2)
    (tmp_path / "depth" / "0001.npy").unlink()
    proc = subprocess.run([sys.executable, "-m", "mtcp", "fit", *nyud_args(tmp_path), "--check_data=true",
                           "--trainer.max_epochs=1"], cwd=tmp_path, env=run_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "mtcp: error: --check_data: the dataset has problems" in proc.stderr
    assert "ERROR train 0001: depth: missing file" in proc.stderr
    assert not (tmp_path / "runs" / "nyud" / "checkpoints").exists()  # stopped before training
