"""Figure 10 (Appendix A6): ThinCIFAR.  Left: effect of ReLU in layer 2 (legend 3 and 4:
zero-based modules 2, 3) and layer 5 (legend 9 and 10: modules 8, 9).  Right: decay of the
singular values over the convolutional layers.  Medians over test samples, CIFAR-shaped inputs.

Claims: Appendix A5's "in the further experiments on ThinCIFAR, we observe a stronger effect of
ReLU in layer 2, which can be explained by having a less redundant scenario with fewer remaining
rows" (compared with WideCIFAR's layer 2, whose spectra the result carries), the decay over the
layers, and Lemma 8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .claims import Claim, check, not_testable
from .common import RunConfig
from .fig8 import lemma8_claim
from .spectra_data import (
    PAPER_CNN_SETTING,
    describe,
    effect_and_decay,
    network_spectra,
    run_scope,
    run_setting,
    smallest_nonzero,
    too_few_samples,
)

PAIRS = [(2, 3), (8, 9)]


def run(config: RunConfig) -> dict[str, Any]:
    thin, wide = network_spectra("thin_cifar", config), network_spectra("wide_cifar", config)
    return {
        **effect_and_decay(thin, PAIRS),
        "wide_effect": effect_and_decay(wide, PAIRS[:1])["effect"],
        "wide_samples": wide["samples"],
        "setting": {
            "paper": PAPER_CNN_SETTING,
            "run": run_setting(config, [thin, wide], f"{thin['samples']} (median)"),
        },
    }


def relu_effect_factor(pair: dict[str, Any]) -> float:
    """How much the ReLU lowers the bottom of the spectrum: ``sigma_r(before) / sigma_r(after)``
    with ``r`` the median number of non-zero singular values after it (at least 1: deleting rows
    never raises a singular value)."""
    after = pair["after"]
    r = int(np.floor(after["rank"]))
    if r < 1:
        return float("inf")
    return float(pair["before"]["singular_values"][r - 1]) / smallest_nonzero(after)


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 10's claims over the stored result (see the module docstring)."""
    c1 = (
        "ReLU has a stronger effect in ThinCIFAR's layer 2 than in WideCIFAR's (fewer remaining "
        "rows): it lowers the smallest singular values more"
    )
    c2 = "ThinCIFAR's smallest non-zero singular value decays from layer 1 to layer 6"
    why = too_few_samples(result) or (
        too_few_samples({"samples": result["wide_samples"]}) if "wide_samples" in result else None
    )
    if why:
        return [not_testable("fig10", c, why) for c in (c1, c2)] + [lemma8_claim("fig10", result, meta)]
    scope = run_scope(result, meta)
    thin_pair, wide_pair = result["effect"][0], result["wide_effect"][0]
    thin_f, wide_f = relu_effect_factor(thin_pair), relu_effect_factor(wide_pair)
    first, last = result["decay"][0], result["decay"][-1]
    return [
        check(
            "fig10",
            c1,
            thin_f > wide_f,
            f"sigma_r before / after {describe(thin_pair['after'])}: ThinCIFAR {thin_f:.3g}, "
            f"WideCIFAR {wide_f:.3g} ({scope})",
        ),
        check(
            "fig10",
            c2,
            smallest_nonzero(last) < smallest_nonzero(first),
            f"smallest non-zero after ReLU 1: {smallest_nonzero(first):.3g}, after ReLU "
            f"{last['block']}: {smallest_nonzero(last):.3g} ({scope})",
        ),
        lemma8_claim("fig10", result, meta),
    ]
