"""Figure 8: effect of ReLU on the singular values of WideCIFAR, in layer 2 (modules 3 and 4 of
the paper's 1-based legend: zero-based indices 2 and 3) and layer 5 (legend 9 and 10: indices 8
and 9); medians over test samples."""

from __future__ import annotations

from typing import Any

from .common import RunConfig
from .spectra_data import effect_and_decay, network_spectra

PAIRS = [(2, 3), (8, 9)]


def run(config: RunConfig) -> dict[str, Any]:
    return effect_and_decay(network_spectra("wide_cifar", config), PAIRS)
