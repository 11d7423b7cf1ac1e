"""Valid bounds on every pre-activation over ``S_l(x)``: interval propagation from the box, and LP
tightening over the relaxation that already contains the feature equalities.  A unit whose
bounds do not straddle 0 is stable on the preimage (fixed state, no binary); the others are free
and their bounds are the big-M constants of the encoding.
"""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray

from .encoding import Bounds, Encoding
from .problem import ACTIVE, FREE, INACTIVE, TIGHTEN_SLACK_RTOL, DenseNetwork, Problem

BoundList = list[tuple[NDArray[np.float64], NDArray[np.float64]]]

#: "auto" tightening uses LP when (2 x unstable units) x (nonzeros of the weights) is below this:
#: about a second of LPs.  On the 784-input MLP the LPs cost ~0.1 s each and tighten little, and
#: the MILP solver's own presolve does better with that time.
AUTO_LP_WORK = 2e6
#: The choices of ``tighten``: LP tightening, interval bounds only, or LP on small networks.
TIGHTEN_CHOICES = ("auto", "lp", "ibp")


def interval_bounds(
    net: DenseNetwork,
    lo: NDArray[np.float64],
    up: NDArray[np.float64],
    start: int = 0,
    given: Bounds | None = None,
) -> BoundList:
    """Interval bound propagation of ``z_l`` from the box (blocks ``start ..``, each from the
    bounds of its sources), intersected with ``given`` bounds where supplied."""
    out = list(given) if given is not None else []
    h_lo = [np.maximum(zl, 0.0) for zl, _ in out[:start]]
    h_up = [np.maximum(zu, 0.0) for _, zu in out[:start]]
    for l in range(start, len(net.blocks)):
        W, c, sources = net.blocks[l].weight, net.blocks[l].bias, net.blocks[l].sources
        hl, hu = net.gather(lo, h_lo, sources), net.gather(up, h_up, sources)
        if np.all(np.isfinite(hl)) and np.all(np.isfinite(hu)):
            centre, radius = (hl + hu) / 2, (hu - hl) / 2
            mid, spread = W @ centre + c, np.abs(W) @ radius
            zl, zu = mid - spread, mid + spread
        else:
            Wp, Wn = np.maximum(W, 0.0), np.minimum(W, 0.0)
            with np.errstate(invalid="ignore"):
                zl = np.where(Wp > 0, Wp * hl, 0.0).sum(1) + np.where(Wn < 0, Wn * hu, 0.0).sum(1) + c
                zu = np.where(Wp > 0, Wp * hu, 0.0).sum(1) + np.where(Wn < 0, Wn * hl, 0.0).sum(1) + c
        if l < len(out):
            zl, zu = np.maximum(zl, out[l][0]), np.minimum(zu, out[l][1])
            out[l] = (zl, zu)
        else:
            out.append((zl, zu))
        h_lo.append(np.maximum(zl, 0.0))
        h_up.append(np.maximum(zu, 0.0))
    return out


def states_from_bounds(problem: Problem, bounds: Bounds) -> list[NDArray[np.int8]]:
    """Units stable on the set are fixed, the others free."""
    states = []
    for l in range(problem.net.n_var_blocks):
        zl, zu = bounds[l]
        st = np.full(zl.size, FREE, dtype=np.int8)
        st[zl >= 0] = ACTIVE
        st[zu <= 0] = INACTIVE
        states.append(st)
    return states


def tighten_bounds(problem: Problem, bounds: Bounds, deadline: float) -> tuple[BoundList, int]:
    """LP-based bound tightening over the relaxation that contains the feature equalities.

    For each variable block in order, ``min`` and ``max`` of every unstable ``z_i`` over the LP
    relaxation of ``S_l(x)``; a unit whose range no longer straddles 0 becomes stable (no binary),
    and the later blocks are re-propagated by intervals.  The bounds are valid for points of the
    preimage only -- exactly the set every search here ranges over.  Stops at ``deadline``.
    Returns the bounds and the number of LPs solved.
    """
    bounds = list(bounds)
    net = problem.net
    n_lp = 0
    for l in range(net.n_var_blocks):
        states = states_from_bounds(problem, bounds)
        unstable = np.flatnonzero(states[l] == FREE)
        if unstable.size == 0 or time.perf_counter() >= deadline:
            continue
        enc = Encoding(problem, states, bounds, integral=False)
        solver = enc.solver(presolve=False)
        zl, zu = bounds[l][0].copy(), bounds[l][1].copy()
        for i in unstable:
            cost, const = enc.z_objective(l, int(i))
            for maximize in (False, True):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                out = solver.run(cost, maximize=maximize, time_limit=left, offset=const)
                n_lp += 1
                if out.status == "optimal":
                    slack = TIGHTEN_SLACK_RTOL * (1.0 + abs(out.objective))
                    if maximize:
                        zu[i] = min(zu[i], out.objective + slack)
                    else:
                        zl[i] = max(zl[i], out.objective - slack)
        bounds[l] = (zl, zu)
        bounds = interval_bounds(net, problem.lo, problem.up, start=l + 1, given=bounds)
    return bounds, n_lp


def preimage_bounds(problem: Problem, tighten: str, deadline: float) -> tuple[BoundList, int]:
    """Bounds of every ``z_l`` valid on the preimage: intervals, LP-tightened per ``tighten``
    ("lp", "ibp", or "auto": LP when the work is below :data:`AUTO_LP_WORK`), and the LP count."""
    bounds = interval_bounds(problem.net, problem.lo, problem.up)
    if tighten == "auto":
        net = problem.net
        unstable = sum(int(((lo < 0) & (up > 0)).sum()) for lo, up in bounds[: net.n_var_blocks])
        nnz = sum(int(np.count_nonzero(b.weight)) for b in net.blocks)
        tighten = "lp" if 2 * unstable * nnz <= AUTO_LP_WORK else "ibp"
    if tighten == "lp":
        return tighten_bounds(problem, bounds, deadline)
    return bounds, 0
