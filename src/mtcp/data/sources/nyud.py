"""NYUD-v2 in the two published multi-task layouts (docs/method.md section 5).

``NYUD_MT`` (480x640)::

    gt_sets/{train,val}.txt      one id a line (795 / 654)
    images/<id>.jpg
    segmentation/<id>.png        uint8: 0 = void -> 255, 1..40 -> classes 0..39
    depth/<id>.npy               float metres, 0 = invalid
    normals/<id>.npy             H x W x 3 unit vectors, all-zero = invalid
    edge/<id>.npy                0/1

The second published variant (425x560) has the same folders with ``images/*.png``,
``normals/*.png`` (decoded ``2 * x / 255 - 1``) and ``edge/*.png`` (``x / 255``).
Each file's format is detected from its extension, so both layouts (and a mix) load.
There is no separate test split: ``test`` reads ``gt_sets/val.txt``, as every NYUD
multi-task paper does.

Decoding decisions:
- PNG normals carry no explicit invalid marker; a pixel whose decoded vector is not
  close to unit length (| |v| - 1 | > 0.1; quantisation moves it by < 0.01), such as
  mid-grey (~0) or black/white (~1.73), is invalid (zero). Valid vectors are
  re-normalised, which removes the 8-bit quantisation of their length.
- ``.npy`` normals: all-zero vectors stay invalid, others are re-normalised.
- ``normals_signs`` multiplies the (x, y, z) components, for a copy of the data whose
  axes differ from the sample convention (x right, y down, z forward). The default
  keeps the files' values; the depth-normals coherence metric is only meaningful in the
  sample convention.
- Intrinsics: NYU's colour camera (fx 518.86, fy 519.47, cx 325.58, cy 253.74 on the
  640x480 grid). The 425x560 copy is taken to be NYU's valid region *cut out* of the
  640x480 frames (rows from 45, columns from 41, the usual border crop; 425x560 is not a
  0.75-aspect resize), so its principal point moves by that offset and fx, fy stay; a
  copy made differently sets ``intrinsics_crop`` (``[0, 0]`` for a plain resize). The
  result is then scaled to each image's size.
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
    first_existing,
    read_npy,
    read_png,
    read_rgb,
    read_split,
    require_dir,
)
from mtcp.labels import IGNORE_INDEX

NUM_CLASSES = 40
#: the 40 classes of Gupta et al. (CVPR 2013), in label order (0 = wall)
CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "other structure",
    "other furniture", "other prop",
)
#: NYU-v2 colour camera (fx, fy, cx, cy) for the 480 x 640 (H x W) grid
NYU_INTRINSICS = (518.86, 519.47, 325.58, 253.74)
NYU_INTRINSICS_SIZE = (480, 640)

#: folder and accepted extensions (first match wins) of every task's label file
_LABELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "semseg": ("segmentation", (".png",)),
    "depth": ("depth", (".npy",)),
    "normals": ("normals", (".npy", ".png")),
    "edge": ("edge", (".npy", ".png")),
}
_IMAGE_SUFFIXES = (".jpg", ".png")
#: (H, W) of each layout, told apart by the images' extension
_LAYOUT_SIZE = {".jpg": (480, 640), ".png": (425, 560)}
#: (top, left) of each layout's grid inside the 480x640 frame (see module docs)
_LAYOUT_CROP = {".jpg": (0, 0), ".png": (45, 41)}
_UNIT_TOLERANCE = 0.1


def scaled_intrinsics(intrinsics: Sequence[float], from_size: Sequence[int], to_size: Sequence[int]) -> Tensor:
    """Pinhole (fx, fy, cx, cy) of ``from_size`` (H, W) rescaled to ``to_size``, float32 [4]."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    fx, fy, cx, cy = intrinsics
    return torch.tensor([fx * sx, fy * sy, cx * sx, cy * sy], dtype=torch.float32)


