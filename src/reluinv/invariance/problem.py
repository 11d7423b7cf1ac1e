"""The problem every search of :mod:`reluinv.invariance` shares: the network up to the feature
layer as dense ReLU blocks, the input, the box, the reference features, the scales and
tolerances, and the time budget.

The tolerances are named here, each with what it is relative to; the solver's own tolerances
live with the one HiGHS wrapper, :mod:`reluinv._lp`.  :class:`TimeShares` holds every fraction of
a call's ``time_limit`` given to one of its stages.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from .._validate import as_bounds, as_model_input
from ..network import ActivationStep, as_chain, feeding_map, flatten_modules

#: Unit states in an encoding.
ACTIVE, INACTIVE, FREE = 1, 0, -1

# --- tolerances (each relative to the scale named) --------------------------------------------------

#: A pre-activation counts as zero when ``|z_i|`` is at most this times its scale: ``max(1, max_k
#: |z_k|)`` of its layer at a point (the region walk's boundaries), or
#: :meth:`Problem.unit_scale` over a branch (a unit whose largest ``z_i`` is this small has
#: ``z_i = 0`` on the whole branch).
ZERO_RTOL = 1e-9
#: One objective value improves on another only by more than this times ``max(1, |value|)``.
IMPROVE_RTOL = 1e-9
#: A polished LP point replaces the MILP point it came from unless it is worse by more than this
#: times ``max(1, |value|)`` (the MILP point meets its rows only to the MILP tolerance).
POLISH_RTOL = 1e-6
#: Bounds from LP optima are loosened by this times ``1 + |optimum|`` to stay valid despite the
#: LP's feasibility tolerance.
TIGHTEN_SLACK_RTOL = 1e-7
#: Two inputs closer than this times :attr:`Problem.x_scale` (L2) are the same point.
POINT_RTOL = 1e-7
#: A point counts as in the preimage when its features differ from x's by at most this times
#: :attr:`Problem.feature_scale` (float64 forward pass through the torch modules).
FEATURE_RTOL = 1e-9
#: Default relative tolerance of :func:`reluinv.preimage` on every piece of a multi-layer preimage.
PIECE_RTOL = 1e-9
#: A region LP (x's pattern, a walk step, a polish) always gets at least this many seconds.
MIN_LP_SECONDS = 1.0


class TimeShares:
    """Fractions of a call's ``time_limit`` given to its stages (every split in one place).

    ``Clock.since_start(f)`` ends a stage at ``f * time_limit`` after the call began,
    ``Clock.from_now(f)`` after ``f * time_limit`` from now, ``Clock.of_rest(f)`` after ``f`` of
    the time left.
    """

    #: invariance_search "exact": the adjacent-region walk ends this share after the start.
    WALK = 0.25
    #: invariance_search "exact": LP bound tightening, from when it starts.
    SEARCH_TIGHTEN = 0.2
    #: invariance_search "exact": polishing the MILP point (at least :data:`MIN_LP_SECONDS`).
    POLISH = 0.1
    #: network_preimage: bound tightening ends this share after the start.
    PREIMAGE_TIGHTEN = 0.25
    #: network_preimage "auto" in a finite box: the enumeration's share of the time left; the
    #: MILPs get the rest.
    ENUMERATION_FIRST = 0.15
    #: preimage_extent "exact": x's own region (the start values) ends this share after the start.
    EXTENT_REGION = 0.4
    #: preimage_extent: the L-infinity LPs' share of the region phase (L1 gets the rest).
    EXTENT_REGION_LINF = 0.25
    #: preimage_extent "exact": LP bound tightening, from when it starts.
    EXTENT_TIGHTEN = 0.15
    #: preimage_extent "exact": the L-infinity MILPs' share of the time left (L1 gets the rest).
    EXTENT_LINF = 0.3


@dataclass(frozen=True)
class Clock:
    """The time budget of one call: ``time_limit`` seconds from ``t0`` (``time.perf_counter``)."""

    t0: float
    time_limit: float

    @classmethod
    def start(cls, time_limit: Any) -> Clock:
        return cls(time.perf_counter(), check_time_limit(time_limit))

    @property
    def deadline(self) -> float:
        return self.t0 + self.time_limit

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def since_start(self, share: float) -> float:
        """The moment ``share * time_limit`` after the call began."""
        return self.t0 + share * self.time_limit

    def from_now(self, share: float) -> float:
        """The moment ``share * time_limit`` from now."""
        return time.perf_counter() + share * self.time_limit

    def of_rest(self, share: float) -> float:
        """The moment when ``share`` of the time left is spent."""
        now = time.perf_counter()
        return now + share * (self.deadline - now)


# --- the network as dense affine maps and ReLUs -----------------------------------------------------


G = TypeVar("G", bound=np.generic)

#: The source index of the model input in :attr:`ReluBlock.sources`.
INPUT = -1


@dataclass(frozen=True)
class ReluBlock:
    """``h = ReLU(weight @ u + bias)`` with ``u`` the outputs of ``sources`` concatenated.

    ``sources`` are indices of earlier blocks, or :data:`INPUT` for the (flattened) model input:
    ``(l - 1,)`` in a chain, a set of layers in a graph (a residual ``relu(f(h) + x)`` reads ``h``
    and ``x``).  ``module`` names the ReLU: its module index in a chain, its layer name
    (:mod:`reluinv.graph`) in a graph.
    """

    weight: NDArray[np.float64]
    bias: NDArray[np.float64]
    module: int | str
    sources: tuple[int, ...]


#: Reads the features of an input point (flat float64) by a float64 forward pass of the model.
FeatureFn = Callable[[NDArray[np.float64]], NDArray[np.float64]]


@dataclass(frozen=True)
class DenseNetwork:
    """The network up to the feature layer as ReLU blocks and an optional affine tail.

    Block ``l`` reads the outputs of its :attr:`ReluBlock.sources` (earlier blocks or the input),
    so the blocks form a DAG in topological order; in a chain block ``l`` reads block ``l - 1``.
    ``tail = (T, t)`` means the features are ``T u + t`` with ``u`` the outputs of
    ``tail_sources``; ``tail is None`` means the features are the last block's output.
    ``layer`` is the caller's name of the feature layer (a module index in a chain, a layer name
    in a graph) and ``where`` says it in words.
    """

    input_shape: tuple[int, ...]
    n_inputs: int
    blocks: tuple[ReluBlock, ...]
    tail: tuple[NDArray[np.float64], NDArray[np.float64]] | None
    tail_sources: tuple[int, ...]
    layer: int | str
    where: str

    @property
    def fixed_last(self) -> bool:
        """True when the last block's pattern is fixed by the features (features = ReLU output)."""
        return self.tail is None

    @property
    def n_var_blocks(self) -> int:
        """Number of blocks whose post-activations are variables of the encoding."""
        return len(self.blocks) - (1 if self.fixed_last else 0)

    @staticmethod
    def gather(x: NDArray[G], hs: Sequence[NDArray[G]], sources: Sequence[int]) -> NDArray[G]:
        """The values of ``sources`` side by side: ``x`` for the input, ``hs[k]`` for block k (one
        array of a chain's single source is returned as it is)."""
        parts = [x if k == INPUT else hs[k] for k in sources]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def preactivations(self, x: NDArray[np.float64]) -> list[NDArray[np.float64]]:
        """``z_l`` of every block at the flat input ``x`` (float64)."""
        zs: list[NDArray[np.float64]] = []
        hs: list[NDArray[np.float64]] = []
        for blk in self.blocks:
            z = blk.weight @ self.gather(x, hs, blk.sources) + blk.bias
            zs.append(z)
            hs.append(np.maximum(z, 0.0))
        return zs

    def features(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        hs = [np.maximum(z, 0.0) for z in self.preactivations(x)]
        if self.tail is not None:
            return self.tail[0] @ self.gather(x, hs, self.tail_sources) + self.tail[1]
        return hs[-1]


def check_layer(layer: Any, n_modules: int) -> int:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"layer must be an integer module index, got {type(layer).__name__}")
    if not 0 <= int(layer) < n_modules:
        raise ValueError(
            f"layer {layer} is out of range: the (flattened) model has modules 0..{n_modules - 1}"
        )
    return int(layer)


