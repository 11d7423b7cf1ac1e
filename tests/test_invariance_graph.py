"""Multi-layer preimages and invariance searches on traced graphs (residual add/subtract,
concatenation) against brute force.

The oracle (tests/problems.py, ``dag_pattern_pieces``) uses no code of reluinv: the tiny networks'
layers are written out by hand from their parameters as a DAG (each ReLU layer reads a set of
sources: earlier layers and/or the input), EVERY activation pattern is enumerated, each pattern's
piece is a polyhedron in input space, and its kind is decided by 2n LPs (scipy's linprog).  Feature
equality at a point is checked by running the torch model itself (forward hooks), not by trusting
the solver.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graph_models import BasicBlock
from problems import brute_force_dag, dag_forward, dag_pattern_pieces, union_extent, union_max_inner
from reluinv.invariance import (
    invariance_search,
    network_preimage,
    preimage_extent,
    verify_network_preimage,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class ResCat(nn.Module):
    """h1 = relu(fc1 x); h2 = relu(x +- fc2 h1) (residual); h3 = relu(fc3 [h2, h1]) (concatenation);
    output fc4 [h3, x]."""

    def __init__(self, n: int, a: int, c: int, *, subtract: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n, a), nn.Linear(a, n)
        self.fc3, self.fc4 = nn.Linear(n + a, c), nn.Linear(c + n, 2)
        self.relu1, self.relu3 = nn.ReLU(), nn.ReLU()
        self.subtract = subtract

    def forward(self, x):
        h1 = self.relu1(self.fc1(x))
        if self.subtract:
            h2 = F.relu(x - self.fc2(h1))
        else:
            h2 = F.relu(x + self.fc2(h1))
        h3 = self.relu3(self.fc3(torch.cat([h2, h1], dim=-1)))
        return self.fc4(torch.cat([h3, x], dim=-1))


def rescat(seed: int, n: int = 2, a: int = 2, c: int = 2, *, subtract: bool = False) -> ResCat:
    torch.manual_seed(seed)
    model = ResCat(n, a, c, subtract=subtract).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_()
                m.bias.normal_(0.0, 0.5)
    return model


def rescat_dag(model: ResCat, features: str):
    """The oracle's DAG of ``model`` up to ``features``, written from its parameters."""
    p = {name: t.detach().double().numpy() for name, t in model.named_parameters()}
    n = p["fc1.weight"].shape[1]
    sign = -1.0 if model.subtract else 1.0
    dag = [
        ((-1,), p["fc1.weight"], p["fc1.bias"]),  # relu1: reads x
        ((0, -1), np.hstack([sign * p["fc2.weight"], np.eye(n)]), sign * p["fc2.bias"]),  # x +- fc2 h1
        ((1, 0), p["fc3.weight"], p["fc3.bias"]),  # relu3 reads cat(h2, h1)
    ]
    depth = {"relu1": 1, "relu()": 2, "relu3": 3, "output": 3}[features]
    tail = ((2, -1), p["fc4.weight"], p["fc4.bias"]) if features == "output" else None
    return dag[:depth], tail


def captured(model: nn.Module, x, module_name: str, call: int = 0) -> np.ndarray:
    """The output of ``module_name`` (its ``call``-th call) in the model's own float64 forward pass."""
    outs = []
    handle = model.get_submodule(module_name).register_forward_hook(
        lambda _m, _i, out: outs.append(out.detach().clone())
    )
    try:
        with torch.no_grad():
            model(torch.as_tensor(np.asarray(x, dtype=np.float64))[None])
    finally:
        handle.remove()
    return outs[call].reshape(-1).numpy()


# --- network_preimage against the DAG brute force ------------------------------------------------

CASES = [
    # (seed, features, subtract, box)
    (seed, features, seed % 3 == 1, box)
    for seed in range(10)
    for features in ("relu1", "relu()", "relu3", "output")
    for box in (None, 2.0)
]


