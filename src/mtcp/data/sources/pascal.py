"""PASCAL-Context in the ``PASCAL_MT`` layout (docs/method.md section 5)::

    ImageSets/Context/{train,val}.txt         one id a line (4998 / 5105)
    JPEGImages/<id>.jpg
    semseg/VOC12/<id>.png                     21 classes, 0 background, 255 ignore;
    semseg/pascal-context/<id>.png            ... used when the VOC12 file is absent
    human_parts/<id>.mat                      Pascal-Part annotation (`pascal_parts`)
    sal_distill/<id>.png                      grey; > 0.5 * 255 = salient
    normals_distill/<id>.png                  RGB, decoded 2 * x / 255 - 1
    pascal-context/trainval/<id>.mat          ``LabelMap`` (459 classes): normals mask, edges

There is no separate test split: ``test`` reads ``val.txt``, as in the literature.

Decoding decisions:
- normals: valid only on the 170 LabelMap classes of `pascal_context_classes` (the
  ASTMT / MTI-Net / ATRC practice) and where the decoded vector is close to unit length
  (see `mtcp.data.sources.nyud.decode_normals`); zero elsewhere; valid vectors re-normalised.
- edges: a pixel is an edge when its LabelMap class differs from its right or lower
  neighbour (one pixel thick). The reference loaders use a Laplacian followed by
  morphological thinning; the two differ by at most a pixel along boundaries.
- intrinsics: PASCAL photos come from unknown cameras. ``meta["intrinsics"]`` is a
  *nominal* pinhole (fx = fy = max(H, W), i.e. about 53 degrees across the longer side;
  principal point at the centre) so the sample convention holds and geometric
  augmentation stays consistent. PASCAL has no depth task, so no coherence metric ever
  uses these values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtcp.data.sources.base import Split
from mtcp.data.sources.file_dataset import FolderSource
from mtcp.data.sources.files import (
    DatasetFileError,
    check_size,
    read_mat,
    read_png,
    read_rgb,
    require_dir,
    require_file,
)
from mtcp.data.sources.nyud import decode_normals
from mtcp.data.sources.pascal_context_classes import NORMALS_VALID_IDS
from mtcp.data.sources.pascal_parts import NUM_PART_CLASSES, PART_NAMES, PERSON_WITHOUT_PARTS, read_human_parts
from mtcp.labels import IGNORE_INDEX

NUM_CLASSES = 21
#: the PASCAL VOC classes, in label order (0 = background)
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv/monitor",
)
_CONTEXT_DIR = ("pascal-context", "trainval")
#: folders each task's labels come from (checked when the task is requested)
_TASK_DIRS: dict[str, tuple[str, ...]] = {
    "semseg": ("semseg",),
    "human_parts": ("human_parts",),
    "sal": ("sal_distill",),
    "normals": ("normals_distill", "/".join(_CONTEXT_DIR)),
    "edge": ("/".join(_CONTEXT_DIR),),
}


def nominal_intrinsics(size: tuple[int, int]) -> Tensor:
    """Nominal pinhole for an uncalibrated photo of ``size`` (H, W): f = max(H, W), centred."""
    h, w = size
    f = float(max(h, w))
    return torch.tensor([f, f, w / 2.0, h / 2.0], dtype=torch.float32)


def label_map_edges(label_map: np.ndarray) -> np.ndarray:
    """int64 [H, W]: 1 where the class differs from the right or lower neighbour."""
    edge = np.zeros(label_map.shape, dtype=bool)
    edge[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edge[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    return edge.astype(np.int64)


class PascalContext(FolderSource):
    """PASCAL-Context (21-class semseg, human parts, saliency, normals, edge) from ``PASCAL_MT``.

    Args:
        root: the dataset folder (required; holds ``ImageSets/``, ``JPEGImages/``, ...).
        skip_bad_samples: drop samples whose files are missing or unreadable, with a
            warning and a count (`FileDataset`), instead of failing.
        normals_signs: factors for the normals' (x, y, z) components, for copies whose
            axes differ from the sample convention (x right, y down, z forward).
        person_without_parts: ``"background"`` (the reference loaders') or ``"ignore"`` (255) for
            a person without part annotations (`mtcp.data.sources.pascal_parts`).
    """

    tasks = ("semseg", "human_parts", "sal", "normals", "edge")
    published_split_sizes = {"train": 4998, "val": 5105}
    palettes = {"semseg": "voc", "human_parts": "parts"}
    class_names = {"semseg": CLASS_NAMES, "human_parts": PART_NAMES}

    def __init__(self, root: str | None = None, skip_bad_samples: bool = False,
                 normals_signs: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 person_without_parts: str = "background") -> None:
        if root is None or str(root).strip() == "":
            raise ValueError(
                "PascalContext needs the dataset folder: set data.root=/path/to/PASCAL_MT "
                "(or data.source.init_args.root)"
            )
        self.root = Path(root).expanduser()
        require_dir(self.root, "the PASCAL-Context dataset folder (with ImageSets/, JPEGImages/, ...)")
        require_dir(self.root / "ImageSets" / "Context", "the split files train.txt and val.txt")
        self.images_dir = require_dir(self.root / "JPEGImages", "the RGB images <id>.jpg")
        if len(normals_signs) != 3 or any(abs(s) != 1 for s in normals_signs):
            raise ValueError(f"PascalContext normals_signs must be three of +1/-1; got {normals_signs}")
        if person_without_parts not in PERSON_WITHOUT_PARTS:
            raise ValueError(f"data.source.init_args.person_without_parts: {person_without_parts!r}; choose one of "
                             f"{list(PERSON_WITHOUT_PARTS)} (docs/fidelity.md)")
        self.person_without_parts = person_without_parts
        self.skip_bad_samples = skip_bad_samples
        self.normals_signs = np.asarray(normals_signs, dtype=np.float32)
        self._valid_ids = np.asarray(NORMALS_VALID_IDS)

    @property
    def num_classes(self) -> dict[str, int]:
        return {"semseg": NUM_CLASSES, "human_parts": NUM_PART_CLASSES}

    @property
    def image_size(self) -> tuple[int, int]:
        return (512, 512)

    def split_file(self, split: Split) -> Path:
        return self.root / "ImageSets" / "Context" / ("train.txt" if split == "train" else "val.txt")  # test = val

    def label_folders(self, task: str) -> list[tuple[Path, str]]:
        return [(self.root / folder, f"the {task} labels") for folder in _TASK_DIRS[task]]

    def sample_paths(self, sample_id: str, tasks: Sequence[str]) -> dict[str, Path]:
        root = self.root
        context = root.joinpath(*_CONTEXT_DIR) / f"{sample_id}.mat"
        paths = {"image": require_file(self.images_dir / f"{sample_id}.jpg", "the RGB image")}
        if "semseg" in tasks:
            voc = root / "semseg" / "VOC12" / f"{sample_id}.png"
            paths["semseg"] = voc if voc.is_file() else require_file(
                root / "semseg" / "pascal-context" / f"{sample_id}.png",
                f"the semantic labels (semseg/VOC12/{sample_id}.png does not exist either)")
        if "human_parts" in tasks:
            paths["human_parts"] = require_file(root / "human_parts" / f"{sample_id}.mat", "the Pascal-Part file")
        if "sal" in tasks:
            paths["sal"] = require_file(root / "sal_distill" / f"{sample_id}.png", "the saliency map")
        if "normals" in tasks:
            paths["normals"] = require_file(root / "normals_distill" / f"{sample_id}.png", "the normals map")
        if "normals" in tasks or "edge" in tasks:
            paths["context"] = require_file(context, "the PASCAL-Context LabelMap")
        return paths

    def read_sample(self, sample_id: str, tasks: Sequence[str]) -> dict:
        paths = self.sample_paths(sample_id, tasks)
        image = read_rgb(paths["image"])
        size = (int(image.shape[1]), int(image.shape[2]))
        label_map = self._read_label_map(paths["context"], size) if "context" in paths else None
        sample: dict = {"image": image}
        if "semseg" in tasks:
            sample["semseg"] = self._read_semseg(paths["semseg"], size)
        if "human_parts" in tasks:
            parts = read_human_parts(paths["human_parts"], size, self.person_without_parts)
            sample["human_parts"] = torch.from_numpy(parts)
        if "sal" in tasks:
            raw = read_png(paths["sal"], channels=1)
            check_size(raw, size, paths["sal"], "the saliency map")
            sample["sal"] = torch.from_numpy((raw.astype(np.float32) > 0.5 * 255).astype(np.int64))
        if "normals" in tasks:
            sample["normals"] = self._read_normals(paths["normals"], label_map, size)
        if "edge" in tasks:
            sample["edge"] = torch.from_numpy(label_map_edges(label_map))
        sample = {k: sample[k] for k in ("image", *tasks)}  # task order as requested
        sample["meta"] = {
            "id": sample_id,
            "intrinsics": nominal_intrinsics(size),
            "size": torch.tensor(size, dtype=torch.int64),
        }
        return sample

    @staticmethod
    def _read_semseg(path: Path, size: tuple[int, int]) -> Tensor:
        raw = read_png(path, channels=1)
        check_size(raw, size, path, "the segmentation")
        bad = (raw >= NUM_CLASSES) & (raw != IGNORE_INDEX)
        if bad.any():
            raise DatasetFileError(
                f"{str(path)!r}: segmentation value {int(raw[bad][0])} is out of range; expected "
                f"0..{NUM_CLASSES - 1} or {IGNORE_INDEX} (ignore)"
            )
        return torch.from_numpy(raw.astype(np.int64))

    @staticmethod
    def _read_label_map(path: Path, size: tuple[int, int]) -> np.ndarray:
        label_map = np.asarray(read_mat(path, ["LabelMap"])["LabelMap"])
        if label_map.ndim != 2:
            raise DatasetFileError(f"{str(path)!r}: LabelMap must be H x W, got shape {label_map.shape}")
        check_size(label_map, size, path, "the LabelMap")
        return label_map

    def _read_normals(self, path: Path, label_map: np.ndarray, size: tuple[int, int]) -> Tensor:
        raw = read_png(path, channels=3)
        check_size(raw, size, path, "the normals")
        normals = decode_normals(raw, path, encoded=True) * self.normals_signs
        normals = normals * np.isin(label_map, self._valid_ids)[..., None]
        return torch.from_numpy(np.ascontiguousarray(normals.transpose(2, 0, 1), dtype=np.float32))
