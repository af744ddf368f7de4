"""Human-part labels from Pascal-Part annotation files (``human_parts/<id>.mat``).

File structure (MATLAB struct, read with ``scipy.io.loadmat``)::

    anno.imname                      image name
    anno.objects(j).class            class name, e.g. 'person'
    anno.objects(j).class_ind        VOC class index; 15 = person
    anno.objects(j).mask             H x W 0/1 object mask
    anno.objects(j).parts(k).part_name   e.g. 'head', 'luarm'
    anno.objects(j).parts(k).mask        H x W 0/1 part mask

The 24 Pascal-Part person part names are grouped into the six classes of the
multi-task literature (the mapping of ASTMT / MTI-Net / ATRC): 1 head (head, hair,
ears, eyes, eyebrows, nose, mouth), 2 torso (torso, neck), 3 upper arms, 4 lower arms
and hands, 5 upper legs, 6 lower legs and feet; 0 is background.

Which pixels are labelled:
- an image with no person that has part annotations: every pixel 255 (the task is
  unlabelled for that image, not "all background");
- a person object without part annotations (in an image with an annotated person):
  background (0) by default, as in the reference loaders (ASTMT/MTI-Net/ATRC), which never
  look at such a person; ``person_without_parts="ignore"`` makes its mask 255 instead (its
  parts are unknown, so neither "background" nor a part is a true label); where it overlaps
  an annotated person's part, the part wins;
- an annotated person's pixels not covered by any part stay background (0), as in the
  reference loaders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtcp.data.sources.files import DatasetFileError, check_size, read_mat
from mtcp.labels import IGNORE_INDEX

PERSON_CLASS_IND = 15
NUM_PART_CLASSES = 7  # background + 6 parts
PART_NAMES = ("background", "head", "torso", "upper arms", "lower arms and hands", "upper legs",
              "lower legs and feet")

PART_IDS: dict[str, int] = {
    **dict.fromkeys(("head", "hair", "lear", "rear", "leye", "reye", "lebrow", "rebrow", "nose", "mouth"), 1),
    **dict.fromkeys(("torso", "neck"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}

_OBJECT_FIELDS = ("class_ind", "mask", "parts")
_PART_FIELDS = ("part_name", "mask")


def _fields(record: np.ndarray, expected: tuple[str, ...], what: str, path: Path) -> None:
    names = record.dtype.names or ()
    missing = [f for f in expected if f not in names]
    if missing:
        raise DatasetFileError(f"{str(path)!r}: {what} lacks the field(s) {missing}; has {list(names)}")


def _mask(value: np.ndarray, size: tuple[int, int], path: Path, what: str) -> np.ndarray:
    mask = np.asarray(value)
    check_size(mask, size, path, what)
    return mask.astype(bool)


#: what a person without part annotations is labelled (module doc)
PERSON_WITHOUT_PARTS = ("background", "ignore")


def read_human_parts(path: Path, size: tuple[int, int], person_without_parts: str = "background") -> np.ndarray:
    """int64 [H, W] part labels of one image (see module docstring for the conventions)."""
    anno = read_mat(path, ["anno"])["anno"]
    try:
        anno = anno[0, 0]
    except (IndexError, TypeError):
        raise DatasetFileError(f"{str(path)!r}: 'anno' is not a 1x1 struct") from None
    _fields(anno, ("objects",), "'anno'", path)
    objects = np.asarray(anno["objects"])
    label = np.zeros(size, dtype=np.int64)
    unknown = np.zeros(size, dtype=bool)
    annotated = False
    if objects.size:
        _fields(objects, _OBJECT_FIELDS, "'anno.objects'", path)
    for j, obj in enumerate(objects.ravel()):
        try:
            class_ind = int(np.asarray(obj["class_ind"]).item())
        except ValueError:
            raise DatasetFileError(f"{str(path)!r}: objects({j + 1}).class_ind is not a scalar") from None
        if class_ind != PERSON_CLASS_IND:
            continue
        parts = np.asarray(obj["parts"])
        if parts.size == 0:
            unknown |= _mask(obj["mask"], size, path, f"objects({j + 1}).mask")
            continue
        _fields(parts, _PART_FIELDS, f"'objects({j + 1}).parts'", path)
        annotated = True
        for k, part in enumerate(parts.ravel()):
            name = str(np.asarray(part["part_name"]).item()) if np.asarray(part["part_name"]).size else ""
            if name not in PART_IDS:
                raise DatasetFileError(
                    f"{str(path)!r}: objects({j + 1}).parts({k + 1}) has unknown person part {name!r}; "
                    f"known parts are {sorted(PART_IDS)}"
                )
            label[_mask(part["mask"], size, path, f"objects({j + 1}).parts({k + 1}).mask")] = PART_IDS[name]
    if not annotated:
        return np.full(size, IGNORE_INDEX, dtype=np.int64)
    if person_without_parts == "ignore":
        label[unknown & (label == 0)] = IGNORE_INDEX
    return label
