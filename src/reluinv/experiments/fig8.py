"""Figure 8 (Appendix A5): effect of ReLU on the singular values of WideCIFAR in layer 2 (legend
3 and 4, "because ReLU is counted as an extra activation layer": zero-based module indices 2 and
3) and layer 5 (legend 9 and 10: indices 8 and 9), with the decay over the layers; medians over
test samples on CIFAR-shaped inputs (:mod:`.cifar_shaped`).

Claims: Lemma 8 (ReLU never raises the largest singular value) and Appendix A5's "even the
largest singular value after ReLU is smaller than 2.5 (shown in Figure 8)".
"""

from __future__ import annotations

from typing import Any

from .claims import Claim, check, not_testable
from .common import RunConfig
from .spectra_data import (
    PAPER_CNN_SETTING,
    describe,
    effect_and_decay,
    largest,
    network_spectra,
    run_scope,
    run_setting,
    too_few_samples,
)

PAIRS = [(2, 3), (8, 9)]
#: Appendix A5: the largest singular value after ReLU in the paper's trained WideCIFAR.
PAPER_LARGEST_AFTER = 2.5


def run(config: RunConfig) -> dict[str, Any]:
    spectra = network_spectra("wide_cifar", config)
    return {
        **effect_and_decay(spectra, PAIRS),
        "setting": {
            "paper": PAPER_CNN_SETTING,
            "run": run_setting(config, [spectra], f"{spectra['samples']} (median)"),
        },
    }


def absolute_scale_gate(result: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """Why an absolute number of the paper's trained network cannot be compared on this run."""
    if meta.get("mode") != "full":
        return (
            f"quick mode trains {result['training']['epochs']} epochs (the paper: 100); an "
            "absolute singular value is a property of the fully trained network"
        )
    if not str(result.get("data", "")).startswith("CIFAR-10"):
        return "the run uses a stand-in for CIFAR-10; absolute singular values depend on the data"
    return None


def lemma8_claim(figure: str, result: dict[str, Any], meta: dict[str, Any]) -> Claim:
    """Lemma 8 on the stored median spectra: after each ReLU the largest singular value is at
    most the one before (medians keep the per-sample order)."""
    claim = "ReLU never raises the largest singular value (Lemma 8) in the layers shown"
    why = too_few_samples(result)
    if why:
        return not_testable(figure, claim, why)
    parts, holds = [], True
    for pair in result["effect"]:
        before, after = largest(pair["before"]), largest(pair["after"])
        holds &= after <= before * (1 + 1e-9)
        parts.append(f"{describe(pair['after'])}: {before:.4g} -> {after:.4g}")
    return check(figure, claim, holds, f"{'; '.join(parts)} ({run_scope(result, meta)})")


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 8's claims over the stored result (see the module docstring)."""
    c2 = (
        f"the largest singular value after the ReLUs of layers 2 and 5 is below "
        f"{PAPER_LARGEST_AFTER} (Appendix A5)"
    )
    out = [lemma8_claim("fig8", result, meta)]
    why = absolute_scale_gate(result, meta) or too_few_samples(result)
    if why:
        return out + [not_testable("fig8", c2, why)]
    values = [largest(pair["after"]) for pair in result["effect"]]
    return out + [
        check(
            "fig8",
            c2,
            max(values) < PAPER_LARGEST_AFTER,
            f"largest after ReLU 2 and ReLU 5: {', '.join(f'{v:.3g}' for v in values)} "
            f"({run_scope(result, meta)})",
        )
    ]
