"""Node operations of :mod:`reluinv.graph` in float64: affine modules, activations and max-pools.

Each knows its value and its linearisation at a recorded state (Definition 7): an affine module
``W x + c`` has linear part ``W v``; an activation multiplies a tangent by its slope at the
pre-activation; a max-pool gathers a tangent at its argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _f64(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.detach().to(device=device, dtype=torch.float64)


def _conv(module: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Conv1d/Conv2d with float64 parameters, padding modes included (as ``_ConvNd.forward``)."""
    conv: Callable[..., torch.Tensor] = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    if module.padding_mode == "zeros":
        return conv(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    padded = F.pad(x, explicit_padding(module), mode=module.padding_mode)
    return conv(padded, weight, bias, module.stride, 0, module.dilation, module.groups)


def explicit_padding(module: Any) -> tuple[int, ...]:
    """A convolution's padding as ``F.pad`` amounts (last axis first, each side), for the
    non-zero padding modes that pad before convolving; "same" puts the odd pixel at the end."""
    if isinstance(module.padding, str):
        pads: list[int] = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation), strict=True):
            total = 0 if module.padding == "valid" else d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    return tuple(p for p in reversed(module.padding) for _ in range(2))


class _Affine:
    """An affine module: ``value`` is ``W x + c``, ``linear`` is ``W v``."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module
        self.weight = self.bias = torch.zeros(0, dtype=torch.float64, device=device)
        self.has_bias = False
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            self.weight = module.weight.detach().to(device=device, dtype=torch.float64)
            if module.bias is not None:
                self.bias, self.has_bias = module.bias.detach().to(device=device, dtype=torch.float64), True
        elif isinstance(module, _BN):
            assert (
                module.running_mean is not None and module.running_var is not None
            )  # checked when classified
            mean = module.running_mean.detach().to(device=device, dtype=torch.float64)
            var = module.running_var.detach().to(device=device, dtype=torch.float64)
            gamma = _f64(module.weight, device) if module.affine else None
            beta = _f64(module.bias, device) if module.affine else None
            self.weight = (torch.ones_like(mean) if gamma is None else gamma) / torch.sqrt(var + module.eps)
            self.bias = (torch.zeros_like(mean) if beta is None else beta) - mean * self.weight
            self.has_bias = True

    def run(self, x: torch.Tensor, offset: bool) -> torch.Tensor:
        module, bias = self.module, self.bias if offset and self.has_bias else None
        if isinstance(module, nn.Linear):
            return F.linear(x, self.weight, bias)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return _conv(module, x, self.weight, bias)
        if isinstance(module, _BN):
            view = (1, -1) + (1,) * (x.dim() - 2)
            out = x * self.weight.reshape(view)
            return out + self.bias.reshape(view) if offset else out
        linear: torch.Tensor = module(x)  # pooling, flatten, identity, dropout (eval): linear, no offset
        return linear


@dataclass
class _Activation:
    kind: str
    low: float = 0.0  # hardtanh / relu6 bounds
    high: float = 6.0
    slope_neg: float | torch.Tensor = 0.0  # leaky_relu slope, PReLU weight, ELU alpha

    def value(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu":
            return torch.relu(z)
        if self.kind in ("relu6", "hardtanh"):
            return torch.clamp(z, self.low, self.high)
        if self.kind in ("leaky_relu", "prelu"):
            return torch.where(z > 0, z, z * self._channel(z))
        if self.kind == "elu":
            return F.elu(z, float(self.slope_neg))
        return torch.tanh(z)

    def slope(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise derivative at ``z`` with torch's convention at the kinks."""
        one = torch.ones_like(z)
        if self.kind == "relu":
            return (z > 0).to(z.dtype)
        if self.kind in ("relu6", "hardtanh"):
            return ((z > self.low) & (z < self.high)).to(z.dtype)
        if self.kind in ("leaky_relu", "prelu"):
            return torch.where(z > 0, one, one * self._channel(z))
        if self.kind == "elu":
            return torch.where(z > 0, one, float(self.slope_neg) * torch.exp(z))
        return 1.0 - torch.tanh(z) ** 2

    def _channel(self, z: torch.Tensor) -> torch.Tensor | float:
        a = self.slope_neg
        if isinstance(a, torch.Tensor) and a.numel() > 1:  # PReLU: one slope per channel (axis 1)
            return a.reshape((1, -1) + (1,) * (z.dim() - 2))
        return a if not isinstance(a, torch.Tensor) else a.reshape(())


