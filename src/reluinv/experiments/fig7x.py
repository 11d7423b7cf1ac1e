"""Figure 7x (beyond the paper): the source/target pairs of Figure 7, now keeping the features of
deeper layers of the Table 1 MLP identical (layers 1, 2, 5 and the logits), in "region" mode and
in "exact" mode where it finishes within the time limit, with the largest distance an input can
move while keeping the features (:func:`reluinv.invariance.preimage_extent`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np
from torch import nn

from .._validate import as_model_input
from ..invariance import invariance_search, preimage_extent
from ..invariance.problem import check_choice
from ..invariance.search import Mode
from ..network import flatten_modules
from .claims import Claim, check, not_testable
from .common import RunConfig, digit_data, trained
from .fig7 import (
    FEATURE_CLAIM_TOL,
    Example,
    closer_to_target,
    fewest_active_examples,
    first_layer_activity,
)


def run(config: RunConfig) -> dict[str, Any]:
    train_set, test_set = digit_data(config)
    model, info = trained("mlp_table1", train_set, test_set, config)
    result = fig7x_examples(
        model,
        test_set.images,
        test_set.labels,
        depths=(1, 2, 5, "logits"),
        modes=("region", "exact"),
        n_examples=config.samples(1, 3),
        time_limit=5.0 if config.quick else 300.0,
    )
    rows = []
    for example in result["examples"]:
        for depth in example["depths"]:
            for mode, search in depth["searches"].items():
                rows.append(
                    {
                        "example": example["index"],
                        "source_label": example["label"],
                        "target_label": example["target_label"],
                        "depth": depth["depth"],
                        "mode": mode,
                        "feature_max_abs_diff": search["feature_max_abs_diff"],
                        "input_l2_distance": search["input_l2_distance"],
                        "proven": search["proven"],
                        "status": search["status"],
                    }
                )
    return {"training": info, "data": test_set.source, "rows": rows, **result}


def _relu_modules(model: Any) -> list[int]:
    return [i for i, m in enumerate(flatten_modules(model)) if isinstance(m, nn.ReLU)]


def _depth_modules(model: Any, depths: Sequence[int | str]) -> tuple[list[int], list[int]]:
    """The ReLU modules of the model and the module index of each depth."""
    relus = _relu_modules(model)
    n_modules = len(flatten_modules(model))
    modules = []
    for d in depths:
        if d == "logits":
            modules.append(n_modules - 1)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 1 <= d <= len(relus):
            modules.append(relus[int(d) - 1])
        else:
            raise ValueError(f"depths entries must be 1..{len(relus)} or 'logits', got {d!r}")
    if not relus:
        raise ValueError("the model has no ReLU module")
    return relus, modules


def _images_and_labels(test_images: Any, test_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    images = as_model_input(test_images, "test_images")
    labels = as_model_input(test_labels, "test_labels").reshape(-1).astype(np.int64)
    if images.ndim < 2 or images.shape[0] != labels.size:
        raise ValueError(
            f"test_images must be (N, ...) with N = len(test_labels) = {labels.size}, "
            f"got shape {images.shape}"
        )
    return images, labels


def fig7x_examples(
    model: Any,
    test_images: Any,
    test_labels: Any,
    *,
    depths: Sequence[int | str] = (1, 2, 5, "logits"),
    modes: Sequence[str] = ("region", "exact"),
    n_examples: int = 2,
    target_indices: Sequence[int] | None = None,
    time_limit: float = 30.0,
    extent_method: Literal["region", "exact"] | None = "region",
    lower: float = 0.0,
    upper: float = 1.0,
) -> dict[str, Any]:
    """Appendix A7 (Figure 7 / 12) at several depths: inputs far from x with identical features.

    As in A7: the test images with the fewest active units in the first ReLU layer are chosen; for
    each, a target image of another class ``c`` (:func:`.fig7.fewest_active_examples`, one target
    per example, of a class not taken by an earlier example where possible); then ``<c, x'>`` is
    maximised over ``x'`` in ``[lower, upper]^n`` whose features at depth ``d`` equal those of
    ``x`` -- depth ``d`` = output of the d-th ReLU module, "logits" = output of the last module --
    with :func:`reluinv.invariance_search` in each of ``modes`` ("layer" is run at depth 1 only,
    where it is A7 itself).  For each depth the extent (:func:`reluinv.preimage_extent`) says how
    far an input can move at all while keeping the features.

    Args:
        model: the Table 1 MLP (``reluinv.zoo.mlp_table1``), trained.
        test_images: array (N, ...) of inputs in the box; test_labels: (N,) integer classes.
        depths: ReLU counts and/or "logits".
        modes: any of "layer", "region", "exact".
        n_examples: how many inputs (fewest active first-layer units first, ties by index).
        target_indices: one test index per example to use as target; default: the rule above.
        time_limit: seconds per search and per extent.
        extent_method: "region" (lower bound), "exact", or None to skip.
        lower, upper: the input box (A7: [0, 1]).

    Returns:
        A JSON-serialisable dict: ``{"depths": [...], "modules": [...], "examples": [{"index",
        "label", "n_active_first_layer", "target_index", "target_label", "image_shape", "image",
        "target", "depths": [{"depth", "module", "searches": {mode: {objective, proven,
        feature_max_abs_diff, input_l2_distance, mode, status, solve_time, image, ...}},
        "extent": {linf, l1, proven, method, lower_bound_only, ...}}]}]}``.  Images are nested
        lists of the per-sample shape; drop them if not needed.
    """
    images, labels = _images_and_labels(test_images, test_labels)
    _check_modes_and_count(modes, n_examples)
    relus, modules = _depth_modules(model, depths)
    active = first_layer_activity(model, images, relus[0], float64=True).sum(1)
    chosen = fewest_active_examples(
        active, labels, n_sources=int(n_examples), n_targets=1, fresh_across_sources=True
    )
    if target_indices is not None and len(target_indices) < len(chosen):
        raise ValueError(f"target_indices needs one index per example ({len(chosen)})")
    settings = dict(lower=lower, upper=upper, time_limit=time_limit)
    examples = []
    for e, example in enumerate(chosen):
        tgt = int(target_indices[e]) if target_indices is not None else example.targets[0]
        x, target = images[example.source], images[tgt]
        per_depth = [
            _depth_entry(
                model,
                x,
                target,
                d,
                module,
                modes,
                first_relu=relus[0],
                extent_method=extent_method,
                **settings,
            )
            for d, module in zip(depths, modules, strict=True)
        ]
        examples.append(_example_entry(images, labels, example, tgt, per_depth))
    return {
        "depths": list(depths),
        "modules": modules,
        "modes": list(modes),
        "time_limit": time_limit,
        "box": [lower, upper],
        "examples": examples,
    }


def _check_modes_and_count(modes: Sequence[str], n_examples: Any) -> None:
    for m in modes:
        check_choice("modes entry", m, ("layer", "region", "exact"))
    if isinstance(n_examples, bool) or not isinstance(n_examples, (int, np.integer)) or n_examples < 1:
        raise ValueError(f"n_examples must be a positive integer, got {n_examples!r}")


def _example_entry(
    images: np.ndarray, labels: np.ndarray, example: Example, tgt: int, per_depth: list[dict[str, Any]]
) -> dict[str, Any]:
    """One example of :func:`fig7x_examples`' result: source and target with the per-depth entries."""
    x, target = images[example.source], images[tgt]
    return {
        "index": example.source,
        "label": int(labels[example.source]),
        "n_active_first_layer": example.active,
        "target_index": tgt,
        "target_label": int(labels[tgt]),
        "image_shape": list(images.shape[1:]),
        "image": x.tolist(),
        "target": target.tolist(),
        "depths": per_depth,
    }


