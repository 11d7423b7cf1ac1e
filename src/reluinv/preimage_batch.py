"""Preimages of many outputs of one ReLU layer (Theorem 4, Remark 3), sharing what the layer fixes.

Figure 4 decides the preimage of ``y = ReLU(A x + b)`` for every test image under the same layer.
:func:`preimage_batch` returns, for each row of ``Y`` (or of ``X``), the :class:`Preimage` that
:func:`reluinv.preimage` returns for it, while doing once per batch what the layer alone decides:

* the checks of ``A``, ``b`` and the box (one pass over A instead of one per sample);
* the row norms of A and their power-of-two scaling (``preimage._row_norms``), which every
  sample's unit rows use;
* with ``X``, the forward pass ``ReLU(X A^T + b)`` of all samples as one matrix product.

Every sample then goes through the very decision of :func:`reluinv.preimage` (``_LayerSystem``,
with the shared row norms): on the default path (``device=None``) the verdicts, ranks, nullities
and active counts are those of :func:`reluinv.preimage` on the same ``y``, and margins, points
and certificates the same numbers up to the last-bit rounding that :func:`reluinv.preimage`
itself shows from call to call (BLAS kernels sum in an order that can depend on where the
temporaries lie in memory: the same ``y`` gave margins 2.327370580217922{3,4,6}e-4 in three
processes).  The tests compare every field.  Per sample on the 3500 x 784 Fashion-MNIST layer of
``benchmarks/fig4_scan.py`` (2 cores, loaded), this saves the checks and row norms (1.6 ms) and
most of the forward product (7.8 ms as a matrix-vector product, 0.5 ms per sample as one product
of 64); what stays is the decision itself.  For a singleton that is about 20-25 ms, mostly the
LU of 784 active rows (the floor).  On the layer of Figure 4's full mode (paper recipe, 150-880
active rows, mostly unbounded) it is about 0.37 s, of which the factorisation is 6% and the
direction search of :func:`reluinv.geometry.omni_lazy` 92% (min-norm NNLS 31%, alternating
projections 27%, the Stiemke LP 25%; cProfile over 32 images), none of it shared between samples.
(Newton's method on ``A z <= -1`` now comes before the NNLS and finds the direction in 7-58 ms
where the NNLS took 190-350 ms on the shifted layers of ``benchmarks/preimage_speed.py``; see
``benchmarks/README.md``.)

``device`` (a torch device: ``"cuda"``, ``"cpu"``) moves step 1 of Theorem 4's method, the
factorisation of the active rows, to batched torch float64 kernels: for each group of samples
with fewer active rows than inputs, one batched LU with partial pivoting of the zero-padded
``A_pos^T`` (zero columns after the real ones change none of their pivots or factors), from
which :func:`reluinv._nullspace.wide_from_lu` forms the particular solution and the orthonormal
null-space basis on the CPU as :class:`EqualityFactor` does; for the others, one batched LU of
the same ``n`` picked rows that :class:`EqualityFactor` tries.
Rank is still certified on this machine with a condition estimate of the returned factor
(the rule of :mod:`reluinv._nullspace`); a factor that fails it, or a sample with no active row,
is factorised by :class:`EqualityFactor` itself (pivoted QR).  The factors differ from LAPACK's
in rounding only, so verdicts, ranks and nullities agree away from the tolerances, and the margins
mostly agree to rounding; where the boundedness test needs more than its spread rows (inactive
rows that lean to one side of the null space), products that differ in the last bits can lead the
projections to another, equally valid certificate: on 600 preimages of layers with many leaning
rows (the generator of ``tests/test_preimage.py``), 5 margins differed by more than 1 %, every
kind and near-tolerance flag agreed.  The rest of the decision (the restriction of the inactive
rows to the null space, the direction and LP searches) stays per sample on the CPU, so a GPU can
save at most the factorisation's share above.  No GPU was available where this was written: the torch path
is tested with torch on the CPU, and on CUDA by a test marked ``cuda`` that has not run yet.

Memory: the outputs (s x m float64; Figure 4 hands over 64 images at a time); on the torch path
``A``'s unit rows once (m x n float64) and, per group of at most ``group`` samples,
``group * n * n`` float64 at most on the device and as much on the host (64 samples of a
784-input layer: about 0.3 GiB each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray
from scipy.linalg import lapack

from ._nullspace import EqualityFactor, ExplicitBasis, certifies_full_rank, square_pick, wide_from_lu
from ._threads import single_blas_pool
from ._validate import as_bounds, as_finite_array, coarse_float_dtype
from .geometry import DEFAULT_RTOL
from .preimage import Preimage, RowNorms, _LayerSystem, _rounding_warning, _row_norms

__all__ = ["preimage_batch", "layer_outputs"]

F64 = NDArray[np.float64]
Factor = Callable[[F64, F64], EqualityFactor]

#: Samples factorised together on the torch path (bounds its memory, see the module docstring).
GROUP = 64


def layer_outputs(A: Any, b: Any, X: Any) -> F64:
    """``ReLU(X A^T + b)`` for inputs ``X`` (s, n): the outputs whose preimages Figure 4 decides,
    as one matrix product (equal to ``np.maximum(A @ x + b, 0)`` per row up to the rounding of
    the product's summation order)."""
    A, b = _layer(A, b)
    return _forward(A, b, _samples(X, "X", A.shape[1]))


def preimage_batch(
    A: Any,
    b: Any,
    Y: Any = None,
    *,
    X: Any = None,
    lower: Any = None,
    upper: Any = None,
    rtol: float = DEFAULT_RTOL,
    device: Any = None,
    group: int = GROUP,
    hints: Any = None,
) -> list[Preimage]:
    """:func:`reluinv.preimage` of every row of ``Y`` (or of ``ReLU(X A^T + b)``) under one layer.

    Args:
        A, b: the layer, shapes (m, n) and (m,).
        Y: layer outputs, shape (s, m), non-negative; or
        X: layer inputs, shape (s, n) (exactly one of Y and X).
        lower, upper, rtol: as for :func:`reluinv.preimage`, the same for every sample.
        device: None (default): each sample's factorisation by LAPACK in this process, the
            computation of :func:`reluinv.preimage`; a torch device (``"cuda"``, ``"cpu"``):
            factorisations batched in torch float64 there (module docstring).
        group: samples per batched factorisation on the torch path.
        hints: inputs thought to lie in the preimages, shape (s, n), one per sample (the
            ``hint`` of :func:`reluinv.preimage`: checked, never trusted); with ``X`` they
            default to ``X``, whose rows are points of their preimages by construction.

    Returns:
        One :class:`Preimage` per sample, in order.

    Warns:
        PrecisionWarning: as :func:`reluinv.preimage` does, once for all samples, where Y is
            float32 or float16 (X is always taken to float64 first).

    Raises:
        ValueError: what :func:`reluinv.preimage` refuses (named), both or neither of Y and X,
            rows of Y, X or hints of the wrong length, hints not one per sample, a non-positive
            ``group``, and a ``device`` that is not a CPU or CUDA torch device present here.

    Example:
        >>> [r.kind for r in preimage_batch([[1, 0], [0, 1], [1, -1]], [0, 0, -1],
        ...                                 [[1, 0, 0], [1, 1, 0]])]
        ['singleton', 'singleton']
    """
    if (Y is None) == (X is None):
        raise ValueError("give exactly one of Y (layer outputs) and X (layer inputs)")
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(f"group must be a positive integer, got {group!r}")
    A, b = _layer(A, b)
    m, n = A.shape
    coarse = None
    if X is not None:
        X = _samples(X, "X", n)
        Y = _forward(A, b, X)
    else:
        coarse = coarse_float_dtype(Y)
        Y = _samples(Y, "Y", m)
        if np.any(Y < 0):
            s, i = (int(v[0]) for v in np.nonzero(Y < 0))
            raise ValueError(f"Y holds ReLU outputs and must be >= 0; Y[{s}, {i}] = {Y[s, i]}")
    lo, up = as_bounds(lower, upper, n)
    H: list[F64 | None] = [None] * Y.shape[0]
    if hints is not None:
        H = list(_samples(hints, "hints", n))
        if len(H) != Y.shape[0]:
            raise ValueError(f"hints must have one row per sample ({Y.shape[0]}), got {len(H)}")
    elif X is not None:  # already checked: every row is a point of its own preimage
        H = list(X)
    norms = _row_norms(A)
    factors: list[Factor] = [EqualityFactor] * Y.shape[0]
    if device is not None:
        dev = _torch_device(device)  # checked even for an empty batch
        factors = _torch_factors(norms, Y, dev, int(group)) if Y.shape[0] else factors
    with single_blas_pool():
        results = [
            _LayerSystem(A, b, y, lo, up, rtol, row_norms=norms, factor=f, hint=h).decide()
            for y, f, h in zip(Y, factors, H, strict=True)
        ]
    if coarse is not None:
        _rounding_warning(results, coarse, n, rtol)
    return results


# --- inputs -----------------------------------------------------------------------------------


def _layer(A: Any, b: Any) -> tuple[F64, F64]:
    A = as_finite_array(A, "A", ndim=2)
    b = as_finite_array(b, "b", ndim=1)
    if b.shape != (A.shape[0],):
        raise ValueError(f"b must have shape ({A.shape[0]},) to match A of shape {A.shape}, got {b.shape}")
    return A, b


def _samples(value: Any, name: str, width: int) -> F64:
    arr = as_finite_array(value, name)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name} must have shape (samples, {width}), got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _forward(A: F64, b: F64, X: F64) -> F64:
    Y: F64 = np.maximum(X @ A.T + b, 0.0)
    return Y


