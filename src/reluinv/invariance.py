"""Searches inside preimages across layers (Appendix A7, Section 4 "Scope") and exact multi-layer
preimages.

For a ``torch.nn.Sequential`` ``F`` of affine modules and ReLUs (nested Sequentials are
flattened; module indices count the flattened list) and an input ``x``, write ``F_l(x)`` for
the output of module ``l`` ("the features at layer l").  This module answers three questions about
the set

    S_l(x) = { x' : lower <= x' <= upper,  F_l(x') = F_l(x) }

1. :func:`invariance_search` -- find ``x'`` in ``S_l(x)`` as close as possible to a ``target``
   (L1 distance) or maximising ``<target, x'>`` as in Appendix A7.  Three modes:

   * ``"layer"``: the A7 linear programme, defined only for the first affine + ReLU block (the
     features at any deeper layer are not determined by one layer's preimage: a preimage of layer
     l's features under layer l alone is a set of layer ``l-1`` features, most of which no input
     produces -- Section 4 "Scope", difficulty 1).
   * ``"region"``: ``x'`` keeps ``x``'s activation pattern in every ReLU up to layer ``l``.  On that
     linear region the network is affine, so feature equality is linear and one LP over the input
     answers it at any depth.  The result is a lower bound (for "max_inner") on what ``"exact"``
     can reach.
   * ``"exact"``: any activation pattern.  A mixed-integer programme (HiGHS branch and bound) with
     one binary per ReLU whose sign is not fixed on ``S_l(x)``; big-M bounds come from interval
     bound propagation through the box, on small networks tightened by LP over the relaxation
     that already contains the feature equalities.  A walk through adjacent linear regions
     supplies a good start solution.

2. :func:`network_preimage` -- the exact kind of ``S_l(x)`` ("singleton", "compact" or
   "unbounded"; "unknown" at the time limit) with certificates, as a :class:`reluinv.Preimage`.
   :func:`preimage_extent` -- how far ``x'`` can move inside ``S_l(x)`` (largest L-infinity and L1
   distance from ``x``), exactly by MILP or as a region-mode lower bound.

3. :func:`fig7x_examples` -- the computation behind the extended Figure 7 (Appendix A7 at several
   depths).

Encoding (shared by every mode).  Variables are the input ``x'`` and the post-activations
``h_1 .. h_{L-1}`` of the ReLU blocks below the feature layer (``h_L`` too when the features are an
affine map of the last ReLU output, e.g. the logits).  With ``z_l = W_l h_{l-1} + c_l`` (the
affine maps between two ReLUs composed into one dense float64 matrix), a unit is

* active:   ``h = z``, ``z >= 0``;
* inactive: ``h = 0``, ``z <= 0``;
* free:     ``h >= 0``, ``h >= z``, ``h <= z - lo (1 - a)``, ``h <= up a`` with ``a`` binary
  (continuous in [0, 1] for the LP relaxation, which is the convex hull of the ReLU graph over
  ``[lo, up]``).

When the features are a ReLU output ``y``, the last block needs no variables: ``z_i = y_i`` where
``y_i > 0`` and ``z_i <= 0`` elsewhere (the mixed system (1)-(2) of the paper, applied to
``h_{L-1}`` instead of ``x``).  Pieces of ``S_l(x)`` with a fixed pattern are closed polyhedra whose
union is exactly ``S_l(x)`` (ReLU is continuous, so boundary points belong to both neighbours).

The network is read through :func:`reluinv.network.as_chain` (Linear, Conv2d, Flatten,
AvgPool2d, BatchNorm and dropout in eval mode, ...; ReLU is the only activation allowed up to the
feature layer), consecutive affine modules composed into one dense float64 map.

Numerics: every decision is made in float64; HiGHS runs with primal/dual feasibility tolerance
1e-9 on LPs and 1e-7 on MILPs, relative MIP gap 1e-6.  Rows whose largest coefficient exceeds 1
are scaled to make it 1 (big-M rows from interval bounds reach 1e7 on deep trained networks).
Every MILP point is polished by the LP of its own activation pattern (tolerance 1e-9) before it
is returned.  Results report ``feature_max_abs_diff``, the largest absolute
difference between ``F_l(x')`` and ``F_l(x)`` measured by a float64 forward pass through the torch
modules themselves, so every point returned is checked independently of the solver (optimality
proofs, ``proven``, still rest on HiGHS).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse
from numpy.typing import NDArray

from ._lp import highspy
from ._validate import as_bounds, as_finite_array
from .network import ActivationStep, as_chain, flatten_modules
from .preimage import CertificateError, Preimage, PreimageCertificate, preimage

__all__ = [
    "InvarianceResult",
    "NetworkPreimageCertificate",
    "PreimageExtent",
    "PreimagePiece",
    "fig7x_examples",
    "invariance_search",
    "network_preimage",
    "preimage_extent",
    "verify_network_preimage",
]

Mode = Literal["layer", "region", "exact"]
Objective = Literal["max_inner", "l1"]

_INF = highspy.kHighsInf
#: Unit states in an encoding.
_ACTIVE, _INACTIVE, _FREE = 1, 0, -1
#: Solver tolerances (absolute, on the model as built; rows are not rescaled).
_FEAS_TOL = 1e-9
_MIP_FEAS_TOL = 1e-7
_MIP_REL_GAP = 1e-6
#: A "max z_i" below this multiple of the row's scale counts as "z_i = 0 on the whole piece".
_SIGN_RTOL = 1e-9


# --- the network as dense affine maps and ReLUs ---------------------------------------------------


@dataclass(frozen=True)
class _ReluBlock:
    """``h = ReLU(weight @ h_prev + bias)``; ``module`` is the index of the ReLU module."""

    weight: NDArray[np.float64]
    bias: NDArray[np.float64]
    module: int


@dataclass(frozen=True)
class _Network:
    """Modules ``0 .. layer`` of a Sequential as ReLU blocks and an optional affine tail.

    ``tail = (T, t)`` means the features are ``T h_L + t`` (h_L the last ReLU output, or the input
    when there is no ReLU); ``tail is None`` means the features are the last ReLU output.
    """

    leaves: tuple[Any, ...]
    input_shape: tuple[int, ...]
    n_inputs: int
    blocks: tuple[_ReluBlock, ...]
    tail: tuple[NDArray[np.float64], NDArray[np.float64]] | None
    layer: int

    @property
    def fixed_last(self) -> bool:
        """True when the last block's pattern is fixed by the features (features = ReLU output)."""
        return self.tail is None

    @property
    def n_var_blocks(self) -> int:
        """Number of blocks whose post-activations are variables of the encoding."""
        return len(self.blocks) - (1 if self.fixed_last else 0)

    def preactivations(self, x: NDArray[np.float64]) -> list[NDArray[np.float64]]:
        """``z_l`` of every block at the flat input ``x`` (float64)."""
        zs, h = [], x
        for blk in self.blocks:
            z = blk.weight @ h + blk.bias
            zs.append(z)
            h = np.maximum(z, 0.0)
        return zs

    def features(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        h = x
        for blk in self.blocks:
            h = np.maximum(blk.weight @ h + blk.bias, 0.0)
        if self.tail is not None:
            h = self.tail[0] @ h + self.tail[1]
        return h


def _check_layer(layer: Any, n_modules: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"layer must be an integer module index, got {type(layer).__name__}")
    if not 0 <= int(layer) < n_modules:
        raise ValueError(f"layer {layer} is out of range: the (flattened) model has modules "
                         f"0..{n_modules - 1}")
    return int(layer)


def _build_network(model: Any, input_shape: tuple[int, ...], layer: int) -> _Network:
    """Modules ``0 .. layer`` as dense float64 ReLU blocks, read through :mod:`reluinv.network`.

    :func:`reluinv.network.as_chain` validates the whole model and gives every affine step's
    dense ``(W, c)``; consecutive affine steps (reshapes, convolutions, batch norms, ...) are
    composed into one matrix, so every block is one affine map followed by one ReLU.  Other
    activations are refused: with them the pieces of a preimage are not polyhedra.
    """
    leaves = flatten_modules(model)
    layer = _check_layer(layer, len(leaves))
    chain = as_chain(model, tuple(int(s) for s in input_shape))
    n_inputs = int(np.prod(input_shape)) if len(input_shape) else 1
    width = n_inputs
    weight: NDArray[np.float64] | None = None  # pending affine map since the last ReLU (None = id)
    bias: NDArray[np.float64] | None = None
    blocks: list[_ReluBlock] = []
    for step in chain[: layer + 1]:
        if isinstance(step, ActivationStep):
            if step.kind != "relu":
                raise ValueError(
                    f"module {step.index} ({type(step.module).__name__}) is not supported by the "
                    f"invariance searches: they need ReLU activations (a {step.kind} network has "
                    f"no polyhedral preimage pieces)")
            if weight is None:
                weight, bias = np.eye(width), np.zeros(width)
            assert bias is not None
            blocks.append(_ReluBlock(weight, bias, step.index))
            weight = bias = None
        elif not step.is_identity:
            A, b = step.dense()
            weight, bias = (A, b) if weight is None else (A @ weight, A @ bias + b)
            width = A.shape[0]
    tail = None if weight is None else (weight, bias)
    if not blocks and tail is None:  # features are the (reshaped) input itself
        tail = (np.eye(n_inputs), np.zeros(n_inputs))
    return _Network(tuple(leaves), tuple(int(s) for s in input_shape), n_inputs, tuple(blocks),
                    tail, layer)


class _TorchFeatures:
    """The float64 forward pass through the torch modules themselves (the reference features)."""

    def __init__(self, leaves: Sequence[Any], layer: int, input_shape: tuple[int, ...]):
        self._modules = [copy.deepcopy(m).double().eval() for m in leaves[: layer + 1]]
        self._shape = input_shape

    def __call__(self, x_flat: NDArray[np.float64]) -> NDArray[np.float64]:
        import torch

        with torch.no_grad():
            t = torch.as_tensor(np.asarray(x_flat, dtype=np.float64).reshape((1, *self._shape)))
            for module in self._modules:
                t = module(t)
        return t.reshape(-1).numpy().copy()


# --- one validated problem ------------------------------------------------------------------------


@dataclass
class _Problem:
    """Everything about ``(model, x, layer, box)`` that every search needs, validated once."""

    net: _Network
    x: NDArray[np.float64]  # flat
    x_shape: tuple[int, ...]
    lo: NDArray[np.float64]
    up: NDArray[np.float64]
    features: NDArray[np.float64]  # from the dense maps (the equality targets)
    reference: NDArray[np.float64]  # from the torch float64 forward pass
    zs: list[NDArray[np.float64]]  # pre-activations at x
    torch_features: _TorchFeatures

    @property
    def n(self) -> int:
        return self.net.n_inputs

    @property
    def box_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.lo)) and np.all(np.isfinite(self.up)))

    def region_states(self) -> list[NDArray[np.int8]]:
        """x's activation pattern (z > 0 active, z <= 0 inactive) for the variable blocks."""
        return [np.where(self.zs[l] > 0, _ACTIVE, _INACTIVE).astype(np.int8)
                for l in range(self.net.n_var_blocks)]

    def feature_diff(self, x_prime: NDArray[np.float64]) -> float:
        return float(np.max(np.abs(self.torch_features(x_prime) - self.reference), initial=0.0))


