"""CIFAR-shaped inputs for the CNN figures (5, 6, 8, 9, 10): the Table 3/4 networks always see
3-channel square images.

* ``--data-dir`` holds CIFAR-10 python batches: those images (3 x 32 x 32), as in Section 3.2.
* Otherwise a *stand-in of the same shape* made from the grey images at hand (the embedded MNIST
  digits, or Fashion-MNIST / MNIST IDX files in ``--data-dir``): each 28 x 28 image is zero-padded
  to 32 x 32 and coloured, a light foreground colour on a dark background colour with a gentle
  ramp, both drawn per image from a fixed seed (:data:`STAND_IN_SEED`) independently of the
  label.  Every one of the 3,072 input coordinates then varies over the data set, as CIFAR's do,
  and the result is deterministic.

Why the shape matters: the rank of a prefix Jacobian is capped by the input dimension.  On 3,072
inputs ThinCIFAR's last convolution (32 x 8 x 8 = 2,048 units) must lose non-zero singular values
(Figure 5's "layer 5"), which 1 x 28 x 28 inputs (784) can never show.

Quick mode may shrink the images to 3 x 16 x 16 (2 x 2 average pooling, :data:`QUICK_IMAGE_SIZE`):
input and every layer shrink by the same factor 4, so the width-against-input relations the
figures test are unchanged (ThinCIFAR's last convolution: 512 units for 768 inputs).  Full mode is
always 3 x 32 x 32.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..data import Dataset, load_dataset, load_embedded_digits
from .common import RunConfig

#: Side of the images the CNN figures use in full mode (the paper's CIFAR-10).
FULL_IMAGE_SIZE = 32
#: Side in quick mode: 3 x 32 x 32 spectra cost minutes per sample on a 2-core CPU (README).
QUICK_IMAGE_SIZE = 16
#: Seed of the stand-in's colours (train and test draw from different streams of it).
STAND_IN_SEED = 2018
_CHUNK = 5000


@dataclass(frozen=True)
class CnnInputs:
    """The data of the CNN figures.

    Attributes:
        train, test: the splits, images ``(N, 3, size, size)``.
        label: what the data is, for every title and the report, e.g. ``"CIFAR-10, 3x32x32"`` or
            ``"stand-in for CIFAR-10: embedded MNIST digits padded to 32x32 and coloured, ..."``.
        real_cifar: whether the images are CIFAR-10's.
        size: the image side (32, or 16 in quick mode).
    """

    train: Dataset
    test: Dataset
    label: str
    real_cifar: bool
    size: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    @property
    def shape_text(self) -> str:
        return f"3x{self.size}x{self.size}"


def colour_stand_in(grey: Dataset, *, seed: int = STAND_IN_SEED) -> Dataset:
    """A 3 x 32 x 32 stand-in for CIFAR-10 made from one-channel images of side at most 32.

    Each image ``g`` (values in [0, 1]) is zero-padded to 32 x 32 (centred) and becomes
    ``(1 - g) * background + g * foreground``: ``foreground`` a colour in [0.55, 1]^3,
    ``background`` a colour in [0, 0.45]^3 times a linear ramp between 0.7 and 1.3 in a random
    direction, all drawn per image from ``numpy.random.default_rng((seed, split))``.  Labels are
    kept; the colours do not depend on them.

    Raises:
        ValueError: ``grey`` does not hold one-channel images of side at most 32.
    """
    shape = grey.input_shape
    if len(shape) != 3 or shape[0] != 1 or shape[1] > 32 or shape[2] > 32:
        raise ValueError(
            f"the CIFAR stand-in needs one-channel images of side <= 32, got input shape {shape}"
        )
    n, (_, h, w) = len(grey), shape
    top, left = (32 - h) // 2, (32 - w) // 2
    rng = np.random.default_rng((seed, 0 if grey.split == "train" else 1))
    foreground = rng.uniform(0.55, 1.0, size=(n, 3, 1, 1)).astype(np.float32)
    background = rng.uniform(0.0, 0.45, size=(n, 3, 1, 1)).astype(np.float32)
    angle = rng.uniform(0.0, 2 * np.pi, size=(n, 1, 1, 1)).astype(np.float32)
    v, u = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    u, v = u.astype(np.float32), v.astype(np.float32)
    images = np.empty((n, 3, 32, 32), dtype=np.float32)
    for start in range(0, n, _CHUNK):  # chunks keep 60,000 Fashion-MNIST images within memory
        part = slice(start, min(n, start + _CHUNK))
        g = np.zeros((part.stop - start, 1, 32, 32), dtype=np.float32)
        g[:, :, top : top + h, left : left + w] = grey.images[part]
        ramp = 1.0 + 0.3 * (np.cos(angle[part]) * u + np.sin(angle[part]) * v) / np.float32(np.sqrt(2))
        images[part] = (1.0 - g) * (background[part] * ramp) + g * foreground[part]
    return Dataset(
        images=np.clip(images, 0.0, 1.0, out=images),
        labels=np.asarray(grey.labels),
        name=f"{grey.name}-cifar-stand-in",
        source=f"{grey.source}, padded to 32x32 and coloured",
        split=grey.split,
        class_names=grey.class_names,
    )


def shrink(data: Dataset, size: int) -> Dataset:
    """``data`` (N, C, S, S) average-pooled to side ``size`` (``S`` a multiple of ``size``)."""
    _, s, s2 = data.input_shape
    if s != s2 or size < 1 or s % size:
        raise ValueError(f"cannot pool {s}x{s2} images to {size}x{size}: the side must divide evenly")
    if size == s:
        return data
    f = s // size
    n, c = data.images.shape[:2]
    pooled = data.images.reshape(n, c, size, f, size, f).mean(axis=(3, 5), dtype=np.float64)
    return Dataset(
        images=pooled.astype(np.float32),
        labels=np.asarray(data.labels),
        name=data.name,
        source=f"{data.source}, average-pooled to {size}x{size}",
        split=data.split,
        class_names=data.class_names,
    )


def image_size(config: RunConfig) -> int:
    """32 in full mode; :data:`QUICK_IMAGE_SIZE` in quick mode."""
    return QUICK_IMAGE_SIZE if config.quick else FULL_IMAGE_SIZE


def cnn_inputs(config: RunConfig) -> CnnInputs:
    """The CNN figures' data for ``config`` (CIFAR-10, else the stand-in; see the module doc)."""
    return _cnn_inputs(config.data_dir, image_size(config))


