"""Figure 5: WideCIFAR against ThinCIFAR, per layer (a ReLU counts as its own layer): output units,
number of non-zero singular values and condition number, medians over test samples."""

from __future__ import annotations

from typing import Any

from .common import RunConfig
from .spectra_data import network_spectra


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"samples": result["samples"], "note": result["note"], "training": result["training"],
            "device": result["device"],
            "layers": [{key: layer[key] for key in ("index", "name", "out_dim", "rank", "condition")}
                       for layer in result["layers"]]}


def run(config: RunConfig) -> dict[str, Any]:
    return {"wide": _summary(network_spectra("wide_cifar", config)),
            "thin": _summary(network_spectra("thin_cifar", config))}
