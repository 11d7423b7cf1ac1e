"""Max-pooling as ReLUs, exactly, so that the ReLU encoding of :mod:`reluinv.invariance` covers it.

``max(a, b) = b + ReLU(a - b)`` for all real ``a, b``.  A window of ``k`` units is reduced in
``ceil(log2 k)`` rounds of pairs (``k - 1`` ReLUs in all); every round of every window of a
max-pool layer is one ReLU block, and the pool's output is an *affine expression* in the outputs
of those blocks and of the pool's own sources.  A pattern of those ReLUs fixes which unit of each
window is the maximum (a tie lies on the boundary of both patterns, and the pieces are closed),
so every activation pattern's piece is still a polyhedron, and their union is the preimage
exactly, as for the argmax selections of :func:`reluinv.graph_preimage.preimage_rows`.

:class:`Expr` is the bookkeeping: rows affine in the *atoms* (the model input and the ReLU
blocks' outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Expr:
    """Rows ``sum_a parts[a] @ h_a + offset``; ``h_a`` the output of atom ``a`` (a block index, or
    :data:`reluinv.invariance.problem.INPUT`).  ``parts`` keeps the atoms in order of appearance;
    a part ``None`` is the identity (an atom's own output, not stored as a matrix)."""

    parts: dict[int, NDArray[np.float64] | None]
    offset: NDArray[np.float64]

    @classmethod
    def atom(cls, index: int, width: int) -> Expr:
        return cls({index: None}, np.zeros(width))

    @property
    def n_rows(self) -> int:
        return int(self.offset.size)

    def _part(self, a: int) -> NDArray[np.float64]:
        M = self.parts[a]
        return np.eye(self.n_rows) if M is None else M

    def take(self, rows: Sequence[int] | NDArray[np.intp]) -> Expr:
        idx = np.asarray(rows, dtype=np.intp)
        return Expr({a: self._part(a)[idx] for a in self.parts}, self.offset[idx])

    def plus(self, other: Expr, sign: float = 1.0) -> Expr:
        """``self + sign * other`` (same number of rows)."""
        parts: dict[int, NDArray[np.float64] | None] = {a: self._part(a) for a in self.parts}
        for a in other.parts:
            term = sign * other._part(a)
            mine = parts.get(a)
            parts[a] = term if mine is None else mine + term
        return Expr(parts, self.offset + sign * other.offset)

    def matrix(self) -> tuple[NDArray[np.float64], tuple[int, ...]]:
        """The rows as one matrix over the atoms side by side, and the atoms."""
        atoms = tuple(self.parts)
        return np.hstack([self._part(a) for a in atoms]), atoms


def compose(A: NDArray[np.float64], b: NDArray[np.float64], sources: Sequence[Expr]) -> Expr:
    """``A u + b`` with ``u`` the rows of ``sources`` side by side, as an :class:`Expr`.

    An atom's own output (an identity part) passes its columns of ``A`` on unchanged, so a graph
    of ReLU layers alone gets its maps exactly as :func:`reluinv.graph_preimage.source_map` gave
    them.
    """
    parts: dict[int, NDArray[np.float64] | None] = {}
    offset = b
    col = 0
    for source in sources:
        A_s = A[:, col : col + source.n_rows]
        col += source.n_rows
        for a, M in source.parts.items():
            term = A_s if M is None else A_s @ M
            mine = parts.get(a)
            parts[a] = term if mine is None else mine + term
        if source.offset.any():
            offset = offset + A_s @ source.offset
    return Expr(parts, offset)


#: Adds a ReLU block computing ``ReLU(expr)`` (named by the string) and returns its atom index.
AddBlock = Callable[[Expr, str], int]


def max_as_relus(z: Expr, windows: Sequence[NDArray[np.intp]], name: str, add_block: AddBlock) -> Expr:
    """The max-pool ``y_j = max_{k in windows[j]} z_k`` as ReLU blocks (one per round) and the
    expression of ``y`` over them: each round pairs a window's candidates ``(a, b)`` into
    ``b + ReLU(a - b)``; an odd one out waits for the next round."""
    rows = z
    groups = [list(map(int, w)) for w in windows]
    level = 0
    while any(len(g) > 1 for g in groups):
        level += 1
        first: list[int] = []
        second: list[int] = []
        kept: list[int] = []
        places: list[tuple[list[int], list[int]]] = []  # per window: its pairs' and odd ones' places
        for g in groups:
            half = len(g) // 2
            places.append(
                (
                    list(range(len(second), len(second) + half)),
                    list(range(len(kept), len(kept) + len(g) - 2 * half)),
                )
            )
            first += g[0 : 2 * half : 2]
            second += g[1 : 2 * half : 2]
            kept += g[2 * half :]
        atom = add_block(
            rows.take(first).plus(rows.take(second), -1.0), f"{name} (max as ReLUs, round {level})"
        )
        # the new rows: every pair's maximum b + ReLU(a - b), then the odd ones out
        unit = np.zeros((len(second) + len(kept), len(first)))
        unit[np.arange(len(first)), np.arange(len(first))] = 1.0
        rows = rows.take(second + kept).plus(Expr({atom: unit}, np.zeros(unit.shape[0])))
        groups = [pairs + [len(second) + k for k in odd] for pairs, odd in places]
    return rows.take([g[0] for g in groups])