def test_dag_oracle_agrees_with_the_model_forward():
    for seed in range(3):
        model = rescat(seed, subtract=seed == 1)
        x = np.random.default_rng(seed).normal(size=2)
        dag, tail = rescat_dag(model, "output")
        with torch.no_grad():
            out = model(torch.as_tensor(x)[None]).numpy().reshape(-1)
        np.testing.assert_allclose(dag_forward(dag, tail, x), out, rtol=1e-12, atol=1e-12)
        dag3, _ = rescat_dag(model, "relu3")
        np.testing.assert_allclose(dag_forward(dag3, None, x), captured(model, x, "relu3"), atol=1e-12)


@pytest.mark.parametrize("seed,features,subtract,box", CASES)
def test_network_preimage_matches_the_dag_brute_force(seed, features, subtract, box):
    model = rescat(seed, subtract=subtract)
    x = np.random.default_rng(100 + seed).uniform(-1, 1, size=2)
    lower, upper = (None, None) if box is None else (-box, box)
    dag, tail = rescat_dag(model, features)
    expected, _ = brute_force_dag(dag, tail, x, lower=lower, upper=upper)
    r = network_preimage(model, x, features, lower=lower, upper=upper, time_limit=30)
    assert r.kind == expected, (r.kind, expected, r.certificate.reason)
    verify_network_preimage(r, model, x, features, lower=lower, upper=upper)


def test_layer_index_module_names_and_the_output():
    model = rescat(3)
    x = np.array([0.4, -0.3])
    by_index = network_preimage(model, x, 2, lower=-2, upper=2)  # the third layer: relu3
    by_name = network_preimage(model, x, "relu3", lower=-2, upper=2)
    assert by_index.kind == by_name.kind
    r = invariance_search(model, x, [1.0, -1.0], layer="output", lower=-2, upper=2, mode="region")
    assert r.layer == "output"
    with torch.no_grad():
        out = model(torch.as_tensor(np.stack([x, r.x.reshape(-1)]))).numpy()
    assert np.abs(out[1] - out[0]).max() <= 1e-9 * max(1.0, np.abs(out[0]).max())


# --- invariance_search keeps the features, checked by the model itself ---------------------------


@pytest.mark.parametrize("seed", range(4))
def test_exact_search_on_a_residual_mlp_reaches_the_brute_force_optimum(seed):
    model = rescat(seed, n=2, a=3, c=2, subtract=seed % 2 == 1)
    rng = np.random.default_rng(200 + seed)
    x, target = rng.uniform(0.2, 0.8, size=2), rng.normal(size=2)
    dag, _ = rescat_dag(model, "relu3")
    best = union_max_inner(dag_pattern_pieces(dag, None, x, lower=0.0, upper=1.0), target)
    r = invariance_search(model, x, target, layer="relu3", mode="exact", lower=0, upper=1, time_limit=30)
    assert r.proven and r.status == "optimal"
    assert r.objective == pytest.approx(best, abs=1e-6)
    f_x, f_new = captured(model, x, "relu3"), captured(model, r.x, "relu3")
    assert np.abs(f_new - f_x).max() <= 1e-6 * max(1.0, np.abs(f_x).max())
    region = invariance_search(model, x, target, layer="relu3", mode="region", lower=0, upper=1)
    assert region.objective <= r.objective + 1e-9  # x's region is one piece of the preimage


@pytest.mark.parametrize("seed,features", [(seed, f) for seed in range(3) for f in ("relu()", "output")])
def test_preimage_extent_matches_the_dag_brute_force(seed, features):
    model = rescat(seed, subtract=seed == 1)
    x = np.random.default_rng(400 + seed).uniform(-0.5, 0.5, size=2)
    dag, tail = rescat_dag(model, features)
    linf, l1 = union_extent(dag_pattern_pieces(dag, tail, x, lower=-1.0, upper=1.0), x)
    e = preimage_extent(model, x, features, lower=-1, upper=1, time_limit=30)
    assert e.proven
    assert e.linf == pytest.approx(linf, abs=1e-6) and e.l1 == pytest.approx(l1, abs=1e-6)
    assert e.feature_max_abs_diff <= 1e-9 * max(1.0, float(np.abs(dag_forward(dag, tail, x)).max()))


