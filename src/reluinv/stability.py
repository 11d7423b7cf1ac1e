"""Inverse stability: layer spectra, condition numbers, Lemma 8 and Lemma 9 (Section 3, App. A5).

On the linear region of an input ``x`` a ReLU network is ``F(x') = J x' + c`` with
``J = A^L D_{I^{L-1}} ... D_{I^1} A^1`` (Definition 7).  The singular values of ``J`` for every
prefix of the network (Figures 5, 6, 8, 10, 11) describe how stable the inverse is: zero singular
values are invariances, and the condition number (largest over smallest *non-zero* singular value)
measures how much the inverse on the row space amplifies errors.

* :func:`spectra` gives one :class:`LayerSpectrum` per module of the flattened ``Sequential``
  (a ReLU is its own layer, as in the legends of Figures 5, 8, 10, 11), computed densely, on a
  spatial input ``window``, or by Lanczos iterations (``method="lanczos"``) without forming ``J``.
* :func:`relu_effect` pairs the spectra just before and just after every ReLU (Figures 8, 10, 11).
* :func:`check_lemma8` checks the global bounds of Lemma 8 for a matrix and an index set.
* :func:`lemma9_counts` / :func:`lemma9_curve` follow the numerical study of Lemma 9 in Appendix A5
  (Figure 9).

Everything is float64.  How the dense spectra are computed fast (all of it exact up to rounding):

1. One forward pass pushes the identity basis of the input (as a batch of tangent vectors)
   through the network with its activation slopes frozen at ``x``; after step ``l`` the batch *is*
   ``J_l^T``, the transposed Jacobian of the prefix ``0..l``.  Nothing is recomputed per prefix.
2. Rows of ``J_l`` that are zero (units a ReLU switched off, or outside a window's reach) do not
   change singular values and are dropped; steps that do not change ``J`` (Flatten, Identity,
   Dropout, a ReLU with every unit active) reuse the previous spectrum.
3. Only singular values are computed (no ``U``/``V``) by LAPACK's divide-and-conquer driver
   (``gesdd`` via ``torch.linalg.svdvals``), never through ``J^T J``.
4. Tall Jacobians of convolutional layers are sparse with a staircase profile (each output unit
   sees a small input window).  Ordering input columns pixel by pixel and output rows by their
   first non-zero column, a blocked Householder QR that only ever touches the active band gives
   the triangular factor ``R`` (``J = Q R``, same singular values) for a small fraction of the cost
   of a dense QR; the SVD then runs on the square ``R``.  A cost model picks this path only when
   it pays (see :func:`staircase_r`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._validate import as_finite_array
from .graph import is_chain
from .graph_spectra import graph_spectra
from .network import (
    AffineStep,
    Step,
    activation_pattern,
    linearize,
    prepare_input,
    push_tangents,
    slopes,
)

__all__ = [
    "Bidiagonalisation",
    "LayerSpectrum",
    "Lemma8Check",
    "Lemma9Curve",
    "ReluEffect",
    "check_lemma8",
    "golub_kahan",
    "lemma9_counts",
    "lemma9_curve",
    "relu_effect",
    "singular_values",
    "spectra",
    "staircase_r",
]

_EPS = float(np.finfo(np.float64).eps)
_DEFAULT_BATCH_BYTES = 2 << 30
#: Cap on the restricted prefix Jacobians kept at once when a window is processed in chunks.
_MAX_STORED_BYTES = 8 << 30


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpectrum:
    """Singular values of the Jacobian of the network up to and including one module.

    Attributes:
        index: position of the module in the flattened ``Sequential``.
        name: ``"<index>:<ClassName>"``, e.g. ``"3:ReLU"``.
        out_dim: number of output units of the module (rows of the Jacobian).
        in_dim: number of input coordinates that vary (columns; with a ``window`` only those).
        singular_values: float64, descending.  ``method="dense"``: all ``min(out_dim, in_dim)`` of
            them (zeros included).  ``method="lanczos"``: the same when the bidiagonalisation
            exhausted the row space (:attr:`complete`), else the ``k`` largest and ``k`` smallest
            non-zero Ritz values (see :attr:`largest`, :attr:`smallest`), without repeats.
        rank: number of singular values above :attr:`rank_tolerance` (``None`` for an incomplete
            Lanczos run, which does not see the whole spectrum).
        rank_tolerance: absolute threshold below which a singular value counts as zero.  Default
            rule (as ``numpy.linalg.matrix_rank``): ``max(out_dim, in_dim) * eps * sigma_max`` with
            ``eps`` the float64 machine epsilon; with ``rank_rtol`` given: ``rank_rtol * sigma_max``.
        condition: ``sigma_max / sigma_min`` with ``sigma_min`` the smallest singular value above
            the tolerance.  ``nan`` when there is none (the Jacobian is zero, rank 0): the inverse
            on the row space is then undefined, and ``nan`` keeps medians over samples honest.
        method: ``"dense"`` or ``"lanczos"``.
        complete: whether :attr:`singular_values` holds the whole spectrum.
        largest: Lanczos only: the ``k`` largest singular values (descending).
        smallest: Lanczos only: the smallest singular values above the tolerance that were found
            (descending); may hold fewer than ``k`` when a null space got in the way.
        null_directions: Lanczos only: Ritz values at or below the rank tolerance (rounding
            noise; the Krylov vectors live in the row space, so this is normally 0).
        steps: Lanczos only: number of bidiagonalisation steps (pairs of ``J v`` and ``J^T u``).
        converged: Lanczos only: the ``k`` largest and ``k`` smallest Ritz values met the residual
            tolerance (or the row space was exhausted).  If False they are still bounds: the
            largest from below, the smallest non-zero from above.
    """

    index: int
    name: str
    out_dim: int
    in_dim: int
    singular_values: NDArray[np.float64]
    rank: int | None
    rank_tolerance: float
    condition: float
    method: str = "dense"
    complete: bool = True
    largest: NDArray[np.float64] | None = None
    smallest: NDArray[np.float64] | None = None
    null_directions: int | None = None
    steps: int | None = None
    converged: bool | None = None


@dataclass(frozen=True)
class ReluEffect:
    """Spectra just before and just after one ReLU (Figures 8, 10, 11).

    ``before`` is the spectrum of the pre-activation map (the prefix up to the module before the
    ReLU; the identity when the ReLU comes first), ``after`` that of the prefix ending with the
    ReLU.  ``removed`` is ``|I|`` (units switched off, Definition 7), ``remaining`` is ``M``.
    """

    index: int
    before: LayerSpectrum
    after: LayerSpectrum
    removed: int
    remaining: int


@dataclass(frozen=True)
class Lemma8Check:
    """Both bounds of Lemma 8 for ``D_I A`` against ``A``.

    Attributes:
        smallest_nonzero: ``min{sigma_l > 0}`` of ``D_I A`` (``nan`` if ``D_I A`` is zero).
        smallest_bound: ``sigma~_k`` of ``A`` with ``k = N - |I|`` (``inf`` when ``k < 1``: the
            lemma then says nothing).
        largest: ``max sigma_l`` of ``D_I A`` (0 if ``D_I A`` is zero).
        largest_bound: ``sigma~_1`` of ``A``.
        smallest_holds, largest_holds: whether each bound holds up to ``tolerance``.
        holds: both hold.
        k: ``N - |I|``; ``n_nonzero``: ``N``, the number of non-zero singular values of ``A``;
        removed: ``|I|``.
        tolerance: absolute slack allowed in the comparisons and used to call a singular value
            zero: ``max(m, n) * eps * sigma~_1``.
    """

    smallest_nonzero: float
    smallest_bound: float
    largest: float
    largest_bound: float
    smallest_holds: bool
    largest_holds: bool
    k: int
    n_nonzero: int
    removed: int
    tolerance: float

    @property
    def holds(self) -> bool:
        return self.smallest_holds and self.largest_holds


@dataclass(frozen=True)
class Lemma9Curve:
    """Appendix A5 / Figure 9: how many remaining rows satisfy condition (3) of Lemma 9.

    Attributes:
        cs: the constants ``c`` (as given).
        counts: ``counts[j]`` = the largest, over removed rows ``a_k`` (``k`` in ``I``), number of
            remaining rows ``a_i`` (``i`` not in ``I``) with
            ``|<a_i, a_k>| <= cs[j] * ||a_k|| / sqrt(M)`` (A5 steps 2-4).
        remaining: ``M = m - |I|`` (the red line of Figure 9).
        removed: ``|I|``.
        c_star: the smallest ``c`` for which some ``a_k`` has all ``M`` remaining rows satisfying
            (3) (A5 step 5), computed exactly: ``min_k sqrt(M) max_i |<a_i, a_k>| / ||a_k||``.
            ``nan`` when no row is removed or every removed row is zero.
        best_k: the unit ``k`` attaining ``c_star`` (``-1`` when ``c_star`` is ``nan``).
        best_k_in_row_space: whether ``a_{best_k}`` lies in ``N(D_I A)^perp`` (the row space of
            the remaining rows), the hypothesis of Lemma 9 that A5 step 4 ignores; ``None`` if not
            checked.
        layer: module index of the ReLU (model wrapper only, else ``None``).
        sigma_min_after, sigma_max_after: smallest non-zero and largest singular value of
            ``D_I A`` (``None`` if not computed), to compare with the bound ``c_star``.
    """

    cs: NDArray[np.float64]
    counts: NDArray[np.intp]
    remaining: int
    removed: int
    c_star: float
    best_k: int
    best_k_in_row_space: bool | None = None
    layer: int | None = None
    sigma_min_after: float | None = None
    sigma_max_after: float | None = None


# --------------------------------------------------------------------------------------------
# Singular values of one Jacobian
# --------------------------------------------------------------------------------------------


def _staircase_profile(J: NDArray[np.float64]) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    nonzero = J != 0
    n = J.shape[1]
    first = nonzero.argmax(axis=1)
    last = n - 1 - nonzero[:, ::-1].argmax(axis=1)
    order = np.argsort(first, kind="stable")
    return order, first, last


def _qr_flops(rows: int, cols: int) -> float:
    if rows >= cols:
        return 2.0 * cols * cols * (rows - cols / 3.0)
    return 2.0 * rows * rows * (cols - rows / 3.0)


def _staircase_blocks(
    order: NDArray[np.intp], first: NDArray[np.intp], last: NDArray[np.intp], n: int, block_rows: int
) -> Iterator[tuple[NDArray[np.intp], int, int, int]]:
    """Yield ``(rows, lo, hi, next_lo)`` for the blocked staircase QR (``lo`` ignores the carry)."""
    m = order.size
    hi = 0
    for start in range(0, m, block_rows):
        rows = order[start : start + block_rows]
        hi = max(hi, int(last[rows].max()) + 1)
        next_lo = int(first[order[start + block_rows]]) if start + block_rows < m else n
        yield rows, int(first[rows[0]]), hi, next_lo


def _staircase_cost(order, first, last, n: int, block_rows: int) -> float:
    flops, carry_rows, carry_lo = 0.0, 0, None
    for rows, lo, hi, next_lo in _staircase_blocks(order, first, last, n, block_rows):
        lo = carry_lo if carry_rows else lo
        height, width = carry_rows + rows.size, hi - lo
        flops += _qr_flops(height, width)
        carry_rows = max(0, min(height, width) - (next_lo - lo))
        carry_lo = next_lo
    return flops


def staircase_r(J: NDArray[np.float64], *, block_rows: int = 1024) -> NDArray[np.float64]:
    """A triangular factor ``R`` (at most ``n x n``) of ``J = Q R`` (m x n, ``Q`` orthonormal
    columns), so ``R`` has the singular values of ``J``, from a blocked Householder QR that
    exploits sparsity.

    Sort the rows by their first non-zero column.  Process them in blocks: stack the block under
    the not yet final rows of the previous triangular factor (the *carry*), restricted to the
    columns they touch, and QR-factorise that small dense matrix.  Rows of the new factor whose
    pivot column lies left of every later row's first non-zero column can never change again:
    they are final rows of ``R``.  The rest is the next carry.  For a convolutional Jacobian with
    pixel-major columns the blocks touch a band of a few image rows, so the cost is
    ``O(m * width^2)`` instead of ``O(m * n^2)``.  Never forms ``J^T J``.

    Args:
        J: dense ``(m, n)`` float64 array; zero rows are allowed (they are skipped).
        block_rows: rows per block (1024 measured best on the WideCIFAR Jacobians).

    Returns:
        ``R`` of shape ``(r, n)`` with ``r <= n``; ``svdvals(R)`` equals ``svdvals(J)`` up to zeros.

    Example::

        J = np.kron(np.eye(50), np.ones((3, 2)))      # block-diagonal 150 x 100
        np.allclose(svdvals(staircase_r(J)), svdvals(J)[:100])
    """
    J = np.asarray(J, dtype=np.float64)
    m, n = J.shape
    keep = np.flatnonzero((J != 0).any(axis=1))
    if keep.size < m:
        J = J[keep]
    if J.shape[0] == 0:
        return np.zeros((0, n))
    order, first, last = _staircase_profile(J)
    return _staircase_r_profiled(J, order, first, last, block_rows)


def _staircase_r_profiled(J, order, first, last, block_rows: int) -> NDArray[np.float64]:
    n = J.shape[1]
    out = np.zeros((n, n))
    n_out = 0
    carry = np.zeros((0, 0))
    carry_lo = carry_hi = 0
    for rows, block_lo, hi, next_lo in _staircase_blocks(order, first, last, n, block_rows):
        lo = carry_lo if carry.shape[0] else block_lo
        height = carry.shape[0] + rows.size
        stacked = np.zeros((height, hi - lo))
        if carry.shape[0]:
            stacked[: carry.shape[0], carry_lo - lo : carry_hi - lo] = carry
        stacked[carry.shape[0] :] = J[rows, lo:hi]
        # torch's QR (LAPACK geqrf behind it) measured faster here than scipy's on these sizes.
        R = torch.linalg.qr(torch.from_numpy(stacked), mode="r")[1].numpy()
        final = min(next_lo - lo, R.shape[0])
        out[n_out : n_out + final, lo:hi] = R[:final]
        n_out += final
        carry = R[final:, next_lo - lo :] if final < R.shape[0] else np.zeros((0, 0))
        carry_lo, carry_hi = next_lo, hi
    if carry.shape[0]:
        out[n_out : n_out + carry.shape[0], carry_lo:carry_hi] = carry
        n_out += carry.shape[0]
    return out[:n_out]


def singular_values(J: NDArray[np.float64] | torch.Tensor, *, transposed: bool = False) -> NDArray[np.float64]:
    """All ``min(m, n)`` singular values of ``J`` (m x n), descending, float64.

    Zero rows are dropped first (they do not change singular values; after a ReLU half the rows
    are zero).  On CUDA tensors: QR first when tall, then ``torch.linalg.svdvals`` on the device.
    On the CPU: :func:`staircase_r` when its cost model predicts less than half the work of a
    dense QR (sparse convolutional Jacobians), then LAPACK ``gesdd`` (values only, through
    ``torch.linalg.svdvals``) on the factor or on ``J`` itself.  Never forms ``J^T J``.

    Args:
        J: the matrix, as a numpy array or torch tensor (any device).
        transposed: ``J`` is given as its transpose (``n x m``), as the forward pass produces it.

    Example::

        singular_values(np.diag([3.0, 1.0, 2.0]))      # array([3., 2., 1.])
    """
    Jt = torch.as_tensor(J, dtype=torch.float64)
    if Jt.dim() != 2:
        raise ValueError(f"J must be 2-dimensional, got shape {tuple(Jt.shape)}")
    if not bool(torch.isfinite(Jt).all()):
        raise ValueError("J contains NaN or infinite entries")
    if not transposed:
        Jt = Jt.T
    n, m = Jt.shape  # Jt is J^T: n input columns, m output rows
    full = min(n, m)
    if full == 0:
        return np.zeros(0)
    live = (Jt != 0).any(dim=0)
    if not bool(live.all()):
        Jt = Jt[:, live]
    rows = Jt.shape[1]
    if rows == 0:
        return np.zeros(full)
    if Jt.is_cuda:
        A = Jt.T
        if rows > n:
            A = torch.linalg.qr(A, mode="r")[1]
        values = torch.linalg.svdvals(A).cpu().numpy()
    else:
        A_np = Jt.T.contiguous().numpy()
        values = None
        if rows > n:
            order, first, last = _staircase_profile(A_np)
            if _staircase_cost(order, first, last, n, 1024) < 0.5 * _qr_flops(rows, n):
                R = _staircase_r_profiled(A_np, order, first, last, 1024)
                values = torch.linalg.svdvals(torch.from_numpy(R)).numpy()
        if values is None:
            values = torch.linalg.svdvals(torch.from_numpy(A_np)).numpy()
    out = np.zeros(full)
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1][:full]
    out[: values.size] = values
    return out


def _rank_tolerance(values: NDArray[np.float64], shape: tuple[int, int], rank_rtol: float | None) -> float:
    top = float(values[0]) if values.size else 0.0
    if rank_rtol is not None:
        return float(rank_rtol) * top
    return max(shape) * _EPS * top


def _make_spectrum(step: Step, in_dim: int, values: NDArray[np.float64], rank_rtol: float | None) -> LayerSpectrum:
    tol = _rank_tolerance(values, (step.out_dim, in_dim), rank_rtol)
    nonzero = values[values > tol]
    return LayerSpectrum(
        index=step.index,
        name=step.name,
        out_dim=step.out_dim,
        in_dim=in_dim,
        singular_values=values,
        rank=int(nonzero.size),
        rank_tolerance=tol,
        condition=float(nonzero[0] / nonzero[-1]) if nonzero.size else math.nan,
    )


# --------------------------------------------------------------------------------------------
# Prefix Jacobians in one pass
# --------------------------------------------------------------------------------------------


def _input_columns(in_shape: tuple[int, ...], window: Sequence[int] | None) -> NDArray[np.intp]:
    """Flat indices of the varying input coordinates, pixel-major for images (see staircase_r)."""
    if len(in_shape) != 3:
        if window is not None:
            raise ValueError(f"window needs an image input of shape (C, H, W), got input shape {in_shape}")
        return np.arange(math.prod(in_shape), dtype=np.intp)
    channels, height, width = in_shape
    index = np.arange(channels * height * width, dtype=np.intp).reshape(channels, height, width)
    if window is not None:
        try:
            top, left, win_h, win_w = (int(v) for v in window)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"window must be (top, left, height, width), got {window!r}") from exc
        if win_h < 1 or win_w < 1 or top < 0 or left < 0 or top + win_h > height or left + win_w > width:
            raise ValueError(
                f"window (top={top}, left={left}, height={win_h}, width={win_w}) must lie inside the "
                f"{height} x {width} input and be non-empty"
            )
        index = index[:, top : top + win_h, left : left + win_w]
    return np.ascontiguousarray(index.transpose(1, 2, 0)).reshape(-1)


def _unchanged(step: Step, slope: torch.Tensor | None) -> bool:
    if isinstance(step, AffineStep):
        return step.is_identity
    return step.kind == "relu" and slope is not None and bool((slope != 0).all())


def _basis(columns: NDArray[np.intp], in_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    in_dim = math.prod(in_shape)
    basis = torch.zeros(columns.size, in_dim, dtype=torch.float64, device=device)
    basis[torch.arange(columns.size, device=device), torch.as_tensor(columns, device=device)] = 1.0
    return basis.reshape(columns.size, *in_shape)


def _prefix_jacobians(
    chain: Sequence[Step],
    slope_by_index: dict[int, torch.Tensor],
    in_shape: tuple[int, ...],
    columns: NDArray[np.intp],
    device: torch.device,
    batch_bytes: int,
) -> Iterator[tuple[Step, torch.Tensor | None]]:
    """Yield ``(step, J_l^T)`` per step, ``J_l^T`` restricted to columns (= output units) that can
    be non-zero, or ``None`` when the step does not change the Jacobian."""
    n_cols = columns.size
    widest = max([math.prod(in_shape)] + [s.out_dim for s in chain])
    if 2 * 8 * n_cols * widest <= batch_bytes:
        # Everything fits: one batch, one pass, each J_l freed as soon as it is used.
        tangents = _basis(columns, in_shape, device)
        for step in chain:
            slope = slope_by_index.get(step.index)
            if _unchanged(step, slope):
                yield step, None
                tangents = tangents.reshape(n_cols, *step.out_shape)
                continue
            tangents = step.apply_linear(tangents) if isinstance(step, AffineStep) else tangents * slope
            yield step, tangents.reshape(n_cols, -1)
        return
    # Too big for one batch (a window on a large image): store each J_l^T only on the units the
    # window can reach (receptive field), filled chunk by chunk.
    reach = torch.zeros(math.prod(in_shape), dtype=torch.float64, device=device)
    reach[torch.as_tensor(columns, device=device)] = 1.0
    reach = reach.reshape(1, *in_shape)
    supports: list[torch.Tensor | None] = []
    for step in chain:
        slope = slope_by_index.get(step.index)
        if isinstance(step, AffineStep):
            reach = step.apply_abs_linear(reach)
        else:
            reach = reach * (slope != 0)
        supports.append(None if _unchanged(step, slope) else torch.nonzero(reach.reshape(-1) > 0).reshape(-1))
    stored = sum(int(s.numel()) for s in supports if s is not None)
    if 8 * n_cols * stored > _MAX_STORED_BYTES:
        raise ValueError(
            f"the Jacobians of all prefixes restricted to the {n_cols} varying inputs need "
            f"{8 * n_cols * stored / 2**30:.1f} GiB; use a smaller window or method='lanczos'"
        )
    blocks = [None if s is None else torch.zeros(n_cols, s.numel(), dtype=torch.float64) for s in supports]
    chunk = max(1, batch_bytes // (2 * 8 * widest))
    for start in range(0, n_cols, chunk):
        stop = min(n_cols, start + chunk)
        tangents = _basis(columns[start:stop], in_shape, device)
        for step, support, block in zip(chain, supports, blocks):
            if support is None:
                tangents = tangents.reshape(stop - start, *step.out_shape)
                continue
            slope = slope_by_index.get(step.index)
            tangents = step.apply_linear(tangents) if isinstance(step, AffineStep) else tangents * slope
            block[start:stop] = tangents.reshape(stop - start, -1)[:, support].cpu()
    for step, block in zip(chain, blocks):
        yield step, None if block is None else block.to(device)


# --------------------------------------------------------------------------------------------
# spectra()
# --------------------------------------------------------------------------------------------


def spectra(
    model: nn.Module,
    x: Any,
    *,
    method: str = "dense",
    k: int = 6,
    window: Sequence[int] | None = None,
    rank_rtol: float | None = None,
    batch_bytes: int = _DEFAULT_BATCH_BYTES,
    lanczos_tol: float = 1e-10,
    max_steps: int = 500,
) -> list[LayerSpectrum]:
    """Singular values of the Jacobian of every prefix of the network at ``x`` (Section 3.2).

    Entry ``l`` describes ``J_l``, the Jacobian at ``x`` of modules ``0..l`` of the flattened
    ``Sequential`` (a ReLU counts as its own layer, as in Figures 5, 8, 10, 11), i.e. the matrix
    chain ``A_P`` of Definition 7 cut after module ``l``.  For ReLU networks ``J_l`` is exact on the
    whole linear region of ``x``; with LeakyReLU/ELU/Tanh it is the local Jacobian.

    Args:
        model: a supported ``Sequential`` (see :mod:`reluinv.network`).
        x: one input sample (tensor or array, with or without leading batch dimension 1).  The
            computation runs on ``x``'s device when ``x`` is a tensor, else on the model's; CUDA
            results match the CPU ones.
        method: ``"dense"`` (every singular value; see the module docstring for how) or
            ``"lanczos"`` (the ``k`` largest and ``k`` smallest non-zero singular values from
            Jacobian-vector and vector-Jacobian products, never forming ``J``; see below).
        k: number of largest and of smallest singular values for ``method="lanczos"``.
        window: ``(top, left, height, width)``: only the input pixels in that window vary (all
            channels), the rest stay fixed at ``x``; the spectrum is that of ``J_l`` restricted to
            those columns (Section 3.2, "restriction to a window").  Needs an image input.
        rank_rtol: relative rank tolerance; default ``max(out_dim, in_dim) * eps``.
        batch_bytes: memory for one batch of tangent vectors (default 2 GiB); larger problems are
            processed in chunks, keeping only the units the varying inputs can reach (at most
            8 GiB of such restricted Jacobians, else a ``ValueError`` suggests a smaller window).
        lanczos_tol: relative residual at which Lanczos stops (``method="lanczos"``).
        max_steps: at most this many Lanczos steps per layer; memory ``max_steps * (rows + columns)``
            float64 numbers.

    Returns:
        One :class:`LayerSpectrum` per module, in order.

    Lanczos and null spaces (``method="lanczos"``, see :func:`golub_kahan`): rows of ``J`` that are
    zero by structure (units switched off by a ReLU, or out of reach of a window) are left out, and
    Golub-Kahan bidiagonalisation runs on ``v -> J v`` (a forward pass through the masked network)
    and ``u -> J^T u`` (its vector-Jacobian product), started in the output space so that every
    right Krylov vector lies in the row space ``N(J)^perp``.  What is computed are the singular
    values of ``J`` *restricted to a growing subspace of its row space*: the largest converge
    quickly from below; the smallest are upper bounds on the smallest non-zero singular value that
    reach it once the Krylov space has explored the bottom of the spectrum, and are exact when the
    process exhausts the row space (``complete=True``, always for ``rank <= max_steps``).  The null
    space of ``J`` is never entered, so zero singular values cannot masquerade as small ones; the
    price is that the *number* of zero singular values (the rank) is only known when complete, and
    that singular values below about ``1.5e-8 * sigma_max`` may be missed (see :func:`golub_kahan`).

    Example::

        model = zoo.thin_cifar().eval()
        layers = spectra(model, torch.rand(3, 32, 32))
        [(s.name, s.rank, s.condition) for s in layers]
    """
    if method not in ("dense", "lanczos"):
        raise ValueError(f"method must be 'dense' or 'lanczos', got {method!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if rank_rtol is not None and not (math.isfinite(rank_rtol) and rank_rtol >= 0):
        raise ValueError(f"rank_rtol must be a non-negative number, got {rank_rtol!r}")
    if not is_chain(model):  # residual, pooling, concatenation: layers are nonlinear graph nodes
        return graph_spectra(model, x, method=method, k=k, window=window, rank_rtol=rank_rtol,
                             lanczos_tol=lanczos_tol, max_steps=max_steps)
    sample, chain = prepare_input(model, x)
    in_shape = tuple(sample.shape)
    columns = _input_columns(in_shape, window)
    slope_by_index = slopes(chain, sample)
    device = sample.device
    if method == "lanczos":
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        return _lanczos_spectra(chain, slope_by_index, in_shape, columns, device, int(k), rank_rtol, lanczos_tol, int(max_steps))
    out: list[LayerSpectrum] = []
    previous: NDArray[np.float64] | None = None
    for step, jacobian_t in _prefix_jacobians(chain, slope_by_index, in_shape, columns, device, batch_bytes):
        if jacobian_t is None:
            if previous is None:  # the identity map: all singular values are one
                previous = np.ones(min(columns.size, step.out_dim))
            values = previous
        else:
            values = singular_values(jacobian_t, transposed=True)
            # A dropped zero row lowers the count below min(out_dim, in_dim); pad with zeros.
            values = np.concatenate([values, np.zeros(min(step.out_dim, columns.size) - values.size)])
        previous = values
        out.append(_make_spectrum(step, columns.size, values.copy(), rank_rtol))
    return out


# --------------------------------------------------------------------------------------------
# Lanczos (Golub-Kahan bidiagonalisation on the row space)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bidiagonalisation:
    """Result of :func:`golub_kahan`.

    Attributes:
        ritz_values: singular values of ``J`` restricted to the Krylov subspace, descending.
        residuals: residual norm of each Ritz triple (same order); 0 means exact.
        steps: bidiagonalisation steps taken (pairs of ``J v`` and ``J^T u``).
        exhausted: the Krylov space is the whole row space, so ``ritz_values`` are exactly the
            non-zero singular values (down to about ``sqrt(eps) * sigma_max``).
    """

    ritz_values: NDArray[np.float64]
    residuals: NDArray[np.float64]
    steps: int
    exhausted: bool


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    # Two passes of classical Gram-Schmidt ("twice is enough") keep full orthogonality.
    for _ in range(2):
        if basis.shape[0]:
            w = w - basis.T @ (basis @ w)
    return w


def golub_kahan(
    matvec: Any,
    rmatvec: Any,
    shape: tuple[int, int],
    *,
    k: int,
    max_steps: int,
    tol: float = 1e-10,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Bidiagonalisation:
    """Ritz approximations of the singular values of ``J`` (m x n) from ``J v`` and ``J^T u``.

    Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation, started from a random
    vector in the *output* space: ``beta_1 u_1 = b``, ``alpha_1 v_1 = J^T u_1``, then
    ``beta_{i+1} u_{i+1} = J v_i - alpha_i u_i`` and ``alpha_{i+1} v_{i+1} = J^T u_{i+1} - beta_{i+1} v_i``.
    Every ``v_i`` is in the range of ``J^T``, i.e. in the row space ``N(J)^perp``, and
    ``J V_p = U_{p+1} B_p`` with ``B_p`` lower bidiagonal, so the Ritz values ``svd(B_p)`` are the
    singular values of ``J`` restricted to a ``p``-dimensional subspace of its row space.  Hence
    (Cauchy interlacing) the ``i``-th largest Ritz value is at most ``sigma_i`` and the smallest is
    at least the smallest *non-zero* singular value of ``J``: null directions never appear.  When
    ``alpha`` or ``beta`` vanishes the process restarts with a fresh direction (so repeated
    singular values are found too); when no fresh row-space direction exists, ``V_p`` spans the row
    space and the Ritz values are exactly the non-zero singular values (``exhausted``).

    Couplings ``alpha`` or ``beta`` below ``sqrt(eps) * sigma_max`` count as breakdowns: dividing
    by them would amplify rounding errors into spurious (null-space) directions.  This perturbs the
    Ritz values by at most ``sqrt(eps) * sigma_max`` (about ``1.5e-8`` relative) and means that
    singular values below that level may go unseen.

    Stops when exhausted, after ``max_steps`` steps, or when the ``k`` largest and ``k`` smallest
    Ritz values have residuals ``alpha_{p+1} |e_{p+1}^T P_i| <= tol * sigma_max`` (not right after
    a restart).  A converged smallest Ritz value is a singular value of ``J`` but, before
    exhaustion, possibly not the smallest one (Krylov methods reach the bottom of an
    ill-conditioned spectrum slowly).

    Example::

        J = torch.diag(torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64))
        golub_kahan(lambda v: J @ v, lambda u: J.T @ u, (3, 3), k=1, max_steps=10).ritz_values
        # array([3., 2.]): the null direction never appears

    Args:
        matvec, rmatvec: ``v -> J v`` and ``u -> J^T u`` on 1-d torch float64 tensors.
        shape: ``(m, n)``.
        k: how many values at each end must converge.
        max_steps: at most this many ``(J v, J^T u)`` pairs; memory ``max_steps * (m + n) * 8`` bytes.
        tol: relative residual tolerance.
        seed: for the random start (and restarts).
    """
    m, n = shape
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    limit = max(1, min(max_steps, m, n))

    def random(size: int) -> torch.Tensor:
        return torch.randn(size, generator=generator, dtype=torch.float64).to(device)

    U = torch.zeros(limit + 1, m, dtype=torch.float64, device=device)
    V = torch.zeros(limit + 1, n, dtype=torch.float64, device=device)
    alphas: list[float] = []
    betas: list[float] = []  # betas[i] couples u_{i+1} to v_i (0-based: B[i+1, i])
    scale = 0.0  # running estimate of sigma_max for the breakdown tests

    def fresh_right(p: int, threshold: float) -> torch.Tensor | None:
        # A new row-space direction orthogonal to V[:p], or None if the row space is exhausted:
        # J^T u is in the row space for every u, so only its part outside span(V) can be new.
        for _ in range(3):
            u_random = random(m)
            w = rmatvec(u_random / torch.linalg.norm(u_random))
            before = float(torch.linalg.norm(w))
            w = _orthogonalise(w, V[:p])
            after = float(torch.linalg.norm(w))
            if after > max(1e-10 * before, threshold):
                return w / after
        return None

    u = random(m)
    U[0] = u / torch.linalg.norm(u)
    w = rmatvec(U[0])
    alpha = float(torch.linalg.norm(w))
    exhausted = False
    if alpha == 0.0:
        v = fresh_right(0, 0.0)
        if v is None:  # J = 0
            return Bidiagonalisation(np.zeros(0), np.zeros(0), 0, True)
    else:
        v = w / alpha
    V[0] = v
    alphas.append(alpha)
    p = 1
    last_check = 0
    ritz = residual = np.zeros(0)
    while True:
        # beta_{p+1} u_{p+1} = J v_p - alpha_p u_p
        w = matvec(V[p - 1]) - alphas[-1] * U[p - 1]
        w = _orthogonalise(w, U[:p])
        beta = float(torch.linalg.norm(w))
        scale = max(scale, alphas[-1], beta)
        # Dividing by a tiny alpha or beta would blow rounding errors up into spurious directions
        # (null-space leakage); treating couplings below sqrt(eps) * sigma_max as breakdowns
        # costs at most that much accuracy in the Ritz values.
        breakdown = math.sqrt(_EPS) * max(scale, 1e-300)
        if beta > breakdown:
            U[p] = w / beta
        else:
            beta = 0.0  # J v_p lies in span(U): restart the left side with a fresh direction
            fresh = _orthogonalise(random(m), U[:p])
            norm = float(torch.linalg.norm(fresh))
            if norm <= 1e-10:
                exhausted = True
            else:
                U[p] = fresh / norm
        betas.append(beta)
        # alpha_{p+1} v_{p+1} = J^T u_{p+1} - beta_{p+1} v_p
        next_alpha, next_v = 0.0, None
        if not exhausted:
            w = _orthogonalise(rmatvec(U[p]) - beta * V[p - 1], V[:p])
            next_alpha = float(torch.linalg.norm(w))
            if next_alpha > breakdown:
                next_v = w / next_alpha
            else:
                next_alpha = 0.0
                if p < limit:
                    next_v = fresh_right(p, breakdown)
                    exhausted = next_v is None
                else:
                    exhausted = p >= min(m, n)
        stopping = exhausted or p >= limit
        # The small SVD of B costs O(p^3); testing convergence every ~p/8 steps keeps it minor.
        if stopping or (p >= 2 * k and p - last_check >= max(1, p // 8)):
            last_check = p
            B = np.zeros((p + 1, p))
            B[np.arange(p), np.arange(p)] = alphas
            B[np.arange(1, p + 1), np.arange(p)] = betas
            P, ritz, _ = np.linalg.svd(B, full_matrices=False)
            residual = next_alpha * np.abs(P[-1])
            top = float(ritz[0]) if ritz.size else 0.0
            ends = np.r_[residual[:k], residual[-k:]]
            # Right after a breakdown the residuals vanish (the values found are exact) but a
            # fresh direction may still hide larger or smaller values: keep going then.
            if stopping or (next_alpha > 0 and bool(np.all(ends <= tol * top))):
                break
        V[p] = next_v
        alphas.append(next_alpha)
        p += 1
    return Bidiagonalisation(ritz, residual, p, exhausted or p >= min(m, n))


def _jacobian_operator(prefix, slope_by_index, in_shape, columns_t, rows):
    """``v -> J v`` and ``u -> J^T u`` for ``J`` restricted to the varying input columns and the
    reachable rows, matrix-free (one pass through the masked network each)."""
    in_dim = math.prod(in_shape)
    device = columns_t.device
    n = columns_t.numel()

    def forward(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (m,)
        full = torch.zeros(in_dim, dtype=torch.float64, device=device)
        full[columns_t] = v
        image = push_tangents(prefix, slope_by_index, full.reshape(1, *in_shape))
        return image.reshape(-1)[rows]

    # The map is linear, so its vjp at 0 is the exact transpose; build it once and reuse it.
    _, pullback = torch.func.vjp(forward, torch.zeros(n, dtype=torch.float64, device=device))

    def matvec(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return forward(v)

    def rmatvec(u: torch.Tensor) -> torch.Tensor:
        return pullback(u)[0].detach()

    return matvec, rmatvec


def _lanczos_spectra(chain, slope_by_index, in_shape, columns, device, k, rank_rtol, tol, max_steps) -> list[LayerSpectrum]:
    in_dim = math.prod(in_shape)
    n = columns.size
    columns_t = torch.as_tensor(columns, device=device)
    reach = torch.zeros(in_dim, dtype=torch.float64, device=device)
    reach[columns_t] = 1.0
    reach = reach.reshape(1, *in_shape)
    out: list[LayerSpectrum] = []
    for depth, step in enumerate(chain):
        slope = slope_by_index.get(step.index)
        reach = step.apply_abs_linear(reach) if isinstance(step, AffineStep) else reach * (slope != 0)
        if depth > 0 and _unchanged(step, slope):
            previous = out[-1].__dict__
            out.append(LayerSpectrum(**{**previous, "index": step.index, "name": step.name, "out_dim": step.out_dim}))
            continue
        # Rows that are zero by structure (switched off or out of reach) are left out of the operator.
        rows = torch.nonzero(reach.reshape(-1) > 0).reshape(-1)
        matvec, rmatvec = _jacobian_operator(chain[: depth + 1], slope_by_index, in_shape, columns_t, rows)
        result = golub_kahan(matvec, rmatvec, (int(rows.numel()), n), k=k, max_steps=max_steps, tol=tol, device=device)
        out.append(_lanczos_spectrum(step, n, result, k, rank_rtol, tol))
    return out


def _lanczos_spectrum(
    step: Step, n: int, result: Bidiagonalisation, k: int, rank_rtol: float | None, tol: float
) -> LayerSpectrum:
    ritz = result.ritz_values
    ends = np.r_[result.residuals[:k], result.residuals[-k:]]
    converged = result.exhausted or bool(np.all(ends <= tol * (ritz[0] if ritz.size else 0.0)))
    tolerance = _rank_tolerance(ritz, (step.out_dim, n), rank_rtol)
    nonzero = ritz[ritz > tolerance]
    null = int(ritz.size - nonzero.size)  # rounding only: the Ritz vectors lie in the row space
    largest, smallest = nonzero[:k].copy(), nonzero[-k:].copy()
    if result.exhausted:
        values = np.zeros(min(step.out_dim, n))
        values[: nonzero.size] = nonzero
        rank: int | None = int(nonzero.size)
    else:
        values = np.unique(np.concatenate([largest, smallest]))[::-1]
        rank = None
    return LayerSpectrum(
        index=step.index,
        name=step.name,
        out_dim=step.out_dim,
        in_dim=n,
        singular_values=values,
        rank=rank,
        rank_tolerance=tolerance,
        condition=float(nonzero[0] / nonzero[-1]) if nonzero.size else math.nan,
        method="lanczos",
        complete=result.exhausted,
        largest=largest,
        smallest=smallest,
        null_directions=null,
        steps=result.steps,
        converged=converged,
    )


# --------------------------------------------------------------------------------------------
# Effect of one ReLU (Figures 8, 10, 11)
# --------------------------------------------------------------------------------------------


def relu_effect(model: nn.Module, x: Any, **spectra_options: Any) -> list[ReluEffect]:
    """Spectra just before and just after every ReLU (Figures 8, 10, 11).

    ``before`` is the spectrum of ``A`` (the map to the ReLU's pre-activation), ``after`` that of
    ``D_I A``; Lemma 8 bounds how the two relate.  Keyword options go to :func:`spectra`.

    Returns:
        One :class:`ReluEffect` per ``ReLU`` module, in order; plot ``effect.before.singular_values``
        and ``effect.after.singular_values`` against their index, as the figures do.

    Example::

        for e in relu_effect(zoo.mlp_table1().eval(), torch.rand(784)):
            print(e.index, e.removed, e.before.condition, e.after.condition)
    """
    layers = spectra(model, x, **spectra_options)
    pattern = activation_pattern(model, x)
    effects = []
    for position, layer in enumerate(layers):
        if layer.index not in pattern:
            continue
        if position > 0:
            before = layers[position - 1]
        else:
            ones = np.ones(min(layer.out_dim, layer.in_dim))
            before = LayerSpectrum(-1, "input", layer.out_dim, layer.in_dim, ones, ones.size, 0.0, 1.0)
        removed = int(pattern[layer.index].size)
        effects.append(ReluEffect(layer.index, before, layer, removed, layer.out_dim - removed))
    return effects


# --------------------------------------------------------------------------------------------
# Lemma 8
# --------------------------------------------------------------------------------------------


def _index_set(inactive: Any, m: int, name: str = "I") -> NDArray[np.intp]:
    arr = np.asarray(inactive)
    if arr.dtype == bool:
        if arr.shape != (m,):
            raise ValueError(f"{name} as a boolean mask must have shape ({m},), got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.size == 0:
        return np.zeros(0, dtype=np.intp)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-d array of row indices or a boolean mask of length {m}")
    if arr.min() < 0 or arr.max() >= m:
        raise ValueError(f"{name} has indices outside [0, {m})")
    out = np.unique(arr.astype(np.intp))
    if out.size != arr.size:
        raise ValueError(f"{name} has repeated indices")
    return out


def check_lemma8(A: Any, I: Any) -> Lemma8Check:
    """Check Lemma 8 for ``A`` (m x n) and the index set ``I`` (rows that ReLU switches off).

    Lemma 8: with ``sigma~_1 >= ... >= sigma~_N > 0`` the non-zero singular values of ``A`` and
    ``sigma_l`` those of ``D_I A`` (``A`` with the rows in ``I`` zeroed),

    * ``min{sigma_l > 0} <= sigma~_k`` with ``k = N - |I|`` (when ``k >= 1``), and
    * ``max{sigma_l} <= sigma~_1``.

    Both hold for every index set, admissible or not (interlacing); admissibility (Definition 7)
    only matters for reading ``D_I`` as the effect of a ReLU.

    Args:
        A: ``(m, n)`` array.
        I: row indices (1-d integer array) or a boolean mask of length ``m``.

    Returns:
        A :class:`Lemma8Check` with both sides of both bounds and whether they hold.

    Example::

        A = np.random.default_rng(0).standard_normal((6, 3))
        I = np.flatnonzero(A @ np.ones(3) + 0.1 <= 0)       # an admissible set
        check_lemma8(A, I).holds                               # True
    """
    A = as_finite_array(A, "A", ndim=2)
    m, n = A.shape
    rows = _index_set(I, m)
    sigma_a = singular_values(A) if min(m, n) else np.zeros(0)
    top = float(sigma_a[0]) if sigma_a.size else 0.0
    tol = max(m, n) * _EPS * top
    nonzero_a = sigma_a[sigma_a > tol]
    reduced = A.copy()
    reduced[rows] = 0.0
    sigma_r = singular_values(reduced) if min(m, n) else np.zeros(0)
    nonzero_r = sigma_r[sigma_r > tol]
    N, k = int(nonzero_a.size), int(nonzero_a.size) - int(rows.size)
    smallest = float(nonzero_r[-1]) if nonzero_r.size else math.nan
    smallest_bound = float(nonzero_a[k - 1]) if k >= 1 else math.inf
    largest = float(sigma_r[0]) if sigma_r.size else 0.0
    return Lemma8Check(
        smallest_nonzero=smallest,
        smallest_bound=smallest_bound,
        largest=largest,
        largest_bound=top,
        smallest_holds=bool(math.isnan(smallest) or smallest <= smallest_bound + tol),
        largest_holds=bool(largest <= top + tol),
        k=k,
        n_nonzero=N,
        removed=int(rows.size),
        tolerance=tol,
    )


# --------------------------------------------------------------------------------------------
# Lemma 9 / Appendix A5
# --------------------------------------------------------------------------------------------


def lemma9_counts(
    A: Any, I: Any, cs: Any, *, check_row_space: bool = True, with_singular_values: bool = False
) -> Lemma9Curve:
    """Appendix A5, steps 1-5, for a matrix ``A`` (rows ``a_i`` = units) and removed rows ``I``.

    Condition (3) of Lemma 9 for a removed row ``a_k`` (``k`` in ``I``) and a remaining row ``a_i``
    (``i`` not in ``I``, ``M`` of them): ``|<a_i, a_k>| <= c ||a_k|| / sqrt(M)``.  For every ``c``
    in ``cs`` this counts, for every ``a_k``, the remaining rows that satisfy it, and keeps the
    largest count (steps 2-4).  ``c_star`` is the smallest ``c`` at which some ``a_k`` is satisfied
    by all ``M`` rows (step 5); if ``a_k`` also lies in ``N(D_I A)^perp``, Lemma 9 gives
    ``sigma_min(D_I A) <= c_star``.  Zero removed rows are skipped (condition (3) would be vacuous).
    The correlations ``<a_i, a_k>`` are formed at once: ``M * |I|`` float64 numbers of memory.

    Args:
        A: ``(m, n)`` array; for a network, the linearisation up to the ReLU's pre-activation.
        I: removed rows (indices or boolean mask), e.g. ``{i : (A x + b)_i <= 0}``.
        cs: the constants ``c`` (1-d, non-negative).
        check_row_space: test whether ``a_{best_k}`` lies in the row space of the remaining rows.
        with_singular_values: also compute the extreme singular values of ``D_I A``.

    Returns:
        A :class:`Lemma9Curve` (``counts`` against ``cs`` is Figure 9; ``remaining`` its red line).

    Example::

        A = np.random.default_rng(0).standard_normal((40, 10))
        curve = lemma9_counts(A, np.arange(5), np.linspace(0, 10, 50))
    """
    A = as_finite_array(A, "A", ndim=2)
    cs = as_finite_array(cs, "cs", ndim=1)
    if np.any(cs < 0):
        raise ValueError("cs must be non-negative")
    m, n = A.shape
    removed = _index_set(I, m)
    keep = np.setdiff1d(np.arange(m), removed)
    M = int(keep.size)
    norms = np.linalg.norm(A[removed], axis=1)
    usable = removed[norms > 0]
    counts = np.zeros(cs.size, dtype=np.intp)
    c_star, best_k, in_row_space = math.nan, -1, None
    if usable.size and M:
        # Correlations scaled so that condition (3) reads r_ik <= c (columns: removed rows k).
        r = np.abs(A[keep] @ A[usable].T) * (math.sqrt(M) / norms[norms > 0])
        r.sort(axis=0)
        for column in range(usable.size):
            np.maximum(counts, np.searchsorted(r[:, column], cs, side="right"), out=counts)
        needed = r[-1]
        best = int(np.argmin(needed))
        c_star, best_k = float(needed[best]), int(usable[best])
        if check_row_space:
            remaining = A[keep]
            coef, *_ = np.linalg.lstsq(remaining.T, A[best_k], rcond=None)
            residual = np.linalg.norm(remaining.T @ coef - A[best_k])
            in_row_space = bool(residual <= 1e-8 * max(1.0, float(np.linalg.norm(A[best_k]))))
    sigma_min = sigma_max = None
    if with_singular_values:
        values = singular_values(A[keep]) if M else np.zeros(0)
        tol = max(m, n) * _EPS * (float(values[0]) if values.size else 0.0)
        nonzero = values[values > tol]
        sigma_max = float(values[0]) if values.size else 0.0
        sigma_min = float(nonzero[-1]) if nonzero.size else math.nan
    return Lemma9Curve(
        cs=cs,
        counts=counts,
        remaining=M,
        removed=int(removed.size),
        c_star=c_star,
        best_k=best_k,
        best_k_in_row_space=in_row_space,
        sigma_min_after=sigma_min,
        sigma_max_after=sigma_max,
    )


def lemma9_curve(
    model: nn.Module, x: Any, layer: int, cs: Any, *, check_row_space: bool = True, with_singular_values: bool = True
) -> Lemma9Curve:
    """Figure 9 for the ReLU at module index ``layer`` of ``model`` at input ``x``.

    ``A`` is the linearisation of modules ``0..layer-1`` (``linearize(model, x, upto=layer)``): the
    exact map from the input to the pre-activation of that ReLU on the linear region of ``x``, one
    row per unit.  ``I`` is the ReLU's index set ``{i : z_i <= 0}`` (Definition 7).  Then
    :func:`lemma9_counts` runs Appendix A5's steps 1-5.

    Example::

        model = zoo.wide_cifar().eval()
        curve = lemma9_curve(model, torch.rand(3, 32, 32), 7, np.linspace(0, 10, 101))
        # Figure 9: plot(curve.cs, curve.counts); axhline(curve.remaining)
    """
    pattern = activation_pattern(model, x)
    if layer not in pattern:
        raise ValueError(f"layer must be the module index of a ReLU, one of {sorted(pattern)}; got {layer!r}")
    A, _ = linearize(model, x, upto=layer)
    curve = lemma9_counts(A, pattern[layer], cs, check_row_space=check_row_space, with_singular_values=with_singular_values)
    return Lemma9Curve(**{**curve.__dict__, "layer": int(layer)})
