"""Tests for reluinv.jacobian_svd: every stage against LAPACK's dense SVD of the explicit matrix,
and all-prefix spectra against torch.func.jacrev + scipy.linalg.svdvals (independent oracles)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reluinv import jacobian_svd, zoo
from reluinv.jacobian_svd import (
    band_reduce,
    relu_pair_singular_values,
    singular_values,
    staircase_r,
    tall_factor,
    triangular_svdvals,
    upper_bandwidth,
)
from reluinv.layer_spectrum import rank_tolerance
from reluinv.stability import spectra

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Band reduction and dgbbrd even on tiny factors (they normally go straight to gesdd)."""
    monkeypatch.setattr(jacobian_svd, "_SMALL", 4)
    monkeypatch.setattr(jacobian_svd, "BAND", 5)


def _upper(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return np.linalg.qr((U * np.logspace(0, -spread, n)) @ V.T, mode="r")


@pytest.mark.parametrize("route", ["two-stage", "direct"])
@pytest.mark.parametrize(("n", "band"), [(40, 3), (64, 64), (300, 17)])
def test_triangular_svdvals_match_lapack(monkeypatch, route, n, band):
    monkeypatch.setattr(jacobian_svd, "_SMALL", 4)
    monkeypatch.setattr(jacobian_svd, "BAND", 4)
    monkeypatch.setattr(jacobian_svd, "_ROTATION_COST", 1e9 if route == "two-stage" else 0.0)
    rng = np.random.default_rng(n + band)
    R = _upper(rng, n, spread=6)
    R = np.triu(R) - np.triu(R, band + 1)  # an upper band with `band` super-diagonals
    R[n // 3] = 0.0  # a missing pivot, as the staircase leaves them
    expected = scipy.linalg.svdvals(R)
    given = R.copy()
    got = triangular_svdvals(R)
    np.testing.assert_array_equal(R, given)  # the caller's R is left alone
    assert upper_bandwidth(R) == min(band, n - 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=30 * n * np.finfo(float).eps * expected[0])
    assert np.all(np.diff(got) <= 0)


def test_band_reduce_leaves_a_band_with_the_same_singular_values():
    rng = np.random.default_rng(1)
    R = np.triu(rng.standard_normal((50, 50)))
    B = band_reduce(torch.tensor(R), 6).numpy()
    assert upper_bandwidth(B) <= 6
    assert np.all(np.tril(B, -1) == 0)
    np.testing.assert_allclose(scipy.linalg.svdvals(B), scipy.linalg.svdvals(R), atol=1e-13 * np.abs(R).max())


def test_band_reduce_survives_trivial_reflectors():
    # Columns already zero below the diagonal give tau = 0 reflectors.
    R = np.diag(np.arange(1.0, 21.0))
    R[0, 19] = 5.0
    B = band_reduce(torch.tensor(R), 4).numpy()
    assert np.all(np.isfinite(B)) and upper_bandwidth(B) <= 4
    np.testing.assert_allclose(scipy.linalg.svdvals(B), scipy.linalg.svdvals(R), atol=1e-13 * 20)


def test_tall_factor_staircase_and_dense_have_the_singular_values():
    rng = np.random.default_rng(2)
    n = 60
    staircase = np.zeros((400, n))
    for i in range(400):
        start = (i * (n - 6)) // 400
        staircase[i, start : start + 6] = rng.standard_normal(6)
    dense = rng.standard_normal((90, n))
    for J in (staircase, dense):
        R = tall_factor(J)
        assert R.shape == (n, n) and np.all(np.tril(R, -1) == 0)
        np.testing.assert_allclose(
            scipy.linalg.svdvals(R), scipy.linalg.svdvals(J), atol=1e-12 * np.abs(J).max()
        )
    with pytest.raises(ValueError, match="at least as many rows as columns"):
        tall_factor(dense[:10])


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=12),
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_relu_pair_matches_each_matrix_separately(m, n, keep_fraction, seed):
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((m, n))
    J[rng.random(m) < 0.2] = 0.0  # dead rows
    keep = rng.random(m) < keep_fraction
    with_all, with_kept = relu_pair_singular_values(torch.tensor(J.T.copy()), torch.tensor(keep))
    scale = max(1.0, np.abs(J).max())
    np.testing.assert_allclose(with_all, scipy.linalg.svdvals(J), atol=1e-12 * scale)
    np.testing.assert_allclose(with_kept, scipy.linalg.svdvals(J * keep[:, None]), atol=1e-12 * scale)


@pytest.mark.parametrize(("removed", "staircase"), [(5, False), (40, False), (40, True)])
def test_relu_pair_update_routes_match_lapack(removed, staircase):
    # Fewer or more removed rows than columns, dense or banded: at these sizes the kept rows'
    # factor is updated by the removed rows (the staircase over all rows would cost more).
    rng = np.random.default_rng(removed + staircase)
    n, kept = 24, 60
    J = rng.standard_normal((kept + removed, n))
    if staircase:
        J *= np.abs(np.arange(n)[None, :] - (np.arange(kept + removed) * n // (kept + removed))[:, None]) <= 3
    keep = np.zeros(kept + removed, dtype=bool)
    keep[rng.permutation(kept + removed)[:kept]] = True
    with_all, with_kept = relu_pair_singular_values(torch.tensor(J.T.copy()), torch.tensor(keep))
    np.testing.assert_allclose(with_all, scipy.linalg.svdvals(J), atol=1e-12 * np.abs(J).max())
    np.testing.assert_allclose(with_kept, scipy.linalg.svdvals(J[keep]), atol=1e-12 * np.abs(J).max())


def _banded(rng: np.random.Generator, m: int, n: int, width: int) -> np.ndarray:
    """m x n rows with ``width`` consecutive non-zeros each, their first column rising with the
    row (shuffled), as a convolution's Jacobian has them in pixel-major columns."""
    J = np.zeros((m, n))
    for i in range(m):
        start = (i * (n - width)) // m
        J[i, start : start + width] = rng.standard_normal(width)
    return J[rng.permutation(m)]


@pytest.mark.parametrize(
    ("keep_fraction", "banded", "routes"),
    [
        (0.3, True, ("staircase", "staircase")),  # many removed rows: the staircase over all rows
        (0.9, True, ("staircase", "update")),  # few removed rows: the update of R_kept
        (0.6, False, ("dense", "update")),
    ],
)
def test_relu_pair_routes_read_the_rows_in_place(monkeypatch, keep_fraction, banded, routes):
    """Each way to the two factors, checked against LAPACK; the staircase reads J's rows from the
    column-major view J^T gives (no copy), so every route also sees a J it did not lay out."""
    rng = np.random.default_rng(int(10 * keep_fraction))
    m, n = 6000, 120
    J = _banded(rng, m, n, 6) if banded else rng.standard_normal((m, n))
    J[rng.random(m) < 0.1] = 0.0  # dead rows
    keep = rng.random(m) < keep_fraction
    taken: list[str] = []
    staircase, update = jacobian_svd._staircase_square, jacobian_svd.triangle_update

    def spy_staircase(*args, **kwargs):
        taken.append("staircase")
        return staircase(*args, **kwargs)

    def spy_update(*args, **kwargs):
        taken.append("update")
        return update(*args, **kwargs)

    monkeypatch.setattr(jacobian_svd, "_staircase_square", spy_staircase)
    monkeypatch.setattr(jacobian_svd, "triangle_update", spy_update)
    with_all, with_kept = relu_pair_singular_values(torch.tensor(J.T.copy()), torch.tensor(keep))
    assert tuple(taken) == tuple(r for r in routes if r != "dense")
    np.testing.assert_allclose(with_all, scipy.linalg.svdvals(J), atol=1e-12 * np.abs(J).max())
    np.testing.assert_allclose(with_kept, scipy.linalg.svdvals(J[keep]), atol=1e-12 * np.abs(J).max())


def test_empty_jacobians_have_no_singular_values():
    # No rows or no columns: nothing to factor, on every route.
    for m, n in ((0, 4), (3, 0), (0, 0)):
        assert staircase_r(np.zeros((m, n))).shape == (0, n)
        with_all, with_kept = relu_pair_singular_values(
            torch.zeros(n, m, dtype=torch.float64), torch.ones(m, dtype=torch.bool)
        )
        assert with_all.size == with_kept.size == min(m, n) == 0
    first, last, live = jacobian_svd._row_profile(torch.zeros(0, 3, dtype=torch.float64))
    assert first.tolist() == [0, 0, 0] and last.tolist() == [-1, -1, -1] and not live.any()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=70),
    st.integers(min_value=1, max_value=30),
    st.sampled_from([1, 4, 32]),
    st.booleans(),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_row_profile_matches_a_scan_of_each_row(n, m, block, column_major, seed):
    """First and last non-zero column of every row of J, from J^T in either memory order,
    against a plain scan; rows of zeros (and a NaN, which is not zero) included."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((m, n)) * (rng.random((m, n)) < 0.15)
    J[rng.random(m) < 0.2] = 0.0
    if J.size:
        J.flat[rng.integers(J.size)] = np.nan
    Jt = torch.tensor(J).T if column_major else torch.tensor(J.T.copy())
    first, last, live = jacobian_svd._row_profile(Jt, block)
    for i, row in enumerate(J):
        columns = np.flatnonzero(row != 0)
        assert live[i] == (columns.size > 0)
        assert (first[i], last[i]) == ((columns[0], columns[-1]) if columns.size else (n, -1))


@pytest.mark.parametrize(("n", "r", "block"), [(23, 40, 5), (23, 7, 5), (23, 0, 4), (70, 90, 32), (9, 3, 16)])
def test_triangle_update_is_the_qr_of_the_stack(n, r, block):
    """R of [T; B] for upper triangular T (with a zero row, as a staircase factor has) against
    the Gram identity R^T R = T^T T + B^T B and LAPACK's singular values of the stack."""
    rng = np.random.default_rng(n + r + block)
    T = np.triu(rng.standard_normal((n, n)))
    T[n // 2] = 0.0
    B = rng.standard_normal((r, n))
    R = jacobian_svd.triangle_update(torch.tensor(T), torch.tensor(B), block).numpy()
    assert np.all(np.tril(R, -1) == 0)
    np.testing.assert_allclose(R.T @ R, T.T @ T + B.T @ B, atol=1e-12 * n * max(1.0, r))
    np.testing.assert_allclose(
        scipy.linalg.svdvals(R), scipy.linalg.svdvals(np.vstack([T, B])), atol=1e-12 * n
    )


def test_relu_pair_update_over_several_panels_matches_lapack():
    # n = 70 > the update's panel width (32): the dense route's panels and trailing updates.
    rng = np.random.default_rng(70)
    n, kept, removed = 70, 150, 60
    J = rng.standard_normal((kept + removed, n))
    keep = np.zeros(kept + removed, dtype=bool)
    keep[rng.permutation(kept + removed)[:kept]] = True
    with_all, with_kept = relu_pair_singular_values(torch.tensor(J.T.copy()), torch.tensor(keep))
    np.testing.assert_allclose(with_all, scipy.linalg.svdvals(J), atol=1e-12 * np.abs(J).max())
    np.testing.assert_allclose(with_kept, scipy.linalg.svdvals(J[keep]), atol=1e-12 * np.abs(J).max())


def test_singular_values_refuses_bad_matrices():
    with pytest.raises(ValueError, match="2-dimensional"):
        singular_values(np.zeros(3))
    with pytest.raises(ValueError, match="NaN or infinite"):
        singular_values(np.array([[1.0, np.nan]]))


def test_rank_tolerance_rule():
    eps = np.finfo(float).eps
    assert rank_tolerance(2.0, (100, 10)) == pytest.approx(100 * eps * 2.0)
    assert rank_tolerance(2.0, (3, 7), 1e-3) == pytest.approx(2e-3)
    assert rank_tolerance(0.0, (3, 7)) == 0.0


# ------------------------------------------------------------------ all prefixes vs jacrev


def _jacrev_spectrum(
    model: torch.nn.Sequential, x: torch.Tensor, depth: int, forward: bool = False
) -> np.ndarray:
    """svdvals of the explicit prefix Jacobian from torch.func (jacfwd for tall CIFAR-size ones:
    reverse mode would batch 32768 cotangents through the convolutions)."""
    prefix = copy.deepcopy(model[: depth + 1]).double()
    transform = torch.func.jacfwd if forward else torch.func.jacrev
    J = transform(lambda v: prefix(v[None]).reshape(-1))(x.double())
    return scipy.linalg.svdvals(J.reshape(J.shape[0], -1).detach().numpy())


def _assert_close_above_tolerance(layer, reference: np.ndarray, rtol: float) -> None:
    """Every singular value above the rank tolerance to ``rtol`` relative to itself (plus the
    rounding floor ``eps * sigma_max * sqrt(n)`` that no backward-stable method can beat)."""
    assert layer.singular_values.shape == reference.shape
    above = reference > layer.rank_tolerance
    floor = 8 * np.finfo(float).eps * reference[0] * np.sqrt(reference.size)
    error = np.abs(layer.singular_values - reference)
    assert np.all(error[above] <= rtol * reference[above] + floor), (
        layer.name,
        np.max(error[above] / reference[above]),
    )
    assert layer.rank == int(np.count_nonzero(above))


@pytest.mark.usefixtures("tiny_blocks")
@pytest.mark.parametrize("builder", [zoo.wide_cifar, zoo.thin_cifar])
@pytest.mark.parametrize("route", ["two-stage", "direct"])
def test_every_prefix_at_3x8x8_matches_jacrev(monkeypatch, builder, route):
    monkeypatch.setattr(jacobian_svd, "_ROTATION_COST", 1e9 if route == "two-stage" else 0.0)
    torch.manual_seed(21)
    model = builder(image_size=8).eval()
    x = torch.rand(3, 8, 8)
    layers = spectra(model, x)
    assert len(layers) == len(model)
    for depth, layer in enumerate(layers):
        _assert_close_above_tolerance(layer, _jacrev_spectrum(model, x, depth), rtol=1e-8)


@pytest.mark.slow
def test_wide_cifar_prefixes_at_3x32x32_match_jacfwd():
    # The first convolution (32768 x 3072: staircase factor, computed as the update of its ReLU
    # prefix's factor) and the ReLU after the stride-2 second convolution (kept rows of a
    # 16384 x 3072 Jacobian): dense svdvals of the explicit Jacobian as the oracle, every value
    # above the rank tolerance to 1e-8 relative.  Four modules suffice for these prefixes.
    torch.manual_seed(22)
    model = zoo.wide_cifar().eval()[:4]
    x = torch.rand(3, 32, 32)
    layers = spectra(model, x)
    for depth in (0, 3):
        reference = _jacrev_spectrum(model, x, depth, forward=True)
        _assert_close_above_tolerance(layers[depth], reference, rtol=1e-8)


def test_device_pair_update_matches_lapack_on_cpu_tensors():
    # The GPU route of relu_pair_singular_values is torch-only: check it on CPU tensors.
    rng = np.random.default_rng(7)
    J = rng.standard_normal((50, 12))
    keep = rng.random(50) < 0.6
    keep[:15] = True  # more than n kept rows, as the update needs
    with_all, with_kept = jacobian_svd._device_pair_svdvals(
        torch.tensor(J.T.copy()), torch.tensor(keep), torch.tensor(~keep)
    )
    np.testing.assert_allclose(with_all, scipy.linalg.svdvals(J), atol=1e-12)
    np.testing.assert_allclose(with_kept, scipy.linalg.svdvals(J[keep]), atol=1e-12)


def test_internal_route_finds_nan_through_the_triangular_factor():
    # spectra() skips the scan of the large J for NaN; the factor carries it (Householder norms).
    rng = np.random.default_rng(8)
    Jt = torch.tensor(rng.standard_normal((6, 40)))
    Jt[2, 17] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        jacobian_svd.transposed_pending(Jt, None).result()
    Jt[2, 17] = float("inf")
    keep = torch.tensor(rng.random(40) < 0.7)
    with pytest.raises(ValueError, match="NaN or infinite"):
        jacobian_svd.relu_pair_pending(Jt, keep, None)
