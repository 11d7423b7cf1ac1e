"""The preimage analysis behind Figure 4, in small: classify the first layer of the MLP of
Table 2 (3500 ReLUs over 784 inputs) at test digits, and tabulate kinds against active units.

Returns plain numbers; :func:`format_table` turns them into the text table `reluinv demo` prints.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..data import load_embedded_digits
from ..preimage import layer_preimage
from ..train import quick_recipe, train

KINDS = ("singleton", "compact", "unbounded", "empty")


def preimage_table(
    *, samples: int = 60, cache_dir: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train (or load) the quick Table 2 MLP on the embedded digits and classify the preimage of
    its first ReLU layer at ``samples`` test digits (Theorem 4)."""
    train_set = load_embedded_digits("train")
    test_set = load_embedded_digits("test", limit=samples)
    model, info = train(
        quick_recipe("mlp_table2"), train_set, test_set=test_set, cache_dir=cache_dir, progress=progress
    )
    layer = model[1]
    assert isinstance(layer, torch.nn.Linear)  # Table 2: Flatten, then the 3500-unit layer
    rows = []
    for index, image in enumerate(test_set.images):
        start = time.perf_counter()
        r = layer_preimage(layer, image.reshape(-1))
        rows.append(
            {
                "index": index,
                "label": int(test_set.labels[index]),
                "n_active": r.n_active,
                "rank": r.rank,
                "nullity": r.nullity,
                "kind": r.kind,
                "margin": r.margin,
                "seconds": time.perf_counter() - start,
            }
        )
    return {
        "model": "mlp_table2 (quick recipe)",
        "test_accuracy": info.test_accuracy,
        "input_dim": int(layer.in_features),
        "units": int(layer.out_features),
        "samples": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable text table: kinds per band of active units, then a few individual digits."""
    rows = result["samples"]
    n = result["input_dim"]
    bands = [(0, n - 100), (n - 100, n - 40), (n - 40, n), (n, n + 60), (n + 60, 10**9)]
    lines = [
        f"Preimage of the first ReLU layer ({result['units']} units over {n} inputs) of "
        f"{result['model']}, test accuracy {result['test_accuracy']:.3f}",
        "",
        f"{'active units':>16} | " + " | ".join(f"{k:>9}" for k in KINDS) + " | median s",
        "-" * 78,
    ]
    for lo, hi in bands:
        band = [r for r in rows if lo <= r["n_active"] < hi]
        if not band:
            continue
        label = f"{lo}-{hi - 1}" if hi < 10**9 else f">= {lo}"
        counts = " | ".join(f"{sum(r['kind'] == k for r in band):>9}" for k in KINDS)
        med = float(np.median([r["seconds"] for r in band]))
        lines.append(f"{label:>16} | {counts} | {med:8.3f}")
    lines += [
        "",
        f"{'digit':>5} {'label':>5} {'active':>6} {'rank':>5} {'nullity':>7} {'kind':>10} {'margin':>9}",
    ]
    for r in sorted(rows, key=lambda r: r["n_active"])[:: max(1, len(rows) // 8)]:
        lines.append(
            f"{r['index']:>5} {r['label']:>5} {r['n_active']:>6} {r['rank']:>5} "
            f"{r['nullity']:>7} {r['kind']:>10} {r['margin']:>9.2e}"
        )
    lines.append("")
    lines.append(
        f"Inputs with at least {n} linearly independent active rows are singletons "
        f"(Theorem 4 i); below, the inactive rows decide between compact and unbounded."
    )
    return "\n".join(lines)
