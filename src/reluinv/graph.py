"""Any traced PyTorch model as a graph of affine and piecewise-linear nodes (Definition 7).

A network whose every nonlinearity is piecewise linear (ReLU and its relatives, max-pooling) is
piecewise affine, whatever its wiring: residual additions, concatenations and pooling are affine,
so on the linear region of ``x`` the network is ``F(x') = J x' + c`` as in Definition 7, with
``J`` the product of the affine maps and of the activations' slope matrices *along the graph*.
This module turns a model into that graph (:func:`trace`), evaluates it in float64, and pushes
tangent vectors through it with every slope frozen at ``x`` (:class:`GraphNet`).

**Why torch.fx.** ``torch.fx.symbolic_trace`` records the model's ``forward`` as it is written:
every ``torch.nn`` module stays one node named by its *module path* (``layer1.0.conv1``), with
the module object at hand (padding mode, groups, running statistics), and every functional call
(``F.relu``, ``torch.flatten``, ``x.view``, ``torch.cat``, ``operator.add``) is a node with its
source line.  ``torch.export`` would decompose modules into ATen operators (a convolution with
circular padding becomes pads and slices, BatchNorm becomes a dozen nodes), compile through
dynamo (seconds per model, more dependencies), and keep module paths only as metadata.  What fx
cannot trace (Python control flow that depends on tensor values) is refused with a
``ValueError`` naming fx's reason.

**What a layer is.** In a graph, a *layer* is a nonlinear node: an activation (module or
functional) or a max-pooling node.  Layers are listed in the order of the traced program (a
topological order) and named by their module path (``layer1.0.relu``); a module called more than
once (torchvision's ``BasicBlock`` uses ``self.relu`` twice) gets ``#2``, ``#3`` for its later
calls, and a functional activation or max-pool is named ``<enclosing module path>.<function>()``
(``layer1.0.relu()`` for ``F.relu`` in ``layer1.0``'s forward, ``relu()`` at top level).  The
same names are used by :func:`reluinv.spectra` (one prefix Jacobian per layer),
:func:`reluinv.activation_pattern` (one pattern per ReLU or max-pool layer) and the layer
preimages of :mod:`reluinv.graph_preimage` (the preimage of a layer is taken with respect to the
affine map from the outputs of the nonlinear nodes, or the model input, that feed it).

Supported nodes (everything else is a ``ValueError`` naming the operation and where it sits):

* affine modules: ``Linear``, ``Conv1d``/``Conv2d`` (stride, padding and padding modes,
  dilation, groups, depthwise), ``BatchNorm1d``/``BatchNorm2d`` (eval mode), ``AvgPool1d``/
  ``AvgPool2d``, ``AdaptiveAvgPool1d``/``AdaptiveAvgPool2d``, ``Flatten``, ``Identity``, dropout
  (eval mode);
* affine functions and methods: ``+``/``-`` of two tensors or with a constant, ``*``/``/`` by a
  constant, negation, ``torch.cat``, ``flatten``, ``view``, ``reshape``, ``permute``,
  ``transpose``, ``contiguous``, ``mean``/``sum`` over non-batch axes, ``avg_pool``,
  ``adaptive_avg_pool``, slicing that keeps the batch axis, ``size``/``dim``;
* activations (layers): ``ReLU``, ``LeakyReLU``, ``PReLU``, ``ReLU6``, ``Hardtanh`` (piecewise
  linear) and ``ELU``, ``Tanh`` (smooth: their linearisation is the local Jacobian), as modules,
  functions (``F.relu``, ``torch.relu``, ``F.relu6``, ...) or methods (``x.relu()``);
* max-pooling (layers): ``MaxPool1d``/``MaxPool2d``/``AdaptiveMaxPool1d``/``AdaptiveMaxPool2d`` and
  their functional forms; on a linear region the output is the argmax selection, which is its
  linearisation.

The batch axis must stay the leading axis of every tensor (checked by running a batch of two).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ._graph_ops import (
    _activation_from_call,
    _activation_from_module,
    _Affine,
    _MaxPool,
    _maxpool_from_call,
    _maxpool_from_module,
)
from ._validate import as_model_input

__all__ = ["GraphNet", "Layer", "is_chain", "prepare_graph", "trace"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOL_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
) + _DROPOUT
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_ACTIVATION_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.Tanh)
_SUPPORTED_MODULE_NAMES = sorted(
    t.__name__
    for t in (nn.Linear, nn.Conv1d, nn.Conv2d) + _BN + _POOL_MODULES + _MAXPOOL_MODULES + _ACTIVATION_MODULES
)

# Functions and methods that are linear in their tensor arguments and keep the batch axis.
_STRUCTURAL_FUNCTIONS = {
    torch.flatten,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.cat,
    torch.concat,
    torch.mean,
    torch.sum,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    operator.getitem,
    operator.neg,
    torch.neg,
    torch.squeeze,
    torch.unsqueeze,
}
_STRUCTURAL_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "mean",
    "sum",
    "neg",
    "squeeze",
    "unsqueeze",
    "view_as",
    "reshape_as",
    "clone",
}
_META_METHODS = {"size", "dim"}
_ARITHMETIC: dict[Any, str] = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    "add": "add",
    "__add__": "add",
    operator.sub: "sub",
    operator.isub: "sub",
    torch.sub: "sub",
    "sub": "sub",
    "__sub__": "sub",
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    "mul": "mul",
    "__mul__": "mul",
    operator.truediv: "div",
    operator.itruediv: "div",
    torch.div: "div",
    "div": "div",
}
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    "relu": "relu",
    F.relu6: "relu6",
    F.leaky_relu: "leaky_relu",
    F.hardtanh: "hardtanh",
    F.elu: "elu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    "tanh": "tanh",
    F.prelu: "prelu",
    torch.prelu: "prelu",
}
_MAXPOOL_FUNCTIONS: dict[Any, str] = {
    F.max_pool1d: "max_pool1d",
    F.max_pool2d: "max_pool2d",
    F.adaptive_max_pool1d: "adaptive_max_pool1d",
    F.adaptive_max_pool2d: "adaptive_max_pool2d",
}


def is_chain(model: nn.Module) -> bool:
    """True when ``model`` is handled by the chain front end of :mod:`reluinv.network`.

    That is an ``nn.Sequential`` (nested ones flattened) or a single module whose every module is
    of a type the chain supports; chains keep their own code path, so their results do not change.
    Every other model goes through :func:`trace`.
    """
    from .network import _ACTIVATION_KINDS, _AFFINE_TYPES, flatten_modules

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return all(type(m) in _ACTIVATION_KINDS or isinstance(m, _AFFINE_TYPES) for m in flatten_modules(model))


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


_FRAME = re.compile(r'\s*File "([^"]+)", line (\d+), in (\S+)')


def _source_line(node: fx.Node) -> str:
    """``file.py:line (code)`` of the user frame that created ``node``, or the fx node name."""
    frames: list[list[str]] = []
    for line in (node.stack_trace or "").splitlines():
        match = _FRAME.match(line)
        if match:
            frames.append([match.group(1), match.group(2), ""])
        elif frames and not frames[-1][2]:
            frames[-1][2] = line.strip()
    frames = [f for f in frames if "/torch/" not in f[0].replace("\\", "/")]
    if not frames:
        return f"node {node.name}"
    path, line, code = frames[-1]
    return f"{path.replace(chr(92), '/').rsplit('/', 1)[-1]}:{line}" + (f" ({code})" if code else "")


def _where(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    return f"{_source_line(node)}"


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of ``model`` with source lines, or a ``ValueError`` saying why not."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ...
        raise ValueError(
            f"torch.fx could not trace {type(model).__name__}.forward ({type(exc).__name__}: {exc}); "
            "control flow that depends on tensor values cannot be traced"
        ) from exc
    return fx.GraphModule(model, graph)


# --------------------------------------------------------------------------------------------
# Node handlers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """A nonlinear node of the graph: an activation or a max-pool.

    Attributes:
        index: position among the layers (topological order).
        name: module path (``layer1.0.relu``, ``#2`` for a module's second call) - see the module
            docstring.
        node: the fx node name.
        kind: ``relu``, ``leaky_relu``, ``prelu``, ``relu6``, ``hardtanh``, ``elu``, ``tanh`` or
            ``maxpool``.
        in_shape, out_shape: per-sample shapes.
    """

    index: int
    name: str
    node: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Node:
    fx_node: fx.Node
    role: str  # input, const, meta, module, arith, structural, activation, maxpool, output
    where: str
    live: bool
    handler: Any = None
    layer: Layer | None = None
    users_until: int = 0  # index of the last node that reads this one


def _refs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []

    def collect(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg((node.args, node.kwargs), collect)
    return found


def input_name(node: fx.Node) -> str:
    """Name of the node that feeds ``node`` its (first) tensor argument: a layer's input."""
    arg = node.args[0]
    if not isinstance(arg, fx.Node):  # pragma: no cover - layers always take a traced tensor
        raise ValueError(f"node {node.name} does not take a traced tensor first")
    return arg.name


def _op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_module":
        owner = node.graph.owning_module
        return type(owner.get_submodule(str(target))).__name__ if owner is not None else str(target)
    if node.op == "call_method":
        return f".{target}()"
    return getattr(target, "__name__", str(target))


class GraphNet:
    """A traced model evaluated in float64 at one sample, with its layers and their states.

    ``GraphNet(model, sample)`` traces ``model`` (see :func:`trace`), checks every node, runs the
    sample (shape without batch axis) in float64 and records each layer's pre-activation, output
    and slope (or argmax).  :meth:`evaluate` then pushes tangent vectors through the graph with
    those slopes frozen, i.e. applies the Jacobian of Definition 7 along the graph.

    Example::

        net = GraphNet(resnet.eval(), torch.rand(3, 32, 32, dtype=torch.float64))
        [layer.name for layer in net.layers]      # ['relu', 'maxpool', 'layer1.0.relu', ...]
        J = net.jacobian()                       # (10, 3072)
    """

    def __init__(self, model: nn.Module, sample: torch.Tensor) -> None:
        self.model = model
        self.device = sample.device
        self.in_shape = tuple(sample.shape)
        self.gm = trace(model)
        self.nodes: dict[str, _Node] = {}
        self._classify()
        self.values: dict[str, Any] = {}
        self.states: dict[str, torch.Tensor] = {}  # slope (activations) or argmax (max-pools)
        self._build_run(sample)
        self._check_batch_axis(sample)
        self.layers = [n.layer for n in self.nodes.values() if n.layer is not None]
        out = self.nodes[self.output]
        self.out_shape = tuple(self.values[out.fx_node.name].shape[1:])

    # -- construction ------------------------------------------------------------------------

    def _classify(self) -> None:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(
                f"the model's forward must take exactly one tensor, got {len(placeholders)} arguments"
            )
        order = list(self.gm.graph.nodes)
        for position, node in enumerate(order):
            refs = _refs(node)
            live = node.op == "placeholder" or any(self.nodes[r.name].live for r in refs)
            self.nodes[node.name] = _Node(node, self._role(node, live), _where(node), live)
            for r in refs:
                self.nodes[r.name].users_until = position
        outputs = [n for n in order if n.op == "output"]
        result = outputs[0].args[0]
        if not isinstance(result, fx.Node) or not self.nodes[result.name].live:
            raise ValueError("the model must return one tensor that depends on its input")
        self.output = result.name
        self.input = placeholders[0].name

    def _role(self, node: fx.Node, live: bool) -> str:
        if node.op in ("placeholder", "output"):
            return "input" if node.op == "placeholder" else "output"
        if node.op == "get_attr" or not live:
            return "const"
        target = node.target
        if node.op == "call_module":
            return self._module_role(node, self.gm.get_submodule(str(target)))
        if (node.op == "call_method" and target in _META_METHODS) or (
            target is getattr and len(node.args) > 1 and node.args[1] in ("shape", "ndim")
        ):
            return "meta"
        key = target if node.op == "call_function" else target
        if key in _ARITHMETIC:
            return self._check_arith(node, _ARITHMETIC[key])
        if key in _ACTIVATION_FUNCTIONS:
            return "activation"
        if key in _MAXPOOL_FUNCTIONS:
            return "maxpool"
        if (node.op == "call_function" and target in _STRUCTURAL_FUNCTIONS) or (
            node.op == "call_method" and target in _STRUCTURAL_METHODS
        ):
            for r in _refs(node):
                if not self.nodes[r.name].live and self.nodes[r.name].role == "const":
                    raise ValueError(
                        f"{_where(node)}: {_op_name(node)} mixes the input with a constant tensor; "
                        "not supported"
                    )
            return "structural"
        raise ValueError(
            f"{_where(node)}: operation {_op_name(node)} is not supported (not affine or piecewise linear); "
            f"supported modules: {', '.join(_SUPPORTED_MODULE_NAMES)}, plus the functional forms listed in "
            "reluinv.graph"
        )

    def _module_role(self, node: fx.Node, module: nn.Module) -> str:
        where = f"module {node.target!r} ({type(module).__name__})"
        if isinstance(module, _BN + _DROPOUT) and module.training:
            raise ValueError(
                f"{where} is in training mode (random or batch-dependent, so the network has no "
                "fixed linear regions); call model.eval() first"
            )
        if isinstance(module, _BN) and module.running_mean is None:
            raise ValueError(f"{where} has no running statistics (track_running_stats=False)")
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d) + _BN + _POOL_MODULES):
            return "module"
        if isinstance(module, _ACTIVATION_MODULES):
            return "activation"
        if isinstance(module, _MAXPOOL_MODULES):
            return "maxpool"
        raise ValueError(
            f"{where} is not supported (not affine or piecewise linear); supported modules: "
            f"{', '.join(_SUPPORTED_MODULE_NAMES)}"
        )

    def _check_arith(self, node: fx.Node, kind: str) -> str:
        def is_live(a: Any) -> bool:
            return isinstance(a, fx.Node) and self.nodes[a.name].live and self.nodes[a.name].role != "meta"

        flags = [is_live(a) for a in node.args[:2]]
        if kind in ("mul", "div") and all(flags):
            raise ValueError(
                f"{_where(node)}: {_op_name(node)} of two tensors that both depend on the input is not "
                "piecewise linear; only multiplication or division by a constant is supported"
            )
        if kind == "div" and not flags[0]:
            raise ValueError(
                f"{_where(node)}: division by a tensor that depends on the input is not supported"
            )
        return "arith"

    def _layer_name(self, node: fx.Node, counts: dict[str, int]) -> str:
        if node.op == "call_module":
            base = str(node.target)
        else:
            stack = node.meta.get("nn_module_stack") or {}
            enclosing = next(reversed(stack.values()))[0] if stack else ""
            fn = (
                node.target
                if node.op == "call_method"
                else getattr(node.target, "__name__", str(node.target))
            )
            base = f"{enclosing}.{fn}()" if enclosing else f"{fn}()"
        counts[base] = counts.get(base, 0) + 1
        return base if counts[base] == 1 else f"{base}#{counts[base]}"

    def _build_run(self, sample: torch.Tensor) -> None:
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            n = node.fx_node
            if node.role in ("activation", "maxpool") or node.role == "module":
                node.handler = self._make_handler(n, node.role)
        for name, value in self.evaluate("value", {self.input: sample[None]}, record=True):
            self.values[name] = value
        for node in self.nodes.values():
            if node.role in ("activation", "maxpool"):
                n = node.fx_node
                z = self.values[input_name(n)]
                kind = node.handler.kind if node.role == "activation" else "maxpool"
                node.layer = Layer(
                    index=0,
                    name=self._layer_name(n, counts),
                    node=n.name,
                    kind=kind,
                    in_shape=tuple(z.shape[1:]),
                    out_shape=tuple(self.values[n.name].shape[1:]),
                )
        for index, node in enumerate(n for n in self.nodes.values() if n.layer is not None):
            node.layer = Layer(
                index, *[getattr(node.layer, f) for f in ("name", "node", "kind", "in_shape", "out_shape")]
            )

    def _make_handler(self, n: fx.Node, role: str) -> Any:
        if role == "module":
            return _Affine(self.gm.get_submodule(str(n.target)), self.device)
        if n.op == "call_module":
            module = self.gm.get_submodule(str(n.target))
            return (
                _activation_from_module(module, self.device)
                if role == "activation"
                else _maxpool_from_module(module)
            )
        return None  # functional: built on the first value run, once constant arguments are known

    def _check_batch_axis(self, sample: torch.Tensor) -> None:
        pair = torch.stack([sample, sample])
        for name, value in self.evaluate("value", {self.input: pair}):
            if not isinstance(value, torch.Tensor):
                continue
            one = self.values[name]
            if (
                value.dim() == 0
                or value.shape[0] != 2
                or one.shape[0] != 1
                or value.shape[1:] != one.shape[1:]
            ):
                node = self.nodes[name]
                raise ValueError(
                    f"{node.where}: {_op_name(node.fx_node)} does not keep the batch axis first (shape "
                    f"{tuple(one.shape)} for one sample, {tuple(value.shape)} for two); every operation "
                    "must act "
                    "on each sample separately"
                )

    # -- evaluation --------------------------------------------------------------------------

    def _const(self, name: str) -> Any:
        cache = self.__dict__.setdefault("_consts", {})
        if name not in cache:
            n = self.nodes[name].fx_node
            if n.op == "get_attr":
                value = self.gm
                for part in str(n.target).split("."):
                    value = getattr(value, part)
                if isinstance(value, torch.Tensor):
                    value = value.detach().to(self.device)
                    value = value.double() if value.is_floating_point() else value
            else:
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda r: self._const(r.name))
                value = _call(n, args, kwargs)
            cache[name] = value
        return cache[name]

    def _needed(self, targets: set[str], seeds: dict[str, Any]) -> set[str]:
        needed, todo = set(), list(targets)
        while todo:
            name = todo.pop()
            if name in needed:
                continue
            needed.add(name)
            if name not in seeds and self.nodes[name].role != "meta":  # meta nodes read shapes only
                todo.extend(r.name for r in _refs(self.nodes[name].fx_node) if self.nodes[r.name].live)
        return needed

    def evaluate(
        self, mode: str, seeds: dict[str, Any], *, record: bool = False, targets: set[str] | None = None
    ) -> Iterator[tuple[str, Any]]:
        """Run the live part of the graph; yield ``(node name, value)`` in order.

        ``mode="value"``: the network itself in float64 (``record=True`` stores each layer's slope or
        argmax).  ``mode="tangent"``: the linear map of Definition 7 at the recorded sample, on a
        batch of tangent vectors (affine offsets dropped, activations multiplied by their slopes,
        max-pools gathering at their argmax).  ``seeds`` gives the values of some nodes (the
        input's name: the batch); with ``targets`` only what those nodes need is evaluated.  A
        value is freed after its last use (hold on to what you need from the yields).
        """
        needed = None if targets is None else self._needed(set(targets), seeds)
        self._batch = next(iter(seeds.values())).shape[0]
        env: dict[str, Any] = {}
        order = list(self.nodes.values())
        for position, node in enumerate(order):
            name = node.fx_node.name
            if not node.live or node.role == "output" or (needed is not None and name not in needed):
                continue
            value = seeds[name] if name in seeds else self._eval_node(node, mode, env, record)
            env[name] = value
            yield name, value
            for r in _refs(node.fx_node):
                if self.nodes[r.name].users_until <= position:
                    env.pop(r.name, None)

    def _eval_node(self, node: _Node, mode: str, env: dict[str, Any], record: bool) -> Any:
        n = node.fx_node
        if node.role == "input":
            raise ValueError(f"no value was given for the model input {n.name!r}")

        def lookup(r: fx.Node) -> Any:
            if not self.nodes[r.name].live:
                return self._const(r.name)
            if r.name not in env and node.role == "meta":
                # A shape query on a tensor that is not evaluated (upstream of the seeds): a
                # stand-in of the same per-sample shape on torch's "meta" device answers it.
                shape = (self._batch,) + tuple(self.values[r.name].shape[1:])
                return torch.empty(shape, dtype=torch.float64, device="meta")
            return env[r.name]

        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lookup)
        try:
            return self._apply(node, mode, args, kwargs, record)
        except (RuntimeError, IndexError, TypeError, ValueError) as exc:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            raise ValueError(
                f"{node.where}: {_op_name(n)} failed on inputs of shape {shapes}: {exc}"
            ) from exc

    def _apply(
        self, node: _Node, mode: str, args: tuple[Any, ...], kwargs: dict[str, Any], record: bool
    ) -> Any:
        n, role, name = node.fx_node, node.role, node.fx_node.name
        if role in ("meta", "structural"):
            return _call(n, args, kwargs)
        if role == "module":
            return node.handler.run(args[0], mode == "value")
        if role == "arith":
            if mode == "tangent" and _ARITHMETIC[n.target] in ("add", "sub"):
                args = tuple(
                    a
                    if i > 1
                    or (
                        isinstance(r, fx.Node)
                        and self.nodes[r.name].live
                        and self.nodes[r.name].role != "meta"
                    )
                    else (torch.zeros_like(a) if isinstance(a, torch.Tensor) else 0.0)
                    for i, (a, r) in enumerate(zip(args, n.args, strict=True))
                )
            return _call(n, args, kwargs)
        z = args[0]
        if node.handler is None:
            node.handler = (
                _activation_from_call(_ACTIVATION_FUNCTIONS[n.target], args, kwargs)
                if role == "activation"
                else _maxpool_from_call(_MAXPOOL_FUNCTIONS[n.target], args, kwargs)
            )
        if role == "activation":
            if mode == "tangent":
                return z * self.states[name]
            if record:
                self.states[name] = node.handler.slope(z)
            return node.handler.value(z)
        if mode == "tangent":
            return _MaxPool.select(z, self.states[name])
        out, idx = node.handler.value(z)
        if record:
            self.states[name] = idx
        return out

    # -- linear algebra ------------------------------------------------------------------------

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    def push(self, tangents: torch.Tensor, node: str | None = None) -> torch.Tensor:
        """``J v`` for a batch ``tangents`` of shape ``(b, *in_shape)``, ``J`` the Jacobian at the
        sample of the output of ``node`` (default: the model output); shape ``(b, *node shape)``."""
        target = node or self.output
        for name, value in self.evaluate("tangent", {self.input: tangents}, targets={target}):
            if name == target:
                pushed: torch.Tensor = value
                return pushed
        raise AssertionError(f"node {target} was not evaluated")  # pragma: no cover

    def jacobian(self, node: str | None = None, *, chunk_bytes: int = 1 << 30) -> np.ndarray:
        """Dense Jacobian (float64 numpy, ``(out_dim, in_dim)``) of ``node``'s output at the sample.

        Pushes identity bases forward when the input is the smaller side, pulls cotangents back
        (the tangent map is linear, so its vector-Jacobian product is its exact transpose) otherwise.
        """
        target = node or self.output
        out_dim = math.prod(self.values[target].shape[1:])
        in_dim, in_shape = self.in_dim, self.in_shape
        widest = max(
            [in_dim, out_dim] + [v[0].numel() for v in self.values.values() if isinstance(v, torch.Tensor)]
        )
        chunk = max(1, chunk_bytes // (8 * widest))
        J = np.empty((out_dim, in_dim))
        eye = _identity_rows
        if in_dim <= out_dim:
            for start in range(0, in_dim, chunk):
                stop = min(in_dim, start + chunk)
                image = self.push(eye(start, stop, in_dim, self.device).reshape(-1, *in_shape), target)
                J[:, start:stop] = image.reshape(stop - start, out_dim).cpu().numpy().T
            return J
        for start in range(0, out_dim, chunk):
            stop = min(out_dim, start + chunk)
            with torch.enable_grad():
                v = torch.zeros(
                    stop - start, *in_shape, dtype=torch.float64, device=self.device, requires_grad=True
                )
                out = self.push(v, target).reshape(stop - start, -1)
                (grad,) = torch.autograd.grad(out, v, grad_outputs=eye(start, stop, out_dim, self.device))
            J[start:stop] = grad.reshape(stop - start, -1).cpu().numpy()
        return J


def _identity_rows(start: int, stop: int, dim: int, device: torch.device) -> torch.Tensor:
    rows = torch.zeros(stop - start, dim, dtype=torch.float64, device=device)
    rows[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return rows


_INPLACE: dict[Any, Any] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


def _call(n: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if n.op == "call_method":
        return getattr(args[0], str(n.target))(*args[1:], **kwargs)
    return _INPLACE.get(n.target, n.target)(*args, **kwargs)


def prepare_graph(model: nn.Module, x: Any) -> tuple[torch.Tensor, GraphNet]:
    """Check ``x`` and return it as one float64 sample (no batch axis) with its :class:`GraphNet`.

    ``x`` may carry a leading batch axis of 1; it is stripped when the model runs on the rest
    (tried first), else ``x`` is taken as one sample.  The device is ``x``'s when it is a tensor,
    else the model's.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(x, torch.Tensor):
        device = x.device
    else:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sample = torch.from_numpy(as_model_input(x, "x")).to(device)
    candidates = ([sample[0]] if sample.dim() >= 2 and sample.shape[0] == 1 else []) + [sample]
    errors: list[ValueError] = []
    for candidate in candidates:
        try:
            return candidate, GraphNet(model, candidate)
        except ValueError as exc:
            errors.append(exc)
    raise errors[0]


# --------------------------------------------------------------------------------------------
# Definition 7 on graphs
# --------------------------------------------------------------------------------------------


def layer_by_name(net: GraphNet, layer: str | int) -> Layer:
    """The layer called ``layer`` (a name of :attr:`GraphNet.layers`, or its index)."""
    for candidate in net.layers:
        if candidate.name == layer or (
            isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) and candidate.index == layer
        ):
            return candidate
    names = ", ".join(repr(l.name) for l in net.layers)
    raise ValueError(f"no layer {layer!r} in this model; its layers are: {names}")


def graph_linearize(model: nn.Module, x: Any, upto: str | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reluinv.linearize` for a traced graph: ``(J, c)`` with ``F(x') = J x' + c`` on the
    linear region of ``x`` (Definition 7; exact for ReLU, ReLU6, Hardtanh, LeakyReLU, PReLU and
    max-pool networks on the region, the first-order expansion with ELU or Tanh).  ``upto``: a
    layer name (or index) - the map to that layer's *input* instead of the model output."""
    sample, net = prepare_graph(model, x)
    target = net.output
    if upto is not None:
        target = input_name(net.nodes[layer_by_name(net, upto).node].fx_node)
    J = net.jacobian(target)
    value = net.values[target].reshape(-1).cpu().numpy()
    return J, value - J @ sample.reshape(-1).cpu().numpy()


def graph_activation_pattern(model: nn.Module, x: Any) -> dict[str, np.ndarray]:
    """:func:`reluinv.activation_pattern` for a traced graph, keyed by layer name.

    ReLU layers (module or functional): the sorted flat indices ``I = {i : z_i <= 0}`` of the
    inactive units (Definition 7).  Max-pool layers: for each output unit (row-major), the flat
    index into the layer's input of the unit it selects (the argmax; its pattern on a region).
    """
    _, net = prepare_graph(model, x)
    pattern: dict[str, np.ndarray] = {}
    for layer in net.layers:
        node = net.nodes[layer.node].fx_node
        if layer.kind == "relu":
            z = net.values[input_name(node)].reshape(-1).cpu().numpy()
            pattern[layer.name] = np.flatnonzero(z <= 0).astype(np.intp)
        elif layer.kind == "maxpool":
            pattern[layer.name] = maxpool_selection(net, layer)
    return pattern


def maxpool_selection(net: GraphNet, layer: Layer) -> np.ndarray:
    """Flat indices into the max-pool layer's per-sample input selected by each output unit."""
    idx = net.states[layer.node][0].reshape(layer.in_shape[0], -1).cpu().numpy().astype(np.intp)
    plane = math.prod(layer.in_shape[1:])
    return (idx + plane * np.arange(layer.in_shape[0], dtype=np.intp)[:, None]).reshape(-1)
