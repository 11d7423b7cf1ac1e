"""The graph front end (reluinv.graph): linearize, activation_pattern and spectra on residual,
pooling and concatenating networks, against torch.func.jacrev and forward hooks (independent of
reluinv's tangent propagation)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graph_models as gm
from reluinv import activation_pattern, linearize, spectra
from reluinv.graph import is_chain, prepare_graph
from reluinv.network import as_chain

pytestmark = pytest.mark.usefixtures("one_thread")


def jacrev(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model64 = copy.deepcopy(model).double()
    jac = torch.func.jacrev(lambda v: model64(v[None]).reshape(-1))(x.double())
    return jac.reshape(-1, x.numel()).detach().numpy()


def relative_error(J: np.ndarray, R: np.ndarray) -> float:
    return float(np.abs(J - R).max() / np.abs(R).max())


MODELS = {
    "resnet18-cifar": (lambda: gm.resnet18(cifar=True), (3, 32, 32)),
    "resnet18-imagenet": (lambda: gm.resnet18(), (3, 64, 64)),
    "vgg11_bn": (lambda: gm.vgg11_bn(), (3, 32, 32)),
    "densenet": (lambda: gm.DenseNet(), (3, 12, 12)),
    "mobilenetv2": (lambda: gm.MobileNetV2Small(), (3, 16, 16)),
}
SLOW = {("resnet18-cifar", True), ("vgg11_bn", False), ("vgg11_bn", True), ("resnet18-imagenet", True)}


@pytest.mark.parametrize(
    "name, trained",
    [
        pytest.param(n, t, marks=[pytest.mark.slow] if (n, t) in SLOW else [])
        for n in MODELS
        for t in (False, True)
    ],
)
def test_linearize_equals_jacrev(name, trained):
    make, shape = MODELS[name]
    torch.manual_seed(3)
    model = make()
    model = gm.train_a_little(model, shape) if trained else model.eval()
    x = torch.randn(*shape, dtype=torch.float64)
    J, c = linearize(model, x)
    R = jacrev(model, x)
    assert J.shape == R.shape
    assert relative_error(J, R) <= 1e-10
    out = copy.deepcopy(model).double()(x[None]).detach().numpy().reshape(-1)
    np.testing.assert_allclose(J @ x.numpy().reshape(-1) + c, out, rtol=1e-10, atol=1e-10 * np.abs(out).max())


def test_linear_region_is_exact_on_a_residual_maxpool_network():
    # Definition 7: on the region of x the network IS J x' + c; a point with the same pattern.
    torch.manual_seed(0)
    model = gm.resnet18(num_classes=4).eval()
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    J, c = linearize(model, x)
    pattern = activation_pattern(model, x)
    shift = 1e-9 * torch.randn(3, 32, 32, dtype=torch.float64)
    assert all(np.array_equal(pattern[k], v) for k, v in activation_pattern(model, x + shift).items())
    far = (x + shift).numpy().reshape(-1)
    out = copy.deepcopy(model).double()(x[None] + shift).detach().numpy().reshape(-1)
    np.testing.assert_allclose(J @ far + c, out, rtol=1e-9, atol=1e-12)


class EveryOperation(nn.Module):
    """Every supported operation, as module, function and method."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(2, 4, 3, padding=2, dilation=2, padding_mode="circular")
        self.bn1d = nn.BatchNorm1d(4)
        self.prelu = nn.PReLU(4, init=0.2)
        self.pool1d = nn.AvgPool1d(2)
        self.amax1d = nn.AdaptiveMaxPool1d(3)
        self.conv = nn.Conv2d(2, 6, 3, stride=2, padding=1, padding_mode="reflect")
        self.grouped = nn.Conv2d(6, 6, 3, padding="same", groups=3, padding_mode="replicate")
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6, dilation=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu6 = nn.ReLU6()
        self.hardtanh = nn.Hardtanh(-0.5, 0.5)
        self.leaky = nn.LeakyReLU(0.1)
        self.maxpool = nn.MaxPool2d(2, stride=1, padding=1, dilation=1, ceil_mode=True)
        self.amax = nn.AdaptiveMaxPool2d((2, 3))
        self.avg = nn.AdaptiveAvgPool2d(2)
        self.elu, self.tanh = nn.ELU(0.7), nn.Tanh()
        self.fc = nn.Linear(6 * 4 + 6 * 2 * 3 + 12 + 4 * 3 + 6, 5)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 6).reshape(1, 6, 1, 1))

    def forward(self, x):
        seq = x.reshape(x.size(0), 2, -1)  # (2, 32)
        s = self.prelu(self.bn1d(self.conv1d(seq)))
        s = F.leaky_relu(self.pool1d(s), 0.2)
        s1 = self.amax1d(F.max_pool1d(s, 2, 1)).flatten(1)  # 4 x 3
        h = self.bn(self.conv(x))  # (6, 4, 4)
        h = self.relu6(3.0 * h) + F.relu6(h - 0.2) - torch.relu(-h)
        g = self.grouped(h) * self.scale / 2.0
        g = self.hardtanh(g) + F.hardtanh(self.depthwise(h), -1.0, 1.0)
        g = -self.leaky(g) + h
        m = self.maxpool(g).relu()
        m1 = F.max_pool2d(m, kernel_size=2, stride=2)  # (6, 2, 2)
        m2 = self.amax(F.adaptive_max_pool2d(g, (3, 3)))  # (6, 2, 3)
        a = F.avg_pool2d(g, 2).permute(0, 2, 3, 1).contiguous()  # (2, 2, 6)
        a = torch.transpose(a, 1, 3).mean(dim=(2, 3))  # (6,)
        t = self.tanh(self.avg(g)).sum(dim=-1).view(x.size(0), -1)  # 12
        e = self.elu(torch.flatten(m1, 1)[:, :12])
        z = torch.cat([torch.flatten(m1, 1), m2.reshape(m2.shape[0], -1), e - t, s1, a], dim=1)
        return self.fc(z)


