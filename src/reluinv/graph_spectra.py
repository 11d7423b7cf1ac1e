"""Layer spectra of traced graphs: :func:`reluinv.spectra` for models that are not chains.

Section 3.2 studies the singular values of the prefix Jacobians ``J_l`` of a network at ``x``.
In a graph (residual connections, concatenation, pooling; see :mod:`reluinv.graph`) a *layer* is
a nonlinear node (an activation or a max-pool) and ``J_l`` is the Jacobian at ``x`` of that node's
output with respect to the model input: on the linear region of ``x`` it is the sum over all
paths from the input to the node of the products of affine maps, slope matrices and max-pool
selections (Definition 7 along the graph).

How (exact up to rounding, all float64):

1. One pass pushes the identity basis of the input, as a batch of tangent vectors, through the
   graph with every slope and argmax frozen at ``x``; at each layer node the batch *is* ``J_l^T``.
   Nothing is recomputed per layer, and each tangent is freed after its last use.
2. :mod:`reluinv.jacobian_svd` then gives all singular values of each ``J_l`` (zero rows dropped,
   values only: the staircase or dense QR, then the band reduction and ``dgbbrd`` + dqds), with
   ``dgbbrd`` on a background thread of lowest priority while the pass goes on, as
   :func:`reluinv.spectra` does for chains.

Peak memory is about ``8 * n * (largest sum of simultaneously live activations)`` bytes plus one
Jacobian for the SVD, ``n`` the number of varying inputs.  ``method="lanczos"`` never forms ``J``:
it runs :func:`reluinv.lanczos.golub_kahan` on ``v -> J v`` (a tangent pass) and ``u -> J^T u``
(its vector-Jacobian product) per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._threads import background_executor
from .graph import GraphNet, Layer, prepare_graph
from .jacobian_svd import Pending, transposed_pending
from .lanczos import golub_kahan
from .layer_spectrum import LayerSpectrum, input_columns, rank_tolerance

__all__ = ["graph_spectra"]


def _spectrum(
    layer: Layer, n: int, values: NDArray[np.float64], rank_rtol: float | None, **extra: Any
) -> LayerSpectrum:
    tol = rank_tolerance(float(values[0]) if values.size else 0.0, (layer.out_dim, n), rank_rtol)
    nonzero = values[values > tol]
    complete = extra.pop("complete", True)
    return LayerSpectrum(
        index=layer.index,
        name=layer.name,
        out_dim=layer.out_dim,
        in_dim=n,
        singular_values=values,
        rank=int(nonzero.size) if complete else None,
        rank_tolerance=tol,
        condition=float(nonzero[0] / nonzero[-1]) if nonzero.size else math.nan,
        complete=complete,
        **extra,
    )


def _basis(net: GraphNet, columns: NDArray[np.intp]) -> torch.Tensor:
    basis = torch.zeros(columns.size, net.in_dim, dtype=torch.float64, device=net.device)
    basis[torch.arange(columns.size), torch.as_tensor(columns)] = 1.0
    return basis.reshape(columns.size, *net.in_shape)


def _dense(net: GraphNet, columns: NDArray[np.intp], rank_rtol: float | None) -> list[LayerSpectrum]:
    layer_of = {layer.node: layer for layer in net.layers}
    n = columns.size
    pending: list[tuple[Layer, Pending]] = []
    with background_executor("reluinv-dgbbrd") as executor:
        for name, tangent in net.evaluate("tangent", {net.input: _basis(net, columns)}):
            layer = layer_of.get(name)
            if layer is not None:  # the factor now, dgbbrd on the executor meanwhile
                pending.append((layer, transposed_pending(tangent.reshape(n, -1), executor)))
        return [
            _spectrum(layer, n, values.resized(min(layer.out_dim, n)).result(), rank_rtol)
            for layer, values in pending
        ]


_Map = Callable[[torch.Tensor], torch.Tensor]


def _operator(net: GraphNet, layer: Layer, columns: torch.Tensor, rows: torch.Tensor) -> tuple[_Map, _Map]:
    """``(v -> J v, u -> J^T u)`` for the block of ``layer``'s Jacobian on ``rows`` x ``columns``."""

    def forward(v: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(net.in_dim, dtype=torch.float64, device=net.device)
        full[columns] = v
        return net.push(full.reshape(1, *net.in_shape), layer.node).reshape(-1)[rows]

    pullback = torch.func.vjp(forward, torch.zeros(columns.numel(), dtype=torch.float64, device=net.device))[
        1
    ]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return forward(v)

    return matvec, lambda u: pullback(u)[0].detach()


def _lanczos(
    net: GraphNet, columns: NDArray[np.intp], k: int, rank_rtol: float | None, tol: float, max_steps: int
) -> list[LayerSpectrum]:
    columns_t = torch.as_tensor(columns, device=net.device)
    out = []
    for layer in net.layers:
        state = net.states[layer.node]
        # Units a ReLU-like activation switched off are zero rows: left out of the operator.
        live = (
            (state != 0).reshape(-1)
            if layer.kind != "maxpool"
            else torch.ones(layer.out_dim, dtype=torch.bool)
        )
        rows = torch.nonzero(live.to(net.device)).reshape(-1)
        matvec, rmatvec = _operator(net, layer, columns_t, rows)
        result = golub_kahan(
            matvec,
            rmatvec,
            (int(rows.numel()), columns.size),
            k=k,
            max_steps=max_steps,
            tol=tol,
            device=net.device,
        )
        ritz = result.ritz_values
        ends = np.r_[result.residuals[:k], result.residuals[-k:]]
        converged = result.exhausted or bool(np.all(ends <= tol * (ritz[0] if ritz.size else 0.0)))
        cut = rank_tolerance(float(ritz[0]) if ritz.size else 0.0, (layer.out_dim, columns.size), rank_rtol)
        nonzero = ritz[ritz > cut]
        if result.exhausted:
            values = np.zeros(min(layer.out_dim, columns.size))
            values[: nonzero.size] = nonzero
        else:
            values = np.unique(np.concatenate([nonzero[:k], nonzero[-k:]]))[::-1]
        out.append(
            _spectrum(
                layer,
                columns.size,
                values,
                rank_rtol,
                method="lanczos",
                complete=result.exhausted,
                largest=nonzero[:k].copy(),
                smallest=nonzero[-k:].copy(),
                null_directions=int(ritz.size - nonzero.size),
                steps=result.steps,
                converged=converged,
            )
        )
    return out


def graph_spectra(
    model: nn.Module,
    x: Any,
    *,
    method: str = "dense",
    k: int = 6,
    window: Sequence[int] | None = None,
    rank_rtol: float | None = None,
    lanczos_tol: float = 1e-10,
    max_steps: int = 500,
) -> list[LayerSpectrum]:
    """Singular values of every layer's prefix Jacobian of a traced graph at ``x`` (Section 3.2).

    Called by :func:`reluinv.spectra` for every model that is not a chain; the arguments mean the
    same.  Returns one :class:`reluinv.LayerSpectrum` per layer (activation or max-pool node, see
    :mod:`reluinv.graph`), in the graph's order, with ``index`` its position among the layers and
    ``name`` its module path.  ``rank`` counts the singular values above the tolerance, which
    with ``rank_rtol=None`` is ``max(out_dim, in_dim) * eps * sigma_max``.

    Example::

        layers = spectra(resnet.eval(), torch.rand(3, 16, 16))
        [(s.name, s.rank) for s in layers][:2]      # [('relu', 768), ('layer1.0.relu', 768)]
    """
    if method not in ("dense", "lanczos"):
        raise ValueError(f"method must be 'dense' or 'lanczos', got {method!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if rank_rtol is not None and not (math.isfinite(rank_rtol) and rank_rtol >= 0):
        raise ValueError(f"rank_rtol must be a non-negative number, got {rank_rtol!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    _, net = prepare_graph(model, x)
    columns = input_columns(net.in_shape, window)
    if method == "lanczos":
        return _lanczos(net, columns, int(k), rank_rtol, float(lanczos_tol), int(max_steps))
    return _dense(net, columns, rank_rtol)
