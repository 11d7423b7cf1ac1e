"""The MILP / LP encoding of ``S_l(x) = {x' in box : F_l(x') = F_l(x)}`` for given unit states
(the encoding of the package docstring), handed to HiGHS through :class:`reluinv._lp.HighsModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse
from numpy.typing import NDArray

from .._lp import HighsModel, SparseProblem
from .problem import ACTIVE, FREE, INACTIVE, Problem, ReluBlock

Box = tuple[NDArray[np.float64], NDArray[np.float64]]
Bounds = Sequence[tuple[NDArray[np.float64], NDArray[np.float64]]]
#: Sets extra columns from an input point (for MILP start solutions): ``fill(x_prime, vec)``.
Filler = Callable[[NDArray[np.float64], NDArray[np.float64]], None]


class Encoding:
    """Columns and rows of ``{x' in box : F_l(x') = features}`` for given unit states.

    Block ``l``'s pre-activation reads the columns of its sources (``input_cols[l]``: the input
    columns and/or earlier blocks' ``h`` columns, side by side), so chains and DAGs share one
    encoding.

    ``states[l]`` (one int8 array per variable block) holds ACTIVE, INACTIVE or FREE;
    ``bounds[l] = (lo, up)`` are valid bounds of ``z_l`` over the set (needed for free units).
    With ``integral=False`` free units get the LP relaxation.  ``box`` replaces the problem's box
    on ``x'`` (a sub-box of it, e.g. one orthant around x).
    """

    def __init__(
        self,
        problem: Problem,
        states: Sequence[NDArray[np.int8]],
        bounds: Bounds | None,
        *,
        integral: bool,
        box: Box | None = None,
    ):
        self.problem = problem
        self.integral = integral
        self._lb: list[NDArray[np.float64]] = []
        self._ub: list[NDArray[np.float64]] = []
        self._int: list[NDArray[np.bool_]] = []
        self._r: list[NDArray[np.int64]] = []
        self._c: list[NDArray[np.int64]] = []
        self._v: list[NDArray[np.float64]] = []
        self._rlo: list[NDArray[np.float64]] = []
        self._rhi: list[NDArray[np.float64]] = []
        self.n_cols = 0
        self.n_rows = 0
        self._fillers: list[Filler] = []
        self.x_cols = self.add_cols(*(box if box is not None else (problem.lo, problem.up)))
        self.input_cols: list[NDArray[np.int64]] = []
        self.h_cols: list[NDArray[np.int64]] = []
        self.binary_cols: list[NDArray[np.int64]] = []
        self.states = [np.asarray(s, dtype=np.int8) for s in states]
        self._add_network(bounds)

    def _add_network(self, bounds: Bounds | None) -> None:
        problem, net = self.problem, self.problem.net
        for l, blk in enumerate(net.blocks):
            prev = net.gather(self.x_cols, self.h_cols, blk.sources)
            self.input_cols.append(prev)
            if l == len(net.blocks) - 1 and net.fixed_last:
                y = problem.features
                pos = y > 0
                self.add_rows(blk.weight[pos], prev, y[pos] - blk.bias[pos], y[pos] - blk.bias[pos])
                self.add_rows(blk.weight[~pos], prev, np.full(int((~pos).sum()), -np.inf), -blk.bias[~pos])
                break
            zlo, zup = (
                bounds[l]
                if bounds is not None
                else (np.full(blk.bias.size, -np.inf), np.full(blk.bias.size, np.inf))
            )
            self._add_block(blk, prev, self.states[l], zlo, zup)
        if net.tail is not None:
            T, t = net.tail
            f = problem.features
            self.add_rows(T, net.gather(self.x_cols, self.h_cols, net.tail_sources), f - t, f - t)

    # -- building -----------------------------------------------------------------------------

    def add_cols(self, lb: Any, ub: Any, *, integer: bool = False) -> NDArray[np.int64]:
        lb = np.asarray(lb, dtype=np.float64).reshape(-1)
        ub = np.asarray(ub, dtype=np.float64).reshape(-1)
        cols = np.arange(self.n_cols, self.n_cols + lb.size, dtype=np.int64)
        self._lb.append(lb)
        self._ub.append(ub)
        self._int.append(np.full(lb.size, integer))
        self.n_cols += lb.size
        return cols

    def add_rows(
        self,
        dense: NDArray[np.float64],
        cols: NDArray[np.int64],
        lo: Any,
        hi: Any,
        extras: Sequence[tuple[NDArray[np.int64], NDArray[np.float64]]] = (),
    ) -> None:
        """Rows ``lo <= dense @ v[cols] + sum_e coef_e * v[col_e] <= hi`` (one extra per row each)."""
        dense = np.asarray(dense, dtype=np.float64)
        if dense.ndim != 2 or dense.shape[1] != cols.size:  # pragma: no cover - internal misuse
            raise AssertionError(f"rows of shape {dense.shape} over {cols.size} columns")
        count = dense.shape[0]
        if count == 0:
            return
        rows = np.arange(self.n_rows, self.n_rows + count, dtype=np.int64)
        nz_r, nz_c = np.nonzero(dense)
        self._r.append(rows[nz_r])
        self._c.append(cols[nz_c])
        self._v.append(dense[nz_r, nz_c])
        for extra_cols, coef in extras:
            keep = extra_cols >= 0
            self._r.append(rows[keep])
            self._c.append(np.asarray(extra_cols, dtype=np.int64)[keep])
            self._v.append(np.asarray(coef, dtype=np.float64)[keep])
        self._rlo.append(np.broadcast_to(np.asarray(lo, dtype=np.float64), (count,)).copy())
        self._rhi.append(np.broadcast_to(np.asarray(hi, dtype=np.float64), (count,)).copy())
        self.n_rows += count

    def add_filler(self, fill: Filler) -> None:
        """Register how extra columns are set from an input point (for MILP start solutions)."""
        self._fillers.append(fill)

    def _add_block(
        self,
        blk: ReluBlock,
        prev: NDArray[np.int64],
        st: NDArray[np.int8],
        zlo: NDArray[np.float64],
        zup: NDArray[np.float64],
    ) -> NDArray[np.int64]:
        m = blk.bias.size
        W, c = blk.weight, blk.bias
        h_ub = np.where(st == INACTIVE, 0.0, np.where(np.isfinite(zup), np.maximum(zup, 0.0), np.inf))
        h = self.add_cols(np.zeros(m), h_ub)
        act, inact, free = st == ACTIVE, st == INACTIVE, st == FREE
        # active: h - W h_prev = c (h >= 0 from the column bound gives z >= 0)
        idx = np.flatnonzero(act)
        self.add_rows(-W[idx], prev, c[idx], c[idx], [(h[idx], np.ones(idx.size))])
        # inactive: W h_prev <= -c (h fixed to 0 by its bounds)
        idx = np.flatnonzero(inact)
        self.add_rows(W[idx], prev, np.full(idx.size, -np.inf), -c[idx])
        # free: h >= z, and the upper envelope where bounds allow
        idx = np.flatnonzero(free)
        self.add_rows(-W[idx], prev, c[idx], np.full(idx.size, np.inf), [(h[idx], np.ones(idx.size))])
        both = free & np.isfinite(zlo) & np.isfinite(zup)
        if self.integral and np.any(free & ~both):
            raise ValueError(
                "mode='exact' needs finite bounds on every unit; give a finite box lower/upper on every input"
            )
        binary = np.full(m, -1, dtype=np.int64)
        idx = np.flatnonzero(both)
        if idx.size:
            a = self.add_cols(np.zeros(idx.size), np.ones(idx.size), integer=self.integral)
            binary[idx] = a
            # h <= z - lo (1 - a)   <=>   h - W h_prev - lo a <= c - lo
            self.add_rows(
                -W[idx],
                prev,
                np.full(idx.size, -np.inf),
                c[idx] - zlo[idx],
                [(h[idx], np.ones(idx.size)), (a, -zlo[idx])],
            )
            # h <= up a
            self.add_rows(
                np.zeros((idx.size, 0)),
                np.zeros(0, np.int64),
                np.full(idx.size, -np.inf),
                np.zeros(idx.size),
                [(h[idx], np.ones(idx.size)), (a, -zup[idx])],
            )
        idx = np.flatnonzero(free & np.isfinite(zlo) & ~np.isfinite(zup))
        self.add_rows(
            -W[idx], prev, np.full(idx.size, -np.inf), c[idx] - zlo[idx], [(h[idx], np.ones(idx.size))]
        )
        self.h_cols.append(h)
        self.binary_cols.append(binary)
        return h

    # -- start solutions and reading solutions -------------------------------------------------

    def _fill_network(
        self,
        x_prime: NDArray[np.float64],
        vec: NDArray[np.float64],
        pattern: Sequence[NDArray[np.bool_]] | None,
    ) -> None:
        vec[self.x_cols] = x_prime
        zs = self.problem.net.preactivations(x_prime)
        for l, h in enumerate(self.h_cols):
            st, z = self.states[l], zs[l]
            vec[h] = np.where(st == ACTIVE, z, np.where(st == INACTIVE, 0.0, np.maximum(z, 0.0)))
            b = self.binary_cols[l]
            has = b >= 0
            on = (z > 0) if pattern is None else pattern[l]
            vec[b[has]] = on[has].astype(np.float64)

    def start_vector(
        self, x_prime: NDArray[np.float64], pattern: Sequence[NDArray[np.bool_]] | None = None
    ) -> NDArray[np.float64]:
        """All columns set from an input point by a forward pass (a MILP start solution).

        ``pattern`` (one bool array per variable block) sets the binaries; by default ``z > 0``.
        An LP optimum usually lies on some ``z = 0``, where only the pattern it was found in is
        sure to match the rest of the start.
        """
        vec = np.zeros(self.n_cols)
        self._fill_network(x_prime, vec, pattern)
        for fill in self._fillers:
            fill(x_prime, vec)
        return vec

    @property
    def n_binaries(self) -> int:
        return int(sum(np.count_nonzero(i) for i in self._int)) if self.integral else 0

    def input_cost(self, coefficients: NDArray[np.float64] | float, cols: Any = None) -> NDArray[np.float64]:
        """A cost vector that is ``coefficients`` on the input columns (``cols`` of them, default
        all) and 0 elsewhere."""
        cost = np.zeros(self.n_cols)
        cost[self.x_cols if cols is None else self.x_cols[cols]] = coefficients
        return cost

    def z_objective(self, l: int, i: int) -> tuple[NDArray[np.float64], float]:
        """Cost vector and constant of ``z_{l,i}`` as a function of the columns."""
        blk = self.problem.net.blocks[l]
        cost = np.zeros(self.n_cols)
        cost[self.input_cols[l]] = blk.weight[i]
        return cost, float(blk.bias[i])

    def fixed_binaries(self, values: NDArray[np.float64]) -> list[NDArray[np.int8]]:
        """Unit states with every free unit fixed by its binary in ``values`` (a MILP solution)."""
        out = []
        for st, b in zip(self.states, self.binary_cols, strict=True):
            new = st.copy()
            has = (st == FREE) & (b >= 0)
            new[has] = np.where(values[b[has]] > 0.5, ACTIVE, INACTIVE)
            out.append(new)
        return out

    # -- solving ------------------------------------------------------------------------------

    def solver(self, *, presolve: bool = True) -> HighsModel:
        return HighsModel(self.sparse(), presolve=presolve)

    def sparse(self) -> SparseProblem:
        """The encoding as one sparse problem, every row with a coefficient above 1 scaled to 1.

        Feasibility tolerances are absolute, and big-M rows (1e7 on deep networks) would otherwise
        make rounding in an exact start solution look like a violation.
        """
        lb, ub = np.concatenate(self._lb), np.concatenate(self._ub)
        integer = np.concatenate(self._int) if self.integral else np.zeros(self.n_cols, bool)
        if self._r:
            r, c, v = np.concatenate(self._r), np.concatenate(self._c), np.concatenate(self._v)
        else:
            r = c = np.zeros(0, np.int64)
            v = np.zeros(0)
        rlo = np.concatenate(self._rlo) if self._rlo else np.zeros(0)
        rhi = np.concatenate(self._rhi) if self._rhi else np.zeros(0)
        row_max = np.zeros(self.n_rows)
        np.maximum.at(row_max, r, np.abs(v))
        scale = 1.0 / np.maximum(row_max, 1.0)
        A = scipy.sparse.csc_matrix((v * scale[r], (r, c)), shape=(self.n_rows, self.n_cols))
        A.sum_duplicates()
        return SparseProblem(lb, ub, integer, A, rlo * scale, rhi * scale)
