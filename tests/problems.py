"""Shared oracles and constructed problems with known answers.

The preimage oracle uses no theory from the paper: the preimage of one ReLU layer is the
polyhedron {x : A_pos x + b_pos = y_pos, A_zero x + b_zero <= 0, lower <= x <= upper}; minimising
and maximising every coordinate over it (2n LPs) tells whether it is empty, unbounded, a single
point or a bounded set with more than one point.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.optimize import linprog
from torch import nn


def brute_force_kind(A, b, y, lower=None, upper=None, *, spread_tol=1e-7) -> str:
    A = np.asarray(A, float)
    b = np.asarray(b, float)
    y = np.asarray(y, float)
    m, n = A.shape
    pos = y > 0
    # Every row at unit norm (the same polyhedron): HiGHS on the raw rows of a layer whose row
    # norms and biases span six decades declared 7 of 267 random preimages empty whose generating
    # input satisfies every row exactly.
    norms = np.linalg.norm(A, axis=1)
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 1.0)
    A, b, y = A * scale[:, None], b * scale, y * scale
    lo = np.full(n, -np.inf) if lower is None else np.broadcast_to(np.asarray(lower, float), (n,))
    up = np.full(n, np.inf) if upper is None else np.broadcast_to(np.asarray(upper, float), (n,))
    bounds = [
        (None if np.isneginf(l) else l, None if np.isposinf(u) else u) for l, u in zip(lo, up, strict=True)
    ]
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
                return "unbounded"  # is unboundedness

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

# --- the multi-layer oracle -----------------------------------------------------------------------
#
# Uses no code of reluinv: it enumerates EVERY activation pattern of every ReLU up to the feature
# layer, writes each pattern's piece as a polyhedron in input space, and classifies it by 2n LPs
# (min and max of every coordinate, scipy's linprog).  The preimage is the union of the pieces.

#: A piece whose every coordinate spans at most this is a single point.
MULTI_LAYER_SPREAD_TOL = 1e-7


# --- building tiny networks ---------------------------------------------------------------------


def make_net(layers, *, relu_last=True):
    """Sequential of Linear(+ReLU) from a list of (W, b); the last Linear has a ReLU iff relu_last."""
    modules = []
    for k, (W, b) in enumerate(layers):
        W = np.asarray(W, float)
        lin = nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(W))
            lin.bias.copy_(torch.as_tensor(np.asarray(b, float)))
        modules.append(lin)
        if k < len(layers) - 1 or relu_last:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def net_layers(model):
    """(W, b) of every Linear, float64, straight from the module."""
    return [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in model
        if isinstance(m, nn.Linear)
    ]


def forward(layers, x, relu_last):
    h = np.asarray(x, float)
    for k, (W, b) in enumerate(layers):
        h = W @ h + b
        if k < len(layers) - 1 or relu_last:
            h = np.maximum(h, 0)
    return h


# --- the brute-force oracle -----------------------------------------------------------------------


def chain_dag(layers, relu_last):
    """A chain of (W, b) as a DAG (see dag_pattern_pieces): layer k reads layer k - 1 (-1: input)."""
    relu_layers = layers if relu_last else layers[:-1]
    dag = [((k - 1,), np.asarray(W, float), np.asarray(b, float)) for k, (W, b) in enumerate(relu_layers)]
    tail = None if relu_last else ((len(dag) - 1,), *map(np.asarray, layers[-1]))
    return dag, tail


def dag_forward(dag, tail, x):
    """Forward pass of a DAG of layers reading their sources' outputs side by side (-1: the input):
    a ReLU layer (sources, W, b) outputs max(W u + b, 0); a max-pool layer (sources, W, b, windows)
    outputs max(z[w]) for every window w (indices into z = W u + b).  The features are the last
    layer's output, or T u + t over the tail's sources."""
    x = np.asarray(x, float)
    hs = []
    for sources, W, b, *windows in dag:
        z = W @ np.concatenate([x if k < 0 else hs[k] for k in sources]) + b
        hs.append(np.array([z[w].max() for w in windows[0]]) if windows else np.maximum(z, 0))
    if tail is None:
        return hs[-1]
    sources, T, t = tail
    return T @ np.concatenate([x if k < 0 else hs[k] for k in sources]) + t


def pattern_pieces(layers, x, *, relu_last, lower=None, upper=None):
    """linprog keyword arguments of the piece of EVERY activation pattern (empty ones included)."""
    dag, tail = chain_dag(layers, relu_last)
    return dag_pattern_pieces(dag, tail, x, lower=lower, upper=upper)


def dag_pattern_pieces(dag, tail, x, *, lower=None, upper=None):
    """linprog keyword arguments of the piece of EVERY activation pattern of a DAG (dag_forward).

    On a pattern every layer's output is an affine map of the input, h_l = J_l x + k_l, composed
    from its sources' maps stacked: the pattern's sign constraints and "features equal those of x"
    are linear in x.
    """
    x = np.asarray(x, float)
    n = x.size
    f = dag_forward(dag, tail, x)
    # every unit's choices: a ReLU is off or on, a max-pool output selects one unit of its window
    choices = [
        [list(w) for w in layer[3]] if len(layer) == 4 else [[False, True]] * layer[1].shape[0]
        for layer in dag
    ]
    lo = np.full(n, -np.inf) if lower is None else np.broadcast_to(np.asarray(lower, float), (n,))
    up = np.full(n, np.inf) if upper is None else np.broadcast_to(np.asarray(upper, float), (n,))
    bounds = [(None if np.isinf(a) else a, None if np.isinf(b) else b) for a, b in zip(lo, up, strict=True)]
    for picks in itertools.product(*[c for layer in choices for c in layer]):
        pattern, start = [], 0
        for layer in choices:
            pattern.append(np.array(picks[start : start + len(layer)]))
            start += len(layer)
        Js, ks = [], []
        A_ub, b_ub = [], []
        for (sources, W, b, *windows), s in zip(dag, pattern, strict=True):
            J = np.vstack([np.eye(n) if k < 0 else Js[k] for k in sources])
            k0 = np.concatenate([np.zeros(n) if k < 0 else ks[k] for k in sources])
            Z, kz = W @ J, W @ k0 + b
            if windows:  # the selected unit is the largest of its window: z_k - z_sel <= 0
                for w, sel in zip(windows[0], s, strict=True):
                    A_ub += [Z[w] - Z[sel]]
                    b_ub += [kz[sel] - kz[w]]
                Js.append(Z[s])
                ks.append(kz[s])
                continue
            A_ub += [-Z[s], Z[~s]]  # active: z >= 0, inactive: z <= 0
            b_ub += [kz[s], -kz[~s]]
            Js.append(Z * s[:, None])
            ks.append(kz * s)
        if tail is None:
            J, k = Js[-1], ks[-1]
        else:
            sources, T, t = tail
            J = T @ np.vstack([np.eye(n) if k < 0 else Js[k] for k in sources])
            k = T @ np.concatenate([np.zeros(n) if k < 0 else ks[k] for k in sources]) + t
        A_eq, b_eq = J, f - k  # the features on this pattern equal those of x
        zero = np.all(A_eq == 0, axis=1)
        if np.any(np.abs(b_eq[zero]) > 1e-12):
            continue
        A_eq, b_eq = A_eq[~zero], b_eq[~zero]
        yield dict(
            A_ub=np.vstack(A_ub) if A_ub else np.zeros((0, n)),
            b_ub=np.concatenate(b_ub) if b_ub else np.zeros(0),
            A_eq=A_eq if len(b_eq) else None,
            b_eq=b_eq if len(b_eq) else None,
            bounds=bounds,
        )


def lp(c, kw):
    """linprog that insists on a definite answer: optimal (0), infeasible (2) or unbounded (3).

    HiGHS' presolve answers "infeasible" for some unbounded LPs and the simplex without presolve
    occasionally stops with "unknown" on degenerate ones; try the dual simplex, then the interior
    point method, both without presolve, then the default.
    """
    for method, options in (
        ("highs-ds", {"presolve": False}),
        ("highs-ipm", {"presolve": False}),
        ("highs", {}),
    ):
        res = linprog(c, **kw, method=method, options=options)
        if res.status in (0, 2, 3):
            return res
    return res


def brute_force(layers, x, *, relu_last, lower=None, upper=None):
    """Kind of {x' in box: F(x') = F(x)}: the union of all pieces, each classified by 2n LPs."""
    return union_kind(pattern_pieces(layers, x, relu_last=relu_last, lower=lower, upper=upper), x)


def brute_force_dag(dag, tail, x, *, lower=None, upper=None):
    """brute_force for a DAG (dag_forward)."""
    return union_kind(dag_pattern_pieces(dag, tail, x, lower=lower, upper=upper), x)


def union_kind(all_pieces, x):
    """Kind of the union of the pieces (linprog keyword arguments), each classified by 2n LPs."""
    x = np.asarray(x, float)
    n = x.size
    pieces = []
    unbounded = False
    for kw in all_pieces:
        if lp(np.zeros(n), kw).status == 2:
            continue
        mins, maxs = np.empty(n), np.empty(n)
        for j in range(n):
            c = np.zeros(n)
            c[j] = 1.0
            lo_res, hi_res = lp(c, kw), lp(-c, kw)
            if lo_res.status == 3 or hi_res.status == 3:
                unbounded = True
                mins[j], maxs[j] = -np.inf, np.inf
                continue
            assert lo_res.status == 0 and hi_res.status == 0, (lo_res.message, hi_res.message)
            mins[j], maxs[j] = lo_res.fun, -hi_res.fun
        pieces.append((mins, maxs))
    if unbounded:
        return "unbounded", pieces
    points = [(a + b) / 2 for a, b in pieces if np.all(b - a <= MULTI_LAYER_SPREAD_TOL)]
    if len(points) == len(pieces) and all(np.allclose(p, x, atol=1e-7) for p in points):
        return "singleton", pieces
    return "compact", pieces


def brute_force_extent(layers, x, *, relu_last, lower, upper):
    """Largest L-inf and L1 distance from x over the union of all pieces (orthant LPs for L1)."""
    return union_extent(pattern_pieces(layers, x, relu_last=relu_last, lower=lower, upper=upper), x)


def union_extent(all_pieces, x):
    """Largest L-inf and L1 distance from x over the union of the pieces (linprog keyword
    arguments; 2n LPs for L-inf and one LP per orthant of x' - x for L1, each piece)."""
    x = np.asarray(x, float)
    n = x.size
    linf = l1 = 0.0
    for kw in all_pieces:
        if lp(np.zeros(n), kw).status != 0:
            continue
        for j, sign in itertools.product(range(n), (1.0, -1.0)):
            c = np.zeros(n)
            c[j] = -sign
            res = lp(c, kw)
            linf = max(linf, sign * (res.x[j] - x[j]))
        for signs in itertools.product((1.0, -1.0), repeat=n):  # orthant of x' - x
            s = np.array(signs)
            orthant = dict(kw)
            orthant["A_ub"] = np.vstack([kw["A_ub"], -np.diag(s)])
            orthant["b_ub"] = np.concatenate([kw["b_ub"], -s * x])
            res = lp(-s, orthant)
            if res.status == 0:
                l1 = max(l1, float(np.abs(res.x - x).sum()))
    return linf, l1


def brute_force_max_inner(layers, x, target, *, relu_last, lower, upper):
    """max <target, x'> over the union of all pieces (one LP per piece)."""
    return union_max_inner(pattern_pieces(layers, x, relu_last=relu_last, lower=lower, upper=upper), target)


def union_max_inner(all_pieces, target):
    """max <target, x'> over the union of the pieces (linprog keyword arguments; one LP each)."""
    best = -np.inf
    for kw in all_pieces:
        res = lp(-np.asarray(target, float), kw)
        if res.status == 0:
            best = max(best, -res.fun)
    return best
