"""Figure 11: the MLP of Table 2 on MNIST-like digits. Left: effect of ReLU in layer 1 (legend 1
and 2; zero-based modules 1 and 2 after the Flatten at 0) and layer 2 (modules 3 and 4). Right:
decay of the singular values over the layers. Medians over test samples."""

from __future__ import annotations

from typing import Any

from .common import RunConfig
from .spectra_data import effect_and_decay, network_spectra

PAIRS = [(1, 2), (3, 4)]


def run(config: RunConfig) -> dict[str, Any]:
    return effect_and_decay(network_spectra("mlp_table2", config), PAIRS)