# --- step 1 batched in torch ------------------------------------------------------------------


def _torch_factors(norms: RowNorms, Y: F64, device: Any, group: int) -> list[Factor]:
    """Per sample, a factory of :class:`EqualityFactor` results from batched torch factors."""
    import torch

    dev = _torch_device(device)
    M, row_norm, _shift, zero = norms
    unit = M * (1.0 / np.where(zero, 1.0, row_norm))[:, None]  # the rows E of _LayerSystem
    rows = [np.flatnonzero((y > 0) & ~zero) for y in Y]
    n = unit.shape[1]
    out: list[Factor] = [EqualityFactor] * len(rows)
    unit_t = torch.from_numpy(unit).to(dev)
    order = sorted((r.size, i) for i, r in enumerate(rows) if r.size)  # similar counts together
    for start in range(0, len(order), group):
        chunk = [i for _, i in order[start : start + group]]
        wide = [i for i in chunk if rows[i].size < n]
        tall = [i for i in chunk if rows[i].size >= n]
        if wide:
            for i, f in zip(wide, _wide_factors(unit_t, [rows[i] for i in wide]), strict=True):
                out[i] = f
        if tall:
            for i, f in zip(tall, _tall_factors(unit_t, [rows[i] for i in tall]), strict=True):
                out[i] = f
    return out


