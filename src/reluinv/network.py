"""A torch model as a chain of affine maps and activations (Section 3.1, Definition 7).

A ReLU network is piecewise affine: on the linear region ``P`` that contains ``x`` it equals
``F(x') = J x' + c`` with ``J = A^L D_{I^{L-1}} A^{L-1} ... D_{I^1} A^1`` (Definition 7), where
``D_I`` zeroes the units in the index set ``I^l = {i : z^l_i <= 0}`` of each ReLU.  This module
turns a ``torch.nn.Sequential`` into that chain so the rest of reluinv can work with it:

* :func:`as_chain` lists the steps, each an :class:`AffineStep` (with its dense ``W`` and ``c`` in
  float64 on request) or an :class:`ActivationStep` (with its kind and slope);
* :func:`activation_pattern` gives the index sets ``I^l`` of Definition 7;
* :func:`linearize` gives ``(J, c)`` on the linear region of ``x``.

Building blocks for other modules (multi-layer preimages, invariance searches)::

    sample, chain = prepare_input(model, x)       # checked float64 sample (no batch axis) + steps
    for step, z, out in forward_trace(chain, sample):
        if isinstance(step, AffineStep):
            W, c = step.dense()                    # (out_dim, in_dim), (out_dim,), float64 numpy
        else:
            mask = step.slope(z)                   # ReLU: diagonal of D_I at this input
    masks = slopes(chain, sample)                  # {module index: slope tensor}
    Jv = push_tangents(chain, masks, v)            # J v for a batch v of shape (b, *input_shape)

Supported modules (nested ``Sequential``\\ s are flattened depth-first, and a step's ``index`` is
its position in that flat list, which is how Figures 5, 8, 10 and 11 count layers):

* affine: ``Linear``, ``Conv2d`` (any stride, padding, padding mode, dilation and groups),
  ``Flatten`` (``start_dim >= 1``), ``AvgPool2d``, ``BatchNorm1d``/``BatchNorm2d`` (eval mode with
  running statistics; the normalisation is an affine map per channel), ``Identity`` and the dropout
  modules (eval mode: the identity);
* activations: ``ReLU``, ``LeakyReLU``, ``ELU``, ``Tanh``.

Any other model (residual connections, concatenation, max-pooling, functional calls in
``forward``) is traced into a graph by :mod:`reluinv.graph`; :func:`linearize` and
:func:`activation_pattern` dispatch to it, while a ``Sequential`` made only of the modules below
keeps this chain code path (and its results, bit for bit).  :func:`as_chain` itself refuses
everything else, ``MaxPool2d`` included, with a ``ValueError`` naming the module.  A dropout or
batch-norm module in training mode is refused too (call ``model.eval()``): in training mode the
network is random or depends on the batch, so it has no linear regions.

All arithmetic is float64, on the device of the input tensor (or of the model's parameters when
the input is not a tensor).  The model itself is never modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from ._graph_ops import explicit_padding
from ._validate import as_model_input

__all__ = [
    "ActivationStep",
    "AffineStep",
    "Step",
    "SUPPORTED_MODULES",
    "activation_pattern",
    "as_chain",
    "checked_device",
    "feeding_map",
    "flatten_modules",
    "forward_trace",
    "jacobian_matrix",
    "linearize",
    "prepare_input",
    "pull_cotangents",
    "push_tangents",
    "slopes",
]

_AFFINE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.Flatten,
    nn.AvgPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_ACTIVATION_KINDS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.Tanh: "tanh",
}
#: Names of the supported module classes, as listed in error messages.
SUPPORTED_MODULES: tuple[str, ...] = tuple(
    sorted({t.__name__ for t in _AFFINE_TYPES} | {t.__name__ for t in _ACTIVATION_KINDS})
)

# Modules whose per-sample input must be (C, H, W); used to tell a batch dimension from a channel.
_IMAGE_MODULES = (nn.Conv2d, nn.AvgPool2d, nn.BatchNorm2d)
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AffineStep:
    """One affine module ``v -> W v + c`` of the chain, in float64.

    Attributes:
        index: position of the module in the flattened ``Sequential``.
        module: the torch module (not modified).
        in_shape, out_shape: per-sample shapes (no batch dimension).
        is_identity: True when ``W`` is the identity on the flattened vector and ``c = 0``
            (``Flatten``, ``Identity``, dropout in eval mode), so a Jacobian does not change.

    Methods take and return *batched* float64 tensors of shape ``(batch, *in_shape)`` /
    ``(batch, *out_shape)`` on :attr:`device`.

    Example::

        step = as_chain(nn.Sequential(nn.Linear(3, 2)), (3,))[0]
        W, c = step.dense()        # W.shape == (2, 3), c.shape == (2,)
    """

    index: int
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    device: torch.device
    is_identity: bool
    _weight: torch.Tensor | None = field(default=None, repr=False)
    _bias: torch.Tensor | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """``"<index>:<ClassName>"``, e.g. ``"3:Conv2d"``."""
        return f"{self.index}:{type(self.module).__name__}"

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    @property
    def weight(self) -> torch.Tensor:
        """The float64 weight (a per-channel scale for batch norm); only steps with one have it."""
        if self._weight is None:
            raise AssertionError(f"step {self.name} has no weight")  # pragma: no cover
        return self._weight

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The affine map ``W x + c`` on a batch."""
        return self._run(x, with_offset=True)

    def apply_linear(self, v: torch.Tensor) -> torch.Tensor:
        """The linear part ``W v`` on a batch (tangent vectors)."""
        return self._run(v, with_offset=False)

    def apply_abs_linear(self, v: torch.Tensor) -> torch.Tensor:
        """``|W| v``: the linear part with every weight replaced by its absolute value.

        For ``v >= 0`` the result is ``>= 0`` and its support contains the support of ``W u`` for
        every ``u`` supported inside the support of ``v`` (no cancellation can occur), which gives
        receptive fields and structurally zero rows of Jacobians.
        """
        module = self.module
        if self.is_identity or isinstance(module, nn.AvgPool2d):
            return self._run(v, with_offset=False)
        if isinstance(module, nn.Linear):
            return F.linear(v, self.weight.abs())
        if isinstance(module, nn.Conv2d):
            return _conv2d(module, v, self.weight.abs(), None)
        view = (1, -1) + (1,) * (v.dim() - 2)
        return v * self.weight.abs().reshape(view)

    def dense(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(W, c)`` as numpy float64 arrays of shapes ``(out_dim, in_dim)`` and ``(out_dim,)``.

        Flattening is row-major (torch's ``reshape``).  ``W`` is built by pushing the identity
        basis through :meth:`apply_linear` (exact: every entry is one weight times one), so it
        needs ``in_dim * out_dim * 8`` bytes; for large convolutions use :meth:`apply_linear`.
        """
        if isinstance(self.module, nn.Linear) and len(self.in_shape) == 1:
            W = self.weight.detach().cpu().numpy().copy()
        elif self.is_identity:
            W = np.eye(self.in_dim)
        else:
            rows = []
            # Chunks keep the temporary batch near 256 MiB however big the layer.
            chunk = max(1, (32 << 20) // max(1, self.out_dim))
            for start in range(0, self.in_dim, chunk):
                stop = min(self.in_dim, start + chunk)
                basis = torch.zeros(stop - start, self.in_dim, dtype=torch.float64, device=self.device)
                basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                image = self.apply_linear(basis.reshape(stop - start, *self.in_shape))
                rows.append(image.reshape(stop - start, self.out_dim).cpu().numpy())
            W = np.ascontiguousarray(np.concatenate(rows, axis=0).T)
        zero = torch.zeros(1, *self.in_shape, dtype=torch.float64, device=self.device)
        c = self.apply(zero).reshape(-1).cpu().numpy().copy()
        return W, c

    def _run(self, x: torch.Tensor, *, with_offset: bool) -> torch.Tensor:
        module = self.module
        if self.is_identity:
            return x.reshape(x.shape[0], *self.out_shape)
        bias = self._bias if with_offset else None
        if isinstance(module, nn.Linear):
            return F.linear(x, self.weight, bias)
        if isinstance(module, nn.Conv2d):
            return _conv2d(module, x, self.weight, bias)
        if isinstance(module, nn.AvgPool2d):
            pooled: torch.Tensor = module(x)
            return pooled  # linear with no offset; the divisor depends on position only
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            # Per-channel scale and shift, broadcast over the trailing (length or spatial) axes.
            view = (1, -1) + (1,) * (x.dim() - 2)
            out = x * self.weight.reshape(view)
            return out + bias.reshape(view) if bias is not None else out
        raise AssertionError(f"unhandled affine module {type(module).__name__}")  # pragma: no cover


@dataclass(frozen=True, eq=False)
class ActivationStep:
    """One pointwise activation of the chain.

    Attributes:
        index: position of the module in the flattened ``Sequential``.
        module: the torch module.
        kind: ``"relu"``, ``"leaky_relu"``, ``"elu"`` or ``"tanh"``.
        shape: per-sample shape (input and output are the same).
        negative_slope: LeakyReLU's slope for ``z <= 0`` (0 for ReLU, None otherwise).
        alpha: ELU's ``alpha`` (None otherwise).

    :meth:`slope` is the derivative at the pre-activation ``z``.  For ReLU it is the diagonal of
    ``D_I`` (Definition 7): 0 on ``I = {i : z_i <= 0}``, 1 elsewhere; at ``z_i = 0`` torch's own
    derivative is 0 as well, so both agree.
    """

    index: int
    module: nn.Module
    kind: str
    shape: tuple[int, ...]
    negative_slope: float | None = None
    alpha: float | None = None

    @property
    def name(self) -> str:
        return f"{self.index}:{type(self.module).__name__}"

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.shape

    def _parameter(self, value: float | None, what: str) -> float:
        if value is None:
            raise AssertionError(f"{self.kind} step {self.name} has no {what}")  # pragma: no cover
        return value

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def in_dim(self) -> int:
        return math.prod(self.shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.shape)

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """The activation itself."""
        if self.kind == "relu":
            return torch.relu(z)
        if self.kind == "leaky_relu":
            return F.leaky_relu(z, self._parameter(self.negative_slope, "negative_slope"))
        if self.kind == "elu":
            return F.elu(z, self._parameter(self.alpha, "alpha"))
        return torch.tanh(z)

    def slope(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise derivative at ``z`` (same convention as torch's backward at 0)."""
        if self.kind == "relu":
            return (z > 0).to(z.dtype)
        if self.kind == "leaky_relu":
            slope = self._parameter(self.negative_slope, "negative_slope")
            return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, slope))
        if self.kind == "elu":
            alpha = self._parameter(self.alpha, "alpha")
            return torch.where(z > 0, torch.ones_like(z), alpha * torch.exp(z))
        return 1.0 - torch.tanh(z) ** 2


