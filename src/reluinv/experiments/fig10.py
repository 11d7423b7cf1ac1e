"""Figure 10: ThinCIFAR. Left: effect of ReLU in layer 2 (zero-based modules 2, 3) and layer 5
(modules 8, 9). Right: decay of the singular values over the layers. Medians over test samples."""

from __future__ import annotations

from typing import Any

from .common import RunConfig
from .spectra_data import effect_and_decay, network_spectra

PAIRS = [(2, 3), (8, 9)]


def run(config: RunConfig) -> dict[str, Any]:
    return effect_and_decay(network_spectra("thin_cifar", config), PAIRS)
