"""Figure 1: the toy network (one hidden layer of 3 ReLUs on 2-d input) over a grid of the plane.

At each grid point: the prediction; the kind of the first layer's preimage (Theorem 4); the
condition number of the first layer's linearisation (largest over smallest non-zero singular value
of D_I W; 0 where no unit is active, the paper's convention for an empty linearisation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..preimage import layer_preimage
from .common import RunConfig, circles_data, trained

KIND_CODES = {"unbounded": 0, "compact": 1, "singleton": 2, "empty": 3}


def first_layer_condition(weight: np.ndarray, active: np.ndarray) -> float:
    """Condition of D_I W for the active rows (Section 3): sigma_max / sigma_min over non-zero
    singular values; 0 when no row is active."""
    rows = weight[active]
    if rows.size == 0:
        return 0.0
    s = np.linalg.svd(rows, compute_uv=False)
    s = s[s > max(rows.shape) * np.finfo(float).eps * s[0]]
    return float(s[0] / s[-1])


def run(config: RunConfig) -> dict[str, Any]:
    train_set, test_set = circles_data()
    model, info = trained("toy_circles", train_set, test_set, config)
    side = config.samples(61, 201)
    extent = 1.5
    axis = np.linspace(-extent, extent, side)
    xx, yy = np.meshgrid(axis, axis)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    layer = model[0]
    weight = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy()
    with torch.no_grad():
        prediction = model(torch.tensor(points, dtype=torch.float32)).argmax(1).numpy()
    kinds, conditions, actives = [], [], []
    for point in points:
        r = layer_preimage(layer, torch.tensor(point))
        active = weight @ point + bias > 0
        kinds.append(KIND_CODES[r.kind])
        conditions.append(first_layer_condition(weight, active))
        actives.append(int(active.sum()))
    return {
        "training": info,
        "grid": {"side": side, "extent": extent},
        "prediction": prediction.reshape(side, side).tolist(),
        "kind": np.array(kinds).reshape(side, side).tolist(),
        "kind_codes": KIND_CODES,
        "condition": np.array(conditions).reshape(side, side).tolist(),
        "n_active": np.array(actives).reshape(side, side).tolist(),
        "train_points": train_set.images[:400].tolist(),
        "train_labels": train_set.labels[:400].tolist(),
    }
