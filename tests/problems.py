"""Shared oracles and constructed problems with known answers.

The preimage oracle uses no theory from the paper: the preimage of one ReLU layer is the
polyhedron {x : A_pos x + b_pos = y_pos, A_zero x + b_zero <= 0, lower <= x <= upper}; minimising
and maximising every coordinate over it (2n LPs) tells whether it is empty, unbounded, a single
point or a bounded set with more than one point.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog


def brute_force_kind(A, b, y, lower=None, upper=None, *, spread_tol=1e-7) -> str:
    A = np.asarray(A, float)
    b = np.asarray(b, float)
    y = np.asarray(y, float)
    m, n = A.shape
    pos = y > 0
    lo = np.full(n, -np.inf) if lower is None else np.broadcast_to(np.asarray(lower, float), (n,))
    up = np.full(n, np.inf) if upper is None else np.broadcast_to(np.asarray(upper, float), (n,))
    bounds = [(None if np.isneginf(l) else l, None if np.isposinf(u) else u) for l, u in zip(lo, up)]
    kw = dict(
        A_eq=A[pos] if pos.any() else None,
        b_eq=(y - b)[pos] if pos.any() else None,
        A_ub=A[~pos] if (~pos).any() else None,
        b_ub=-b[~pos] if (~pos).any() else None,
        bounds=bounds,
        method="highs",
    )
    feasible = linprog(np.zeros(n), **kw)
    if feasible.status == 2:
        return "empty"
    assert feasible.status == 0, feasible.message
    spread = 0.0
    for j in range(n):
        values = []
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            c[j] = sign
            res = linprog(c, **kw)
            if res.status in (2, 3):  # the set is not empty, so HiGHS' "infeasible or unbounded"
                return "unbounded"    # is unboundedness

            assert res.status == 0, res.message
            values.append(sign * res.fun)
        spread = max(spread, values[1] - values[0])  # max x_j - min x_j
    return "singleton" if spread <= spread_tol else "compact"


# Constructed cases: (A, b, y, lower, upper, expected kind)
PINNED_SINGLETON = ([[1, 0], [0, 1], [1, -1]], [0, 0, -1], [1, 0, 0], None, None, "singleton")
HULL_BOUNDARY = ([[1, 0], [-1, 0], [0, 1]], [0, 0, 0], [0, 0, 0], None, None, "unbounded")
# cReLU frame [F; -F] with thresholds: y = 0 means -1 <= F x <= 1, a bounded polytope.
CRELU_FRAME = (
    [[1, 0], [0, 1], [1, 1], [-1, 0], [0, -1], [-1, -1]],
    [-1, -1, -1, -1, -1, -1],
    [0, 0, 0, 0, 0, 0],
    None,
    None,
    "compact",
)
# With an active pair member the frame pins x: generic cReLU inputs are singletons.
CRELU_ACTIVE = (
    [[1, 0], [0, 1], [1, 1], [-1, 0], [0, -1], [-1, -1]],
    [0, 0, 0, 0, 0, 0],
    [0.5, 0, 0.5, 0, 0, 0],
    None,
    None,
    "singleton",
)
COROLLARY6 = ([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0], [0, 0, 0], None, None, "unbounded")
TRIANGLE = ([[1, 1], [1, -1], [-1, 0]], [0, 0, -5], [0, 0, 0], None, None, "compact")
EMPTY_BY_INEQUALITY = ([[1, 0], [0, 1], [-1, -1]], [0, 0, 3], [1, 1, 0], None, None, "empty")
EMPTY_BY_EQUALITY = ([[1, 0], [2, 0]], [0, 0], [1, 1], None, None, "empty")
BOXED_HALFPLANE = ([[1, 0]], [0], [0], [-1, -1], [1, 1], "compact")
BOX_PINS_POINT = ([[1, 0], [0, 1]], [0, 0], [0, 0], [0, 0], None, "singleton")
HALF_BOX_UNBOUNDED = ([[1, 0]], [0], [0], 0.0, None, "unbounded")

CONSTRUCTED = {
    "pinned_singleton": PINNED_SINGLETON,
    "hull_boundary": HULL_BOUNDARY,
    "crelu_frame": CRELU_FRAME,
    "crelu_active": CRELU_ACTIVE,
    "corollary6": COROLLARY6,
    "triangle": TRIANGLE,
    "empty_by_inequality": EMPTY_BY_INEQUALITY,
    "empty_by_equality": EMPTY_BY_EQUALITY,
    "boxed_halfplane": BOXED_HALFPLANE,
    "box_pins_point": BOX_PINS_POINT,
    "half_box_unbounded": HALF_BOX_UNBOUNDED,
}
