"""How far an input can move inside the preimage of its features: :func:`preimage_extent`
(largest L-infinity and L1 distance from ``x`` over ``S_l(x)`` in a finite box)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .._lp import MIN_SOLVE_SECONDS
from .bounds import TIGHTEN_CHOICES, preimage_bounds, states_from_bounds
from .encoding import Bounds, Box, Encoding
from .problem import ACTIVE, MIN_LP_SECONDS, POLISH_RTOL, Problem, TimeShares, setup
from .search import json_float

#: The L-infinity loop stops when the room the box leaves for the next candidate is at most the
#: best value found times ``1 + this`` (no candidate left can beat it).
ROOM_RTOL = 1e-12
METHODS = ("exact", "region")


@dataclass(frozen=True)
class PreimageExtent:
    """How far an input can move inside ``{x' in box : F_layer(x') = F_layer(x)}``.

    Attributes:
        layer: module index (chain) or layer name (traced graph), as given.
        method: "exact" (over the whole preimage, MILP) or "region" (over x's linear region only:
            a LOWER BOUND on the exact extent).
        linf, l1: the largest ``||x' - x||_inf`` / ``||x' - x||_1`` found, attained at
            ``linf_point`` / ``l1_point``.
        linf_bound, l1_bound: proven upper bounds on the optimum of *this method's* problem.
        proven: both values are optimal for this method's problem (then value == bound up to
            tolerance).  For "region", a proven value is still only a lower bound of the exact one.
        lower_bound_only: True for "region".
        feature_max_abs_diff: largest feature difference (float64 forward pass) at the two points.
        solve_time: wall-clock seconds.
        message: anything the numbers do not say (time limit, ...).
    """

    layer: int | str
    method: str
    linf: float
    linf_bound: float
    l1: float
    l1_bound: float
    proven: bool
    lower_bound_only: bool
    linf_point: NDArray[np.float64] | None = field(repr=False)
    l1_point: NDArray[np.float64] | None = field(repr=False)
    feature_max_abs_diff: float
    solve_time: float
    message: str = ""

    def to_dict(self, *, include_points: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: json_float(getattr(self, k))
            for k in ("linf", "linf_bound", "l1", "l1_bound", "feature_max_abs_diff", "solve_time")
        }
        out.update(
            layer=self.layer,
            method=self.method,
            proven=bool(self.proven),
            lower_bound_only=bool(self.lower_bound_only),
            message=self.message,
        )
        if include_points:
            out["linf_point"] = None if self.linf_point is None else self.linf_point.tolist()
            out["l1_point"] = None if self.l1_point is None else self.l1_point.tolist()
        return out


class Extent(NamedTuple):
    """The largest distance of one norm found over an encoding."""

    value: float  # the largest distance found
    point: NDArray[np.float64]  # where it is attained (flat)
    bound: float  # proven upper bound on the optimum
    proven: bool  # value is optimal (up to tolerance)


def preimage_extent(
    model: Any,
    x: Any,
    layer: int | str,
    *,
    lower: Any = 0.0,
    upper: Any = 1.0,
    method: Literal["exact", "region"] = "exact",
    time_limit: float = 60.0,
    tighten: Literal["auto", "lp", "ibp"] = "auto",
) -> PreimageExtent:
    """Largest L-infinity and L1 distance from ``x`` inside the preimage of its features (in a box).

    Maximising a norm is not convex, so:

    * L-infinity: ``max_j max(x'_j - x_j, x_j - x'_j)``; one optimisation per (coordinate, sign),
      visited in decreasing order of the room the box leaves; the loop stops when the best value
      found reaches the room of the next candidate (a proof of optimality without visiting the
      rest).  "region": LPs over x's linear region (warm-started); "exact": MILPs over the whole
      preimage, starting from the region value.
    * L1: ``sum_j |x'_j - x_j|`` with ``x'_j - x_j = p_j - q_j`` and one binary per coordinate strictly
      inside the box choosing the side (coordinates on a face of the box need none: on MNIST most
      pixels are exactly 0).  A MILP even in "region" mode.

    "region" values are lower bounds of the exact extent (x's region is part of the preimage);
    "exact" uses the MILP of :func:`invariance_search` (mode "exact").  ``time_limit`` is shared by
    both norms (the shares are in :class:`TimeShares`); on time out the best values and proven
    bounds are returned with ``proven=False``.

    Args:
        model, x, layer: as for :func:`invariance_search`.
        lower, upper: a finite box containing ``x`` (required: without one the extent can be
            infinite; use :func:`network_preimage` to decide boundedness).
        method: "exact" or "region".
        time_limit: seconds for the whole call.
        tighten: bound tightening for "exact" ("auto", "lp" or "ibp"; see invariance_search).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0, 1.0]])); _ = net[0].bias.zero_()
        >>> e = preimage_extent(net, [0.5, 0.5], 1, method="region")
        >>> round(e.linf, 6), round(e.l1, 6), e.proven
        (0.5, 1.0, True)
    """
    problem, clock = setup(
        (model, x, layer, lower, upper),
        time_limit=time_limit,
        choices=(("method", method, METHODS), ("tighten", tighten, TIGHTEN_CHOICES)),
        finite_box="preimage_extent needs a finite box (lower and upper finite for every input); "
        "use network_preimage to decide whether the preimage is bounded",
    )
    notes: list[str] = []
    # x's linear region first: cheap, and a lower bound (and start point) for the exact search.
    region_end = clock.deadline if method == "region" else clock.since_start(TimeShares.EXTENT_REGION)
    region_states = problem.region_states()
    linf = linf_extent(
        problem,
        region_states,
        None,
        integral=False,
        best=(0.0, problem.x.copy()),
        deadline=clock.t0 + TimeShares.EXTENT_REGION_LINF * (region_end - clock.t0),
        notes=notes,
    )
    l1 = l1_extent(
        problem, region_states, None, deadline=region_end, starts=[linf.point, problem.x], notes=notes
    )
    if method == "exact":
        bounds, _ = preimage_bounds(problem, tighten, clock.from_now(TimeShares.EXTENT_TIGHTEN))
        states = states_from_bounds(problem, bounds)
        notes.clear()  # region-phase notes concern only the start values now
        # the region points sit on some z = 0: start the MILPs with the pattern they came from
        region_pattern = [st == ACTIVE for st in region_states]
        linf = linf_extent(
            problem,
            states,
            bounds,
            integral=True,
            best=(linf.value, linf.point),
            deadline=clock.of_rest(TimeShares.EXTENT_LINF),
            notes=notes,
            start_pattern=region_pattern,
        )
        l1 = l1_extent(
            problem,
            states,
            bounds,
            deadline=clock.deadline,
            starts=[l1.point],
            notes=notes,
            start_pattern=region_pattern,
        )
    return PreimageExtent(
        layer=problem.net.layer,
        method=method,
        linf=linf.value,
        linf_bound=linf.bound,
        l1=l1.value,
        l1_bound=l1.bound,
        proven=bool(linf.proven and l1.proven),
        lower_bound_only=method == "region",
        linf_point=linf.point.reshape(problem.x_shape),
        l1_point=l1.point.reshape(problem.x_shape),
        feature_max_abs_diff=max(problem.feature_diff(p) for p in (linf.point, l1.point)),
        solve_time=clock.elapsed(),
        message="; ".join(notes),
    )


def polish(
    problem: Problem,
    states: Sequence[NDArray[np.int8]],
    cost_x: NDArray[np.float64],
    *,
    box: Box | None = None,
    time_limit: float = 5.0,
) -> NDArray[np.float64] | None:
    """``argmax cost_x . x'`` over one activation pattern's region (an LP).

    A MILP point meets its rows only to the MILP tolerance; re-solving the LP of its own pattern
    (``states`` from its binaries) returns a point whose features are exact to LP accuracy, and
    at least as good up to that tolerance.  None when the LP does not finish optimally.
    """
    enc = Encoding(problem, states, None, integral=False, box=box)
    out = enc.solver().run(enc.input_cost(cost_x), maximize=True, time_limit=time_limit)
    if out.status != "optimal" or out.values is None:
        return None
    return problem.clip(out.values, box)


def linf_extent(
    problem: Problem,
    states: Sequence[NDArray[np.int8]],
    bounds: Bounds | None,
    *,
    integral: bool,
    best: tuple[float, NDArray[np.float64]],
    deadline: float,
    notes: list[str],
    start_pattern: Sequence[NDArray[np.bool_]] | None = None,
) -> Extent:
    """Largest ``|x'_j - x_j|`` over the encoding.

    ``best`` = (value, point) already known to be attainable (e.g. from x's region, whose
    activation pattern is ``start_pattern``).
    """
    initial_point = best[1]
    n, x = problem.n, problem.x
    rooms = np.concatenate([problem.up - x, x - problem.lo])  # candidate k < n: +e_j, k >= n: -e_j
    order = np.argsort(-rooms, kind="stable")
    value, point = best
    enc = Encoding(problem, states, bounds, integral=integral)
    solver = enc.solver(presolve=integral)  # LPs: keep the basis between objectives
    bound = value
    for pos, k in enumerate(order):
        if rooms[k] <= value + ROOM_RTOL * max(1.0, value):
            return Extent(value, point, max(bound, value), True)  # no candidate left can beat it
        left = deadline - time.perf_counter()
        if left <= 0:
            notes.append(
                f"L-infinity: time limit reached ({'MILP' if integral else 'LP'}s), "
                f"{order.size - pos} of {order.size} candidates unvisited"
            )
            return Extent(value, point, max(bound, float(rooms[order[pos:]].max())), False)
        j, sign = int(k % n), (1.0 if k < n else -1.0)
        start = (
            enc.start_vector(point, start_pattern if point is initial_point else None) if integral else None
        )
        out = solver.run(
            enc.input_cost(sign, j), maximize=True, time_limit=left, offset=-sign * x[j], start=start
        )
        if out.values is not None:
            cand = (
                _polished_move(problem, enc, out.values, j, sign, deadline)
                if integral
                else problem.clip(out.values)
            )
            if abs(cand[j] - x[j]) > value:
                value, point = float(abs(cand[j] - x[j])), cand
        if out.status == "optimal":
            bound = max(bound, out.bound if math.isfinite(out.bound) else value)
        else:
            bound = max(bound, out.bound if math.isfinite(out.bound) else float(rooms[k]))
            notes.append(f"L-infinity: coordinate {j} not proven (status {out.status})")
            return Extent(value, point, max(bound, float(rooms[order[pos + 1 :]].max(initial=bound))), False)
    return Extent(value, point, max(bound, value), True)


def _polished_move(
    problem: Problem, enc: Encoding, values: NDArray[np.float64], j: int, sign: float, deadline: float
) -> NDArray[np.float64]:
    """A MILP point moving ``x_j`` by ``sign``, polished in its own pattern's region unless that
    moves ``x_j`` clearly less."""
    cand = problem.clip(values)
    unit = np.zeros(problem.n)
    unit[j] = sign
    polished = polish(
        problem,
        enc.fixed_binaries(values),
        unit,
        time_limit=max(MIN_LP_SECONDS, deadline - time.perf_counter()),
    )
    if polished is not None and sign * (polished[j] - cand[j]) >= -POLISH_RTOL * max(1.0, abs(cand[j])):
        return polished
    return cand


def _add_sides(enc: Encoding, problem: Problem) -> tuple[NDArray[np.float64], float]:
    """Columns ``p, q >= 0`` with ``x'_j - x_j = p_j - q_j`` and a side binary per coordinate
    strictly inside the box; returns the cost of ``sum_j |x'_j - x_j|`` and its constant."""
    n, x = problem.n, problem.x
    room_up, room_dn = problem.up - x, x - problem.lo
    at_lower = (room_dn <= 0) & (room_up > 0)
    at_upper = (room_up <= 0) & (room_dn > 0)
    idx = np.flatnonzero((room_dn > 0) & (room_up > 0))
    p = q = np.zeros(0, np.int64)
    if idx.size:
        p = enc.add_cols(np.zeros(idx.size), room_up[idx])
        q = enc.add_cols(np.zeros(idx.size), room_dn[idx])
        side = enc.add_cols(np.zeros(idx.size), np.ones(idx.size), integer=True)
        one = np.ones(idx.size)
        # x'_j - p_j + q_j = x_j
        enc.add_rows(np.eye(n)[idx], enc.x_cols, x[idx], x[idx], [(p, -one), (q, one)])
        # p <= room_up * side ; q <= room_dn * (1 - side)
        none = np.zeros((idx.size, 0))
        empty = np.zeros(0, np.int64)
        enc.add_rows(none, empty, -np.inf, 0.0, [(p, one), (side, -room_up[idx])])
        enc.add_rows(none, empty, -np.inf, room_dn[idx], [(q, one), (side, room_dn[idx])])

        def fill(xp: NDArray[np.float64], vec: NDArray[np.float64]) -> None:
            d = xp[idx] - x[idx]
            vec[p] = np.maximum(d, 0.0)
            vec[q] = np.maximum(-d, 0.0)
            vec[side] = (d > 0).astype(np.float64)

        enc.add_filler(fill)
    # coordinates on a face of the box move only inwards: |x'_j - x_j| is linear there
    cost = np.zeros(enc.n_cols)
    cost[enc.x_cols[at_lower]] = 1.0
    cost[enc.x_cols[at_upper]] = -1.0
    cost[p] = 1.0
    cost[q] = 1.0
    return cost, float(x[at_upper].sum() - x[at_lower].sum())


