"""Preimages of one layer of a traced graph (Theorem 4 on graphs; layers as in :mod:`reluinv.graph`).

In a graph a layer is a nonlinear node ``v`` (an activation or a max-pool).  Its input is an
affine function of the outputs of the nonlinear nodes, or of the model input, that feed it
through affine nodes only (its *sources*): ``z = A u + b`` with ``u`` the sources' outputs,
concatenated in graph order, each flattened row-major.  In a residual block ``relu(bn2(conv2(h))
+ x)`` the sources are ``h`` and ``x``, and ``A = [BN2 Conv2 | I]``.  The preimage of the layer's
output ``y`` is a set of ``u``:

* ReLU: the polyhedron of Theorem 4, ``A_pos u + b_pos = y_pos``, ``A_zero u + b_zero <= 0``;
* ReLU6 / Hardtanh ``[lo, hi]``: ``z_i = y_i`` where ``lo < y_i < hi``, ``z_i <= lo`` where
  ``y_i = lo`` and ``z_i >= hi`` where ``y_i = hi``;
* strictly increasing activations (LeakyReLU, PReLU with positive slopes, ELU, Tanh): ``z = z(x)``
  (the activation is invertible);
* max-pooling on the linear region of ``x``: the selected unit ``a(j)`` of every window equals
  ``y_j`` and the selection inequalities of the argmax join the polyhedron,
  ``z_k <= z_{a(j)}`` for every other ``k`` of the window.  (The full preimage of a max-pool is
  the union of such polyhedra over all selections; this is its piece on the region of ``x``.)

All are polyhedra ``{u : E u = e, G u <= g}`` and are decided by :func:`reluinv.preimage`, which
takes equalities as rows with positive ``y`` and inequalities as rows with ``y = 0``: an equality
``a u + beta = t`` is passed as the row ``(a, beta - t + 1)`` with ``y = 1`` (the same set).
:func:`preimage_rows` returns that input, so certificates can be verified with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ._graph_ops import _MaxPool
from .geometry import DEFAULT_RTOL
from .graph import GraphNet, Layer, input_name, layer_by_name, maxpool_selection, prepare_graph
from .preimage import Preimage, preimage

__all__ = [
    "LayerSystem",
    "graph_layer_preimage",
    "layer_system",
    "pool_windows",
    "preimage_rows",
    "source_map",
]


@dataclass(frozen=True)
class LayerSystem:
    """The affine map feeding one layer of a graph at a sample, and the layer's values there.

    Attributes:
        layer: the layer (see :class:`reluinv.graph.Layer`).
        sources: ``(name, per-sample shape)`` of each source, in the order of the columns of
            ``A``: a layer name, or ``"input"`` for the model input.
        A, b: ``z = A u + b`` (float64, ``(m, n)`` and ``(m,)``), ``z`` the layer's flattened input.
        u: the sources' values at the sample (``(n,)``), so ``z = A u + b``.
        z, y: the layer's input and output at the sample, flattened.
        rows, kind: how :func:`preimage_rows` encodes the layer (internal).
    """

    layer: Layer
    sources: tuple[tuple[str, tuple[int, ...]], ...]
    A: NDArray[np.float64]
    b: NDArray[np.float64]
    u: NDArray[np.float64]
    z: NDArray[np.float64]
    y: NDArray[np.float64]
    windows: tuple[NDArray[np.intp], ...] | None = None
    selection: NDArray[np.intp] | None = None
    low: float = 0.0
    high: float = math.inf


def source_map(net: GraphNet, target: str) -> tuple[list[str], NDArray[np.float64], NDArray[np.float64]]:
    """The sources of node ``target`` and the affine map from them: ``(sources, A, b)`` with
    ``target = A u + b``, ``u`` the sources' outputs concatenated in graph order (each flattened
    row-major).  Sources are node names: nonlinear nodes, or the model input."""
    sources = _sources(net, target)
    A, b = _affine_map(net, target, sources)
    return sources, A, b


def _sources(net: GraphNet, start: str) -> list[str]:
    """Nonlinear nodes (or the input) that reach ``start`` through affine nodes only, in graph order."""
    found, seen, todo = set(), set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        node = net.nodes[name]
        if node.role in ("activation", "maxpool", "input"):
            found.add(name)
        elif node.role != "meta":
            todo.extend(r.name for r in node.fx_node.all_input_nodes if net.nodes[r.name].live)
    return [name for name in net.nodes if name in found]


def _affine_map(
    net: GraphNet, target: str, sources: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    shapes = [tuple(net.values[s].shape[1:]) for s in sources]
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)
    tangents, zeros, offset = {}, {}, 0
    for name, shape, size in zip(sources, shapes, sizes, strict=True):
        block = torch.zeros(n, size, dtype=torch.float64, device=net.device)
        block[torch.arange(offset, offset + size), torch.arange(size)] = 1.0
        tangents[name] = block.reshape(n, *shape)
        zeros[name] = torch.zeros(1, *shape, dtype=torch.float64, device=net.device)
        offset += size
    image = dict(net.evaluate("tangent", tangents, targets={target}))[target]
    A = image.reshape(n, -1).T.cpu().numpy().copy()
    b = dict(net.evaluate("value", zeros, targets={target}))[target].reshape(-1).cpu().numpy().copy()
    return A, b


def _axis_windows(n_in: int, n_out: int, pool: _MaxPool, axis: int, ndim: int) -> list[np.ndarray]:
    def param(key: str, default: Any) -> int:
        value = pool.params.get(key, default)
        value = default if value is None else value
        return int(value[axis] if isinstance(value, (tuple, list)) else value)

    if pool.fn.startswith("adaptive"):
        return [np.arange((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]
    k = param("kernel_size", 1)
    s, p, d = param("stride", k), param("padding", 0), param("dilation", 1)
    out = []
    for i in range(n_out):
        members = i * s - p + d * np.arange(k)
        out.append(members[(members >= 0) & (members < n_in)])
    return out


def _windows(layer: Layer, pool: _MaxPool) -> tuple[np.ndarray, ...]:
    """For every output position (row-major, per channel) the flat spatial input indices it pools."""
    spatial_in, spatial_out = layer.in_shape[1:], layer.out_shape[1:]
    axes = [
        _axis_windows(n_in, n_out, pool, a, len(spatial_in))
        for a, (n_in, n_out) in enumerate(zip(spatial_in, spatial_out, strict=True))
    ]
    windows = []
    for position in product(*[range(n) for n in spatial_out]):
        grids = np.meshgrid(*[axes[a][i] for a, i in enumerate(position)], indexing="ij")
        windows.append(np.ravel_multi_index(tuple(g.reshape(-1) for g in grids), spatial_in))
    return tuple(windows)


def pool_windows(net: GraphNet, layer: Layer) -> list[NDArray[np.intp]]:
    """For every output unit of a max-pool layer (flat, row-major), the flat indices into the
    layer's per-sample input of the units its window pools."""
    windows = _windows(layer, net.nodes[layer.node].handler)
    plane = math.prod(layer.in_shape[1:])
    return [w + channel * plane for channel in range(layer.in_shape[0]) for w in windows]


