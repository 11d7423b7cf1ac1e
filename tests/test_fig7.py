"""Figures 7 and 7x: the shared choice of examples, and the claims' predicates on fake results.

The selection is checked against the two rules as the figures stated them before they shared one
function (written out here as plain loops over the labels), and the claims against hand-made
results on both sides of every verdict.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reluinv.experiments import claims as claims_mod
from reluinv.experiments import fig7, fig7x
from reluinv.experiments.fig7 import (
    closer_to_target,
    fewest_active_examples,
    first_layer_activity,
)

# --- the selection against the figures' own rules ---------------------------------------------------


def figure7_rule(active, labels, n_sources, n_targets):
    """Figure 7: per source, the first images (test order) of distinct classes other than its own."""
    out = []
    for source in np.argsort(active, kind="stable")[:n_sources]:
        chosen = []
        for i in range(len(labels)):
            if labels[i] == labels[source]:
                continue
            if all(labels[i] != labels[j] for j in chosen):
                chosen.append(i)
            if len(chosen) == n_targets:
                break
        out.append((int(source), chosen))
    return out


def figure7x_rule(active, labels, n_sources):
    """Figure 7x: one target per source, of a class no earlier target has, if any is left."""
    out, used = [], set()
    for source in np.argsort(active, kind="stable")[:n_sources]:
        others = [i for i in range(len(labels)) if labels[i] != labels[source]]
        fresh = [i for i in others if labels[i] not in used]
        target = fresh[0] if fresh else others[0]
        used.add(labels[target])
        out.append((int(source), [target]))
    return out


@st.composite
def labelled(draw):
    n = draw(st.integers(2, 25))
    labels = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    if len(set(labels)) < 2:
        labels[0] = (labels[1] + 1) % 5
    active = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))  # ties are common
    return np.array(active), np.array(labels)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(labelled(), st.integers(1, 6), st.integers(1, 4))
def test_selection_keeps_each_figures_rule(data, n_sources, n_targets):
    active, labels = data
    got7 = fewest_active_examples(
        active, labels, n_sources=n_sources, n_targets=n_targets, fresh_across_sources=False
    )
    assert [(e.source, list(e.targets)) for e in got7] == figure7_rule(active, labels, n_sources, n_targets)
    got7x = fewest_active_examples(
        active, labels, n_sources=n_sources, n_targets=1, fresh_across_sources=True
    )
    assert [(e.source, list(e.targets)) for e in got7x] == figure7x_rule(active, labels, n_sources)
    for e in got7 + got7x:
        assert e.active == active[e.source]


def test_the_two_rules_differ_where_documented():
    active = np.array([0, 1, 5, 5, 5])
    labels = np.array([0, 0, 1, 2, 1])
    per_source = fewest_active_examples(active, labels, n_sources=2, n_targets=1, fresh_across_sources=False)
    across = fewest_active_examples(active, labels, n_sources=2, n_targets=1, fresh_across_sources=True)
    assert [e.targets for e in per_source] == [(2,), (2,)]  # the same "1" for both sources
    assert [e.targets for e in across] == [(2,), (3,)]  # the second source gets a fresh "2"
    # no class left: Figure 7x falls back to the first image of another class
    again = fewest_active_examples(
        np.array([0, 1, 2]), np.array([0, 0, 1]), n_sources=2, n_targets=1, fresh_across_sources=True
    )
    assert [e.targets for e in again] == [(2,), (2,)]


def test_selection_refuses_a_single_class():
    with pytest.raises(ValueError, match="every test image has the same class"):
        fewest_active_examples([0, 1], [3, 3], n_sources=1, n_targets=1, fresh_across_sources=True)


@pytest.mark.parametrize("float64", [False, True])
def test_first_layer_activity_is_positive_preactivations(float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    images = np.random.default_rng(0).random((7, 1, 2, 3)).astype(np.float32)
    W = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()
    expected = (images.reshape(7, -1).astype(np.float64) @ W.T + b) > 0
    np.testing.assert_array_equal(first_layer_activity(model, images, 2, float64=float64), expected)


# --- claims -------------------------------------------------------------------------------------------

SOURCE, TARGET = [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]


def fig7_result(found, diff=1e-12, same_class=True):
    return {
        "examples": [
            {
                "source": SOURCE,
                "target": TARGET,
                "found": found,
                "feature_max_abs_diff": diff,
                "source_predicted_label": 3,
                "found_predicted_label": 3 if same_class else 5,
            }
        ]
    }


def verdicts(rows):
    return [r.verdict for r in rows]


def test_closer_to_target():
    holds, to_target, to_source = closer_to_target(SOURCE, TARGET, [0.9, 0.9, 0.9, 0.0])
    assert holds and to_target == pytest.approx(np.sqrt(1.03)) and to_source == pytest.approx(np.sqrt(2.43))
    assert not closer_to_target(SOURCE, TARGET, [0.5, 0.5, 0.5, 0.5])[0]  # a tie is not nearer


def test_fig7_claims_flip_with_the_numbers():
    good = fig7.claims(fig7_result([1.0, 1.0, 0.8, 0.9]), {})
    assert verdicts(good) == ["reproduced"] * 3
    looks_like_source = fig7.claims(fig7_result([0.1, 0.0, 0.2, 0.0]), {})
    assert verdicts(looks_like_source) == ["reproduced", "not reproduced", "reproduced"]
    features_moved = fig7.claims(fig7_result([1.0, 1.0, 1.0, 1.0], diff=1e-3), {})
    assert verdicts(features_moved)[0] == "not reproduced"
    told_apart = fig7.claims(fig7_result([1.0, 1.0, 1.0, 1.0], same_class=False), {})
    assert verdicts(told_apart)[2] == "not reproduced"
    assert "1 of 1 found inputs are nearer" in good[1].evidence


def test_fig7_claims_on_an_older_or_empty_result_are_not_testable():
    old = fig7_result([1.0, 1.0, 1.0, 1.0])
    for key in ("source_predicted_label", "found_predicted_label"):
        del old["examples"][0][key]
    assert verdicts(fig7.claims(old, {}))[2] == "not testable"
    assert verdicts(fig7.claims({"examples": []}, {})) == ["not testable"] * 3


def fig7x_result(images_by_depth, diff=1e-10):
    def search(image):
        return {"image": image, "feature_max_abs_diff": diff, "mode": "exact", "proven": True}

    return {
        "depths": list(images_by_depth),
        "examples": [
            {
                "image": SOURCE,
                "target": TARGET,
                "label": 3,
                "target_label": 5,
                "depths": [
                    {"depth": d, "searches": {"region": search(SOURCE), "exact": search(img)}}
                    for d, img in images_by_depth.items()
                ],
            }
        ],
    }


def test_fig7x_claims_flip_with_the_numbers():
    near_target = [1.0, 0.9, 1.0, 0.9]
    good = fig7x.claims(fig7x_result({1: near_target, "logits": near_target}), {})
    assert verdicts(good) == ["reproduced", "reproduced"]
    # at the logits the best (exact) input stays by the source: "at every depth" fails
    deep_fails = fig7x.claims(fig7x_result({1: near_target, "logits": [0.1, 0.0, 0.0, 0.0]}), {})
    assert verdicts(deep_fails) == ["reproduced", "not reproduced"]
    assert "depth logits: 0/1" in deep_fails[1].evidence
    moved = fig7x.claims(fig7x_result({1: near_target}, diff=1e-4), {})
    assert verdicts(moved)[0] == "not reproduced"


def test_fig7x_claims_use_region_when_exact_found_nothing():
    result = fig7x_result({1: None})
    result["examples"][0]["depths"][0]["searches"]["region"]["image"] = [1.0, 1.0, 1.0, 0.9]
    assert verdicts(fig7x.claims(result, {})) == ["reproduced", "reproduced"]
    for entry in result["examples"][0]["depths"]:
        entry["searches"]["region"]["image"] = None
    assert verdicts(fig7x.claims(result, {})) == ["not testable", "not testable"]


def test_claims_are_found_by_the_framework():
    results = {
        "meta": {},
        "fig7": fig7_result([1.0, 1.0, 0.8, 0.9]),
        "fig7x": fig7x_result({1: [1.0, 0.9, 1.0, 0.9]}),
    }
    rows = claims_mod.evaluate(results)
    assert {r["figure"] for r in rows} >= {"fig7", "fig7x"}
    assert all(r["verdict"] == "reproduced" for r in rows if r["figure"] in ("fig7", "fig7x"))


def test_fig7x_examples_refuses_bad_input():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    images = np.random.default_rng(0).random((4, 1, 2, 2))
    with pytest.raises(ValueError, match="test_images must be \\(N, ...\\) with N = len"):
        fig7x.fig7x_examples(model, images, [0, 1, 2])
    with pytest.raises(ValueError, match="depths entries must be 1..1 or 'logits'"):
        fig7x.fig7x_examples(model, images, [0, 1, 0, 1], depths=(2,))
    with pytest.raises(ValueError, match="modes entry must be one of"):
        fig7x.fig7x_examples(model, images, [0, 1, 0, 1], modes=("fast",))
    with pytest.raises(ValueError, match="n_examples must be a positive integer"):
        fig7x.fig7x_examples(model, images, [0, 1, 0, 1], n_examples=0)
    with pytest.raises(ValueError, match="target_indices needs one index per example"):
        fig7x.fig7x_examples(model, images, [0, 1, 0, 1], depths=(1,), n_examples=2, target_indices=[1])