@functools.lru_cache(maxsize=2)
def _cnn_inputs(data_dir: str | None, size: int) -> CnnInputs:
    if data_dir is None:
        grey = (load_embedded_digits("train"), load_embedded_digits("test"))
    else:
        grey = (load_dataset(data_dir, split="train"), load_dataset(data_dir, split="test"))
    shape = grey[0].input_shape
    if shape == (3, 32, 32):
        train, test, real = grey[0], grey[1], True
        label = "CIFAR-10"
    elif len(shape) == 3 and shape[0] == 1:
        train, test, real = colour_stand_in(grey[0]), colour_stand_in(grey[1]), False
        source = grey[1].source.split(" (")[0] if data_dir is None else grey[1].source
        label = f"stand-in for CIFAR-10 (not supplied): {source} padded to 32x32 and coloured"
    else:
        raise ValueError(
            f"--data-dir {data_dir!r} holds images of shape {shape}; the CNN figures "
            "need CIFAR-10 (3x32x32) or one-channel images of side <= 32"
        )
    if size == FULL_IMAGE_SIZE:
        return CnnInputs(train=train, test=test, label=f"{label}, 3x32x32", real_cifar=real, size=size)
    factor = (FULL_IMAGE_SIZE // size) ** 2
    label += (
        f", pooled to 3x{size}x{size} (quick mode: input and every layer {factor}x smaller than the paper's)"
    )
    return CnnInputs(
        train=shrink(train, size), test=shrink(test, size), label=label, real_cifar=real, size=size
    )