def tiny_basic_block(seed: int) -> BasicBlock:
    """torchvision's BasicBlock (one ReLU module called twice) on 1 channel, random BN statistics."""
    torch.manual_seed(seed)
    block = BasicBlock(1, 1)
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.running_mean.normal_(0.0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.3)
    return block.double().eval()


@pytest.mark.parametrize("mode", ["region", "exact"])
def test_search_on_a_basic_block_keeps_its_output_while_the_input_moves(mode):
    block = tiny_basic_block(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(1, 3, 3))
    target = rng.normal(size=(1, 3, 3))
    r = invariance_search(block, x, target, layer="relu#2", mode=mode, lower=-1, upper=1, time_limit=30)
    f_x, f_new = captured(block, x, "relu", call=1), captured(block, r.x, "relu", call=1)
    assert np.abs(f_new - f_x).max() <= 1e-6 * max(1.0, np.abs(f_x).max())
    assert r.x.shape == x.shape
    assert np.linalg.norm(r.x - x) > 1e-3  # the search moved the input
    assert r.objective > float(target.reshape(-1) @ x.reshape(-1)) + 1e-6
    e = preimage_extent(block, x, "relu#2", lower=-1, upper=1, method="region", time_limit=30)
    assert e.linf > 1e-3 and e.feature_max_abs_diff <= 1e-6 * max(1.0, np.abs(f_x).max())


def test_layer_mode_is_the_first_block_only():
    model = rescat(0)
    x = np.array([0.5, 0.5])
    r = invariance_search(model, x, [1.0, 0.0], layer="relu1", mode="layer", lower=0, upper=1)
    assert r.proven and np.abs(captured(model, r.x, "relu1") - captured(model, x, "relu1")).max() < 1e-9
    with pytest.raises(ValueError, match="first affine \\+ ReLU block only.*'relu1'"):
        invariance_search(model, x, [1.0, 0.0], layer="relu3", mode="layer", lower=0, upper=1)


# --- max-pooling, encoded exactly as ReLUs, against an argmax brute force ---------------------


class Pool1d(nn.Module):
    """relu1 -> F.max_pool1d (overlapping windows {0,1}, {1,2}) -> relu2 with a skip from x."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = (
            nn.Linear(3, 3),
            nn.Linear(2, 2),
            nn.Linear(3, 2),
            nn.Linear(2, 2),
        )
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        h = self.relu1(self.fc1(x)).unsqueeze(1)
        p = torch.flatten(F.max_pool1d(h, kernel_size=2, stride=1), 1)
        return self.fc4(self.relu2(self.fc2(p) + self.fc3(x)))


class Pool2d(nn.Module):
    """nn.MaxPool2d(2, stride=1) on the (1, 2, 3) input itself (windows of four), then a ReLU layer
    with a skip from x."""

    def __init__(self) -> None:
        super().__init__()
        self.pool, self.fc, self.skip, self.relu = (
            nn.MaxPool2d(2, stride=1),
            nn.Linear(2, 2),
            nn.Linear(6, 2),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.relu(self.fc(torch.flatten(self.pool(x), 1)) + self.skip(torch.flatten(x, 1)))


def random_linears(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_()
                m.bias.normal_(0.0, 0.5)
    return model.double().eval()


def pool_dag(model: nn.Module, features: str):
    """The oracle's DAG (max-pool layers carry their windows), written from the parameters."""
    p = {name: t.detach().double().numpy() for name, t in model.named_parameters()}
    if isinstance(model, Pool1d):
        dag = [
            ((-1,), p["fc1.weight"], p["fc1.bias"]),
            ((0,), np.eye(3), np.zeros(3), [np.array([0, 1]), np.array([1, 2])]),
            ((1, -1), np.hstack([p["fc2.weight"], p["fc3.weight"]]), p["fc2.bias"] + p["fc3.bias"]),
        ]
        depth = {"relu1": 1, "max_pool1d()": 2, "relu2": 3, "output": 3}[features]
        tail = ((2,), p["fc4.weight"], p["fc4.bias"]) if features == "output" else None
        return dag[:depth], tail
    dag = [
        ((-1,), np.eye(6), np.zeros(6), [np.array([0, 1, 3, 4]), np.array([1, 2, 4, 5])]),
        ((0, -1), np.hstack([p["fc.weight"], p["skip.weight"]]), p["fc.bias"] + p["skip.bias"]),
    ]
    return (dag[:1], None) if features == "pool" else (dag, None)


