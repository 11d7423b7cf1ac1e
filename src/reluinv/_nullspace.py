"""Rank, a particular solution and a null-space basis of ``E x = e`` from one factorisation.

Theorem 4 needs rank(A_pos), a point solving the equalities and an orthonormal basis ``O`` of
N(A_pos).  The naive route takes two SVDs.  Dense layers almost always have independent active
rows, so cheaper factorisations are tried first and accepted when a condition estimate of their
factors certifies full rank: with fewer rows than inputs (p < n) an LU of ``E^T`` with partial
pivoting, whose null basis one Cholesky QR step makes orthonormal (:func:`wide_from_lu`; about
half the work of a Householder QR and the formation of its null columns; the estimate is
randomised, from probes that share the solves the basis needs); with p >= n an
LU of n of the rows, then a QR of all of them.  Otherwise a rank-revealing QR with column
pivoting decides.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.linalg import blas, lapack

from ._scratch import work_array

#: Full rank is accepted from a factor whose rcond exceeds this multiple of the rank rule.
_SAFETY = 1e3

#: The LU null basis is accepted when the rcond of its Cholesky factor C exceeds this, i.e. when
#: ``|W|`` is at most about 1e3-1e4 (``cond(C) = sqrt(1 + |W|^2)``): then ``O`` is orthonormal
#: and ``E O`` vanishes to about ``p * eps * |W|`` or better (measured on the 3500 x 784 layers of
#: ``benchmarks/preimage_speed.py``: ``|W| = 13-68``, both below 4e-14).  Else the pivoted QR.
_CHOLQR_RCOND = 1e-4


def certifies_full_rank(rcond: float, shape: tuple[int, ...]) -> bool:
    """Whether a factor's reciprocal condition estimate certifies full rank of a ``p x n`` system
    of unit rows: ``rcond > 1e3 * max(p, n) * eps`` (the rule of :class:`EqualityFactor`)."""
    return bool(rcond > _SAFETY * max(*shape, 1) * np.finfo(float).eps)


def square_pick(p: int, n: int) -> NDArray[np.intp]:
    """The ``n`` of ``p >= n`` rows whose independence is tried first: the floor of an evenly
    spaced grid with step >= 1, so the indices are distinct (rounding could collide)."""
    return np.floor(np.linspace(0, p - 1, n)).astype(np.intp)


def wide_from_lu(
    E: NDArray[np.float64],
    e: NDArray[np.float64],
    lu: NDArray[np.float64],
    piv: NDArray[np.integer],
    row_scale: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], float] | None:
    """``(x_p, O, rcond)`` for ``E x = e`` (p x n unit rows, p < n) from an LU factorisation of
    ``E^T`` with partial pivoting, or None when it does not certify full row rank.

    ``lu`` (n x p) and ``piv`` (0-based row interchanges, in order) are LAPACK ``getrf``'s output
    for ``E^T``: ``E[:, perm] = U^T L^T`` with ``L = [L1; L2]`` unit lower trapezoidal, so
    partial pivoting picks p columns of E.  E has full row rank when the picked square
    ``E1 = E[:, perm[:p]] = U^T L1^T`` is well conditioned (``sigma_p(E) >= sigma_min(E1)``, as
    ``E E^T`` contains ``E1 E1^T``); :func:`_inverse_norm_estimate` gauges ``|E1^{-1}|_2`` and the
    rule of :func:`certifies_full_rank` decides.  ``N(E)`` is spanned by the columns of
    ``N = [W; I]`` (rows in ``perm`` order) with ``W = -L1^{-T} L2^T``.  As ``N^T N = I + W^T W``
    has its eigenvalues in ``[1, 1 + |W|^2]``, one Cholesky QR step ``O = N C^{-1}``
    (``C^T C = N^T N``) makes the basis orthonormal to rounding when C is well conditioned
    (:data:`_CHOLQR_RCOND`).  ``x_p`` is the minimum-norm solution: the basic one (zero off the
    picked columns) less its part in N(E).

    About half the work of a Householder QR of ``E^T`` and the formation of its k null columns.
    The triangular solves share passes over the factors: one with ``U^T`` (for ``e`` and the
    estimate's probes), one with ``L1^T`` (for ``L2^T``, ``e`` and the probes).

    ``row_scale``: positive ``s`` where the system is ``diag(s) E x = e`` and ``lu`` factors the
    unscaled ``E^T``.  Scaling E's rows scales the columns of ``E^T``, which changes neither the
    pivots nor L (each column's pivot and multipliers are ratios within it), and makes U into
    ``U diag(s)``; so s enters only the solves with U, and E is never scaled (0.3 ms for 600 x 784).
    """
    p, n = E.shape
    k = n - p
    if not np.all(np.diagonal(lu)[:p]):  # an exactly zero pivot
        return None
    # The row interchanges of E^T, in order, applied to 0 .. n-1 (exact in float64).
    perm = lapack.dlaswp(np.arange(n, dtype=np.float64)[:, None], piv[:p])[:, 0].astype(np.intp)
    probes = _probes(p)
    t = probes.shape[1]
    rhs = np.empty((p, 1 + t), order="F")
    rhs[:, 0], rhs[:, 1:] = e, probes
    if row_scale is not None:
        rhs /= row_scale[:, None]
    v = lapack.dtrtrs(lu, rhs, lower=0, trans=1, overwrite_b=1)[0]  # (U diag(s))^T v = [e, probes]
    # L1^T [-W, u, Y] = [L2^T, v], solved transposed: [-W^T; u^T; Y^T] L1 = [L2; v^T]
    # (-W, the basic solution u = E1^{-1} e, Y = E1^{-1} probes).
    solved = work_array("null basis solves", (k + 1 + t, p), order="F")
    solved[:k], solved[k:] = lu[p:], v.T
    _solve_unit_lower_right(lu[:p], solved)
    neg_wt, u, Y = solved[:k], solved[k], solved[k + 1 :].T
    # |E1|_2 <= |E1|_F <= sqrt(p) for unit rows: an upper bound only lowers the estimate.
    rcond = 1.0 / (np.sqrt(p) * _inverse_norm_estimate(lu, Y, row_scale))
    if not certifies_full_rank(rcond, E.shape):
        return None
    gram = blas.dsyrk(1.0, neg_wt, trans=0, lower=0)
    gram[np.diag_indices(k)] += 1.0
    C, info = lapack.dpotrf(gram, lower=0, clean=1, overwrite_a=1)
    if info != 0 or lapack.dtrcon(C, norm="1", uplo="U", diag="N")[0] < _CHOLQR_RCOND:
        return None
    C_inv = lapack.dtrtri(C, lower=0)[0]
    O = np.empty((n, k))
    # (W C^{-1})^T = -C^{-T} (-W^T), by a product with the inverse (half the time of the solve;
    # C is well conditioned)
    O[perm[:p]] = blas.dtrmm(-1.0, C_inv, neg_wt, side=0, lower=0, trans_a=1).T
    O[perm[p:]] = C_inv
    basic = np.zeros(n)
    basic[perm[:p]] = u
    return basic - O @ (O.T @ basic), O, float(rcond)


#: Columns of the triangle below which :func:`_solve_unit_lower_right` calls ``dtrsm`` itself.
_SOLVE_LEAF = 64


def _solve_unit_lower_right(L: NDArray[np.float64], X: NDArray[np.float64]) -> None:
    """``X <- X L^{-1}`` in place, for the unit lower triangle of the square ``L`` (its diagonal
    and upper part are not read) and X in column-major order.

    Recursive halving (``X2 L22 = B2``, then ``X1 L11 = B1 - X2 L21``) puts most of the work in
    matrix products, which OpenBLAS runs at about twice the speed of its triangular solves: the
    solve of the L1^T system of :func:`wide_from_lu` at nullity 184 (600 x 600 triangle, 189
    right-hand sides) takes 2.1-2.2 ms this way, against 2.8-2.9 ms as one ``dtrsm`` or
    ``dtrtrs`` call, on one core of the development machine.  Column blocks of X are contiguous,
    so every call works on X itself.
    """
    p = L.shape[0]
    if p <= _SOLVE_LEAF:
        blas.dtrsm(1.0, L, X, side=1, lower=1, diag=1, overwrite_b=1)
        return
    h = p // 2
    _solve_unit_lower_right(L[h:, h:], X[:, h:])
    blas.dgemm(-1.0, X[:, h:], L[h:, :h], beta=1.0, c=X[:, :h], overwrite_c=1)
    _solve_unit_lower_right(L[:h, :h], X[:, :h])


#: Random probes of the estimate of ``|E1^{-1}|_2`` (fixed seed: the same answer every run).
_PROBES = 4


@cache
def _probes(p: int) -> NDArray[np.float64]:
    probes = np.random.default_rng(p).standard_normal((p, _PROBES))
    probes.flags.writeable = False
    return probes


def _inverse_norm_estimate(
    lu: NDArray[np.float64], Y: NDArray[np.float64], row_scale: NDArray[np.float64] | None = None
) -> float:
    """A lower estimate of ``|E1^{-1}|_2`` from ``Y = E1^{-1} Z`` (Z: random probes), with
    ``E1^T = L1 U diag(s)`` in ``lu`` and ``row_scale`` (s = 1 for None): one step of the power
    method on ``E1^{-T} E1^{-1}``, the largest ``|E1^{-T} y| / |y|`` over the probes (at most the
    norm; randomised condition estimation).

    A nearly singular E1 has an inverse dominated by one direction, which random probes meet
    with probability 1, so the estimate is then close to the norm; ``inf`` when the solves
    overflow (the certificate is refused).  Two triangular solves with the probes, where
    LAPACK's ``dgecon`` makes about ten with one vector each.
    """
    X = lapack.dtrtrs(lu, Y, lower=1, trans=0, unitdiag=1)[0]  # L1 X = Y
    Y2 = lapack.dtrtrs(lu, X, lower=0, trans=0, overwrite_b=1)[0]  # U Y2 = X
    if row_scale is not None:
        Y2 /= row_scale[:, None]  # diag(s)^{-1} U^{-1} L1^{-1} Y = E1^{-T} Y
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ratio = np.linalg.norm(Y2, axis=0) / np.linalg.norm(Y, axis=0)
    estimate = float(np.max(ratio))
    return estimate if np.isfinite(estimate) else np.inf


class NullBasis:
    """An orthonormal basis ``O`` (n x k) of a null space."""

    n: int
    k: int

    def expand(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        """``O @ z`` for z of shape (k,) or (k, s)."""
        raise NotImplementedError

    def matrix(self) -> NDArray[np.float64]:
        return self.expand(np.eye(self.k))


class ExplicitBasis(NullBasis):
    def __init__(self, O: NDArray[np.float64]):
        self.O = O
        self.n, self.k = O.shape

    def expand(self, z):
        return self.O @ z

    def matrix(self):
        return self.O


class EqualityFactor:
    """Solve ``E x = e`` (unit rows) in the sense of Theorem 4.

    Attributes:
        rank: rank of E (``|R_jj| > max(p, n) * eps * |R_11|`` of a pivoted QR, or full rank
            certified by ``rcond > 1e3 * max(p, n) * eps``: for p < n of the LU of ``E^T``
            (:func:`wide_from_lu`), for p >= n of the LU factors of n of the rows or of the
            unpivoted QR).
        rank_ratio: how clearly the rank was decided (rcond estimate or |R_rr| / |R_11|).
        x_p: a solution of the first ``rank`` independent equations (min-norm when E has full row rank).
        basis: :class:`NullBasis` of N(E).
    """

    def __init__(
        self,
        E: NDArray[np.float64],
        e: NDArray[np.float64],
        source: Callable[[], NDArray[np.float64]] | None = None,
        *,
        lu_refused: bool = False,
        row_scale: NDArray[np.float64] | None = None,
    ):
        """``source``: where given, a function that returns E anew; E itself may then be
        overwritten (the LU of ``E^T`` runs in place, saving a copy) and ``source()`` gives the
        pivoted QR its E.  ``lu_refused``: the LU tried first (of ``E^T`` for p < n, of the n
        picked rows for p >= n) was already computed elsewhere and did not certify full rank
        (:mod:`reluinv.preimage_batch`), so it is not repeated.  ``row_scale``: positive s, where
        the system is ``diag(s) E x = e`` (see :func:`wide_from_lu`); ``source()`` then gives the
        scaled rows."""
        p, n = E.shape
        self.n = n
        eps_rule = max(p, n, 1) * np.finfo(float).eps
        if p == 0:
            self.rank, self.rank_ratio, self.x_p = 0, 1.0, np.zeros(n)
            self.basis: NullBasis = ExplicitBasis(np.eye(n))
            return
        if p < n and not lu_refused:
            if self._try_lu_wide(E, e, overwrite=source is not None, row_scale=row_scale):
                return
            if source is not None:
                E, row_scale = source(), None  # source() gives the scaled rows
        if row_scale is not None:
            if source is None:
                E = E * row_scale[:, None]
            else:  # E may be overwritten: in place, 4x faster than a broadcast product
                E *= row_scale[:, None]
        if p >= n and self._try_unpivoted_tall(E, e, try_square_subset=not lu_refused):
            return
        self._pivoted(E, e, eps_rule)

    def _try_lu_wide(self, E, e, overwrite: bool = False, row_scale=None) -> bool:
        lu, piv, info = lapack.dgetrf(E.T, overwrite_a=overwrite)
        if info < 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK dgetrf failed with info={info}")
        solved = wide_from_lu(E, e, lu, piv, row_scale)
        if solved is None:
            return False
        self.x_p, O, rcond = solved
        self.rank, self.rank_ratio, self.basis = E.shape[0], rcond, ExplicitBasis(O)
        return True

    def _try_square_subset(self, E, e) -> bool:
        """Rank n from n of the p >= n rows: if they are independent, so is E (a third of the
        work of a QR of all rows).  x_p then solves those n equations; the caller checks the rest."""
        n = self.n
        pick = square_pick(E.shape[0], n)
        if pick.size < n:
            return False
        with warnings.catch_warnings():  # a singular pick is expected now and then: QR decides
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            lu, piv = scipy.linalg.lu_factor(E[pick], check_finite=False)
        rcond = lapack.dgecon(lu, np.abs(E[pick]).sum(axis=0).max(), norm="1")[0]
        if not certifies_full_rank(rcond, E.shape):
            return False
        self.x_p = scipy.linalg.lu_solve((lu, piv), e[pick], check_finite=False)
        self.rank, self.rank_ratio = n, float(rcond)
        self.basis = ExplicitBasis(np.zeros((n, 0)))
        return True

    def _try_unpivoted_tall(self, E, e, try_square_subset: bool = True) -> bool:
        if try_square_subset and self._try_square_subset(E, e):
            return True
        (qr, tau), _ = scipy.linalg.qr(E, mode="raw", check_finite=False)
        n = self.n
        R = qr[:n, :n]  # LAPACK reads only the upper triangle
        rcond = lapack.dtrcon(R, norm="1", uplo="U", diag="N")[0]
        if not certifies_full_rank(rcond, E.shape):
            return False
        qte, _work, info = lapack.dormqr("L", "T", qr, tau, np.asfortranarray(e[:, None]), lwork=64)
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK dormqr failed with info={info}")
        self.x_p = scipy.linalg.solve_triangular(R, qte[:n, 0], lower=False, check_finite=False)
        self.rank, self.rank_ratio = n, float(rcond)
        self.basis = ExplicitBasis(np.zeros((n, 0)))
        return True

    def _pivoted(self, E, e, eps_rule) -> None:
        Q, R, piv = scipy.linalg.qr(E.T, mode="full", pivoting=True, check_finite=False)
        diag = np.abs(np.diag(R))
        r = int(np.count_nonzero(diag > eps_rule * diag[0])) if diag.size and diag[0] > 0 else 0
        self.rank = r
        self.rank_ratio = float(diag[r - 1] / diag[0]) if r else 1.0
        w = scipy.linalg.solve_triangular(R[:r, :r], e[piv[:r]], trans="T", lower=False, check_finite=False)
        self.x_p = Q[:, :r] @ w
        self.basis = ExplicitBasis(Q[:, r:])

    @property
    def nullity(self) -> int:
        return self.basis.k
