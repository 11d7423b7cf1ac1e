"""Lemma 8 and Lemma 9 (Section 3.1, Appendix A5, Figure 9): how a ReLU's removed rows bound the
singular values of ``D_I A`` against those of ``A``.

* :func:`check_lemma8` checks the global bounds of Lemma 8 for a matrix and an index set.
* :func:`lemma9_counts` / :func:`lemma9_curve` follow the numerical study of Lemma 9 in
  Appendix A5 (Figure 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import nn

from ._validate import as_finite_array
from .jacobian_svd import singular_values
from .layer_spectrum import rank_tolerance
from .network import activation_pattern, linearize

__all__ = ["Lemma8Check", "Lemma9Curve", "check_lemma8", "lemma9_counts", "lemma9_curve"]


@dataclass(frozen=True)
class Lemma8Check:
    """Both bounds of Lemma 8 for ``D_I A`` against ``A``.

    Attributes:
        smallest_nonzero: ``min{sigma_l > 0}`` of ``D_I A`` (``nan`` if ``D_I A`` is zero).
        smallest_bound: ``sigma~_k`` of ``A`` with ``k = N - |I|`` (``inf`` when ``k < 1``: the
            lemma then says nothing).
        largest: ``max sigma_l`` of ``D_I A`` (0 if ``D_I A`` is zero).
        largest_bound: ``sigma~_1`` of ``A``.
        smallest_holds, largest_holds: whether each bound holds up to ``tolerance``.
        holds: both hold.
        k: ``N - |I|``; ``n_nonzero``: ``N``, the number of non-zero singular values of ``A``;
        removed: ``|I|``.
        tolerance: absolute slack allowed in the comparisons and used to call a singular value
            zero: :func:`reluinv.layer_spectrum.rank_tolerance` of ``A``, ``max(m, n) * eps * sigma~_1``.
    """

    smallest_nonzero: float
    smallest_bound: float
    largest: float
    largest_bound: float
    smallest_holds: bool
    largest_holds: bool
    k: int
    n_nonzero: int
    removed: int
    tolerance: float

    @property
    def holds(self) -> bool:
        return self.smallest_holds and self.largest_holds


@dataclass(frozen=True)
class Lemma9Curve:
    """Appendix A5 / Figure 9: how many remaining rows satisfy condition (3) of Lemma 9.

    Attributes:
        cs: the constants ``c`` (as given).
        counts: ``counts[j]`` = the largest, over removed rows ``a_k`` (``k`` in ``I``), number of
            remaining rows ``a_i`` (``i`` not in ``I``) with
            ``|<a_i, a_k>| <= cs[j] * ||a_k|| / sqrt(M)`` (A5 steps 2-4).
        remaining: ``M = m - |I|`` (the red line of Figure 9).
        removed: ``|I|``.
        c_star: the smallest ``c`` for which some ``a_k`` has all ``M`` remaining rows satisfying
            (3) (A5 step 5), computed exactly: ``min_k sqrt(M) max_i |<a_i, a_k>| / ||a_k||``.
            ``nan`` when no row is removed or every removed row is zero.
        best_k: the unit ``k`` attaining ``c_star`` (``-1`` when ``c_star`` is ``nan``).
        best_k_in_row_space: whether ``a_{best_k}`` lies in ``N(D_I A)^perp`` (the row space of
            the remaining rows), the hypothesis of Lemma 9 that A5 step 4 ignores; ``None`` if not
            checked.
        layer: module index of the ReLU (model wrapper only, else ``None``).
        sigma_min_after, sigma_max_after: smallest non-zero and largest singular value of
            ``D_I A`` (``None`` if not computed), to compare with the bound ``c_star``.
    """

    cs: NDArray[np.float64]
    counts: NDArray[np.intp]
    remaining: int
    removed: int
    c_star: float
    best_k: int
    best_k_in_row_space: bool | None = None
    layer: int | None = None
    sigma_min_after: float | None = None
    sigma_max_after: float | None = None


# --------------------------------------------------------------------------------------------
# Lemma 8
# --------------------------------------------------------------------------------------------


def _index_set(inactive: Any, m: int, name: str = "I") -> NDArray[np.intp]:
    arr = np.asarray(inactive)
    if arr.dtype == bool:
        if arr.shape != (m,):
            raise ValueError(f"{name} as a boolean mask must have shape ({m},), got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.size == 0:
        return np.zeros(0, dtype=np.intp)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-d array of row indices or a boolean mask of length {m}")
    if arr.min() < 0 or arr.max() >= m:
        raise ValueError(f"{name} has indices outside [0, {m})")
    out = np.unique(arr.astype(np.intp))
    if out.size != arr.size:
        raise ValueError(f"{name} has repeated indices")
    return out


def check_lemma8(A: Any, I: Any) -> Lemma8Check:
    """Check Lemma 8 for ``A`` (m x n) and the index set ``I`` (rows that ReLU switches off).

    Lemma 8: with ``sigma~_1 >= ... >= sigma~_N > 0`` the non-zero singular values of ``A`` and
    ``sigma_l`` those of ``D_I A`` (``A`` with the rows in ``I`` zeroed),

    * ``min{sigma_l > 0} <= sigma~_k`` with ``k = N - |I|`` (when ``k >= 1``), and
    * ``max{sigma_l} <= sigma~_1``.

    Both hold for every index set, admissible or not (interlacing); admissibility (Definition 7)
    only matters for reading ``D_I`` as the effect of a ReLU.

    Args:
        A: ``(m, n)`` array.
        I: row indices (1-d integer array) or a boolean mask of length ``m``.

    Returns:
        A :class:`Lemma8Check` with both sides of both bounds and whether they hold.

    Example::

        A = np.random.default_rng(0).standard_normal((6, 3))
        I = np.flatnonzero(A @ np.ones(3) + 0.1 <= 0)       # an admissible set
        check_lemma8(A, I).holds                               # True
    """
    A = as_finite_array(A, "A", ndim=2)
    m, n = A.shape
    rows = _index_set(I, m)
    sigma_a = singular_values(A) if min(m, n) else np.zeros(0)
    top = float(sigma_a[0]) if sigma_a.size else 0.0
    tol = rank_tolerance(top, (m, n))
    nonzero_a = sigma_a[sigma_a > tol]
    reduced = A.copy()
    reduced[rows] = 0.0
    sigma_r = singular_values(reduced) if min(m, n) else np.zeros(0)
    nonzero_r = sigma_r[sigma_r > tol]
    N, k = int(nonzero_a.size), int(nonzero_a.size) - int(rows.size)
    smallest = float(nonzero_r[-1]) if nonzero_r.size else math.nan
    smallest_bound = float(nonzero_a[k - 1]) if k >= 1 else math.inf
    largest = float(sigma_r[0]) if sigma_r.size else 0.0
    return Lemma8Check(
        smallest_nonzero=smallest,
        smallest_bound=smallest_bound,
        largest=largest,
        largest_bound=top,
        smallest_holds=bool(math.isnan(smallest) or smallest <= smallest_bound + tol),
        largest_holds=bool(largest <= top + tol),
        k=k,
        n_nonzero=N,
        removed=int(rows.size),
        tolerance=tol,
    )


# --------------------------------------------------------------------------------------------
# Lemma 9 / Appendix A5
# --------------------------------------------------------------------------------------------


def lemma9_counts(
    A: Any, I: Any, cs: Any, *, check_row_space: bool = True, with_singular_values: bool = False
) -> Lemma9Curve:
    """Appendix A5, steps 1-5, for a matrix ``A`` (rows ``a_i`` = units) and removed rows ``I``.

    Condition (3) of Lemma 9 for a removed row ``a_k`` (``k`` in ``I``) and a remaining row ``a_i``
    (``i`` not in ``I``, ``M`` of them): ``|<a_i, a_k>| <= c ||a_k|| / sqrt(M)``.  For every ``c``
    in ``cs`` this counts, for every ``a_k``, the remaining rows that satisfy it, and keeps the
    largest count (steps 2-4).  ``c_star`` is the smallest ``c`` at which some ``a_k`` is satisfied
    by all ``M`` rows (step 5); if ``a_k`` also lies in ``N(D_I A)^perp``, Lemma 9 gives
    ``sigma_min(D_I A) <= c_star``.  Zero removed rows are skipped (condition (3) would be vacuous).
    The correlations ``<a_i, a_k>`` are formed at once: ``M * |I|`` float64 numbers of memory.

    Args:
        A: ``(m, n)`` array; for a network, the linearisation up to the ReLU's pre-activation.
        I: removed rows (indices or boolean mask), e.g. ``{i : (A x + b)_i <= 0}``.
        cs: the constants ``c`` (1-d, non-negative).
        check_row_space: test whether ``a_{best_k}`` lies in the row space of the remaining rows.
        with_singular_values: also compute the extreme singular values of ``D_I A``.

    Returns:
        A :class:`Lemma9Curve` (``counts`` against ``cs`` is Figure 9; ``remaining`` its red line).

    Example::

        A = np.random.default_rng(0).standard_normal((40, 10))
        curve = lemma9_counts(A, np.arange(5), np.linspace(0, 10, 50))
    """
    A = as_finite_array(A, "A", ndim=2)
    cs = as_finite_array(cs, "cs", ndim=1)
    if np.any(cs < 0):
        raise ValueError("cs must be non-negative")
    m, n = A.shape
    removed = _index_set(I, m)
    keep = np.setdiff1d(np.arange(m), removed)
    M = int(keep.size)
    norms = np.linalg.norm(A[removed], axis=1)
    usable = removed[norms > 0]
    counts = np.zeros(cs.size, dtype=np.intp)
    c_star, best_k, in_row_space = math.nan, -1, None
    if usable.size and M:
        # Correlations scaled so that condition (3) reads r_ik <= c (columns: removed rows k).
        r = np.abs(A[keep] @ A[usable].T) * (math.sqrt(M) / norms[norms > 0])
        r.sort(axis=0)
        for column in range(usable.size):
            np.maximum(counts, np.searchsorted(r[:, column], cs, side="right"), out=counts)
        needed = r[-1]
        best = int(np.argmin(needed))
        c_star, best_k = float(needed[best]), int(usable[best])
        if check_row_space:
            remaining = A[keep]
            coef, *_ = np.linalg.lstsq(remaining.T, A[best_k], rcond=None)
            residual = np.linalg.norm(remaining.T @ coef - A[best_k])
            in_row_space = bool(residual <= 1e-8 * max(1.0, float(np.linalg.norm(A[best_k]))))
    sigma_min = sigma_max = None
    if with_singular_values:
        values = singular_values(A[keep]) if M else np.zeros(0)
        tol = rank_tolerance(float(values[0]) if values.size else 0.0, (m, n))
        nonzero = values[values > tol]
        sigma_max = float(values[0]) if values.size else 0.0
        sigma_min = float(nonzero[-1]) if nonzero.size else math.nan
    return Lemma9Curve(
        cs=cs,
        counts=counts,
        remaining=M,
        removed=int(removed.size),
        c_star=c_star,
        best_k=best_k,
        best_k_in_row_space=in_row_space,
        sigma_min_after=sigma_min,
        sigma_max_after=sigma_max,
    )


def lemma9_curve(
    model: nn.Module,
    x: Any,
    layer: int,
    cs: Any,
    *,
    check_row_space: bool = True,
    with_singular_values: bool = True,
) -> Lemma9Curve:
    """Figure 9 for the ReLU at module index ``layer`` of ``model`` at input ``x``.

    ``A`` is the linearisation of modules ``0..layer-1`` (``linearize(model, x, upto=layer)``): the
    exact map from the input to the pre-activation of that ReLU on the linear region of ``x``, one
    row per unit.  ``I`` is the ReLU's index set ``{i : z_i <= 0}`` (Definition 7).  Then
    :func:`lemma9_counts` runs Appendix A5's steps 1-5.

    Example::

        model = zoo.wide_cifar().eval()
        curve = lemma9_curve(model, torch.rand(3, 32, 32), 7, np.linspace(0, 10, 101))
        # Figure 9: plot(curve.cs, curve.counts); axhline(curve.remaining)
    """
    pattern = activation_pattern(model, x)
    if layer not in pattern:
        raise ValueError(f"layer must be the module index of a ReLU, one of {sorted(pattern)}; got {layer!r}")
    A, _ = linearize(model, x, upto=layer)
    curve = lemma9_counts(
        A, pattern[layer], cs, check_row_space=check_row_space, with_singular_values=with_singular_values
    )
    return Lemma9Curve(**{**curve.__dict__, "layer": int(layer)})