Step = AffineStep | ActivationStep


# --------------------------------------------------------------------------------------------
# Building the chain
# --------------------------------------------------------------------------------------------


def flatten_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` in order, nested ``Sequential``\\ s flattened depth-first.

    A single module that is not a ``Sequential`` counts as a one-module chain.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(model, nn.Sequential):
        return [model]
    out: list[nn.Module] = []
    for child in model:
        out.extend(flatten_modules(child) if isinstance(child, nn.Sequential) else [child])
    return out


def _is_chain(model: nn.Module) -> bool:
    from .graph import is_chain

    return is_chain(model)


def _unsupported(index: int, module: nn.Module, why: str = "is not supported") -> ValueError:
    return ValueError(
        f"module {index} ({type(module).__name__}) {why}; supported modules: "
        f"{', '.join(SUPPORTED_MODULES)} (nested Sequentials are flattened)"
    )


def _check_module(index: int, module: nn.Module) -> None:
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)):
        raise _unsupported(
            index,
            module,
            "is not supported: max pooling selects inputs by comparison, which this "
            "chain of affine maps and pointwise activations does not model; use strided convolutions "
            "or AvgPool2d",
        )
    if type(module) in _ACTIVATION_KINDS or isinstance(module, _AFFINE_TYPES):
        if isinstance(module, _DROPOUT_TYPES + (nn.BatchNorm1d, nn.BatchNorm2d)) and module.training:
            raise _unsupported(
                index,
                module,
                "is in training mode (random or batch-dependent, so the network has no "
                "fixed linear regions); call model.eval() first",
            )
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_mean is None:
            raise _unsupported(index, module, "has no running statistics (track_running_stats=False)")
        return
    raise _unsupported(index, module)


#: Float64 convolutions of large batches on the CPU run in chunks of this many samples: torch's
#: float64 path (im2col and a GEMM, no oneDNN) measured 2.4x faster in chunks of 32 than on all
#: 3072 tangents of a 3x32x32 input at once (WideCIFAR's convolutions 2-5: 3.2 s against 7.8 s).
CONV_CHUNK = 32


def _conv2d(
    module: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    chunked = x.device.type == "cpu" and x.dtype == torch.float64 and x.shape[0] > 2 * CONV_CHUNK
    if not chunked or x.requires_grad or weight.requires_grad:
        return _conv2d_batch(module, x, weight, bias)
    first = _conv2d_batch(module, x[:CONV_CHUNK], weight, bias)
    out = first.new_empty((x.shape[0], *first.shape[1:]))
    out[:CONV_CHUNK] = first
    for start in range(CONV_CHUNK, x.shape[0], CONV_CHUNK):
        out[start : start + CONV_CHUNK] = _conv2d_batch(module, x[start : start + CONV_CHUNK], weight, bias)
    return out


def _conv2d_batch(
    module: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    # Same arithmetic as Conv2d.forward, with float64 copies of the parameters.
    if module.padding_mode == "zeros":
        # torch types string and tuple padding as separate overloads, so each is passed as itself.
        if isinstance(module.padding, str):
            return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    padded = F.pad(x, explicit_padding(module), mode=module.padding_mode)
    return F.conv2d(padded, weight, bias, module.stride, 0, module.dilation, module.groups)


@overload
def _float64(t: torch.Tensor, device: torch.device) -> torch.Tensor: ...
@overload
def _float64(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None: ...
def _float64(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.detach().to(device=device, dtype=torch.float64)


def _activation_parameters(module: nn.Module) -> tuple[float | None, float | None]:
    """``(negative_slope, alpha)`` of an activation module, as :class:`ActivationStep` stores them."""
    if isinstance(module, nn.ReLU):
        return 0.0, None
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope), None
    if isinstance(module, nn.ELU):
        return None, float(module.alpha)
    return None, None


def _batch_norm_scale_shift(
    index: int, module: nn.BatchNorm1d | nn.BatchNorm2d, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``x * scale + shift`` per channel, in float64."""
    if module.running_mean is None or module.running_var is None:
        raise _unsupported(index, module, "has no running statistics (track_running_stats=False)")
    mean = _float64(module.running_mean, device)
    var = _float64(module.running_var, device)
    gamma = _float64(module.weight, device) if module.affine else torch.ones_like(mean)
    beta = _float64(module.bias, device) if module.affine else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + module.eps)
    return scale, beta - mean * scale


def _make_step(index: int, module: nn.Module, in_shape: tuple[int, ...], device: torch.device) -> Step:
    kind = _ACTIVATION_KINDS.get(type(module))
    if kind is not None:
        negative_slope, alpha = _activation_parameters(module)
        return ActivationStep(index, module, kind, in_shape, negative_slope, alpha)
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    identity = isinstance(module, (nn.Flatten, nn.Identity) + _DROPOUT_TYPES)
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        weight, bias = _float64(module.weight, device), _float64(module.bias, device)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        weight, bias = _batch_norm_scale_shift(index, module, device)
    if isinstance(module, nn.Flatten):
        start = module.start_dim if module.start_dim >= 0 else module.start_dim + len(in_shape) + 1
        if start < 1:
            raise _unsupported(
                index, module, f"would flatten the batch dimension (start_dim={module.start_dim})"
            )
    probe = AffineStep(index, module, in_shape, in_shape, device, identity, weight, bias)
    if identity and not isinstance(module, nn.Flatten):
        return probe
    try:
        with torch.no_grad():
            if isinstance(module, nn.Flatten):
                out = module(torch.zeros(1, *in_shape, dtype=torch.float64, device=device))
            else:
                out = probe.apply(torch.zeros(1, *in_shape, dtype=torch.float64, device=device))
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(
            f"module {index} ({type(module).__name__}) cannot take a per-sample input of shape "
            f"{in_shape}: {exc}"
        ) from exc
    return AffineStep(index, module, in_shape, tuple(out.shape[1:]), device, identity, weight, bias)


def as_chain(
    model: nn.Module, input_shape: Sequence[int], *, device: torch.device | str | None = None
) -> list[Step]:
    """The chain of steps of ``model`` for per-sample inputs of shape ``input_shape``.

    Section 3.1: on a linear region the network is ``A^L D_{I^{L-1}} ... D_{I^1} A^1``; here each
    module is one step, so a ReLU is its own step (the layer counting of Figures 5, 8, 10, 11).

    Args:
        model: a ``torch.nn.Sequential`` (nested ones are flattened) or a single supported module.
        input_shape: the shape of one sample, without batch dimension, e.g. ``(3, 32, 32)``.
        device: where the float64 copies of the parameters live; default: the model's device.

    Returns:
        A list of :class:`AffineStep` and :class:`ActivationStep`, one per module, in order; each
        knows its ``in_shape`` and ``out_shape``.

    Raises:
        ValueError: for unsupported modules (naming index and class and listing what is supported),
            modules in training mode, or an ``input_shape`` the model cannot take.

    Example::

        chain = as_chain(zoo.toy_circles(), (2,))
        [s.name for s in chain]       # ['0:Linear', '1:ReLU', '2:Linear']
        W, c = chain[0].dense()       # (3, 2) and (3,)
    """
    modules = flatten_modules(model)
    for index, module in enumerate(modules):
        _check_module(index, module)
    device = torch.device(device) if device is not None else _model_device(modules)
    shape = tuple(int(s) for s in input_shape)
    if any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must have positive entries, got {shape}")
    chain: list[Step] = []
    for index, module in enumerate(modules):
        step = _make_step(index, module, shape, device)
        chain.append(step)
        shape = step.out_shape
    return chain


def checked_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or a ``ValueError`` naming what is wrong: not cpu/cuda, or
    cuda asked for where torch sees no CUDA device."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}") from exc
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device here")
    return parsed


def _model_device(modules: Sequence[nn.Module]) -> torch.device:
    for module in modules:
        for p in module.parameters():
            return p.device
        for b in module.buffers():
            return b.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def prepare_input(model: nn.Module, x: Any) -> tuple[torch.Tensor, list[Step]]:
    """Check ``x`` and return it as one float64 sample (no batch dimension) with its chain.

    ``x`` may be a tensor or array-like, with or without a leading batch dimension of 1.  The
    computation device is ``x``'s when ``x`` is a tensor, else the model's.  Raises ``ValueError``
    for NaN/inf entries, batches of more than one sample, or shapes the model cannot take.
    """
    modules = flatten_modules(model)
    for index, module in enumerate(modules):
        _check_module(index, module)
    device = x.device if isinstance(x, torch.Tensor) else _model_device(modules)
    sample = _strip_batch(modules, torch.from_numpy(as_model_input(x, "x")).to(device))
    chain = as_chain(model, tuple(sample.shape), device=device)
    return sample, chain


def _strip_batch(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    # The first module that fixes the per-sample rank decides whether x carries a batch axis.
    for module in modules:
        if isinstance(module, _IMAGE_MODULES):
            if x.dim() == 4:
                if x.shape[0] != 1:
                    raise ValueError(
                        f"x must be one sample of shape (C, H, W) or (1, C, H, W), got a batch of "
                        f"shape {tuple(x.shape)}"
                    )
                return x[0]
            if x.dim() != 3:
                raise ValueError(
                    f"x must have shape (C, H, W) or (1, C, H, W) for module "
                    f"{type(module).__name__}, got shape {tuple(x.shape)}"
                )
            return x
        if isinstance(module, nn.Linear):
            # A dense first layer takes vectors: anything else is most likely a batch.
            if x.dim() == 2 and x.shape[0] == 1:
                return x[0]
            if x.dim() != 1:
                raise ValueError(
                    f"x must be one sample of shape ({module.in_features},) or (1, {module.in_features}) "
                    f"for module {type(module).__name__}, got shape {tuple(x.shape)}"
                )
            return x
        if isinstance(module, (nn.Flatten, nn.BatchNorm1d)):
            break
    return x[0] if x.dim() >= 2 and x.shape[0] == 1 else x


def feeding_map(chain: Sequence[Step], stop: int) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """The affine steps right before position ``stop`` composed into one dense map (Theorem 4's ``W, c``).

    The run is the maximal sequence of :class:`AffineStep` ending at ``stop - 1`` (``chain[stop]``
    is typically a ReLU; ``stop == len(chain)`` gives the tail after the last activation).  Returns
    float64 ``(W, c)`` with ``z = W h + c``, ``h`` the flattened output of the last non-affine
    step before the run (or the network input), composed in order (``W <- W_step W``,
    ``c <- W_step c + c_step``); ``None`` when no step of the run changes the flattened vector
    (an empty run, or only ``Flatten``/``Identity``/dropout): the map is the identity.
    """
    start = stop
    while start > 0 and isinstance(chain[start - 1], AffineStep):
        start -= 1
    W: NDArray[np.float64] | None = None
    c: NDArray[np.float64] | None = None
    for step in chain[start:stop]:
        assert isinstance(step, AffineStep)
        if step.is_identity:
            continue
        W_step, c_step = step.dense()
        if W is None or c is None:
            W, c = W_step, c_step
        else:
            W, c = W_step @ W, W_step @ c + c_step
    return None if W is None or c is None else (W, c)


# --------------------------------------------------------------------------------------------
# Forward traces, patterns, linearisation
# --------------------------------------------------------------------------------------------


def forward_trace(
    chain: Sequence[Step], sample: torch.Tensor
) -> Iterator[tuple[Step, torch.Tensor, torch.Tensor]]:
    """Yield ``(step, input, output)`` for each step on the batched sample ``sample[None]``.

    For an activation step ``input`` is the pre-activation ``z`` (shape ``(1, *step.shape)``).
    """
    h = sample.reshape(1, *sample.shape)
    with torch.no_grad():
        for step in chain:
            out = step.apply(h)
            yield step, h, out
            h = out


def slopes(chain: Sequence[Step], sample: torch.Tensor) -> dict[int, torch.Tensor]:
    """Derivative of every activation at ``sample``, keyed by step index, shape ``(1, *shape)``."""
    return {
        step.index: step.slope(z)
        for step, z, _ in forward_trace(chain, sample)
        if isinstance(step, ActivationStep)
    }


def push_tangents(
    chain: Sequence[Step], slope_by_index: dict[int, torch.Tensor], tangents: torch.Tensor
) -> torch.Tensor:
    """Apply the masked linear network (the Jacobian chain of Definition 7) to a batch.

    ``tangents`` has shape ``(b, *chain[0].in_shape)``; ``slope_by_index`` comes from
    :func:`slopes`.  Returns ``J v`` for every ``v`` of the batch, shape ``(b, *chain[-1].out_shape)``.
    """
    v = tangents
    for step in chain:
        v = step.apply_linear(v) if isinstance(step, AffineStep) else v * slope_by_index[step.index]
    return v


def activation_pattern(model: nn.Module, x: Any) -> dict[int, NDArray[np.intp]]:
    """The index sets ``I^l = {i : z^l_i <= 0}`` of Definition 7, one per ReLU.

    Args:
        model: a supported ``Sequential`` (see the module docstring), or any other model that
            :mod:`reluinv.graph` traces (residual connections, pooling, concatenation).
        x: one input sample, with or without a leading batch dimension of 1.

    Returns:
        For a chain: ``{module_index: I}`` for every ``ReLU`` module, ``I`` the sorted indices
        (into the row-major flattened pre-activation) of the *inactive* units, i.e. those with
        ``z_i <= 0``.  For a graph: keyed by layer name (see :mod:`reluinv.graph`), the same for
        every ReLU layer, and for every max-pool layer the argmax (the flat input index each
        output unit selects), which is its pattern on a linear region.

    Example::

        model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        activation_pattern(model, [0.5, -1.0])    # {1: array([...])}
    """
    if not _is_chain(model):
        from .graph import graph_activation_pattern

        return graph_activation_pattern(model, x)  # type: ignore[return-value]
    sample, chain = prepare_input(model, x)
    pattern: dict[int, NDArray[np.intp]] = {}
    for step, z, _ in forward_trace(chain, sample):
        if isinstance(step, ActivationStep) and step.kind == "relu":
            pattern[step.index] = np.flatnonzero(z.reshape(-1).cpu().numpy() <= 0).astype(np.intp)
    return pattern


def linearize(
    model: nn.Module, x: Any, *, upto: int | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The affine map ``F(x') = J x' + c`` of the network on the linear region of ``x``.

    Section 3.1 / Definition 7: on the region ``P`` containing ``x`` a ReLU network equals
    ``A_P x' + b_P`` with ``A_P = A^L D_{I^{L-1}} ... D_{I^1} A^1``; this returns ``J = A_P`` and
    ``c = b_P`` for the flattened input and output (row-major).  For ReLU networks the formula is
    exact for every ``x'`` with the same activation pattern as ``x`` (see
    :func:`activation_pattern`).  With LeakyReLU, ELU or Tanh it is the local linearisation
    (first-order Taylor expansion at ``x``: ``J`` is the Jacobian at ``x`` and ``c = F(x) - J x``),
    which is exact only at ``x`` itself (and, for LeakyReLU, on the region of ``x``).

    Args:
        model: a supported ``Sequential``, or any other model that :mod:`reluinv.graph` traces
            (the linearisation then runs along the graph; max-pooling contributes its argmax
            selection).
        x: one sample, with or without a leading batch dimension of 1.
        upto: use only the first ``upto`` modules (``0 <= upto <= len``); ``None``: all of them.
            ``upto = l`` gives the map to the *input* of module ``l``, e.g. the pre-activation of a
            ReLU at index ``l``.  For a graph: a layer name or index (:mod:`reluinv.graph`), giving
            the map to that layer's input.

    Returns:
        ``(J, c)``: float64 arrays of shapes ``(out_dim, in_dim)`` and ``(out_dim,)``.

    Example::

        J, c = linearize(zoo.toy_circles(), [0.1, 0.2])      # J.shape == (2, 2)
    """
    if not _is_chain(model):
        from .graph import graph_linearize

        return graph_linearize(model, x, upto)
    sample, chain = prepare_input(model, x)
    if upto is not None:
        if isinstance(upto, bool) or not isinstance(upto, (int, np.integer)) or not 0 <= upto <= len(chain):
            raise ValueError(f"upto must be an integer in [0, {len(chain)}], got {upto!r}")
        chain = chain[: int(upto)]
    trace = list(forward_trace(chain, sample))
    output = trace[-1][2] if trace else sample.reshape(1, *sample.shape)
    slope_by_index = {s.index: s.slope(z) for s, z, _ in trace if isinstance(s, ActivationStep)}
    out_dim = output.numel()
    J = jacobian_matrix(chain, slope_by_index, sample.shape, out_dim=out_dim)
    c = output.reshape(-1).cpu().numpy() - J @ sample.reshape(-1).cpu().numpy()
    return J, c


def jacobian_matrix(
    chain: Sequence[Step],
    slope_by_index: dict[int, torch.Tensor],
    in_shape: Sequence[int],
    *,
    out_dim: int,
    chunk_bytes: int = 1 << 30,
) -> NDArray[np.float64]:
    """Dense ``J`` (out_dim x in_dim, numpy float64) of the masked linear chain.

    Pushes identity bases forward when ``in_dim <= out_dim`` and pulls them back (vector-Jacobian
    products) otherwise, in chunks of about ``chunk_bytes``.
    """
    in_shape = tuple(in_shape)
    in_dim = math.prod(in_shape)
    device = _chain_device(chain, slope_by_index)
    widest = max([in_dim, out_dim] + [s.out_dim for s in chain])
    chunk = max(1, chunk_bytes // (8 * widest))
    if in_dim <= out_dim or not chain:
        J = np.empty((out_dim, in_dim))
        for start in range(0, in_dim, chunk):
            stop = min(in_dim, start + chunk)
            basis = torch.zeros(stop - start, in_dim, dtype=torch.float64, device=device)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            image = push_tangents(chain, slope_by_index, basis.reshape(stop - start, *in_shape))
            J[:, start:stop] = image.reshape(stop - start, out_dim).cpu().numpy().T
        return J
    J = np.empty((out_dim, in_dim))
    zero = torch.zeros(1, *in_shape, dtype=torch.float64, device=device)
    for start in range(0, out_dim, chunk):
        stop = min(out_dim, start + chunk)
        # The chain is linear in the tangent, so its vjp at 0 is the exact transpose.
        cotangents = torch.zeros(stop - start, out_dim, dtype=torch.float64, device=device)
        cotangents[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        J[start:stop] = pull_cotangents(chain, slope_by_index, zero, cotangents).cpu().numpy()
    return J


def pull_cotangents(
    chain: Sequence[Step],
    slope_by_index: dict[int, torch.Tensor],
    zero: torch.Tensor,
    cotangents: torch.Tensor,
) -> torch.Tensor:
    """``cotangents @ J`` for a batch of flattened cotangents (rows), via one backward pass each."""
    with torch.enable_grad():
        v = zero.expand(cotangents.shape[0], *zero.shape[1:]).clone().requires_grad_(True)
        out = push_tangents(chain, slope_by_index, v).reshape(cotangents.shape[0], -1)
        (grad,) = torch.autograd.grad(out, v, grad_outputs=cotangents)
    return grad.reshape(cotangents.shape[0], -1)


def _chain_device(chain: Sequence[Step], slope_by_index: dict[int, torch.Tensor]) -> torch.device:
    for step in chain:
        if isinstance(step, AffineStep):
            return step.device
    for s in slope_by_index.values():
        return s.device
    return torch.device("cpu")
