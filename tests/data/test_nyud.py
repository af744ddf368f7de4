"""NYUD-v2 loader: both published layouts decode to the known fixture labels; bad data fails clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.nyud import build_nyud
from mtcp.data.sources.files import DatasetFileError
from mtcp.data.sources.nyud import NYUDv2

TASKS = ["semseg", "depth", "normals", "edge"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("layout,size,suffix", [("jpg", (480, 640), ".jpg"), ("png", (425, 560), ".png")])
def test_every_label_of_both_layouts_decodes_to_the_fixture_values(tmp_path, layout, size, suffix):
    expected = build_nyud(tmp_path, layout)
    before = snapshot(tmp_path)
    source = NYUDv2(str(tmp_path))
    assert source.layout_suffix == suffix and source.image_size == size
    assert source.num_classes == {"semseg": 40}
    seen = []
    for split in ("train", "val"):
        dataset = source.dataset(split, TASKS)
        for sample in dataset:
            exp = expected[sample["meta"]["id"]]
            seen.append(sample["meta"]["id"])
            h, w = exp["size"]
            assert list(sample) == ["image", *TASKS, "meta"]
            assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, h, w)
            assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
            error = np.abs(sample["image"].permute(1, 2, 0).numpy() - exp["image"] / 255)
            if suffix == ".png":
                assert error.max() < 1e-6
            else:  # JPEG is lossy, even on the smooth fixture image
                assert error.mean() < 2 / 255 and error.max() < 12 / 255
            assert sample["semseg"].dtype == torch.int64
            assert np.array_equal(sample["semseg"].numpy(), exp["semseg"])
            assert set(np.unique(sample["semseg"].numpy())) == set(range(40)) | {255}  # void and all classes
            assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, h, w)
            assert np.array_equal(sample["depth"][0].numpy(), exp["depth"])
            assert (sample["depth"][0, 2:5, 3:7] == 0).all()  # the sensor hole stays invalid
            normals = sample["normals"].permute(1, 2, 0).numpy()
            assert sample["normals"].shape == (3, h, w)
            np.testing.assert_allclose(normals, exp["normals"], atol=1e-6)
            assert (normals[6:9, 10:14] == 0).all()  # zero-normal region (grey/black PNG pixels too)
            norms = np.linalg.norm(normals, axis=2)
            np.testing.assert_allclose(norms[norms > 0], 1.0, atol=1e-5)
            assert np.array_equal(sample["edge"].numpy(), exp["edge"]) and sample["edge"].dtype == torch.int64
            np.testing.assert_allclose(sample["meta"]["intrinsics"].numpy(), exp["intrinsics"], rtol=1e-6)
            assert sample["meta"]["size"].tolist() == [h, w]
    assert sorted(seen) == sorted(expected)
    assert snapshot(tmp_path) == before  # never writes into the dataset root


def test_test_split_is_val_and_only_requested_tasks_are_read(tmp_path):
    build_nyud(tmp_path)
    source = NYUDv2(str(tmp_path))
    test, val = source.dataset("test", ["depth"]), source.dataset("val", ["depth"])
    assert test.ids == val.ids == ["0004", "0005", "0006", "0007", "0008"]
    assert list(test[0]) == ["image", "depth", "meta"]
    for folder in ("segmentation", "normals", "edge"):  # tasks not asked for need no files
        for path in (tmp_path / folder).iterdir():
            path.unlink()
        (tmp_path / folder).rmdir()
    assert len(source.dataset("train", ["depth"])) == 3


def test_intrinsics_scale_with_the_image():
    from mtcp.data.sources.nyud import scaled_intrinsics

    k = scaled_intrinsics((518.86, 519.47, 325.58, 253.74), (480, 640), (240, 320))
    assert k.tolist() == pytest.approx([259.43, 259.735, 162.79, 126.87])


def test_png_layout_intrinsics_are_the_cropped_frame_unless_told_otherwise(tmp_path):
    build_nyud(tmp_path, "png")  # 21 x 28 images standing in for 425 x 560
    k = NYUDv2(str(tmp_path)).dataset("val", ["depth"])[0]["meta"]["intrinsics"]
    # crop at (45, 41): (518.86, 519.47, 325.58 - 41, 253.74 - 45) on 425 x 560, scaled by 28/560 and 21/425
    expected = (518.86 * 28 / 560, 519.47 * 21 / 425, 284.58 * 28 / 560, 208.74 * 21 / 425)
    np.testing.assert_allclose(k.numpy(), expected, rtol=1e-5)
    resized = NYUDv2(str(tmp_path), intrinsics_crop=(0, 0)).dataset("val", ["depth"])[0]["meta"]["intrinsics"]
    np.testing.assert_allclose(resized.numpy(), (518.86 * 28 / 640, 519.47 * 21 / 480, 325.58 * 28 / 640,
                                                 253.74 * 21 / 480), rtol=1e-5)


def test_missing_root_folder_and_split_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"needs the dataset folder: set data.root="):
        NYUDv2(None)
    with pytest.raises(DatasetFileError, match=rf"missing folder '{tmp_path / 'nope'}'.*NYUD-v2 dataset folder"):
        NYUDv2(str(tmp_path / "nope"))
    build_nyud(tmp_path)
    (tmp_path / "gt_sets" / "train.txt").unlink()
    with pytest.raises(DatasetFileError, match=r"gt_sets/train.txt'.*split file"):
        NYUDv2(str(tmp_path))


def test_missing_task_folder_fails_when_the_task_is_requested(tmp_path):
    build_nyud(tmp_path)
    source = NYUDv2(str(tmp_path))
    for path in (tmp_path / "normals").iterdir():
        path.unlink()
    (tmp_path / "normals").rmdir()
    with pytest.raises(DatasetFileError, match=rf"missing folder '{tmp_path / 'normals'}'.*normals labels"):
        source.dataset("val", TASKS)


def test_an_id_without_its_file_fails_at_construction(tmp_path):
    build_nyud(tmp_path)
    (tmp_path / "depth" / "0005.npy").unlink()
    source = NYUDv2(str(tmp_path))
    with pytest.raises(DatasetFileError, match=r"NYUDv2 val.*sample '0005'.*depth/0005.npy"):
        source.dataset("val", TASKS)


def test_truncated_image_names_the_file(tmp_path):
    build_nyud(tmp_path)
    path = tmp_path / "images" / "0005.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    dataset = NYUDv2(str(tmp_path)).dataset("val", TASKS)
    with pytest.raises(DatasetFileError, match=r"sample '0005'.*cannot decode image '.*images/0005.jpg'.*truncated"):
        dataset[1]


def test_label_of_the_wrong_shape_names_the_file(tmp_path):
    build_nyud(tmp_path)
    np.save(tmp_path / "depth" / "0004.npy", np.ones((10, 10), dtype=np.float32))
    dataset = NYUDv2(str(tmp_path)).dataset("val", TASKS)
    with pytest.raises(DatasetFileError, match=r"depth/0004.npy'.*shape \(10, 10\), expected height x width 24 x 32"):
        dataset[0]


def test_semseg_value_out_of_range_names_the_file_and_value(tmp_path):
    build_nyud(tmp_path)
    seg = np.array(Image.open(tmp_path / "segmentation" / "0006.png"))
    seg[0, 0] = 41
    Image.fromarray(seg).save(tmp_path / "segmentation" / "0006.png")
    dataset = NYUDv2(str(tmp_path)).dataset("val", ["semseg"])
    with pytest.raises(DatasetFileError, match=r"segmentation/0006.png'.*value 41 is out of range.*1..40"):
        dataset[2]


def test_skip_bad_samples_skips_with_a_warning_and_a_count(tmp_path):
    build_nyud(tmp_path)
    jpg = tmp_path / "images" / "0005.jpg"
    jpg.write_bytes(jpg.read_bytes()[:100])  # truncated
    (tmp_path / "edge" / "0007.npy").unlink()  # missing
    seg = np.array(Image.open(tmp_path / "segmentation" / "0008.png"))
    seg[3, 3] = 77
    Image.fromarray(seg).save(tmp_path / "segmentation" / "0008.png")
    before = snapshot(tmp_path)
    source = NYUDv2(str(tmp_path), skip_bad_samples=True)
    with pytest.warns(UserWarning, match=r"skipped 3 of 5 bad samples") as record:
        dataset = source.dataset("val", TASKS)
    message = str(record[0].message)
    assert "0005" in message and "0007" in message and "0008" in message
    assert dataset.num_skipped == 3 and dataset.ids == ["0004", "0006"]
    assert [s["meta"]["id"] for s in dataset] == ["0004", "0006"]  # deterministic indexing
    assert snapshot(tmp_path) == before
    with pytest.raises(DatasetFileError):  # off by default
        NYUDv2(str(tmp_path)).dataset("val", TASKS)


def test_normals_signs_flip_axes(tmp_path):
    expected = build_nyud(tmp_path)
    sample = NYUDv2(str(tmp_path), normals_signs=(1, -1, -1)).dataset("val", ["normals"])[0]
    flipped = expected["0004"]["normals"] * np.array([1, -1, -1])
    np.testing.assert_allclose(sample["normals"].permute(1, 2, 0).numpy(), flipped, atol=1e-6)