POOL_CASES = [
    (cls, seed, features, box)
    for cls, layers in ((Pool1d, ("max_pool1d()", "relu2")), (Pool2d, ("pool", "relu")))
    for seed in range(4)
    for features in layers
    for box in (None, 1.5)
]


@pytest.mark.parametrize("cls,seed,features,box", POOL_CASES)
def test_max_pool_networks_match_the_argmax_brute_force(cls, seed, features, box):
    model = random_linears(cls(), seed)
    n = 3 if cls is Pool1d else 6
    x = np.random.default_rng(300 + seed).uniform(-1, 1, size=n)
    x_model = x if cls is Pool1d else x.reshape(1, 2, 3)
    dag, tail = pool_dag(model, features)
    with torch.no_grad():
        out = model(torch.as_tensor(x_model)[None]).numpy().reshape(-1)
    full_dag, full_tail = pool_dag(model, "output" if cls is Pool1d else "relu")
    np.testing.assert_allclose(dag_forward(full_dag, full_tail, x), out, atol=1e-12)  # oracle = model
    lower, upper = (None, None) if box is None else (-box, box)
    expected, _ = brute_force_dag(dag, tail, x, lower=lower, upper=upper)
    r = network_preimage(model, x_model, features, lower=lower, upper=upper, time_limit=30)
    assert r.kind == expected, (r.kind, expected, r.certificate.reason)
    verify_network_preimage(r, model, x_model, features, lower=lower, upper=upper)


