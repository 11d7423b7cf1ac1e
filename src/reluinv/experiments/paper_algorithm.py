"""The paper's Algorithm 1 ("Finite preimage", Appendix A3), transcribed literally.

Given ``y = ReLU(A x + b)`` the algorithm

1. returns "singleton" when ``rank(A|_{y>0}) = n`` (the SVD rank with numpy's and scipy's default
   tolerance ``max(m, n) * eps * sigma_max``; fewer than ``n`` positive outputs cannot have rank
   ``n``, so no SVD is needed to say no);
2. takes an orthonormal basis ``O`` of ``N(A|_{y>0})`` (the right singular vectors of the same
   SVD beyond the rank, as ``scipy.linalg.null_space`` computes it) and
   ``A-bar = A|_{y=0} O^T`` with ``k-bar`` rows and ``k`` columns;
3. returns "unbounded" when ``k-bar <= k`` (Corollary 6);
4. otherwise solves the linear program of the convex-hull definition (Definition 10, Theorem 5):
   find ``lambda >= 0`` with ``sum(lambda) = 1`` and ``A-bar^T lambda = 0`` under the arbitrary
   objective ``max 1^T lambda``, with a default LP solve (``scipy.optimize.linprog``, HiGHS,
   default options), and returns "compact" (finite volume) exactly when the LP has a solution.

What this tests is ``0 in Conv(A-bar)``, the *closed* hull: the paper assumes "that 0 will not lie
on the boundary of the convex hull".  Where it does, the preimage is unbounded (Theorem 5 needs the
interior) but the algorithm says finite.  The algorithm also never uses ``b``: it cannot see a
Theorem 4 (ii) singleton pinned by tight inequalities (it says "compact"), nor an empty preimage.
The exact engine, :func:`reluinv.preimage`, decides all of these; Figure 4 runs both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
from scipy.optimize import linprog

#: linprog's status codes (scipy documentation): 0 solved, 2 infeasible; others mean no answer.
LP_SOLVED, LP_INFEASIBLE = 0, 2


def paper_finite_preimage(A: Any, y: Any, *, assume_full_rank: bool = False) -> dict[str, Any]:
    """Algorithm 1 of Appendix A3 on the layer matrix ``A`` (m x n) and the output ``y`` (m,).

    ``assume_full_rank`` runs it as the paper ran Figure 4: Section 4 says that for MLPs "it was
    assumed ... that rank(A|_{y>0}) = |{i : y_i > 0}|", so step 1 becomes "at least n positive
    outputs" and the null-space basis comes from a complete QR of ``A|_{y>0}^T`` (its last
    ``n - #positive`` columns), both without an SVD.  Where that assumption fails, the rank and the
    basis are wrong, as they would have been for the paper.

    Returns ``{"paper_kind", "rank", "k", "k_bar", "lp_status"}``: ``paper_kind`` is
    "singleton" (step 1), "compact" (the LP has a solution) or "unbounded" (Corollary 6, or the
    LP has none: infeasible, or any other linprog status, which the literal algorithm also reads
    as "no solution"); ``lp_status`` is linprog's status, or None when no LP ran.

    Raises:
        ValueError: ``A`` not a finite 2-d array, or ``y`` not a finite non-negative vector with
            one entry per row of ``A``.
    """
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.ndim != 2 or not np.all(np.isfinite(A)):
        raise ValueError(f"A must be a finite 2-d array, got shape {A.shape}")
    if y.shape != (A.shape[0],) or not np.all(np.isfinite(y)) or np.any(y < 0):
        raise ValueError(
            f"y must be a finite non-negative vector of length {A.shape[0]}, got shape {y.shape}"
        )
    n = A.shape[1]
    positive = y > 0
    A_pos = A[positive]
    if A_pos.shape[0] >= n:
        rank = n if assume_full_rank else _rank(np.linalg.svd(A_pos, compute_uv=False), A_pos.shape)
        if rank == n:
            return {"paper_kind": "singleton", "rank": rank, "k": 0, "k_bar": 0, "lp_status": None}
    O, rank = _assumed_null_space(A_pos, n) if assume_full_rank else _null_space(A_pos, n)
    A_bar = A[~positive] @ O
    k_bar, k = A_bar.shape
    if k_bar <= k:
        return {"paper_kind": "unbounded", "rank": rank, "k": k, "k_bar": k_bar, "lp_status": None}
    status = _hull_lp(A_bar)
    kind = "compact" if status == LP_SOLVED else "unbounded"
    return {"paper_kind": kind, "rank": rank, "k": k, "k_bar": k_bar, "lp_status": status}


def _rank(singular_values: np.ndarray, shape: tuple[int, int]) -> int:
    """numpy's ``matrix_rank`` rule on given singular values."""
    if singular_values.size == 0:
        return 0
    tol = singular_values.max() * max(shape) * np.finfo(np.float64).eps
    return int(np.count_nonzero(singular_values > tol))


def _null_space(A_pos: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """Orthonormal basis (n x k) of ``N(A_pos)`` and the rank, from one full SVD (scipy's
    ``null_space`` with its default ``rcond``); the identity when no output is positive."""
    if A_pos.shape[0] == 0:
        return np.eye(n), 0
    _, s, vt = scipy.linalg.svd(A_pos, full_matrices=True)
    rank = _rank(s, A_pos.shape)
    return vt[rank:].T.conj(), rank


def _assumed_null_space(A_pos: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """``N(A_pos)`` for ``A_pos`` of full row rank r < n: the last n - r columns of the complete
    QR factor of ``A_pos^T``, and r."""
    r = A_pos.shape[0]
    if r == 0:
        return np.eye(n), 0
    q, _ = scipy.linalg.qr(A_pos.T, mode="full")
    return q[:, r:], r


def _hull_lp(A_bar: np.ndarray) -> int:
    """linprog's status for: max 1^T lambda s.t. A_bar^T lambda = 0, 1^T lambda = 1, lambda >= 0."""
    k_bar = A_bar.shape[0]
    equalities = np.vstack([A_bar.T, np.ones((1, k_bar))])
    rhs = np.zeros(equalities.shape[0])
    rhs[-1] = 1.0
    result = linprog(-np.ones(k_bar), A_eq=equalities, b_eq=rhs, bounds=(0, None), method="highs")
    return int(result.status)
