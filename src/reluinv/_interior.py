"""A point with slack in every inequality of ``{z : R z <= c}``, found without an LP.

Theorem 4 needs a point of the preimage and, when ``k = dim N(A_pos) > 0``, whether it is the only
one.  A point where every inequality holds with slack settles the second question at once: moving
a little in any direction of ``N(A_pos)`` stays inside, so P has more than one point (it is not
the singleton of Theorem 4 ii).  Such a point is found here by Newton's method on the squared
violations ``f(z) = 1/2 |max(0, R z - c)|^2`` of the inequalities shrunk by a margin (Han's method
for linear inequalities: each step solves the least-squares problem of the currently violated
rows, then backtracks on ``f``), with row generation: only rows that are violated or nearly so
are formed, and the point is checked against every row before it is accepted.  A later round's
point is checked only where its move could have used up the slack found at the last point
(:func:`_checked_slack`), not in another pass over every row.

The method is a shortcut, not a decision: when it does not reach a point with slack (a thin or
empty preimage, a singleton), the caller tries :func:`feasible_point` (the same steps aiming at the
bounds themselves, which reaches a point of a singleton or of a set thinner than the margin), and
falls back to the Chebyshev-centre LP, which decides.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.linalg import lapack

__all__ = ["CONSTANT_ROW", "feasible_point", "first_rows", "hinge_newton", "interior_point"]

F64 = NDArray[np.float64]
Idx = NDArray[np.intp]

#: Newton steps per round of row generation, and rounds, before :func:`feasible_point` and the LP.
#: Preimages within a box can be thin (least slack at the LP's point 3e-7 to 1e-3 of the data's
#: scale on the trained layer of ``benchmarks/preimage_trained.py --box``), and each round there
#: meets rows the last one did not: before :func:`feasible_point`, 12 rounds instead of 4 found the
#: point without the LP for more of them (the 39 compact decisions 18.7 s against 22.6 s).  With
#: it, 4 and 12 rounds took the same time there (7.9 s and 7.7 s on 29 of the images); the
#: Gaussian, shifted, strip and trained sets of ``benchmarks/compare_versions.py`` never need more
#: than 4.
MAX_STEPS = 40
MAX_ROUNDS = 12

#: Newton steps per round of :func:`interior_point` (the direction search of
#: :func:`reluinv.geometry.omni_lazy` keeps :data:`MAX_STEPS`).  Its rounds on the Gaussian and
#: trained layers of ``benchmarks/compare_versions.py`` converge within 10 steps; on a box
#: preimage thinner than the margin a round runs out of steps with the violations stuck (f at
#: 2.6e-4 after 40 steps, 3.2e-4 after 20), and :func:`feasible_point` takes over.  On the 58
#: images of ``benchmarks/preimage_trained.py --box``: 14.4-14.7 s with 40 steps, 13.4 s with 30,
#: 13.7-13.9 s with 20, where one preimage that needs 21-40 steps for its interior point went to
#: the LP (its boundary point's second point lay within 1e3 tolerances of it).
INTERIOR_STEPS = 30

#: A restricted row of at most this norm is a constant: no z of sensible size changes its slack.
CONSTANT_ROW = 1e-12

#: Rows join the Newton subset when their slack is below these multiples of the margin: at the
#: start (at ``z = 0``), and at the end of a round.  Rows a little beyond the margin are often
#: violated by the next round's steps; taking them early saved a quarter of the rounds on the
#: Figure-4-sized layer of ``benchmarks/preimage_speed.py`` (the rows cost less than a round).
_FIRST, _FRESH = 8.0, 4.0

#: A re-check that would recompute more than this fraction of the rows makes one pass over all of
#: them instead (a row picked out costs about twice its share of a pass).
_RECHECK_FRACTION = 1 / 3


def interior_point(
    rows: Callable[[Idx], F64],
    slack_at: Callable[[F64, Idx | None], F64],
    c: F64,
    margin: float,
    tol: float,
) -> tuple[F64, F64] | None:
    """``(z, slack)`` with ``c - R z >= slack > tol`` on every row, or None.

    Args:
        rows: ``rows(idx)`` gives the rows ``R[idx]`` (each of norm at most 1).
        slack_at: ``slack_at(z, idx)`` gives ``c - R z`` on the rows ``idx`` (every row for
            None), computed from the data itself.
        c: the right-hand sides of every row.
        margin: the slack aimed for, per unit of row norm (half of it is accepted per row).
        tol: the slack every row must exceed for the point to be returned.

    ``slack`` is exact on every row within ``_FRESH * margin`` of its bound and a lower bound
    elsewhere (:func:`_checked_slack`).
    """
    subset = first_rows(c, margin)
    R = rows(subset)
    z: F64 | None = None
    checked: tuple[F64, F64] | None = None
    for _ in range(MAX_ROUNDS):
        norms = np.sqrt(np.vecdot(R, R))  # a fifth of the time of np.linalg.norm(R, axis=1)
        if np.any((norms <= CONSTANT_ROW) & (c[subset] <= tol)):
            # A violated constant row: only a step of absurd size could "fix" it, by rounding
            # (a preimage that is empty, or thinner than the tolerance).  The LP decides.
            return None
        z = hinge_newton(R, c[subset] - margin * norms, 0.5 * margin * norms, z, max_steps=INTERIOR_STEPS)
        if z is None:
            return None
        slack = _checked_slack(slack_at, z, checked, max(_FRESH * margin, tol))
        checked = (z, slack)
        if slack.min() > tol:
            return z, slack
        fresh = _rows_outside(slack < _FRESH * margin, subset)
        if fresh.size == 0:  # pragma: no cover - the rows of the subset have slack > margin / 2
            return None
        subset = np.concatenate([subset, fresh])
        R = np.vstack([R, rows(fresh)])
    return None


#: Newton steps per round of :func:`feasible_point`, and rounds.  Aimed at the bounds themselves, the
#: steps near a point where many rows meet (a pinned singleton, or a set thinner than the margin)
#: cut the violations slowly: on the box decisions of ``benchmarks/preimage_trained.py --box`` the
#: rounds that reached a point took 50-90 steps, and 2-7 rounds.  Keeping the rows within ``tol``
#: of their bound in each step (``hold``) took 4.8 s on 20 of those decisions, against 5.5 s without.
FEASIBLE_STEPS = 200
FEASIBLE_ROUNDS = 12

#: :func:`feasible_point` gives up when this many steps leave more than half of the squared
#: violation: on an empty set it stops shrinking (it stayed at 5e-2 and 9.5e-2 for 190 steps on two
#: empty preimages of ``benchmarks/preimage_speed.py``'s layer), where on the 58 box preimages of
#: ``benchmarks/preimage_trained.py --box`` every 20 steps shrank it at least 5.8 times (every 10
#: steps at least 1.6 times).
_STALL = 20


def feasible_point(
    rows: Callable[[Idx], F64], slack_at: Callable[[F64], F64], c: F64, tol: float
) -> tuple[F64, F64] | None:
    """``(z, slack)`` with ``slack = c - R z >= -tol`` on every row, or None: a point of the set to
    the tolerance, perhaps on its boundary, by the Newton steps of :func:`hinge_newton` with no
    margin and row generation (each round starts from the rows violated so far; ``slack_at(z)``
    checks every row).

    Where :func:`interior_point` finds no point with slack (the preimage has none, or less than the
    margin it aims for), this often still finds a point, without the LP: on the 20 box decisions
    of ``benchmarks/preimage_trained.py --box`` checked (every third image), all 13 that reached
    the LP got their point here in 2-7 rounds.  The rows that hold a point of a singleton pin it
    wherever it was found (Theorem 12), so the caller decides from this point as from the LP's.
    """
    subset = np.flatnonzero(c < 0.0)
    R = rows(subset)
    z: F64 = np.zeros(R.shape[1])
    slack = c
    for _ in range(FEASIBLE_ROUNDS):
        if slack.min() >= -tol:
            return z, slack
        # hold: the rows a step put on their bound stay in the next one (hinge_newton)
        step = hinge_newton(
            R, c[subset], np.full(subset.size, 0.5 * tol), z, hold=tol, max_steps=FEASIBLE_STEPS, stall=_STALL
        )
        if step is None:
            return None
        z = step
        slack = slack_at(z)
        fresh = _rows_outside(slack < 0.0, subset)
        if fresh.size == 0:
            break
        subset = np.concatenate([subset, fresh])
        R = np.vstack([R, rows(fresh)])
    return (z, slack) if slack.min() >= -tol else None


def _rows_outside(marked: NDArray[np.bool_], subset: Idx) -> Idx:
    """The rows marked (a fresh boolean array, overwritten) that are not in ``subset``, in order:
    ``np.setdiff1d(np.flatnonzero(marked), subset)`` without its sort (4 us against 0.2 ms for
    the 2,900 rows of a decision at nullity 184)."""
    marked[subset] = False
    return np.flatnonzero(marked)


def first_rows(c: F64, margin: float) -> Idx:
    """The rows :func:`interior_point` forms first: those within ``_FIRST`` margins of their bound
    at ``z = 0``."""
    return np.flatnonzero(c < _FIRST * margin)


def _checked_slack(
    slack_at: Callable[[F64, Idx | None], F64], z: F64, checked: tuple[F64, F64] | None, near: float
) -> F64:
    """Lower bounds of ``c - R z`` on every row, exact where below ``near``.

    With ``checked = (z0, s0)`` (such bounds at an earlier point) a row's slack falls by at most
    ``|R_i| |z - z0| <= |z - z0|`` on the way to z, so ``s0 - |z - z0|`` bounds it from below and
    only rows where that bound is under ``near`` are recomputed.  Near a converged point the move
    is short: on the 3500 x 784 layer of ``benchmarks/preimage_speed.py`` at nullity 184 the
    second round's check recomputed 586 of 2,900 rows.  When more than :data:`_RECHECK_FRACTION`
    of them would need it (or with nothing checked yet), one pass over every row.
    """
    if checked is None:
        return slack_at(z, None)
    z0, s0 = checked
    move = float(np.linalg.norm(z - z0)) * (1.0 + 1e-12)  # the factor covers the norm's rounding
    slack = s0 - move
    redo = np.flatnonzero(slack < near)
    if redo.size > _RECHECK_FRACTION * slack.size:
        return slack_at(z, None)
    slack[redo] = slack_at(z, redo)
    return slack


def hinge_newton(
    R: F64,
    c: F64,
    slack: F64,
    start: F64 | None,
    hold: float = 0.0,
    max_steps: int = MAX_STEPS,
    stall: int = 0,
) -> F64 | None:
    """A z with ``R z <= c + slack``, by Newton steps on ``1/2 |max(0, R z - c)|^2`` from ``start``
    (0 for None); None if ``max_steps`` do not reach one, or (with ``stall > 0``) as soon as
    ``stall`` steps leave more than half of that squared violation.  Also the direction search of
    :func:`reluinv.geometry.omni_lazy` (``R z <= -1``).

    Each step is the least-norm correction of the rows with ``R z - c > -hold``.  A full step puts
    the rows it corrects on their bound, where rounding alone decides whether ``R z - c > 0``;
    ``hold > 0`` keeps them in the next step whichever way it rounds, so that two bases of the same
    space (rows ``R Q``, Q orthogonal) take the same steps."""
    z = np.zeros(R.shape[1]) if start is None else start
    r = R @ z - c
    f = 0.5 * float(np.sum(np.maximum(r, 0.0) ** 2))
    past = [f]
    for _ in range(max_steps):
        if not np.any(r > slack):
            return z
        if stall and len(past) > stall and f > 0.5 * past[-1 - stall]:
            return None  # the violation has stopped shrinking: inconsistent rows
        violated = r > -hold
        step = _least_squares_step(R[violated], r[violated])
        t = 1.0
        while True:
            r_new = R @ (z + t * step) - c
            f_new = 0.5 * float(np.sum(np.maximum(r_new, 0.0) ** 2))
            if f_new <= (1.0 - 1e-4 * t) * f or t < 1e-6:
                break
            t *= 0.5
        if not f_new < f:
            return None  # no progress: the shrunk inequalities are (nearly) inconsistent
        z, r, f = z + t * step, r_new, f_new
        past.append(f)
    return z if not np.any(r > slack) else None


#: The Gram matrix's Cholesky factor is used when its diagonal spans less than this ratio
#: (a Gram condition number of about 1e10 at most); otherwise gelsy's pivoted QR solves.
_GRAM_RATIO = 1e-5


def _least_squares_step(V: F64, r: F64) -> F64:
    """The least-squares (minimum-norm when underdetermined) ``s`` with ``V s ~ -r``.

    The Newton step of :func:`hinge_newton`.  Through the Cholesky factor of the smaller Gram matrix
    (``V V^T`` or ``V^T V``: a few times faster than a pivoted QR of V) when it is well
    conditioned, else by gelsy.  Only speed depends on which: the point the steps lead to is
    checked against every row by :func:`interior_point`.
    """
    wide = V.shape[0] <= V.shape[1]
    W = V @ V.T if wide else V.T @ V
    L, info = lapack.dpotrf(W, lower=1, clean=0)
    d = np.diag(L) if info == 0 else np.zeros(1)
    if info != 0 or d.min() <= _GRAM_RATIO * d.max():
        return np.asarray(scipy.linalg.lstsq(V, -r, lapack_driver="gelsy", check_finite=False)[0])
    if wide:
        return np.asarray(-V.T @ lapack.dpotrs(L, r, lower=1)[0])
    return np.asarray(-lapack.dpotrs(L, V.T @ r, lower=1)[0])