def l1_extent(
    problem: Problem,
    states: Sequence[NDArray[np.int8]],
    bounds: Bounds | None,
    *,
    deadline: float,
    starts: Sequence[NDArray[np.float64]],
    notes: list[str],
    start_pattern: Sequence[NDArray[np.bool_]] | None = None,
) -> Extent:
    """Largest ``||x' - x||_1`` over the encoding (a MILP).

    The best of ``starts`` is the MILP's start solution (binaries from ``start_pattern`` when
    given: the pattern of the region it came from).
    """
    x = problem.x

    def dist(point: NDArray[np.float64]) -> float:
        return float(np.abs(point - x).sum())

    # Side binaries are integer in both methods; in "region" the network's units are all fixed.
    enc = Encoding(problem, states, bounds, integral=True)
    cost, offset = _add_sides(enc, problem)
    best_start = max(starts, key=dist)
    out = enc.solver().run(
        cost,
        maximize=True,
        time_limit=max(deadline - time.perf_counter(), MIN_SOLVE_SECONDS),
        offset=offset,
        start=enc.start_vector(best_start, start_pattern),
    )
    value, point = dist(best_start), best_start
    if out.values is not None:
        cand = problem.clip(out.values)
        # polish: with the pattern and every side fixed, |x'_j - x_j| is linear: one LP
        side = np.sign(cand - x)
        orthant = (np.where(side > 0, x, problem.lo), np.where(side < 0, x, problem.up))
        polished = polish(
            problem,
            enc.fixed_binaries(out.values),
            side,
            box=orthant,
            time_limit=max(MIN_LP_SECONDS, deadline - time.perf_counter()),
        )
        if polished is not None and dist(polished) >= dist(cand) - POLISH_RTOL * max(1.0, dist(cand)):
            cand = polished
        if dist(cand) >= value:
            value, point = dist(cand), cand
    proven = out.status == "optimal"
    bound = out.bound if math.isfinite(out.bound) else float((problem.up - problem.lo).sum())
    if not proven:
        notes.append(f"L1: not proven (status {out.status})")
    return Extent(value, point, max(bound, value), proven)
