"""Searches inside preimages across layers (Appendix A7, Section 4 "Scope") and exact multi-layer
preimages.

For a ``torch.nn.Sequential`` ``F`` of affine modules and ReLUs (nested Sequentials are
flattened; module indices count the flattened list) and an input ``x``, write ``F_l(x)`` for
the output of module ``l`` ("the features at layer l").  For any other model (residual
additions, concatenations: whatever :mod:`reluinv.graph` traces) ``l`` is a layer of the graph,
named by its module path (``"layer1.0.relu#2"``) or its index among the layers, or ``"output"``
for the model output.  This package answers two questions about the set

    S_l(x) = { x' : lower <= x' <= upper,  F_l(x') = F_l(x) }

1. :func:`invariance_search` -- find ``x'`` in ``S_l(x)`` as close as possible to a ``target``
   (L1 distance) or maximising ``<target, x'>`` as in Appendix A7.  Three modes:

   * ``"layer"``: the A7 linear programme, defined only for the first affine + ReLU block (the
     features at any deeper layer are not determined by one layer's preimage: a preimage of layer
     l's features under layer l alone is a set of layer ``l-1`` features, most of which no input
     produces -- Section 4 "Scope", difficulty 1).
   * ``"region"``: ``x'`` keeps ``x``'s activation pattern in every ReLU up to layer ``l``.  On that
     linear region the network is affine, so feature equality is linear and one LP over the input
     answers it at any depth.  The result is a lower bound (for "max_inner") on what ``"exact"``
     can reach.
   * ``"exact"``: any activation pattern.  A mixed-integer programme (HiGHS branch and bound) with
     one binary per ReLU whose sign is not fixed on ``S_l(x)``; big-M bounds come from interval
     bound propagation through the box, on small networks tightened by LP over the relaxation
     that already contains the feature equalities.  A walk through adjacent linear regions
     supplies a good start solution.

2. :func:`network_preimage` -- the exact kind of ``S_l(x)`` ("singleton", "compact" or
   "unbounded"; "unknown" at the time limit) with certificates, as a :class:`reluinv.Preimage`.
   :func:`preimage_extent` -- how far ``x'`` can move inside ``S_l(x)`` (largest L-infinity and L1
   distance from ``x``), exactly by MILP or as a region-mode lower bound.

Encoding (shared by every mode).  Variables are the input ``x'`` and the post-activations
``h_1 .. h_{L-1}`` of the ReLU blocks below the feature layer (``h_L`` too when the features are an
affine map of the last ReLU output, e.g. the logits).  With ``z_l = W_l h_{l-1} + c_l`` (the
affine maps between two ReLUs composed into one dense float64 matrix), a unit is

* active:   ``h = z``, ``z >= 0``;
* inactive: ``h = 0``, ``z <= 0``;
* free:     ``h >= 0``, ``h >= z``, ``h <= z - lo (1 - a)``, ``h <= up a`` with ``a`` binary
  (continuous in [0, 1] for the LP relaxation, which is the convex hull of the ReLU graph over
  ``[lo, up]``).

When the features are a ReLU output ``y``, the last block needs no variables: ``z_i = y_i`` where
``y_i > 0`` and ``z_i <= 0`` elsewhere (the mixed system (1)-(2) of the paper, applied to
``h_{L-1}`` instead of ``x``).  Pieces of ``S_l(x)`` with a fixed pattern are closed polyhedra whose
union is exactly ``S_l(x)`` (ReLU is continuous, so boundary points belong to both neighbours).

The network is read through :func:`reluinv.network.as_chain` (Linear, Conv2d, Flatten,
AvgPool2d, BatchNorm and dropout in eval mode, ...; ReLU is the only activation allowed up to the
feature layer), consecutive affine modules composed into one dense float64 map.  A traced graph
is read by :mod:`.graph_network`: the blocks are the feature layer and every ReLU layer it
depends on, and block ``l`` reads a *set* of sources (earlier layers' outputs and/or the input,
``z_l = W_l [h_s]_{s in sources(l)} + c_l``, the map of :func:`reluinv.graph_preimage.source_map`);
everything below is unchanged with ``h_{l-1}`` read as "the sources of block l".  A max-pool
is encoded exactly as ReLUs (``max(a, b) = b + ReLU(a - b)``, in rounds of pairs:
:mod:`.maxpool`), so its pieces too are polyhedra; activations other than ReLU are refused.

Numerics: every decision is made in float64; HiGHS runs with primal/dual feasibility tolerance
1e-9 on LPs and 1e-7 on MILPs, relative MIP gap 1e-6 (:mod:`reluinv._lp`; the other tolerances
are named in :mod:`.problem`).  Rows whose largest coefficient exceeds 1
are scaled to make it 1 (big-M rows from interval bounds reach 1e7 on deep trained networks).
Every MILP point is polished by the LP of its own activation pattern (tolerance 1e-9) before it
is returned.  Results report ``feature_max_abs_diff``, the largest absolute
difference between ``F_l(x')`` and ``F_l(x)`` measured by a float64 forward pass through the torch
modules themselves, so every point returned is checked independently of the solver (optimality
proofs, ``proven``, still rest on HiGHS).

Files, one question each: :mod:`.problem` (the model as dense ReLU blocks, the box, scales,
tolerances and time shares), :mod:`.graph_network` and :mod:`.maxpool` (a traced graph as those
blocks), :mod:`.encoding` (the MILP / LP), :mod:`.bounds` (valid bounds on every unit), :mod:`.search`
(:func:`invariance_search`), :mod:`.pieces` and :mod:`.exact` (:func:`network_preimage`),
:mod:`.extent` (:func:`preimage_extent`).  The figure driver of the extended Figure 7 lives in
:mod:`reluinv.experiments.fig7x`.
"""

from __future__ import annotations

from .exact import NetworkPreimageCertificate, network_preimage, verify_network_preimage
from .extent import PreimageExtent, preimage_extent
from .pieces import PreimagePiece
from .search import InvarianceResult, invariance_search

__all__ = [
    "InvarianceResult",
    "NetworkPreimageCertificate",
    "PreimageExtent",
    "PreimagePiece",
    "invariance_search",
    "network_preimage",
    "preimage_extent",
    "verify_network_preimage",
]
