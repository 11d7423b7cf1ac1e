"""Figure 9 (Appendix A5): for the ReLU of WideCIFAR's layer 4 (convolution 4 and its ReLU;
legend 7 and 8; zero-based module index 7), at one test sample, how many remaining rows satisfy
condition (3) of Lemma 9 as the constant c grows, the smallest c for which all do (c*), and the
singular values after that ReLU.

Layer 4 because the paper's Figure 9 uses it ("the example is from layer 4 of WideCIFAR, for only
one sample"): on 3x32x32 inputs it has 32x16x16 = 8,192 units, of which the paper's sample keeps
M = 5,120.  Claims: "the red line is reached for c = 6. However, even the largest singular value
after ReLU is smaller than 2.5. Thus, the bound given by Lemma 9 is far off", and "even for small
constants c most a_i fulfill condition 3, yet not all".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..stability import lemma9_curve
from .cifar_shaped import cnn_inputs
from .claims import Claim, check, not_testable
from .common import RunConfig, trained
from .spectra_data import PAPER_CNN_SETTING, run_setting

LAYER = 7
#: Grid of c; widened to reach c* when a network needs more.
C_MAX, C_STEPS = 40.0, 401


def run(config: RunConfig) -> dict[str, Any]:
    inputs = cnn_inputs(config)
    model, info = trained("wide_cifar", inputs.train, inputs.test, config)
    x = torch.tensor(np.array(inputs.test.images[0]))
    cs = np.linspace(0.0, C_MAX, C_STEPS)
    curve = lemma9_curve(model, x, LAYER, cs)
    if np.isfinite(curve.c_star) and curve.c_star > C_MAX:
        cs = np.linspace(0.0, 1.2 * curve.c_star, C_STEPS)
        curve = lemma9_curve(model, x, LAYER, cs)
    base = {
        "architecture": "wide_cifar",
        "training": info,
        "samples": 1,
        "data": inputs.label,
        "input_shape": inputs.shape_text,
    }
    paper = {**PAPER_CNN_SETTING, "samples": "1", "remaining rows M": "5,120 of 8,192"}
    return {
        "layer": LAYER,
        "paper_layer": LAYER + 1,
        "block": 4,
        "role": "ReLU 4",
        "units": curve.remaining + curve.removed,
        "note": inputs.label,
        "data": inputs.label,
        "input_shape": inputs.shape_text,
        "training": info,
        "samples": 1,
        "cs": cs.tolist(),
        "counts": np.asarray(curve.counts).tolist(),
        "remaining": curve.remaining,
        "removed": curve.removed,
        "c_star": curve.c_star,
        "best_k_in_row_space": curve.best_k_in_row_space,
        "sigma_min_after": curve.sigma_min_after,
        "sigma_max_after": curve.sigma_max_after,
        "setting": {
            "paper": paper,
            "run": {
                **run_setting(config, [base], "1"),
                "remaining rows M": f"{curve.remaining:,} of {curve.remaining + curve.removed:,}",
            },
        },
    }


def count_at(result: dict[str, Any], c: float) -> int:
    """Rows satisfying (3) at the largest grid constant not above ``c`` (the curve is a step
    function of c)."""
    cs = np.asarray(result["cs"])
    at = int(np.searchsorted(cs, c, side="right")) - 1
    return int(result["counts"][at]) if at >= 0 else 0


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 9's claims over the stored result (see the module docstring)."""
    c1 = "Lemma 9's c* lies above the largest singular value after the ReLU: the bound is far off"
    c2 = (
        "at a small constant c (the largest singular value after the ReLU) most remaining rows "
        "satisfy condition (3), yet not all"
    )
    c_star, top, m = result["c_star"], result["sigma_max_after"], result["remaining"]
    scope = (
        f"{meta.get('mode', '?')} run, one sample at {result.get('input_shape', '?')}, "
        f"{result['training']['epochs']} epochs, layer 4 (ReLU 4, legend 8)"
    )
    if c_star is None or not np.isfinite(c_star) or top is None or m == 0:
        why = f"the ReLU removes no (non-zero) row or keeps none at this sample (M = {m}; {scope})"
        return [not_testable("fig9", c, why) for c in (c1, c2)]
    at = count_at(result, top)
    return [
        check(
            "fig9",
            c1,
            c_star > top,
            f"c* = {c_star:.3g}, largest singular value after the ReLU "
            f"{top:.3g} (the paper: about 6 and below 2.5; {scope})",
        ),
        check("fig9", c2, m / 2 <= at < m, f"at c = {top:.3g}: {at:,} of M = {m:,} rows ({scope})"),
    ]
