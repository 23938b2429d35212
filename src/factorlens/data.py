"""Load test inputs from a SPEC string into an :class:`ImageData`, and build the preprocessing.

Accepted SPEC forms:

* ``digits`` — scikit-learn's bundled 8×8 digits (1797 images, 1×8×8, labels 0–9).
* a named data set that an installed package registers in the entry-point group
  ``factorlens.datasets`` (a function with no arguments returning an :class:`ImageData`);
  factorlens registers ``glyphs`` / ``shapes``, the fixed 2,000-image test sets of the
  procedural domains of its research tooling (1×28×28 letters, 3×32×32 coloured shapes;
  10 classes). This module never imports them: the entry point is read when the name is used.
* ``mnist:DIR`` / ``mnist:DIR:train`` / ``mnist:DIR:test`` — the MNIST IDX files as distributed
  (``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` for the default test split,
  ``train-…`` for ``:train``); the label file is optional.
* ``npz:FILE`` — array ``images`` (``N×H×W`` or ``N×C×H×W``; uint8 is divided by 255, float must
  already lie in [0, 1]; ``N×D`` float for non-image data), optional ``labels`` (N,) and
  ``class_names``.
* ``folder:DIR`` — image files (png/jpg/jpeg/bmp/gif/tif/tiff/webp) directly in one subfolder
  per class (class names are the sorted subfolder names; hidden ones, ``.name``, are skipped and
  a class folder without images is refused); all images must have the same size. Grayscale
  images give C=1, anything else is converted to RGB (C=3). A folder holding images but no
  class subfolders is loaded without labels. What is not read is said in a note.

Images are always float32 in [0, 1] with shape ``N×C×H×W`` (``N×D`` for non-image data).
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from factorlens.errors import FactorlensError, note, one_line
from factorlens.rows import Levels

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPEC_FORMS",
    "ImageData",
    "Preprocess",
    "from_arrays",
    "load_data",
    "make_preprocess",
    "parse_normalize",
]

SPEC_FORMS = "digits, mnist:DIR, mnist:DIR:train, npz:FILE.npz, folder:DIR"
#: the entry-point group of named data sets: ``name = "package.module:function"``, the function
#: taking no arguments and returning an :class:`ImageData`
DATASETS_GROUP = "factorlens.datasets"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_IDX_UINT8 = 0x08


@dataclass
class ImageData:
    """Test inputs.

    Attributes
    ----------
    images : numpy.ndarray or Levels
        float32 ``(N, C, H, W)`` in [0, 1] for images, or ``(N, D)`` for non-image data;
        8-bit images are a :class:`~factorlens.rows.Levels` (their uint8 levels, read as
        float32 by rows; ``numpy.asarray`` gives the float32 array).
    labels : numpy.ndarray or None
        int64 ``(N,)``.
    class_names : list of str or None
        One name per class (index = label).
    description : str
        One line saying where the data came from.
    """

    images: np.ndarray | Levels
    labels: np.ndarray | None
    class_names: list[str] | None
    description: str

    @property
    def n_samples(self) -> int:
        """Number of samples N."""
        return int(self.images.shape[0])

    def subset(self, n: int | None, random_state: int) -> ImageData:
        """Return a random subset of ``n`` samples without replacement, in original order.

        Deterministic for a given ``random_state``. ``n`` None or ``>= N`` returns ``self`` unchanged.

        Examples
        --------
        >>> import numpy as np
        >>> from factorlens.data import ImageData
        >>> images = np.zeros((6, 1, 2, 2), np.float32)
        >>> data = ImageData(images, np.arange(6), None, "zeros")
        >>> sub = data.subset(3, random_state=0)
        >>> sub.labels
        array([3, 4, 5])
        >>> sub.description
        'zeros; random subset of 3 (seed 0)'
        """
        if n is None or n >= self.n_samples:
            return self
        if n <= 0:
            raise FactorlensError(
                f"the number of samples must be positive, got {n}; pass a count >= 1 "
                "(or leave it out to use all samples)"
            )
        rng = np.random.default_rng(random_state)
        idx = np.sort(rng.choice(self.n_samples, size=n, replace=False))
        return ImageData(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            description=f"{self.description}; random subset of {n} (seed {random_state})",
        )


def digits_split(seed: int, n_train: int = 1300) -> tuple[np.ndarray, np.ndarray, ImageData]:
    """Split scikit-learn's digits, shuffled with ``seed``, into training and held-out sets.

    The demo and the digits zoos use it.

    Parameters
    ----------
    seed : int
        The shuffle's seed.
    n_train : int
        The first ``n_train`` shuffled digits are for training.

    Returns
    -------
    x_train : numpy.ndarray
        Training images ``(n_train, 1, 8, 8)`` in [0, 1], in the shuffled order.
    y_train : numpy.ndarray
        Their labels ``(n_train,)``.
    held_out : ImageData
        The rest, labelled, in their original order.
    """
    digits = load_data("digits")
    assert digits.labels is not None
    order = np.random.default_rng(seed).permutation(digits.n_samples)
    train_idx, test_idx = order[:n_train], np.sort(order[n_train:])
    held_out = ImageData(
        images=np.ascontiguousarray(digits.images[test_idx]),
        labels=digits.labels[test_idx].copy(),
        class_names=digits.class_names,
        description=(
            f"scikit-learn digits, {len(test_idx)} held-out images not used in training "
            f"(seed {seed}; 1×8×8, 10 classes)"
        ),
    )
    return (
        np.ascontiguousarray(digits.images[train_idx]),
        digits.labels[train_idx].copy(),
        held_out,
    )


# --------------------------------------------------------------------------------------------
# SPEC parsing


def load_data(spec: str) -> ImageData:
    """Load test inputs from a data SPEC.

    Parameters
    ----------
    spec : str
        ``digits``, ``glyphs``, ``shapes``, ``mnist:DIR`` (``mnist:DIR:train`` for the
        training split), ``npz:FILE`` or ``folder:DIR``; see the module docstring for each.

    Returns
    -------
    ImageData
        float32 images in [0, 1], ``N×C×H×W`` (``N×D`` for non-image data), with labels and
        class names where the data has them.

    Raises
    ------
    FactorlensError
        For an unknown SPEC or data that cannot be read.
    """
    if not isinstance(spec, str):
        raise FactorlensError(
            f"a data SPEC is text, got {type(spec).__name__}; use one of: {_spec_forms()}"
        )
    if not spec.strip():
        raise FactorlensError(f"empty data SPEC; use one of: {_spec_forms()}")
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    scheme_l = scheme.lower()
    if scheme_l == "digits":
        if sep and rest:
            raise FactorlensError(f"'digits' takes no argument, got {spec!r}; use just: digits")
        return _load_digits()
    named = named_datasets() if scheme_l not in ("mnist", "npz", "folder") else {}
    if scheme_l in named:
        if sep and rest:
            raise FactorlensError(f"{scheme_l!r} takes no argument, got {spec!r}; use: {scheme_l}")
        return _load_named(scheme_l, named[scheme_l])
    if not sep or scheme_l not in ("mnist", "npz", "folder"):
        hint = ""
        if not sep and Path(spec).suffix.lower() == ".npz":
            hint = f" (did you mean npz:{spec}?)"
        elif not sep and Path(spec).is_dir():
            hint = f" (did you mean folder:{spec} or mnist:{spec}?)"
        raise FactorlensError(f"unknown data SPEC {spec!r}{hint}; use one of: {_spec_forms()}")
    if not rest:
        raise FactorlensError(
            f"data SPEC {spec!r} needs a path after '{scheme}:'; e.g. {scheme}:PATH"
        )
    if scheme_l == "mnist":
        split = "test"
        head, colon, tail = rest.rpartition(":")
        if colon and tail.lower() in ("train", "test"):
            rest, split = head, tail.lower()
        return _load_mnist(Path(rest).expanduser(), split)
    if scheme_l == "npz":
        return _load_npz(Path(rest).expanduser())
    return _load_folder(Path(rest).expanduser())


def from_arrays(
    images: np.ndarray | Levels,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    description: str,
    source: str,
) -> ImageData:
    """Return checked :class:`ImageData` from arrays: non-empty, finite, in [0, 1].

    Every loader returns it, and so must a named data set's function. ``images``: ``N×H×W``,
    ``N×C×H×W`` or ``N×D``; ``labels`` (N,) or None; ``description`` says what the data is;
    ``source`` names it in error messages.
    """
    if images.shape[0] == 0:
        raise FactorlensError(
            f"{source} holds no samples (N=0); give data with at least one sample"
        )
    values = images.levels.size if isinstance(images, Levels) else images.size
    if values == 0:
        raise FactorlensError(
            f"{source} has shape {images.shape}: samples without values; give at least one "
            "value per sample"
        )
    if isinstance(images, Levels):  # 8-bit levels: finite and in [0, 1] by construction
        return _wrap(images, labels, class_names, description, source)
    if not np.isfinite(images).all():
        bad = int(np.count_nonzero(~np.isfinite(images)))
        raise FactorlensError(
            f"{source} contains {bad} NaN/Inf values; replace them with finite values in [0, 1]"
        )
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise FactorlensError(
            f"{source} has values in [{lo:.8g}, {hi:.8g}] but images must lie in [0, 1]; "
            "scale them to [0, 1] (e.g. divide 0..255 data by 255) and use `normalize` for "
            "the model's normalization"
        )
    return _wrap(
        np.ascontiguousarray(images, dtype=np.float32), labels, class_names, description, source
    )


def _wrap(
    images: np.ndarray | Levels,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    description: str,
    source: str,
) -> ImageData:
    """Check the labels against the images and wrap them in an :class:`ImageData`."""
    if labels is not None:
        if labels.shape != (images.shape[0],):
            raise FactorlensError(
                f"{source} has {labels.shape[0] if labels.ndim else 0} labels for "
                f"{images.shape[0]} samples; give exactly one integer label per sample"
            )
        if labels.size and labels.min() < 0:
            raise FactorlensError(
                f"{source} has negative labels (min {int(labels.min())}); labels must be class "
                "indices 0, 1, 2, ..."
            )
        if class_names is not None and labels.size and int(labels.max()) >= len(class_names):
            raise FactorlensError(
                f"{source} has label {int(labels.max())} but only {len(class_names)} class "
                "names; give one class name per class index"
            )
    return ImageData(
        images=images,
        labels=None if labels is None else np.ascontiguousarray(labels, dtype=np.int64),
        class_names=class_names,
        description=description,
    )


# --------------------------------------------------------------------------------------------
# digits


def named_datasets() -> dict[str, Any]:
    """Return the named data sets installed packages register: ``{name: entry point}``."""
    from importlib.metadata import entry_points

    return {ep.name.lower(): ep for ep in entry_points(group=DATASETS_GROUP)}


def _spec_forms() -> str:
    """Return the SPEC forms, the installed named data sets included."""
    names = sorted(set(named_datasets()) - {"digits"})
    return ", ".join(["digits", *names, *SPEC_FORMS.split(", ")[1:]])


def _load_named(name: str, entry: Any) -> ImageData:
    """Load the named data set ``name`` through its entry point (a one-line error if it fails)."""
    try:
        data = entry.load()()
    except FactorlensError:
        raise
    except Exception as exc:
        raise FactorlensError(
            f"the data set {name!r} ({entry.value}) failed to load: {type(exc).__name__}: "
            f"{exc}; reinstall the package that provides it"
        ) from exc
    if not isinstance(data, ImageData):
        raise FactorlensError(
            f"the data set {name!r} ({entry.value}) returned a {type(data).__name__}, not an "
            "ImageData; its function must return factorlens.data.from_arrays(...)"
        )
    return data


def _load_digits() -> ImageData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return from_arrays(
        images,
        labels,
        [str(i) for i in range(10)],
        f"scikit-learn digits ({images.shape[0]} images, 1×8×8, 10 classes)",
        "digits",
    )


# --------------------------------------------------------------------------------------------
# MNIST IDX


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping ``*.gz``; corrupt/truncated gzip -> FactorlensError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise FactorlensError(
            f"{path} is not a complete gzip file ({type(exc).__name__}: {exc}); download it again"
        ) from exc
    except OSError as exc:
        raise FactorlensError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _parse_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse an IDX file (uint8 data) into an array of shape given by its header."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise FactorlensError(
            f"{path} is truncated ({len(raw)} bytes, shorter than the IDX header); download it again"
        )
    zero0, zero1, dtype_code, ndim = raw[0], raw[1], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero0 != 0 or zero1 != 0:
        raise FactorlensError(
            f"{path} is not an IDX file (bad magic number 0x{magic:08x}); "
            "give the MNIST files as distributed (e.g. t10k-images-idx3-ubyte.gz)"
        )
    if dtype_code != _IDX_UINT8:
        raise FactorlensError(
            f"{path} has IDX data type 0x{dtype_code:02x} (magic 0x{magic:08x}); only unsigned "
            "byte (0x08) IDX files such as MNIST's are supported"
        )
    if ndim != expected_ndim:
        raise FactorlensError(
            f"{path} has {ndim} dimensions (magic 0x{magic:08x}) but {expected_ndim} were expected; "
            "check that the images and labels files are not swapped"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FactorlensError(
            f"{path} is truncated inside its IDX header ({len(raw)} bytes); download it again"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need = math.prod(dims)
    have = len(raw) - header
    if have < need:
        raise FactorlensError(
            f"{path} is truncated: header says {'×'.join(map(str, dims))} = {need} bytes of data "
            f"but only {have} are there; download it again"
        )
    if have > need:
        raise FactorlensError(
            f"{path} has {have - need} bytes more than its header ({'×'.join(map(str, dims))}) "
            "announces; the file is corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=need, offset=header).reshape(dims)


def _find_idx(directory: Path, split: str, kind: str, ndim: int) -> Path | None:
    prefix = "t10k" if split == "test" else "train"
    for sep in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = directory / f"{prefix}-{kind}{sep}idx{ndim}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _load_mnist(directory: Path, split: str) -> ImageData:
    if not directory.exists():
        raise FactorlensError(
            f"MNIST folder {directory} does not exist; check the path in mnist:DIR"
        )
    if not directory.is_dir():
        raise FactorlensError(
            f"{directory} is a file, but mnist:DIR needs the folder holding the IDX files"
        )
    img_path = _find_idx(directory, split, "images", 3)
    prefix = "t10k" if split == "test" else "train"
    if img_path is None:
        raise FactorlensError(
            f"no {prefix}-images-idx3-ubyte[.gz] in {directory}; put the MNIST {split} images "
            f"file there{' or use mnist:DIR:train' if split == 'test' else ''}"
        )
    images_u8 = _parse_idx(img_path, 3)
    labels = None
    lab_path = _find_idx(directory, split, "labels", 1)
    if lab_path is not None:
        labels = _parse_idx(lab_path, 1).astype(np.int64)
        if labels.shape[0] != images_u8.shape[0]:
            raise FactorlensError(
                f"{lab_path} has {labels.shape[0]} labels but {img_path} has "
                f"{images_u8.shape[0]} images; use matching files from the same split"
            )
    images = Levels(images_u8[:, None, :, :])
    n_cls = max(10, int(labels.max()) + 1) if labels is not None and labels.size else 10
    h, w = images.shape[2:]
    return from_arrays(
        images,
        labels,
        [str(i) for i in range(n_cls)] if labels is not None else None,
        f"MNIST {split} split from {directory} ({images.shape[0]} images, 1×{h}×{w}"
        f"{', labelled' if labels is not None else ', no labels'})",
        str(img_path),
    )


# --------------------------------------------------------------------------------------------
# npz


#: what ``npz:FILE`` must hold, for the error messages
_NPZ_CONTENTS = (
    "save it with np.savez(path, images=..., labels=...): images N×H×W or N×C×H×W (uint8, "
    "or float in [0, 1]) or N×D, optional labels (N integer class indices)"
)


def _load_npz(path: Path) -> ImageData:
    if not path.exists():
        raise FactorlensError(f"npz file {path} does not exist; check the path in npz:FILE")
    if path.is_dir():
        raise FactorlensError(f"{path} is a folder; npz:FILE needs a .npz file (use folder:DIR)")
    with path.open("rb") as fh:
        head = fh.read(6)
    if head == b"\x93NUMPY":
        raise FactorlensError(
            f"{path} holds a single array (.npy), not an npz archive; {_NPZ_CONTENTS}"
        )
    if not zipfile.is_zipfile(path):
        what = "an empty file" if not head else "not a (complete) zip file"
        raise FactorlensError(f"{path} is not an npz archive ({what}); {_NPZ_CONTENTS}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if "images" not in keys:
                raise FactorlensError(
                    f"{path} has no array 'images' (it has: {', '.join(keys) or 'nothing'}); "
                    f"{_NPZ_CONTENTS}"
                )
            arr = npz["images"]
            raw_labels = npz["labels"] if "labels" in keys else None
            raw_names = npz["class_names"] if "class_names" in keys else None
    except FactorlensError:
        raise
    except Exception as exc:  # object arrays, zipfile.BadZipFile (CRC), zlib.error, EOFError, ...
        if "allow_pickle" in str(exc):
            raise FactorlensError(
                f"{path} holds object arrays (pickled Python data), which factorlens never "
                f"loads; {_NPZ_CONTENTS}"
            ) from exc
        raise FactorlensError(
            f"{path} is a damaged npz archive ({type(exc).__name__}: {one_line(exc)}); "
            f"{_NPZ_CONTENTS}"
        ) from exc

    src = f"{path} 'images'"
    images = _npz_images(arr, src)
    labels = None
    if raw_labels is not None:
        labels = _npz_labels(raw_labels, path)
    class_names = None
    if raw_names is not None:
        names = np.asarray(raw_names)
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise FactorlensError(
                f"{path} 'class_names' must be a 1-D array of strings, got dtype {names.dtype} "
                f"shape {names.shape}"
            )
        class_names = [
            n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names.tolist()
        ]
    shape = "×".join(map(str, images.shape[1:]))
    kind = "images" if images.ndim == 4 else "samples"
    return from_arrays(
        images,
        labels,
        class_names,
        f"npz file {path} ({images.shape[0]} {kind}, {shape})",
        str(path),  # its checks name the labels and class names too, not only 'images'
    )


def _npz_images(raw: np.ndarray | bytes, src: str) -> np.ndarray | Levels:
    arr = np.asarray(raw)  # a zip member that is not a .npy file comes as bytes
    if arr.dtype.kind not in "uifb":
        raise FactorlensError(f"{src} has dtype {arr.dtype}; give uint8 or float images")
    if arr.ndim == 4 and arr.shape[1] not in (1, 3, 4) and arr.shape[3] in (1, 3, 4):
        raise FactorlensError(
            f"{src} has shape {arr.shape}, which looks channels-last (N×H×W×C); save "
            "images.transpose(0, 3, 1, 2) to get N×C×H×W"
        )
    if arr.ndim not in (2, 3, 4):
        raise FactorlensError(
            f"{src} has shape {arr.shape}; give N×H×W or N×C×H×W images (or N×D samples)"
        )
    if arr.dtype == np.uint8:  # kept as levels: a quarter of the memory (rows.Levels)
        return Levels(arr[:, None, :, :] if arr.ndim == 3 else arr)
    elif arr.dtype.kind in "fb":
        out = arr  # from_arrays checks the range, then casts to float32 (no overflow warning)
    else:
        raise FactorlensError(
            f"{src} has integer dtype {arr.dtype}; give uint8 (0..255) or float images scaled "
            "to [0, 1]"
        )
    if out.ndim == 3:
        out = out[:, None, :, :]
    return out


def _npz_labels(raw: np.ndarray, path: Path) -> np.ndarray:
    labels = np.asarray(raw)
    if labels.ndim != 1:
        raise FactorlensError(
            f"{path} 'labels' has shape {labels.shape}; give a 1-D array of N class indices"
        )
    if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        raise FactorlensError(
            f"{path} 'labels' holds values up to {int(labels.max())}, beyond any class index; "
            "give class indices 0, 1, 2, ..."
        )
    if labels.dtype.kind in "ui":
        return labels.astype(np.int64)
    if (
        labels.dtype.kind == "f"
        and (np.abs(labels) < 2**62).all()  # finite, and fits int64
        and (labels == np.round(labels)).all()
    ):
        return labels.astype(np.int64)
    raise FactorlensError(
        f"{path} 'labels' has dtype {labels.dtype} with non-integer values; give integer class "
        "indices (store class names separately in 'class_names')"
    )


# --------------------------------------------------------------------------------------------
# image folder


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _check_class_folders(
    directory: Path, class_dirs: list[Path], found: list[str], hidden: list[str]
) -> None:
    """Refuse a class folder without images: it would shift the later classes' labels.

    Note what a folder of class folders leaves out: hidden folders, images beside the class
    folders or in folders below them, files of other types.
    """
    empty = [d.name for d in class_dirs if d.name not in found]
    if empty:
        raise FactorlensError(
            f"class folder {directory / empty[0]} holds no images "
            f"({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) directly, so the classes after it "
            "would take other labels; put its images in it, or move the folder out"
        )
    left = [*hidden]
    top = _image_files(directory)
    if top:
        left.append(f"{len(top)} image(s) directly in {directory.name}")
    below = sum(1 for d in class_dirs for sub in d.iterdir() if sub.is_dir())
    if below:
        left.append(f"{below} folder(s) inside class folders")
    other = [
        p.name
        for d in class_dirs
        for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_EXTENSIONS
    ]
    if other:
        left.append(f"{len(other)} file(s) that are not images (e.g. {other[0]})")
    if left:
        note(
            f"image folder {directory}: one subfolder per class, its images directly in it; "
            f"not read: {'; '.join(left)}"
        )


def _load_folder(directory: Path) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    if not directory.exists():
        raise FactorlensError(
            f"image folder {directory} does not exist; check the path in folder:DIR"
        )
    if not directory.is_dir():
        raise FactorlensError(f"{directory} is not a folder; folder:DIR needs a folder of images")
    folders = sorted((d for d in directory.iterdir() if d.is_dir()), key=lambda d: d.name)
    hidden = [d.name for d in folders if d.name.startswith(".")]  # .ipynb_checkpoints, .git
    class_dirs = [d for d in folders if not d.name.startswith(".")]
    entries: list[tuple[Path, int]] = []
    found: list[str] = []
    for d in class_dirs:
        files = _image_files(d)
        if files:
            entries.extend((f, len(found)) for f in files)
            found.append(d.name)
    class_names: list[str] | None = found
    if entries:
        _check_class_folders(directory, class_dirs, found, hidden)
    if not entries:
        top = _image_files(directory)
        if not top:
            raise FactorlensError(
                f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in {directory} or its "
                "subfolders; put the images in one subfolder per class"
            )
        entries = [(f, -1) for f in top]
        class_names = None

    pictures = []
    expected: tuple[int, int] | None = None
    first: Path | None = None
    for f, _ in entries:
        try:
            with Image.open(f) as im:
                im.load()
                pic = im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise FactorlensError(
                f"cannot read image {f} ({type(exc).__name__}: {exc}); fix or remove the file"
            ) from exc
        except Image.DecompressionBombError as exc:
            raise FactorlensError(
                f"cannot read image {f}: {one_line(exc, 120)}; resize it to the model's input size"
            ) from exc
        if expected is None:
            expected, first = pic.size, f
        elif pic.size != expected:
            raise FactorlensError(
                f"image {f} is {pic.size[0]}×{pic.size[1]} (width×height) but {first} is "
                f"{expected[0]}×{expected[1]}; resize all images to the same size"
            )
        pictures.append(pic)

    gray = [_is_gray(p) for p in pictures]
    all_gray = all(gray)
    if not all_gray and sum(gray) > len(gray) // 2:  # a few colour files make it all colour
        colour = [f for (f, _), g in zip(entries, gray, strict=True) if not g]
        note(
            f"{len(colour)} of the {len(gray)} images are in colour (e.g. {colour[0]}, "
            f"{pictures[gray.index(False)].mode}), so every image is read with 3 channels; "
            "convert those to grayscale if the model takes one channel"
        )
    assert expected is not None  # entries is not empty, so the loop set it
    n, (w, h) = len(pictures), expected
    channels = 1 if all_gray else 3
    images = np.empty((n, channels, h, w), dtype=np.float32)
    for i, (pic, (f, _)) in enumerate(zip(pictures, entries, strict=True)):
        images[i] = _picture_array(pic, all_gray, f)
    labels = None if class_names is None else np.array([c for _, c in entries], dtype=np.int64)
    what = f"{len(class_names)} classes" if class_names is not None else "no labels"
    return from_arrays(
        images,
        labels,
        class_names,
        f"image folder {directory} ({n} images, {channels}×{h}×{w}, {what})",
        f"image folder {directory}",
    )


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _is_gray(pic) -> bool:
    """Grayscale modes, and palette images (e.g. GIF) whose colours are all gray."""
    if pic.mode in _GRAY_MODES:
        return True
    if pic.mode in ("P", "PA"):
        rgb = np.asarray(pic.convert("RGB"))
        return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return False


def _picture_array(pic, gray: bool, path: Path) -> np.ndarray:
    """One PIL image -> float32 (C, H, W) in [0, 1]."""
    if gray:
        if pic.mode.startswith("I"):
            arr = np.asarray(pic, dtype=np.float32) / 65535.0
        elif pic.mode == "F":
            arr = np.asarray(pic, dtype=np.float32)
            if arr.size and (arr.min() < 0 or arr.max() > 1):
                raise FactorlensError(
                    f"image {path} is a float image with values outside [0, 1]; save it as an "
                    "8-bit image"
                )
        else:
            arr = np.asarray(pic.convert("L"), dtype=np.float32) / 255.0
        return arr[None, :, :]
    if pic.mode.startswith("I"):
        gray16 = np.asarray(pic, dtype=np.float32) / 65535.0
        return np.repeat(gray16[None, :, :], 3, axis=0)
    arr = np.asarray(pic.convert("RGB"), dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------
# preprocessing


#: the largest mean and smallest std ``--normalize`` takes (inputs then stay below ~1e6)
MAX_NORMALIZE_MEAN = 1e6
MIN_NORMALIZE_STD = 1e-6


def parse_normalize(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Parse ``--normalize MEAN,STD``: ``"m,s"`` for 1 channel, ``"m1,m2,m3,s1,s2,s3"`` for 3.

    Returns ``(means, stds)``, one value per channel, in the units of the [0, 1] images.
    """
    fix = (
        'give MEAN,STD per channel, e.g. `normalize="0.1307,0.3081"` (1 channel) or '
        '`normalize="0.485,0.456,0.406,0.229,0.224,0.225"` (3 channels)'
    )
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(p == "" for p in parts):
        raise FactorlensError(f"cannot parse `normalize` {text!r}; {fix}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise FactorlensError(f"cannot parse `normalize` {text!r} as numbers; {fix}") from None
    if len(values) % 2:
        raise FactorlensError(
            f"`normalize` {text!r} has {len(values)} numbers, need an even count "
            f"(all means, then all stds); {fix}"
        )
    if not all(math.isfinite(v) for v in values):
        raise FactorlensError(f"`normalize` {text!r} has NaN/Inf values; {fix}")
    c = len(values) // 2
    means, stds = tuple(values[:c]), tuple(values[c:])
    if any(s <= 0 for s in stds):
        raise FactorlensError(
            f"`normalize` {text!r} has a standard deviation <= 0 ({', '.join(map(str, stds))}); "
            "every std must be positive"
        )
    # images are in [0, 1]: beyond these the normalized inputs (and their squares, summed over
    # a layer in float32) overflow, which reads later as a layer full of Inf
    if any(abs(m) > MAX_NORMALIZE_MEAN for m in means) or any(s < MIN_NORMALIZE_STD for s in stds):
        raise FactorlensError(
            f"`normalize` {text!r} would scale [0, 1] pixels past float32's range (means must "
            f"lie within ±{MAX_NORMALIZE_MEAN:g}, stds be at least {MIN_NORMALIZE_STD:g}); "
            "give the mean and std of the [0, 1] images the model was trained on"
        )
    return means, stds


class Preprocess:
    """The model's input transform: per-channel ``(x - mean) / std``, then the model file's hook.

    Call with float32 images ``(N, C, H, W)`` in [0, 1]; returns the tensor given to the model.
    """

    def __init__(
        self,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.normalize = (
            None
            if normalize is None
            else (tuple(float(m) for m in normalize[0]), tuple(float(s) for s in normalize[1]))
        )
        if self.normalize is not None:
            means, stds = self.normalize
            if len(means) != len(stds) or not means:
                raise FactorlensError(
                    f"normalization needs one mean and one std per channel, got {len(means)} "
                    f"means and {len(stds)} stds"
                )
            if any(s <= 0 for s in stds):
                raise FactorlensError("normalization stds must be positive; check `normalize`")
        self.hook = hook

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float tensor (N, C, H, W) in [0, 1] -> the model's input tensor."""
        if self.normalize is not None:
            means, stds = self.normalize
            if x.ndim != 4:
                raise FactorlensError(
                    f"`normalize` needs images N×C×H×W but the data has shape {tuple(x.shape)}; "
                    "drop `normalize` for non-image data"
                )
            if x.shape[1] != len(means):
                raise FactorlensError(
                    f"`normalize` gives {len(means)} channel(s) but the images have {x.shape[1]}; "
                    f"give {x.shape[1]} means then {x.shape[1]} stds"
                )
            shape = (1, len(means), 1, 1)
            mean = torch.tensor(means, dtype=x.dtype, device=x.device).reshape(shape)
            std = torch.tensor(stds, dtype=x.dtype, device=x.device).reshape(shape)
            x = (x - mean) / std
        if self.hook is not None:
            name = getattr(self.hook, "__qualname__", repr(self.hook))
            try:
                out = self.hook(x)
            except FactorlensError:
                raise
            except Exception as exc:
                msg = str(exc).replace("\n", " ")
                raise FactorlensError(
                    f"the model file's preprocess hook {name} failed on a batch of shape "
                    f"{tuple(x.shape)} ({type(exc).__name__}: {msg}); fix the hook"
                ) from exc
            if not isinstance(out, torch.Tensor):
                raise FactorlensError(
                    f"the model file's preprocess hook {name} returned {type(out).__name__}; "
                    "it must return a torch.Tensor"
                )
            x = out
        return x

    def __repr__(self) -> str:
        parts = []
        if self.normalize is not None:
            parts.append(f"normalize(mean={self.normalize[0]}, std={self.normalize[1]})")
        if self.hook is not None:
            parts.append(f"hook {getattr(self.hook, '__qualname__', repr(self.hook))}")
        return f"Preprocess({', '.join(parts) or 'identity'})"


def make_preprocess(
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build the model input transform: ``(x - mean) / std`` per channel, then ``hook(x)``.

    ``normalize`` is ``(means, stds)`` as returned by :func:`parse_normalize`; the channel count is
    checked when the transform is called. With neither argument the transform is the identity.
    """
    return Preprocess(normalize, hook)