def _torch_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` that is present here, or ValueError."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be None or a torch device such as 'cuda' or 'cpu', got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA torch device, got {device!r}")
    return dev


def _wide_factors(unit_t: Any, rows: list[NDArray[np.intp]]) -> list[Factor]:
    """p < n active rows: LU with partial pivoting of ``E^T`` (n x p), padded to the group's
    widest p with zero columns, which come after the real ones and so change none of their
    pivots or factors."""
    import torch

    n = unit_t.shape[1]
    width = max(r.size for r in rows)
    Et = torch.zeros((len(rows), n, width), dtype=torch.float64, device=unit_t.device)
    for j, r in enumerate(rows):
        Et[j, :, : r.size] = unit_t[torch.from_numpy(r).to(unit_t.device)].T
    lu, pivots, _info = torch.linalg.lu_factor_ex(Et)  # the padded columns' zero pivots: ignored
    LU, piv = lu.cpu().numpy(), pivots.cpu().numpy() - 1
    return [_wide_factory(np.asfortranarray(LU[j, :, : r.size]), piv[j]) for j, r in enumerate(rows)]


def _wide_factory(LU: F64, piv: NDArray[np.integer]) -> Factor:
    def factor(E: F64, e: F64) -> EqualityFactor:
        _check_rows(E, LU.shape[1])
        solved = wide_from_lu(E, e, LU, piv)
        if solved is None:
            return EqualityFactor(E, e, lu_refused=True)  # rank not certified: the pivoted QR decides
        x_p, O, rcond = solved
        return _Given(x_p, E.shape[0], rcond, O)

    return factor


def _tall_factors(unit_t: Any, rows: list[NDArray[np.intp]]) -> list[Factor]:
    """p >= n active rows: LU of the n rows that :class:`EqualityFactor` picks, batched."""
    import torch

    n = unit_t.shape[1]
    picks = [r[square_pick(r.size, n)] for r in rows]
    index = torch.from_numpy(np.stack(picks)).to(unit_t.device)
    square = unit_t[index]  # (s, n, n)
    anorm = square.abs().sum(dim=1).amax(dim=1).cpu().numpy()
    lu, pivots, _info = torch.linalg.lu_factor_ex(square)  # singular: dgecon refuses it
    LU, piv = lu.cpu().numpy(), pivots.cpu().numpy().astype(np.int32) - 1
    return [_tall_factory(LU[j], piv[j], float(anorm[j]), r.size, n) for j, r in enumerate(rows)]


def _tall_factory(LU: F64, piv: NDArray[np.int32], anorm: float, p: int, n: int) -> Factor:
    def factor(E: F64, e: F64) -> EqualityFactor:
        _check_rows(E, p)
        rcond = float(lapack.dgecon(LU, anorm, norm="1")[0])
        if not certifies_full_rank(rcond, E.shape):
            return EqualityFactor(E, e, lu_refused=True)  # QR of all rows, then pivoted QR, decide
        x_p = scipy.linalg.lu_solve((LU, piv), e[square_pick(p, n)], check_finite=False)
        return _Given(x_p, n, rcond, np.zeros((n, 0)))

    return factor


def _check_rows(E: F64, p: int) -> None:
    if E.shape[0] != p:  # pragma: no cover - the factors are built from the same active rows
        raise RuntimeError(f"batched factor of {p} active rows used for {E.shape[0]}")


class _Given(EqualityFactor):
    """An :class:`EqualityFactor` whose rank, solution and basis were computed elsewhere."""

    def __init__(self, x_p: F64, rank: int, rank_ratio: float, basis: F64) -> None:
        self.n = x_p.size
        self.x_p, self.rank, self.rank_ratio = x_p, rank, rank_ratio
        self.basis = ExplicitBasis(basis)
