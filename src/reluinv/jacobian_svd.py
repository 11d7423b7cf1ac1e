"""Singular values of one Jacobian, exactly and fast (Section 3.2; used by :func:`reluinv.spectra`).

The singular values of a tall ``J`` (m x n) are those of the triangular factor ``R`` of ``J = Q R``,
and those of ``R`` are found in two more orthogonal stages (Chan's R-bidiagonalisation, with a
two-stage reduction as in PLASMA/MAGMA's SVD): every step is an orthogonal transformation, so the
computed values are those of a matrix within ``O(eps) ||J||`` of ``J``; ``J^T J`` is never formed.

1. **Factor.**  Convolutional Jacobians are sparse with a staircase profile (pixel-major columns):
   :func:`staircase_r` gets ``R`` by a blocked Householder QR that only touches the active band
   (when its cost model beats a dense QR); otherwise a dense Householder QR (LAPACK ``geqrf``).
   :func:`tall_factor` chooses.  Wide or square Jacobians are factored through ``J^T``.
2. **Band.**  ``R`` (n x n, upper triangular) is reduced to upper band form with bandwidth
   :data:`BAND` by alternating blocked Householder QR of column panels and LQ of row panels, all
   applied as matrix-matrix products (:func:`band_reduce`, ``8/3 n^3`` flops at GEMM speed); the
   one-stage LAPACK bidiagonalisation (``gebrd`` inside ``gesdd``) spends half its flops in
   matrix-vector products and is several times slower at n = 3072.  A factor that is already a
   narrow band (the first convolutions) skips this stage.
3. **Bidiagonal.**  LAPACK ``dgbbrd`` (Givens rotations on the band) and ``dlasq1`` (dqds) give the
   singular values (:func:`triangular_svdvals`).  This stage runs on one thread; given an
   executor, it runs there (:class:`Pending`), so that the all-prefix spectra of
   :func:`reluinv.spectra` overlap it with the next prefix's factor and band reduction.

:func:`relu_pair_singular_values` reuses the work of a ReLU prefix for the prefix before it:
the ReLU keeps a subset of the rows of ``J``, and ``R`` of the whole ``J`` is the QR update of
``R`` of the kept rows by the removed ones (``J = P [J_kept; J_removed]`` and
``[J_kept; J_removed] = diag(Q_kept, I) [R_kept; J_removed]``): an update, never a downdate, by
the staircase QR or by :func:`triangle_update`, which leaves the zeros of ``R_kept`` alone.

Memory: besides ``J`` itself (as ``J^T``, the layout the forward pass produces), a few ``n x n``
float64 factors (75 MB each at n = 3072); the staircase reads ``J``'s rows where they lie (a
column-major view), and only a dense QR gathers rows (LAPACK's working copy of the kept rows).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from numpy.typing import NDArray

from ._band_lapack import band_bidiagonal_svdvals

__all__ = [
    "BAND",
    "Deferred",
    "Pending",
    "band_reduce",
    "relu_pair_pending",
    "relu_pair_singular_values",
    "singular_values",
    "staircase_r",
    "tall_factor",
    "transposed_pending",
    "triangle_update",
    "triangular_svdvals",
    "upper_bandwidth",
]

#: Bandwidth that :func:`band_reduce` reduces to.  On the 2-core development machine at n = 3072
#: (reduction + ``dgbbrd``, seconds): 16: 1.11 + 0.35, 24: 0.91 + 0.44, 32: 0.91 + 0.54,
#: 48: 0.99 + 0.71, 64: 0.88 + 0.88; 32 keeps the GEMMs' inner dimension at a safe width.
BAND = 32
#: Orders up to this go straight to ``torch.linalg.svdvals`` (LAPACK ``gesdd``), which is faster
#: there: on the 2-core development machine, dense triangular factors took 0.050 s (gesdd) against
#: 0.086 s (band path) at n = 768, 0.134 against 0.162 s at 1024, and 0.452 against 0.368 s at 1536.
_SMALL = 1280
#: Measured cost of one ``dgbbrd`` rotation-element (per ``n^2 * ku``; one thread) over one flop
#: of the blocked reduction (GEMMs on all threads): a band with ``ku`` super-diagonals goes
#: straight to ``dgbbrd`` when ``_ROTATION_COST * n^2 * (ku - BAND) < 8/3 n^3``.  On the 2-core
#: development machine at n = 3072: ``dgbbrd`` 0.54 s at ku = 32, 1.35 s at 96, 1.93 s at 128,
#: 6.5 s at 256 (it leaves the cache); :func:`band_reduce` 0.91 s (1.2e-11 s per flop), so the
#: direct route pays below ku of about 95.
_ROTATION_COST = 130.0
#: Staircase blocks narrower than this are factored on one thread (see :func:`_one_thread`).
_NARROW = 512


def _numpy(tensor: torch.Tensor) -> NDArray[np.float64]:
    return np.asarray(tensor.cpu().numpy(), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Stage 1: the triangular factor
# --------------------------------------------------------------------------------------------


#: ``(first, last, live)`` of :func:`_row_profile`.
RowProfile = tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]


def _row_profile(Jt: torch.Tensor, block: int = 32) -> RowProfile:
    """``(first, last, live)`` of ``J``, given as ``J^T`` (n x m, any layout): the first and last
    non-zero column of each row of ``J`` and whether the row has one (``first = n``, ``last = -1``
    for zero rows).

    Computed on ``J^T``'s memory as it lies: the rows of ``J^T`` in groups of ``block`` are OR-ed
    together (one pass over ``J^T != 0``), the first and last group holding a non-zero are found
    per column, and only those two groups are searched.  An ``argmax`` down the columns of the
    row-major ``J^T`` (32768 columns at WideCIFAR's first layer) took 0.6-0.9 s; this, 0.1-0.2 s.
    """
    n, m = Jt.shape
    if n == 0 or m == 0:  # no columns (every row is zero), or no rows
        return np.full(m, n, dtype=np.intp), np.full(m, -1, dtype=np.intp), np.zeros(m, dtype=bool)
    nonzero = Jt != 0
    if not nonzero.is_contiguous():
        nonzero = nonzero.contiguous()
    if n % block:
        nonzero = torch.cat([nonzero, nonzero.new_zeros(block - n % block, m)])
    groups = nonzero.reshape(-1, block, m)
    any_in_group = groups.any(dim=1).view(torch.uint8)
    live = any_in_group.any(dim=0)
    columns = torch.arange(m)
    first_group = any_in_group.argmax(dim=0)  # argmax: the first maximum
    last_group = any_in_group.shape[0] - 1 - any_in_group.flip(0).argmax(dim=0)
    first = first_group * block + groups[first_group, :, columns].view(torch.uint8).argmax(dim=1)
    last = (
        last_group * block
        + block
        - 1
        - groups[last_group, :, columns].flip(1).view(torch.uint8).argmax(dim=1)
    )
    live_rows = live.numpy().astype(bool)
    return (
        np.where(live_rows, first.numpy(), n).astype(np.intp),
        np.where(live_rows, last.numpy(), -1).astype(np.intp),
        live_rows,
    )


def _in_staircase_order(rows: NDArray[np.intp], first: NDArray[np.intp]) -> NDArray[np.intp]:
    return rows[np.argsort(first[rows], kind="stable")]


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


def _staircase_cost(
    order: NDArray[np.intp], first: NDArray[np.intp], last: NDArray[np.intp], n: int, block_rows: int
) -> float:
    flops, carry_rows, carry_lo = 0.0, 0, 0
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
    n = J.shape[1]
    first, last, live = _row_profile(_read_only(J).T)
    if not live.any():
        return np.zeros((0, n))
    R = _staircase_square(J, _in_staircase_order(np.flatnonzero(live), first), first, last, block_rows)
    return np.asarray(R[(R != 0).any(axis=1)], dtype=np.float64)


def _staircase_square(
    J: NDArray[np.float64],
    order: NDArray[np.intp],
    first: NDArray[np.intp],
    last: NDArray[np.intp],
    block_rows: int,
) -> NDArray[np.float64]:
    """``n x n`` upper triangular ``R`` with ``R^T R = J^T J``; row ``i`` is the row whose pivot is
    column ``i`` (zero where no row has its pivot there), so the band of ``R`` is as narrow as the
    staircase of ``J`` allows."""
    n = J.shape[1]
    out = np.zeros((n, n))
    carry = np.zeros((0, 0))
    carry_lo = carry_hi = 0
    for rows, block_lo, hi, next_lo in _staircase_blocks(order, first, last, n, block_rows):
        lo = carry_lo if carry.shape[0] else block_lo
        height = carry.shape[0] + rows.size
        stacked = np.zeros((height, hi - lo))
        if carry.shape[0]:
            stacked[: carry.shape[0], carry_lo - lo : carry_hi - lo] = carry
        stacked[carry.shape[0] :] = J[rows, lo:hi]
        # torch's QR (LAPACK geqrf behind it) measured faster here than scipy's on these sizes;
        # narrow blocks gain little from a second thread and lose much on a loaded machine.
        with _one_thread(torch.device("cpu")) if hi - lo < _NARROW else nullcontext():
            R = torch.linalg.qr(torch.from_numpy(stacked), mode="r")[1].numpy()
        # Row t of the trapezoidal R is zero left of local column t: it belongs at row lo + t.
        final = min(next_lo - lo, R.shape[0])
        out[lo : lo + final, lo:hi] = R[:final]
        carry = R[final:, next_lo - lo :] if final < R.shape[0] else np.zeros((0, 0))
        carry_lo, carry_hi = next_lo, hi
    if carry.shape[0]:
        out[carry_lo : carry_lo + carry.shape[0], carry_lo:carry_hi] = carry
    return out


def tall_factor(J: NDArray[np.float64], *, block_rows: int = 1024) -> NDArray[np.float64]:
    """An ``n x n`` upper triangular ``R`` with the singular values of ``J`` (m x n, ``m >= n``,
    no zero rows needed): :func:`staircase_r`'s blocked QR when its cost model predicts less than
    half the work of a dense QR, else a dense Householder QR (``torch.linalg.qr``, LAPACK geqrf)."""
    m, n = J.shape
    if m < n:
        raise ValueError(f"tall_factor needs at least as many rows as columns, got {J.shape}")
    first, last, live = _row_profile(_read_only(J).T)
    R = _staircase_if_cheaper(J, np.flatnonzero(live), first, last, 0.5 * _qr_flops(m, n), block_rows)
    return R if R is not None else _numpy(torch.linalg.qr(_read_only(J), mode="r")[1])


def _staircase_if_cheaper(
    J: NDArray[np.float64],
    rows: NDArray[np.intp],
    first: NDArray[np.intp],
    last: NDArray[np.intp],
    budget: float,
    block_rows: int = 1024,
) -> NDArray[np.float64] | None:
    """:func:`_staircase_square` of the rows ``rows`` of ``J`` (their profile: :func:`_row_profile`)
    when its cost model predicts fewer than ``budget`` flops, else None.  ``J`` may be a view in
    any memory order: the blocks are gathered from it, the rows are never copied out first."""
    order = _in_staircase_order(rows, first)
    if _staircase_cost(order, first, last, J.shape[1], block_rows) < budget:
        return _staircase_square(J, order, first, last, block_rows)
    return None


def _read_only(J: NDArray[np.float64]) -> torch.Tensor:
    """``J`` as a torch tensor without a copy, for reading (torch warns on read-only arrays)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(J)


def triangle_update(T: torch.Tensor, B: torch.Tensor, block: int = 32) -> torch.Tensor:
    """``R`` of ``[T; B]`` (``R^T R = T^T T + B^T B``) for an upper triangular ``T`` (n x n, zero
    rows allowed) and any ``B`` (r x n), computed in ``T``, which it returns; ``B`` is used as
    work space.

    Householder QR by column panels that leaves the zeros below ``T``'s diagonal alone: a panel's
    reflectors are ``[e_j; v_B]``, so each touches one row of ``T`` and all of ``B``.  That is
    ``2 r n^2`` flops instead of the ``2 (n + r) n^2 - 2/3 n^3`` of a dense QR of the stack (LAPACK
    ``dtpqrt`` does the same; torch has no binding for it).  The ReLU pair update (module
    docstring) stacks the kept rows' factor on the removed rows.
    """
    n = T.shape[0]
    for j in range(0, n, block):
        w = min(block, n - j)
        with _one_thread(T.device):
            a, tau = torch.geqrf(torch.cat([T[j : j + w, j : j + w], B[:, j : j + w]]))
            V, factor = _block_reflector(a, tau)
            T[j : j + w, j : j + w] = torch.triu(a[:w])
        if j + w < n:
            top, bottom = T[j : j + w, j + w :], B[:, j + w :]
            W = factor.T @ (V[:w].T @ top + V[w:].T @ bottom)
            top -= V[:w] @ W
            bottom.addmm_(V[w:], W, alpha=-1)
    return T


# --------------------------------------------------------------------------------------------
# Stage 2: band reduction
# --------------------------------------------------------------------------------------------


def _block_reflector(a: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, T)`` with ``H_1 ... H_k = I - V T V^T`` for ``geqrf``'s output ``(a, tau)``.

    ``T^{-1} = triu(V^T V, 1) + diag(1 / tau)`` (the identity ``T^{-1} + T^{-T} = V^T V`` of an
    orthogonal ``I - V T V^T``); a trivial reflector (``tau = 0``) gets ``v = 0`` and drops out.
    """
    k = tau.numel()
    V = torch.tril(a[:, :k], -1)
    V.diagonal().fill_(1.0)
    trivial = tau == 0
    if bool(trivial.any()):
        V[:, trivial] = 0.0
    inverse = torch.triu(V.T @ V, 1)
    inverse.diagonal().copy_(
        torch.where(trivial, torch.ones_like(tau), 1.0 / torch.where(trivial, torch.ones_like(tau), tau))
    )
    eye = torch.eye(k, dtype=a.dtype, device=a.device)
    return V, torch.linalg.solve_triangular(inverse, eye, upper=True)


def band_reduce(R: torch.Tensor, band: int = BAND) -> torch.Tensor:
    """Reduce the square ``R`` (in place) to upper band form with ``band`` super-diagonals by
    orthogonal transformations from both sides; the singular values do not change.

    For each panel of ``band`` columns: a Householder QR of the column panel (applied to the
    trailing columns from the left), then an LQ of the row panel right of it (applied to the
    trailing rows from the right), both as compact-WY matrix products.  ``8/3 n^3`` flops.
    Works on any torch device.
    """
    n = R.shape[0]
    for j in range(0, n, band):
        w = min(band, n - j)
        with _one_thread(R.device):
            a, tau = torch.geqrf(R[j:, j : j + w])
            V, T = _block_reflector(a, tau)
            R[j:, j : j + w] = torch.triu(a)
        if j + w >= n:
            break
        trailing = R[j:, j + w :]
        trailing.addmm_(V, T.T @ (V.T @ trailing), alpha=-1)  # in place: one pass over it
        with _one_thread(R.device):
            a, tau = torch.geqrf(R[j : j + w, j + w :].T)
            V, T = _block_reflector(a, tau)
            R[j : j + w, j + w :] = torch.triu(a).T
        trailing = R[j + w :, j + w :]
        trailing.addmm_((trailing @ V) @ T, V.T, alpha=-1)
    return R


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Panel factorisations and small copies on one CPU thread: they are matrix-vector bound, and
    with several threads each of their many small steps pays a synchronisation (on a loaded
    machine, a scheduler time slice: measured 0.44 s instead of ~10 ms per 3072 x 64 panel)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def upper_bandwidth(R: NDArray[np.float64]) -> int:
    """Largest ``j - i`` over the non-zero entries ``R[i, j]`` of an upper triangular ``R``."""
    nonzero = R != 0
    rows = np.flatnonzero(nonzero.any(axis=1))
    if rows.size == 0:
        return 0
    last = R.shape[1] - 1 - nonzero[rows, ::-1].argmax(axis=1)
    return int(np.max(last - rows))


def _band_storage(R: NDArray[np.float64], ku: int) -> NDArray[np.float64]:
    n = R.shape[0]
    band = np.zeros((ku + 1, n), order="F")
    for d in range(ku + 1):
        band[ku - d, d:] = np.diagonal(R, d)
    return band


class Deferred:
    """``work()`` submitted to an executor; :meth:`result` runs it on the calling thread instead
    when the executor has not started it yet (the caller would only wait: with dgbbrd queued at
    the end of a spectrum, the caller and the executor's thread then share the remaining ones)."""

    def __init__(self, executor: Executor, work: Callable[[], NDArray[np.float64]]) -> None:
        self._work = work
        self._future = executor.submit(work)
        self._lock = threading.Lock()
        self._value: NDArray[np.float64] | None = None

    def result(self) -> NDArray[np.float64]:
        with self._lock:
            if self._value is None:
                self._value = self._work() if self._future.cancel() else self._future.result()
            return self._value


class Pending:
    """Singular values, padded with zeros to ``size``, whose last stage may still be running on
    an executor's thread (module docstring, stage 3); :meth:`result` waits for them."""

    def __init__(self, values: Deferred | NDArray[np.float64], size: int) -> None:
        self._values, self.size = values, size

    def result(self) -> NDArray[np.float64]:
        values = self._values.result() if isinstance(self._values, Deferred) else self._values
        return _padded(values, self.size)

    def resized(self, size: int) -> Pending:
        """The same values padded (or cut) to another size."""
        return Pending(self._values, size)


def triangular_svdvals(R: NDArray[np.float64]) -> NDArray[np.float64]:
    """All singular values (descending) of a square upper triangular ``R``: straight to
    ``dgbbrd`` if ``R`` is already a narrow band, else :func:`band_reduce` first (module docstring).

    Example::

        R = np.triu(np.random.default_rng(0).standard_normal((500, 500)))
        np.allclose(triangular_svdvals(R), scipy.linalg.svdvals(R))
    """
    n = R.shape[0]
    if R.shape != (n, n):
        raise ValueError(f"R must be square, got shape {R.shape}")
    return _triangular_pending(R, None, overwrite=False).result()


def _triangular_pending(
    R: NDArray[np.float64], executor: Executor | None, *, overwrite: bool = True
) -> Pending:
    """:func:`triangular_svdvals` with ``dgbbrd`` submitted to ``executor`` (when given); the band
    reduction works in ``R`` itself unless ``overwrite`` is False (or R is not writable).

    ``R`` is checked here rather than the (much larger) Jacobian it came from: a NaN or infinity in
    ``J`` reaches ``R`` through the Householder norms."""
    n = R.shape[0]
    if not np.isfinite(R).all():
        raise ValueError("J contains NaN or infinite entries (its triangular factor is not finite)")
    if n <= _SMALL:
        return Pending(_numpy(torch.linalg.svdvals(torch.as_tensor(R, dtype=torch.float64))), n)
    # _ROTATION_COST * n^2 * (ku - BAND) >= 8/3 n^3: from this bandwidth on, the reduction pays;
    # one non-zero on that diagonal settles it without scanning R.
    pays = BAND + math.ceil((8.0 / 3.0) * n / _ROTATION_COST) if _ROTATION_COST > 0 else n
    wide = pays < n and bool(np.diagonal(R, pays).any())
    ku = n - 1 if wide else upper_bandwidth(R)
    if ku >= pays:
        in_place = overwrite and R.dtype == np.float64 and R.flags.c_contiguous and R.flags.writeable
        R = band_reduce(
            torch.from_numpy(R) if in_place else torch.tensor(R, dtype=torch.float64), BAND
        ).numpy()
        ku = BAND
    band = _band_storage(R, ku)
    if executor is None:
        return Pending(band_bidiagonal_svdvals(band, n, ku), n)
    return Pending(Deferred(executor, lambda: band_bidiagonal_svdvals(band, n, ku)), n)


# --------------------------------------------------------------------------------------------
# Jacobians
# --------------------------------------------------------------------------------------------


def _check(J: NDArray[np.float64] | torch.Tensor) -> torch.Tensor:
    Jt = torch.as_tensor(J, dtype=torch.float64)
    if Jt.dim() != 2:
        raise ValueError(f"J must be 2-dimensional, got shape {tuple(Jt.shape)}")
    if not bool(torch.isfinite(Jt).all()):
        raise ValueError("J contains NaN or infinite entries")
    return Jt


def _padded(values: NDArray[np.float64], size: int) -> NDArray[np.float64]:
    out = np.zeros(size)
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1][:size]
    out[: values.size] = values
    return out


def singular_values(
    J: NDArray[np.float64] | torch.Tensor, *, transposed: bool = False
) -> NDArray[np.float64]:
    """All ``min(m, n)`` singular values of ``J`` (m x n), descending, float64.

    Zero rows are dropped first (they do not change singular values; after a ReLU half the rows
    are zero).  On CUDA tensors: QR first when tall, then ``torch.linalg.svdvals`` on the device.
    On the CPU: the three stages of the module docstring.  Never forms ``J^T J``.

    Args:
        J: the matrix, as a numpy array or torch tensor (any device).
        transposed: ``J`` is given as its transpose (``n x m``), as the forward pass produces it.

    Example::

        singular_values(np.diag([3.0, 1.0, 2.0]))      # array([3., 2., 1.])
    """
    Jt = _check(J)
    return transposed_pending(Jt if transposed else Jt.T, None).result()


def transposed_pending(Jt: torch.Tensor, executor: Executor | None) -> Pending:
    """:func:`singular_values` of ``J`` given as the float64 ``J^T``, without the up-front scan
    for NaN (the triangular factor is checked instead), the last stage on ``executor``."""
    return _profiled_pending(Jt, None if Jt.is_cuda else _row_profile(Jt), executor)


def _profiled_pending(Jt: torch.Tensor, profile: RowProfile | None, executor: Executor | None) -> Pending:
    """:func:`transposed_pending` with the :func:`_row_profile` of ``J`` already known (None on a
    GPU), padded to ``min(m, n)``.  Zero rows are dropped; a tall ``J`` on the CPU is factored from
    its rows where they lie (:func:`_rows_factor`), a wide one through ``J^T``."""
    n, m = Jt.shape
    size = min(n, m)
    live = Jt.any(dim=0) if profile is None else torch.from_numpy(profile[2])
    rows = int(live.sum())
    if rows == 0:
        return Pending(np.zeros(0), size)
    if profile is not None and rows > n:
        first, last, live_rows = profile
        R = _rows_factor(Jt, np.flatnonzero(live_rows), first, last)
        return _triangular_pending(R, executor).resized(size)
    if rows < m:
        Jt = Jt[:, live]
    if Jt.is_cuda:
        A = Jt.T
        if rows > n:
            A = torch.linalg.qr(A, mode="r")[1]
        return Pending(_finite(_numpy(torch.linalg.svdvals(A)))[0], size)
    # Wide or square J (at most n non-zero rows): factor J^T, which is tall.
    return _triangular_pending(torch.linalg.qr(Jt, mode="r")[1].numpy(), executor).resized(size)


def _rows_factor(
    Jt: torch.Tensor, rows: NDArray[np.intp], first: NDArray[np.intp], last: NDArray[np.intp]
) -> NDArray[np.float64]:
    """``n x n`` upper triangular ``R`` of the rows ``rows`` of ``J`` (more than n of them; ``J``
    given as ``J^T`` on the CPU, with its :func:`_row_profile`): the staircase QR, which reads the
    rows where they lie in ``J^T`` (``J = Jt.T`` is a column-major view), when its cost model
    predicts less than half the work of a dense QR; else a dense QR of the rows, gathered straight
    into the column-major layout LAPACK wants."""
    n = Jt.shape[0]
    R = _staircase_if_cheaper(Jt.T.numpy(), rows, first, last, 0.5 * _qr_flops(rows.size, n))
    if R is not None:
        return R
    return _numpy(torch.linalg.qr(Jt.index_select(1, torch.from_numpy(rows)).T, mode="r")[1])


def relu_pair_singular_values(
    Jt: torch.Tensor, keep: torch.Tensor
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Singular values of ``J`` and of ``D J`` (``D`` keeps the rows where ``keep`` is True), both
    padded to ``min(m, n)``, sharing work: when more than ``n`` non-zero rows are kept, ``R`` of
    ``J`` is the QR update of ``R`` of the kept rows by the removed rows (module docstring).  On a
    GPU the same update runs in torch float64 on the device (:func:`_device_pair_svdvals`).

    Args:
        Jt: ``J^T`` (n x m), as the forward pass produces it.
        keep: boolean mask of length ``m`` (units a ReLU leaves on).
    """
    values_all, values_kept = relu_pair_pending(_check(Jt), keep, None)
    return values_all.result(), values_kept.result()


def relu_pair_pending(
    Jt: torch.Tensor, keep: torch.Tensor, executor: Executor | None
) -> tuple[Pending, Pending]:
    """:func:`relu_pair_singular_values` on a float64 ``J^T`` as :func:`transposed_pending` does
    it: no up-front scan for NaN, the last stages on ``executor``."""
    n, m = Jt.shape
    if Jt.is_cuda:
        return _device_pair_pending(Jt, keep, executor)
    first, last, live = _row_profile(Jt)
    kept_mask = live & keep.numpy()
    kept, removed = np.flatnonzero(kept_mask), np.flatnonzero(live & ~kept_mask)
    if kept.size <= n:
        # D J has the profile of J on the kept rows: no second pass over J^T, no copy of D J.
        return (
            _profiled_pending(Jt, (first, last, live), executor),
            _profiled_pending(Jt, (first, last, kept_mask), executor),
        )
    R_kept = _rows_factor(Jt, kept, first, last)
    # R of all of J: the staircase over all its rows where the profile makes that cheaper than
    # the update of R_kept by the removed rows (2 r n^2 flops), which leaves R_kept's zeros alone.
    update_flops = 2.0 * removed.size * n * n
    R_all = _staircase_if_cheaper(Jt.T.numpy(), np.flatnonzero(live), first, last, 0.5 * update_flops)
    # The kept rows' band reduction goes first (its dgbbrd then overlaps the update), on a copy
    # when the update still needs R_kept.
    pending_kept = _triangular_pending(R_kept, executor, overwrite=R_all is not None).resized(min(n, m))
    if R_all is None:
        removed_rows = Jt.index_select(1, torch.from_numpy(removed)).T
        R_all = triangle_update(torch.from_numpy(R_kept), removed_rows).numpy()
    return _triangular_pending(R_all, executor).resized(min(n, m)), pending_kept


def _device_pair_pending(
    Jt: torch.Tensor, keep: torch.Tensor, executor: Executor | None
) -> tuple[Pending, Pending]:
    """:func:`relu_pair_pending` on a GPU: the update by :func:`_device_pair_svdvals` when more
    than ``n`` non-zero rows are kept, else each matrix on its own."""
    n, m = Jt.shape
    live = Jt.any(dim=0)
    kept, removed = live & keep, live & ~keep
    if int(kept.sum()) <= n:
        return transposed_pending(Jt, executor), transposed_pending(Jt * keep, executor)
    values_all, values_kept = _device_pair_svdvals(Jt, kept, removed)
    return Pending(values_all, min(n, m)), Pending(values_kept, min(n, m))


def _device_pair_svdvals(
    Jt: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The pair update with torch only, on ``Jt``'s device (dense QR, then ``torch.linalg.svdvals``
    of the square factors): ``R_kept`` of the kept rows, then ``R`` of ``[R_kept; J_removed]``.
    Needs more than ``n`` kept rows."""
    J = Jt.T
    R_kept = torch.linalg.qr(J[kept], mode="r")[1]
    R_all = torch.linalg.qr(torch.cat([R_kept, J[removed]]), mode="r")[1]
    values_all, values_kept = _finite(
        _numpy(torch.linalg.svdvals(R_all)), _numpy(torch.linalg.svdvals(R_kept))
    )
    return values_all, values_kept


def _finite(*values: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """The device routes' singular values, checked: a NaN or infinity in ``J`` reaches them."""
    if not all(np.isfinite(v).all() for v in values):
        raise ValueError("J contains NaN or infinite entries (its singular values are not finite)")
    return values
