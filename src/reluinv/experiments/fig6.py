"""Figure 6 (Section 3.2): decay of all singular values over WideCIFAR's convolutional layers 1-6
("each layer includes the convolution and ReLU-activation": the spectrum after each ReLU), medians
over test samples, on CIFAR-shaped inputs (:mod:`.cifar_shaped`).

The paper: "the largest singular value grows, while the small singular values decrease
significantly", and "invariance is characterized by zero singular values, [...] see e.g. layer 6".
"""

from __future__ import annotations

from typing import Any

from .claims import Claim, check, not_testable
from .common import RunConfig
from .spectra_data import (
    PAPER_CNN_SETTING,
    largest,
    network_spectra,
    pick,
    relu_indices,
    run_scope,
    run_setting,
    smallest_nonzero,
    too_few_samples,
)

#: "Decrease significantly" is read as: by more than this factor from layer 1 to layer 6.
SIGNIFICANT_FACTOR = 10.0


def run(config: RunConfig) -> dict[str, Any]:
    result = network_spectra("wide_cifar", config)
    return {
        "architecture": "wide_cifar",
        "samples": result["samples"],
        "note": result["note"],
        "data": result["data"],
        "input_shape": result["input_shape"],
        "input_dim": result["input_dim"],
        "training": result["training"],
        "device": result["device"],
        "decay": pick(result, relu_indices(result)),
        "setting": {
            "paper": PAPER_CNN_SETTING,
            "run": run_setting(config, [result], f"{result['samples']} (median)"),
        },
    }


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 6's claims over the stored result (see the module docstring)."""
    c1 = "the largest singular value grows over WideCIFAR's convolutional layers 1 to 6"
    c2 = (
        f"the smallest non-zero singular values decrease significantly (by more than "
        f"{SIGNIFICANT_FACTOR:g}x) from layer 1 to layer 6"
    )
    c3 = "layer 6 of WideCIFAR has zero singular values (invariance directions)"
    why = too_few_samples(result)
    if why:
        return [not_testable("fig6", c, why) for c in (c1, c2, c3)]
    decay, scope = result["decay"], run_scope(result, meta)
    first, last = decay[0], decay[-1]
    tops = ", ".join(f"{largest(layer):.3g}" for layer in decay)
    lows = ", ".join(f"{smallest_nonzero(layer):.3g}" for layer in decay)
    ratio = smallest_nonzero(first) / smallest_nonzero(last)
    n = result["input_dim"]
    return [
        check(
            "fig6",
            c1,
            largest(last) > largest(first),
            f"largest singular value after ReLU 1..{last['block']}: {tops} ({scope})",
        ),
        check(
            "fig6",
            c2,
            ratio > SIGNIFICANT_FACTOR,
            f"smallest non-zero after ReLU 1..{last['block']}: {lows}; layer 1 / layer "
            f"{last['block']} = {ratio:.3g} ({scope})",
        ),
        check(
            "fig6",
            c3,
            last["rank"] < n,
            f"median number of non-zero singular values at layer {last['block']}: "
            f"{last['rank']:g} of {min(n, last['out_dim']):,} (per sample: "
            f"{', '.join(str(r) for r in last['ranks'])}) ({scope})",
        ),
    ]
