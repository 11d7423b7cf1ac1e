"""Figure 9 (Appendix A5): for the ReLU after convolution 4 of WideCIFAR (module index 7) at one
test sample, how many remaining rows satisfy condition (3) of Lemma 9 as the constant c grows,
and the smallest c for which all do, next to the singular values after that ReLU."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..stability import lemma9_curve
from .common import RunConfig, cnn_data, trained

LAYER = 7


def run(config: RunConfig) -> dict[str, Any]:
    train_set, test_set, note = cnn_data(config)
    model, info = trained("wide_cifar", train_set, test_set, config)
    x = torch.tensor(np.array(test_set.images[0]))
    cs = np.linspace(0.0, 40.0, 401)  # wide enough to reach c* on trained networks
    curve = lemma9_curve(model, x, LAYER, cs)
    return {"layer": LAYER, "note": note, "training": info, "cs": cs.tolist(),
            "counts": np.asarray(curve.counts).tolist(), "remaining": curve.remaining,
            "removed": curve.removed, "c_star": curve.c_star,
            "best_k_in_row_space": curve.best_k_in_row_space,
            "sigma_min_after": curve.sigma_min_after, "sigma_max_after": curve.sigma_max_after}
