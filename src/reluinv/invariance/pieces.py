"""One activation pattern's piece of a multi-layer preimage, written as a one-layer system in input
space so that :func:`reluinv.preimage` (Theorem 4 with the box, Remark 3) classifies and
certifies it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..preimage import Preimage
from .problem import Problem

#: Relative singular-value threshold for the rank of a piece's composed equalities (of the largest
#: singular value), and the length (of a unit row) below which an inequality row restricted to
#: their null space counts as constant.
PIECE_RANK_RTOL = 1e-10
#: An equality row that composes to zero is consistent when its right-hand side is at most this
#: times ``max(1, max |rhs|)``.
ZERO_ROW_RTOL = 1e-12
#: The equalities are consistent, and a constant inequality row holds, up to this times
#: ``max(1, |x_p|_inf)`` (resp. the row's scale at the particular solution ``x_p``).
PIECE_CONSISTENCY_RTOL = 1e-9

System = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


@dataclass(frozen=True)
class PreimagePiece:
    """One activation pattern's piece of a multi-layer preimage, as a one-layer system.

    The piece ``{x' : pattern constraints, F(x') = features}`` is written as the preimage of
    ``y_piece`` under ``x -> ReLU(A x + b)`` (rows with ``y > 0`` are equalities, the others
    ``a_i x + b_i <= 0``), so ``result.verify(A, b, y, lower=, upper=)`` checks it independently.
    The composed equalities are given as an orthonormal basis of their row space, and inequality
    rows that are constant on the equalities' affine hull and hold there are left out (rounding
    in the composition must not decide a rank or omnidirectionality; see :func:`reduce_piece`).

    Attributes:
        pattern: one bool array per ReLU block with variables (True = active).
        A, b, y: the piece as a one-layer system in input space.
        result: :func:`reluinv.preimage` of that system (with the box).
    """

    pattern: tuple[NDArray[np.bool_], ...]
    A: NDArray[np.float64] = field(repr=False)
    b: NDArray[np.float64] = field(repr=False)
    y: NDArray[np.float64] = field(repr=False)
    result: Preimage = field(repr=False)


def piece_system(problem: Problem, pattern: Sequence[NDArray[np.bool_]]) -> System:
    """The piece of one full pattern as ``(A, b, y)`` of a one-layer system in input space."""
    net = problem.net
    n = problem.n
    eye, zero = np.eye(n), np.zeros(n)
    # every block's output on the piece as an affine map of the input: h_l = Js[l] x + ks[l]
    Js: list[NDArray[np.float64]] = []
    ks: list[NDArray[np.float64]] = []
    A_rows, b_rows, y_rows = [], [], []
    for l, blk in enumerate(net.blocks):
        J, k = net.gather(eye, Js, blk.sources), net.gather(zero, ks, blk.sources)
        Z, kz = blk.weight @ J, blk.weight @ k + blk.bias
        if l == len(net.blocks) - 1 and net.fixed_last:
            y = problem.features
            A_rows.append(Z)
            b_rows.append(kz)
            y_rows.append(np.where(y > 0, y, 0.0))
            break
        s = np.asarray(pattern[l], dtype=bool)
        # active: z >= 0, i.e. -z <= 0; inactive: z <= 0
        sign = np.where(s, -1.0, 1.0)
        A_rows.append(Z * sign[:, None])
        b_rows.append(kz * sign)
        y_rows.append(np.zeros(s.size))
        Js.append(Z * s[:, None])
        ks.append(kz * s)
    if net.tail is not None:
        T, t = net.tail
        J, k = net.gather(eye, Js, net.tail_sources), net.gather(zero, ks, net.tail_sources)
        E, e = T @ J, T @ k + t
        # E x + e = f written as E x + (e - f + 1) = 1 > 0: an "active" row of the one-layer system
        A_rows.append(E)
        b_rows.append(e - problem.features + 1.0)
        y_rows.append(np.ones(e.size))
    return reduce_piece(np.vstack(A_rows), np.concatenate(b_rows), np.concatenate(y_rows))


def reduce_piece(A: NDArray[np.float64], b: NDArray[np.float64], y: NDArray[np.float64]) -> System:
    """Rewrite a composed piece so that rounding in the composition cannot decide its kind.

    Composing layers produces (i) equality rows that are exactly dependent in exact arithmetic
    (e.g. features ``T D z`` with fewer active units than features) but independent at the 1e-16
    level, and (ii) inequality rows that are constant on the equalities' affine hull (an active
    unit's ``z >= 0`` when the features pin ``z``), whose restriction to N(A_pos) is 1e-16 noise;
    noise must not take part in a rank or omnidirectionality decision.  So: the equalities (unit
    rows) are replaced by an orthonormal basis of their row space (SVD, singular values above
    :data:`PIECE_RANK_RTOL` of the largest) with the matching right-hand side, and constant
    inequality rows that hold are dropped.  The set is unchanged (up to that tolerance).
    Inconsistent equalities and violated constant rows are left for :func:`reluinv.preimage` to
    report "empty".
    """
    eq = y > 0
    if not eq.any():
        return A, b, y
    E, e = A[eq], (y - b)[eq]
    norms = np.linalg.norm(E, axis=1)
    nonzero = norms > 0
    if np.any(np.abs(e[~nonzero]) > ZERO_ROW_RTOL * max(1.0, float(np.abs(e).max()))):
        return A, b, y  # 0 = e_i != 0: empty, and preimage says so with its own certificate
    En, en = E[nonzero] / norms[nonzero, None], e[nonzero] / norms[nonzero]
    n = A.shape[1]
    if En.shape[0] == 0:
        return A[~eq], b[~eq], y[~eq]
    U, S, Vt = np.linalg.svd(En, full_matrices=True)
    r = int(np.sum(S > PIECE_RANK_RTOL * S[0]))
    x_p = Vt[:r].T @ ((U[:, :r].T @ en) / S[:r])
    if np.abs(En @ x_p - en).max() > PIECE_CONSISTENCY_RTOL * max(1.0, float(np.abs(x_p).max())):
        return A, b, y  # inconsistent equalities: let preimage certify emptiness
    eq_rows = Vt[:r]
    null = Vt[r:].T  # (n, n - r)
    G, g = A[~eq], b[~eq]
    g_norms = np.linalg.norm(G, axis=1)
    restricted = (
        np.linalg.norm((G / np.where(g_norms > 0, g_norms, 1.0)[:, None]) @ null, axis=1)
        if null.shape[1]
        else np.zeros(G.shape[0])
    )
    value = G @ x_p + g  # the constant value of a constant row on the affine hull
    scale = np.maximum(1.0, np.abs(g) + g_norms * float(np.abs(x_p).max(initial=0.0)))
    keep = ~((g_norms > 0) & (restricted <= PIECE_RANK_RTOL) & (value <= PIECE_CONSISTENCY_RTOL * scale))
    A_new = np.vstack([eq_rows, G[keep]]) if n else np.zeros((0, 0))
    b_new = np.concatenate([1.0 - eq_rows @ x_p, g[keep]])
    y_new = np.concatenate([np.ones(r), np.zeros(int(keep.sum()))])
    return A_new, b_new, y_new


def feature_jacobian(problem: Problem) -> NDArray[np.float64]:
    """``dF_l/dx`` on x's linear region."""
    net = problem.net
    eye = np.eye(problem.n)
    Js: list[NDArray[np.float64]] = []
    for l, blk in enumerate(net.blocks):
        Js.append((blk.weight @ net.gather(eye, Js, blk.sources)) * (problem.zs[l] > 0)[:, None])
    if net.tail is not None:
        return np.asarray(net.tail[0] @ net.gather(eye, Js, net.tail_sources), dtype=np.float64)
    return Js[-1]
