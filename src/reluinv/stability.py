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
* The Lemma 8/9 tools live in :mod:`reluinv.lemmas`, the Lanczos path in :mod:`reluinv.lanczos`,
  the singular values of one Jacobian in :mod:`reluinv.jacobian_svd`, the result type and the one
  rank tolerance in :mod:`reluinv.layer_spectrum`; every public name stays importable from here.

Everything is float64.  How the dense spectra are computed fast (all of it exact up to rounding):

1. One forward pass pushes the identity basis of the input (as a batch of tangent vectors)
   through the network with its activation slopes frozen at ``x``; after step ``l`` the batch *is*
   ``J_l^T``, the transposed Jacobian of the prefix ``0..l``.  Nothing is recomputed per prefix.
   A tangent is zero outside its pixel's receptive field, so each convolution runs only on the
   image rows a chunk of tangents can reach (:mod:`reluinv._row_crop`).
2. Rows of ``J_l`` that are zero (units a ReLU switched off, or outside a window's reach) do not
   change singular values and are dropped; steps that do not change ``J`` (Flatten, Identity,
   Dropout, a ReLU with every unit active) reuse the previous spectrum.
3. A prefix ending in a ReLU keeps a subset of the rows of the prefix before it: the triangular
   factor of the kept rows is computed once and updated by the removed rows to give the factor of
   the prefix before (:func:`reluinv.jacobian_svd.relu_pair_singular_values`).
4. Each triangular factor comes from a staircase QR that only touches the band a convolution's
   sparse rows occupy (pixel-major columns), or a dense QR where that does not pay; its singular
   values from a two-stage reduction (blocked band reduction, then LAPACK ``dgbbrd`` and dqds),
   never through ``J^T J`` (:mod:`reluinv.jacobian_svd`).  ``dgbbrd`` runs on one thread: a
   background thread of lowest priority runs it while the main thread factors the next prefixes.

Memory: the batch of tangents (``in_dim x widest layer`` float64, at most ``batch_bytes``) twice
(the step's input and output), plus, where a dense QR factors the Jacobian, LAPACK's copy of the
rows it factors, and a few ``in_dim x in_dim`` factors: at most 1.5 GiB resident (measured, process
included) for WideCIFAR at 3x32x32, whose first layer (32768 x 3072) is the largest; 1.3 GiB for
ThinCIFAR.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._row_crop import chunk_rows, conv_rows, crops, keeps_rows
from ._threads import background_executor
from .graph import is_chain
from .graph_spectra import graph_spectra
from .jacobian_svd import Pending, relu_pair_pending, singular_values, staircase_r, transposed_pending
from .lanczos import Bidiagonalisation, golub_kahan, lanczos_spectra
from .layer_spectrum import (
    LayerSpectrum,
    input_columns,
    jacobian_unchanged,
    rank_tolerance,
    spectrum_from_values,
)
from .lemmas import Lemma8Check, Lemma9Curve, check_lemma8, lemma9_counts, lemma9_curve
from .network import (
    ActivationStep,
    AffineStep,
    Step,
    activation_pattern,
    prepare_input,
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
    "rank_tolerance",
    "relu_effect",
    "singular_values",
    "spectra",
    "staircase_r",
]

_DEFAULT_BATCH_BYTES = 2 << 30
#: Cap on the restricted prefix Jacobians kept at once when a window is processed in chunks.
_MAX_STORED_BYTES = 8 << 30


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Prefix Jacobians in one pass
# --------------------------------------------------------------------------------------------


def _basis(columns: NDArray[np.intp], in_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    in_dim = math.prod(in_shape)
    basis = torch.zeros(columns.size, in_dim, dtype=torch.float64, device=device)
    basis[torch.arange(columns.size, device=device), torch.as_tensor(columns, device=device)] = 1.0
    return basis.reshape(columns.size, *in_shape)


def _apply(step: Step, tangents: torch.Tensor, slope: torch.Tensor | None) -> torch.Tensor:
    """The step's Jacobian applied to a batch of tangents (slopes frozen at ``x``); an activation
    scales ``tangents`` in place (the previous prefix's Jacobian has been used by then)."""
    if isinstance(step, AffineStep):
        return step.apply_linear(tangents)
    if slope is None:
        raise ValueError(f"no activation slope recorded for step {step.name}")
    return tangents.mul_(slope)


def _prefix_jacobians(
    chain: Sequence[Step],
    slope_by_index: dict[int, torch.Tensor],
    in_shape: tuple[int, ...],
    columns: NDArray[np.intp],
    device: torch.device,
    batch_bytes: int,
) -> Iterator[tuple[Step, torch.Tensor | None]]:
    """Yield ``(step, J_l^T)`` per step, ``J_l^T`` restricted to columns (= output units) that can
    be non-zero, or ``None`` when the step does not change the Jacobian.  A yielded ``J_l^T`` is
    valid until the generator resumes (an activation scales the batch in place)."""
    n_cols = columns.size
    widest = max([math.prod(in_shape)] + [s.out_dim for s in chain])
    if 2 * 8 * n_cols * widest <= batch_bytes:
        # Everything fits: one batch, one pass, each J_l freed as soon as it is used.
        # Convolutions see only the rows each chunk of tangents can reach (reluinv._row_crop).
        tangents = _basis(columns, in_shape, device)
        rows = chunk_rows(columns, in_shape)
        for step in chain:
            slope = slope_by_index.get(step.index)
            if jacobian_unchanged(step, slope):
                yield step, None
                tangents = tangents.reshape(n_cols, *step.out_shape)
                rows = rows if keeps_rows(step) else None
                continue
            if rows is not None and isinstance(step, AffineStep) and crops(step, device):
                tangents, rows = conv_rows(step, tangents, rows)
            else:
                tangents = _apply(step, tangents, slope)
                rows = rows if keeps_rows(step) else None
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
        supports.append(
            None if jacobian_unchanged(step, slope) else torch.nonzero(reach.reshape(-1) > 0).reshape(-1)
        )
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
        for step, support, block in zip(chain, supports, blocks, strict=True):
            if support is None:
                tangents = tangents.reshape(stop - start, *step.out_shape)
                continue
            tangents = _apply(step, tangents, slope_by_index.get(step.index))
            assert block is not None
            block[start:stop] = tangents.reshape(stop - start, -1)[:, support].cpu()
    for step, block in zip(chain, blocks, strict=True):
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
        return graph_spectra(
            model,
            x,
            method=method,
            k=k,
            window=window,
            rank_rtol=rank_rtol,
            lanczos_tol=lanczos_tol,
            max_steps=max_steps,
        )
    sample, chain = prepare_input(model, x)
    in_shape = tuple(sample.shape)
    columns = input_columns(in_shape, window)
    slope_by_index = slopes(chain, sample)
    device = sample.device
    if method == "lanczos":
        if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        return lanczos_spectra(
            chain, slope_by_index, in_shape, columns, device, int(k), rank_rtol, lanczos_tol, int(max_steps)
        )
    prefixes = _prefix_jacobians(chain, slope_by_index, in_shape, columns, device, batch_bytes)
    with background_executor("reluinv-dgbbrd") as executor:
        pending = list(_dense_values(chain, prefixes, slope_by_index, columns.size, executor))
        return [
            spectrum_from_values(step, columns.size, values.result(), rank_rtol) for step, values in pending
        ]


def _relu_mask(
    chain: Sequence[Step], depth: int, slope_by_index: dict[int, torch.Tensor], units: int
) -> torch.Tensor | None:
    """Units left on by the ReLU right after step ``depth``, when that ReLU changes ``J`` and the
    Jacobian of step ``depth`` holds every unit (so the ReLU prefix is a subset of its rows)."""
    if depth + 1 >= len(chain):
        return None
    step = chain[depth + 1]
    slope = slope_by_index.get(step.index)
    if not isinstance(step, ActivationStep) or step.kind != "relu" or slope is None or units != step.out_dim:
        return None
    if jacobian_unchanged(step, slope):
        return None
    return slope.reshape(-1) != 0


def _dense_values(
    chain: Sequence[Step],
    prefixes: Iterator[tuple[Step, torch.Tensor | None]],
    slope_by_index: dict[int, torch.Tensor],
    in_dim: int,
    executor: Executor,
) -> Iterator[tuple[Step, Pending]]:
    """All singular values of every prefix (padded to ``min(out_dim, in_dim)``), a ReLU prefix
    computed together with the prefix before it (module docstring, step 3); the last stage of each
    runs on ``executor`` while the next prefixes are factored."""
    previous: Pending | None = None
    paired: Pending | None = None
    for depth, (step, jacobian_t) in enumerate(prefixes):
        size = min(step.out_dim, in_dim)
        if jacobian_t is None:  # None: the identity map
            values = Pending(np.ones(size), size) if previous is None else previous.resized(size)
        elif paired is not None:
            values, paired = paired, None
        else:
            keep = _relu_mask(chain, depth, slope_by_index, int(jacobian_t.shape[1]))
            if keep is None:
                values = transposed_pending(jacobian_t, executor)
            else:
                values, paired = relu_pair_pending(jacobian_t, keep, executor)
        del jacobian_t
        previous = values.resized(size)  # dropped zero rows
        yield step, previous


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
