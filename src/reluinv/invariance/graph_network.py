"""A traced model (residual additions, concatenations, any wiring :mod:`reluinv.graph` supports) as
the dense ReLU blocks of :mod:`.problem`, so that every search of :mod:`reluinv.invariance` runs on
it.

The feature layer is a layer of the graph (:mod:`reluinv.graph`: an activation or max-pool node,
named by its module path, or its index among the layers), or ``"output"``. The blocks are that
layer and every layer it depends on, in the order of the traced program (a topological order). Each
block reads a *set* of sources -- the outputs of earlier layers and/or the model input that feed it
through affine nodes only -- with the dense map ``z = A u + b`` of
:func:`reluinv.graph_preimage.source_map` (the same map as the layer preimages of
:func:`reluinv.graph_preimage.layer_system`). Fixing the pattern of every block makes the network
affine on each piece, as in a chain, so the encoding, the bounds, the pieces and the searches carry
over unchanged: the union of the pieces is the preimage (Section 4, "Scope").

Max-pool layers are encoded exactly by ReLUs (``max(a, b) = b + ReLU(a - b)``, :mod:`.maxpool`),
so a max-pool's output is an affine expression over ReLU blocks; a max-pool feature layer, or the
model output, makes the features such an expression (the affine ``tail`` of the dense network).
Activations other than ReLU are refused, as for chains.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from numpy.typing import NDArray
from torch import nn

from ..graph import GraphNet, Layer, input_name, layer_by_name, prepare_graph
from ..graph_preimage import pool_windows, source_map
from ..network import flatten_modules
from .maxpool import Expr, compose, max_as_relus
from .problem import INPUT, DenseNetwork, FeatureFn, ReluBlock, check_layer

#: ``layer`` value that asks for the model's output as the features (unless a layer has this name).
OUTPUT = "output"


def _describe(net: GraphNet, layer: Layer) -> str:
    """``'name' (ModuleType)`` for a module layer, ``'name'`` for a functional one."""
    node = net.nodes[layer.node].fx_node
    if node.op == "call_module":
        return f"{layer.name!r} ({type(net.gm.get_submodule(str(node.target))).__name__})"
    return repr(layer.name)


def _check_kind(net: GraphNet, layer: Layer, where: str) -> None:
    """ReLU and max-pool only (the other activations are refused, naming the layer)."""
    if layer.kind not in ("relu", "maxpool"):
        raise ValueError(
            f"layer {_describe(net, layer)} ({layer.kind}) is not supported by the invariance "
            f"searches: they need ReLU activations (and max-pools) up to the features ({where}); "
            f"the pieces of a {layer.kind} network are not encoded"
        )


Source = tuple[Layer, list[str], NDArray[np.float64], NDArray[np.float64]]


def _ancestors(net: GraphNet, seeds: list[str], where: str) -> list[Source]:
    """The layers ``seeds`` and every layer they depend on, in program order, each with its sources
    and the dense map from them: ``(layer, sources, A, b)``."""
    by_node = {layer.node: layer for layer in net.layers}
    found: dict[str, tuple[list[str], NDArray[np.float64], NDArray[np.float64]]] = {}
    todo = list(seeds)
    while todo:
        node = todo.pop()
        if node in found:
            continue
        _check_kind(net, by_node[node], where)
        sources, A, b = source_map(net, input_name(net.nodes[node].fx_node))
        found[node] = (sources, A, b)
        todo.extend(s for s in sources if s != net.input)
    return [(layer, *found[layer.node]) for layer in net.layers if layer.node in found]


def _blocks(net: GraphNet, layers: list[Source], blocks: list[ReluBlock]) -> dict[str, Expr]:
    """Append the ReLU blocks of ``layers`` (in program order) to ``blocks``; return every node's
    output as an expression over the blocks and the input (a max-pool: :func:`.maxpool.max_as_relus`)."""

    def add_block(expr: Expr, name: str) -> int:
        weight, sources = expr.matrix()
        blocks.append(ReluBlock(weight, expr.offset, name, sources))
        return len(blocks) - 1

    exprs = {net.input: Expr.atom(INPUT, math.prod(net.values[net.input].shape[1:]))}
    for chosen, sources, A, b in layers:
        z = compose(A, b, [exprs[s] for s in sources])
        if chosen.kind == "maxpool":
            exprs[chosen.node] = max_as_relus(z, pool_windows(net, chosen), chosen.name, add_block)
        else:
            exprs[chosen.node] = Expr.atom(add_block(z, chosen.name), z.n_rows)
    return exprs


def _features(net: GraphNet, layer: Any) -> tuple[str, str]:
    """The node whose output is the features, and the layer's name as the caller will read it."""
    if layer == OUTPUT and all(candidate.name != OUTPUT for candidate in net.layers):
        return net.output, OUTPUT
    chosen = layer_by_name(net, layer)
    return chosen.node, chosen.name