def _as_input_array(x: Any, name: str) -> NDArray[np.float64]:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return as_finite_array(x, name)


def _problem(model: Any, x: Any, layer: Any, lower: Any, upper: Any) -> _Problem:
    x_arr = _as_input_array(x, "x")
    if x_arr.ndim == 0:
        raise ValueError("x must be an array (one input without batch dimension), got a scalar")
    net = _build_network(model, tuple(x_arr.shape), layer)
    flat = x_arr.reshape(-1).copy()
    lo, up = as_bounds(lower, upper, flat.size)
    outside = np.flatnonzero((flat < lo) | (flat > up))
    if outside.size:
        j = int(outside[0])
        raise ValueError(f"x lies outside the box at input coordinate {j}: "
                         f"lower={lo[j]}, x={flat[j]}, upper={up[j]} ({outside.size} coordinates "
                         f"outside); the preimage search needs x inside [lower, upper]")
    torch_features = _TorchFeatures(net.leaves, net.layer, tuple(x_arr.shape))
    try:
        reference = torch_features(flat)
    except RuntimeError as exc:
        raise ValueError(f"the model cannot run on x of shape {x_arr.shape} (one input, no batch "
                         f"dimension): {exc}") from exc
    return _Problem(net=net, x=flat, x_shape=tuple(x_arr.shape), lo=lo, up=up,
                    features=net.features(flat), reference=reference, zs=net.preactivations(flat),
                    torch_features=torch_features)


def _check_time_limit(time_limit: Any) -> float:
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float, np.floating, np.integer)):
        raise ValueError(f"time_limit must be a number of seconds, got {type(time_limit).__name__}")
    if not (math.isfinite(float(time_limit)) and float(time_limit) > 0):
        raise ValueError(f"time_limit must be a positive finite number of seconds, got {time_limit}")
    return float(time_limit)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return str(value)


# --- the MILP / LP encoding -----------------------------------------------------------------------


class _Encoding:
    """Columns and rows of ``{x' in box : F_l(x') = features}`` for given unit states (module doc).

    ``states[l]`` (one int8 array per variable block) holds _ACTIVE, _INACTIVE or _FREE;
    ``bounds[l] = (lo, up)`` are valid bounds of ``z_l`` over the set (needed for free units).
    With ``integral=False`` free units get the LP relaxation.  ``box`` replaces the problem's box
    on ``x'`` (a sub-box of it, e.g. one orthant around x).
    """

    def __init__(self, problem: _Problem, states: Sequence[NDArray[np.int8]],
                 bounds: Sequence[tuple[NDArray[np.float64], NDArray[np.float64]]] | None, *,
                 integral: bool, box: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None):
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
        self._fillers: list[Callable[[NDArray[np.float64], NDArray[np.float64]], None]] = []
        net = problem.net
        self.x_cols = self.add_cols(*(box if box is not None else (problem.lo, problem.up)))
        self.input_cols: list[NDArray[np.int64]] = []
        self.h_cols: list[NDArray[np.int64]] = []
        self.binary_cols: list[NDArray[np.int64]] = []
        self.states = [np.asarray(s, dtype=np.int8) for s in states]
        prev = self.x_cols
        for l, blk in enumerate(net.blocks):
            self.input_cols.append(prev)
            if l == len(net.blocks) - 1 and net.fixed_last:
                y = problem.features
                pos = y > 0
                self.add_rows(blk.weight[pos], prev, y[pos] - blk.bias[pos], y[pos] - blk.bias[pos])
                self.add_rows(blk.weight[~pos], prev, np.full(int((~pos).sum()), -np.inf),
                              -blk.bias[~pos])
                break
            zlo, zup = (bounds[l] if bounds is not None
                        else (np.full(blk.bias.size, -np.inf), np.full(blk.bias.size, np.inf)))
            prev = self._add_block(blk, prev, self.states[l], zlo, zup)
        if net.tail is not None:
            T, t = net.tail
            f = problem.features
            self.add_rows(T, prev, f - t, f - t)
        self._fillers.insert(0, self._fill_network)

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

    def add_rows(self, dense: NDArray[np.float64], cols: NDArray[np.int64], lo: Any, hi: Any,
                 extras: Sequence[tuple[NDArray[np.int64], NDArray[np.float64]]] = ()) -> None:
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

    def add_filler(self, fill: Callable[[NDArray[np.float64], NDArray[np.float64]], None]) -> None:
        """Register how extra columns are set from an input point (for MILP start solutions)."""
        self._fillers.append(fill)

    def _add_block(self, blk: _ReluBlock, prev: NDArray[np.int64], st: NDArray[np.int8],
                   zlo: NDArray[np.float64], zup: NDArray[np.float64]) -> NDArray[np.int64]:
        m = blk.bias.size
        W, c = blk.weight, blk.bias
        h_ub = np.where(st == _INACTIVE, 0.0, np.where(np.isfinite(zup), np.maximum(zup, 0.0), np.inf))
        h = self.add_cols(np.zeros(m), h_ub)
        act, inact, free = st == _ACTIVE, st == _INACTIVE, st == _FREE
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
            raise ValueError("mode='exact' needs finite bounds on every unit; give a finite box "
                             "lower/upper on every input")
        binary = np.full(m, -1, dtype=np.int64)
        idx = np.flatnonzero(both)
        if idx.size:
            a = self.add_cols(np.zeros(idx.size), np.ones(idx.size), integer=self.integral)
            binary[idx] = a
            # h <= z - lo (1 - a)   <=>   h - W h_prev - lo a <= c - lo
            self.add_rows(-W[idx], prev, np.full(idx.size, -np.inf), c[idx] - zlo[idx],
                          [(h[idx], np.ones(idx.size)), (a, -zlo[idx])])
            # h <= up a
            self.add_rows(np.zeros((idx.size, 0)), np.zeros(0, np.int64), np.full(idx.size, -np.inf),
                          np.zeros(idx.size), [(h[idx], np.ones(idx.size)), (a, -zup[idx])])
        idx = np.flatnonzero(free & np.isfinite(zlo) & ~np.isfinite(zup))
        self.add_rows(-W[idx], prev, np.full(idx.size, -np.inf), c[idx] - zlo[idx],
                      [(h[idx], np.ones(idx.size))])
        self.h_cols.append(h)
        self.binary_cols.append(binary)
        return h

    def _fill_network(self, x_prime: NDArray[np.float64], vec: NDArray[np.float64]) -> None:
        vec[self.x_cols] = x_prime
        zs = self.problem.net.preactivations(x_prime)
        for l, h in enumerate(self.h_cols):
            st, z = self.states[l], zs[l]
            vec[h] = np.where(st == _ACTIVE, z, np.where(st == _INACTIVE, 0.0, np.maximum(z, 0.0)))
            b = self.binary_cols[l]
            has = b >= 0
            on = (z > 0) if self._start_pattern is None else self._start_pattern[l]
            vec[b[has]] = on[has].astype(np.float64)

    _start_pattern: Sequence[NDArray[np.bool_]] | None = None

    def start_vector(self, x_prime: NDArray[np.float64],
                     pattern: Sequence[NDArray[np.bool_]] | None = None) -> NDArray[np.float64]:
        """All columns set from an input point by a forward pass (a MILP start solution).

        ``pattern`` (one bool array per variable block) sets the binaries; by default ``z > 0``.
        An LP optimum usually lies on some ``z = 0``, where only the pattern it was found in is
        sure to match the rest of the start.
        """
        vec = np.zeros(self.n_cols)
        self._start_pattern = pattern
        try:
            for fill in self._fillers:
                fill(x_prime, vec)
        finally:
            self._start_pattern = None
        return vec

    @property
    def n_binaries(self) -> int:
        return int(sum(np.count_nonzero(i) for i in self._int)) if self.integral else 0

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
            has = (st == _FREE) & (b >= 0)
            new[has] = np.where(values[b[has]] > 0.5, _ACTIVE, _INACTIVE)
            out.append(new)
        return out

    # -- solving ------------------------------------------------------------------------------

    def solver(self, *, presolve: bool = True) -> _Solver:
        return _Solver(self, presolve=presolve)

    def arrays(self):
        lb, ub = np.concatenate(self._lb), np.concatenate(self._ub)
        integer = np.concatenate(self._int) if self.integral else np.zeros(self.n_cols, bool)
        if self._r:
            r, c, v = np.concatenate(self._r), np.concatenate(self._c), np.concatenate(self._v)
        else:
            r = c = np.zeros(0, np.int64)
            v = np.zeros(0)
        rlo = np.concatenate(self._rlo) if self._rlo else np.zeros(0)
        rhi = np.concatenate(self._rhi) if self._rhi else np.zeros(0)
        # Rows with a coefficient above 1 are scaled so that it is 1: feasibility tolerances are
        # absolute, and big-M rows (1e7 on deep networks) would otherwise make rounding in an exact
        # start solution look like a violation.
        row_max = np.zeros(self.n_rows)
        np.maximum.at(row_max, r, np.abs(v))
        scale = 1.0 / np.maximum(row_max, 1.0)
        A = scipy.sparse.csc_matrix((v * scale[r], (r, c)), shape=(self.n_rows, self.n_cols))
        A.sum_duplicates()
        return lb, ub, integer, A, rlo * scale, rhi * scale