def test_every_supported_operation_matches_jacrev():
    torch.manual_seed(5)
    model = EveryOperation()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 8, 8, dtype=torch.float64) * 2
    J, _ = linearize(model, x)
    assert relative_error(J, jacrev(model, x)) <= 1e-10
    _, net = prepare_graph(model, x)
    kinds = {layer.kind for layer in net.layers}
    assert kinds == {"prelu", "leaky_relu", "maxpool", "relu6", "relu", "hardtanh", "elu", "tanh"}
    # the piecewise-linear activations were met on more than one piece
    for layer in net.layers:
        if layer.kind in ("relu6", "hardtanh"):
            slope = net.states[layer.node]
            assert 0 < float(slope.mean()) < 1


def test_batch_axis_can_be_given_or_not():
    torch.manual_seed(0)
    model = gm.DenseNet().eval()
    x = torch.randn(3, 12, 12, dtype=torch.float64)
    np.testing.assert_array_equal(linearize(model, x)[0], linearize(model, x[None])[0])
    v = torch.randn(4, dtype=torch.float64)
    assert linearize(VectorResidual(), v[None])[0].shape == (4, 4)


class VectorResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + F.relu(self.fc(x))


# --- chains keep their code path ------------------------------------------------------------


def test_chains_keep_the_chain_code_path_and_agree_with_the_graph():
    torch.manual_seed(2)
    chain = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 4),
        nn.LeakyReLU(0.1),
        nn.Linear(4, 2),
    ).eval()
    assert is_chain(chain)
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    J_chain, c_chain = linearize(chain, x)
    _, net = prepare_graph(chain, x)
    np.testing.assert_allclose(net.jacobian(), J_chain, rtol=1e-12, atol=1e-14)
    # a chain with a max-pool is no chain any more: it goes through the graph
    pooled = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3, 2)
    ).eval()
    assert not is_chain(pooled)
    assert relative_error(linearize(pooled, x)[0], jacrev(pooled, x)) <= 1e-10


# --- errors ----------------------------------------------------------------------------------


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Sine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return torch.sin(self.fc(x))


class WithGelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(3, 3), nn.GELU())

    def forward(self, x):
        return self.block(x) + x


class MixesBatch(nn.Module):
    def forward(self, x):
        return x.view(1, -1)


class Branches(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


@pytest.mark.parametrize(
    "model, pattern",
    [
        (Square(), r"test_graph.py:\d+ \(return x \* x\): mul of two tensors"),
        (Sine(), r"test_graph.py:\d+ \(return torch.sin\(self.fc\(x\)\)\): operation sin is not supported"),
        (WithGelu(), r"module 'block.1' \(GELU\) is not supported"),
        (MixesBatch(), r"\.view\(\) does not keep the batch axis"),
        (Branches(), r"torch.fx could not trace Branches.forward"),
        (
            nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.MaxPool1d(1)),
            r"'1' \(BatchNorm1d\) is in training mode",
        ),
    ],
)
def test_unsupported_models_name_the_operation_and_where_it_is(model, pattern):
    with pytest.raises(ValueError, match=pattern):
        linearize(model, torch.randn(3, dtype=torch.float64))


