"""PASCAL-Context loader: every task decodes to the known fixture labels; bad data fails clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fixtures.pascal import build_pascal, write_parts_mat
from mtcp.data.sources.files import DatasetFileError
from mtcp.data.sources.pascal import PascalContext, label_map_edges, nominal_intrinsics
from mtcp.data.sources.pascal_context_classes import NORMALS_VALID_CLASSES
from mtcp.data.sources.pascal_parts import PART_IDS

TASKS = ["semseg", "human_parts", "sal", "normals", "edge"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_every_label_decodes_to_the_fixture_values(tmp_path):
    expected = build_pascal(tmp_path)
    before = snapshot(tmp_path)
    source = PascalContext(str(tmp_path))
    assert source.num_classes == {"semseg": 21, "human_parts": 7} and source.image_size == (512, 512)
    seen = []
    for split in ("train", "val"):
        for sample in source.dataset(split, TASKS):
            exp = expected[sample["meta"]["id"]]
            seen.append(sample["meta"]["id"])
            h, w = exp["size"]
            assert list(sample) == ["image", *TASKS, "meta"]
            error = np.abs(sample["image"].permute(1, 2, 0).numpy() - exp["image"] / 255)
            assert sample["image"].shape == (3, h, w) and error.mean() < 2 / 255
            for task in ("semseg", "human_parts", "sal", "edge"):
                assert sample[task].dtype == torch.int64 and sample[task].shape == (h, w), task
                assert np.array_equal(sample[task].numpy(), exp[task]), task
            np.testing.assert_allclose(sample["normals"].permute(1, 2, 0).numpy(), exp["normals"], atol=1e-6)
            assert sample["meta"]["size"].tolist() == [h, w]
            assert sample["meta"]["intrinsics"].tolist() == [max(h, w), max(h, w), w / 2, h / 2]
            parts = sample["human_parts"].numpy()
            if exp["has_person"]:  # annotated parts and background (0), the unannotated person included
                assert set(np.unique(parts)) == {0, 1, 2, 3, 4, 5, 6}
            else:  # no annotated person: the task is unlabelled for this image
                assert (parts == 255).all()
            assert set(np.unique(sample["semseg"].numpy())) <= set(range(21)) | {255}
    assert sorted(seen) == sorted(expected)
    assert snapshot(tmp_path) == before  # never writes into the dataset root


def test_a_person_without_parts_is_background_by_default_as_in_the_reference_loaders(tmp_path):
    expected = build_pascal(tmp_path)
    ignored = {s["meta"]["id"]: s["human_parts"] for s in
               PascalContext(str(tmp_path), person_without_parts="ignore").dataset("train", ["human_parts"])}
    checked = 0
    for sample in PascalContext(str(tmp_path)).dataset("train", ["human_parts"]):
        exp = expected[sample["meta"]["id"]]
        if not exp["has_person"]:  # no annotated person at all: still unlabelled
            assert (sample["human_parts"] == 255).all()
            continue
        unknown = ignored[sample["meta"]["id"]] == 255
        assert unknown.any()  # the fixture's unannotated person
        assert (sample["human_parts"][unknown] == 0).all()
        assert torch.equal(sample["human_parts"][~unknown], ignored[sample["meta"]["id"]][~unknown])
        checked += 1
    assert checked
    with pytest.raises(ValueError, match=r"person_without_parts: 'skip'; choose one of \['background', 'ignore'\]"):
        PascalContext(str(tmp_path), person_without_parts="skip")


def test_semseg_falls_back_to_the_pascal_context_folder(tmp_path):
    build_pascal(tmp_path)
    assert (tmp_path / "semseg/pascal-context/2008_000001.png").is_file()
    assert not (tmp_path / "semseg/VOC12/2008_000001.png").exists()
    (tmp_path / "semseg/pascal-context/2008_000001.png").unlink()
    with pytest.raises(DatasetFileError, match=r"sample '2008_000001'.*pascal-context/2008_000001.png'.*VOC12"):
        PascalContext(str(tmp_path)).dataset("train", ["semseg"])


def test_test_split_is_val_and_only_requested_folders_are_needed(tmp_path):
    build_pascal(tmp_path)
    source = PascalContext(str(tmp_path))
    assert source.dataset("test", ["sal"]).ids == source.dataset("val", ["sal"]).ids
    for folder in ("human_parts", "normals_distill"):
        for path in (tmp_path / folder).iterdir():
            path.unlink()
        (tmp_path / folder).rmdir()
    assert list(source.dataset("train", ["semseg", "sal"])[0]) == ["image", "semseg", "sal", "meta"]
    with pytest.raises(DatasetFileError, match=r"missing folder '.*human_parts'"):
        source.dataset("train", ["human_parts"])


def test_missing_root_and_folders_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"PascalContext needs the dataset folder: set data.root="):
        PascalContext()
    with pytest.raises(DatasetFileError, match=r"missing folder '.*nope'.*PASCAL-Context dataset folder"):
        PascalContext(str(tmp_path / "nope"))
    build_pascal(tmp_path)
    (tmp_path / "JPEGImages").rename(tmp_path / "images")
    with pytest.raises(DatasetFileError, match=r"missing folder '.*JPEGImages'.*RGB images"):
        PascalContext(str(tmp_path))


def test_mat_files_without_the_expected_fields_name_the_file(tmp_path):
    build_pascal(tmp_path)
    source = PascalContext(str(tmp_path))
    first = tmp_path / "human_parts" / "2008_000000.mat"
    scipy.io.savemat(first, {"annotation": np.zeros(3)})
    with pytest.raises(DatasetFileError, match=r"2008_000000.mat'.*expected the variable\(s\) \['anno'\]"):
        source.dataset("train", ["human_parts"])[0]
    objects = np.zeros((1, 1), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O")])  # no 'parts'
    objects[0, 0]["class"], objects[0, 0]["class_ind"] = "person", np.array([[15]])
    objects[0, 0]["mask"] = np.ones((20, 24), dtype=np.uint8)
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"], anno[0, 0]["objects"] = "x", objects
    scipy.io.savemat(first, {"anno": anno})
    with pytest.raises(DatasetFileError, match=r"'anno.objects' lacks the field\(s\) \['parts'\]"):
        source.dataset("train", ["human_parts"])[0]
    scipy.io.savemat(tmp_path / "pascal-context/trainval/2008_000001.mat", {"Labels": np.zeros((18, 26))})
    with pytest.raises(DatasetFileError, match=r"trainval/2008_000001.mat'.*\['LabelMap'\]"):
        source.dataset("train", ["edge"])[1]


def test_unknown_part_name_and_wrong_mask_shape_fail(tmp_path):
    build_pascal(tmp_path)
    source = PascalContext(str(tmp_path))
    mask = np.zeros((20, 24), dtype=bool)
    mask[1:3, 1:3] = True
    path = tmp_path / "human_parts" / "2008_000000.mat"
    write_parts_mat(path, [{"class": "person", "class_ind": 15, "mask": mask, "parts": [("tail", mask)]}])
    with pytest.raises(DatasetFileError, match=r"unknown person part 'tail'"):
        source.dataset("train", ["human_parts"])[0]
    small = np.ones((5, 5), dtype=bool)
    write_parts_mat(path, [{"class": "person", "class_ind": 15, "mask": mask, "parts": [("head", small)]}])
    with pytest.raises(DatasetFileError, match=r"parts\(1\).mask has shape \(5, 5\), expected height x width 20 x 24"):
        source.dataset("train", ["human_parts"])[0]


def test_semseg_out_of_range_and_corrupt_image_fail(tmp_path):
    build_pascal(tmp_path)
    seg = np.zeros((20, 24), dtype=np.uint8)
    seg[4, 4] = 21
    Image.fromarray(seg).save(tmp_path / "semseg/VOC12/2008_000000.png")
    source = PascalContext(str(tmp_path))
    with pytest.raises(DatasetFileError, match=r"VOC12/2008_000000.png'.*value 21 is out of range.*0..20 or 255"):
        source.dataset("train", ["semseg"])[0]
    (tmp_path / "JPEGImages/2008_000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DatasetFileError, match=r"cannot decode image '.*2008_000002.jpg'"):
        source.dataset("train", ["sal"])[2]


def test_skip_bad_samples_counts_and_warns(tmp_path):
    build_pascal(tmp_path)
    (tmp_path / "sal_distill/2008_000004.png").unlink()
    scipy.io.savemat(tmp_path / "human_parts/2008_000005.mat", {"nothing": np.zeros(1)})
    source = PascalContext(str(tmp_path), skip_bad_samples=True)
    with pytest.warns(UserWarning, match=r"PascalContext val.*skipped 2 of 5 bad samples"):
        dataset = source.dataset("val", TASKS)
    assert dataset.num_skipped == 2 and dataset.ids == ["2008_000003", "2008_000006", "2008_000007"]
    assert len(list(dataset)) == 3


def test_label_map_edges_and_tables():
    label_map = np.array([[1, 1, 2], [1, 1, 2], [3, 3, 3]])
    assert label_map_edges(label_map).tolist() == [[0, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert len(NORMALS_VALID_CLASSES) == 170 and NORMALS_VALID_CLASSES["tvmonitor"] == 427
    assert "sky" not in NORMALS_VALID_CLASSES and "unknown" not in NORMALS_VALID_CLASSES
    assert sorted(set(PART_IDS.values())) == [1, 2, 3, 4, 5, 6] and len(PART_IDS) == 24
    assert nominal_intrinsics((300, 400)).tolist() == [400.0, 400.0, 200.0, 150.0]
