"""``torch.export`` archives (``.pt2``) as models :mod:`reluinv.graph` can trace.

``torch.export`` records a model as ATen operators on tensors held as attributes
(``aten.linear(x, fc.weight, fc.bias)``); :mod:`reluinv.graph` reads ``torch.nn`` modules and
functions.  :func:`module_from_exported` rebuilds the program as an ``fx.GraphModule`` whose
parametrised operators are ``torch.nn`` modules again, placed at the module path that
``torch.export`` recorded for them (``nn_module_stack``), so layers keep their names
(``layer1.0.relu``).  The translation is one to one (each ATen call becomes the module or
function that computes it), so the rebuilt model computes what the archive does.

Translated: ``linear``, ``conv1d``/``conv2d``, batch norm in eval mode, ``relu``, ``hardtanh``
(``ReLU6``), ``leaky_relu``, ``max_pool1d``/``max_pool2d``, ``avg_pool2d``,
``adaptive_avg_pool2d``, ``add``/``sub``/``mul``/``div``/``neg``, ``flatten``, ``view``/
``reshape``, ``permute``, ``cat``, ``mean``; shape guards and asserts are dropped.  Anything else is a
``ValueError`` naming the operator and its module path.  Reshapes to a fixed batch size cannot be
analysed (the batch axis must be free): export with ``torch.flatten`` or a dynamic batch axis.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["module_from_exported"]

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "add.Tensor": operator.add,
    "sub.Tensor": operator.sub,
    "mul.Tensor": operator.mul,
    "mul.Scalar": operator.mul,
    "div.Tensor": operator.truediv,
    "div.Scalar": operator.truediv,
    "neg.default": operator.neg,
    "flatten.using_ints": torch.flatten,
    "permute.default": torch.permute,
    "cat.default": torch.cat,
    "mean.dim": torch.mean,
    "relu.default": F.relu,
    "relu_.default": F.relu,
}
_SKIPPED = ("_assert", "sym_size", "sym_constrain", "_guards_fn")


def _op(node: fx.Node) -> str:
    """``aten.conv2d.default`` -> ``conv2d.default``; other targets by their name."""
    name = str(node.target)
    return name.split("aten.", 1)[1] if name.startswith("aten.") else name


def _path(node: fx.Node, fallback: str) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [entry[0] for entry in stack.values() if entry[0]]
    return paths[-1] if paths else fallback


def _conv(node: fx.Node, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    args: list[Any] = list(node.args[3:]) + [None] * 4
    stride, padding, dilation, groups = (
        args[i] if args[i] is not None else d for i, d in enumerate((1, 0, 1, 1))
    )
    cls: Any = nn.Conv2d if _op(node).startswith("conv2d") else nn.Conv1d
    module = cls(
        weight.shape[1] * int(groups),
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=int(groups),
        bias=bias is not None,
    )
    return _with_tensors(module, weight=weight, bias=bias)


def _with_tensors(module: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        for key, value in tensors.items():
            if value is not None:
                getattr(module, key).copy_(value)
    return module.eval()


def _module_for(node: fx.Node, tensor: Callable[[Any], Any]) -> nn.Module | None:
    """The ``torch.nn`` module computing the ATen call ``node`` (tensor args read with ``tensor``)."""
    op, a = _op(node), tuple[Any, ...](node.args)
    if op == "linear.default":
        weight, bias = tensor(a[1]), tensor(a[2]) if len(a) > 2 else None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        return _with_tensors(linear, weight=weight, bias=bias)
    if op in ("conv1d.default", "conv2d.default", "conv1d.padding", "conv2d.padding"):
        return _conv(node, tensor(a[1]), tensor(a[2]) if len(a) > 2 else None)
    if op in ("_native_batch_norm_legit_no_training.default", "batch_norm.default"):
        weight, bias, mean, var = (tensor(v) for v in a[1:5])
        eps = float(a[-1] if op.startswith("_native") else a[7])
        stack = [entry[1] for entry in (node.meta.get("nn_module_stack") or {}).values()]
        norm: Any = nn.BatchNorm1d if stack and stack[-1].endswith("BatchNorm1d") else nn.BatchNorm2d
        bn = norm(mean.shape[0], eps=eps, affine=weight is not None)
        return _with_tensors(bn, weight=weight, bias=bias, running_mean=mean, running_var=var)
    if op in ("hardtanh.default", "hardtanh_.default"):
        low, high = (float(v) for v in (list(a[1:3]) + [-1.0, 1.0][len(a) - 1 :]))
        return nn.ReLU6() if (low, high) == (0.0, 6.0) else nn.Hardtanh(low, high)
    if op in ("leaky_relu.default", "leaky_relu_.default"):
        return nn.LeakyReLU(float(a[1]) if len(a) > 1 else 0.01)
    if op in ("max_pool2d.default", "max_pool1d.default"):
        kernel, stride = a[1], (a[2] if len(a) > 2 and a[2] else a[1])
        rest = list(a[3:]) + [0, 1, False][len(a) - 3 if len(a) > 3 else 0 :]
        pool: Any = nn.MaxPool2d if op.startswith("max_pool2d") else nn.MaxPool1d
        return pool(kernel, stride, padding=rest[0], dilation=rest[1], ceil_mode=bool(rest[2]))
    if op == "avg_pool2d.default":
        kernel, stride = a[1], (a[2] if len(a) > 2 and a[2] else a[1])
        return nn.AvgPool2d(kernel, stride, *a[3:])
    if op == "adaptive_avg_pool2d.default":
        return nn.AdaptiveAvgPool2d(a[1])
    return None


def module_from_exported(program: Any) -> fx.GraphModule:
    """An ``fx.GraphModule`` of ``torch.nn`` modules equivalent to an ``ExportedProgram``.

    Raises ``ValueError`` naming the first operator (and its module path) that is not translated.
    """
    source = program.module()
    graph = fx.Graph()
    root: dict[str, Any] = {}
    env: dict[fx.Node, Any] = {}

    def tensor(arg: Any) -> Any:
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            return source.get_submodule("").get_parameter(str(arg.target)) if _is_param(arg) else _attr(arg)
        return arg

    def _is_param(arg: fx.Node) -> bool:
        return str(arg.target) in dict(source.named_parameters())

    def _attr(arg: fx.Node) -> Any:
        value: Any = source
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return value

    def value(arg: Any) -> Any:
        def one(n: fx.Node) -> Any:
            if n.op == "get_attr" and n not in env:
                name = f"const_{n.name}"
                root[name] = tensor(n).detach().clone()
                env[n] = graph.get_attr(name)
            return env[n]

        return fx.node.map_arg(arg, one)

    for node in source.graph.nodes:
        op = _op(node)
        if node.op == "placeholder":
            env[node] = graph.placeholder(node.name)
        elif node.op == "get_attr":
            continue
        elif node.op == "output":
            result = node.args[0]
            single = isinstance(result, (tuple, list)) and len(result) == 1
            graph.output(value(result[0] if single else result))
        elif any(mark in op for mark in _SKIPPED):
            continue
        elif node.op == "call_function" and node.target is operator.getitem:
            if node.args[1] == 0 and node.args[0] in _FUSED:
                env[node] = env[node.args[0]]
            else:
                env[node] = graph.call_function(operator.getitem, value(node.args))
        elif op in ("clone.default", "contiguous.default", "alias.default", "detach.default"):
            env[node] = value(node.args[0])
        elif op in ("view.default", "reshape.default", "_unsafe_view.default"):
            env[node] = graph.call_method("reshape", (value(node.args[0]), *node.args[1]))
        elif op in _FUNCTIONS and not (op.startswith("relu") and _stack_type(node).endswith(".ReLU")):
            env[node] = graph.call_function(_FUNCTIONS[op], value(node.args), value(node.kwargs))
        else:
            env[node] = _module_node(node, op, graph, root, tensor, value)
    _FUSED.clear()
    return fx.GraphModule(root, graph).eval()


_FUSED: set[fx.Node] = set()  # batch-norm calls returning a tuple whose item 0 is the module's output


def _stack_type(node: fx.Node) -> str:
    stack = [entry[1] for entry in (node.meta.get("nn_module_stack") or {}).values()]
    return str(stack[-1]) if stack else ""


def _module_node(
    node: fx.Node,
    op: str,
    graph: fx.Graph,
    root: dict[str, Any],
    tensor: Callable[[Any], Any],
    value: Callable[[Any], Any],
) -> fx.Node:
    if op.startswith("relu"):
        module: nn.Module | None = nn.ReLU()
    else:
        module = _module_for(node, tensor)
    if module is None:
        raise ValueError(
            f"the torch.export archive uses {node.target} (at {_path(node, 'top level')!r}), which "
            "reluinv cannot analyse; supported: linear, conv1d/conv2d, batch norm (eval), relu, "
            "relu6/hardtanh, leaky_relu, max/avg pooling, add/sub/mul/div by constants, flatten, view, "
            "permute, cat, mean"
        )
    path = _path(node, node.name)
    if path in root and type(root[path]) is not type(module):
        path = f"{path}.{node.name}"
    root.setdefault(path, module)
    if op.startswith("_native_batch_norm"):
        _FUSED.add(node)
    return graph.call_module(path, (value(node.args[0]),))