def build_network(model: Any, x_arr: NDArray[np.float64], layer: Any) -> tuple[DenseNetwork, FeatureFn]:
    """The network up to ``layer`` as dense float64 ReLU blocks, and its reference forward pass.

    ``nn.Sequential`` chains (:func:`reluinv.graph.is_chain`) are read by :func:`chain_network`,
    every other model is traced (:func:`reluinv.invariance.graph_network.graph_network`).
    """
    from ..graph import is_chain

    if is_chain(model):
        return chain_network(model, tuple(int(s) for s in x_arr.shape), layer)
    from .graph_network import graph_network

    return graph_network(model, x_arr, layer)


def chain_network(model: Any, input_shape: tuple[int, ...], layer: Any) -> tuple[DenseNetwork, FeatureFn]:
    """Modules ``0 .. layer`` of a chain as dense float64 ReLU blocks, read through :mod:`reluinv.network`.

    :func:`reluinv.network.as_chain` validates the whole model; :func:`reluinv.network.feeding_map`
    composes the affine steps (reshapes, convolutions, batch norms, ...) in front of each ReLU
    into one matrix, so every block is one affine map followed by one ReLU.  Other
    activations are refused: with them the pieces of a preimage are not polyhedra.
    """
    leaves = flatten_modules(model)
    layer = check_layer(layer, len(leaves))
    chain = as_chain(model, input_shape)
    n_inputs = int(np.prod(input_shape)) if len(input_shape) else 1
    blocks: list[ReluBlock] = []
    for step in chain[: layer + 1]:
        if isinstance(step, ActivationStep):
            if step.kind != "relu":
                raise ValueError(
                    f"module {step.index} ({type(step.module).__name__}) is not supported by the "
                    f"invariance searches: they need ReLU activations (a {step.kind} network has "
                    f"no polyhedral preimage pieces)"
                )
            fed = feeding_map(chain, step.index)
            weight, bias = fed if fed is not None else (np.eye(step.in_dim), np.zeros(step.in_dim))
            blocks.append(ReluBlock(weight, bias, step.index, (len(blocks) - 1,)))
    tail = feeding_map(chain, layer + 1)
    if not blocks and tail is None:  # features are the (reshaped) input itself
        tail = (np.eye(n_inputs), np.zeros(n_inputs))
    net = DenseNetwork(
        input_shape, n_inputs, tuple(blocks), tail, (len(blocks) - 1,), layer, f"module {layer}"
    )
    return net, TorchFeatures(leaves, layer, input_shape)


