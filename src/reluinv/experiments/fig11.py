"""Figure 11 (Appendix A6): the MLP of Table 2. Left: effect of ReLU in layer 1 (legend 1 and 2;
zero-based modules 1 and 2 after the Flatten at 0) and layer 2 (legend 3 and 4: modules 3 and 4).
Right: decay of the singular values over the layers. Medians over test samples.

The network is Figure 4's (:func:`.fig4.figure_model`): the same data, recipe and recipe change,
as in the paper, where one MLP serves Section 2.2 and Appendix A6.

Claims: the second ReLU (784 units after a 784-wide linearisation) removes singular values, since
only its active rows remain; and the smallest non-zero singular value decays from layer 1 to
layer 2 ("decay of singular values over the layers").
"""

from __future__ import annotations

from typing import Any

from .claims import Claim, check, not_testable
from .common import RunConfig
from .fig4 import figure_model
from .spectra_data import (
    effect_and_decay,
    network_spectra,
    run_scope,
    run_setting,
    smallest_nonzero,
    too_few_samples,
)

PAIRS = [(1, 2), (3, 4)]

PAPER_SETTING = {
    "mode": "full",
    "data": "MNIST test set",
    "input shape": "1x28x28",
    "training": "Adam lr 1e-3, batch 1000, 25 epochs (Keras defaults)",
    "test accuracy": "not stated",
    "samples": "50 (median)",
}


def run(config: RunConfig) -> dict[str, Any]:
    model, info, note, _, _ = figure_model(config)
    result = network_spectra("mlp_table2", config, model_info=(model, info))
    run_side = run_setting(config, [result], f"{result['samples']} (median)")
    if note:
        run_side["training"] += f"; {note} (as Figure 4)"
    return {
        **effect_and_decay(result, PAIRS),
        "recipe_change": note,
        "setting": {"paper": PAPER_SETTING, "run": run_side},
    }


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 11's claims over the stored result (see the module docstring)."""
    c1 = (
        "the second ReLU (layer 2, legend 3 and 4) removes singular values: fewer non-zero "
        "singular values after it than before"
    )
    c2 = "the smallest non-zero singular value decays from layer 1 to layer 2"
    why = too_few_samples(result)
    if why:
        return [not_testable("fig11", c, why) for c in (c1, c2)]
    scope = run_scope(result, meta)
    before, after = result["effect"][1]["before"], result["effect"][1]["after"]
    first, last = result["decay"][0], result["decay"][-1]
    return [
        check(
            "fig11",
            c1,
            after["rank"] < before["rank"],
            f"median non-zero singular values {before['rank']:g} before and {after['rank']:g} "
            f"after the second ReLU ({scope})",
        ),
        check(
            "fig11",
            c2,
            smallest_nonzero(last) < smallest_nonzero(first),
            f"smallest non-zero singular value {smallest_nonzero(first):.3g} after ReLU 1, "
            f"{smallest_nonzero(last):.3g} after ReLU 2 ({scope})",
        ),
    ]