def layer_system(model: nn.Module, x: Any, layer: str | int) -> LayerSystem:
    """The affine map ``z = A u + b`` from a layer's sources to its input, at the sample ``x``.

    Args:
        model: any model :mod:`reluinv.graph` traces.
        x: one sample (with or without a leading batch axis of 1).
        layer: a layer name (e.g. ``"layer1.0.relu#2"``) or index.

    ``A`` is dense (``m * n * 8`` bytes): meant for layers of small and medium size.
    """
    _, net = prepare_graph(model, x)
    chosen = layer_by_name(net, layer)
    target = input_name(net.nodes[chosen.node].fx_node)
    sources, A, b = source_map(net, target)
    u = np.concatenate([net.values[s].reshape(-1).cpu().numpy() for s in sources])
    names = {layer_.node: layer_.name for layer_ in net.layers}
    extra: dict[str, Any] = {}
    handler = net.nodes[chosen.node].handler
    if chosen.kind == "maxpool":
        extra = {"windows": _windows(chosen, handler), "selection": maxpool_selection(net, chosen)}
    elif chosen.kind in ("relu6", "hardtanh"):
        extra = {"low": handler.low, "high": handler.high}
    elif chosen.kind in ("leaky_relu", "prelu"):
        slope = torch.as_tensor(handler.slope_neg)
        if bool((slope <= 0).any()):
            raise ValueError(
                f"layer {chosen.name!r}: a {chosen.kind} with a slope <= 0 is not invertible; its "
                "preimage is not one polyhedron"
            )
    elif chosen.kind == "elu" and float(handler.slope_neg) <= 0:
        raise ValueError(f"layer {chosen.name!r}: an ELU with alpha <= 0 is not invertible")
    return LayerSystem(
        layer=chosen,
        sources=tuple(
            ("input" if s == net.input else names[s], tuple(net.values[s].shape[1:])) for s in sources
        ),
        A=A,
        b=b,
        u=u,
        z=net.values[target].reshape(-1).cpu().numpy().copy(),
        y=net.values[chosen.node].reshape(-1).cpu().numpy().copy(),
        **extra,
    )