class TorchFeatures:
    """The float64 forward pass through the torch modules themselves (the reference features)."""

    def __init__(self, leaves: Sequence[Any], layer: int, input_shape: tuple[int, ...]):
        self._modules = [copy.deepcopy(m).double().eval() for m in leaves[: layer + 1]]
        self._shape = input_shape

    def __call__(self, x_flat: NDArray[np.float64]) -> NDArray[np.float64]:
        import torch

        with torch.no_grad():
            t = torch.as_tensor(np.asarray(x_flat, dtype=np.float64).reshape((1, *self._shape)))
            for module in self._modules:
                t = module(t)
        return t.reshape(-1).numpy().copy()


# --- one validated problem --------------------------------------------------------------------------


@dataclass
class Problem:
    """Everything about ``(model, x, layer, box)`` that every search needs, validated once."""

    net: DenseNetwork
    x: NDArray[np.float64]  # flat
    x_shape: tuple[int, ...]
    lo: NDArray[np.float64]
    up: NDArray[np.float64]
    features: NDArray[np.float64]  # from the dense maps (the equality targets)
    reference: NDArray[np.float64]  # from the torch float64 forward pass
    zs: list[NDArray[np.float64]]  # pre-activations at x
    torch_features: FeatureFn

    @property
    def n(self) -> int:
        return self.net.n_inputs

    @property
    def box_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.lo)) and np.all(np.isfinite(self.up)))

    @property
    def x_scale(self) -> float:
        """``max(1, max_j |x_j|)``: the scale of input-space tolerances."""
        return max(1.0, float(np.abs(self.x).max(initial=0.0)))

    @property
    def feature_scale(self) -> float:
        """``max(1, max_i |F_l(x)_i|)``: the scale of feature differences."""
        return max(1.0, float(np.abs(self.reference).max(initial=0.0)))

    @property
    def point_tol(self) -> float:
        """Inputs closer than this (L2, or one coordinate's move) are the same point as x."""
        return POINT_RTOL * self.x_scale

    @property
    def feature_tol(self) -> float:
        """A point whose features differ from x's by at most this is in the preimage."""
        return FEATURE_RTOL * self.feature_scale

    def unit_scale(self, l: int, i: int) -> float:
        """The size ``z_{l,i}`` can reach in a box of :attr:`x_scale`: ``max(1, |c_i| + ||W_i||_1 *
        x_scale)``, the scale of "``z_i`` is zero" on a branch."""
        blk = self.net.blocks[l]
        return max(1.0, abs(float(blk.bias[i])) + float(np.abs(blk.weight[i]).sum()) * self.x_scale)

    def region_states(self) -> list[NDArray[np.int8]]:
        """x's activation pattern (z > 0 active, z <= 0 inactive) for the variable blocks."""
        return [
            np.where(self.zs[l] > 0, ACTIVE, INACTIVE).astype(np.int8) for l in range(self.net.n_var_blocks)
        ]

    def clip(
        self, values: NDArray[np.float64], box: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
    ) -> NDArray[np.float64]:
        """The input part of a solver's columns, clipped to the box (solvers leave it by their
        tolerance; the box is a hard prior)."""
        lo, up = box if box is not None else (self.lo, self.up)
        return np.clip(np.asarray(values[: self.n], dtype=np.float64), lo, up)

    def feature_diff(self, x_prime: NDArray[np.float64]) -> float:
        return float(np.max(np.abs(self.torch_features(x_prime) - self.reference), initial=0.0))


