"""Figure 1 over seeds and Figure 11: kinds over the plane against a per-point oracle, and the
claims over small fake results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reluinv import layer_preimage
from reluinv.experiments import fig1, fig11


@pytest.mark.parametrize(
    "weight, bias",
    [
        ([[1.0, 0.2], [-0.6, 0.9], [-0.5, -1.1]], [-0.3, -0.2, -0.4]),  # omnidirectional rows
        ([[1.0, 0.2], [0.6, 0.9], [0.5, -1.1]], [0.1, -0.2, 0.3]),  # all in one half-plane
    ],
)
def test_grid_kinds_match_the_per_point_decision(weight, bias):
    layer = torch.nn.Linear(2, 3).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    axis = np.linspace(-1.5, 1.5, 23)
    points = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    points = np.vstack([points, [[0.3, 0.0]]])  # on the first unit's hyperplane: tight
    codes = fig1.grid_kinds(layer, points)
    for point, code in zip(points, codes, strict=True):
        assert fig1.KIND_CODES[layer_preimage(layer, torch.tensor(point)).kind] == code
    A = np.asarray(weight)
    omni = fig1.why_no_unbounded(A)
    assert omni == (weight[1][0] < 0)
    if omni:
        assert fig1.KIND_CODES["unbounded"] not in codes


def _fig1_result(seed_kinds, kind, condition):
    codes = fig1.KIND_CODES
    seeds = [
        {
            "seed": i,
            "share": {k: float(k in kinds) for k in codes},
            "all_three": all(k in kinds for k in fig1.PAPER_KINDS),
            "rows_omnidirectional": "unbounded" not in kinds,
            "test_accuracy": 1.0,
        }
        for i, kinds in enumerate(seed_kinds)
    ]
    return {"seeds": seeds, "kind": kind, "condition": condition, "kind_codes": codes, "seed": 0}


def test_fig1_claims_flip_with_the_numbers():
    s, c, u = (fig1.KIND_CODES[k] for k in ("singleton", "compact", "unbounded"))
    good = _fig1_result(
        [("compact", "singleton"), fig1.PAPER_KINDS], [[s, c], [u, c]], [[2.0, 1.0], [0.0, 1.0]]
    )
    assert [r.verdict for r in fig1.claims(good, {})] == ["reproduced", "reproduced"]
    bad = _fig1_result([("compact", "singleton")], [[s, c], [c, c]], [[1.0, 1.0], [3.0, 1.0]])
    rows = fig1.claims(bad, {})
    assert [r.verdict for r in rows] == ["not reproduced", "not reproduced"]
    assert "omnidirectional" in rows[0].evidence
    none = _fig1_result([("compact",)], [[c, c], [c, c]], [[1.0, 1.0], [0.0, 1.0]])
    assert fig1.claims(none, {})[1].verdict == "not testable"


def _layer(rank, values):
    return {"rank": rank, "singular_values": values, "block": 1}


def _fig11_result(before_rank, after_rank, first_low, last_low, samples=5):
    return {
        "samples": samples,
        "training": {"epochs": 10},
        "input_shape": "1x28x28",
        "data": "d",
        "effect": [
            {"before": _layer(3, [3, 2, 1]), "after": _layer(3, [3, 2, 1])},
            {"before": _layer(before_rank, [3, 2, 1]), "after": _layer(after_rank, [3, 2, 0.5])},
        ],
        "decay": [_layer(3, [3, 2, first_low]), _layer(3, [4, 2, last_low])],
    }


def test_fig11_claims_flip_with_the_numbers():
    verdicts = lambda r: [c.verdict for c in fig11.claims(r, {"mode": "quick"})]  # noqa: E731
    assert verdicts(_fig11_result(3, 2, 1.0, 0.1)) == ["reproduced", "reproduced"]
    assert verdicts(_fig11_result(3, 3, 0.1, 1.0)) == ["not reproduced", "not reproduced"]
    assert verdicts(_fig11_result(3, 2, 1.0, 0.1, samples=1)) == ["not testable"] * 2