@dataclass(frozen=True)
class _Outcome:
    status: str  # "optimal", "infeasible", "unbounded", "time_limit", or HiGHS' words
    values: NDArray[np.float64] | None  # None when no feasible point is known
    objective: float
    bound: float  # proven bound on the optimum (MILP dual bound; the optimum for a solved LP)
    seconds: float


class _Solver:
    """One HiGHS model for an :class:`_Encoding`; the objective can change between runs."""

    def __init__(self, enc: _Encoding, *, presolve: bool = True):
        lb, ub, integer, A, rlo, rhi = enc.arrays()
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("random_seed", 0)
        self.is_mip = bool(integer.any())
        # MILPs get a looser tolerance: HiGHS judges a start solution on its own (rescaled) rows,
        # where deep big-M rows turn exact rounding into violations of ~1e-8.  MILP points are
        # polished by an LP of their own pattern at _FEAS_TOL, and checked by forward passes.
        tol = _MIP_FEAS_TOL if self.is_mip else _FEAS_TOL
        h.setOptionValue("primal_feasibility_tolerance", tol)
        h.setOptionValue("dual_feasibility_tolerance", tol)
        h.setOptionValue("mip_feasibility_tolerance", tol)
        h.setOptionValue("mip_rel_gap", _MIP_REL_GAP)
        self._presolve = presolve
        if not presolve:  # keep the basis between objective changes (warm start)
            h.setOptionValue("presolve", "off")
        lp = highspy.HighsLp()
        lp.num_col_ = enc.n_cols
        lp.num_row_ = enc.n_rows
        lp.col_cost_ = np.zeros(enc.n_cols)
        lp.col_lower_ = np.where(np.isfinite(lb), lb, -_INF)
        lp.col_upper_ = np.where(np.isfinite(ub), ub, _INF)
        lp.row_lower_ = np.where(np.isfinite(rlo), rlo, -_INF)
        lp.row_upper_ = np.where(np.isfinite(rhi), rhi, _INF)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data.astype(np.float64)
        if self.is_mip:
            lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                               for i in integer]
        h.passModel(lp)
        self._h = h
        self._lp = lp
        self.n_cols = enc.n_cols

    def run(self, cost: NDArray[np.float64], *, maximize: bool, time_limit: float,
            offset: float = 0.0, start: NDArray[np.float64] | None = None) -> _Outcome:
        t0 = time.perf_counter()
        out = self._run(cost, maximize, time_limit, offset, start)
        if out.values is not None and self.is_mip:
            # With a start solution and presolve, HiGHS 1.16 can report the optimum's value while
            # returning the start's columns.  Never trust a value the columns do not give.
            achieved = float(np.asarray(cost) @ out.values) + offset
            if abs(achieved - out.objective) > 1e-7 * max(1.0, abs(out.objective)):
                self._h.passModel(self._lp)  # forget the start and any stale solution
                self._h.setOptionValue("presolve", "off")
                left = time_limit - (time.perf_counter() - t0)
                out = self._run(cost, maximize, max(left, 1e-3), offset, None)
                if self._presolve:
                    self._h.setOptionValue("presolve", "choose")
                if out.values is not None:
                    achieved = float(np.asarray(cost) @ out.values) + offset
                    if abs(achieved - out.objective) > 1e-7 * max(1.0, abs(out.objective)):
                        raise RuntimeError("HiGHS returned columns that do not attain its "
                                           f"objective ({achieved} vs {out.objective})")
        return _Outcome(out.status, out.values, out.objective, out.bound, time.perf_counter() - t0)

    def _run(self, cost, maximize, time_limit, offset, start) -> _Outcome:
        h = self._h
        h.changeColsCost(self.n_cols, np.arange(self.n_cols, dtype=np.int32),
                         np.asarray(cost, dtype=np.float64))
        h.changeObjectiveSense(highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize)
        h.setOptionValue("time_limit", float(max(time_limit, 1e-3)))
        if start is not None and self.is_mip:
            sol = highspy.HighsSolution()
            sol.col_value = list(np.asarray(start, dtype=np.float64))
            h.setSolution(sol)
        t0 = time.perf_counter()
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kUnboundedOrInfeasible and self._presolve:
            h.setOptionValue("presolve", "off")  # presolve cannot tell these apart; the simplex can
            h.run()
            h.setOptionValue("presolve", "choose")
            status = h.getModelStatus()
        seconds = time.perf_counter() - t0
        MS = highspy.HighsModelStatus
        name = {MS.kOptimal: "optimal", MS.kInfeasible: "infeasible", MS.kUnbounded: "unbounded",
                MS.kTimeLimit: "time_limit"}.get(status, h.modelStatusToString(status))
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
        return _Outcome(name, values, objective, bound, seconds)


# --- bounds ---------------------------------------------------------------------------------------


def _interval_bounds(net: _Network, lo: NDArray[np.float64], up: NDArray[np.float64],
                     start: int = 0, given: list | None = None) -> list[tuple[NDArray, NDArray]]:
    """Interval bound propagation of ``z_l`` from the box (blocks ``start ..``), intersected with
    ``given`` bounds where supplied."""
    out = list(given) if given is not None else []
    if start == 0:
        hl, hu = lo, up
    else:
        zl, zu = out[start - 1]
        hl, hu = np.maximum(zl, 0.0), np.maximum(zu, 0.0)
    for l in range(start, len(net.blocks)):
        W, c = net.blocks[l].weight, net.blocks[l].bias
        if np.all(np.isfinite(hl)) and np.all(np.isfinite(hu)):
            centre, radius = (hl + hu) / 2, (hu - hl) / 2
            mid, spread = W @ centre + c, np.abs(W) @ radius
            zl, zu = mid - spread, mid + spread
        else:
            Wp, Wn = np.maximum(W, 0.0), np.minimum(W, 0.0)
            with np.errstate(invalid="ignore"):
                zl = (np.where(Wp > 0, Wp * hl, 0.0).sum(1) + np.where(Wn < 0, Wn * hu, 0.0).sum(1) + c)
                zu = (np.where(Wp > 0, Wp * hu, 0.0).sum(1) + np.where(Wn < 0, Wn * hl, 0.0).sum(1) + c)
        if l < len(out):
            zl, zu = np.maximum(zl, out[l][0]), np.minimum(zu, out[l][1])
            out[l] = (zl, zu)
        else:
            out.append((zl, zu))
        hl, hu = np.maximum(zl, 0.0), np.maximum(zu, 0.0)
    return out


def _states_from_bounds(problem: _Problem, bounds) -> list[NDArray[np.int8]]:
    """Units stable on the set are fixed, the others free."""
    states = []
    for l in range(problem.net.n_var_blocks):
        zl, zu = bounds[l]
        st = np.full(zl.size, _FREE, dtype=np.int8)
        st[zl >= 0] = _ACTIVE
        st[zu <= 0] = _INACTIVE
        states.append(st)
    return states


def _tighten_bounds(problem: _Problem, bounds, deadline: float) -> tuple[list, int]:
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
        states = _states_from_bounds(problem, bounds)
        unstable = np.flatnonzero(states[l] == _FREE)
        if unstable.size == 0 or time.perf_counter() >= deadline:
            continue
        enc = _Encoding(problem, states, bounds, integral=False)
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
                    slack = 1e-7 * (1.0 + abs(out.objective))  # stay valid despite LP tolerances
                    if maximize:
                        zu[i] = min(zu[i], out.objective + slack)
                    else:
                        zl[i] = max(zl[i], out.objective - slack)
        bounds[l] = (zl, zu)
        bounds = _interval_bounds(net, problem.lo, problem.up, start=l + 1, given=bounds)
    return bounds, n_lp


#: "auto" tightening uses LP when (2 x unstable units) x (nonzeros of the weights) is below this:
#: about a second of LPs.  On the 784-input MLP the LPs cost ~0.1 s each and tighten little, and
#: the MILP solver's own presolve does better with that time.
_AUTO_LP_WORK = 2e6


def _preimage_bounds(problem: _Problem, tighten: str, deadline: float) -> tuple[list, int]:
    bounds = _interval_bounds(problem.net, problem.lo, problem.up)
    if tighten == "auto":
        net = problem.net
        unstable = sum(int(((lo < 0) & (up > 0)).sum()) for lo, up in bounds[: net.n_var_blocks])
        nnz = sum(int(np.count_nonzero(b.weight)) for b in net.blocks)
        tighten = "lp" if 2 * unstable * nnz <= _AUTO_LP_WORK else "ibp"
    if tighten == "lp":
        return _tighten_bounds(problem, bounds, deadline)
    return bounds, 0


# --- results --------------------------------------------------------------------------------------


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
        layer: the module index whose output was kept.
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
    layer: int
    n_binaries: int = 0
    message: str = ""

    def to_dict(self, *, include_x: bool = True) -> dict[str, Any]:
        """JSON-serialisable summary (``x`` as nested lists when ``include_x``)."""
        out = {k: _json_float(getattr(self, k)) for k in (
            "objective", "bound", "feature_max_abs_diff", "input_l2_distance", "solve_time")}
        out.update(objective_kind=self.objective_kind, mode=self.mode, proven=bool(self.proven),
                   status=self.status, layer=self.layer, n_binaries=self.n_binaries,
                   message=self.message)
        if include_x:
            out["x"] = None if self.x is None else self.x.tolist()
        return out


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else (None if math.isnan(value) else value)


