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
    by_role,
    describe,
    first_rank_loss,
    network_spectra,
    run_scope,
    run_setting,
    too_few_samples,
)

#: The paper's layer (text numbering) at which ThinCIFAR loses non-zero singular values.
PAPER_LOSS_LAYER = 5
_LOSS_KEYS = ("paper_layer", "block", "role", "rank", "condition")
_KEYS = ("index", "name", "paper_layer", "block", "role", "out_dim", "ranks", "rank", "condition")


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    loss = first_rank_loss(result["layers"], result["input_dim"])
    return {
        "samples": result["samples"],
        "note": result["note"],
        "training": result["training"],
        "device": result["device"],
        "data": result["data"],
        "input_shape": result["input_shape"],
        "input_dim": result["input_dim"],
        "first_rank_loss": None if loss is None else {k: loss[k] for k in _LOSS_KEYS},
        "layers": [{key: layer[key] for key in _KEYS} for layer in result["layers"]],
    }


def run(config: RunConfig) -> dict[str, Any]:
    wide, thin = network_spectra("wide_cifar", config), network_spectra("thin_cifar", config)
    return {
        "wide": _summary(wide),
        "thin": _summary(thin),
        "data": wide["data"],
        "input_shape": wide["input_shape"],
        "input_dim": wide["input_dim"],
        "paper_loss_layer": PAPER_LOSS_LAYER,
        "setting": {
            "paper": PAPER_CNN_SETTING,
            "run": run_setting(config, [wide, thin], f"{wide['samples']} (median)"),
        },
    }


def _loss(result: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    loss = first_rank_loss(result["layers"], result["input_dim"])
    if loss is None:
        return None, f"keeps all {result['input_dim']:,} through every layer"
    return loss, f"first falls below {result['input_dim']:,} at {describe(loss)} (median {loss['rank']:g})"


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 5's claims over the stored result (see the module docstring): ThinCIFAR loses
    non-zero singular values before WideCIFAR; it loses some in layer 5 (fewer after ReLU 5 than
    after ReLU 4) while WideCIFAR still has all there; and that loss lowers ThinCIFAR's condition
    number (after ReLU 5 against before it, at convolution 5)."""
    wide, thin = result["wide"], result["thin"]
    p = PAPER_LOSS_LAYER
    c1 = (
        "ThinCIFAR loses non-zero singular values (rank below the input dimension) in an earlier "
        "layer than WideCIFAR"
    )
    c2 = (
        f"ThinCIFAR's number of non-zero singular values decreases in layer {p} (fewer after "
        f"ReLU {p} than after ReLU {p - 1}), while WideCIFAR keeps all of them there"
    )
    c3 = (
        f"the singular values ThinCIFAR loses in layer {p} are its smallest: its condition number "
        f"is lower after ReLU {p} than before it"
    )
    why = too_few_samples(thin) or too_few_samples(wide)
    if why:
        return [not_testable("fig5", c, why) for c in (c1, c2, c3)]
    (wide_loss, wide_text), (thin_loss, thin_text) = _loss(wide), _loss(thin)
    scope = run_scope(thin, meta)
    never = float("inf")
    thin_block = thin_loss["block"] if thin_loss else never
    wide_block = wide_loss["block"] if wide_loss else never
    out = [
        check("fig5", c1, thin_block < wide_block, f"ThinCIFAR {thin_text}; WideCIFAR {wide_text} ({scope})")
    ]
    before, after = by_role(thin["layers"], f"ReLU {p - 1}"), by_role(thin["layers"], f"ReLU {p}")
    wide_after = by_role(wide["layers"], f"ReLU {p}")
    n = result["input_dim"]
    out.append(
        check(
            "fig5",
            c2,
            after["rank"] < before["rank"] and wide_after["rank"] >= n,
            f"median non-zero singular values after ReLU {p - 1} / ReLU {p}: ThinCIFAR "
            f"{before['rank']:g} / {after['rank']:g}, WideCIFAR after ReLU {p}: "
            f"{wide_after['rank']:g} of {n:,}; ThinCIFAR {thin_text} ({scope})",
        )
    )
    conv = by_role(thin["layers"], f"conv {p}")
    if after["rank"] >= conv["rank"]:
        out.append(
            not_testable("fig5", c3, f"ThinCIFAR's ReLU {p} removes no singular value in this run ({scope})")
        )
    elif conv["condition"] is None or after["condition"] is None:
        out.append(not_testable("fig5", c3, f"a condition number is undefined around ReLU {p}"))
    else:
        out.append(
            check(
                "fig5",
                c3,
                after["condition"] < conv["condition"],
                f"ThinCIFAR's median condition number {conv['condition']:.3g} at conv {p} "
                f"(legend {conv['paper_layer']}), {after['condition']:.3g} after ReLU {p} "
                f"(legend {after['paper_layer']}) ({scope})",
            )
        )
    return out