def _activation_from_module(module: nn.Module, device: torch.device) -> _Activation:
    if isinstance(module, nn.ReLU6):
        return _Activation("relu6", 0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return _Activation("hardtanh", float(module.min_val), float(module.max_val))
    if isinstance(module, nn.ReLU):
        return _Activation("relu")
    if isinstance(module, nn.LeakyReLU):
        return _Activation("leaky_relu", slope_neg=float(module.negative_slope))
    if isinstance(module, nn.PReLU):
        return _Activation("prelu", slope_neg=module.weight.detach().to(device=device, dtype=torch.float64))
    if isinstance(module, nn.ELU):
        return _Activation("elu", slope_neg=float(module.alpha))
    return _Activation("tanh")


def _activation_from_call(kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Activation:
    def arg(i: int, name: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(name, default)

    if kind == "relu6":
        return _Activation("relu6", 0.0, 6.0)
    if kind == "hardtanh":
        return _Activation("hardtanh", float(arg(1, "min_val", -1.0)), float(arg(2, "max_val", 1.0)))
    if kind == "leaky_relu":
        return _Activation("leaky_relu", slope_neg=float(arg(1, "negative_slope", 0.01)))
    if kind == "elu":
        return _Activation("elu", slope_neg=float(arg(1, "alpha", 1.0)))
    if kind == "prelu":
        return _Activation("prelu", slope_neg=arg(1, "weight", None))
    return _Activation(kind)


@dataclass
class _MaxPool:
    """Max-pooling: the value, and on a linear region the argmax selection (its linearisation)."""

    fn: str  # max_pool1d, max_pool2d, adaptive_max_pool1d, adaptive_max_pool2d
    params: dict[str, Any]

    def value(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.dim() != (3 if self.fn.endswith("1d") else 4):
            raise ValueError(
                f"{self.fn} needs a channel axis: per-sample input of shape "
                f"({'C, L' if self.fn.endswith('1d') else 'C, H, W'}), got {tuple(z.shape[1:])}"
            )
        out, idx = getattr(F, self.fn)(z, **self.params, return_indices=True)
        return out, idx

    @staticmethod
    def select(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Gather ``v`` (batch, C, *spatial) at the argmax indices ``idx`` (1, C, *out_spatial)."""
        b, c = v.shape[0], v.shape[1]
        flat = idx.reshape(1, c, -1).expand(b, c, -1)
        return v.reshape(b, c, -1).gather(2, flat).reshape(b, *idx.shape[1:])


_MAXPOOL_PARAMS = {
    "max_pool1d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "adaptive_max_pool1d": ("output_size",),
    "adaptive_max_pool2d": ("output_size",),
}


def _maxpool_from_module(module: nn.Module) -> _MaxPool:
    fn = {
        nn.MaxPool1d: "max_pool1d",
        nn.MaxPool2d: "max_pool2d",
        nn.AdaptiveMaxPool1d: "adaptive_max_pool1d",
        nn.AdaptiveMaxPool2d: "adaptive_max_pool2d",
    }[type(module)]
    return _MaxPool(fn, {p: getattr(module, p) for p in _MAXPOOL_PARAMS[fn]})


def _maxpool_from_call(fn: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _MaxPool:
    names = _MAXPOOL_PARAMS[fn]
    params = dict(zip(names, args[1:], strict=False))
    params.update({k: v for k, v in kwargs.items() if k in names})
    if fn.startswith("max_pool") and params.get("stride") in (None, []):
        params["stride"] = params["kernel_size"]
    return _MaxPool(fn, params)