def _objective_value(kind: str, target: NDArray[np.float64], x_prime: NDArray[np.float64]) -> float:
    if kind == "max_inner":
        return float(target @ x_prime)
    return float(np.abs(x_prime - target).sum())


def _better(kind: str, a: float, b: float, tol: float) -> bool:
    """True when objective ``a`` is strictly better than ``b`` by more than ``tol``."""
    return a > b + tol if kind == "max_inner" else a < b - tol


def _add_objective(enc: _Encoding, kind: str, target: NDArray[np.float64]) -> tuple[NDArray, bool]:
    """Cost vector (and sense) of the objective; "l1" adds ``t >= |x' - target|`` columns."""
    n = target.size
    if kind == "max_inner":
        cost = np.zeros(enc.n_cols)
        cost[enc.x_cols] = target
        return cost, True
    t = enc.add_cols(np.zeros(n), np.full(n, np.inf))
    eye = np.eye(n)
    # t - x' >= -target  and  t + x' >= target
    enc.add_rows(-eye, enc.x_cols, -target, np.full(n, np.inf), [(t, np.ones(n))])
    enc.add_rows(eye, enc.x_cols, target, np.full(n, np.inf), [(t, np.ones(n))])
    enc.add_filler(lambda xp, vec: vec.__setitem__(t, np.abs(xp - target)))
    cost = np.zeros(enc.n_cols)
    cost[t] = 1.0
    return cost, False


# --- invariance search ----------------------------------------------------------------------------


def invariance_search(
    model: Any,
    x: Any,
    target: Any,
    *,
    layer: int,
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

    Modes (module docstring for the encoding):

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
      ``x`` is None when the MILP found nothing).

    Args:
        model: ``torch.nn.Sequential`` (nested allowed, eval mode) of modules that
            :func:`reluinv.network.as_chain` supports, with ReLU as the only activation up to
            ``layer``.
        x: one input, without batch dimension (e.g. shape (1, 28, 28) or (784,)).
        target: same number of entries as ``x``.
        layer: module index (into the flattened Sequential) whose output is kept equal.
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
        ValueError: a model :func:`reluinv.network.as_chain` refuses, or a non-ReLU activation up
            to ``layer``; layer out of range; NaN/inf in ``x`` or ``target``; ``target`` of the
            wrong size; box that excludes ``x``; unknown mode/objective; "layer" mode at a
            deeper layer; "exact" without a finite box.

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
    t0 = time.perf_counter()
    time_limit = _check_time_limit(time_limit)
    mode = _check_choice("mode", mode, ("layer", "region", "exact"))
    objective = _check_choice("objective", objective, ("max_inner", "l1"))
    tighten = _check_choice("tighten", tighten, ("auto", "lp", "ibp"))
    problem = _problem(model, x, layer, lower, upper)
    target_arr = _as_input_array(target, "target").reshape(-1) if np.ndim(target) else None
    if target_arr is None or target_arr.size != problem.n:
        shape = None if target_arr is None else np.shape(target)
        raise ValueError(f"target must have {problem.n} entries like x (shape {problem.x_shape}), "
                         f"got shape {shape if shape is not None else '()'}")
    deadline = t0 + time_limit
    if mode == "layer":
        _check_first_block(problem)
    if mode == "exact" and not problem.box_finite:
        raise ValueError("mode='exact' needs a finite box: give finite lower and upper for every "
                         "input (big-M bounds are propagated from it)")

    region = _region_search(problem, problem.region_states(), objective, target_arr, deadline)
    if mode != "exact":
        return _finish(problem, region.values, objective, target_arr, mode=mode,
                       proven=region.status == "optimal", status=region.status, bound=region.bound,
                       t0=t0, n_binaries=0, message=_region_message(region))

    region_x = None if region.values is None else np.clip(region.values[: problem.n], problem.lo,
                                                           problem.up)
    notes: list[str] = []

    def value(point: NDArray[np.float64]) -> float:
        return _objective_value(objective, target_arr, point)

    # Primal heuristic: walk from the region optimum through adjacent linear regions.
    heuristic_x, heuristic_states = region_x, problem.region_states()
    if warm_start and region_x is not None:
        heuristic_states, heuristic_x, steps = _pattern_walk(
            problem, heuristic_states, region_x, objective, target_arr, t0 + 0.25 * time_limit)
        if steps:
            notes.append(f"adjacent-region walk: {steps} improving steps from the region optimum")
    bounds, _ = _preimage_bounds(problem, tighten, time.perf_counter() + 0.2 * time_limit)
    states = _states_from_bounds(problem, bounds)
    enc = _Encoding(problem, states, bounds, integral=True)
    cost, maximize = _add_objective(enc, objective, target_arr)
    start = None
    if warm_start and heuristic_x is not None:
        start = enc.start_vector(heuristic_x, [st == _ACTIVE for st in heuristic_states])
    out = enc.solver().run(cost, maximize=maximize, time_limit=deadline - time.perf_counter(),
                           start=start)
    best = None if out.values is None else np.clip(out.values[: problem.n], problem.lo, problem.up)
    if out.values is not None and (start is None or np.any(out.values != start)):
        # polish: the LP of the incumbent's own pattern, free of big-M rounding.  That piece is
        # often lower-dimensional (the incumbent sits on some z = 0), so the LP gets little time.
        polish_limit = max(1.0, min(0.1 * time_limit, deadline - time.perf_counter()))
        polished = _region_search(problem, enc.fixed_binaries(out.values), objective, target_arr,
                                  time.perf_counter() + polish_limit)
        if polished.values is not None and polished.status == "optimal":
            # The MILP point meets its rows only to the tolerance, which can flatter its value a
            # little; the polished point is exact for its pattern, so it wins unless clearly worse.
            cand = np.clip(polished.values[: problem.n], problem.lo, problem.up)
            tol = 1e-6 * max(1.0, abs(value(best)))
            if not _better(objective, value(best), value(cand), tol):
                best = cand
    if best is None and warm_start and heuristic_x is not None:
        best = heuristic_x
        notes.append("the MILP found no feasible point within the time limit; returning the "
                     "best point of the region LP and the walk")
    elif best is None:
        notes.append("no feasible point found within the time limit")
    if best is not None and heuristic_x is not None and warm_start:
        tol = 1e-9 * max(1.0, abs(value(heuristic_x)))
        if _better(objective, value(heuristic_x), value(best), tol):
            best = heuristic_x  # feasible for the MILP too
            notes.append("the walk's point was better than the MILP incumbent")
    proven = out.status == "optimal"
    if not proven:
        notes.insert(0, f"not proven optimal (solver status: {out.status})")
    return _finish(problem, best, objective, target_arr, mode="exact", proven=proven,
                   status=out.status, bound=out.bound, t0=t0, n_binaries=enc.n_binaries,
                   message="; ".join(notes))


def _pattern_walk(problem: _Problem, states: list[NDArray[np.int8]], point: NDArray[np.float64],
                  objective: str, target: NDArray[np.float64], deadline: float):
    """Local search through adjacent linear regions, a primal heuristic for mode "exact".

    An LP optimum over one region usually lies on some boundaries ``z_i = 0``.  Flipping those
    units gives a neighbouring region that still contains the point (at ``z_i = 0`` both states
    give ``h_i = 0``), so the LP there is feasible and its optimum is at least as good; repeat while
    it improves.  Each step is one exact region LP, so every point visited keeps the features.
    Returns (states, point, number of improving steps).
    """
    current = _objective_value(objective, target, point)
    steps = 0
    while time.perf_counter() < deadline:
        zs = problem.net.preactivations(point)
        flips = [np.abs(zs[l]) <= 1e-9 * max(1.0, float(np.abs(zs[l]).max(initial=0.0)))
                 for l in range(problem.net.n_var_blocks)]
        if not any(f.any() for f in flips):
            break
        trial = [np.where(f, _ACTIVE + _INACTIVE - st, st).astype(np.int8)
                 for f, st in zip(flips, states, strict=True)]
        out = _region_search(problem, trial, objective, target, deadline)
        if out.status != "optimal" or out.values is None:
            break
        cand = np.clip(out.values[: problem.n], problem.lo, problem.up)
        cand_value = _objective_value(objective, target, cand)
        if not _better(objective, cand_value, current, 1e-9 * max(1.0, abs(current))):
            break
        states, point, current = trial, cand, cand_value
        steps += 1
    return states, point, steps


def _polish(problem: _Problem, states: list[NDArray[np.int8]], cost_x: NDArray[np.float64], *,
            box: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
            time_limit: float = 5.0) -> NDArray[np.float64] | None:
    """``argmax cost_x . x'`` over one activation pattern's region (an LP at tolerance 1e-9).

    A MILP point meets its rows only to the MILP tolerance; re-solving the LP of its own pattern
    (``states`` from its binaries) returns a point whose features are exact to LP accuracy, and
    at least as good up to that tolerance.  None when the LP does not finish optimally.
    """
    enc = _Encoding(problem, states, None, integral=False, box=box)
    cost = np.zeros(enc.n_cols)
    cost[enc.x_cols] = cost_x
    out = enc.solver().run(cost, maximize=True, time_limit=time_limit)
    if out.status != "optimal" or out.values is None:
        return None
    lo, up = box if box is not None else (problem.lo, problem.up)
    return np.clip(out.values[: problem.n], lo, up)


def _check_first_block(problem: _Problem) -> None:
    net = problem.net
    first_relu = net.blocks[0].module if net.blocks else None
    if not (len(net.blocks) == 1 and net.tail is None):
        hint = ("" if first_relu is None else f" (the first ReLU here is module {first_relu})")
        raise ValueError(
            f"mode='layer' is the Appendix A7 LP of the first affine + ReLU block only: layer must "
            f"be the first ReLU module{hint}, got layer {net.layer}.  A deeper layer's one-layer "
            f"preimage is not an input-space answer; use mode='region' or mode='exact'")


