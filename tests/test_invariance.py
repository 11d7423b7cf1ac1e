"""Invariance searches and multi-layer preimages (Appendix A7, Section 4) against brute force.

The oracle (tests/problems.py, "the multi-layer oracle") uses no code of reluinv: it enumerates
EVERY activation pattern of every ReLU up to the feature layer, writes each pattern's piece as a
polyhedron in input space, and classifies it by 2n LPs (min and max of every coordinate, scipy's
linprog).  The preimage is the union of the pieces.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from torch import nn

from problems import (
    brute_force,
    brute_force_extent,
    brute_force_max_inner,
    forward,
    make_net,
    net_layers,
)
from reluinv import _lp
from reluinv.experiments.fig7x import fig7x_examples
from reluinv.invariance import (
    invariance_search,
    network_preimage,
    preimage_extent,
    verify_network_preimage,
)
from reluinv.preimage import affine_matrix
from reluinv.zoo import mlp_table1

# --- constructed cases with known answers ---------------------------------------------------------

# |x| by two layers: preimage of |x| = 1 is the two isolated points {1, -1}.
ABS_LAYERS = [(np.array([[1.0], [-1.0]]), np.zeros(2)), (np.array([[1.0, 1.0]]), np.zeros(1))]
# cReLU frame thresholds then "h1 - h3 + h2 + h4": zero on the box [-1,1]^2 (x's own, bounded
# piece) and also on an unbounded strip x1 <= -1.
STRIP_LAYERS = [
    (np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]]), -np.ones(4)),
    (np.array([[1.0, 1.0, -1.0, 1.0]]), np.zeros(1)),
]
# Injective first layer (cReLU of the identity), identity second layer: singleton at every depth.
INJECTIVE_LAYERS = [
    (np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]]), np.zeros(4)),
    (np.eye(4), np.zeros(4)),
]
# Theorem 4 ii across two layers: the first layer's preimage is pinned by inequalities.
PINNED_LAYERS = [
    (np.array([[1.0, 0], [0, 1], [1, -1]]), np.array([0.0, 0, -1])),
    (np.eye(3), np.zeros(3)),
]

CONSTRUCTED = {
    # name: (layers, relu_last, x, lower, upper, expected kind)
    "abs_two_points": (ABS_LAYERS, True, [1.0], None, None, "compact"),
    "abs_two_points_boxed": (ABS_LAYERS, True, [1.0], -2.0, 2.0, "compact"),
    "abs_zero_singleton": (ABS_LAYERS, True, [0.0], None, None, "singleton"),
    "abs_zero_singleton_boxed": (ABS_LAYERS, True, [0.0], -2.0, 2.0, "singleton"),
    "strip_unbounded_elsewhere": (STRIP_LAYERS, True, [0.0, 0.0], None, None, "unbounded"),
    "strip_in_box": (STRIP_LAYERS, True, [0.0, 0.0], -5.0, 5.0, "compact"),
    "injective": (INJECTIVE_LAYERS, True, [1.0, 2.0], None, None, "singleton"),
    "pinned_by_inequalities": (PINNED_LAYERS, True, [1.0, 0.0], None, None, "singleton"),
    "identity_half_plane": ([(np.eye(2), np.zeros(2))], True, [1.0, -1.0], None, None, "unbounded"),
    "identity_boxed": ([(np.eye(2), np.zeros(2))], True, [1.0, -1.0], -2.0, 2.0, "compact"),
    "box_pins_the_point": ([(np.eye(2), np.zeros(2))], True, [1.0, 0.0], 0.0, None, "singleton"),
    "logits_tail": (
        [(np.array([[1.0, 1], [1, -1]]), np.zeros(2)), (np.array([[1.0, 0]]), [0.0])],
        False,
        [1.0, 0.5],
        None,
        None,
        "unbounded",
    ),
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTED))
def test_constructed_cases_match_brute_force(name):
    layers, relu_last, x, lower, upper, expected = CONSTRUCTED[name]
    model = make_net(layers, relu_last=relu_last)
    layer = len(model) - 1
    assert brute_force(layers, x, relu_last=relu_last, lower=lower, upper=upper)[0] == expected
    r = network_preimage(model, x, layer, lower=lower, upper=upper)
    assert r.kind == expected, r.certificate.reason
    verify_network_preimage(r, model, x, layer, lower=lower, upper=upper)


def test_two_isolated_points_give_compact_with_the_other_point_as_certificate():
    model = make_net(ABS_LAYERS)
    r = network_preimage(model, [1.0], 3)
    assert r.kind == "compact" and r.certificate.complete
    np.testing.assert_allclose(r.certificate.second_point, [-1.0], atol=1e-9)
    assert {p.result.kind for p in r.certificate.pieces} == {"singleton"}
    assert r.certificate.method == "enumeration"
    for strategy in ("auto", "enumerate", "milp"):
        boxed = network_preimage(model, [1.0], 3, lower=-2, upper=2, strategy=strategy)
        assert boxed.kind == "compact"
        np.testing.assert_allclose(boxed.certificate.second_point, [-1.0], atol=1e-9)
        verify_network_preimage(boxed, model, [1.0], 3, lower=-2, upper=2)
    assert boxed.certificate.method == "milp"  # the MILP found the other point


def test_unbounded_direction_keeps_features_along_the_ray():
    model = make_net(STRIP_LAYERS)
    r = network_preimage(model, [0.0, 0.0], 3)
    f0 = forward(STRIP_LAYERS, [0.0, 0.0], True)
    for t in (0.0, 1.0, 1e4):
        np.testing.assert_allclose(forward(STRIP_LAYERS, r.point + t * r.direction, True), f0, atol=1e-9)
    # x's own linear region is the bounded square: the region-mode extent stays inside it
    e = preimage_extent(model, [0.0, 0.0], 3, lower=-10, upper=10, method="region")
    assert e.linf == pytest.approx(1.0, abs=1e-7) and e.proven
    e = preimage_extent(model, [0.0, 0.0], 3, lower=-10, upper=10, method="exact")
    assert e.linf == pytest.approx(10.0, abs=1e-6) and e.proven and not e.lower_bound_only


def test_singleton_reason_names_every_piece():
    model = make_net(PINNED_LAYERS)
    r = network_preimage(model, [1.0, 0.0], 3)
    assert r.kind == "singleton" and r.certificate.complete
    assert r.nullity == 1 and r.rank == 1  # one active feature, yet pinned (Theorem 4 ii)
    assert "Theorem 4 ii" in r.certificate.reason


# --- the oracle on random tiny networks -----------------------------------------------------------


@st.composite
def tiny_problems(draw):
    n = draw(st.integers(2, 3))
    depth = draw(st.integers(2, 3))
    widths = [draw(st.integers(2, 3)) for _ in range(depth)]
    while sum(widths) > 7:
        widths[-1] -= 1
    relu_last = draw(st.booleans())
    integer = draw(st.booleans())
    layers, previous = [], n
    for w in widths:
        if integer:  # small integers make ties and lower-dimensional pieces common
            W = np.array(
                draw(st.lists(st.integers(-2, 2), min_size=w * previous, max_size=w * previous)), float
            ).reshape(w, previous)
            b = np.array(draw(st.lists(st.integers(-1, 1), min_size=w, max_size=w)), float)
        else:
            seed = draw(st.integers(0, 2**31))
            rng = np.random.default_rng(seed)
            W, b = rng.normal(size=(w, previous)), rng.normal(size=w) * 0.5
        layers.append((W, b))
        previous = w
    x = np.array(draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n)), float)
    box = draw(st.sampled_from(["none", "box", "lower"]))
    lower, upper = {"none": (None, None), "box": (-3.0, 3.0), "lower": (-3.0, None)}[box]
    return layers, relu_last, x, lower, upper


def model_and_feature_layer(layers, relu_last, cut):
    """The whole network as a model, and the features of its first ``cut`` Linear layers.

    Returns (model, layer index, layers up to the features, whether they end in a ReLU): the
    modules after ``layer`` exist but must be ignored.
    """
    model = make_net(layers, relu_last=relu_last)
    cut = min(cut, len(layers))
    ends_in_relu = cut < len(layers) or relu_last
    layer = 2 * cut - (1 if ends_in_relu else 2)
    return model, layer, net_layers(model)[:cut], ends_in_relu


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_problems(), st.integers(1, 3))
def test_network_preimage_agrees_with_brute_force(problem, cut):
    layers, relu_last, x, lower, upper = problem
    model, layer, sub, ends_in_relu = model_and_feature_layer(layers, relu_last, cut)
    expected, _ = brute_force(sub, x, relu_last=ends_in_relu, lower=lower, upper=upper)
    r = network_preimage(model, x, layer, lower=lower, upper=upper)
    assert r.kind == expected, r.certificate.reason
    verify_network_preimage(r, model, x, layer, lower=lower, upper=upper)
    if upper is not None:  # a finite box: the MILP route must agree as well
        m = network_preimage(model, x, layer, lower=lower, upper=upper, strategy="milp")
        assert m.kind == expected, m.certificate.reason
        verify_network_preimage(m, model, x, layer, lower=lower, upper=upper)


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_problems(), st.integers(1, 3))
def test_extent_agrees_with_brute_force(problem, cut):
    layers, relu_last, x, _, _ = problem
    model, layer, sub, ends_in_relu = model_and_feature_layer(layers, relu_last, cut)
    linf, l1 = brute_force_extent(sub, x, relu_last=ends_in_relu, lower=-3.0, upper=3.0)
    exact = preimage_extent(model, x, layer, lower=-3.0, upper=3.0, method="exact", time_limit=30)
    region = preimage_extent(model, x, layer, lower=-3.0, upper=3.0, method="region")
    assert exact.proven and region.proven and region.lower_bound_only
    assert exact.linf == pytest.approx(linf, abs=1e-6)
    assert exact.l1 == pytest.approx(l1, abs=1e-6)
    assert region.linf <= exact.linf + 1e-7 and region.l1 <= exact.l1 + 1e-7
    assert exact.feature_max_abs_diff < 1e-7 and region.feature_max_abs_diff < 1e-7


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_problems(), st.integers(1, 3), st.sampled_from(["max_inner", "l1"]), st.integers(0, 2**31))
def test_exact_never_worse_than_region_and_features_hold(problem, cut, objective, seed):
    layers, relu_last, x, _, _ = problem
    model, layer, sub, ends_in_relu = model_and_feature_layer(layers, relu_last, cut)
    target = np.random.default_rng(seed).uniform(-3, 3, size=x.size)
    region = invariance_search(
        model, x, target, layer=layer, lower=-3, upper=3, objective=objective, mode="region"
    )
    exact = invariance_search(
        model, x, target, layer=layer, lower=-3, upper=3, objective=objective, mode="exact", time_limit=30
    )
    assert region.proven and exact.proven
    for r in (region, exact):
        assert r.feature_max_abs_diff < 1e-7
        assert np.all(r.x >= -3) and np.all(r.x <= 3)
        np.testing.assert_allclose(forward(sub, r.x, ends_in_relu), forward(sub, x, ends_in_relu), atol=1e-7)
    if objective == "max_inner":
        assert exact.objective >= region.objective - 1e-7
        optimum = brute_force_max_inner(sub, x, target, relu_last=ends_in_relu, lower=-3.0, upper=3.0)
        assert exact.objective == pytest.approx(optimum, abs=1e-6)
    else:
        assert exact.objective <= region.objective + 1e-7


def test_exact_leaves_the_region_when_another_pattern_is_better():
    model = make_net(ABS_LAYERS)
    region = invariance_search(model, [1.0], [-1.0], layer=3, lower=-2, upper=2, mode="region")
    exact = invariance_search(model, [1.0], [-1.0], layer=3, lower=-2, upper=2, mode="exact")
    assert region.objective == pytest.approx(-1.0) and exact.objective == pytest.approx(1.0)
    np.testing.assert_allclose(exact.x, [-1.0], atol=1e-9)
    assert exact.proven and exact.input_l2_distance == pytest.approx(2.0)


# --- the Table 1 MLP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_mlp():
    torch.manual_seed(0)
    model = mlp_table1()
    rng = np.random.default_rng(0)
    return model, rng.random((1, 28, 28)), rng.random((1, 28, 28))


def test_layer_mode_is_the_a7_linear_programme(mnist_mlp):
    model, x, target = mnist_mlp
    A, b, _ = affine_matrix(model[1], (784,))
    y = np.maximum(A @ x.reshape(-1) + b, 0)
    pos = y > 0
    res = linprog(
        -target.reshape(-1),
        A_eq=A[pos],
        b_eq=(y - b)[pos],
        A_ub=A[~pos],
        b_ub=-b[~pos],
        bounds=(0, 1),
        method="highs",
    )
    assert res.status == 0
    r = invariance_search(model, x, target, layer=2, mode="layer")
    assert r.proven and r.mode == "layer"
    assert r.objective == pytest.approx(-res.fun, rel=1e-8)
    assert r.feature_max_abs_diff < 1e-9


def test_region_mode_keeps_deep_features_by_forward_pass(mnist_mlp):
    model, x, target = mnist_mlp
    for layer in (4, 6, 21):  # after the 2nd and 3rd ReLU, and the logits
        r = invariance_search(model, x, target, layer=layer, mode="region", objective="l1")
        assert r.proven and r.x.shape == x.shape
        assert np.all(r.x >= 0) and np.all(r.x <= 1)
        with torch.no_grad():
            sub = model[: layer + 1].double()
            diff = (sub(torch.as_tensor(r.x)[None]) - sub(torch.as_tensor(x)[None])).abs().max()
        assert float(diff) == pytest.approx(r.feature_max_abs_diff, abs=1e-12)
        assert r.feature_max_abs_diff < 1e-8
        assert r.input_l2_distance > 1.0  # far from x, yet identical features


def test_exact_timeout_is_reported_not_proven(mnist_mlp):
    model, x, target = mnist_mlp
    r = invariance_search(model, x, target, layer=6, mode="exact", time_limit=2.0)
    assert not r.proven and r.status == "time_limit"
    assert "not proven optimal" in r.message
    assert r.x is not None and r.feature_max_abs_diff < 1e-8
    assert r.bound >= r.objective - 1e-6  # the dual bound of a maximisation


@pytest.fixture
def milp_finds_nothing(monkeypatch):
    """Every MILP stops at its time limit without a feasible point (LPs run as usual): the case
    of a network too large for the time limit, made deterministic."""
    real_run = _lp.HighsModel.run
    calls = []

    def run(self, cost, *, maximize, time_limit, offset=0.0, start=None):
        if not self.is_mip:
            return real_run(self, cost, maximize=maximize, time_limit=time_limit, offset=offset, start=start)
        calls.append(start)
        return _lp.Outcome("time_limit", None, math.nan, math.inf if maximize else -math.inf, 0.0)

    monkeypatch.setattr(_lp.HighsModel, "run", run)
    return calls


def test_exact_without_fallback_says_when_no_point_was_found(milp_finds_nothing):
    model = make_net(ABS_LAYERS)
    r = invariance_search(model, [1.0], [-1.0], layer=3, lower=-2, upper=2, mode="exact", warm_start=False)
    assert milp_finds_nothing == [None]  # one MILP, and no start solution without the walk
    assert r.x is None and not r.proven and r.status == "time_limit"
    assert "no feasible point found within the time limit" in r.message
    assert "not proven optimal" in r.message
    assert math.isnan(r.objective) and math.isnan(r.feature_max_abs_diff)


def test_exact_with_fallback_returns_the_walks_point_when_the_milp_finds_none(milp_finds_nothing):
    model = make_net(ABS_LAYERS)
    region = invariance_search(model, [1.0], [-1.0], layer=3, lower=-2, upper=2, mode="region")
    r = invariance_search(model, [1.0], [-1.0], layer=3, lower=-2, upper=2, mode="exact")
    assert len(milp_finds_nothing) == 1 and milp_finds_nothing[0] is not None  # started from it
    assert "the MILP found no feasible point" in r.message and not r.proven
    np.testing.assert_allclose(r.x, region.x, atol=1e-12)
    assert r.objective == pytest.approx(region.objective) and r.feature_max_abs_diff < 1e-12


def test_exact_without_fallback_returns_the_milps_point_when_it_finds_one():
    model = make_net(ABS_LAYERS)
    r = invariance_search(model, [1.0], [-1.0], layer=3, lower=-2, upper=2, mode="exact", warm_start=False)
    assert r.proven and "no feasible point" not in r.message
    np.testing.assert_allclose(r.x, [-1.0], atol=1e-9)  # the other point of |x| = 1
    assert r.feature_max_abs_diff < 1e-12


def test_network_preimage_timeout_is_unknown():
    rng = np.random.default_rng(3)
    layers = [
        (rng.normal(size=(12, 2)), rng.normal(size=12)),
        (rng.normal(size=(12, 12)), rng.normal(size=12)),
        (rng.normal(size=(5, 12)), rng.normal(size=5)),
    ]
    model = make_net(layers, relu_last=False)
    r = network_preimage(model, [0.3, -0.2], 4, time_limit=1e-3)
    assert r.kind == "unknown" and not r.certificate.complete
    assert "time limit" in r.certificate.reason
    verify_network_preimage(r, model, [0.3, -0.2], 4)


def test_conv_and_nested_sequential_are_read_as_one_chain():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()),
        nn.Flatten(),
        nn.Sequential(nn.Linear(18, 4), nn.ReLU()),
        nn.Linear(4, 2),
    )
    rng = np.random.default_rng(2)
    x, target = rng.random((1, 3, 3)), rng.random((1, 3, 3))
    for layer in (1, 4, 5):  # flattened indices: conv ReLU, second ReLU, logits
        region = invariance_search(model, x, target, layer=layer, mode="region")
        exact = invariance_search(model, x, target, layer=layer, mode="exact", time_limit=20)
        assert region.x.shape == (1, 3, 3) and region.feature_max_abs_diff < 1e-9
        assert exact.feature_max_abs_diff < 1e-9
        assert exact.objective >= region.objective - 1e-9
    r = network_preimage(model, x, 4, lower=0, upper=1)
    assert r.kind in ("singleton", "compact")
    verify_network_preimage(r, model, x, 4, lower=0, upper=1)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors():
    model = make_net(ABS_LAYERS)
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        invariance_search(model, [0.5], [1.0], layer=7)
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        network_preimage(model, [0.5], 7)
    with pytest.raises(ValueError, match="target must have 1 entries"):
        invariance_search(model, [0.5], [1.0, 2.0], layer=3)
    with pytest.raises(ValueError, match="x lies outside the box"):
        invariance_search(model, [1.5], [1.0], layer=3, lower=0, upper=1)
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        invariance_search(model, [float("nan")], [1.0], layer=3)
    with pytest.raises(ValueError, match="target contains 1 NaN"):
        invariance_search(model, [0.5], [float("nan")], layer=3)
    with pytest.raises(ValueError, match="lower contains NaN"):
        network_preimage(model, [0.5], 3, lower=float("nan"))
    with pytest.raises(ValueError, match="mode must be one of"):
        invariance_search(model, [0.5], [1.0], layer=3, mode="fast")
    with pytest.raises(ValueError, match="objective must be one of"):
        invariance_search(model, [0.5], [1.0], layer=3, objective="l2")
    with pytest.raises(ValueError, match="first affine \\+ ReLU block only"):
        invariance_search(model, [0.5], [1.0], layer=3, mode="layer")
    with pytest.raises(ValueError, match="needs a finite box"):
        invariance_search(model, [0.5], [1.0], layer=3, mode="exact", lower=None, upper=None)
    with pytest.raises(ValueError, match="needs a finite box"):
        preimage_extent(model, [0.5], 3, lower=None)
    with pytest.raises(ValueError, match="strategy='milp' needs a finite box"):
        network_preimage(model, [0.5], 3, strategy="milp")
    with pytest.raises(ValueError, match="time_limit must be a positive"):
        network_preimage(model, [0.5], 3, time_limit=0)
    with pytest.raises(ValueError, match="layer must be an integer"):
        network_preimage(model, [0.5], 1.5)
    with pytest.raises(ValueError, match="module 1 \\(Tanh\\) is not supported.*need ReLU"):
        network_preimage(nn.Sequential(nn.Linear(1, 2), nn.Tanh()), [0.5], 1)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        network_preimage("not a model", [0.5], 0)


# --- figure data ----------------------------------------------------------------------------------


def test_fig7x_examples_is_json_and_consistent():
    torch.manual_seed(1)
    model = mlp_table1(in_features=16, width=6, depth=3)
    rng = np.random.default_rng(1)
    images = rng.random((12, 1, 4, 4))
    labels = np.arange(12) % 3
    out = fig7x_examples(
        model,
        images,
        labels,
        depths=(1, 2, "logits"),
        modes=("layer", "region", "exact"),
        n_examples=2,
        time_limit=10,
    )
    json.dumps(out)  # JSON-serialisable as promised
    assert out["modules"] == [2, 4, 7]
    assert len(out["examples"]) == 2
    for ex in out["examples"]:
        assert ex["target_label"] != ex["label"]
        for entry in ex["depths"]:
            searches = entry["searches"]
            assert ("layer" in searches) == (entry["depth"] == 1)
            for res in searches.values():
                assert res["feature_max_abs_diff"] < 1e-8
                assert np.asarray(res["image"]).shape == (1, 4, 4)
            if searches["exact"]["proven"]:
                assert searches["exact"]["objective"] >= searches["region"]["objective"] - 1e-7
            assert entry["extent"]["lower_bound_only"] and entry["extent"]["linf"] >= 0