# --- activation patterns ---------------------------------------------------------------------


def test_activation_pattern_matches_hooks():
    torch.manual_seed(1)
    model = gm.resnet18(cifar=False, num_classes=3).eval()
    x = torch.randn(3, 32, 32)
    seen: dict[str, list[torch.Tensor]] = {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.ReLU, nn.MaxPool2d)):
            module.register_forward_pre_hook(
                lambda m, inp, path=path: seen.setdefault(path, []).append(inp[0].clone())
            )
    with torch.no_grad():
        model.double()(x.double()[None])
    pattern = activation_pattern(model, x)
    names = list(pattern)
    assert names[:4] == ["relu", "maxpool", "layer1.0.relu", "layer1.0.relu#2"]
    assert len(names) == 1 + 1 + 8 * 2
    for name, indices in pattern.items():
        path, _, call = name.partition("#")
        z = seen[path][int(call or 1) - 1][0]
        if name == "maxpool":
            out, idx = F.max_pool2d(z[None], 3, 2, 1, return_indices=True)
            plane = z.shape[1] * z.shape[2]
            chosen = idx[0].reshape(z.shape[0], -1) + plane * torch.arange(z.shape[0])[:, None]
            np.testing.assert_array_equal(indices, chosen.reshape(-1).numpy())
            np.testing.assert_array_equal(z.reshape(-1)[indices].numpy(), out.reshape(-1).numpy())
        else:
            np.testing.assert_array_equal(indices, np.flatnonzero(z.reshape(-1).numpy() <= 0))


# --- spectra ---------------------------------------------------------------------------------


def test_spectra_of_every_layer_equal_svd_of_jacrev_prefixes():
    torch.manual_seed(4)
    model = gm.train_a_little(gm.DenseNet(), (3, 12, 12))
    x = torch.randn(3, 12, 12, dtype=torch.float64)
    layers = spectra(model, x)
    _, net = prepare_graph(model, x)
    assert [s.name for s in layers] == [layer.name for layer in net.layers]
    assert [s.index for s in layers] == list(range(len(layers)))
    assert layers[0].name == "features.relu0" and layers[-1].name == "relu()"
    model64 = copy.deepcopy(model).double()
    for spectrum, layer in zip(layers, net.layers, strict=True):
        R = prefix_jacobian(model64, layer.name, x)
        expected = np.linalg.svd(R, compute_uv=False)
        assert spectrum.out_dim == R.shape[0]
        np.testing.assert_allclose(spectrum.singular_values, expected, rtol=0, atol=1e-10 * expected[0])
        assert spectrum.rank == int(np.sum(expected > spectrum.rank_tolerance))


def prefix_jacobian(model64: nn.Module, name: str, x: torch.Tensor) -> np.ndarray:
    """jacrev of one layer's output: a forward hook on the module of that path (DenseNet's last
    ReLU is functional: written out)."""
    if name == "relu()":
        return (
            torch.func.jacrev(lambda v: F.relu(model64.features(v[None])).reshape(-1))(x)
            .reshape(-1, x.numel())
            .detach()
            .numpy()
        )
    captured = {}
    handle = model64.get_submodule(name).register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    try:
        R = torch.func.jacrev(lambda v: (model64(v[None]), captured["out"])[1].reshape(-1))(x)
    finally:
        handle.remove()
    return R.reshape(-1, x.numel()).detach().numpy()


def test_lanczos_on_a_graph_finds_the_extreme_singular_values():
    torch.manual_seed(6)
    model = gm.MobileNetV2Small().eval()
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    dense = spectra(model, x)
    lanczos = spectra(model, x, method="lanczos", k=2, max_steps=300)
    for d, s in zip(dense, lanczos, strict=True):
        assert s.name == d.name and s.method == "lanczos"
        nonzero = d.singular_values[d.singular_values > d.rank_tolerance]
        np.testing.assert_allclose(s.largest, nonzero[:2], rtol=1e-8)
        if s.complete:
            np.testing.assert_allclose(s.smallest, nonzero[-2:], rtol=1e-6)


def test_chain_spectra_are_unchanged_by_the_dispatch():
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(4, dtype=torch.float64)
    layers = spectra(chain, x)
    assert [s.name for s in layers] == [s.name for s in as_chain(chain, (4,))]