def _region_message(out: _Outcome) -> str:
    if out.status == "unbounded":
        return "the objective is unbounded on the preimage (no finite box)"
    if out.status != "optimal":
        return f"the LP did not finish (status {out.status})"
    return ""


def _region_search(problem: _Problem, states: list[NDArray[np.int8]], objective: str,
                   target: NDArray[np.float64], deadline: float) -> _Outcome:
    enc = _Encoding(problem, states, None, integral=False)
    cost, maximize = _add_objective(enc, objective, target)
    return enc.solver().run(cost, maximize=maximize,
                            time_limit=max(deadline - time.perf_counter(), 1.0))


def _finish(problem: _Problem, values, objective: str, target, *, mode: str, proven: bool,
            status: str, bound: float, t0: float, n_binaries: int,
            message: str) -> InvarianceResult:
    if values is None:
        value = (math.inf if objective == "max_inner" else -math.inf) if status == "unbounded" else math.nan
        return InvarianceResult(None, value, objective, bound, math.nan, math.nan, mode, False,
                                status, time.perf_counter() - t0, problem.net.layer, n_binaries,
                                message)
    x_prime = np.asarray(values[: problem.n], dtype=np.float64)
    # The solver's point may leave the box by its tolerance; the box is a hard prior, so clip.
    x_prime = np.clip(x_prime, problem.lo, problem.up)
    return InvarianceResult(
        x=x_prime.reshape(problem.x_shape), objective=_objective_value(objective, target, x_prime),
        objective_kind=objective, bound=float(bound), feature_max_abs_diff=problem.feature_diff(x_prime),
        input_l2_distance=float(np.linalg.norm(x_prime - problem.x)), mode=mode, proven=bool(proven),
        status=status, solve_time=time.perf_counter() - t0, layer=problem.net.layer,
        n_binaries=n_binaries, message=message)


# --- exact multi-layer preimages ------------------------------------------------------------------


@dataclass(frozen=True)
class PreimagePiece:
    """One activation pattern's piece of a multi-layer preimage, as a one-layer system.

    The piece ``{x' : pattern constraints, F(x') = features}`` is written as the preimage of
    ``y_piece`` under ``x -> ReLU(A x + b)`` (rows with ``y > 0`` are equalities, the others
    ``a_i x + b_i <= 0``), so ``result.verify(A, b, y, lower=, upper=)`` checks it independently.
    The composed equalities are given as an orthonormal basis of their row space, and inequality
    rows that are constant on the equalities' affine hull and hold there are left out (rounding
    in the composition must not decide a rank or omnidirectionality; see ``_reduce_piece``).

    Attributes:
        pattern: one bool array per ReLU block with variables (True = active).
        A, b, y: the piece as a one-layer system in input space.
        result: :func:`reluinv.preimage` of that system (with the box).
    """

    pattern: tuple[NDArray[np.bool_], ...]
    A: NDArray[np.float64] = field(repr=False)
    b: NDArray[np.float64] = field(repr=False)
    y: NDArray[np.float64] = field(repr=False)
    result: Preimage = field(repr=False)


@dataclass(frozen=True)
class NetworkPreimageCertificate(PreimageCertificate):
    """:class:`reluinv.PreimageCertificate` plus the pieces examined by :func:`network_preimage`.

    Attributes:
        pieces: every non-empty piece classified (all of them when ``method`` is "enumeration"
            and ``complete``; otherwise those met before the answer: x's own piece first).
        complete: True when the answer covers every activation pattern (the enumeration
            finished, or the MILPs proved a singleton).
        method: what decided: "own piece" (x's linear piece alone: unbounded, or compact in a
            box), "milp" (finite box: MILPs over all patterns maximised each ``+-(x'_j - x_j)``),
            "enumeration", or "time limit".
        n_lp: LPs and MILPs solved (bound tightening, pruning, distance maximisation).
        n_pruned: partial patterns discarded (LP infeasible, or contained in a sibling piece).
        seconds: wall-clock time.
    """

    pieces: tuple[PreimagePiece, ...] = ()
    complete: bool = False
    method: str = ""
    n_lp: int = 0
    n_pruned: int = 0
    seconds: float = 0.0


def _piece_system(problem: _Problem, pattern: Sequence[NDArray[np.bool_]]):
    """The piece of one full pattern as ``(A, b, y)`` of a one-layer system in input space."""
    net = problem.net
    n = problem.n
    J, k = np.eye(n), np.zeros(n)
    A_rows, b_rows, y_rows = [], [], []
    for l, blk in enumerate(net.blocks):
        Z, kz = blk.weight @ J, blk.weight @ k + blk.bias
        if l == len(net.blocks) - 1 and net.fixed_last:
            y = problem.features
            A_rows.append(Z)
            b_rows.append(kz)
            y_rows.append(np.where(y > 0, y, 0.0))
            break
        s = np.asarray(pattern[l], dtype=bool)
        # active: z >= 0, i.e. -z <= 0; inactive: z <= 0
        sign = np.where(s, -1.0, 1.0)
        A_rows.append(Z * sign[:, None])
        b_rows.append(kz * sign)
        y_rows.append(np.zeros(s.size))
        J, k = Z * s[:, None], kz * s
    if net.tail is not None:
        T, t = net.tail
        E, e = T @ J, T @ k + t
        # E x + e = f written as E x + (e - f + 1) = 1 > 0: an "active" row of the one-layer system
        A_rows.append(E)
        b_rows.append(e - problem.features + 1.0)
        y_rows.append(np.ones(e.size))
    return _reduce_piece(np.vstack(A_rows), np.concatenate(b_rows), np.concatenate(y_rows))


#: Relative singular-value threshold for the rank of a piece's composed equalities, and the
#: length below which an inequality row restricted to their null space counts as constant.
_PIECE_RANK_RTOL = 1e-10


def _reduce_piece(A, b, y):
    """Rewrite a composed piece so that rounding in the composition cannot decide its kind.

    Composing layers produces (i) equality rows that are exactly dependent in exact arithmetic
    (e.g. features ``T D z`` with fewer active units than features) but independent at the 1e-16
    level, and (ii) inequality rows that are constant on the equalities' affine hull (an active
    unit's ``z >= 0`` when the features pin ``z``), whose restriction to N(A_pos) is 1e-16 noise;
    noise must not take part in a rank or omnidirectionality decision.  So: the equalities (unit
    rows) are replaced by an orthonormal basis of their row space (SVD, singular values above
    1e-10 of the largest) with the matching right-hand side, and constant inequality rows that
    hold are dropped.  The set is unchanged (up to that tolerance).  Inconsistent equalities and
    violated constant rows are left for :func:`reluinv.preimage` to report "empty".
    """
    eq = y > 0
    if not eq.any():
        return A, b, y
    E, e = A[eq], (y - b)[eq]
    norms = np.linalg.norm(E, axis=1)
    nonzero = norms > 0
    if np.any(np.abs(e[~nonzero]) > 1e-12 * max(1.0, float(np.abs(e).max()))):
        return A, b, y  # 0 = e_i != 0: empty, and preimage says so with its own certificate
    En, en = E[nonzero] / norms[nonzero, None], e[nonzero] / norms[nonzero]
    n = A.shape[1]
    if En.shape[0] == 0:
        return A[~eq], b[~eq], y[~eq]
    U, S, Vt = np.linalg.svd(En, full_matrices=True)
    r = int(np.sum(S > _PIECE_RANK_RTOL * S[0]))
    x_p = Vt[:r].T @ ((U[:, :r].T @ en) / S[:r])
    if np.abs(En @ x_p - en).max() > 1e-9 * max(1.0, float(np.abs(x_p).max())):
        return A, b, y  # inconsistent equalities: let preimage certify emptiness
    eq_rows = Vt[:r]
    null = Vt[r:].T  # (n, n - r)
    G, g = A[~eq], b[~eq]
    g_norms = np.linalg.norm(G, axis=1)
    restricted = (np.linalg.norm((G / np.where(g_norms > 0, g_norms, 1.0)[:, None]) @ null, axis=1)
                  if null.shape[1] else np.zeros(G.shape[0]))
    value = G @ x_p + g  # the constant value of a constant row on the affine hull
    scale = np.maximum(1.0, np.abs(g) + g_norms * float(np.abs(x_p).max(initial=0.0)))
    keep = ~((g_norms > 0) & (restricted <= _PIECE_RANK_RTOL) & (value <= 1e-9 * scale))
    A_new = np.vstack([eq_rows, G[keep]]) if n else np.zeros((0, 0))
    b_new = np.concatenate([1.0 - eq_rows @ x_p, g[keep]])
    y_new = np.concatenate([np.ones(r), np.zeros(int(keep.sum()))])
    return A_new, b_new, y_new


def _feature_jacobian(problem: _Problem) -> NDArray[np.float64]:
    """``dF_l/dx`` on x's linear region."""
    net = problem.net
    J = np.eye(problem.n)
    for l, blk in enumerate(net.blocks):
        J = (blk.weight @ J) * (problem.zs[l] > 0)[:, None]
    if net.tail is not None:
        J = net.tail[0] @ J
    return J


