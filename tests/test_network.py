"""Tests for reluinv.network: chains, activation patterns (Definition 7) and linearize()."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from reluinv import zoo
from reluinv.network import (
    ActivationStep,
    AffineStep,
    activation_pattern,
    as_chain,
    flatten_modules,
    linearize,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_jacobian(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model64 = copy.deepcopy(model).double()
    x64 = x.detach().double()
    jac = torch.func.jacrev(lambda inp: model64(inp[None]).reshape(-1))(x64)
    return jac.reshape(-1, x64.numel()).detach().numpy()


def _eval(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            # Non-trivial running statistics, so folding the normalisation is really tested.
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            if module.affine:
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def every_module_net() -> nn.Sequential:
    torch.manual_seed(1)
    return _eval(
        nn.Sequential(
            nn.Conv2d(2, 4, 3, stride=2, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular"), nn.LeakyReLU(0.1)),
            nn.AvgPool2d(2),
            nn.Dropout(0.3),
            nn.Conv2d(4, 3, 2, stride=1, padding=0),
            nn.ELU(alpha=0.7),
            nn.Flatten(),
            nn.Linear(3, 6),
            nn.BatchNorm1d(6),
            nn.Identity(),
            nn.Tanh(),
            nn.Linear(6, 5),
            nn.ReLU(),
            nn.Linear(5, 2),
        )
    )


def test_flatten_modules_indices_follow_the_flat_list():
    net = every_module_net()
    names = [step.name for step in as_chain(net, (2, 8, 8))]
    assert names[:5] == ["0:Conv2d", "1:BatchNorm2d", "2:ReLU", "3:Conv2d", "4:LeakyReLU"]
    assert len(flatten_modules(net)) == 17 == len(names)


def test_linearize_matches_jacrev_for_every_supported_module():
    net = every_module_net()
    x = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(3))
    J, c = linearize(net, x)
    assert J.shape == (2, 128) and J.dtype == np.float64
    np.testing.assert_allclose(J, _reference_jacobian(net, x), rtol=0, atol=1e-13)
    # c is the offset at x itself: F(x) = J x + c even for the smooth activations.
    value = copy.deepcopy(net).double()(x.double()[None]).reshape(-1).detach().numpy()
    np.testing.assert_allclose(J @ x.double().reshape(-1).numpy() + c, value, atol=1e-12)


def test_linearize_is_exact_on_the_linear_region():
    torch.manual_seed(4)
    net = zoo.thin_cifar(in_channels=1, image_size=8).eval()
    net64 = copy.deepcopy(net).double()
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    J, c = linearize(net, x)
    pattern = activation_pattern(net, x)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(20):
        x2 = x + torch.from_numpy(rng.standard_normal(x.shape)) * 1e-6
        if any(not np.array_equal(pattern[i], p) for i, p in activation_pattern(net, x2).items()):
            continue  # crossed into another region
        checked += 1
        value = net64(x2[None]).reshape(-1).detach().numpy()
        np.testing.assert_allclose(J @ x2.reshape(-1).numpy() + c, value, rtol=1e-10, atol=1e-12)
    assert checked >= 10


def test_linearize_upto_is_the_prefix_map():
    torch.manual_seed(5)
    net = zoo.mlp_table1(in_features=6, width=5, depth=3, classes=2).eval()
    x = torch.randn(6)
    J2, c2 = linearize(net, x, upto=3)  # Flatten, Linear, ReLU
    np.testing.assert_allclose(J2, _reference_jacobian(net[:3], x), atol=1e-14)
    J0, c0 = linearize(net, x, upto=0)
    np.testing.assert_array_equal(J0, np.eye(6))
    np.testing.assert_array_equal(c0, np.zeros(6))


def test_batch_dimension_and_numpy_input_give_the_same_answer():
    torch.manual_seed(6)
    net = zoo.thin_cifar(in_channels=1, image_size=8).eval()
    x = torch.rand(1, 8, 8)
    J1, c1 = linearize(net, x)
    J2, c2 = linearize(net, x[None])
    J3, c3 = linearize(net, x.numpy())
    np.testing.assert_array_equal(J1, J2)
    np.testing.assert_array_equal(J1, J3)
    np.testing.assert_array_equal(c1, c3)


def test_activation_pattern_is_the_index_set_of_definition_7():
    torch.manual_seed(7)
    net = zoo.mlp_table2(in_features=10, classes=3).eval()
    x = torch.randn(10)
    pattern = activation_pattern(net, x)
    assert sorted(pattern) == [2, 4]
    z1 = (x.double() @ net[1].weight.double().T + net[1].bias.double()).detach().numpy()
    np.testing.assert_array_equal(pattern[2], np.flatnonzero(z1 <= 0))
    assert pattern[2].dtype == np.intp


def test_activation_pattern_counts_zero_as_inactive():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        net[0].bias.zero_()
    # z = (0, 1, 1): unit 0 sits exactly at 0 and belongs to I.
    np.testing.assert_array_equal(activation_pattern(net, [0.0, 1.0])[1], [0])
    J, _ = linearize(net, [0.0, 1.0])
    np.testing.assert_array_equal(J[0], [0.0, 0.0])


def test_dense_steps_reproduce_the_modules():
    net = every_module_net()
    chain = as_chain(net, (2, 8, 8))
    h = torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    for step, module in zip(chain, flatten_modules(net), strict=True):
        expected = copy.deepcopy(module).double()(h)
        if isinstance(step, AffineStep):
            W, c = step.dense()
            assert W.shape == (step.out_dim, step.in_dim) and c.shape == (step.out_dim,)
            got = W @ h.reshape(-1).numpy() + c
            np.testing.assert_allclose(got, expected.reshape(-1).detach().numpy(), atol=1e-12)
        else:
            assert isinstance(step, ActivationStep)
            np.testing.assert_allclose(step.apply(h).numpy(), expected.detach().numpy(), atol=1e-15)
        h = expected.detach()


def test_linear_dense_is_the_weight():
    layer = nn.Linear(4, 3)
    (step,) = as_chain(layer, (4,))
    W, c = step.dense()
    np.testing.assert_array_equal(W, layer.weight.detach().double().numpy())
    np.testing.assert_array_equal(c, layer.bias.detach().double().numpy())
    assert step.is_identity is False and as_chain(nn.Flatten(), (2, 3))[0].is_identity


def test_grouped_strided_conv_matches_jacrev():
    torch.manual_seed(9)
    net = nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=(2, 1), padding="valid", groups=2, dilation=1), nn.ReLU()
    ).eval()
    x = torch.randn(4, 9, 7)
    J, _ = linearize(net, x)
    np.testing.assert_allclose(J, _reference_jacobian(net, x), atol=1e-14)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_float64_convolutions_of_large_batches_match_one_call(padding_mode):
    # Batches above 2 * _CONV_CHUNK run in chunks; the module's own forward on the whole batch is
    # the oracle (a ragged last chunk included: 101 = 3 * 32 + 5).
    torch.manual_seed(10)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, padding_mode=padding_mode).double().eval()
    step = as_chain(nn.Sequential(conv).eval(), (3, 9, 9))[0]
    assert isinstance(step, AffineStep)
    batch = torch.randn(101, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(batch) - conv.bias.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(step.apply_linear(batch).numpy(), expected.numpy(), atol=1e-13)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("module", "pattern"),
    [
        (nn.Sigmoid(), r"module 1 \(Sigmoid\) is not supported; supported modules: .*Conv2d.*ReLU"),
        (nn.MaxPool2d(2), r"module 1 \(MaxPool2d\) is not supported: max pooling"),
    ],
)
def test_unsupported_modules_are_named(module, pattern):
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), module, nn.Flatten())
    with pytest.raises(ValueError, match=pattern):
        as_chain(net, (1, 4, 4))


def test_sequentials_beyond_the_chain_go_through_the_graph():
    # linearize takes them through reluinv.graph: Sigmoid is refused there (by module path),
    # MaxPool2d is supported there.
    with pytest.raises(ValueError, match=r"module '1' \(Sigmoid\) is not supported"):
        linearize(
            nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Sigmoid(), nn.Flatten()), torch.zeros(1, 4, 4)
        )
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Flatten()).eval()
    x = torch.randn(1, 4, 4)
    J, _ = linearize(net, x)
    np.testing.assert_allclose(J, _reference_jacobian(net, x), atol=1e-14)


@pytest.mark.parametrize("module", [nn.Dropout(0.5), nn.BatchNorm1d(3)])
def test_training_mode_is_refused(module):
    net = nn.Sequential(nn.Linear(2, 3), module).train()
    with pytest.raises(ValueError, match=r"module 1 \(\w+\) is in training mode.*model\.eval\(\)"):
        linearize(net, torch.zeros(2))


def test_wrong_shapes_are_refused():
    net = zoo.thin_cifar(in_channels=1, image_size=8).eval()
    with pytest.raises(ValueError, match=r"x must be one sample .* got a batch of shape \(2, 1, 8, 8\)"):
        linearize(net, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(C, H, W\)"):
        linearize(net, torch.zeros(64))
    with pytest.raises(
        ValueError, match=r"module 0 \(Conv2d\) cannot take a per-sample input of shape \(3, 8, 8\)"
    ):
        linearize(net, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"module 13 \(Linear\) cannot take"):
        linearize(net, torch.zeros(1, 12, 12))
    mlp = zoo.mlp_table1(in_features=6, width=4, depth=1, classes=2).eval()
    with pytest.raises(ValueError, match=r"module 1 \(Linear\) cannot take"):
        linearize(mlp, np.zeros(5))
    with pytest.raises(
        ValueError, match=r"x must be one sample of shape \(2,\) or \(1, 2\) for module Linear"
    ):
        linearize(zoo.toy_circles(), np.zeros((3, 2)))


def test_non_finite_input_is_refused():
    net = zoo.toy_circles().eval()
    with pytest.raises(ValueError, match=r"x contains 1 NaN or infinite entry"):
        linearize(net, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match=r"x contains 2 NaN or infinite entries"):
        activation_pattern(net, np.array([np.inf, np.nan]))


def test_bad_upto_and_model_are_refused():
    net = zoo.toy_circles().eval()
    with pytest.raises(ValueError, match=r"upto must be an integer in \[0, 3\], got 4"):
        linearize(net, [0.0, 0.0], upto=4)
    with pytest.raises(ValueError, match=r"model must be a torch.nn.Module"):
        linearize("not a model", [0.0, 0.0])
    with pytest.raises(ValueError, match=r"would flatten the batch dimension"):
        as_chain(nn.Sequential(nn.Flatten(start_dim=0)), (3,))


@pytest.mark.cuda
def test_linearize_on_cuda_matches_cpu():
    net = every_module_net()
    x = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(3))
    J_cpu, c_cpu = linearize(net, x)
    J_gpu, c_gpu = linearize(net.cuda(), x.cuda())
    np.testing.assert_allclose(J_gpu, J_cpu, atol=1e-12)
    np.testing.assert_allclose(c_gpu, c_cpu, atol=1e-12)


def test_checked_device_names_what_is_wrong():
    from reluinv.network import checked_device

    assert checked_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "gpu:0", 3.5):
        with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
            checked_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            checked_device("cuda")