def graph_network(model: Any, x_arr: NDArray[np.float64], layer: Any) -> tuple[DenseNetwork, FeatureFn]:
    """The traced ``model`` up to its features as dense ReLU blocks (module docstring), and the
    reference forward pass (:class:`GraphFeatures`).

    ``layer``: a layer name (module path) or index among the graph's layers, or ``"output"`` for
    the model output; for an ``nn.Sequential`` that is not a chain (e.g. one with a max-pool) an
    integer is a module index, as for chains.
    """
    module_index: int | None = None
    if isinstance(model, nn.Sequential) and not isinstance(layer, str):
        leaves = flatten_modules(model)
        module_index = check_layer(layer, len(leaves))
        model, layer = nn.Sequential(*leaves[: module_index + 1]), OUTPUT
    elif isinstance(layer, bool) or not isinstance(layer, (str, int, np.integer)):
        raise ValueError(
            f"layer must be a layer name (module path), a layer index or 'output' for a traced model, "
            f"got {type(layer).__name__}"
        )
    sample, net = prepare_graph(model, x_arr)
    target, feature_name = _features(net, layer)
    name: int | str = feature_name if module_index is None else module_index
    where = f"layer {feature_name!r}" if module_index is None else f"module {module_index}"
    relu_target = any(c.node == target and c.kind == "relu" for c in net.layers)
    seeds, tail_map = [target], None
    if not any(c.node == target for c in net.layers):  # the features are affine in some layers
        tail_map = source_map(net, target)
        seeds = [s for s in tail_map[0] if s != net.input]
    blocks: list[ReluBlock] = []
    exprs = _blocks(net, _ancestors(net, seeds, where), blocks)
    tail: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
    tail_sources: tuple[int, ...] = ()
    if not relu_target:  # the model output, or a max-pool's output: an expression over the blocks
        features = (
            exprs[target] if tail_map is None else compose(*tail_map[1:], [exprs[s] for s in tail_map[0]])
        )
        matrix, tail_sources = features.matrix()
        tail = (matrix, features.offset)
    dense = DenseNetwork(
        input_shape=tuple(int(s) for s in sample.shape),
        n_inputs=int(x_arr.size),
        blocks=tuple(blocks),
        tail=tail,
        tail_sources=tail_sources,
        layer=name,
        where=where,
    )
    return dense, GraphFeatures(net, target, tuple(sample.shape))


class _Capture(fx.Interpreter):
    """Runs a GraphModule node by node and keeps a copy of one node's output."""

    def __init__(self, gm: fx.GraphModule, target: str) -> None:
        super().__init__(gm)
        self.target = target
        self.captured: torch.Tensor | None = None

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name == self.target:
            self.captured = out.detach().clone()  # later in-place operations must not change it
        return out


class GraphFeatures:
    """The reference features: a float64 copy of the traced model run by ``torch.fx.Interpreter``
    (the model's own modules and functions, node by node), read at the feature layer's node."""

    def __init__(self, net: GraphNet, node: str, shape: tuple[int, ...]) -> None:
        self._gm = copy.deepcopy(net.gm).double().cpu().eval()
        self._node = node
        self._shape = shape

    def __call__(self, x_flat: NDArray[np.float64]) -> NDArray[np.float64]:
        run = _Capture(self._gm, self._node)
        with torch.no_grad():
            run.run(torch.as_tensor(np.asarray(x_flat, dtype=np.float64).reshape((1, *self._shape))))
        assert run.captured is not None  # the feature layer is a node of the graph
        out: NDArray[np.float64] = run.captured.reshape(-1).numpy().copy()
        return out
