"""Figure 6: decay of all singular values over the layers of WideCIFAR (each layer = convolution
and ReLU; the spectrum after each ReLU), medians over test samples."""

from __future__ import annotations

from typing import Any

from .common import RunConfig
from .spectra_data import network_spectra, pick, relu_indices


def run(config: RunConfig) -> dict[str, Any]:
    result = network_spectra("wide_cifar", config)
    return {"architecture": "wide_cifar", "samples": result["samples"], "note": result["note"],
            "training": result["training"], "device": result["device"],
            "decay": pick(result, relu_indices(result))}
