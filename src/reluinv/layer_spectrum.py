"""One prefix's spectrum (Section 3.2) and the one rank tolerance used everywhere in reluinv.

:class:`LayerSpectrum` is the result type of :func:`reluinv.spectra` (dense and Lanczos);
:func:`rank_tolerance` is the single rule that decides which singular values count as zero, used
by the spectra, by :func:`reluinv.check_lemma8` and by :func:`reluinv.lemmas.lemma9_counts`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from .network import AffineStep, Step

__all__ = ["LayerSpectrum", "input_columns", "jacobian_unchanged", "rank_tolerance", "spectrum_from_values"]

EPS = float(np.finfo(np.float64).eps)


def rank_tolerance(top: float, shape: tuple[int, int], rank_rtol: float | None = None) -> float:
    """Absolute threshold below which a singular value of an ``m x n`` matrix counts as zero.

    Default rule (as ``numpy.linalg.matrix_rank``): ``max(m, n) * eps * top``, with ``top`` the
    largest singular value and ``eps`` the float64 machine epsilon: the size of the rounding
    errors of a backward-stable SVD, so values below it cannot be told from zero.  With
    ``rank_rtol`` given: ``rank_rtol * top``.

    Example::

        rank_tolerance(2.0, (100, 10))      # 100 * 2.22e-16 * 2 = 4.4e-14
    """
    if rank_rtol is not None:
        return float(rank_rtol) * float(top)
    return max(shape) * EPS * float(top)


@dataclass(frozen=True)
class LayerSpectrum:
    """Singular values of the Jacobian of the network up to and including one module.

    Attributes:
        index: position of the module in the flattened ``Sequential``.
        name: ``"<index>:<ClassName>"``, e.g. ``"3:ReLU"``.
        out_dim: number of output units of the module (rows of the Jacobian).
        in_dim: number of input coordinates that vary (columns; with a ``window`` only those).
        singular_values: float64, descending.  ``method="dense"``: all ``min(out_dim, in_dim)`` of
            them (zeros included).  ``method="lanczos"``: the same when the bidiagonalisation
            exhausted the row space (:attr:`complete`), else the ``k`` largest and ``k`` smallest
            non-zero Ritz values (see :attr:`largest`, :attr:`smallest`), without repeats.
        rank: number of singular values above :attr:`rank_tolerance` (``None`` for an incomplete
            Lanczos run, which does not see the whole spectrum).
        rank_tolerance: absolute threshold below which a singular value counts as zero.  Default
            rule (as ``numpy.linalg.matrix_rank``): ``max(out_dim, in_dim) * eps * sigma_max`` with
            ``eps`` the float64 machine epsilon; with ``rank_rtol`` given: ``rank_rtol * sigma_max``.
        condition: ``sigma_max / sigma_min`` with ``sigma_min`` the smallest singular value above
            the tolerance.  ``nan`` when there is none (the Jacobian is zero, rank 0): the inverse
            on the row space is then undefined, and ``nan`` keeps medians over samples honest.
        method: ``"dense"`` or ``"lanczos"``.
        complete: whether :attr:`singular_values` holds the whole spectrum.
        largest: Lanczos only: the ``k`` largest singular values (descending).
        smallest: Lanczos only: the smallest singular values above the tolerance that were found
            (descending); may hold fewer than ``k`` when a null space got in the way.
        null_directions: Lanczos only: Ritz values at or below the rank tolerance (rounding
            noise; the Krylov vectors live in the row space, so this is normally 0).
        steps: Lanczos only: number of bidiagonalisation steps (pairs of ``J v`` and ``J^T u``).
        converged: Lanczos only: the ``k`` largest and ``k`` smallest Ritz values met the residual
            tolerance (or the row space was exhausted).  If False they are still bounds: the
            largest from below, the smallest non-zero from above.
    """

    index: int
    name: str
    out_dim: int
    in_dim: int
    singular_values: NDArray[np.float64]
    rank: int | None
    rank_tolerance: float
    condition: float
    method: str = "dense"
    complete: bool = True
    largest: NDArray[np.float64] | None = None
    smallest: NDArray[np.float64] | None = None
    null_directions: int | None = None
    steps: int | None = None
    converged: bool | None = None


def spectrum_from_values(
    step: Step, in_dim: int, values: NDArray[np.float64], rank_rtol: float | None
) -> LayerSpectrum:
    """The dense :class:`LayerSpectrum` of ``step`` from all its singular values (descending)."""
    top = float(values[0]) if values.size else 0.0
    tol = rank_tolerance(top, (step.out_dim, in_dim), rank_rtol)
    nonzero = values[values > tol]
    return LayerSpectrum(
        index=step.index,
        name=step.name,
        out_dim=step.out_dim,
        in_dim=in_dim,
        singular_values=values,
        rank=int(nonzero.size),
        rank_tolerance=tol,
        condition=float(nonzero[0] / nonzero[-1]) if nonzero.size else math.nan,
    )


def jacobian_unchanged(step: Step, slope: torch.Tensor | None) -> bool:
    """Whether ``step`` leaves the prefix Jacobian as it was (an identity-like affine step, or an
    activation with every slope non-zero... only a ReLU with every unit on)."""
    if isinstance(step, AffineStep):
        return step.is_identity
    return step.kind == "relu" and slope is not None and bool((slope != 0).all())


def input_columns(in_shape: tuple[int, ...], window: Sequence[int] | None) -> NDArray[np.intp]:
    """Flat indices of the varying input coordinates (all, or those of ``window`` = (top, left,
    height, width) for a (C, H, W) image), pixel-major for images: the column order of every prefix
    Jacobian, chain or graph (see :func:`reluinv.jacobian_svd.staircase_r`)."""
    if len(in_shape) != 3:
        if window is not None:
            raise ValueError(f"window needs an image input of shape (C, H, W), got input shape {in_shape}")
        return np.arange(math.prod(in_shape), dtype=np.intp)
    channels, height, width = in_shape
    index = np.arange(channels * height * width, dtype=np.intp).reshape(channels, height, width)
    if window is not None:
        try:
            top, left, win_h, win_w = (int(v) for v in window)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"window must be (top, left, height, width), got {window!r}") from exc
        if win_h < 1 or win_w < 1 or top < 0 or left < 0 or top + win_h > height or left + win_w > width:
            raise ValueError(
                f"window (top={top}, left={left}, height={win_h}, width={win_w}) must lie inside the "
                f"{height} x {width} input and be non-empty"
            )
        index = index[:, top : top + win_h, left : left + win_w]
    return np.ascontiguousarray(index.transpose(1, 2, 0)).reshape(-1)