class MaxMin(nn.Module):
    """(max(x1, x2), max(-x1, -x2)): the preimage of x is {x, x swapped}, two points (one if
    x1 = x2), and only the max-pool's other selection finds the second point."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 4, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))

    def forward(self, x):
        return torch.flatten(F.max_pool1d(self.fc(x).unsqueeze(1), 2), 1)


@pytest.mark.parametrize(
    "x,box,expected",
    [
        ([1.0, 0.0], None, "compact"),
        ([0.5, 0.5], None, "singleton"),
        ([1.0, 0.0], 3.0, "compact"),
        ([0.5, 0.5], 3.0, "singleton"),
    ],
)
def test_max_pool_with_known_answers(x, box, expected):
    model = MaxMin().double().eval()
    lower, upper = (None, None) if box is None else (-box, box)
    dag = [((-1,), model.fc.weight.detach().numpy(), np.zeros(4), [np.array([0, 1]), np.array([2, 3])])]
    assert brute_force_dag(dag, None, x, lower=lower, upper=upper)[0] == expected
    r = network_preimage(model, x, "max_pool1d()", lower=lower, upper=upper, strategy="enumerate")
    assert r.kind == expected
    verify_network_preimage(r, model, x, "max_pool1d()", lower=lower, upper=upper)
    if expected == "compact":  # the second point is the swapped input
        second = r.certificate.second_point
        assert second is not None and np.allclose(second, x[::-1], atol=1e-7)


def test_search_on_a_conv_max_pool_network_keeps_its_features():
    class PoolNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()
            self.pool, self.fc, self.relu2 = nn.MaxPool2d(2), nn.Linear(8, 3), nn.ReLU()

        def forward(self, x):
            h = self.pool(self.relu(self.conv(x)))
            return self.relu2(self.fc(torch.flatten(h, 1)))

    torch.manual_seed(0)
    model = PoolNet().double().eval()
    rng = np.random.default_rng(0)
    x, target = rng.uniform(size=(1, 4, 4)), rng.normal(size=(1, 4, 4))
    r = invariance_search(model, x, target, layer="relu2", mode="exact", lower=0, upper=1, time_limit=60)
    f_x, f_new = captured(model, x, "relu2"), captured(model, r.x, "relu2")
    assert np.abs(f_new - f_x).max() <= 1e-6 * max(1.0, np.abs(f_x).max())
    assert np.linalg.norm(r.x - x) > 1e-3 and r.objective > float(target.reshape(-1) @ x.reshape(-1))


def test_a_sequential_with_a_max_pool_is_traced_and_keeps_module_indices():
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten()).double().eval()
    x = np.zeros((1, 2, 2))
    # features max(x') = 0: every x' <= 0 with one coordinate at 0 (unbounded), inside a box compact
    r = network_preimage(model, x, 1)
    assert r.kind == "unbounded" and r.direction is not None and np.all(r.direction <= 1e-12)
    assert network_preimage(model, x, 1, lower=-1, upper=1).kind == "compact"
    assert network_preimage(model, x + 0.5, 1, lower=0, upper=0.5).kind == "compact"
    assert network_preimage(model, x, 1, lower=0, upper=1).kind == "singleton"
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        network_preimage(model, x, 7)


# --- what is refused ----------------------------------------------------------------------------


class TanhSkip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act, self.relu = nn.Linear(2, 2), nn.Linear(2, 2), nn.Tanh(), nn.ReLU()

    def forward(self, x):
        return self.relu(self.fc2(self.act(self.fc1(x))) + x)


def test_other_activations_and_unknown_layers_are_refused_by_name():
    with pytest.raises(ValueError, match="layer 'act' \\(Tanh\\).*not supported by the invariance searches"):
        network_preimage(TanhSkip().double().eval(), [0.1, 0.2], "relu")
    with pytest.raises(ValueError, match="layer 'act' \\(Tanh\\)"):
        invariance_search(TanhSkip().double().eval(), [0.1, 0.2], [1.0, 1.0], layer="output")
    with pytest.raises(ValueError, match="no layer 'nope' in this model"):
        network_preimage(rescat(0), [0.1, 0.2], "nope")
    with pytest.raises(ValueError, match="layer must be a layer name"):
        network_preimage(rescat(0), [0.1, 0.2], 1.5)


# --- the chain and graph front ends agree -------------------------------------------------------


class ChainAsGraph(nn.Module):
    """The same layers as a Sequential, but a forward of its own (so it is traced, not chained)."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return self.seq[3](self.seq[2](self.seq[1](self.seq[0](x))))


def test_a_chain_traced_as_a_graph_gives_the_chain_answers():
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU()).double().eval()
    graph = ChainAsGraph(seq)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x, target = rng.uniform(0, 1, size=3), rng.normal(size=3)
        chain_r = network_preimage(seq, x, 3, lower=0, upper=1)
        graph_r = network_preimage(graph, x, "seq.3", lower=0, upper=1)
        assert chain_r.kind == graph_r.kind
        a = invariance_search(seq, x, target, layer=3, mode="exact", lower=0, upper=1)
        b = invariance_search(graph, x, target, layer="seq.3", mode="exact", lower=0, upper=1)
        assert a.objective == pytest.approx(b.objective, abs=1e-7)
