"""Figures 7 and 12 (Appendix A7): for the MLP of Table 1, the test images with the fewest active
first-layer units, and for each targets of other classes; the LP of A7 (maximise <c, x> over the
first layer's preimage of the source's features, x in [0, 1]^784) finds an input that looks like
the target and has exactly the source's first-layer features.

:func:`fewest_active_examples` picks the sources and targets for this figure and for Figure 7x
(:mod:`.fig7x`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..invariance import invariance_search
from ..network import flatten_modules
from .claims import Claim, check, not_testable
from .common import RunConfig, digit_data, trained

FIRST_RELU = 2  # Flatten, Linear, ReLU: the first layer's features are module 2's output
#: "Keeps the features": the largest feature difference of a found input is at most this.
FEATURE_CLAIM_TOL = 1e-6


# --- choosing the examples (Figures 7 and 7x) -------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """A source test image and its targets (indices into the test set)."""

    source: int
    active: int  # active units of the first ReLU layer at the source
    targets: tuple[int, ...]


def first_layer_activity(model: Any, images: Any, first_relu: int, *, float64: bool) -> np.ndarray:
    """Which units of the first ReLU layer (module ``first_relu`` of the flattened model) are
    active, ``(N, units)`` bool, for every image; computed in float64 or in the model's own
    precision (float32 for a trained zoo model)."""
    head = flatten_modules(model)[: first_relu + 1]
    if float64:
        head = [copy.deepcopy(m).double() for m in head]
    batch = torch.tensor(np.asarray(images, dtype=np.float64 if float64 else None))  # a copy
    with torch.no_grad():
        for module in head:
            batch = module(batch)
    return (batch.reshape(batch.shape[0], -1) > 0).numpy()


def fewest_active_examples(
    active: Any, labels: Any, *, n_sources: int, n_targets: int, fresh_across_sources: bool
) -> list[Example]:
    """The ``n_sources`` images with the fewest active first-layer units (ties by index), as in
    Appendix A7, each with ``n_targets`` targets.

    Target rule: the targets of a source are taken in test-set order among the images whose class
    differs from the source's and from the classes already taken.  "Already taken" counts the
    targets of this source only (Figure 7, ``fresh_across_sources=False``: targets of distinct
    classes, as the paper's "6" and "4"; a source may get fewer than ``n_targets`` when the
    classes run out), or the targets of every source so far (Figure 7x, ``True``; when no class
    is left, the first image of another class is taken).

    Raises:
        ValueError: every image has the same class (no target of another class).
    """
    labels = np.asarray(labels).reshape(-1)
    sources = np.argsort(np.asarray(active), kind="stable")[: int(n_sources)]
    taken: set[int] = set()
    examples = []
    for source in sources:
        label = int(labels[source])
        others = np.flatnonzero(labels != label)
        if others.size == 0:
            raise ValueError("every test image has the same class: no target of another class")
        classes = set(taken) if fresh_across_sources else set()
        chosen: list[int] = []
        for i in others:
            if len(chosen) == n_targets:
                break
            if int(labels[i]) not in classes:
                chosen.append(int(i))
                classes.add(int(labels[i]))
        if not chosen:
            chosen = [int(others[0])]
        taken.update(int(labels[i]) for i in chosen)
        examples.append(Example(int(source), int(np.asarray(active)[source]), tuple(chosen)))
    return examples


def predicted_labels(model: Any, inputs: Sequence[Any], shape: Sequence[int]) -> list[int]:
    """The trained network's class (argmax of the logits, float64) for each flat input."""
    net = copy.deepcopy(model).double().eval()
    batch = torch.as_tensor(np.asarray(inputs, dtype=np.float64).reshape((len(inputs), *shape)))
    with torch.no_grad():
        return [int(c) for c in net(batch).argmax(dim=1)]


# --- the figure ---------------------------------------------------------------------------------------


