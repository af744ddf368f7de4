"""`mtcp predict` on a folder of the user's own pictures (`ImageFolder`): one output per picture and task
at the picture's own size, in the training data's palette, with a legend; the class counts and palettes
come from the checkpoint; bad folders and stages get clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtcp.cli import cli_main
from mtcp.data.sources.image_folder import ImageFolder
from mtcp.visualize import PALETTES, voc_colormap

SIZES = {"a": (37, 53), "trip/b": (90, 41), "trip/deeper/c": (64, 64)}  # (H, W): odd sizes, one over the grid


@pytest.fixture
def photos(tmp_path):
    """Three pictures of odd sizes (JPEG and PNG, one in a sub-folder), and a text file that is not one."""
    root = tmp_path / "photos"
    gen = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        path = root / (name + (".png" if name == "a" else ".jpg"))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gen.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    (root / "notes.txt").write_text("not a picture")
    return root


@pytest.fixture
def checkpoint(tiny_run, tmp_path):
    cli_main(["fit", *tiny_run, "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    return tmp_path / "checkpoints" / "last.ckpt"


def test_predict_on_a_folder_writes_every_picture_at_its_own_size_in_the_dataset_palette(
        tiny_run, tmp_path, photos, checkpoint):
    # the checkpoint keeps how its classes are drawn (the procedural scenes: NYUD-like palette)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["MultiTaskDataModule"]
    assert state["drawing"]["palettes"] == {"semseg": "nyud40"}
    out = tmp_path / "predictions"  # the writer's default folder under trainer.default_root_dir
    # no writer configured and no class counts given: mtcp predict adds the writer, the checkpoint gives the rest
    cli = cli_main(["predict", *tiny_run, "--data.source", "mtcp.data.sources.ImageFolder",
                    f"--data.root={photos}", "--data.source.init_args.image_size=[48,48]",
                    f"--ckpt_path={checkpoint}"])
    assert cli.datamodule.source.num_classes == {"semseg": 11}
    for name, (h, w) in SIZES.items():
        semseg = np.asarray(Image.open(out / "semseg" / f"{name}.png"))
        assert semseg.shape == (h, w) and semseg.max() < 11
        assert np.load(out / "depth" / f"{name}.npy").shape == (h, w)
        assert np.load(out / "normals" / f"{name}.npy").shape == (h, w, 3)
        colour = np.asarray(Image.open(out / "semseg" / f"{name}_color.png"))
        # drawn in the NYUD-40 palette: class k is VOC colour k + 1 (the procedural class 0 is not black)
        np.testing.assert_array_equal(colour, voc_colormap()[semseg.astype(np.int64) + 1])
        assert np.asarray(Image.open(out / "depth" / f"{name}_color.png")).shape == (h, w, 3)
    assert sorted(p.name for p in (out / "depth").rglob("*.npy")) == ["a.npy", "b.npy", "c.npy"]
    legend = np.asarray(Image.open(out / "semseg" / "legend.png"))
    swatches = {tuple(c) for c in legend.reshape(-1, 3)}
    assert all(tuple(PALETTES["nyud40"][k]) in swatches for k in range(11))  # one swatch per class


def test_the_voc_colour_map_is_the_published_one():
    table = voc_colormap()
    # entries of the VOC devkit's colour map as its label PNGs show them
    assert table[0].tolist() == [0, 0, 0]  # background
    assert table[1].tolist() == [128, 0, 0]  # aeroplane
    assert table[15].tolist() == [192, 128, 128]  # person
    assert table[20].tolist() == [0, 64, 128]  # tv/monitor
    assert table[255].tolist() == [224, 224, 192]  # ignore
    assert len({tuple(c) for c in table}) == 256


def test_a_glob_selects_pictures_and_ids_keep_the_folders(photos):
    source = ImageFolder(str(photos / "trip" / "**" / "*.jpg"), num_classes={"semseg": 3})
    ds = source.dataset("test", ["semseg"])
    samples = [ds[i] for i in range(len(ds))]
    assert [s["meta"]["id"] for s in samples] == ["b", "deeper/c"]
    assert samples[0]["image"].shape == (3, 90, 41) and samples[0]["meta"]["size"].tolist() == [90, 41]
    assert set(samples[0]) == {"image", "meta"}  # no labels


def test_pictures_are_turned_upright_by_their_exif_orientation(tmp_path):
    picture = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    picture.save(tmp_path / "phone.jpg", exif=exif)
    sample = ImageFolder(str(tmp_path), num_classes={}).dataset("test", [])[0]
    assert sample["image"].shape == (3, 30, 20)


def test_bad_folders_and_stages_get_clear_errors(tmp_path, tiny_run, photos):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no JPEG or PNG file"):
        ImageFolder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"neither a folder nor a glob"):
        ImageFolder(str(tmp_path / "nowhere"))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    ds = ImageFolder(str(photos)).dataset("test", [])
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(ValueError, match=r"num_classes is not set.*--ckpt_path"):
        _ = ImageFolder(str(photos)).num_classes
    (photos / "broken.jpg").unlink()
    with pytest.raises(ValueError, match=r"ImageFolder has no labels, so it cannot fit"):
        cli_main(["fit", *tiny_run, "--data.source", "mtcp.data.sources.ImageFolder",
                  f"--data.root={photos}", "--data.source.init_args.num_classes={semseg: 11}"])
