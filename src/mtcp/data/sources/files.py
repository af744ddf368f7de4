"""Reading dataset files with errors that name the file and what was expected.

Real datasets arrive incomplete or damaged (an interrupted download, a label written
at the wrong size). Every reader here raises `DatasetFileError` naming the path, so a
user can fix or delete the file, and so `skip_bad_samples` can tell a bad sample from
a bug. Nothing here ever writes: dataset roots are read-only to this project.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


class DatasetFileError(ValueError):
    """A dataset file or folder is missing, unreadable or holds unexpected content."""


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder; otherwise a clear error saying what it should hold."""
    if not path.is_dir():
        raise DatasetFileError(f"missing folder {str(path)!r}: expected {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetFileError(f"missing file {str(path)!r}: expected {what}")
    return path


def first_existing(stem: Path, suffixes: Sequence[str], what: str) -> Path:
    """``stem`` with the first suffix that exists (detects a layout by extension)."""
    for suffix in suffixes:
        path = stem.with_name(stem.name + suffix)
        if path.is_file():
            return path
    tried = ", ".join(repr(str(stem) + s) for s in suffixes)
    raise DatasetFileError(f"missing file: expected {what} at one of {tried}")


def read_split(path: Path) -> list[str]:
    """Sample ids of a split file, one a line; blank lines ignored, at least one id required."""
    require_file(path, "a split file with one sample id per line")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetFileError(f"split file {str(path)!r} lists no sample ids")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetFileError(f"split file {str(path)!r} lists id {dup!r} more than once")
    return ids


def _open_decoded(path: Path) -> Image.Image:
    """Open and fully decode an image file; truncation shows up here, not at first use."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DatasetFileError(f"missing file {str(path)!r}") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for truncated / corrupt data
        raise DatasetFileError(f"cannot decode image {str(path)!r} (truncated or corrupt?): {err}") from None
    return image


def read_rgb(path: Path) -> Tensor:
    """An RGB image as float32 [3, H, W] in [0, 1]."""
    array = np.asarray(_open_decoded(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def read_png(path: Path, channels: int) -> np.ndarray:
    """A PNG's raw values: [H, W] uint8 for ``channels`` 1 (palette indices kept), [H, W, 3] for 3."""
    image = _open_decoded(path)
    array = np.asarray(image)
    if channels == 1 and array.ndim == 2:
        return array
    if channels == 3 and array.ndim == 3 and array.shape[2] >= 3:
        return array[..., :3]
    raise DatasetFileError(
        f"{str(path)!r}: expected a {'single-channel' if channels == 1 else 'RGB'} PNG, got mode "
        f"{image.mode!r} with shape {array.shape}"
    )


def read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array (no pickles: a label file never needs code execution)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetFileError(f"missing file {str(path)!r}") from None
    except (OSError, ValueError, EOFError) as err:
        raise DatasetFileError(f"cannot read array {str(path)!r} (truncated or corrupt?): {err}") from None


def read_mat(path: Path, keys: Sequence[str]) -> dict:
    """A MATLAB ``.mat`` file holding at least ``keys``."""
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DatasetFileError(f"missing file {str(path)!r}") from None
    except Exception as err:  # scipy raises a zoo of types for damaged files
        raise DatasetFileError(f"cannot read MATLAB file {str(path)!r} (truncated or corrupt?): {err}") from None
    missing = [k for k in keys if k not in data]
    if missing:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DatasetFileError(f"{str(path)!r}: expected the variable(s) {missing}, found {found}")
    return data


def check_size(array: np.ndarray | Tensor, size: tuple[int, int], path: Path, what: str) -> None:
    """Fail unless the label's (H, W) (its leading two dimensions) equals the image's ``size``."""
    shape = tuple(array.shape)
    hw = shape[:2]
    if hw != tuple(size):
        raise DatasetFileError(
            f"{str(path)!r}: {what} has shape {shape}, expected height x width {size[0]} x {size[1]} "
            "(the size of the sample's image)"
        )
