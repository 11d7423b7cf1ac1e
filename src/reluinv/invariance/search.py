"""The searches of Appendix A7 and beyond: :func:`invariance_search` finds ``x'`` with the features
of ``x`` at a layer, as close as possible to a target (package docstring for the modes)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .._lp import Outcome
from .._validate import as_model_input
from .bounds import TIGHTEN_CHOICES, preimage_bounds, states_from_bounds
from .encoding import Encoding
from .problem import (
    ACTIVE,
    IMPROVE_RTOL,
    INACTIVE,
    MIN_LP_SECONDS,
    POLISH_RTOL,
    ZERO_RTOL,
    Clock,
    Problem,
    TimeShares,
    setup,
)

Mode = Literal["layer", "region", "exact"]
Objective = Literal["max_inner", "l1"]
MODES = ("layer", "region", "exact")
OBJECTIVES = ("max_inner", "l1")


# --- results ----------------------------------------------------------------------------------------


def json_float(value: float) -> float | None:
    """A float for JSON: NaN becomes None, infinities stay (Python's json writes them)."""
    value = float(value)
    return value if math.isfinite(value) else (None if math.isnan(value) else value)


@dataclass(frozen=True)
class InvarianceResult:
    """The outcome of :func:`invariance_search`.

    Attributes:
        x: the input found, shape of the given ``x`` (None only when "exact" found no feasible point
            within the time limit and was asked not to fall back, or the objective is unbounded).
        objective: ``<target, x'>`` ("max_inner") or ``||x' - target||_1`` ("l1"), recomputed in
            float64 from ``x``.
        objective_kind: "max_inner" or "l1".
        bound: the best proven bound on the optimum of this mode's problem (upper for "max_inner",
            lower for "l1"); equals ``objective`` up to solver tolerance when ``proven``; NaN when
            nothing was proven.
        feature_max_abs_diff: ``max |F_l(x') - F_l(x)|``, float64 forward pass through the torch
            modules.
        input_l2_distance: ``||x' - x||_2``.
        mode: "layer", "region" or "exact".
        proven: True when ``objective`` is optimal for this mode's problem (MIP relative gap 1e-6).
        status: the solver's verdict ("optimal", "time_limit", "unbounded", ...).
        solve_time: wall-clock seconds of the whole call.
        layer: the module index (chain) or layer name (traced graph) whose output was kept.
        n_binaries: binaries of the MILP ("exact"; 0 otherwise).
        message: one line on anything the numbers do not say.
    """

    x: NDArray[np.float64] | None
    objective: float
    objective_kind: str
    bound: float
    feature_max_abs_diff: float
    input_l2_distance: float
    mode: str
    proven: bool
    status: str
    solve_time: float
    layer: int | str
    n_binaries: int = 0
    message: str = ""

    def to_dict(self, *, include_x: bool = True) -> dict[str, Any]:
        """JSON-serialisable summary (``x`` as nested lists when ``include_x``)."""
        out: dict[str, Any] = {
            k: json_float(getattr(self, k))
            for k in ("objective", "bound", "feature_max_abs_diff", "input_l2_distance", "solve_time")
        }
        out.update(
            objective_kind=self.objective_kind,
            mode=self.mode,
            proven=bool(self.proven),
            status=self.status,
            layer=self.layer,
            n_binaries=self.n_binaries,
            message=self.message,
        )
        if include_x:
            out["x"] = None if self.x is None else self.x.tolist()
        return out


# --- the objective ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """The objective of a search: maximise ``<target, x'>`` or minimise ``||x' - target||_1``."""

    kind: str
    target: NDArray[np.float64]

    def value(self, x_prime: NDArray[np.float64]) -> float:
        if self.kind == "max_inner":
            return float(self.target @ x_prime)
        return float(np.abs(x_prime - self.target).sum())

    def better(self, a: float, b: float, tol: float) -> bool:
        """True when objective ``a`` is strictly better than ``b`` by more than ``tol``."""
        return a > b + tol if self.kind == "max_inner" else a < b - tol

    def encode(self, enc: Encoding) -> tuple[NDArray[np.float64], bool]:
        """Cost vector (and sense) of the objective; "l1" adds ``t >= |x' - target|`` columns."""
        target = self.target
        n = target.size
        if self.kind == "max_inner":
            return enc.input_cost(target), True
        t = enc.add_cols(np.zeros(n), np.full(n, np.inf))
        eye = np.eye(n)
        # t - x' >= -target  and  t + x' >= target
        enc.add_rows(-eye, enc.x_cols, -target, np.full(n, np.inf), [(t, np.ones(n))])
        enc.add_rows(eye, enc.x_cols, target, np.full(n, np.inf), [(t, np.ones(n))])
        enc.add_filler(lambda xp, vec: vec.__setitem__(t, np.abs(xp - target)))
        cost = np.zeros(enc.n_cols)
        cost[t] = 1.0
        return cost, False


def region_search(
    problem: Problem, states: Sequence[NDArray[np.int8]], goal: Goal, deadline: float
) -> Outcome:
    """The LP of one activation pattern's region (at least :data:`MIN_LP_SECONDS`)."""
    enc = Encoding(problem, states, None, integral=False)
    cost, maximize = goal.encode(enc)
    return enc.solver().run(
        cost, maximize=maximize, time_limit=max(deadline - time.perf_counter(), MIN_LP_SECONDS)
    )


# --- invariance search ------------------------------------------------------------------------------


def invariance_search(
    model: Any,
    x: Any,
    target: Any,
    *,
    layer: int | str,
    lower: Any = 0.0,
    upper: Any = 1.0,
    objective: Objective = "max_inner",
    mode: Mode = "region",
    time_limit: float = 60.0,
    tighten: Literal["auto", "lp", "ibp"] = "auto",
    warm_start: bool = True,
) -> InvarianceResult:
    """Find ``x'`` in the box with ``F_layer(x') = F_layer(x)`` close to ``target`` (Appendix A7).

    ``objective="max_inner"`` maximises ``<target, x'>`` -- the linear programme of Appendix A7,
    which produced Figure 7 / 12; ``objective="l1"`` minimises ``||x' - target||_1`` (an LP with one
    auxiliary ``t_j >= |x'_j - target_j|`` per input).

    Modes (package docstring for the encoding):

    * ``"layer"``: Appendix A7 exactly: ``A_pos x' + b_pos = y_pos``, ``A_zero x' + b_zero <= 0``,
      ``lower <= x' <= upper`` for the first affine + ReLU block.  Only defined when ``layer`` is
      the first ReLU module (everything before it affine): the preimage of a deeper layer's
      features under that layer alone lives in the previous layer's feature space, and most of its
      points are produced by no input (Section 4, "Scope"), so it is no input-space answer.
      Use "region" or "exact" there.
    * ``"region"``: ``x'`` keeps x's activation pattern (z > 0 active, z <= 0 inactive) in every
      ReLU up to ``layer``; one LP at any depth.  Equal features hold by construction and are
      checked by a forward pass.
    * ``"exact"``: any activation pattern.  First a primal heuristic: from the region optimum,
      walk through adjacent linear regions (flip the units on whose boundary ``z_i = 0`` the
      optimum lies, re-solve that region's LP; each step keeps the features exactly and never
      worsens the objective) for at most a quarter of ``time_limit``.  Then the MILP, with big-M
      bounds from interval propagation (LP-tightened on small networks, ``tighten``) and the
      walk's point as its start solution, so the result is never worse than "region".  The
      incumbent is polished by re-solving the LP of its own activation pattern, which removes
      the big-M rounding from the features.  On the time limit the best point is returned with
      ``proven=False``; if the MILP had no feasible point the walk's point is returned and the
      message says so.  ``warm_start=False`` skips the walk, the start and this fallback (then
      ``x`` is None when the MILP found nothing).  The time shares are in :class:`TimeShares`.

    Args:
        model: ``torch.nn.Sequential`` (nested allowed, eval mode) of modules that
            :func:`reluinv.network.as_chain` supports, or any model :mod:`reluinv.graph` traces
            (residual additions, concatenations); ReLU must be the only activation up to ``layer``.
        x: one input, without batch dimension (e.g. shape (1, 28, 28) or (784,)).
        target: same number of entries as ``x``.
        layer: whose output is kept equal: a module index (into the flattened Sequential) for
            a Sequential; a layer name (module path, e.g. ``"layer1.0.relu#2"``), a layer index
            or ``"output"`` for a traced model.
        lower, upper: box on the input (scalars or per-coordinate); must contain ``x``.
        objective: "max_inner" or "l1".
        mode: "layer", "region" or "exact".
        time_limit: seconds for the whole call (bound tightening, region LP and MILP together).
        tighten: "lp" (bound tightening by LP, at most a fifth of ``time_limit``), "ibp"
            (interval bounds only) or "auto" (LP on small networks, where it is cheap), for "exact".
        warm_start: run the adjacent-region walk and give its point to the MILP as a start
            solution and fallback ("exact").

    Returns:
        :class:`InvarianceResult`.

    Raises:
        ValueError: a model neither :func:`reluinv.network.as_chain` nor :mod:`reluinv.graph` reads,
            or an activation other than ReLU up to ``layer``; layer out of range; NaN/inf in
            ``x`` or ``target``; ``target`` of the wrong size; box that excludes ``x``; unknown
            mode/objective; "layer" mode at a deeper layer; "exact" without a finite box.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1., 1., 0.], [0., 1., -1.]]))
        ...     _ = net[0].bias.zero_()
        >>> r = invariance_search(net, [0.2, 0.2, 0.5], [1., 0., 0.], layer=1, mode="layer")
        >>> round(r.objective, 6), r.feature_max_abs_diff < 1e-9, r.proven
        (0.4, True, True)
    """
    problem, clock = setup(
        (model, x, layer, lower, upper),
        time_limit=time_limit,
        choices=(
            ("mode", mode, MODES),
            ("objective", objective, OBJECTIVES),
            ("tighten", tighten, TIGHTEN_CHOICES),
        ),
        finite_box=(
            "mode='exact' needs a finite box: give finite lower and upper for every "
            "input (big-M bounds are propagated from it)"
        )
        if mode == "exact"
        else None,
    )
    goal = Goal(objective, _check_target(target, problem))
    if mode == "layer":
        _check_first_block(problem)
    region = region_search(problem, problem.region_states(), goal, clock.deadline)
    if mode != "exact":
        return _finish(
            problem,
            clock,
            goal,
            region.values,
            mode=mode,
            proven=region.status == "optimal",
            status=region.status,
            bound=region.bound,
            n_binaries=0,
            message=_region_message(region),
        )
    return _exact_search(problem, clock, goal, region, tighten=tighten, warm_start=warm_start)


def _check_target(target: Any, problem: Problem) -> NDArray[np.float64]:
    target_arr = as_model_input(target, "target").reshape(-1) if np.ndim(target) else None
    if target_arr is None or target_arr.size != problem.n:
        shape = None if target_arr is None else np.shape(target)
        raise ValueError(
            f"target must have {problem.n} entries like x (shape {problem.x_shape}), "
            f"got shape {shape if shape is not None else '()'}"
        )
    return target_arr


def _check_first_block(problem: Problem) -> None:
    net = problem.net
    first_relu = net.blocks[0].module if net.blocks else None
    if not (len(net.blocks) == 1 and net.tail is None):
        # a chain names modules by index, a graph names layers by module path
        kind = "layer" if isinstance(net.layer, str) else "module"
        hint = "" if first_relu is None else f" (the first ReLU here is {kind} {first_relu!r})"
        raise ValueError(
            f"mode='layer' is the Appendix A7 LP of the first affine + ReLU block only: layer must "
            f"be the first ReLU {kind}{hint}, got layer {net.layer!r}.  A deeper layer's one-layer "
            f"preimage is not an input-space answer; use mode='region' or mode='exact'"
        )


def _region_message(out: Outcome) -> str:
    if out.status == "unbounded":
        return "the objective is unbounded on the preimage (no finite box)"
    if out.status != "optimal":
        return f"the LP did not finish (status {out.status})"
    return ""


def _exact_search(
    problem: Problem, clock: Clock, goal: Goal, region: Outcome, *, tighten: str, warm_start: bool
) -> InvarianceResult:
    """Mode "exact": the region walk, the MILP from its point, the polish and the fallback."""
    notes: list[str] = []
    walk_x = None if region.values is None else problem.clip(region.values)
    walk_states = problem.region_states()
    if warm_start and walk_x is not None:
        walk_states, walk_x, steps = pattern_walk(
            problem, walk_states, walk_x, goal, clock.since_start(TimeShares.WALK)
        )
        if steps:
            notes.append(f"adjacent-region walk: {steps} improving steps from the region optimum")
    bounds, _ = preimage_bounds(problem, tighten, clock.from_now(TimeShares.SEARCH_TIGHTEN))
    enc = Encoding(problem, states_from_bounds(problem, bounds), bounds, integral=True)
    cost, maximize = goal.encode(enc)
    start = None
    if warm_start and walk_x is not None:
        start = enc.start_vector(walk_x, [st == ACTIVE for st in walk_states])
    out = enc.solver().run(cost, maximize=maximize, time_limit=clock.left(), start=start)
    best = _polished_incumbent(problem, clock, goal, enc, out, start)
    best = _prefer_walk(goal, best, walk_x if warm_start else None, notes)
    proven = out.status == "optimal"
    if not proven:
        notes.insert(0, f"not proven optimal (solver status: {out.status})")
    return _finish(
        problem,
        clock,
        goal,
        best,
        mode="exact",
        proven=proven,
        status=out.status,
        bound=out.bound,
        n_binaries=enc.n_binaries,
        message="; ".join(notes),
    )


def _polished_incumbent(
    problem: Problem, clock: Clock, goal: Goal, enc: Encoding, out: Outcome, start: NDArray[np.float64] | None
) -> NDArray[np.float64] | None:
    """The MILP's point, replaced by the LP optimum of its own pattern unless that is clearly worse.

    The LP is free of big-M rounding.  Its piece is often lower-dimensional (the incumbent sits on
    some ``z = 0``), so it gets little time (:attr:`TimeShares.POLISH`).
    """
    if out.values is None:
        return None
    best = problem.clip(out.values)
    if start is not None and not np.any(out.values != start):
        return best  # the start itself: an exact point of the walk
    polish_seconds = max(MIN_LP_SECONDS, min(TimeShares.POLISH * clock.time_limit, clock.left()))
    polished = region_search(
        problem, enc.fixed_binaries(out.values), goal, time.perf_counter() + polish_seconds
    )
    if polished.values is not None and polished.status == "optimal":
        # The MILP point meets its rows only to the tolerance, which can flatter its value a
        # little; the polished point is exact for its pattern, so it wins unless clearly worse.
        cand = problem.clip(polished.values)
        tol = POLISH_RTOL * max(1.0, abs(goal.value(best)))
        if not goal.better(goal.value(best), goal.value(cand), tol):
            best = cand
    return best


def _prefer_walk(
    goal: Goal, best: NDArray[np.float64] | None, walk_x: NDArray[np.float64] | None, notes: list[str]
) -> NDArray[np.float64] | None:
    """The walk's point when the MILP has none or a worse one (``walk_x`` None: no fallback)."""
    if best is None:
        notes.append(
            "the MILP found no feasible point within the time limit; returning the "
            "best point of the region LP and the walk"
            if walk_x is not None
            else "no feasible point found within the time limit"
        )
        return walk_x
    if walk_x is not None:
        tol = IMPROVE_RTOL * max(1.0, abs(goal.value(walk_x)))
        if goal.better(goal.value(walk_x), goal.value(best), tol):
            notes.append("the walk's point was better than the MILP incumbent")
            return walk_x  # feasible for the MILP too
    return best


def pattern_walk(
    problem: Problem, states: list[NDArray[np.int8]], point: NDArray[np.float64], goal: Goal, deadline: float
) -> tuple[list[NDArray[np.int8]], NDArray[np.float64], int]:
    """Local search through adjacent linear regions, a primal heuristic for mode "exact".

    An LP optimum over one region usually lies on some boundaries ``z_i = 0``.  Flipping those
    units gives a neighbouring region that still contains the point (at ``z_i = 0`` both states
    give ``h_i = 0``), so the LP there is feasible and its optimum is at least as good; repeat while
    it improves.  Each step is one exact region LP, so every point visited keeps the features.
    Returns (states, point, number of improving steps).
    """
    current = goal.value(point)
    steps = 0
    while time.perf_counter() < deadline:
        zs = problem.net.preactivations(point)
        flips = [
            np.abs(zs[l]) <= ZERO_RTOL * max(1.0, float(np.abs(zs[l]).max(initial=0.0)))
            for l in range(problem.net.n_var_blocks)
        ]
        if not any(f.any() for f in flips):
            break
        trial = [
            np.where(f, ACTIVE + INACTIVE - st, st).astype(np.int8)
            for f, st in zip(flips, states, strict=True)
        ]
        out = region_search(problem, trial, goal, deadline)
        if out.status != "optimal" or out.values is None:
            break
        cand = problem.clip(out.values)
        cand_value = goal.value(cand)
        if not goal.better(cand_value, current, IMPROVE_RTOL * max(1.0, abs(current))):
            break
        states, point, current = trial, cand, cand_value
        steps += 1
    return states, point, steps


def _finish(
    problem: Problem,
    clock: Clock,
    goal: Goal,
    values: NDArray[np.float64] | None,
    *,
    mode: str,
    proven: bool,
    status: str,
    bound: float,
    n_binaries: int,
    message: str,
) -> InvarianceResult:
    if values is None:
        unbounded = math.inf if goal.kind == "max_inner" else -math.inf
        value = unbounded if status == "unbounded" else math.nan
        return InvarianceResult(
            None,
            value,
            goal.kind,
            bound,
            math.nan,
            math.nan,
            mode,
            False,
            status,
            clock.elapsed(),
            problem.net.layer,
            n_binaries,
            message,
        )
    x_prime = problem.clip(values)
    return InvarianceResult(
        x=x_prime.reshape(problem.x_shape),
        objective=goal.value(x_prime),
        objective_kind=goal.kind,
        bound=float(bound),
        feature_max_abs_diff=problem.feature_diff(x_prime),
        input_l2_distance=float(np.linalg.norm(x_prime - problem.x)),
        mode=mode,
        proven=bool(proven),
        status=status,
        solve_time=clock.elapsed(),
        layer=problem.net.layer,
        n_binaries=n_binaries,
        message=message,
    )
