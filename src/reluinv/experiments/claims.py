"""The paper's claims as predicates over a run's own results (DESIGN.md, "A reproduction tests
claims").

Each figure module may define ``claims(result, meta) -> list[Claim]``: ``result`` is that figure's
entry of ``results.json``, ``meta`` is ``results["meta"]`` (mode, data).  :func:`evaluate` calls
every such function on every run, so each verdict is computed from the numbers of that run and
never typed in.  A predicate that cannot be evaluated on the run (quick mode too small, data
missing) returns :func:`not_testable` with the reason.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper about one figure and the verdict of this run on it.

    Attributes:
        figure: the figure key (``"fig4"``).
        claim: the paper's claim in one sentence.
        verdict: one of :data:`VERDICTS`.
        evidence: the numbers of this run that decide it (or why it cannot be tested).
    """

    figure: str
    claim: str
    verdict: str
    evidence: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def check(figure: str, claim: str, holds: bool, evidence: str) -> Claim:
    """The claim with verdict "reproduced" when the predicate ``holds``, else "not reproduced"."""
    return Claim(figure, claim, REPRODUCED if holds else NOT_REPRODUCED, evidence)


def not_testable(figure: str, claim: str, why: str) -> Claim:
    """The claim cannot be decided on this run; ``why`` says what is missing."""
    return Claim(figure, claim, NOT_TESTABLE, why)


def evaluate(results: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every figure's claims over ``results`` (the content of ``results.json``), in figure order.

    A figure module without a ``claims`` function contributes nothing; one whose predicates fail
    on the stored numbers (an older result layout, say) contributes a "not testable" row that
    names the error instead of hiding the figure's claims.
    """
    from . import FIGURES

    meta = results.get("meta", {})
    rows: list[dict[str, str]] = []
    for key, module_name in FIGURES.items():
        if key not in results or not isinstance(results[key], Mapping):
            continue
        module = importlib.import_module(f"{__package__}.{module_name}")
        predicates = getattr(module, "claims", None)
        if predicates is None:
            continue
        try:
            rows.extend(c.as_dict() for c in predicates(results[key], meta))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            rows.append(
                not_testable(
                    key,
                    "the figure's claims",
                    f"its stored result could not be "
                    f"read ({type(exc).__name__}: {exc} at line {where.lineno}); "
                    f"rerun the figure with --force",
                ).as_dict()
            )
    return rows
