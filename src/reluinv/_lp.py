"""A small incremental LP on HiGHS: columns are added between solves and the solver warm-starts.

Row generation on a tall system (used by :mod:`reluinv.geometry` and :mod:`reluinv.preimage`) is
column generation on its dual: a sequence of LPs that differ only by added columns.  HiGHS keeps
its basis, so each re-solve is a few simplex steps instead of a fresh solve.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from numpy.typing import NDArray


def _import_highspy_quietly():
    """Import HiGHS and create one instance with stdout muted: the first instance prints a banner."""
    import highspy

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


highspy = _import_highspy_quietly()
_INF = highspy.kHighsInf


class ColumnLP:
    """``minimise cost . v`` subject to fixed equality rows ``C v = rhs`` and bounds on ``v``, with
    columns added between solves (column generation; HiGHS warm-starts the primal simplex).

    Row generation on a tall system ``R z <= h`` is column generation on its dual, whose basis has
    only as many rows as ``z`` has entries; that keeps every simplex step cheap.
    """

    def __init__(self, rhs: NDArray[np.float64]):
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("random_seed", 0)
        h.setOptionValue("presolve", "off")  # keep the basis between solves (warm start)
        rhs = np.asarray(rhs, dtype=np.float64)
        h.addRows(rhs.size, rhs, rhs, 0, np.zeros(rhs.size, np.int32), np.zeros(0, np.int32),
                  np.zeros(0))
        self._h = h
        self.n_rows = rhs.size
        self.n_cols = 0

    def add_cols(self, columns: NDArray[np.float64], cost: NDArray[np.float64],
                 lower: NDArray[np.float64], upper: NDArray[np.float64]) -> int:
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
        self._h.addCols(count, np.asarray(cost, dtype=np.float64),
                        np.where(np.isfinite(lower), lower, -_INF),
                        np.where(np.isfinite(upper), upper, _INF),
                        int(values.size), starts, indices, values)
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
        status = self._h.getModelStatus()
        name = {highspy.HighsModelStatus.kOptimal: "optimal",
                highspy.HighsModelStatus.kInfeasible: "infeasible",
                highspy.HighsModelStatus.kUnbounded: "unbounded"}.get(status, str(status))
        sol = self._h.getSolution()
        return (name, np.asarray(sol.col_value, dtype=np.float64),
                np.asarray(sol.row_dual, dtype=np.float64),
                float(self._h.getInfo().objective_function_value))
