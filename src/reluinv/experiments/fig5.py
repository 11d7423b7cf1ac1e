"""Figure 5 (Section 3.2): WideCIFAR against ThinCIFAR, per layer (a ReLU counts as its own layer,
as in the paper's legend): output units, number of non-zero singular values and condition number,
medians over test samples, on 3-channel CIFAR-shaped inputs (:mod:`.cifar_shaped`).

The paper: "In combination with lower output dimension, ReLU has a different effect for
ThinCIFAR. The number of singular values decreases in layer 5, which cuts off the smallest
singular values, resulting in a lower condition number."  "Layer 5" is read as the paper's text
counts layers (convolution 5 with its ReLU; Figure 8's caption uses the same count).
"""

from __future__ import annotations

from typing import Any

from .claims import Claim, check, not_testable
from .common import RunConfig
from .spectra_data import (
    PAPER_CNN_SETTING,
    describe,
    first_rank_loss,
    network_spectra,
    run_scope,
    run_setting,
    too_few_samples,
)

#: The paper's layer (text numbering) at which ThinCIFAR loses non-zero singular values.
PAPER_LOSS_LAYER = 5
_KEYS = ("index", "name", "paper_layer", "block", "role", "out_dim", "ranks", "rank", "condition")


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    loss = first_rank_loss(result["layers"], result["input_dim"])
    return {"samples": result["samples"], "note": result["note"], "training": result["training"],
            "device": result["device"], "data": result["data"], "input_shape": result["input_shape"],
            "input_dim": result["input_dim"],
            "first_rank_loss": None if loss is None else {k: loss[k] for k in ("paper_layer", "block", "role", "rank")},
            "layers": [{key: layer[key] for key in _KEYS} for layer in result["layers"]]}


def run(config: RunConfig) -> dict[str, Any]:
    wide, thin = network_spectra("wide_cifar", config), network_spectra("thin_cifar", config)
    return {"wide": _summary(wide), "thin": _summary(thin), "data": wide["data"],
            "input_shape": wide["input_shape"], "input_dim": wide["input_dim"],
            "paper_loss_layer": PAPER_LOSS_LAYER,
            "setting": {"paper": PAPER_CNN_SETTING,
                        "run": run_setting(config, [wide, thin], f"{wide['samples']} (median)")}}


def _loss(result: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    loss = first_rank_loss(result["layers"], result["input_dim"])
    if loss is None:
        return None, f"keeps all {result['input_dim']:,} through every layer"
    return loss, f"first falls below {result['input_dim']:,} at {describe(loss)} (median {loss['rank']:g})"


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 5's claims over the stored result (see the module docstring)."""
    wide, thin = result["wide"], result["thin"]
    c1 = ("ThinCIFAR loses non-zero singular values (rank below the input dimension) earlier than "
          "WideCIFAR")
    c2 = (f"ThinCIFAR's number of non-zero singular values decreases in layer {PAPER_LOSS_LAYER} "
          f"(convolution {PAPER_LOSS_LAYER} and its ReLU), while WideCIFAR keeps all of them there")
    c3 = ("cutting off the smallest singular values gives ThinCIFAR a lower condition number than "
          "WideCIFAR where it loses them")
    why = too_few_samples(thin) or too_few_samples(wide)
    if why:
        return [not_testable("fig5", c, why) for c in (c1, c2, c3)]
    (wide_loss, wide_text), (thin_loss, thin_text) = _loss(wide), _loss(thin)
    scope = run_scope(thin, meta)
    evidence = f"ThinCIFAR {thin_text}; WideCIFAR {wide_text} ({scope})"
    never = float("inf")
    thin_block = thin_loss["block"] if thin_loss else never
    wide_block = wide_loss["block"] if wide_loss else never
    out = [check("fig5", c1, thin_block < wide_block, evidence),
           check("fig5", c2, thin_block == PAPER_LOSS_LAYER and wide_block > PAPER_LOSS_LAYER,
                 f"{evidence}; the paper: layer {PAPER_LOSS_LAYER}")]
    if thin_loss is None:
        out.append(not_testable("fig5", c3, f"ThinCIFAR never loses singular values in this run ({scope})"))
        return out
    wide_same = next(layer for layer in wide["layers"] if layer["paper_layer"] == thin_loss["paper_layer"])
    tc, wc = thin_loss["condition"], wide_same["condition"]
    if tc is None or wc is None:
        out.append(not_testable("fig5", c3, f"a condition number is undefined at {describe(thin_loss)}"))
    else:
        out.append(check("fig5", c3, tc < wc, f"median condition at {describe(thin_loss)}: ThinCIFAR "
                                              f"{tc:.3g}, WideCIFAR {wc:.3g} ({scope})"))
    return out
