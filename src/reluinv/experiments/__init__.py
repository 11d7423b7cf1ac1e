"""One module per figure of the paper; each ``run(config)`` returns JSON-serialisable numbers and
plotting lives in :mod:`reluinv.report`.  :data:`FIGURES` maps a figure key to its module name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

FIGURES: dict[str, str] = {
    "fig1": "fig1",
    "fig4": "fig4",
    "fig5": "fig5",
    "fig6": "fig6",
    "fig7": "fig7",
    "fig7x": "fig7x",
    "fig8": "fig8",
    "fig9": "fig9",
    "fig10": "fig10",
    "fig11": "fig11",
}


def runner(key: str) -> Callable[[Any], dict[str, Any]]:
    """The ``run(config)`` of one figure, imported on demand."""
    if key not in FIGURES:
        raise ValueError(f"unknown figure {key!r}; choose from {', '.join(FIGURES)}")
    return importlib.import_module(f"{__name__}.{FIGURES[key]}").run