def network_preimage(
    model: Any,
    x: Any,
    layer: int,
    *,
    lower: Any = None,
    upper: Any = None,
    time_limit: float = 60.0,
    strategy: Literal["auto", "enumerate", "milp"] = "auto",
    rtol: float = 1e-9,
) -> Preimage:
    """Exact kind of ``{x' : F_layer(x') = F_layer(x)}`` across layers (Section 4, "Scope").

    The paper characterises one layer (Theorem 4) and names the obstacle for several: the
    preimage under layer l must be intersected with the image of the layers below.  Here the
    preimage is taken in input space directly.  Fixing the activation pattern of every ReLU up to
    ``layer`` makes the network affine, so each pattern's *piece*

        P_s = { x' in box : z_l(x') >= 0 where s_l = 1, z_l(x') <= 0 where s_l = 0,
                F_layer(x') = F_layer(x) }

    is a closed polyhedron, and the preimage is the union of the pieces (ReLU is continuous, so a
    point on a boundary lies in both neighbours; the union is exact).  When the features are a
    ReLU output ``y`` the last layer's pattern is fixed by ``y`` (``y_i > 0`` active, else inactive).

    Kind of the union: "unbounded" as soon as one piece is unbounded (its point and recession
    direction keep the features equal along the whole ray); otherwise "singleton" when every
    piece is the single point ``x``; otherwise "compact" (with a second point).  Inside a finite box
    every piece is bounded, so two distinct points decide "compact" at once.

    Steps (``certificate.method`` says which one decided):

    1. "own piece": x's own linear piece is classified first; unbounded decides "unbounded",
       compact inside a finite box decides "compact".
    2. "enumeration": units whose sign is fixed on the whole preimage are found first (interval
       bounds from the box, LP-tightened over the relaxation that contains the feature
       equalities on small networks).  The remaining units are branched on depth-first, last
       layer first, x's own signs first; a partial pattern is pruned when its LP relaxation is
       infeasible, and an "active" branch is dropped when ``max z_i <= 0`` on it (its points
       then have ``z_i = 0`` and lie in the "inactive" sibling).  Each complete pattern's piece
       is written as a one-layer system in input space and classified by
       :func:`reluinv.preimage` (Theorem 4 with the box, Remark 3), which also certifies it.
       Without a box nothing prunes by bounds and the enumeration can grow exponentially; it
       then has all the time.  With a finite box it has 15% of the remaining time, then:
    3. "milp" (finite box only): for every coordinate j and sign, the MILP over all activation
       patterns (the encoding of :func:`invariance_search`, mode "exact") maximises
       ``+-(x'_j - x_j)``.  A verified point away from x decides "compact"; all optima proven
       below the point tolerance (1e-7 of the scale of x) decide "singleton".  This scales to
       wider networks than the enumeration, but its proof rests on the MILP solver's tolerances
       rather than on per-piece certificates.

    At ``time_limit`` the answer is "unknown" rather than a guess (the certificate says what was
    found so far, e.g. a second point).

    Fields of the result (a :class:`reluinv.Preimage`): ``point`` a point of the preimage (x, or
    the deciding piece's point), ``direction`` for "unbounded", ``n_active`` the number of
    positive features (all features when the layer is affine), ``rank`` / ``nullity`` of the
    features' Jacobian on x's linear region, ``margin`` / ``tolerance`` of the deciding piece, and
    ``certificate`` a :class:`NetworkPreimageCertificate` (pieces, ``second_point``, reason).
    :func:`verify_network_preimage` checks it by forward passes and per-piece certificates.

    Args:
        model: as for :func:`invariance_search`.
        x: one input without batch dimension.
        layer: module index whose output defines the features.
        lower, upper: optional box (None = unbounded); must contain ``x``.
        time_limit: seconds; beyond it the kind is "unknown".
        strategy: "auto" (the steps above), "enumerate" (step 2 with all the time) or "milp"
            (step 3 with all the time; needs a finite box).  Step 1 always runs first.
        rtol: relative tolerance passed to :func:`reluinv.preimage` for every piece.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.eye(2)); _ = net[0].bias.zero_()
        >>> network_preimage(net, [1.0, -1.0], 1).kind   # x2 may go to -infinity
        'unbounded'
        >>> network_preimage(net, [1.0, -1.0], 1, lower=-2, upper=2).kind
        'compact'
    """
    t0 = time.perf_counter()
    time_limit = _check_time_limit(time_limit)
    strategy = _check_choice("strategy", strategy, ("auto", "enumerate", "milp"))
    problem = _problem(model, x, layer, lower, upper)
    if strategy == "milp" and not problem.box_finite:
        raise ValueError("strategy='milp' needs a finite box (lower and upper finite for every "
                         "input); without one use 'enumerate' or 'auto'")
    deadline = t0 + time_limit
    net = problem.net
    jac = _feature_jacobian(problem)
    rank = int(np.linalg.matrix_rank(jac)) if jac.size else 0
    n_active = int((problem.features > 0).sum()) if net.fixed_last else int(problem.features.size)
    lo_b = None if lower is None else problem.lo
    up_b = None if upper is None else problem.up

    bounds, n_lp = _preimage_bounds(problem, "auto", t0 + 0.25 * time_limit)
    states = _states_from_bounds(problem, bounds)
    x_signs = [problem.zs[l] > 0 for l in range(net.n_var_blocks)]
    order = [(l, int(i)) for l in reversed(range(net.n_var_blocks))
             for i in np.flatnonzero(states[l] == _FREE)]
    point_tol = 1e-7 * max(1.0, float(np.abs(problem.x).max(initial=0.0)))

    pieces: list[PreimagePiece] = []
    second: NDArray[np.float64] | None = None
    n_pruned = 0

    def result(kind, point, direction, reason, complete, piece=None):
        cert = NetworkPreimageCertificate(
            reason=reason, second_point=second if kind in ("compact", "unknown") else
            (piece.certificate.second_point if piece is not None and kind == "unbounded" else None),
            pieces=tuple(pieces), complete=complete,
            method="time limit" if kind == "unknown" else method, n_lp=n_lp, n_pruned=n_pruned,
            seconds=time.perf_counter() - t0)
        margin = min((p.result.margin for p in pieces), default=0.0) if piece is None else piece.margin
        tol = piece.tolerance if piece is not None else (pieces[0].result.tolerance if pieces else rtol)
        return Preimage(kind=kind, point=point, direction=direction, nullity=problem.n - rank,
                        n_active=n_active, rank=rank, margin=float(margin), tolerance=float(tol),
                        certificate=cert)

    def timeout():
        found = ("a second point was found, so the preimage is not a singleton, but unboundedness "
                 "is not settled" if second is not None else "no second point found yet")
        return result("unknown", problem.x.copy(), None,
                      f"time limit of {time_limit:g} s reached after {len(pieces)} pieces and "
                      f"{n_lp} LPs; {found}", complete=False)

    seen: set[bytes] = set()
    method = "own piece"

    def milp_route(milp_deadline: float) -> Preimage | None:
        nonlocal n_lp, method
        enc = _Encoding(problem, states, bounds, integral=True)
        solver = enc.solver()
        x0 = problem.x
        scale = max(1.0, float(np.abs(problem.reference).max(initial=0.0)))
        for j in range(problem.n):
            for sign in (1.0, -1.0):
                if (problem.up[j] - x0[j] if sign > 0 else x0[j] - problem.lo[j]) <= point_tol:
                    continue  # the box leaves no room on this side
                cost = np.zeros(enc.n_cols)
                cost[enc.x_cols[j]] = sign
                left = milp_deadline - time.perf_counter()
                if left <= 0:
                    return None
                out = solver.run(cost, maximize=True, time_limit=left, offset=-sign * x0[j],
                                 start=enc.start_vector(x0))
                n_lp += 1
                if out.values is not None and out.objective > point_tol:
                    cand = np.clip(out.values[: problem.n], problem.lo, problem.up)
                    if problem.feature_diff(cand) <= 1e-9 * scale and \
                            np.linalg.norm(cand - x0) > point_tol:
                        nonlocal second
                        second = cand
                        method = "milp"
                        return result("compact", x0.copy(), None,
                                      f"a MILP over all activation patterns found a second point "
                                      f"(|x'_{j} - x_{j}| = {abs(cand[j] - x0[j]):.3g}) inside a "
                                      f"finite box, which bounds every piece (Remark 3)",
                                      complete=False)
                    return None  # a doubtful point: leave the decision to the enumeration
                if out.status != "optimal":
                    return None
                if out.bound > point_tol:
                    return None  # not proven within the tolerance: enumerate instead
        method = "milp"
        return result("singleton", x0.copy(), None,
                      f"for every input coordinate j and both signs a MILP over all activation "
                      f"patterns (big-M from bounds valid on the preimage; HiGHS, feasibility "
                      f"tolerance {_MIP_FEAS_TOL:g}) proves max +-(x'_j - x_j) <= {point_tol:.1g}; "
                      f"x's own piece: {pieces[0].result.certificate.reason if pieces else 'n/a'}",
                      complete=True)

    def classify(pattern: tuple[NDArray[np.bool_], ...]) -> Preimage | None:
        """Classify one complete pattern's piece; returns the final answer when it decides one."""
        nonlocal second, n_pruned
        key = b"".join(np.packbits(p).tobytes() for p in pattern)
        if key in seen:
            return None
        seen.add(key)
        A, b, y = _piece_system(problem, pattern)
        r = preimage(A, b, y, lower=lo_b, upper=up_b, rtol=rtol)
        if r.kind == "empty":  # feasible for the LP, empty at preimage's tolerance: a sliver
            n_pruned += 1
            return None
        pieces.append(PreimagePiece(pattern, A, b, y, r))
        if r.kind == "unbounded":
            return result("unbounded", r.point, r.direction,
                          f"the piece of activation pattern #{len(pieces)} is unbounded "
                          f"(Theorem 4 iii on the piece): along its direction every feature at "
                          f"module {net.layer} stays equal", complete=False, piece=r)
        if second is None:
            if r.kind == "compact":
                second = r.certificate.second_point
                if second is not None and np.linalg.norm(second - problem.x) <= point_tol:
                    second = r.point  # prefer a second point away from x
            elif np.linalg.norm(r.point - problem.x) > point_tol:
                second = r.point
        if second is not None and problem.box_finite:
            return result("compact", problem.x.copy(), None,
                          "two distinct points of the preimage inside a finite box (every piece "
                          "is bounded by the box, Remark 3)", complete=False)
        return None

    def enumerate_pieces(enum_deadline: float) -> Preimage | None:
        """Depth-first over the undetermined units; None when ``enum_deadline`` comes first."""
        nonlocal n_lp, n_pruned, method
        method = "enumeration"
        stack: list[tuple[list[NDArray[np.int8]], int]] = [([a.copy() for a in states], 0)]
        while stack:
            if time.perf_counter() >= enum_deadline:
                return None
            st, depth = stack.pop()
            if depth == len(order):
                decided = classify(tuple(a == _ACTIVE for a in st))
                if decided is not None:
                    return decided
                continue
            l, i = order[depth]
            preferred = _ACTIVE if x_signs[l][i] else _INACTIVE
            children = []
            for sign in (preferred, _ACTIVE + _INACTIVE - preferred):
                child = [a.copy() for a in st]
                child[l][i] = sign
                enc = _Encoding(problem, child, bounds, integral=False)
                if sign == _ACTIVE:
                    cost, const = enc.z_objective(l, i)
                else:
                    cost, const = np.zeros(enc.n_cols), 0.0
                out = enc.solver().run(cost, maximize=True, offset=const,
                                       time_limit=max(enum_deadline - time.perf_counter(), 1e-3))
                n_lp += 1
                if out.status == "time_limit":
                    return None
                if out.status == "infeasible":
                    n_pruned += 1
                    continue
                if sign == _ACTIVE and out.status == "optimal":
                    blk = net.blocks[l]
                    scale = max(1.0, abs(float(blk.bias[i])) + float(np.abs(blk.weight[i]).sum()) *
                                max(1.0, float(np.abs(problem.x).max(initial=0.0))))
                    if out.objective <= _SIGN_RTOL * scale:
                        n_pruned += 1  # z_i = 0 on the whole branch: it lies in the inactive sibling
                        continue
                children.append(child)
            for child in reversed(children):  # x's own sign is explored first
                stack.append((child, depth + 1))
        if second is not None:
            return result("compact", problem.x.copy(), None,
                          f"all {len(pieces)} pieces of the preimage are bounded (Theorem 4 iii on "
                          f"each) and it holds two distinct points", complete=True)
        reasons = sorted({p.result.certificate.reason for p in pieces})
        return result("singleton", problem.x.copy(), None,
                      f"every one of the {len(pieces)} pieces (one per activation pattern "
                      f"consistent with the features, {n_pruned} partial patterns pruned) is the "
                      f"single point x: " + "; ".join(reasons), complete=True)

    # x's own linear region first: often it decides alone (unbounded, or compact in a box).
    decided = classify(tuple(a.astype(bool) for a in x_signs))
    if decided is not None:
        return decided
    if strategy == "enumerate" or not problem.box_finite:
        return enumerate_pieces(deadline) or timeout()
    if strategy == "milp":
        return milp_route(deadline) or timeout()
    # Inside a finite box only "singleton or not" is open.  Enumeration is quickest on small
    # networks and gives per-piece certificates; the MILPs scale further (benchmarks/
    # invariance_speed.py): a short enumeration first, then the MILPs with the rest of the time.
    decided = enumerate_pieces(time.perf_counter() + 0.15 * (deadline - time.perf_counter()))
    if decided is None:
        decided = milp_route(deadline)
    return decided or timeout()


