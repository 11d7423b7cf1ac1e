"""Omnidirectionality of row sets (Definition 1, Corollary 2, Theorem 5, Corollary 6, Theorem 11).

A matrix ``A`` (m x n) is *omnidirectional* when every open half-space of R^n contains a row
(Definition 1), equivalently when ``A d <= 0`` forces ``d = 0`` (Corollary 2 ii), equivalently when
0 lies in the **interior** of the convex hull of the rows (Theorem 5).  The interior needs two
things: a strictly positive combination of the rows that vanishes (Stiemke, Theorem 11) and
``rank A = n``.  The LP printed in Appendix A3 tests only ``0 in conv(rows)`` and so accepts
``[[1, 0], [-1, 0], [0, 1]]``; :func:`is_omnidirectional` rejects it.

Every answer comes with a certificate that can be checked without trusting the solver:

* omnidirectional: multipliers ``lam > 0`` on a subset ``rows`` of the rows with
  ``A[rows].T @ lam = 0`` and ``rank A[rows] = n``.  A superset of an omnidirectional set is
  omnidirectional, so a subset suffices;
* not omnidirectional: a unit ``direction`` ``d`` with ``A d <= 0`` (Corollary 2 iv).

Decisions use one linear programme (solved by HiGHS) whose primal gives the direction and whose
dual gives the multipliers, inside a row-generation loop that usually looks at a small fraction of
the rows (see :func:`omnidirectional_certificate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linprog

from ._validate import as_finite_array

__all__ = ["OmniCertificate", "is_omnidirectional", "omnidirectional_certificate"]

#: Default relative tolerance for sign decisions on unit-norm rows (see ``omnidirectional_certificate``).
DEFAULT_RTOL = 1e-9


@dataclass(frozen=True)
class OmniCertificate:
    """Result of :func:`omnidirectional_certificate`.

    Attributes:
        omnidirectional: the decision.
        rows: indices of the rows that carry ``multipliers`` (omnidirectional only).
        multipliers: strictly positive ``lam`` with ``A[rows].T @ lam ~ 0`` (omnidirectional only),
            scaled so that ``min(lam) = 1``.
        direction: unit vector ``d`` with ``A d <= tolerance`` row-wise on unit-norm rows (only when
            not omnidirectional).
        margin: how far the decision is from flipping, in [0, 1].  Omnidirectional: the smaller of
            ``min(lam)/max(lam)`` and ``sigma_min/sigma_max`` of the certifying rows.  Not
            omnidirectional: ``-max_i <a_i, d>/|a_i|`` for the returned direction (0 when the
            direction lies in some row's hyperplane, as on a hull boundary).
        tolerance: the tolerance the decision used.
        reason: one line saying which argument decided.
    """

    omnidirectional: bool
    rows: NDArray[np.intp] | None
    multipliers: NDArray[np.float64] | None
    direction: NDArray[np.float64] | None
    margin: float
    tolerance: float
    reason: str

    def __bool__(self) -> bool:
        return self.omnidirectional


def is_omnidirectional(A: NDArray[np.float64] | list, *, rtol: float = DEFAULT_RTOL) -> bool:
    """True iff every open half-space contains a row of ``A`` (Definition 1, Theorem 5).

    >>> is_omnidirectional([[1, 0], [-1, 0], [0, 1], [0, -1]])
    True
    >>> is_omnidirectional([[1, 0], [-1, 0], [0, 1]])   # 0 on the hull boundary
    False
    """
    return omnidirectional_certificate(A, rtol=rtol).omnidirectional


def omnidirectional_certificate(
    A: NDArray[np.float64] | list, *, rtol: float = DEFAULT_RTOL
) -> OmniCertificate:
    """Decide omnidirectionality of ``A`` (m x n) and return a checkable certificate.

    Rows are scaled to unit norm first (zero rows lie in no open half-space and are ignored).
    Tolerances: a row counts as satisfying ``<a_i, d> <= 0`` when ``<a_i, d> <= rtol`` for a unit
    ``d``; the rank counts singular values above ``max(m, n) * eps * sigma_max``.

    Corollary 6 gives a free answer when there are at most n rows.  Otherwise the LP

        maximise sum(w)  subject to  A_S z + w <= 0,  0 <= w <= 1

    is solved on a subset S of rows.  A positive optimum gives ``z`` with ``A_S z <= 0``, ``z != 0``;
    an optimum of 0 has dual multipliers ``lam >= 1`` with ``A_S^T lam = 0`` (Stiemke, Theorem 11).
    A direction that violates no row of the full ``A`` ends the search; multipliers with
    ``rank A_S = n`` end it too; otherwise the violated rows join S.
    """
    A = as_finite_array(A, "A", ndim=2)
    return _omni_lazy(_RowSource.from_matrix(A), rtol=rtol)


# --- implementation -------------------------------------------------------------------------


@dataclass
class _RowSource:
    """Rows of ``G @ basis`` produced on demand, so large systems are never formed in full.

    ``rows(idx)`` returns the requested rows (unit norm in the original space of G);
    ``apply(d)`` returns ``G_unit @ (basis @ d)`` for all rows.
    """

    m: int
    n: int
    rows: Callable[[NDArray[np.intp]], NDArray[np.float64]]
    apply: Callable[[NDArray[np.float64]], NDArray[np.float64]]

    @staticmethod
    def from_matrix(A: NDArray[np.float64]) -> _RowSource:
        norms = np.linalg.norm(A, axis=1)
        keep = norms > 0
        An = A[keep] / norms[keep, None]
        return _RowSource(
            m=An.shape[0],
            n=A.shape[1],
            rows=lambda idx: An[idx],
            apply=lambda d: An @ d,
        )

    @staticmethod
    def from_restriction(G_unit: NDArray[np.float64], basis: NDArray[np.float64]) -> _RowSource:
        """Rows of ``G_unit @ basis`` (A-bar = A O^T of Theorem 4), formed only for requested rows.

        ``basis`` has orthonormal columns, so ``basis @ z`` is a unit x-space direction for unit z.
        """
        return _RowSource(
            m=G_unit.shape[0],
            n=basis.shape[1],
            rows=lambda idx: G_unit[idx] @ basis,
            apply=lambda d: G_unit @ (basis @ d),
        )


def _null_vector(M: NDArray[np.float64]) -> NDArray[np.float64] | None:
    """A unit vector of N(M) if ``rank M < cols``, else None (rank rule of the module docstring)."""
    rows, cols = M.shape
    if rows < cols:
        _, _, vt = np.linalg.svd(M, full_matrices=True)
        return vt[-1]
    _, s, vt = np.linalg.svd(M, full_matrices=False)
    if s.size == 0 or s[-1] <= max(rows, cols) * np.finfo(float).eps * s[0]:
        return vt[-1]
    return None


def _rank_ratio(M: NDArray[np.float64]) -> float:
    s = np.linalg.svd(M, compute_uv=False)
    return float(s[-1] / s[0]) if s.size and s[0] > 0 else 0.0


def _direction_lp(
    rows: NDArray[np.float64], rtol: float
) -> tuple[NDArray[np.float64] | None, NDArray[np.float64] | None]:
    """Solve max sum(w) s.t. rows z + w <= 0, 0 <= w <= 1.

    Returns ``(z, None)`` when a non-zero z with ``rows z <= 0`` exists, else ``(None, lam)`` with
    ``lam >= 1`` and ``rows.T @ lam ~ 0`` (the LP dual).
    """
    s, n = rows.shape
    c = np.concatenate([np.zeros(n), -np.ones(s)])
    a_ub = np.hstack([rows, np.eye(s)])
    bounds = [(None, None)] * n + [(0.0, 1.0)] * s
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(s), bounds=bounds, method="highs")
    if res.status != 0:  # pragma: no cover - the LP is feasible and bounded by construction
        raise RuntimeError(f"HiGHS failed on the omnidirectionality LP: {res.message}")
    z = res.x[:n]
    if -res.fun > 1e3 * rtol and np.linalg.norm(z) > 0:
        return z / np.linalg.norm(z), None
    return None, -np.asarray(res.ineqlin.marginals)


def _initial_subset(m: int, n: int) -> NDArray[np.intp]:
    size = min(m, 2 * n + 16)
    return np.unique(np.linspace(0, m - 1, size).round().astype(np.intp))


def _omni_lazy(src: _RowSource, *, rtol: float) -> OmniCertificate:
    m, n = src.m, src.n
    if n == 0:
        return OmniCertificate(True, np.zeros(0, np.intp), np.zeros(0), None, 1.0, rtol,
                               "R^0 has no non-zero direction")
    if m <= n:
        all_rows = src.rows(np.arange(m))
        d = _null_vector(all_rows)
        if d is None:  # m == n, invertible: A d = -1 pointwise
            d = np.linalg.solve(all_rows, -np.ones(m))
            d /= np.linalg.norm(d)
        return OmniCertificate(False, None, None, d, _strictness(src.apply(d)), rtol,
                               f"Corollary 6: {m} non-zero rows <= dimension {n}")
    subset = _initial_subset(m, n)
    batch = max(n, 32)
    while True:
        rows = src.rows(subset)
        z, lam = _direction_lp(rows, rtol)
        if z is None:
            assert lam is not None
            d = _null_vector(rows)
            if d is None:
                lam = np.maximum(lam, 0.0)
                if lam.min() > 0:
                    lam = lam / lam.min()
                    margin = min(float(lam.min() / lam.max()), _rank_ratio(rows))
                    return OmniCertificate(True, subset, lam, None, margin, rtol,
                                           f"strictly positive combination of {subset.size} rows "
                                           f"with rank {n} (Theorem 5)")
                z = None  # solver returned a degenerate dual; fall through to add rows
            else:
                z = d
        if z is not None:
            prod = src.apply(z)
            if prod.max() <= rtol:
                return OmniCertificate(False, None, None, z, _strictness(prod), rtol,
                                       "direction d != 0 with A d <= 0 (Corollary 2 iv)")
            if np.all(prod >= -rtol) and (prod.max() > rtol):
                neg = src.apply(-z)
                if neg.max() <= rtol:  # a null vector whose opposite works
                    return OmniCertificate(False, None, None, -z, _strictness(neg), rtol,
                                           "direction d != 0 with A d <= 0 (Corollary 2 iv)")
            violated = np.flatnonzero(prod > rtol)
        else:
            violated = np.arange(m)
        fresh = np.setdiff1d(violated, subset, assume_unique=False)
        if fresh.size == 0:
            fresh = np.setdiff1d(np.arange(m), subset)
            if fresh.size == 0:  # pragma: no cover - the full system always decides
                raise RuntimeError("omnidirectionality undecided on the full row set")
        if z is not None and fresh.size > batch:
            fresh = fresh[np.argsort(-src.apply(z)[fresh])[:batch]]
        subset = np.union1d(subset, fresh)


def _strictness(prod: NDArray[np.float64]) -> float:
    return float(max(0.0, -prod.max())) if prod.size else 1.0
