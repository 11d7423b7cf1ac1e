"""Figure 1: the toy network (one hidden layer of 3 ReLUs on 2-d input) over a grid of the plane,
trained for several seeds.

For each seed: the share of the plane whose first-layer preimage (Theorem 4) is unbounded,
compact, a singleton or empty, and whether the layer's three rows are omnidirectional (Definition
1; then no point of the plane has an unbounded preimage, see :func:`why_no_unbounded`).  The
figure shows the first seed, in seed order, whose plane has all three kinds of the paper's panel
(unbounded, compact, singleton); when no seed has, it shows seed 0 and says why.

At each grid point of the shown seed: the prediction; the kind of the first layer's preimage; the
condition number of the first layer's linearisation (largest over smallest non-zero singular value
of D_I W; 0 where no unit is active, the paper's convention for an empty linearisation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..geometry import is_omnidirectional
from ..preimage import layer_preimage
from ..train import paper_recipe, quick_recipe
from .claims import Claim, check, not_testable
from .common import RunConfig, circles_data, trained

KIND_CODES = {"unbounded": 0, "compact": 1, "singleton": 2, "empty": 3}
PAPER_KINDS = ("unbounded", "compact", "singleton")
#: Seeds trained: quick and full mode (``--limit`` caps both).
QUICK_SEEDS, FULL_SEEDS = 5, 10
#: Grid points whose pre-activations all lie this far (relative) from 0 share the kind of their
#: activation pattern; nearer points are decided on their own.
_CLEAR = 1e-6


def first_layer_condition(weight: np.ndarray, active: np.ndarray) -> float:
    """Condition of D_I W for the active rows (Section 3): sigma_max / sigma_min over non-zero
    singular values; 0 when no row is active."""
    rows = weight[active]
    if rows.size == 0:
        return 0.0
    s = np.linalg.svd(rows, compute_uv=False)
    s = s[s > max(rows.shape) * np.finfo(float).eps * s[0]]
    return float(s[0] / s[-1])


def grid_kinds(layer: torch.nn.Linear, points: np.ndarray) -> np.ndarray:
    """Theorem 4's kind code at every point, each decided by :func:`reluinv.layer_preimage`.

    The kind depends only on which units are active and which are tight (Theorem 4), so a point
    whose pre-activations are all clearly non-zero reuses the decision of the first point with the
    same activation pattern; points near a unit's hyperplane are decided one by one.
    """
    weight = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy()
    pre = points @ weight.T + bias
    scale = np.abs(points) @ np.abs(weight).T + np.abs(bias) + np.finfo(float).tiny
    clear = np.all(np.abs(pre) > _CLEAR * scale, axis=1)
    decided: dict[bytes, int] = {}
    codes = np.empty(len(points), dtype=int)
    for i, point in enumerate(points):
        key = (pre[i] > 0).tobytes()
        if clear[i] and key in decided:
            codes[i] = decided[key]
            continue
        codes[i] = KIND_CODES[layer_preimage(layer, torch.tensor(point)).kind]
        if clear[i]:
            decided[key] = codes[i]
    return codes


def why_no_unbounded(weight: np.ndarray) -> bool:
    """True when the rows of ``weight`` are omnidirectional: then for every activation pattern
    the inactive rows restricted to the null space of the active ones are omnidirectional too (on
    2-d input with 3 rows), so no preimage is unbounded (Theorem 4 iii)."""
    return bool(is_omnidirectional(np.asarray(weight, dtype=np.float64)))


def _seed_plane(config: RunConfig, seed: int, points: np.ndarray, data) -> dict[str, Any]:
    recipe = (quick_recipe if config.quick else paper_recipe)("toy_circles", seed=seed)
    train_set, test_set = data
    model, info = trained("toy_circles", train_set, test_set, config, recipe=recipe)
    first = model[0]
    assert isinstance(first, torch.nn.Linear)  # zoo.toy_circles: Linear, ReLU, Linear
    codes = grid_kinds(first, points)
    share = {kind: float(np.mean(codes == code)) for kind, code in KIND_CODES.items()}
    weight = first.weight.detach().double().numpy()
    return {
        "seed": seed,
        "test_accuracy": info["test_accuracy"],
        "share": share,
        "all_three": all(share[k] > 0 for k in PAPER_KINDS),
        "rows_omnidirectional": why_no_unbounded(weight),
        "model": model,
        "info": info,
        "codes": codes,
    }


def run(config: RunConfig) -> dict[str, Any]:
    data = circles_data()
    side = config.samples(61, 201)
    extent = 1.5
    axis = np.linspace(-extent, extent, side)
    xx, yy = np.meshgrid(axis, axis)
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    planes = [
        _seed_plane(config, seed, points, data) for seed in range(config.samples(QUICK_SEEDS, FULL_SEEDS))
    ]
    chosen = next((p for p in planes if p["all_three"]), planes[0])
    rule = (
        "the first seed (in seed order) whose plane shows all three kinds: unbounded, compact and singleton"
    )
    if not chosen["all_three"]:
        omni = sum(p["rows_omnidirectional"] for p in planes)
        rule = (
            f"no seed of {len(planes)} shows all three kinds, so seed 0 is shown; {omni} of "
            f"them have omnidirectional first-layer rows (0 inside the hull of the three "
            f"normals), where by Theorem 4 no point of the plane has an unbounded preimage"
        )
    return {
        **_plane(chosen, points, side),
        "training": chosen["info"],
        "grid": {"side": side, "extent": extent},
        "kind_codes": KIND_CODES,
        "seed": chosen["seed"],
        "rule": rule,
        "seeds": [
            {k: p[k] for k in ("seed", "test_accuracy", "share", "all_three", "rows_omnidirectional")}
            for p in planes
        ],
        "train_points": data[0].images[:400].tolist(),
        "train_labels": data[0].labels[:400].tolist(),
        "setting": {
            "paper": {
                "mode": "full",
                "data": "two circles (synthetic)",
                "input shape": "2",
                "training": "not given",
                "test accuracy": "not stated",
                "samples": "one network, the plane",
            },
            "run": {
                "mode": "quick" if config.quick else "full",
                "data": data[1].source,
                "input shape": "2",
                "training": f"Adam lr 1e-2, full batch, "
                f"{chosen['info']['epochs']} epochs, seeds 0-"
                f"{len(planes) - 1}; seed {chosen['seed']} shown",
                "test accuracy": f"{chosen['info']['test_accuracy']:.1%}",
                "samples": f"{side}x{side} grid per seed",
            },
        },
    }


def _plane(chosen: dict[str, Any], points: np.ndarray, side: int) -> dict[str, Any]:
    """Prediction, kind, condition and active count over the grid for the shown seed."""
    model, layer = chosen["model"], chosen["model"][0]
    weight = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy()
    with torch.no_grad():
        prediction = model(torch.tensor(points, dtype=torch.float32)).argmax(1).numpy()
    active = points @ weight.T + bias > 0
    conditions = [first_layer_condition(weight, a) for a in active]
    return {
        "prediction": prediction.reshape(side, side).tolist(),
        "kind": chosen["codes"].reshape(side, side).tolist(),
        "condition": np.array(conditions).reshape(side, side).tolist(),
        "n_active": active.sum(1).reshape(side, side).tolist(),
    }


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 1's claims: the plane holds all three kinds; singleton regions have condition >= 1
    and the others condition 0 or 1 (the caption's and Section 3's reading of the panel)."""
    seeds = result["seeds"]
    rows = []
    text = "the first layer's preimages over the plane are unbounded, compact or a single point"
    showing = [s["seed"] for s in seeds if s["all_three"]]
    rows.append(
        check(
            "fig1",
            text,
            bool(showing),
            f"{len(showing)} of {len(seeds)} seeds show all three kinds"
            + (
                f" (seeds {showing})"
                if showing
                else f"; {sum(s['rows_omnidirectional'] for s in seeds)} have omnidirectional "
                f"first-layer rows, which rules out unbounded preimages (Theorem 4)"
            ),
        )
    )
    kinds = np.asarray(result["kind"])
    cond = np.asarray(result["condition"])
    codes = result["kind_codes"]
    text = "the condition number exceeds 1 exactly where the preimage is a single point"
    single = kinds == codes["singleton"]
    if single.any():
        outside = cond[~single]
        holds = bool(np.all(outside <= 1 + 1e-9) and np.all(cond[single] > 1 + 1e-9))
        rows.append(
            check(
                "fig1",
                text,
                holds,
                f"shown seed {result['seed']}: condition {cond[single].min():.3g}-"
                f"{cond[single].max():.3g} on singleton points, at most "
                f"{outside.max() if outside.size else 0:.3g} elsewhere",
            )
        )
    else:
        rows.append(not_testable("fig1", text, "the shown plane has no singleton point"))
    return rows