def _equalities(A: np.ndarray, b: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # a u + beta = t  <=>  a u + (beta - t + 1) = 1: a row that reluinv.preimage reads as an equality.
    return A, b - t + 1.0, np.ones(A.shape[0])


def preimage_rows(
    system: LayerSystem,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(A', b', y')`` whose :func:`reluinv.preimage` is the layer's preimage (module docstring):
    rows with ``y'_i > 0`` are equalities ``A'_i u + b'_i = y'_i``, rows with ``y'_i = 0`` are
    inequalities ``A'_i u + b'_i <= 0``."""
    A, b, y, z, kind = system.A, system.b, system.y, system.z, system.layer.kind
    if kind == "relu":
        return A, b, np.maximum(y, 0.0)
    if kind in ("relu6", "hardtanh"):
        low, high = y <= system.low, y >= system.high
        inside = ~(low | high)
        parts = [
            _equalities(A[inside], b[inside], y[inside]),
            (A[low], b[low] - system.low, np.zeros(int(low.sum()))),
            (-A[high], system.high - b[high], np.zeros(int(high.sum()))),
        ]
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]
    if kind != "maxpool":
        return _equalities(A, b, z)  # a strictly increasing activation: z itself is determined
    selected, windows = system.selection, system.windows
    assert selected is not None and windows is not None  # set by layer_system for max-pools
    plane = math.prod(system.layer.in_shape[1:])
    n_positions = len(windows)
    eq = _equalities(A[selected], b[selected], y)
    rows, offsets = [], []
    for j, chosen in enumerate(selected):
        channel = j // n_positions
        for k in windows[j % n_positions] + channel * plane:
            if k != chosen:
                rows.append(A[k] - A[chosen])
                offsets.append(b[k] - b[chosen])
    G = np.array(rows).reshape(-1, A.shape[1])
    g = np.array(offsets)
    keep = np.abs(G).max(axis=1) > 0 if G.size else np.zeros(0, bool)  # 0 <= 0 rows: always hold at x
    return (
        np.concatenate([eq[0], G[keep]]),
        np.concatenate([eq[1], g[keep]]),
        np.concatenate([eq[2], np.zeros(int(keep.sum()))]),
    )


def graph_layer_preimage(
    model: nn.Module,
    x: Any,
    layer: str | int,
    *,
    lower: Any = None,
    upper: Any = None,
    rtol: float = DEFAULT_RTOL,
) -> tuple[Preimage, LayerSystem]:
    """The preimage of one graph layer's output at ``x``, in the space of its sources' outputs.

    Returns ``(result, system)``: ``result`` is :func:`reluinv.preimage` of
    :func:`preimage_rows` ``(system)`` (kind, point, certificates; ``result.verify(*preimage_rows(system))``
    checks them), ``system`` the :class:`LayerSystem` (which sources, ``A``, ``b``, ``u``).
    ``lower``/``upper`` bound ``u`` (Remark 3).  ``system.u`` is the decision's ``hint``: where it
    lies in the preimage to the tolerance, ``result.point`` is ``u`` itself.

    Example::

        result, system = graph_layer_preimage(resnet, x, "layer1.0.relu#2")
        system.sources     # (('layer1.0.relu', (64, 8, 8)), ('maxpool', (64, 8, 8)))
        result.kind        # 'unbounded', 'compact' or 'singleton'
    """
    system = layer_system(model, x, layer)
    A, b, y = preimage_rows(system)
    return preimage(A, b, y, lower=lower, upper=upper, rtol=rtol, hint=system.u), system
