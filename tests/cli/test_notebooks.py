"""Both notebooks execute top to bottom (fast mode) and produce their figures."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, TINY_RUN
from mtcp.cli import cli_main


def execute(name: str, env: dict[str, str], workdir: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    old = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return nb


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
def test_explore_notebook_runs(tmp_path):
    (tmp_path / "notebooks").mkdir()
    nb = execute("explore.ipynb", {"MTCP_NOTEBOOK_FAST": "1", "OMP_NUM_THREADS": "2"}, ROOT / "notebooks")
    assert images(nb) >= 4  # samples, predictions, weight history, coherence


@pytest.mark.slow
def test_inference_notebook_runs_on_a_checkpoint_and_a_folder_of_pictures(tmp_path):
    cli_main(["fit", *TINY_RUN, "--trainer.limit_train_batches=1", f"--trainer.default_root_dir={tmp_path}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--checkpoint.dirpath={tmp_path / 'ck'}"])
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (70, 50), (120, 80, 40)).save(tmp_path / "photos" / "photo.jpg")
    Image.new("RGB", (900, 33), (20, 80, 40)).save(tmp_path / "photos" / "wide.png")  # wider than the grid
    nb = execute("inference.ipynb", {"MTCP_CHECKPOINT": str(tmp_path / "ck" / "last.ckpt"),
                                     "MTCP_IMAGES": str(tmp_path / "photos")}, tmp_path)
    shapes = next(o for c in nb.cells if c.cell_type == "code" and "tuple(p.shape)" in c.source
                  for o in c.outputs if "data" in o)["data"]["text/plain"]
    assert "'photo': {" in shapes and "(1, 50, 70)" in shapes  # depth at the photo's odd size
    assert "'wide': {" in shapes and "(1, 33, 900)" in shapes
    assert images(nb) >= 1
