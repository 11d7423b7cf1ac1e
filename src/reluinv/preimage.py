"""Preimage of one ReLU layer: Theorem 4, Algorithm 1 (Appendix A3), box priors (Remark 3).

Given ``y = ReLU(A x + b)`` with ``A`` (m x n), ``b`` and ``y`` known, the preimage of ``y`` is the
polyhedron

    P = { x :  A_pos x + b_pos = y_pos,   A_zero x + b_zero <= 0,   lower <= x <= upper }

(equations (1) and (2) of the paper, enriched with a box as Remark 3 allows).  :func:`preimage`
says whether ``P`` is empty, a single point, a bounded set with more than one point ("compact") or
unbounded, and returns certificates that :meth:`Preimage.verify` (or anyone) can check.

Method, following Theorem 4 but exact where Algorithm 1 as printed is not:

1. One factorisation of the active rows gives the rank of the equalities, an orthonormal basis
   ``O`` of ``N(A_pos)`` (k = nullity) and a particular solution (:mod:`reluinv._nullspace`: an
   LU of ``A_pos^T`` whose condition estimate certifies full rank, else a pivoted QR).  k = 0 is
   Theorem 4 i.
2. A feasible point: the caller's ``hint`` where one pass over the layer shows that it lies in P to
   the tolerance (the input that produced y does); else Newton's method on the violated
   inequalities (:mod:`reluinv._interior`), from the hint where it solves the equations and from
   the particular solution otherwise; where that finds no point with slack, the same steps aimed
   at the bounds themselves (a point of P, perhaps on its boundary); and where those find none, a
   Chebyshev-centre LP in the null-space coordinates.  If the point has slack in every
   inequality, P has more than one point (when k > 0).  Otherwise the inequalities tight there
   are tested for omnidirectionality in N(A_pos) (Theorem 12): if they are, the point is the only
   one (Theorem 4 ii — a singleton pinned by inequalities, which Algorithm 1 calls "finite").
   A boundary point whose second point lies within ``NEAR_FACTOR`` tolerances of it leaves the
   decision to the LP's point.
3. Boundedness is omnidirectionality of ``A-bar = [A_zero; box rows] O`` (Theorem 4 iii, Theorem
   5), decided with interior (not only hull membership) as in :mod:`reluinv.geometry`.  When every
   coordinate has both bounds the box alone bounds P.

Both LPs use row generation: they start from a few rows and add only the rows a candidate
answer violates, so a 3500 x 784 layer is decided while looking at a small fraction of its rows.

Scale: the kind does not change when a row ``(A_i, b_i, y_i)`` is multiplied by a positive number
or x is scaled (A by s, the box by 1/s).  So every row is scaled to unit norm and x is measured in
units of ``2^Q``, the largest distance of an equation's hyperplane from the origin (every
solution lies at least that far out), raised to ``16 eps / rtol`` of the largest term of any row
(``max(|b_i|, y_i) / |A_i|``) so that no row's rounding exceeds the tolerance; without equations
off the origin, the largest distance of any layer hyperplane (of a box face when all pass through
0).  Both come from power-of-two exponents (``np.frexp``), so data at 1e-300 or 1e300 neither
underflows nor overflows, and the verdict is the same at every scale.

Tolerances, in these units: a constraint counts as satisfied when its violation is at most
``tolerance = rtol * max(1, |x_p|)`` with ``x_p`` the particular solution (``rtol`` defaults to
1e-9); full rank is accepted when a condition estimate of the factors exceeds
``1e3 * max(m, n) * eps``, else ranks count ``|R_jj| > max(m, n) * eps * |R_11|`` of the pivoted QR.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._interior import CONSTANT_ROW, feasible_point, first_rows, interior_point
from ._lp import ColumnLP
from ._nullspace import EqualityFactor
from ._scratch import gathered_rows
from ._threads import single_blas_pool
from ._validate import as_bounds, as_finite_array, as_model_input, as_real_array, coarse_float_dtype
from .geometry import (
    DEFAULT_RTOL,
    ZERO_ROW,
    OmniCertificate,
    RowSource,
    omni_lazy,
    scaled_rows,
    spread_rows,
)
from .preimage_verify import CertificateError, verify_preimage

__all__ = [
    "Preimage",
    "PreimageCertificate",
    "CertificateError",
    "PrecisionWarning",
    "preimage",
    "layer_preimage",
]

Kind = Literal["empty", "singleton", "compact", "unbounded", "unknown"]
F64 = NDArray[np.float64]
Idx = NDArray[np.intp]

#: The slack sought for a point of P, relative to the scale of the particular solution.
_CAP = 1e-3

#: A result whose margin is below ``NEAR_FACTOR * tolerance`` is reported as near the tolerance.
NEAR_FACTOR = 1e3


@dataclass(frozen=True)
class PreimageCertificate:
    """Evidence for a :class:`Preimage` verdict, checkable without the solver.

    Inequality rows are labelled by integers: ``i < m`` is layer row i (``a_i x + b_i <= 0``),
    ``m + j`` is ``x_j <= upper_j`` and ``m + n + j`` is ``-x_j <= -lower_j``.

    Attributes:
        reason: one line saying what decided the kind.
        rows, multipliers: strictly positive ``multipliers`` on inequality ``rows`` whose
            restrictions to ``N(A_pos)`` combine to zero and span it (they are omnidirectional in
            ``N(A_pos)``).  For "compact" these rows bound P (Theorem 4 iii); for a singleton with
            k > 0 they are tight at ``point`` and pin it (Theorem 4 ii, Theorem 12).
        bounded_by_box: True when finite bounds on every coordinate bound P.
        second_point: "compact" and "unbounded": a second point of P, so P is not a singleton.
        farkas_equalities, farkas_rows, farkas_inequalities: "empty": multipliers ``nu`` (on the
            active rows) and ``lam >= 0`` (on inequality ``farkas_rows``) with
            ``A_pos^T nu + G^T lam = 0`` and ``(y - b)_pos . nu + h . lam < 0``, which no x can
            satisfy (Farkas' lemma).
    """

    reason: str
    rows: NDArray[np.intp] | None = None
    multipliers: NDArray[np.float64] | None = None
    bounded_by_box: bool = False
    second_point: NDArray[np.float64] | None = None
    farkas_equalities: NDArray[np.float64] | None = None
    farkas_rows: NDArray[np.intp] | None = None
    farkas_inequalities: NDArray[np.float64] | None = None


@dataclass(frozen=True)
class Preimage:
    """The preimage of ``y`` under ``x -> ReLU(A x + b)`` (optionally within a box).

    Attributes:
        kind: "empty", "singleton", "compact" (bounded, more than one point) or "unbounded";
            :func:`reluinv.network_preimage` may also answer "unknown" when it hits a time limit.
        point: a point of the preimage (None when empty).
        direction: "unbounded" only: a unit ``d`` with ``A_pos d = 0``, ``A_zero d <= 0`` and
            ``point + t d`` inside the box for every ``t >= 0``.
        nullity: k = dim N(A_pos).
        n_active: number of i with ``y_i > 0``.
        rank: rank of ``A_pos``.
        margin: the smallest relative gap among the quantities that decided the kind (rank ratio
            of the deciding QR, balance of the multipliers, strictness of the direction, violation
            that proves emptiness), in [0, 1]; see :attr:`near_tolerance`.
        tolerance: the tolerance on unit-norm rows that the decision used, relative to the
            problem's scale (see the module docstring), so the same at every scale.
        certificate: the evidence, see :class:`PreimageCertificate`.
    """

    kind: Kind
    point: NDArray[np.float64] | None
    direction: NDArray[np.float64] | None
    nullity: int
    n_active: int
    rank: int
    margin: float
    tolerance: float
    certificate: PreimageCertificate = field(repr=False)

    @property
    def near_tolerance(self) -> bool:
        """True when the decision was within ``1e3 * tolerance`` of flipping."""
        return self.margin < NEAR_FACTOR * self.tolerance

    @property
    def bounded(self) -> bool:
        return self.kind in ("singleton", "compact")

    def verify(
        self, A: Any, b: Any, y: Any, *, lower: Any = None, upper: Any = None, rtol: float = 1e-6
    ) -> None:
        """Check the certificate against the layer independently; raise :class:`CertificateError`.

        Uses only numpy/scipy linear algebra (no LP): membership of ``point``, the conditions on
        ``direction``, the multipliers' combination and rank on a freshly computed null-space basis,
        and the Farkas inequality for "empty".  ``rtol`` is relative to the data's scale.
        """
        verify_preimage(self, A, b, y, lower=lower, upper=upper, rtol=rtol)


class PrecisionWarning(UserWarning):
    """An "empty" verdict that the rounding of an output given in float32 or float16 can explain.

    A layer computed in float32 (as most trained networks are) rounds each ``y_i`` by up to about
    ``n * eps`` of its terms (the standard bound for an n-term product, ``eps`` of float32 being
    1.2e-7), far more than the decision's tolerance of 1e-9.  Where more units are active than there
    are inputs, the equations of the active units then have no common solution, and the preimage
    of the y given is empty, though the input that produced it is there to float32's precision.
    """


def _rounding_warning(results: list[Preimage], dtype: np.dtype[Any], n: int, rtol: float) -> None:
    """Warn (:class:`PrecisionWarning`) when an "empty" verdict's margin, the violation that proves
    it, is within ``n * eps`` of ``dtype``, the rounding an output in that precision may carry."""
    bound = n * float(np.finfo(dtype).eps)
    within = [r.margin for r in results if r.kind == "empty" and r.margin <= bound]
    if not within:
        return
    suggest = f"{10.0 ** np.ceil(np.log10(bound)):.0e}"
    which = "the 'empty' verdict lies" if len(results) == 1 else f"{len(within)} 'empty' verdicts lie"
    warnings.warn(
        f"y is {dtype.name}, and {which} within its rounding: the violation that proves it, "
        f"{min(within):.2g}, is below {bound:.1g}, about the largest error of a product of {n} terms "
        f"in {dtype.name}, so an output that a network computed in {dtype.name} can have an empty "
        f"preimage at rtol={rtol:g}. Recompute y in float64 from float64 A, b and the input, use "
        f"reluinv.layer_preimage, or pass rtol={suggest} to decide to {dtype.name}'s precision",
        PrecisionWarning,
        stacklevel=3,
    )


def preimage(
    A: Any,
    b: Any,
    y: Any,
    *,
    lower: Any = None,
    upper: Any = None,
    rtol: float = DEFAULT_RTOL,
    hint: Any = None,
) -> Preimage:
    """Classify the preimage of ``y`` under ``x -> ReLU(A x + b)`` (Theorem 4, Remark 3).

    Args:
        A: weights, shape (m, n).
        b: bias, shape (m,).
        y: the layer output, shape (m,), non-negative.  An output no x can produce is not an
            error: its preimage is "empty".  An output computed in float32 carries that
            precision's rounding (see Warns).
        lower, upper: optional box on x (scalars or shape (n,); None or +-inf = no bound).
        rtol: relative tolerance (module docstring).
        hint: optional input of shape (n,) thought to lie in the preimage, such as the input
            that produced ``y``.  It is checked against every row, never trusted: where it lies in
            the preimage to the tolerance, it is the point the decision needs (step 2 of the
            module docstring) and no search for one is made; where it solves the equations only,
            the search starts from it; otherwise it is ignored.  The kind is the same with or
            without it.

    Returns:
        :class:`Preimage`.

    Raises:
        ValueError: shapes that do not match, NaN or inf in A, b, y or ``hint``, negative
            entries of y, ``lower > upper``, complex values or a torch tensor that requires
            grad (named), and a preimage whose points lie beyond the float64 range (rows of A
            tiny against b, y).

    Warns:
        PrecisionWarning: y is float32 or float16 and the verdict is "empty" by a violation that
            its rounding can explain (at most ``n * eps`` of that precision): with more active
            units than inputs, a y computed in float32 makes the equations inconsistent at the
            default tolerance.  The verdict is right for the y given; for the network's output,
            recompute y in float64, use :func:`layer_preimage`, or pass the rtol the warning names.

    Example:
        >>> r = preimage([[1, 0], [0, 1], [1, -1]], [0, 0, -1], [1, 0, 0])
        >>> r.kind, r.point.round(6).tolist(), r.nullity
        ('singleton', [1.0, 0.0], 1)
    """
    A, row_norms = _layer_matrix(A)
    m, n = A.shape
    b = as_finite_array(b, "b", ndim=1)
    coarse = coarse_float_dtype(y)
    y = as_finite_array(y, "y", ndim=1)
    if b.shape != (m,):
        raise ValueError(f"b must have shape ({m},) to match A of shape {A.shape}, got {b.shape}")
    if y.shape != (m,):
        raise ValueError(f"y must have shape ({m},) to match A of shape {A.shape}, got {y.shape}")
    if np.any(y < 0):
        i = int(np.flatnonzero(y < 0)[0])
        raise ValueError(f"y is a ReLU output and must be >= 0; y[{i}] = {y[i]}")
    lo, up = as_bounds(lower, upper, n)
    x_hint = _hint_vector(hint, n)
    with single_blas_pool():
        result = _LayerSystem(A, b, y, lo, up, rtol, row_norms, hint=x_hint).decide()
    if coarse is not None:
        _rounding_warning([result], coarse, n, rtol)
    return result


def _hint_vector(hint: Any, n: int) -> F64 | None:
    """``hint`` as a float64 vector of length n (None stays None); ``ValueError`` naming it."""
    if hint is None:
        return None
    x = as_finite_array(hint, "hint", ndim=1)
    if x.shape != (n,):
        raise ValueError(f"hint must have shape ({n},), one entry per input of A, got {x.shape}")
    return x


def _layer_matrix(A: Any) -> tuple[F64, RowNorms]:
    """``A`` as a float64 matrix and its :func:`_row_norms`; ``ValueError`` naming A otherwise.

    The norms are finite exactly when every entry of A is (a NaN or inf entry gives a NaN or inf
    norm, and finite rows are scaled so that their norms cannot overflow), so one pass over A
    both checks it and computes them.
    """
    M = as_real_array(A, "A")
    norms = _row_norms(M) if M.ndim == 2 else None
    if norms is None or not np.isfinite(norms[1]).all():
        as_finite_array(M, "A", ndim=2)  # raises, naming what is wrong
    assert norms is not None  # as_finite_array raised for any other number of dimensions
    return M, norms


def layer_preimage(
    module: Any, x: Any, *, lower: Any = None, upper: Any = None, rtol: float = DEFAULT_RTOL
) -> Preimage:
    """:func:`preimage` of ``ReLU(module(x))`` for a ``torch.nn.Linear`` or ``torch.nn.Conv2d``.

    The layer is turned into its explicit matrix (float64) by :func:`affine_matrix`; for a
    convolution the rank of the active rows is computed, not assumed (paper, Section 4).  ``x``
    may carry a leading batch dimension of 1.  ``point`` and ``direction`` are flattened inputs.
    ``x`` is the decision's ``hint`` and, as it lies in the preimage, the returned ``point`` (the
    certificate's ``second_point``, where there is one, is another point of the preimage).
    """
    sample = as_model_input(x, "x")
    A, b, in_shape = affine_matrix(module, sample.shape)
    flat = sample.reshape(-1)
    if flat.size != A.shape[1]:  # pragma: no cover - affine_matrix checks the shape
        raise ValueError(f"x has {flat.size} entries, the layer expects {A.shape[1]}")
    y = np.maximum(A @ flat + b, 0.0)
    return preimage(A, b, y, lower=lower, upper=upper, rtol=rtol, hint=flat)


def affine_matrix(
    module: Any, input_shape: tuple[int, ...]
) -> tuple[NDArray[np.float64], NDArray[np.float64], tuple[int, ...]]:
    """Explicit float64 ``(A, b, in_shape)`` with ``module(x).flatten() = A x.flatten() + b``.

    Supports ``torch.nn.Linear`` (input (in,) or (1, in)) and ``torch.nn.Conv2d`` (input (C, H, W)
    or (1, C, H, W); any stride, padding, padding mode, dilation and groups).  The matrix is that
    of the layer's step in :func:`reluinv.network.as_chain` (``AffineStep.dense``).
    """
    from torch import nn

    from .network import AffineStep, as_chain

    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise ValueError(
            f"layer_preimage supports torch.nn.Linear and torch.nn.Conv2d, got {type(module).__name__}"
        )
    shape = tuple(int(s) for s in input_shape)
    if isinstance(module, nn.Linear):
        if shape not in ((module.in_features,), (1, module.in_features)):
            raise ValueError(
                f"Linear({module.in_features}, {module.out_features}) needs an input "
                f"of shape ({module.in_features},) or (1, {module.in_features}), got {shape}"
            )
        shape = (module.in_features,)
    else:
        if len(shape) == 4 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 3 or shape[0] != module.in_channels:
            raise ValueError(
                f"Conv2d({module.in_channels}, {module.out_channels}) needs an input of "
                f"shape (C, H, W) or (1, C, H, W) with C = {module.in_channels}, got "
                f"{tuple(input_shape)}"
            )
    step = as_chain(nn.Sequential(module), shape, device="cpu")[0]
    assert isinstance(step, AffineStep)  # a Linear or Conv2d chain starts with its affine step
    A, b = step.dense()
    return A, b, shape


# --- the decision ---------------------------------------------------------------------------


#: Rows per block of :meth:`_UnitInequalities.dot_rows` (64 rows of 784 entries: 400 KB).
_ROW_BLOCK = 64


class _UnitInequalities:
    """``G x <= h``: the inactive layer rows (``a_i x <= -b_i``), then ``x_j <= upper_j``, then
    ``-x_j <= -lower_j``, every row scaled to unit norm.

    Rows are formed only when asked for and products go through the layer matrix itself, so a
    3500 x 784 layer is never copied (a copy per call cost as much as the QR on a 2-core machine).
    """

    def __init__(self, A: F64, inv_norm: F64, layer_rows: Idx, up_idx: Idx, lo_idx: Idx) -> None:
        self.A, self.n = A, A.shape[1]
        self.layer_rows, self.layer_scale = layer_rows, inv_norm[layer_rows]
        self.up_idx, self.lo_idx = up_idx, lo_idx
        self.n_layer = layer_rows.size
        self.size = self.n_layer + up_idx.size + lo_idx.size

    def rows(self, idx: NDArray[np.intp]) -> NDArray[np.float64]:
        """The unit rows ``G[idx]``."""
        idx = np.asarray(idx, dtype=np.intp)
        layer = idx < self.n_layer
        if layer.all():
            out: F64 = self.A[self.layer_rows[idx]]
            out *= self.layer_scale[idx, None]  # in place: numpy's broadcast product is 4x slower
            return out
        out = np.zeros((idx.size, self.n))
        out[layer] = self.A[self.layer_rows[idx[layer]]]
        out[layer] *= self.layer_scale[idx[layer], None]
        box = np.flatnonzero(~layer)
        j = idx[box] - self.n_layer
        upper = j < self.up_idx.size
        out[box[upper], self.up_idx[j[upper]]] = 1.0
        out[box[~upper], self.lo_idx[j[~upper] - self.up_idx.size]] = -1.0
        return out

    def restricted(self, idx: NDArray[np.intp], O: F64, out: F64) -> None:
        """``out = G[idx] @ O``: the rows restricted to the span of O's columns.  Layer rows are
        scaled after the product (k columns instead of n)."""
        if idx.size and idx.max() >= self.n_layer:
            np.matmul(self.rows(idx), O, out=out)
            return
        np.matmul(gathered_rows(self.A, self.layer_rows[idx], "layer rows"), O, out=out)
        out *= self.layer_scale[idx, None]

    def dot(self, x: F64, product: F64 | None = None) -> F64:
        """``G @ x`` for x of shape (n,); ``product``: ``A @ x`` where the caller has it."""
        layer = (self.A @ x if product is None else product)[self.layer_rows] * self.layer_scale
        return np.concatenate([layer, x[self.up_idx], -x[self.lo_idx]])

    def dot_rows(self, x: F64, idx: NDArray[np.intp]) -> F64:
        """``G[idx] @ x``, reading only those rows of the layer, a few at a time (each block is
        still in cache for its product; twice as fast as gathering them all first)."""
        out = np.empty(idx.size)
        layer = np.flatnonzero(idx < self.n_layer)
        rows = self.layer_rows[idx[layer]]
        for start in range(0, layer.size, _ROW_BLOCK):
            block = slice(start, start + _ROW_BLOCK)
            out[layer[block]] = self.A[rows[block]] @ x
        out[layer] *= self.layer_scale[idx[layer]]
        if layer.size < idx.size:
            box = np.flatnonzero(idx >= self.n_layer)
            out[box] = self.rows(idx[box]) @ x
        return out


class _RestrictedRows:
    """``G[idx] @ O`` on demand, each row formed once per decision: the boundedness test, the
    interior point and the LPs ask for overlapping rows, and each costs ``2 n k`` flops."""

    def __init__(self, G: _UnitInequalities, O: F64) -> None:
        self.G, self.O = G, O
        self.position = np.full(G.size, -1, dtype=np.intp)  # row i is stored[position[i]]
        k = O.shape[1]
        # Room for the boundedness test's 3k + 32 rows and the interior point's first ones.  Column
        # major: OpenBLAS forms a product into it 10-15 % faster than into rows (808 x 784 by
        # 784 x 184, single-threaded: 3.4 ms against 3.9 ms), and the projections read it as fast.
        self.stored = np.empty((min(G.size, 5 * k + 64), k), order="F")
        self.count = 0

    def form(self, idx: NDArray[np.intp]) -> None:
        """Store the rows of ``idx`` not yet formed, once each, in the order of ``idx``."""
        missing = idx[self.position[idx] < 0]
        if not missing.size:
            return
        missing = missing[np.sort(np.unique(missing, return_index=True)[1])]  # once each, in order
        end = self.count + missing.size
        if end > self.stored.shape[0]:
            grown = np.empty((max(end, 2 * self.stored.shape[0]), self.stored.shape[1]), order="F")
            grown[: self.count] = self.stored[: self.count]
            self.stored = grown
        self.G.restricted(missing, self.O, out=self.stored[self.count : end])
        self.position[missing] = np.arange(self.count, end)
        self.count = end

    def __call__(self, idx: NDArray[np.intp]) -> F64:
        """``G[idx] @ O``, read-only (a view of the store where the rows lie in one block).  Rows
        not yet formed are stored first (:meth:`form`)."""
        idx = np.asarray(idx, dtype=np.intp)
        self.form(idx)
        at = self.position[idx]
        if at.size and at[-1] - at[0] == at.size - 1 and np.all(np.diff(at) == 1):
            out: F64 = self.stored[at[0] : at[-1] + 1]
        else:
            out = self.stored[at]
        out.flags.writeable = False
        return out


#: ``(M, norms, shift, zero)`` of :func:`_row_norms`.
RowNorms = tuple[F64, F64, NDArray[np.int64], NDArray[np.bool_]]


def _row_norms(A: F64) -> RowNorms:
    """``(M, norms, shift, zero)`` with ``M_i = A_i * 2^-shift_i`` and ``norms_i = |M_i|``.

    The common case costs one pass over A and no copy: every squared row norm lies in
    ``[2^-800, 2^800]`` (or the row is exactly zero), so ``M = A``.  Otherwise each row is scaled
    by the power of two of its largest entry (exact), and the norms of the copy cannot overflow
    or underflow.  The squares are summed by ``np.vecdot`` (a BLAS dot per row): 1.2-1.3 ms for the
    3500 x 784 layer of ``benchmarks/preimage_speed.py`` where ``np.einsum`` took 1.9-2.3 ms.
    """
    with np.errstate(over="ignore"):  # an overflowing row lands outside and is scaled below
        sq = np.vecdot(A, A)
    outside = np.flatnonzero(~((sq >= 2.0**-800) & (sq <= 2.0**800)))
    zero = np.zeros(A.shape[0], dtype=bool)
    if all(sq[i] == 0 and not A[i].any() for i in outside):
        zero[outside] = True
        return A, np.sqrt(sq), np.zeros(A.shape[0], np.int64), zero
    M, p, norms = scaled_rows(A)  # entries below 1 in magnitude
    zero = p == ZERO_ROW
    return M, norms, np.where(zero, 0, p).astype(np.int64), zero


def _unit_rhs(
    b: F64, y: F64, inv: F64, shift: NDArray[np.int64], zero: NDArray[np.bool_]
) -> tuple[F64, NDArray[np.int64], NDArray[np.int64]]:
    """Right-hand sides ``(y_i - b_i) / |A_i|`` of the unit rows as ``mant * 2^exp`` (mant in
    [1/2, 1) or 0), with ``1/|A_i| = inv_i * 2^-shift_i``; no intermediate overflows.  Also each
    row's offset exponent: ``max(|b_i|, y_i) / |A_i| < 2^offset_i``, the size of the terms whose
    rounding the right-hand side carries (``y_i - b_i`` may cancel)."""
    terms = np.maximum(np.abs(b), y)
    pb = np.frexp(terms)[1].astype(np.int64)
    num = np.ldexp(y, (-pb).astype(np.int32)) - np.ldexp(b, (-pb).astype(np.int32))  # |num| <= 2
    mant, e = np.frexp(np.where(zero, 0.0, num * inv))
    offset = np.where((terms > 0) & ~zero, pb + np.frexp(inv)[1] - shift, _NO_OFFSET)
    return mant, e + pb - shift, offset


def _x_scale(
    mant: F64,
    exp: NDArray[np.int64],
    offset: NDArray[np.int64],
    equal: NDArray[np.bool_],
    lo: F64,
    up: F64,
    rtol: float,
) -> tuple[int, bool]:
    """``(Q, homogeneous)``: x is measured in units of 2^Q (see :class:`_LayerSystem`).

    Q is the exponent of the largest right-hand side of an equation (a unit active row): every
    solution is at least that far from the origin, so it is the scale of x that the tolerance
    is relative to.  It is raised where the terms of some row (``max(|b_i|, y_i) / |A_i|``, see
    :func:`_unit_rhs`; for an inactive row its hyperplane's distance) are more than
    ``rtol / (16 eps)`` times larger, so that every row's own rounding stays below the
    tolerance; and where the box lies more than 2^_BOX_RANGE further out.  Without equations
    (or with all of them through the origin) the largest right-hand side of any row sets Q, and
    the box alone where every layer hyperplane passes through the origin.  ``homogeneous``:
    every right-hand side is 0, so P is a cone.

    (Q once came from every row alike.  Then one unit that is off far away, with small weights
    and a large negative bias, loosened the tolerance of every equation: on a layer whose row
    norms spanned 1e-4 to 1e4, equations inconsistent by 1e-4 at a point of norm 2.4 passed,
    against a tolerance of 4e-4 set by an inactive hyperplane 4e5 from the origin.)
    """
    box = np.concatenate([lo, up])
    box = box[np.isfinite(box) & (box != 0)]
    q_box = int(np.frexp(box)[1].max()) if box.size else None
    nonzero = mant != 0
    if not nonzero.any():
        return (q_box, False) if q_box is not None else (0, True)
    equations = nonzero & equal
    if equations.any():
        far = max(0, int(np.floor(np.log2(rtol / (16 * np.finfo(float).eps)))))
        q = max(int(exp[equations].max()), int(offset.max()) - far)
    else:
        q = int(exp[nonzero].max())
    return (q if q_box is None else max(q, q_box - _BOX_RANGE)), False


#: The offset exponent of a row without terms (a zero row, or ``b_i = y_i = 0``).
_NO_OFFSET = -(1 << 40)

#: The box sets the scale of x only where it lies more than 2^50 beyond the layer's hyperplanes
#: (normalised box bounds stay below 2^50, far inside what HiGHS treats as finite).
_BOX_RANGE = 50


class _LayerSystem:
    """The mixed system (1)-(2) with box rows, normalised so that the decision is scale-free.

    Every layer row ``(A_i, b_i, y_i)`` is divided by ``|A_i|`` (unit rows: the kind depends on
    each row only up to a positive factor), and x is measured in units of ``2^Q``
    (``x = 2^Q x_hat``), where ``2^Q`` is the scale of the equations' hyperplanes, or of the
    farthest row where its rounding needs more (:func:`_x_scale`).  Norms and
    right-hand sides are formed from power-of-two exponents (``np.frexp``), so nothing overflows
    or underflows at any scale of A, b, y or the box; tolerances are relative to this scale.
    Points, directions and multipliers are mapped back to the user's problem in :meth:`_result`.
    """

    def __init__(
        self,
        A: F64,
        b: F64,
        y: F64,
        lo: F64,
        up: F64,
        rtol: float,
        row_norms: RowNorms | None = None,
        factor: Callable[[F64, F64], EqualityFactor] = EqualityFactor,
        hint: F64 | None = None,
    ) -> None:
        # ``row_norms`` (``_row_norms(A)``) and ``factor`` (step 1's factorisation of E x = e) let
        # :mod:`reluinv.preimage_batch` share the first and batch the second across outputs.
        # ``hint``: a candidate point of P in the user's units (see :meth:`_take_hint`).
        m, n = A.shape
        self.m, self.n, self.rtol, self.factor = m, n, rtol, factor
        self.active = np.flatnonzero(y > 0)
        M, norms, shift, self.zero_norm = _row_norms(A) if row_norms is None else row_norms
        # 1/|A_i| = inv_i * 2^-shift_i
        inv = 1.0 / np.where(self.zero_norm, 1.0, norms)
        self.inv, self.shift = inv, shift
        rho_mant, rho_exp, offset = _unit_rhs(b, y, inv, shift, self.zero_norm)
        equal = (y > 0) & ~self.zero_norm
        self.Q, self.homogeneous = _x_scale(rho_mant, rho_exp, offset, equal, lo, up, rtol)
        # (y_i - b_i) / |A_i| / 2^Q: at most 1 for equations, about rtol / (16 eps) for any row
        rho = np.ldexp(rho_mant, np.clip(rho_exp - self.Q, -2000, 2000).astype(np.int32))
        lo, up = np.ldexp(lo, -self.Q), np.ldexp(up, -self.Q)
        with np.errstate(over="ignore"):  # a hint beyond the range fails its check below
            self.hint = None if hint is None else np.ldexp(hint, -self.Q)
        self.inside: tuple[F64, F64] | None = None  # the hint as a point of P, and its slacks
        self.product: F64 | None = None  # M @ x_p, when formed
        # Equalities E x = e (active rows), inequalities G x <= h (inactive rows, then box rows),
        # every row of unit norm, x in units of 2^Q.
        act = self.active[~self.zero_norm[self.active]]
        self.M = M
        self.e = rho[act]
        self.eq_rows = act
        inact = np.flatnonzero((y <= 0) & ~self.zero_norm)
        up_idx = np.flatnonzero(np.isfinite(up))
        lo_idx = np.flatnonzero(np.isfinite(lo))
        self.G = _UnitInequalities(M, inv, inact, up_idx, lo_idx)
        self.h = np.concatenate([rho[inact], up[up_idx], -lo[lo_idx]])
        self.labels = np.concatenate([inact, m + up_idx, m + n + lo_idx]).astype(np.intp)
        self.box_bounded = up_idx.size == n and lo_idx.size == n
        self.b, self.y = b, y

    # -- helpers ---------------------------------------------------------------------------

    def _result(
        self,
        kind: Kind,
        point: F64 | None,
        direction: F64 | None,
        margin: float,
        cert: PreimageCertificate,
        tol: float,
    ) -> Preimage:
        """The :class:`Preimage` in the user's units: points times 2^Q, multipliers already
        mapped by :meth:`_multipliers`; the tolerance stays relative to the problem's scale."""
        if kind == "singleton" and self.homogeneous:
            point = np.zeros(self.n)  # every right-hand side is 0: P is a cone and 0 its apex
        point = self._to_user(point)
        if cert.second_point is not None:
            cert = replace(cert, second_point=self._to_user(cert.second_point))
        return Preimage(
            kind=kind,
            point=point,
            direction=direction,
            nullity=self.k,
            n_active=int(self.active.size),
            rank=self.r,
            margin=float(max(margin, 0.0)),
            tolerance=float(tol),
            certificate=cert,
        )

    def _to_user(self, x: F64 | None) -> F64 | None:
        if x is None:
            return None
        with np.errstate(over="ignore"):
            out = np.ldexp(x, self.Q)
        if not np.all(np.isfinite(out)):
            raise ValueError(
                f"the preimage's points lie about 10^{(self.Q + 1) * np.log10(2):.0f} from the "
                f"origin, beyond the float64 range (about 1.8e308): b and y (up to "
                f"{max(np.abs(self.b).max(), self.y.max()):.3g}) are too large for the rows of A "
                f"(norms down to {self._smallest_norm():.3g}); scale the data down"
            )
        return out

    def _smallest_norm(self) -> float:
        live = ~self.zero_norm
        with np.errstate(over="ignore", under="ignore"):
            return float(np.ldexp(1.0 / self.inv[live], self.shift[live].astype(np.int32)).min())

    def _zero_row_conflict(self) -> str | None:
        """Rows with a_i = 0 are constants: they either hold for every x or for none.  The
        test is relative to the row's own entries, so scaling the row changes nothing."""
        for i in np.flatnonzero(self.zero_norm):
            b, y = float(self.b[i]), float(self.y[i])
            if y > 0 and abs(b - y) > self.rtol * max(abs(b), y):
                return f"row {i} has a_i = 0 but y_i = {y} != b_i = {b}"
            if y <= 0 and b > 0:
                return f"row {i} has a_i = 0 and b_i = {b} > 0, so y_i cannot be 0"
        return None

    def _equalities(self) -> F64:
        """E, the active rows at unit norm, as a new array."""
        E: F64 = self.M[self.eq_rows]
        E *= self.inv[self.eq_rows, None]  # in place: a broadcast product into a new array is 4x slower
        return E

    def _factor(self) -> None:
        """One factorisation of A_pos: rank, null-space basis and a particular solution (step 1).
        The default factorisation works in place on the active rows as gathered into this thread's
        work array (:mod:`reluinv._scratch`), their unit scaling passed alongside, and asks for a
        scaled copy when it falls back to a pivoted QR."""
        if self.factor is EqualityFactor:
            gathered = gathered_rows(self.M, self.eq_rows, "layer rows")
            f = EqualityFactor(gathered, self.e, source=self._equalities, row_scale=self.inv[self.eq_rows])
        else:
            f = self.factor(self._equalities(), self.e)
        self.r, self.rank_ratio, self.x_p, self.basis = f.rank, f.rank_ratio, f.x_p, f.basis

    def _farkas_from_ineq(self, lam: NDArray[np.float64], rows: NDArray[np.intp]) -> PreimageCertificate:
        """Complete inequality multipliers ``lam`` with equality multipliers ``nu`` (Farkas)."""
        g = self.G.rows(rows).T @ lam
        nu = np.linalg.lstsq(self._equalities().T, -g, rcond=None)[0] if self.e.size else np.zeros(0)
        labels = self.labels[rows]
        nu_user, lam_user = self._multipliers(nu, self.eq_rows, lam, labels)
        return PreimageCertificate(
            reason="no x satisfies the system (Farkas multipliers)",
            farkas_equalities=self._expand_eq(nu_user),
            farkas_rows=labels,
            farkas_inequalities=lam_user,
        )

    def _expand_eq(self, nu: NDArray[np.float64]) -> NDArray[np.float64]:
        """Multipliers on the non-zero active rows -> a vector over all active rows."""
        out = np.zeros(self.active.size)
        out[np.searchsorted(self.active, self.eq_rows)] = nu
        return out

    def _multipliers(self, *parts: NDArray[Any]) -> list[F64]:
        """Multipliers on unit rows -> on the user's rows (``lam_i / |A_i|``), for pairs
        ``values, labels`` (labels as in :class:`PreimageCertificate`).  All parts share one
        power-of-two factor (a positive multiple of a certificate is a certificate), chosen so
        that the largest is about 1 whatever the rows' norms."""
        mants, exps = [], []
        for values, labels in zip(parts[::2], parts[1::2], strict=True):
            layer = labels < self.m
            rows = labels[layer]
            mant = np.array(values, dtype=np.float64)
            mant[layer] *= self.inv[rows]
            exp = np.zeros(labels.size, np.int64)
            exp[layer] = -self.shift[rows]
            mants.append(mant)
            exps.append(exp)
        every = np.concatenate(mants)
        nonzero = every != 0
        top = int((np.frexp(every[nonzero])[1] + np.concatenate(exps)[nonzero]).max()) if nonzero.any() else 0
        return [np.ldexp(mant, exp - top) for mant, exp in zip(mants, exps, strict=True)]

    # -- the decision ----------------------------------------------------------------------

    def decide(self) -> Preimage:
        self._factor()  # zero rows add nothing to A_pos's null space, so E suffices
        self.k = self.basis.k
        conflict = self._zero_row_conflict()
        if conflict is not None:
            return self._result("empty", None, None, 1.0, PreimageCertificate(reason=conflict), self.rtol)
        tol = self.rtol * max(1.0, float(np.linalg.norm(self.x_p)))
        if self.k > 0 and self._take_hint(tol):
            # The hint solves the equations to the tolerance, so they are consistent.
            return self._decide_with_nullspace(tol)
        # One pass over the layer gives the equations' residual and every inequality's slack.
        self.product = self.M @ self.x_p
        eq_res = self._equation_residual(self.product)
        if eq_res > tol:
            E = self._equalities()
            res = self.e - E @ np.linalg.lstsq(E, self.e, rcond=None)[0]
            cert = PreimageCertificate(
                reason="the equations A_pos x + b_pos = y_pos have no solution",
                farkas_equalities=self._expand_eq(self._multipliers(-res, self.eq_rows)[0]),
                farkas_rows=np.zeros(0, np.intp),
                farkas_inequalities=np.zeros(0),
            )
            return self._result(
                "empty", None, None, min(1.0, eq_res / max(1.0, np.abs(self.e).max())), cert, tol
            )
        if self.k == 0:
            return self._decide_full_rank(tol)
        return self._decide_with_nullspace(tol)

    def _equation_residual(self, product: F64) -> float:
        """The largest residual of the unit equations at the point x with ``product = M @ x``."""
        rows = self.eq_rows
        return float(np.max(np.abs(product[rows] * self.inv[rows] - self.e))) if rows.size else 0.0

    def _take_hint(self, tol: float) -> bool:
        """Whether the hint solves the equations to ``tol`` (one pass over the layer).  If so, and
        it violates no inequality by more than ``tol``, it is a point of P: ``inside`` keeps it and
        its slacks, and the decision seeks no point of its own (the rows tight there then decide
        between a singleton and more, as at any point of P: Theorem 12).  If it solves the
        equations but violates an inequality, it replaces x_p as the point the search starts
        from, with the slacks of this pass: ``x_p + O z`` then solves the equations to ``tol``
        for every z.  Otherwise the hint is ignored and False returned."""
        x = self.hint
        if x is None or not np.all(np.isfinite(x)):
            return False
        with np.errstate(over="ignore", invalid="ignore"):
            product = self.M @ x
            eq_res = self._equation_residual(product)
            slack = self.h - self.G.dot(x, product)
        if not eq_res <= tol or not np.all(np.isfinite(slack)):
            return False
        if not slack.size or slack.min() >= -tol:
            self.inside = (x, slack)
        else:
            self.x_p, self.product = x, product
        return True

    def _decide_full_rank(self, tol: float) -> Preimage:
        slack = self.h - self.G.dot(self.x_p, self.product)
        if slack.size and slack.min() < -tol:
            i = int(np.argmin(slack))
            return self._result(
                "empty",
                None,
                None,
                min(1.0, -slack[i]),
                self._farkas_from_ineq(np.ones(1), np.array([i])),
                tol,
            )
        cert = PreimageCertificate(reason=f"rank(A_pos) = n = {self.n} (Theorem 4 i)")
        return self._result("singleton", self.x_p.copy(), None, self.rank_ratio, cert, tol)

    def _decide_with_nullspace(self, tol: float) -> Preimage:
        if self.G.size == 0:  # no inequality at all: the whole affine subspace x_p + N(A_pos)
            d = self.basis.expand(np.eye(self.k)[0])
            cert = PreimageCertificate(
                reason="no inequality constrains N(A_pos) (Theorem 4 iii)", second_point=self.x_p + d
            )
            return self._result("unbounded", self.x_p.copy(), d, self.rank_ratio, cert, tol)
        rows_src = self._restrict_to_nullspace()
        omni: OmniCertificate | None = None
        if not self.box_bounded:
            self._form_shared_rows()
            # An unbounded verdict with a strict direction also gives an interior point for free.
            omni = omni_lazy(rows_src, rtol=self.rtol, strict_enough=NEAR_FACTOR * tol)
            if not omni.omnidirectional and omni.margin > NEAR_FACTOR * tol:
                return self._unbounded_from_strict_direction(omni, tol)
        # Rows that certified boundedness seed the Chebyshev LP, unless they are (nearly) all rows.
        seeds = (
            omni.rows
            if omni is not None and omni.rows is not None and omni.rows.size <= 4 * self.k + 16
            else None
        )
        found = self._two_points(tol, seeds)
        if isinstance(found, Preimage):
            return found
        x0, second = found
        if self.box_bounded:
            cert = PreimageCertificate(
                reason="every coordinate is boxed (Remark 3), so P is bounded",
                bounded_by_box=True,
                second_point=second,
            )
            return self._result("compact", x0, None, self.rank_ratio, cert, tol)
        assert omni is not None
        if omni.omnidirectional:
            assert omni.rows is not None and omni.multipliers is not None
            labels = self.labels[omni.rows]
            cert = PreimageCertificate(
                reason=f"{omni.rows.size} inequality rows are omnidirectional in N(A_pos) "
                f"(Theorem 4 iii, Theorem 5)",
                rows=labels,
                multipliers=self._multipliers(omni.multipliers, labels)[0],
                second_point=second,
            )
            return self._result("compact", x0, None, min(self.rank_ratio, omni.margin), cert, tol)
        assert omni.direction is not None
        d = self.basis.expand(omni.direction)
        d /= np.linalg.norm(d)
        cert = PreimageCertificate(
            reason="direction d in N(A_pos) with A_zero d <= 0 (Theorem 4 iii)", second_point=x0 + d
        )
        return self._result("unbounded", x0, d, min(self.rank_ratio, omni.margin), cert, tol)

    def _two_points(self, tol: float, seeds: Idx | None) -> Preimage | tuple[F64, F64 | None]:
        """A point of P and a second one, or the result where the point decides it ("empty", or a
        singleton pinned at the point).

        A point from :func:`reluinv._interior.feasible_point` may lie on the boundary of P, where
        the rows tight there decide as at any point of P (Theorem 12); but where P has further
        points and the second point found lies within ``NEAR_FACTOR * tol`` of it (P is thinner
        there than the tolerance can tell apart), the Chebyshev LP's point decides instead.
        """
        feasible = self._feasible_point(tol, seeds)
        if isinstance(feasible, Preimage):
            return feasible
        x0, slack, on_boundary = feasible
        at = self._at_point(x0, slack, tol)
        if on_boundary and not isinstance(at, Preimage):
            if at is None or not np.linalg.norm(at - x0) > NEAR_FACTOR * tol:
                point = self._chebyshev_point(tol, seeds)
                if isinstance(point, Preimage):
                    return point
                x0, slack = point
                at = self._at_point(x0, slack, tol)
        return at if isinstance(at, Preimage) else (x0, at)

    def _at_point(self, x0: F64, slack: F64, tol: float) -> Preimage | F64 | None:
        """At a point x0 of P with inequality slacks ``slack``: the singleton result when the rows
        tight there are omnidirectional in N(A_pos) (Theorem 4 ii, Theorem 12), else a second
        point of P (None in the degenerate case of :meth:`_second_point`)."""
        tight = np.flatnonzero(slack <= tol)
        step_dir = None
        if tight.size:
            pin = omni_lazy(RowSource.from_rows(self.restricted(tight)), rtol=self.rtol)
            if pin.omnidirectional:
                assert pin.rows is not None and pin.multipliers is not None
                labels = self.labels[tight[pin.rows]]
                cert = PreimageCertificate(
                    reason=f"{tight.size} inequalities tight at the point are omnidirectional in "
                    f"N(A_pos) (Theorem 4 ii, Theorem 12)",
                    rows=labels,
                    multipliers=self._multipliers(pin.multipliers, labels)[0],
                )
                return self._result("singleton", x0, None, min(self.rank_ratio, pin.margin), cert, tol)
            assert pin.direction is not None
            step_dir = self.basis.expand(pin.direction)
        if tight.size == 0 and slack.size:
            # Unit rows change by at most |t| along a unit direction: half the least slack keeps
            # every inequality strict, without another product with the layer.
            return x0 + 0.5 * min(1.0, float(slack.min())) * self.basis.expand(np.eye(self.k)[0])
        return self._second_point(x0, slack, step_dir, tol)

    def _restrict_to_nullspace(self) -> RowSource:
        """The basis ``O``, the inequalities restricted to N(A_pos) (formed on demand), every
        row's slack ``c`` at x_p and the slack sought for a point; the restricted rows as a
        :class:`RowSource` for the boundedness test."""
        self.O = self.basis.matrix()
        # O has orthonormal columns: O z is a unit x-space direction for a unit z, so the
        # tolerance keeps its meaning on the restricted rows.
        G, O = self.G, self.O
        self.restricted = _RestrictedRows(G, O)
        self.margin = _CAP * max(1.0, float(np.linalg.norm(self.x_p)))
        return RowSource(m=G.size, n=self.k, rows=self.restricted, apply=lambda z: G.dot(O @ z))

    @cached_property
    def c(self) -> F64:
        """Every inequality's slack at x_p; one pass over the layer unless the decision made it
        (a decision that accepted its hint may never need it)."""
        return self.h - self.G.dot(self.x_p, self.product)

    def _form_shared_rows(self) -> None:
        """The spread rows of the boundedness test and the rows the interior point starts from,
        in one product.  A decision that runs the test forms both sets (when the spread rows
        fail, it forms every row), and one GEMM of 787 rows cost 0.8 ms less than two of 584 and
        203 at nullity 184 (``benchmarks/preimage_speed.py``).  The spread rows come first, so
        the test reads them as one block; the store forms a row asked for twice once.  With an
        accepted hint there is no interior point to seek, and only the spread rows are formed."""
        spread = spread_rows(self.G.size, self.k)
        self.restricted.form(
            spread if self.inside is not None else np.concatenate([spread, first_rows(self.c, self.margin)])
        )

    def _unbounded_from_strict_direction(self, omni: OmniCertificate, tol: float) -> Preimage:
        assert omni.direction is not None
        d = self.basis.expand(omni.direction)
        d /= np.linalg.norm(d)
        gd = self.G.dot(d)  # all <= -margin < 0
        start, slack0 = self.inside if self.inside is not None else (self.x_p, self.c)
        # Walk along d until every inequality has slack of at least 1 (relative to |x| scale).
        target = max(1.0, float(np.linalg.norm(self.x_p))) * 1e-3
        t = float(np.max((target - slack0) / -gd))
        x0 = start + max(t, 0.0) * d
        cert = PreimageCertificate(
            reason="direction d in N(A_pos) with A_zero d < 0 strictly (Theorem 4 iii); "
            "walking along it from a solution of the equations gives an interior point",
            second_point=x0 + d,
        )
        return self._result("unbounded", x0, d, min(self.rank_ratio, omni.margin), cert, tol)

    def _second_point(self, x0: F64, slack: F64, step_dir: F64 | None, tol: float) -> F64 | None:
        """A point of P other than x0: move in N(A_pos) along a direction that keeps tight rows."""
        if step_dir is None:
            step_dir = self.basis.expand(np.eye(self.k)[0])
        gd = self.G.dot(step_dir)
        tight = slack <= tol
        if np.any(gd[tight] > tol):  # pragma: no cover - step_dir came from a tight-row direction
            return None
        blocking = (~tight) & (gd > 0)
        t = 0.5 * float(np.min(slack[blocking] / gd[blocking])) if np.any(blocking) else 1.0
        return x0 + min(t, 1.0) * step_dir

    def _feasible_point(self, tol: float, seed_rows: Idx | None) -> Preimage | tuple[F64, F64, bool]:
        """A point of P, its slacks and whether it may lie on the boundary of P; or an "empty"
        result.

        An accepted hint is that point (:meth:`_take_hint`).  Else Newton's method looks for a
        point with slack in every row (:mod:`reluinv._interior`, no LP); such a point needs no
        further test to show P has more than one point.  When it finds none, the same steps aimed
        at the bounds themselves look for any point of P (``feasible_point``: a pinned singleton
        has no other, and a thin P no point with the slack sought), and when they find none
        either, the Chebyshev-centre LP decides (:meth:`_chebyshev_point`).
        """
        if self.inside is not None:
            return (*self.inside, False)
        found = interior_point(
            rows=self.restricted, slack_at=self._slack_at, c=self.c, margin=self.margin, tol=tol
        )
        if found is not None:
            z, slack = found
            return self.x_p + self.O @ z, slack, False
        found = feasible_point(self.restricted, self._slack_at, self.c, tol)
        if found is not None:
            z, slack = found
            return self.x_p + self.O @ z, slack, True
        point = self._chebyshev_point(tol, seed_rows)
        return point if isinstance(point, Preimage) else (*point, False)

    def _slack_at(self, z: F64, idx: Idx | None = None) -> F64:
        """The slacks ``h - G x`` at ``x = x_p + O z``, from the layer itself: of every inequality,
        or of the rows ``idx`` only (the ``slack_at`` of :mod:`reluinv._interior`)."""
        x = self.x_p + self.O @ z
        return self.h - self.G.dot(x) if idx is None else self.h[idx] - self.G.dot_rows(x, idx)

    def _chebyshev_point(self, tol: float, seed_rows: Idx | None) -> Preimage | tuple[F64, F64]:
        """A point of P with slack in as many rows as possible, or an "empty" result.

        Solves, on a row subset S, the dual of the capped Chebyshev-centre LP

            maximise s  s.t.  Gbar_S z + s |Gbar_S| <= hbar_S,  s <= cap

        (``Gbar = G O``, ``hbar = h - G x_p``), i.e.  minimise hbar_S . lam + cap sigma  subject to
        ``Gbar_S^T lam = 0``, ``|Gbar_S| . lam + sigma = 1``, ``lam, sigma >= 0``, whose basis has
        only k + 1 rows.  Its row duals are (z, s).  Rows violated at ``x_p + O z`` join S and HiGHS
        re-solves from its basis.  A negative optimum leaves ``lam`` as Farkas multipliers.  The cap
        (1e-3 of the data scale) stops the search once the point is clearly interior.
        """
        G, k = self.G, self.k
        h_bar = self.c
        M = G.size
        cap = self.margin
        batch = max(2 * k, 32)
        subset = np.argsort(h_bar)[: min(M, 4 * k + 16)]
        if seed_rows is not None:
            subset = np.union1d(subset, seed_rows)
        lp = ColumnLP(np.r_[np.zeros(k), 1.0])
        lp.add_cols(np.eye(k + 1)[:, k:], np.array([cap]), np.zeros(1), np.array([np.inf]))
        in_lp: list[NDArray[np.intp]] = []
        while True:
            rows = self.restricted(subset)
            weights = np.linalg.norm(rows, axis=1)
            constant = weights <= CONSTANT_ROW
            if np.any(constant & (h_bar[subset] < -tol)):
                i = int(subset[np.flatnonzero(constant & (h_bar[subset] < -tol))[0]])
                return self._result(
                    "empty",
                    None,
                    None,
                    min(1.0, -h_bar[i]),
                    self._farkas_from_ineq(np.ones(1), np.array([i])),
                    tol,
                )
            keep = ~constant
            lp.add_cols(
                np.vstack([rows[keep].T, weights[keep][None]]),
                h_bar[subset][keep],
                np.zeros(int(keep.sum())),
                np.full(int(keep.sum()), np.inf),
            )
            in_lp.append(subset[keep])
            status, v, duals, s_max = lp.solve()
            if status != "optimal":  # pragma: no cover - sigma = 1 is always feasible
                raise RuntimeError(f"HiGHS did not solve the Chebyshev LP: {status}")
            if s_max < -tol:
                idx = np.concatenate(in_lp)
                lam = v[1:]
                pos = lam > 0
                return self._result(
                    "empty", None, None, min(1.0, -s_max), self._farkas_from_ineq(lam[pos], idx[pos]), tol
                )
            x0 = self.x_p + self.basis.expand(duals[:k])
            slack = self.h - G.dot(x0)
            fresh = np.setdiff1d(np.flatnonzero(slack < -tol), np.concatenate(in_lp))
            if fresh.size == 0:
                return x0, slack
            if fresh.size > batch:
                fresh = fresh[np.argsort(slack[fresh])[:batch]]
            subset = fresh