def _depth_entry(
    model: Any,
    x: np.ndarray,
    target: np.ndarray,
    depth: int | str,
    module: int,
    modes: Sequence[str],
    *,
    first_relu: int,
    extent_method: Literal["region", "exact"] | None,
    lower: float,
    upper: float,
    time_limit: float,
) -> dict[str, Any]:
    """The searches (and the extent) of one example at one depth."""
    searches = {}
    for mode in modes:
        if mode == "layer" and module != first_relu:
            continue
        r = invariance_search(
            model,
            x,
            target,
            layer=module,
            lower=lower,
            upper=upper,
            objective="max_inner",
            mode=cast(Mode, mode),
            time_limit=time_limit,
        )
        searches[mode] = r.to_dict(include_x=False)
        searches[mode]["image"] = None if r.x is None else r.x.tolist()
    entry: dict[str, Any] = {"depth": depth, "module": module, "searches": searches}
    if extent_method is not None:
        ext = preimage_extent(
            model, x, module, lower=lower, upper=upper, method=extent_method, time_limit=time_limit
        )
        entry["extent"] = ext.to_dict()
    return entry


# --- claims -------------------------------------------------------------------------------------------


def _found(result: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(example, depth entry, search) of every search that returned an input."""
    return [
        (ex, d, s)
        for ex in result["examples"]
        for d in ex["depths"]
        for s in d["searches"].values()
        if s.get("image") is not None
    ]


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 7x's claims (beyond the paper: Appendix A7 at deeper layers)."""
    found = _found(result)
    depths = [str(d) for d in result["depths"]]
    text_keep = (
        f"at every depth kept ({', '.join(depths)}), the inputs found keep the features "
        f"(max |dF| <= {FEATURE_CLAIM_TOL:g})"
    )
    text_look = (
        "keeping deeper features still leaves room to look like another class: at every "
        "depth the best input found for each example is nearer (L2) to its target than "
        "to its source"
    )
    if not found:
        return [not_testable("fig7x", t, "no search returned an input") for t in (text_keep, text_look)]
    worst = max(s["feature_max_abs_diff"] for _, _, s in found)
    rows = [
        check(
            "fig7x",
            text_keep,
            worst <= FEATURE_CLAIM_TOL,
            f"largest feature difference over {len(found)} searches: {worst:.1e}",
        )
    ]
    per_depth: dict[str, list[bool]] = {d: [] for d in depths}
    for ex in result["examples"]:
        for d in ex["depths"]:
            # the report's choice: the exact search's input where it has one, else region's
            images = [d["searches"].get(m, {}).get("image") for m in ("exact", "region", "layer")]
            image = next((i for i in images if i is not None), None)
            if image is not None:
                per_depth[str(d["depth"])].append(closer_to_target(ex["image"], ex["target"], image)[0])
    holds = all(v and all(v) for v in per_depth.values())
    rows.append(
        check(
            "fig7x",
            text_look,
            holds,
            "nearer the target / examples with an input: "
            + ", ".join(f"depth {d}: {sum(v)}/{len(v)}" for d, v in per_depth.items()),
        )
    )
    return rows
