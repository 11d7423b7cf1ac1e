"""Rank, a particular solution and a null-space basis of ``E x = e`` from one QR factorisation.

Theorem 4 needs rank(A_pos), a point solving the equalities and an orthonormal basis ``O`` of
N(A_pos).  The naive route takes two SVDs; one Householder QR gives all three.  Dense layers almost
always have independent active rows, so an unpivoted QR (BLAS-3, several times faster than
pivoting) is tried first and accepted when LAPACK's condition estimate of ``R`` certifies full rank;
otherwise a rank-revealing QR with column pivoting decides.  Only the k null-space columns of
``Q`` are formed, by applying the reflectors to ``[0; I_k]``.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.linalg import lapack

#: Full rank is accepted from the unpivoted QR when rcond(R) exceeds this multiple of the rank rule.
_SAFETY = 1e3


def certifies_full_rank(rcond: float, shape: tuple[int, ...]) -> bool:
    """Whether a factor's reciprocal condition estimate certifies full rank of a ``p x n`` system
    of unit rows: ``rcond > 1e3 * max(p, n) * eps`` (the rule of :class:`EqualityFactor`)."""
    return bool(rcond > _SAFETY * max(*shape, 1) * np.finfo(float).eps)


def square_pick(p: int, n: int) -> NDArray[np.intp]:
    """The ``n`` of ``p >= n`` rows whose independence is tried first: the floor of an evenly
    spaced grid with step >= 1, so the indices are distinct (rounding could collide)."""
    return np.floor(np.linspace(0, p - 1, n)).astype(np.intp)


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
            certified by ``rcond > 1e3 * max(p, n) * eps`` of the unpivoted QR, or, when p >= n, of
            the LU factors of n of the rows).
        rank_ratio: how clearly the rank was decided (rcond estimate or |R_rr| / |R_11|).
        x_p: a solution of the first ``rank`` independent equations (min-norm when E has full row rank).
        basis: :class:`NullBasis` of N(E).
    """

    def __init__(self, E: NDArray[np.float64], e: NDArray[np.float64]):
        p, n = E.shape
        self.n = n
        eps_rule = max(p, n, 1) * np.finfo(float).eps
        if p == 0:
            self.rank, self.rank_ratio, self.x_p = 0, 1.0, np.zeros(n)
            self.basis: NullBasis = ExplicitBasis(np.eye(n))
            return
        if p < n and self._try_unpivoted_wide(E, e):
            return
        if p >= n and self._try_unpivoted_tall(E, e):
            return
        self._pivoted(E, e, eps_rule)

    def _try_unpivoted_wide(self, E, e) -> bool:
        p = E.shape[0]
        # LAPACK directly: scipy.linalg.qr would also copy out the triangle R (a tenth of the QR).
        qr, tau, _work, info = lapack.dgeqrf(E.T, lwork=max(1, 64 * p))
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK dgeqrf failed with info={info}")
        R = qr[:p, :p]  # LAPACK reads only the upper triangle
        rcond = lapack.dtrcon(R, norm="1", uplo="U", diag="N")[0]
        if not certifies_full_rank(rcond, E.shape):
            return False
        # E = R^T Q1^T, so x_p = Q1 R^{-T} e; O = Q2.  One application of the reflectors to
        # [[w, 0], [0, I]] gives both without forming the whole of Q.
        # dtrtrs reads R in place from qr (its leading dimension given), without a copy of R.
        w, info = lapack.dtrtrs(qr, e, lower=0, trans=1)
        if info != 0:  # pragma: no cover - rcond above certified a non-zero diagonal
            raise RuntimeError(f"LAPACK dtrtrs failed with info={info}")
        k = self.n - p
        c = np.zeros((self.n, 1 + k), order="F")
        c[:p, 0] = w
        c[p:, 1:] = np.eye(k)
        # Workspace for blocks of up to 64 reflectors and their 65 x 64 triangular factor: with
        # less, dormqr falls back to one reflector at a time (3x slower at k = 54).
        lwork = 64 * (1 + k) + 65 * 64
        out, _work, info = lapack.dormqr("L", "N", qr, tau, c, lwork=lwork, overwrite_c=1)
        if info != 0:  # pragma: no cover - LAPACK argument error
            raise RuntimeError(f"LAPACK dormqr failed with info={info}")
        self.x_p = out[:, 0].copy()
        self.rank, self.rank_ratio, self.basis = p, float(rcond), ExplicitBasis(out[:, 1:])
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

    def _try_unpivoted_tall(self, E, e) -> bool:
        if self._try_square_subset(E, e):
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
