"""The ``serial`` back end: a plain loop in this process (breakpoints and tracebacks work)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .sample import SampleFunction, evaluate
from .store import SampleKey, SampleResult


def run_serial(
    fn: SampleFunction,
    pending: list[tuple[SampleKey, Any]],
    shared: Any,
    record: Callable[[SampleResult], None],
) -> None:
    """Run ``pending`` one after the other, passing each result to ``record``."""
    for key, payload in pending:
        record(evaluate(fn, shared, key, payload))
