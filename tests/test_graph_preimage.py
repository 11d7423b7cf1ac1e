"""Layer preimages on graphs (reluinv.graph_preimage) against hand-built systems and an LP oracle.

The oracle uses no code of reluinv: the affine maps feeding a layer are written out from the
tiny networks' parameters (or from torch's own convolution applied to unit vectors), the
polyhedron is built from the activation pattern (for max-pools: the argmax of every window,
found by enumerating the window's entries), and its kind is decided by minimising and maximising
every coordinate with HiGHS.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog
from torch import nn

from reluinv.graph_preimage import graph_layer_preimage, layer_system, preimage_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def lp_kind(E, e, G, g, n, lower=None, upper=None, spread_tol=1e-7) -> str:
    bounds = [(lower, upper)] * n
    kw = dict(
        A_eq=E if len(E) else None,
        b_eq=e if len(E) else None,
        A_ub=G if len(G) else None,
        b_ub=g if len(G) else None,
        bounds=bounds,
        method="highs",
    )
    if linprog(np.zeros(n), **kw).status == 2:
        return "empty"
    spread = 0.0
    for j in range(n):
        values = []
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            c[j] = sign
            res = linprog(c, **kw)
            if res.status in (2, 3):
                return "unbounded"
            values.append(sign * res.fun)
        spread = max(spread, values[1] - values[0])
    return "singleton" if spread <= spread_tol else "compact"


class TinyResidual(nn.Module):
    def __init__(self, n: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(n, hidden), nn.Linear(hidden, n), nn.Linear(n, 2)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        h = self.relu1(self.fc1(x))
        return self.fc3(self.relu2(self.fc2(h) + x))


def relu_oracle(A, b, y, lower=None, upper=None) -> str:
    pos = y > 0
    return lp_kind(A[pos], (y - b)[pos], A[~pos], -b[~pos], A.shape[1], lower, upper)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("box", [None, 2.0])
def test_residual_relu_layers_match_hand_built_systems_and_the_lp_oracle(seed, box):
    torch.manual_seed(seed)
    n, hidden = 2 + seed % 2, 2 + seed % 3
    model = TinyResidual(n, hidden).double().eval()
    x = torch.randn(n, dtype=torch.float64) * 2
    W1, b1 = model.fc1.weight.detach().numpy(), model.fc1.bias.detach().numpy()
    W2, b2 = model.fc2.weight.detach().numpy(), model.fc2.bias.detach().numpy()
    h = np.maximum(W1 @ x.numpy() + b1, 0)
    # a box around every u (so x's own sources are inside it)
    reach = box + max(np.abs(x.numpy()).max(), np.abs(h).max()) if box else None
    lower, upper = (-reach, reach) if box else (None, None)
    # relu1 is fed by the input alone; relu2 by the input (residual) and relu1
    for layer, A, b, sources in [
        ("relu1", W1, b1, ("input",)),
        ("relu2", np.hstack([np.eye(n), W2]), b2, ("input", "relu1")),
    ]:
        result, system = graph_layer_preimage(model, x, layer, lower=lower, upper=upper)
        assert tuple(name for name, _ in system.sources) == sources
        np.testing.assert_allclose(system.A, A, rtol=0, atol=1e-15)
        np.testing.assert_allclose(system.b, b, rtol=0, atol=1e-15)
        u = x.numpy() if layer == "relu1" else np.concatenate([x.numpy(), h])
        np.testing.assert_allclose(system.u, u, atol=1e-15)
        y = np.maximum(A @ u + b, 0)
        assert result.kind == relu_oracle(A, b, y, lower, upper), result.certificate.reason
        result.verify(*preimage_rows(system), lower=lower, upper=upper)
        np.testing.assert_allclose(np.maximum(A @ result.point + b, 0), y, atol=1e-8)


class TinyPool(nn.Module):
    def __init__(self, pool: nn.Module, channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.pool = pool
        self.fc = nn.LazyLinear(2)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.pool(self.conv(x))), 1))


def conv_matrix(conv: nn.Conv2d, shape) -> tuple[np.ndarray, np.ndarray]:
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        images = F.conv2d(basis, conv.weight, None, conv.stride, conv.padding)
        bias = F.conv2d(
            torch.zeros(1, *shape, dtype=torch.float64), conv.weight, conv.bias, conv.stride, conv.padding
        )
    return images.reshape(n, -1).T.numpy(), bias.reshape(-1).numpy()


def maxpool_oracle(z: np.ndarray, A, b, windows_of, lower, upper) -> str:
    """Enumerate each window's entries for its maximum; equality there, selection inequalities."""
    E, e, G, g = [], [], [], []
    for window in windows_of:
        best = max(window, key=lambda k: z[k])
        E.append(A[best])
        e.append(z[best] - b[best])
        for k in window:
            if k != best:
                G.append(A[k] - A[best])
                g.append(b[best] - b[k])
    return lp_kind(np.array(E), np.array(e), np.array(G), np.array(g), A.shape[1], lower, upper)