def run(config: RunConfig) -> dict[str, Any]:
    train_set, test_set = digit_data(config)
    model, info = trained("mlp_table1", train_set, test_set, config)
    activity = first_layer_activity(model, test_set.images, FIRST_RELU, float64=False)
    chosen = fewest_active_examples(
        activity.sum(1),
        test_set.labels,
        n_sources=config.samples(2, 3),
        n_targets=2,
        fresh_across_sources=False,
    )
    shape = test_set.images.shape[1:]
    examples = []
    for example in chosen:
        for target in example.targets:
            x = test_set.images[example.source].reshape(-1).astype(np.float64)
            c = test_set.images[target].reshape(-1).astype(np.float64)
            found = invariance_search(
                model, x, c, layer=FIRST_RELU, mode="layer", objective="max_inner", lower=0.0, upper=1.0
            )
            x_found = np.asarray(found.x, dtype=float).reshape(-1)
            source_class, found_class = predicted_labels(model, [x, x_found], shape)
            examples.append(
                {
                    "source_index": example.source,
                    "source_label": int(test_set.labels[example.source]),
                    "source_active_units": example.active,
                    "target_index": target,
                    "target_label": int(test_set.labels[target]),
                    "feature_max_abs_diff": found.feature_max_abs_diff,
                    "input_l2_distance": found.input_l2_distance,
                    "proven": bool(found.proven),
                    "source_predicted_label": source_class,
                    "found_predicted_label": found_class,
                    "source": x.tolist(),
                    "target": c.tolist(),
                    "found": x_found.tolist(),
                }
            )
    return {
        "training": info,
        "data": test_set.source,
        "layer": FIRST_RELU,
        "units": int(activity.shape[1]),
        "examples": examples,
    }


# --- claims -------------------------------------------------------------------------------------------


def closer_to_target(source: Any, target: Any, found: Any) -> tuple[bool, float, float]:
    """ "Looks like another class": the found input is nearer (L2) to the target image than to the
    source image.  Returns (holds, distance to the target, distance to the source)."""
    found = np.asarray(found, dtype=float).reshape(-1)
    to_target = float(np.linalg.norm(found - np.asarray(target, dtype=float).reshape(-1)))
    to_source = float(np.linalg.norm(found - np.asarray(source, dtype=float).reshape(-1)))
    return to_target < to_source, to_target, to_source


def claims(result: dict[str, Any], meta: dict[str, Any]) -> list[Claim]:
    """Figure 7's claims (Appendix A7) over the stored source/target/found images."""
    examples = result["examples"]
    text_keep = (
        f"the A7 LP finds inputs with the source's first-layer features (max |dF| <= {FEATURE_CLAIM_TOL:g})"
    )
    text_look = "yet they look like another class: each is nearer (L2) to its target than to its source"
    text_blind = "so the trained network cannot tell them apart: it gives the found input the source's class"
    if not examples:
        return [
            not_testable("fig7", t, "the run stored no example") for t in (text_keep, text_look, text_blind)
        ]
    worst = max(e["feature_max_abs_diff"] for e in examples)
    rows = [
        check(
            "fig7",
            text_keep,
            worst <= FEATURE_CLAIM_TOL,
            f"largest feature difference over {len(examples)} pairs: {worst:.1e}",
        )
    ]
    looks = [closer_to_target(e["source"], e["target"], e["found"]) for e in examples]
    rows.append(
        check(
            "fig7",
            text_look,
            all(h for h, _, _ in looks),
            f"{sum(h for h, _, _ in looks)} of {len(looks)} found inputs are nearer their "
            f"target; distances to target / source: " + ", ".join(f"{t:.2f}/{s:.2f}" for _, t, s in looks),
        )
    )
    if any("found_predicted_label" not in e for e in examples):
        rows.append(
            not_testable(
                "fig7", text_blind, "the result stores no predicted labels; rerun the figure with --force"
            )
        )
    else:
        same = sum(e["found_predicted_label"] == e["source_predicted_label"] for e in examples)
        rows.append(
            check(
                "fig7",
                text_blind,
                same == len(examples),
                f"{same} of {len(examples)} found inputs get the source's class",
            )
        )
    return rows