#: What every search is asked about: ``(model, x, layer, lower, upper)``.
Question = tuple[Any, Any, Any, Any, Any]


def make_problem(question: Question) -> Problem:
    """Validate ``(model, x, layer, lower, upper)`` and compute what every search needs."""
    model, x, layer, lower, upper = question
    x_arr = as_model_input(x, "x")
    net, torch_features = build_network(model, x_arr, layer)
    flat = x_arr.reshape(-1).copy()
    lo, up = as_bounds(lower, upper, flat.size)
    outside = np.flatnonzero((flat < lo) | (flat > up))
    if outside.size:
        j = int(outside[0])
        raise ValueError(
            f"x lies outside the box at input coordinate {j}: "
            f"lower={lo[j]}, x={flat[j]}, upper={up[j]} ({outside.size} coordinates "
            f"outside); the preimage search needs x inside [lower, upper]"
        )
    try:
        reference = torch_features(flat)
    except RuntimeError as exc:
        raise ValueError(
            f"the model cannot run on x of shape {x_arr.shape} (one input, no batch dimension): {exc}"
        ) from exc
    return Problem(
        net=net,
        x=flat,
        x_shape=tuple(x_arr.shape),
        lo=lo,
        up=up,
        features=net.features(flat),
        reference=reference,
        zs=net.preactivations(flat),
        torch_features=torch_features,
    )


def check_time_limit(time_limit: Any) -> float:
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float, np.floating, np.integer)):
        raise ValueError(f"time_limit must be a number of seconds, got {type(time_limit).__name__}")
    if not (math.isfinite(float(time_limit)) and float(time_limit) > 0):
        raise ValueError(f"time_limit must be a positive finite number of seconds, got {time_limit}")
    return float(time_limit)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return str(value)


def setup(
    question: Question,
    *,
    time_limit: Any,
    choices: Sequence[tuple[str, Any, Sequence[str]]] = (),
    finite_box: str | None = None,
) -> tuple[Problem, Clock]:
    """The start every public search shares: the clock, the option checks, the problem, the box.

    Args:
        question: ``(model, x, layer, lower, upper)`` as the caller gave them.
        choices: ``(name, value, allowed)`` for each string option, checked before anything is
            built.
        finite_box: when the call needs a finite box, the error to raise without one.
    """
    clock = Clock.start(time_limit)
    for name, value, allowed in choices:
        check_choice(name, value, allowed)
    problem = make_problem(question)
    if finite_box is not None and not problem.box_finite:
        raise ValueError(finite_box)
    return problem, clock