def decode_normals(array: np.ndarray, path: Path, encoded: bool) -> np.ndarray:
    """H x W x 3 file content -> float32 H x W x 3 unit vectors, zero where invalid."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise DatasetFileError(f"{str(path)!r}: normals must be H x W x 3, got shape {array.shape}")
    vec = array.astype(np.float32)
    if encoded:
        vec = 2.0 * vec / 255.0 - 1.0
    if not np.isfinite(vec).all():
        raise DatasetFileError(f"{str(path)!r}: normals contain NaN or infinite values")
    norm = np.linalg.norm(vec, axis=2, keepdims=True)
    valid = np.abs(norm - 1.0) <= _UNIT_TOLERANCE if encoded else norm > 1e-6
    return np.where(valid, vec / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


class NYUDv2(FolderSource):
    """NYUD-v2 (40-class semseg, depth, normals, edge) from a ``NYUD_MT``-style folder.

    Args:
        root: the dataset folder (required; holds ``gt_sets/``, ``images/``, ...).
        skip_bad_samples: drop samples whose files are missing or unreadable, with a
            warning and a count (`FileDataset`), instead of failing.
        normals_signs: factors for the normals' (x, y, z) components (see module docs).
        intrinsics: (fx, fy, cx, cy) on the ``intrinsics_size`` grid; scaled to each image.
        intrinsics_size: the (H, W) grid the intrinsics refer to.
        intrinsics_crop: (top, left) of the layout's images inside that grid; None: by
            layout ((0, 0) for NYUD_MT, (45, 41) for the 425x560 copy).
    """

    tasks = ("semseg", "depth", "normals", "edge")
    published_split_sizes = {"train": 795, "val": 654}
    palettes = {"semseg": "nyud40"}
    class_names = {"semseg": CLASS_NAMES}

    def __init__(
        self,
        root: str | None = None,
        skip_bad_samples: bool = False,
        normals_signs: tuple[float, float, float] = (1.0, 1.0, 1.0),
        intrinsics: tuple[float, float, float, float] = NYU_INTRINSICS,
        intrinsics_size: tuple[int, int] = NYU_INTRINSICS_SIZE,
        intrinsics_crop: tuple[int, int] | None = None,
    ) -> None:
        if root is None or str(root).strip() == "":
            raise ValueError(
                "NYUDv2 needs the dataset folder: set data.root=/path/to/NYUD_MT "
                "(or data.source.init_args.root)"
            )
        self.root = Path(root).expanduser()
        require_dir(self.root, "the NYUD-v2 dataset folder (with gt_sets/, images/, segmentation/, ...)")
        require_dir(self.root / "gt_sets", "the split files train.txt and val.txt")
        self.images_dir = require_dir(self.root / "images", "the RGB images <id>.jpg or <id>.png")
        if len(normals_signs) != 3 or any(abs(s) != 1 for s in normals_signs):
            raise ValueError(f"NYUDv2 normals_signs must be three of +1/-1; got {normals_signs}")
        self.skip_bad_samples = skip_bad_samples
        self.normals_signs = tuple(float(s) for s in normals_signs)
        self.intrinsics = tuple(float(v) for v in intrinsics)
        self.intrinsics_size = tuple(int(v) for v in intrinsics_size)
        self.layout_suffix = self._detect_layout()
        top, left = _LAYOUT_CROP[self.layout_suffix] if intrinsics_crop is None else intrinsics_crop
        fx, fy, cx, cy = self.intrinsics
        #: intrinsics on the layout's native grid, before scaling to each image
        self.layout_intrinsics = (fx, fy, cx - left, cy - top)
        self.layout_grid = _LAYOUT_SIZE[self.layout_suffix] if (top or left) else self.intrinsics_size

    def _detect_layout(self) -> str:
        """The images' extension of the first training id: ``.jpg`` (NYUD_MT) or ``.png`` (425x560)."""
        first = read_split(self.split_file("train"))[0]
        return first_existing(self.images_dir / first, _IMAGE_SUFFIXES, "the first training image").suffix

    @property
    def num_classes(self) -> dict[str, int]:
        return {"semseg": NUM_CLASSES}

    @property
    def image_size(self) -> tuple[int, int]:
        return _LAYOUT_SIZE[self.layout_suffix]

    @property
    def expected_image_size(self) -> tuple[int, int]:
        return _LAYOUT_SIZE[self.layout_suffix]

    def split_file(self, split: Split) -> Path:
        return self.root / "gt_sets" / ("train.txt" if split == "train" else "val.txt")  # test = val

    def label_folders(self, task: str) -> list[tuple[Path, str]]:
        folder, suffixes = _LABELS[task]
        return [(self.root / folder, f"the {task} labels <id>{'/'.join(suffixes)}")]

    def sample_paths(self, sample_id: str, tasks: Sequence[str]) -> dict[str, Path]:
        paths = {"image": first_existing(self.images_dir / sample_id, _IMAGE_SUFFIXES, "the RGB image")}
        for task in tasks:
            folder, suffixes = _LABELS[task]
            paths[task] = first_existing(self.root / folder / sample_id, suffixes, f"the {task} label")
        return paths

    def read_sample(self, sample_id: str, tasks: Sequence[str]) -> dict:
        paths = self.sample_paths(sample_id, tasks)
        image = read_rgb(paths["image"])
        size = (int(image.shape[1]), int(image.shape[2]))
        sample: dict = {"image": image}
        for task in tasks:
            sample[task] = getattr(self, f"_read_{task}")(paths[task], size)
        sample["meta"] = {
            "id": sample_id,
            "intrinsics": scaled_intrinsics(self.layout_intrinsics, self.layout_grid, size),
            "size": torch.tensor(size, dtype=torch.int64),
        }
        return sample

    @staticmethod
    def _read_semseg(path: Path, size: tuple[int, int]) -> Tensor:
        raw = read_png(path, channels=1)
        check_size(raw, size, path, "the segmentation")
        if raw.max(initial=0) > NUM_CLASSES:
            bad = int(raw.max())
            raise DatasetFileError(
                f"{str(path)!r}: segmentation value {bad} is out of range; expected 0 (void) or 1..{NUM_CLASSES}"
            )
        label = raw.astype(np.int64) - 1
        label[raw == 0] = IGNORE_INDEX
        return torch.from_numpy(label)

    @staticmethod
    def _read_depth(path: Path, size: tuple[int, int]) -> Tensor:
        depth = read_npy(path)
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2:
            raise DatasetFileError(f"{str(path)!r}: depth must be H x W, got shape {depth.shape}")
        check_size(depth, size, path, "the depth map")
        depth = depth.astype(np.float32)
        if not np.isfinite(depth).all() or (depth < 0).any():
            raise DatasetFileError(f"{str(path)!r}: depth must be finite metres >= 0 (0 = invalid)")
        return torch.from_numpy(depth)[None]

    def _read_normals(self, path: Path, size: tuple[int, int]) -> Tensor:
        encoded = path.suffix == ".png"
        raw = read_png(path, channels=3) if encoded else read_npy(path)
        check_size(raw, size, path, "the normals")
        normals = decode_normals(raw, path, encoded) * np.asarray(self.normals_signs, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(normals.transpose(2, 0, 1)))

    @staticmethod
    def _read_edge(path: Path, size: tuple[int, int]) -> Tensor:
        if path.suffix == ".png":
            raw = read_png(path, channels=1)
            check_size(raw, size, path, "the edge map")
            return torch.from_numpy((raw.astype(np.float32) / 255.0 >= 0.5).astype(np.int64))
        edge = read_npy(path)
        if edge.ndim == 3 and edge.shape[2] == 1:
            edge = edge[..., 0]
        check_size(edge, size, path, "the edge map")
        if not np.isin(edge, (0, 1)).all():
            raise DatasetFileError(f"{str(path)!r}: edge values must be 0 or 1")
        return torch.from_numpy(edge.astype(np.int64))