def windows(channels, height, width, kernel, stride, padding):
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    found = []
    for c in range(channels):
        for i in range(out_h):
            for j in range(out_w):
                found.append(
                    [
                        c * height * width + r * width + q
                        for r in range(i * stride - padding, i * stride - padding + kernel)
                        for q in range(j * stride - padding, j * stride - padding + kernel)
                        if 0 <= r < height and 0 <= q < width
                    ]
                )
    return found


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1)])
def test_maxpool_layers_match_enumeration_and_the_lp_oracle(seed, kernel, stride, padding):
    torch.manual_seed(seed)
    model = TinyPool(nn.MaxPool2d(kernel, stride, padding), channels=1 + seed % 2).double()
    x = torch.randn(1, 4, 4, dtype=torch.float64)
    model(x[None])  # materialise the lazy layer
    model.eval()
    A, b = conv_matrix(model.conv, (1, 4, 4))
    z = A @ x.numpy().reshape(-1) + b
    channels = model.conv.out_channels
    win = windows(channels, 4, 4, kernel, stride, padding)
    for box in (None, 1.0):
        lower, upper = (-box - float(x.abs().max()), box + float(x.abs().max())) if box else (None, None)
        result, system = graph_layer_preimage(model, x, "pool", lower=lower, upper=upper)
        np.testing.assert_allclose(system.A, A, atol=1e-14)
        np.testing.assert_allclose(system.b, b, atol=1e-14)
        assert result.kind == maxpool_oracle(z, A, b, win, lower, upper), result.certificate.reason
        result.verify(*preimage_rows(system), lower=lower, upper=upper)
        # the point found lies in the region: the network's own max-pool gives y with the same argmax
        point = torch.as_tensor(result.point).reshape(1, 1, 4, 4)
        with torch.no_grad():
            out, idx = F.max_pool2d(model.conv(point), kernel, stride, padding, return_indices=True)
        np.testing.assert_allclose(out.reshape(-1).numpy(), system.y, atol=1e-8)
    # the ReLU after the pool is fed by the pool alone, through the identity
    relu = layer_system(model, x, "relu()")
    assert relu.sources == (("pool", relu.layer.in_shape),)
    np.testing.assert_array_equal(relu.A, np.eye(relu.A.shape[0]))


def test_adaptive_maxpool_windows_and_relu6_rows():
    torch.manual_seed(0)
    model = TinyPool(nn.AdaptiveMaxPool2d((2, 3))).double()
    x = torch.randn(1, 4, 4, dtype=torch.float64)
    model(x[None])
    model.eval()
    system = layer_system(model, x, "pool")
    # adaptive pooling of 4 -> 2 rows and 4 -> 3 columns: rows {0,1},{2,3}; columns {0,1},{1,2},{2,3}
    assert [sorted(w.tolist()) for w in system.windows] == [
        [0, 1, 4, 5],
        [1, 2, 5, 6],
        [2, 3, 6, 7],
        [8, 9, 12, 13],
        [9, 10, 13, 14],
        [10, 11, 14, 15],
    ]

    class Clipped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(3, 6), nn.ReLU6()

        def forward(self, v):
            return self.act(3.0 * self.fc(v))

    clipped = Clipped().double().eval()
    for seed in range(8):
        v = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 3
        result, s = graph_layer_preimage(clipped, v, "act")
        A, b = 3.0 * clipped.fc.weight.detach().numpy(), 3.0 * clipped.fc.bias.detach().numpy()
        y = np.clip(A @ v.numpy() + b, 0, 6)
        inside, low, high = (y > 0) & (y < 6), y <= 0, y >= 6
        expected = lp_kind(
            A[inside], (y - b)[inside], np.vstack([A[low], -A[high]]), np.r_[-b[low], b[high] - 6], 3
        )
        assert result.kind == expected
        np.testing.assert_allclose(np.clip(A @ result.point + b, 0, 6), y, atol=1e-8)
