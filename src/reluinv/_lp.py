"""The one HiGHS wrapper of reluinv: an incremental column LP and a general MILP/LP model.

* :class:`ColumnLP` -- row generation on a tall system (used by :mod:`reluinv.geometry` and
  :mod:`reluinv.preimage`) is column generation on its dual: a sequence of LPs that differ only by
  added columns.  HiGHS keeps its basis, so each re-solve is a few simplex steps.
* :class:`HighsModel` -- one sparse LP or MILP (the encodings of :mod:`reluinv.invariance`) whose
  objective changes between runs, with a time limit, an optional start solution and a proven
  bound.

Both report HiGHS' verdict in the words of :data:`STATUS_NAMES`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
from numpy.typing import NDArray


def _import_highspy_quietly() -> Any:
    """Import HiGHS and create one instance with stdout muted: the first instance prints a banner."""
    import highspy as module

    highspy: Any = module  # HiGHS' partial type information: treat it as untyped
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1: nothing to mute
        highspy.Highs()
        return highspy
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return highspy


highspy: Any = _import_highspy_quietly()  # HiGHS ships no type information
_INF = highspy.kHighsInf
_MS = highspy.HighsModelStatus

#: HiGHS model statuses in reluinv's words; any other status keeps HiGHS' own description.
STATUS_NAMES = {
    _MS.kOptimal: "optimal",
    _MS.kInfeasible: "infeasible",
    _MS.kUnbounded: "unbounded",
    _MS.kTimeLimit: "time_limit",
}

#: Primal/dual feasibility tolerance of an LP (absolute, on rows scaled so that their largest
#: coefficient is at most 1: see :class:`HighsModel`).
LP_FEAS_TOL = 1e-9
#: The same for a MILP: HiGHS judges a start solution on its own rescaled rows, where deep big-M
#: rows turn exact rounding into violations of about 1e-8.  MILP points are polished by an LP of
#: their own activation pattern at :data:`LP_FEAS_TOL` before reluinv returns them.
MIP_FEAS_TOL = 1e-7
#: Relative MIP gap at which HiGHS calls an incumbent optimal.
MIP_REL_GAP = 1e-6
#: A reported objective and ``cost @ columns + offset`` may differ by this times max(1, |objective|).
OBJECTIVE_CHECK_RTOL = 1e-7
#: The shortest time limit handed to HiGHS (seconds): zero or negative would mean "no limit".
MIN_SOLVE_SECONDS = 1e-3


def _status_name(h: Any, status: Any) -> str:
    return STATUS_NAMES.get(status) or h.modelStatusToString(status)


def _finite_or_inf(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """numpy's +-inf as HiGHS' infinity."""
    return np.where(np.isfinite(values), values, np.where(values > 0, _INF, -_INF))


def _quiet_highs() -> Any:
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("random_seed", 0)
    return h


class ColumnLP:
    """``minimise cost . v`` subject to fixed equality rows ``C v = rhs`` and bounds on ``v``, with
    columns added between solves (column generation; HiGHS warm-starts the primal simplex).

    Row generation on a tall system ``R z <= h`` is column generation on its dual, whose basis has
    only as many rows as ``z`` has entries; that keeps every simplex step cheap.
    """

    def __init__(self, rhs: NDArray[np.float64]):
        h = _quiet_highs()
        h.setOptionValue("presolve", "off")  # keep the basis between solves (warm start)
        rhs = np.asarray(rhs, dtype=np.float64)
        h.addRows(rhs.size, rhs, rhs, 0, np.zeros(rhs.size, np.int32), np.zeros(0, np.int32), np.zeros(0))
        self._h = h
        self.n_rows = rhs.size
        self.n_cols = 0

    def add_cols(
        self,
        columns: NDArray[np.float64],
        cost: NDArray[np.float64],
        lower: NDArray[np.float64],
        upper: NDArray[np.float64],
    ) -> int:
        """Append columns (given dense, shape (n_rows, count)); returns the first new index."""
        columns = np.asarray(columns, dtype=np.float64)
        count = columns.shape[1]
        first = self.n_cols
        if count == 0:
            return first
        mask = columns.T != 0
        starts = np.concatenate([[0], np.cumsum(mask.sum(axis=1))[:-1]]).astype(np.int32)
        indices = np.nonzero(mask)[1].astype(np.int32)
        values = columns.T[mask]
        self._h.addCols(
            count,
            np.asarray(cost, dtype=np.float64),
            np.where(np.isfinite(lower), lower, -_INF),
            np.where(np.isfinite(upper), upper, _INF),
            int(values.size),
            starts,
            indices,
            values,
        )
        self.n_cols += count
        return first

    def set_column(self, col: int, values: NDArray[np.float64]) -> None:
        """Overwrite the coefficients of one column."""
        for row, value in enumerate(np.asarray(values, dtype=np.float64)):
            self._h.changeCoeff(row, col, float(value))

    def solve(self) -> tuple[str, NDArray[np.float64], NDArray[np.float64], float]:
        """Return ``(status, v, row_duals, objective)``; duals y satisfy ``cost - C^T y >= 0`` on
        columns at their lower bound (the minimisation convention)."""
        self._h.run()
        name = _status_name(self._h, self._h.getModelStatus())
        sol = self._h.getSolution()
        return (
            name,
            np.asarray(sol.col_value, dtype=np.float64),
            np.asarray(sol.row_dual, dtype=np.float64),
            float(self._h.getInfo().objective_function_value),
        )


@dataclass(frozen=True)
class Outcome:
    """One run of a :class:`HighsModel`.

    Attributes:
        status: "optimal", "infeasible", "unbounded", "time_limit", or HiGHS' own words.
        values: the columns of the best point, or None when no feasible point is known.
        objective: its objective (``+-inf`` for "unbounded", NaN without a point).
        bound: proven bound on the optimum (MILP dual bound; the optimum of a solved LP; else NaN).
        seconds: wall-clock time.
    """

    status: str
    values: NDArray[np.float64] | None
    objective: float
    bound: float
    seconds: float


@dataclass(frozen=True)
class SparseProblem:
    """``lb <= v <= ub``, ``row_lo <= A v <= row_hi``, ``v_j`` integer where ``integer[j]``."""

    lb: NDArray[np.float64]
    ub: NDArray[np.float64]
    integer: NDArray[np.bool_]
    A: scipy.sparse.csc_matrix
    row_lo: NDArray[np.float64]
    row_hi: NDArray[np.float64]


class HighsModel:
    """One HiGHS model (LP, or MILP when any column is integer); the objective changes per run.

    Tolerances: :data:`LP_FEAS_TOL` for LPs, :data:`MIP_FEAS_TOL` and :data:`MIP_REL_GAP` for
    MILPs.  ``presolve=False`` keeps the basis between objective changes (a warm start).
    """

    def __init__(self, problem: SparseProblem, *, presolve: bool = True):
        h = _quiet_highs()
        self.is_mip = bool(problem.integer.any())
        tol = MIP_FEAS_TOL if self.is_mip else LP_FEAS_TOL
        for option in (
            "primal_feasibility_tolerance",
            "dual_feasibility_tolerance",
            "mip_feasibility_tolerance",
        ):
            h.setOptionValue(option, tol)
        h.setOptionValue("mip_rel_gap", MIP_REL_GAP)
        self._presolve = presolve
        if not presolve:
            h.setOptionValue("presolve", "off")
        self.n_cols = int(problem.lb.size)
        self._lp = self._highs_lp(problem)
        h.passModel(self._lp)
        self._h = h

    def _highs_lp(self, problem: SparseProblem) -> Any:
        A = problem.A
        lp = highspy.HighsLp()
        lp.num_col_ = self.n_cols
        lp.num_row_ = int(problem.row_lo.size)
        lp.col_cost_ = np.zeros(self.n_cols)
        lp.col_lower_ = _finite_or_inf(problem.lb)
        lp.col_upper_ = _finite_or_inf(problem.ub)
        lp.row_lower_ = _finite_or_inf(problem.row_lo)
        lp.row_upper_ = _finite_or_inf(problem.row_hi)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data.astype(np.float64)
        if self.is_mip:
            lp.integrality_ = [
                highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                for i in problem.integer
            ]
        return lp

    def run(
        self,
        cost: NDArray[np.float64],
        *,
        maximize: bool,
        time_limit: float,
        offset: float = 0.0,
        start: NDArray[np.float64] | None = None,
    ) -> Outcome:
        """Optimise ``cost . v + offset`` within ``time_limit`` seconds (``start``: a MILP start)."""
        t0 = time.perf_counter()
        out = self._run(cost, maximize, time_limit, offset, start)
        if out.values is not None and self.is_mip and not self._attains(cost, offset, out):
            # With a start solution and presolve, HiGHS 1.16 can report the optimum's value while
            # returning the start's columns.  Never trust a value the columns do not give.
            self._h.passModel(self._lp)  # forget the start and any stale solution
            self._h.setOptionValue("presolve", "off")
            left = time_limit - (time.perf_counter() - t0)
            out = self._run(cost, maximize, left, offset, None)
            if self._presolve:
                self._h.setOptionValue("presolve", "choose")
            if out.values is not None and not self._attains(cost, offset, out):
                raise RuntimeError(
                    "HiGHS returned columns that do not attain its objective "
                    f"({float(np.asarray(cost) @ out.values) + offset} vs "
                    f"{out.objective})"
                )
        return Outcome(out.status, out.values, out.objective, out.bound, time.perf_counter() - t0)

    @staticmethod
    def _attains(cost: NDArray[np.float64], offset: float, out: Outcome) -> bool:
        assert out.values is not None
        achieved = float(np.asarray(cost) @ out.values) + offset
        return abs(achieved - out.objective) <= OBJECTIVE_CHECK_RTOL * max(1.0, abs(out.objective))

    def _run(
        self,
        cost: NDArray[np.float64],
        maximize: bool,
        time_limit: float,
        offset: float,
        start: NDArray[np.float64] | None,
    ) -> Outcome:
        h = self._h
        h.changeColsCost(
            self.n_cols, np.arange(self.n_cols, dtype=np.int32), np.asarray(cost, dtype=np.float64)
        )
        h.changeObjectiveSense(highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize)
        h.setOptionValue("time_limit", float(max(time_limit, MIN_SOLVE_SECONDS)))
        if start is not None and self.is_mip:
            sol = highspy.HighsSolution()
            sol.col_value = list(np.asarray(start, dtype=np.float64))
            h.setSolution(sol)
        t0 = time.perf_counter()
        h.run()
        status = h.getModelStatus()
        if status == _MS.kUnboundedOrInfeasible and self._presolve:
            h.setOptionValue("presolve", "off")  # presolve cannot tell these apart; the simplex can
            h.run()
            h.setOptionValue("presolve", "choose")
            status = h.getModelStatus()
        seconds = time.perf_counter() - t0
        name = _status_name(h, status)
        info = h.getInfo()
        feasible = info.primal_solution_status == 2 and name not in ("infeasible", "unbounded")
        values = np.asarray(h.getSolution().col_value, dtype=np.float64) if feasible else None
        objective = float(info.objective_function_value) + offset if feasible else math.nan
        if name == "unbounded":
            objective = math.inf if maximize else -math.inf
        if self.is_mip:
            bound = float(info.mip_dual_bound) + offset if name in ("optimal", "time_limit") else math.nan
        else:
            bound = objective if name == "optimal" else math.nan
        return Outcome(name, values, objective, bound, seconds)
