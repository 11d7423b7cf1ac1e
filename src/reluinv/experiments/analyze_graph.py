"""``reluinv analyze`` on models that are not chains: the per-sample work on a traced graph.

A model with residual additions, concatenation, pooling or functional calls is analysed through
:mod:`reluinv.graph` (see there what a *layer* is: every activation or max-pool node, named by its
module path).  For each sample and analysed layer:

* the **layer preimage** (Theorem 4 on graphs, :mod:`reluinv.graph_preimage`): the layer's input
  is ``z = A u + b``, ``u`` the outputs of the nonlinear nodes (or the model input) that feed it
  through affine nodes only; :func:`reluinv.graph_preimage.preimage_rows` states the set of ``u``
  that give the layer's output (for max-pools with the argmax selection inequalities) and
  :func:`reluinv.preimage.preimage` classifies it.  ``active`` counts the equality rows of that
  system (ReLU: the positive units, as for chains; ReLU6/Hardtanh: the units strictly inside the
  linear range; max-pool: every output unit; an invertible activation: every unit);
* unless spectra are off, the spectrum of the layer's prefix Jacobian
  (:func:`reluinv.graph_spectra.graph_spectra`, Section 3.2).

``A`` is dense (``8 * m * n`` bytes per layer and sample): meant for small and medium layers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..graph import Layer, prepare_graph
from ..graph_preimage import layer_system, preimage_rows
from ..graph_spectra import graph_spectra

__all__ = ["analyze_graph_sample", "chosen_graph_layers", "clear_cache", "describe_graph_layer"]


def chosen_graph_layers(
    model: nn.Module, sample: NDArray[np.float64], layers: Sequence[Any] | None
) -> list[Layer]:
    """The layers of the traced ``model`` to analyse: all (``None``), or those named or indexed.

    ``layers`` holds layer names (module paths such as ``"layer1.0.relu#2"``) or indices (the
    position among the graph's layers).  Raises ``ValueError`` when the model cannot be traced,
    when ``sample`` does not fit it, or for a layer it does not have (listing its layers).
    """
    misfit = f"inputs of per-sample shape {tuple(sample.shape)} do not fit the model"
    try:
        _, net = prepare_graph(model, torch.as_tensor(sample, dtype=torch.float64))
    except ValueError as exc:
        if "not supported" in str(exc) or "torch.fx" in str(exc) or "training mode" in str(exc):
            raise
        raise ValueError(f"{misfit}: {exc}") from exc
    except RuntimeError as exc:
        raise ValueError(f"{misfit}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not net.layers:
        raise ValueError(
            "the model has no activation or max-pool layers; there is no layer preimage to analyse"
        )
    if layers is None:
        return list(net.layers)
    listing = ", ".join(f"{layer.index}:{layer.name}" for layer in net.layers)
    chosen: dict[int, Layer] = {}
    for wanted in layers:
        found = [
            layer
            for layer in net.layers
            if layer.name == wanted or (_is_index(wanted) and layer.index == wanted)
        ]
        if not found:
            raise ValueError(f"layer {wanted!r} is not a layer of the model; its layers are {listing}")
        chosen[found[0].index] = found[0]
    if not chosen:
        raise ValueError(f"layers is empty; the model's layers are {listing}")
    return [chosen[i] for i in sorted(chosen)]


def _is_index(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def describe_graph_layer(model: nn.Module, sample: NDArray[np.float64], layer: Layer) -> dict[str, Any]:
    """``input_dim`` (size of the sources ``u``) and ``feeds_from`` (the sources, by name) of a layer."""
    system = layer_system(model, torch.as_tensor(sample, dtype=torch.float64), layer.name)
    names = [name if name != "input" else "the network input" for name, _ in system.sources]
    return {"input_dim": int(system.A.shape[1]), "feeds_from": " + ".join(names) if names else "constants"}


# id(shared) -> (shared, model on the device): copied once per process and run, not per sample.
_ON_DEVICE: dict[int, tuple[Any, nn.Module]] = {}


def clear_cache() -> None:
    """Drop the per-process device copy of the model (after a run)."""
    _ON_DEVICE.clear()


def _model_on(shared: Mapping[str, Any]) -> nn.Module:
    device = torch.device(shared["device"])
    if device.type == "cpu":
        return shared["model"]
    entry = _ON_DEVICE.get(id(shared))
    if entry is None or entry[0] is not shared:
        _ON_DEVICE.clear()
        entry = (shared, copy.deepcopy(shared["model"]).to(device))  # never move the caller's model
        _ON_DEVICE[id(shared)] = entry
    return entry[1]


def analyze_graph_sample(shared: Mapping[str, Any], sample: NDArray[np.float64]) -> dict[str, Any]:
    """Preimage (and spectrum) of every analysed graph layer at one sample; a ``run_samples`` function.

    ``shared`` holds ``model`` (on the CPU), ``layers`` (``(index, name)`` pairs), ``spectra``
    and ``device``.  Returns ``{"layers": rows}`` with the columns of a chain's rows.
    """
    from .analyze import _spectrum_summary, preimage_row

    x = torch.as_tensor(np.asarray(sample, dtype=np.float64))
    by_name = {}
    if shared["spectra"]:
        device = torch.device(shared["device"])
        by_name = {s.name: s for s in graph_spectra(_model_on(shared), x.to(device))}
    rows = []
    for index, name in shared["layers"]:
        system = layer_system(shared["model"], x, name)
        row = preimage_row(index, *preimage_rows(system), hint=system.u)
        if shared["spectra"]:
            row.update(_spectrum_summary(by_name[name]))
        rows.append(row)
    return {"layers": rows}