def verify_network_preimage(result: Preimage, model: Any, x: Any, layer: int, *,
                            lower: Any = None, upper: Any = None, rtol: float = 1e-7) -> None:
    """Check a :func:`network_preimage` answer by float64 forward passes; raise CertificateError.

    Checks that ``point`` (and ``second_point``, ``point + t * direction`` for t in 1, 10, 1000)
    lie in the box and give the features of ``x`` up to ``rtol`` times the features' scale, that a
    second point differs from the point, and every piece's own certificate
    (:meth:`reluinv.Preimage.verify` on its one-layer system).
    """
    problem = _problem(model, x, layer, lower, upper)
    scale = max(1.0, float(np.abs(problem.reference).max(initial=0.0)))
    cert = result.certificate

    def check(point: NDArray[np.float64], what: str) -> None:
        xs = max(1.0, float(np.abs(point).max(initial=0.0)))
        if np.any(point < problem.lo - rtol * xs) or np.any(point > problem.up + rtol * xs):
            raise CertificateError(f"{what} lies outside the box")
        diff = problem.feature_diff(point)
        if diff > rtol * scale * xs:
            raise CertificateError(f"{what} changes the features by {diff:.3g}")

    if result.kind == "empty":
        raise CertificateError("a network preimage contains x and cannot be empty")
    if result.point is None:
        raise CertificateError("the result carries no point")
    check(result.point, "point")
    if result.kind == "unbounded":
        d = result.direction
        if d is None or abs(np.linalg.norm(d) - 1) > 1e-8:
            raise CertificateError("unbounded needs a unit direction")
        for t in (1.0, 10.0, 1e3):
            check(result.point + t * d, f"point + {t:g} direction")
    if cert.second_point is not None:
        check(cert.second_point, "second point")
        if np.linalg.norm(cert.second_point - result.point) == 0:
            raise CertificateError("second point equals the point")
        if result.kind == "singleton":
            raise CertificateError("a singleton cannot have a second point")
    if result.kind == "compact" and cert.second_point is None:
        raise CertificateError("compact needs a second point")
    if isinstance(cert, NetworkPreimageCertificate):
        lo_b = None if lower is None else problem.lo
        up_b = None if upper is None else problem.up
        for piece in cert.pieces:
            piece.result.verify(piece.A, piece.b, piece.y, lower=lo_b, upper=up_b, rtol=1e-6)
            if result.kind == "singleton" and np.linalg.norm(piece.result.point - problem.x) > \
                    1e-6 * max(1.0, float(np.abs(problem.x).max(initial=0.0))):
                raise CertificateError("a piece of a singleton preimage holds a point other than x")


