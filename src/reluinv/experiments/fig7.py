"""Figures 7 and 12 (Appendix A7): for the MLP of Table 1, the test images with the fewest active
first-layer units, and for each targets of other classes; the LP of A7 (maximise <c, x> over the
first layer's preimage of the source's features, x in [0, 1]^784) finds an input that looks like
the target and has exactly the source's first-layer features."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..invariance import invariance_search
from .common import RunConfig, digit_data, trained

FIRST_RELU = 2  # Flatten, Linear, ReLU: the first layer's features are module 2's output


def run(config: RunConfig) -> dict[str, Any]:
    train_set, test_set = digit_data(config)
    model, info = trained("mlp_table1", train_set, test_set, config)
    n_sources = config.samples(2, 3)
    n_targets = 2
    with torch.no_grad():
        hidden = model[:FIRST_RELU + 1](torch.tensor(test_set.images))
    active = (hidden > 0).sum(1).numpy()
    sources = np.argsort(active, kind="stable")[:n_sources]
    examples = []
    for source in sources:
        label = int(test_set.labels[source])
        targets = [i for i in range(len(test_set)) if test_set.labels[i] != label]
        chosen: list[int] = []
        for i in targets:  # targets of distinct classes, as in the paper's "6" and "4"
            if all(test_set.labels[i] != test_set.labels[j] for j in chosen):
                chosen.append(i)
            if len(chosen) == n_targets:
                break
        for target in chosen:
            x = test_set.images[source].reshape(-1).astype(np.float64)
            c = test_set.images[target].reshape(-1).astype(np.float64)
            found = invariance_search(model, x, c, layer=FIRST_RELU, mode="layer",
                                      objective="max_inner", lower=0.0, upper=1.0)
            examples.append({
                "source_index": int(source), "source_label": label,
                "source_active_units": int(active[source]),
                "target_index": int(target), "target_label": int(test_set.labels[target]),
                "feature_max_abs_diff": found.feature_max_abs_diff,
                "input_l2_distance": found.input_l2_distance,
                "proven": bool(found.proven),
                "source": x.tolist(), "target": c.tolist(),
                "found": np.asarray(found.x, dtype=float).reshape(-1).tolist(),
            })
    return {"training": info, "data": test_set.source, "layer": FIRST_RELU,
            "units": int(hidden.shape[1]), "examples": examples}