# --- how far can x move ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PreimageExtent:
    """How far an input can move inside ``{x' in box : F_layer(x') = F_layer(x)}``.

    Attributes:
        layer: module index.
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

    layer: int
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
        out: dict[str, Any] = {k: _json_float(getattr(self, k)) for k in (
            "linf", "linf_bound", "l1", "l1_bound", "feature_max_abs_diff", "solve_time")}
        out.update(layer=self.layer, method=self.method, proven=bool(self.proven),
                   lower_bound_only=bool(self.lower_bound_only), message=self.message)
        if include_points:
            out["linf_point"] = None if self.linf_point is None else self.linf_point.tolist()
            out["l1_point"] = None if self.l1_point is None else self.l1_point.tolist()
        return out


def preimage_extent(
    model: Any,
    x: Any,
    layer: int,
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
    both norms (half each); on time out the best values and proven bounds are returned with
    ``proven=False``.

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
    t0 = time.perf_counter()
    time_limit = _check_time_limit(time_limit)
    method = _check_choice("method", method, ("exact", "region"))
    tighten = _check_choice("tighten", tighten, ("auto", "lp", "ibp"))
    problem = _problem(model, x, layer, lower, upper)
    if not problem.box_finite:
        raise ValueError("preimage_extent needs a finite box (lower and upper finite for every input); "
                         "use network_preimage to decide whether the preimage is bounded")
    deadline = t0 + time_limit
    notes: list[str] = []
    # x's linear region first: cheap, and a lower bound (and start point) for the exact search.
    region_end = deadline if method == "region" else t0 + 0.4 * time_limit
    region_states = problem.region_states()
    linf = _linf_extent(problem, region_states, None, integral=False, best=(0.0, problem.x.copy()),
                        deadline=t0 + 0.25 * (region_end - t0), notes=notes)
    l1 = _l1_extent(problem, region_states, None, deadline=region_end,
                    starts=[linf[1], problem.x], notes=notes)
    if method == "exact":
        bounds, _ = _preimage_bounds(problem, tighten, time.perf_counter() + 0.15 * time_limit)
        states = _states_from_bounds(problem, bounds)
        linf_deadline = time.perf_counter() + 0.3 * (deadline - time.perf_counter())
        notes.clear()  # region-phase notes concern only the start values now
        # the region points sit on some z = 0: start the MILPs with the pattern they came from
        region_pattern = [st == _ACTIVE for st in region_states]
        region_l1_point = l1[1]
        linf = _linf_extent(problem, states, bounds, integral=True, best=(linf[0], linf[1]),
                            deadline=linf_deadline, notes=notes, start_pattern=region_pattern)
        l1 = _l1_extent(problem, states, bounds, deadline=deadline, starts=[region_l1_point],
                        notes=notes, start_pattern=region_pattern)
    diffs = [problem.feature_diff(p) for p in (linf[1], l1[1])]
    return PreimageExtent(
        layer=problem.net.layer, method=method, linf=linf[0], linf_bound=linf[2], l1=l1[0],
        l1_bound=l1[2], proven=bool(linf[3] and l1[3]), lower_bound_only=method == "region",
        linf_point=linf[1].reshape(problem.x_shape), l1_point=l1[1].reshape(problem.x_shape),
        feature_max_abs_diff=max(diffs), solve_time=time.perf_counter() - t0,
        message="; ".join(notes))


def _linf_extent(problem, states, bounds, *, integral, best, deadline, notes, start_pattern=None):
    """Largest ``|x'_j - x_j|`` over the encoding; returns (value, point, bound, proven).

    ``best`` = (value, point) already known to be attainable (e.g. from x's region, whose
    activation pattern is ``start_pattern``).
    """
    initial_point = best[1]
    n, x, lo, up = problem.n, problem.x, problem.lo, problem.up
    rooms = np.concatenate([up - x, x - lo])  # candidate k < n: +e_j, k >= n: -e_j
    order = np.argsort(-rooms, kind="stable")
    value, point = best
    enc = _Encoding(problem, states, bounds, integral=integral)
    solver = enc.solver(presolve=integral)  # LPs: keep the basis between objectives
    bound = value
    for pos, k in enumerate(order):
        if rooms[k] <= value + 1e-12 * max(1.0, value):
            return value, point, max(bound, value), True  # no candidate left can beat it
        left = deadline - time.perf_counter()
        if left <= 0:
            notes.append(f"L-infinity: time limit reached ({'MILP' if integral else 'LP'}s), "
                         f"{order.size - pos} of {order.size} candidates unvisited")
            return value, point, max(bound, float(rooms[order[pos:]].max())), False
        j, sign = int(k % n), (1.0 if k < n else -1.0)
        cost = np.zeros(enc.n_cols)
        cost[enc.x_cols[j]] = sign
        start = (enc.start_vector(point, start_pattern if point is initial_point else None)
                 if integral else None)
        out = solver.run(cost, maximize=True, time_limit=left, offset=-sign * x[j], start=start)
        if out.values is not None:
            cand = np.clip(out.values[:n], lo, up)
            if integral:  # polish the MILP point in its own pattern's region
                unit = np.zeros(n)
                unit[j] = sign
                polished = _polish(problem, enc.fixed_binaries(out.values), unit,
                                   time_limit=max(1.0, deadline - time.perf_counter()))
                if polished is not None and sign * (polished[j] - cand[j]) >= \
                        -1e-6 * max(1.0, abs(cand[j])):
                    cand = polished
            if abs(cand[j] - x[j]) > value:
                value, point = float(abs(cand[j] - x[j])), cand
        if out.status == "optimal":
            bound = max(bound, out.bound if math.isfinite(out.bound) else value)
        else:
            bound = max(bound, out.bound if math.isfinite(out.bound) else float(rooms[k]))
            notes.append(f"L-infinity: coordinate {j} not proven (status {out.status})")
            return value, point, max(bound, float(rooms[order[pos + 1:]].max(initial=bound))), False
    return value, point, max(bound, value), True


def _l1_extent(problem, states, bounds, *, deadline, starts, notes, start_pattern=None):
    """Largest ``||x' - x||_1`` over the encoding (a MILP); returns (value, point, bound, proven).

    The best of ``starts`` is the MILP's start solution (binaries from ``start_pattern`` when
    given: the pattern of the region it came from).
    """
    n, x, lo, up = problem.n, problem.x, problem.lo, problem.up
    # Side binaries are integer in both methods; in "region" the network's units are all fixed.
    enc = _Encoding(problem, states, bounds, integral=True)
    room_up, room_dn = up - x, x - lo
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

        def fill(xp, vec):
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
    offset = float(x[at_upper].sum() - x[at_lower].sum())
    best_start = max(starts, key=lambda s: float(np.abs(s - x).sum()))
    start_value = float(np.abs(best_start - x).sum())
    out = enc.solver().run(cost, maximize=True, time_limit=max(deadline - time.perf_counter(), 1e-3),
                           offset=offset, start=enc.start_vector(best_start, start_pattern))
    value, point = start_value, best_start
    if out.values is not None:
        cand = np.clip(out.values[:n], lo, up)
        # polish: with the pattern and every side fixed, |x'_j - x_j| is linear: one LP
        side = np.sign(cand - x)
        orthant = (np.where(side > 0, x, lo), np.where(side < 0, x, up))
        polished = _polish(problem, enc.fixed_binaries(out.values), side, box=orthant,
                           time_limit=max(1.0, deadline - time.perf_counter()))
        if polished is not None and float(np.abs(polished - x).sum()) >= \
                float(np.abs(cand - x).sum()) - 1e-6 * max(1.0, float(np.abs(cand - x).sum())):
            cand = polished
        if float(np.abs(cand - x).sum()) >= start_value:
            value, point = float(np.abs(cand - x).sum()), cand
    proven = out.status == "optimal"
    bound = out.bound if math.isfinite(out.bound) else float((room_up + room_dn).sum())
    if not proven:
        notes.append(f"L1: not proven (status {out.status})")
    return value, point, max(bound, value), proven


# --- Figure 7, extended ---------------------------------------------------------------------------


def _relu_modules(model: Any) -> list[int]:
    from torch import nn

    return [i for i, m in enumerate(flatten_modules(model)) if isinstance(m, nn.ReLU)]


def fig7x_examples(
    model: Any,
    test_images: Any,
    test_labels: Any,
    *,
    depths: Sequence[int | str] = (1, 2, 5, "logits"),
    modes: Sequence[str] = ("region", "exact"),
    n_examples: int = 2,
    target_indices: Sequence[int] | None = None,
    time_limit: float = 30.0,
    extent_method: Literal["region", "exact"] | None = "region",
    lower: float = 0.0,
    upper: float = 1.0,
) -> dict[str, Any]:
    """Appendix A7 (Figure 7 / 12) at several depths: inputs far from x with identical features.

    As in A7: the test images with the fewest active units in the first ReLU layer are chosen; for
    each, a target image of another class ``c``; then ``<c, x'>`` is maximised over ``x'`` in
    ``[lower, upper]^n`` whose features at depth ``d`` equal those of ``x`` -- depth ``d`` = output of
    the d-th ReLU module, "logits" = output of the last module -- with :func:`invariance_search` in
    each of ``modes`` ("layer" is run at depth 1 only, where it is A7 itself).  For each depth the
    extent (:func:`preimage_extent`) says how far an input can move at all while keeping the
    features.

    Args:
        model: the Table 1 MLP (``reluinv.zoo.mlp_table1``), trained.
        test_images: array (N, ...) of inputs in the box; test_labels: (N,) integer classes.
        depths: ReLU counts and/or "logits".
        modes: any of "layer", "region", "exact".
        n_examples: how many inputs (fewest active first-layer units first, ties by index).
        target_indices: one test index per example to use as target; default: the first test image
            whose class differs from the example's and from the targets already chosen, if possible.
        time_limit: seconds per search and per extent.
        extent_method: "region" (lower bound), "exact", or None to skip.
        lower, upper: the input box (A7: [0, 1]).

    Returns:
        A JSON-serialisable dict: ``{"depths": [...], "modules": [...], "examples": [{"index",
        "label", "n_active_first_layer", "target_index", "target_label", "image_shape", "image",
        "target", "depths": [{"depth", "module", "searches": {mode: {objective, proven,
        feature_max_abs_diff, input_l2_distance, mode, status, solve_time, image, ...}},
        "extent": {linf, l1, proven, method, lower_bound_only, ...}}]}]}``.  Images are nested
        lists of the per-sample shape; drop them if not needed.
    """
    import torch

    images = test_images.detach().cpu().double().numpy() if isinstance(test_images, torch.Tensor) \
        else as_finite_array(test_images, "test_images")
    images = as_finite_array(images, "test_images")
    labels = np.asarray(test_labels.detach().cpu().numpy() if isinstance(test_labels, torch.Tensor)
                        else test_labels).reshape(-1)
    if images.ndim < 2 or images.shape[0] != labels.size:
        raise ValueError(f"test_images must be (N, ...) with N = len(test_labels) = {labels.size}, "
                         f"got shape {images.shape}")
    for m in modes:
        _check_choice("modes entry", m, ("layer", "region", "exact"))
    if isinstance(n_examples, bool) or not isinstance(n_examples, (int, np.integer)) or n_examples < 1:
        raise ValueError(f"n_examples must be a positive integer, got {n_examples!r}")
    relus = _relu_modules(model)
    n_modules = len(flatten_modules(model))
    modules = []
    for d in depths:
        if d == "logits":
            modules.append(n_modules - 1)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 1 <= d <= len(relus):
            modules.append(relus[int(d) - 1])
        else:
            raise ValueError(f"depths entries must be 1..{len(relus)} or 'logits', got {d!r}")
    if not relus:
        raise ValueError("the model has no ReLU module")

    first = _build_network(model, images.shape[1:], relus[0])
    flat = images.reshape(images.shape[0], -1)
    blk = first.blocks[0]
    active_counts = ((flat @ blk.weight.T + blk.bias) > 0).sum(axis=1)
    chosen = np.argsort(active_counts, kind="stable")[: int(n_examples)]
    if target_indices is not None and len(target_indices) < len(chosen):
        raise ValueError(f"target_indices needs one index per example ({len(chosen)})")

    used_labels: set[int] = set()
    examples = []
    for e, idx in enumerate(chosen):
        idx = int(idx)
        label = int(labels[idx])
        if target_indices is not None:
            tgt = int(target_indices[e])
        else:
            others = np.flatnonzero(labels != label)
            if others.size == 0:
                raise ValueError("every test image has the same class: no target of another class")
            fresh = [int(i) for i in others if int(labels[i]) not in used_labels]
            tgt = fresh[0] if fresh else int(others[0])
        used_labels.add(int(labels[tgt]))
        x, target = images[idx], images[tgt]
        per_depth = []
        for d, module in zip(depths, modules, strict=True):
            searches = {}
            for mode in modes:
                if mode == "layer" and module != relus[0]:
                    continue
                r = invariance_search(model, x, target, layer=module, lower=lower, upper=upper,
                                      objective="max_inner", mode=mode, time_limit=time_limit)
                searches[mode] = r.to_dict(include_x=False)
                searches[mode]["image"] = None if r.x is None else r.x.tolist()
            entry: dict[str, Any] = {"depth": d, "module": module, "searches": searches}
            if extent_method is not None:
                ext = preimage_extent(model, x, module, lower=lower, upper=upper,
                                      method=extent_method, time_limit=time_limit)
                entry["extent"] = ext.to_dict()
            per_depth.append(entry)
        examples.append({
            "index": idx, "label": label, "n_active_first_layer": int(active_counts[idx]),
            "target_index": tgt, "target_label": int(labels[tgt]),
            "image_shape": list(images.shape[1:]), "image": x.tolist(), "target": target.tolist(),
            "depths": per_depth})
    return {"depths": list(depths), "modules": modules, "modes": list(modes),
            "time_limit": time_limit, "box": [lower, upper], "examples": examples}
