"""Tests for reluinv.stability: spectra against independent oracles, Lemma 8, Lemma 9 (A5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reluinv import zoo
from reluinv.network import activation_pattern, linearize
from reluinv.stability import (
    check_lemma8,
    golub_kahan,
    lemma9_counts,
    lemma9_curve,
    relu_effect,
    singular_values,
    spectra,
    staircase_r,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


def _dense_reference(model: nn.Module, x, layer_index: int) -> np.ndarray:
    J, _ = linearize(model, x, upto=layer_index + 1)
    return np.linalg.svd(J, compute_uv=False)


def _small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return zoo.thin_cifar(in_channels=2, image_size=8).eval()


# ------------------------------------------------------------------ independent oracles


def test_linear_network_with_constructed_svd():
    rng = np.random.default_rng(0)
    n, r, m = 7, 5, 9
    s1 = np.array([5.0, 3.0, 2.0, 0.5, 0.25])
    s2 = np.array([2.0, 1.5, 1.0, 4.0, 0.1])
    V = _orthonormal(rng, n, r)
    Q = _orthonormal(rng, r, r)
    U = _orthonormal(rng, m, r)
    net = nn.Sequential(nn.Linear(n, r), nn.Linear(r, m)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(Q @ np.diag(s1) @ V.T))
        net[1].weight.copy_(torch.from_numpy(U @ np.diag(s2) @ Q.T))
    layers = spectra(net, rng.standard_normal(n))
    assert [layer.name for layer in layers] == ["0:Linear", "1:Linear"]
    np.testing.assert_allclose(layers[0].singular_values, np.sort(s1)[::-1], rtol=1e-13)
    expected = np.r_[np.sort(s1 * s2)[::-1], 0.0, 0.0]  # 9 x 7 of rank 5: two zero singular values
    np.testing.assert_allclose(layers[1].singular_values, expected, rtol=1e-13, atol=1e-13)
    assert layers[1].rank == 5 and layers[1].out_dim == 9 and layers[1].in_dim == 7
    assert layers[0].condition == pytest.approx(5.0 / 0.25)
    assert layers[0].singular_values.dtype == np.float64


@pytest.mark.parametrize(("c_in", "c_out", "size", "kernel"), [(2, 3, 8, 3), (3, 2, 6, 5)])
def test_circular_convolution_matches_per_frequency_matrices(c_in, c_out, size, kernel):
    # Sedghi et al. (2018): a stride-1 circular convolution is block-diagonalised by the 2-d DFT;
    # its singular values are those of the c_out x c_in matrices of the kernel's transfer function.
    torch.manual_seed(c_in * 10 + kernel)
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular", bias=True)
    w = conv.weight.detach().double().numpy()
    pad = kernel // 2
    # torch computes cross-correlation y[i] = sum_a w[a] x[i + a - pad]: place w[a] at offset a - pad.
    embedded = np.zeros((c_out, c_in, size, size))
    for a in range(kernel):
        for b in range(kernel):
            embedded[:, :, (a - pad) % size, (b - pad) % size] += w[:, :, a, b]
    # Cross-correlation multiplies each frequency by the conjugate transfer function.
    transfer = np.conj(np.fft.fft2(embedded, axes=(2, 3)))
    expected = np.concatenate(
        [np.linalg.svd(transfer[:, :, u, v], compute_uv=False) for u in range(size) for v in range(size)]
    )
    layers = spectra(nn.Sequential(conv), torch.randn(c_in, size, size))
    np.testing.assert_allclose(
        layers[0].singular_values, np.sort(expected)[::-1], rtol=0, atol=1e-12 * expected.max()
    )


def test_rank_is_bounded_by_the_fewest_active_units_along_the_chain():
    net = _small_cnn(1)
    x = torch.rand(2, 8, 8)
    layers = spectra(net, x)
    pattern = activation_pattern(net, x)
    bound = 2 * 8 * 8
    for layer in layers:
        bound = min(bound, layer.out_dim)
        if layer.index in pattern:
            bound = min(bound, layer.out_dim - pattern[layer.index].size)
        assert layer.rank <= bound, layer.name


def test_dense_spectra_match_lapack_on_the_linearisation():
    net = _small_cnn(2)
    x = torch.rand(2, 8, 8)
    layers = spectra(net, x)
    assert len(layers) == len(net)
    for layer in layers:
        reference = _dense_reference(net, x, layer.index)
        assert layer.singular_values.shape == reference.shape
        assert np.all(np.diff(layer.singular_values) <= 0)
        np.testing.assert_allclose(layer.singular_values, reference, rtol=0, atol=1e-8 * reference[0])
        assert layer.rank == np.count_nonzero(reference > layer.rank_tolerance)
        assert layer.rank_tolerance == pytest.approx(
            max(layer.out_dim, layer.in_dim) * np.finfo(float).eps * reference[0]
        )


def test_mlp_spectra_and_identity_steps():
    torch.manual_seed(3)
    net = zoo.mlp_table1(in_features=12, width=10, depth=3, classes=4).eval()
    x = torch.randn(12)
    layers = spectra(net, x)
    assert layers[0].name == "0:Flatten"
    np.testing.assert_array_equal(layers[0].singular_values, np.ones(12))
    for layer in layers:
        np.testing.assert_allclose(layer.singular_values, _dense_reference(net, x, layer.index), atol=1e-12)


def test_staircase_factor_has_the_singular_values_of_a_convolution_jacobian():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(3, 12, 12)
    J, _ = linearize(net, x)
    # Pixel-major columns give the staircase profile the factorisation exploits.
    pixel_major = np.arange(J.shape[1]).reshape(3, 12, 12).transpose(1, 2, 0).reshape(-1)
    J = J[:, pixel_major]
    for block_rows in (64, 1024):
        R = staircase_r(J, block_rows=block_rows)
        assert R.shape[0] <= J.shape[1]
        np.testing.assert_allclose(
            np.linalg.svd(R, compute_uv=False),
            np.linalg.svd(J, compute_uv=False),
            atol=1e-12 * np.abs(J).max(),
        )


def test_singular_values_drops_zero_rows_and_pads():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((6, 4))
    A[[1, 3, 4]] = 0.0
    expected = np.linalg.svd(A, compute_uv=False)
    np.testing.assert_allclose(singular_values(A), expected, atol=1e-14)
    np.testing.assert_allclose(singular_values(A.T.copy(), transposed=True), expected, atol=1e-14)
    np.testing.assert_array_equal(singular_values(np.zeros((3, 2))), np.zeros(2))


def test_zero_jacobian_has_rank_zero_and_nan_condition():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    layers = spectra(net, torch.zeros(3))
    assert layers[1].rank == 0 and math.isnan(layers[1].condition)
    np.testing.assert_array_equal(layers[1].singular_values, np.zeros(3))


# ------------------------------------------------------------------ windows


def test_window_spectrum_is_that_of_the_window_columns():
    net = _small_cnn(6)
    x = torch.rand(2, 8, 8)
    window = (2, 3, 3, 4)
    columns = np.arange(128).reshape(2, 8, 8)[:, 2:5, 3:7].reshape(-1)
    layers = spectra(net, x, window=window)
    chunked = spectra(net, x, window=window, batch_bytes=64 * 1024)  # forces the chunked path
    for layer, other in zip(layers, chunked, strict=True):
        J, _ = linearize(net, x, upto=layer.index + 1)
        reference = np.linalg.svd(J[:, columns], compute_uv=False)
        assert layer.in_dim == 24
        np.testing.assert_allclose(layer.singular_values, reference, atol=1e-12 * max(reference[0], 1e-300))
        np.testing.assert_allclose(
            other.singular_values, layer.singular_values, atol=1e-12 * max(reference[0], 1e-300)
        )


def test_bad_windows_are_refused():
    net = _small_cnn(0)
    with pytest.raises(
        ValueError, match=r"window \(top=6, left=0, height=3, width=2\) must lie inside the 8 x 8 input"
    ):
        spectra(net, torch.rand(2, 8, 8), window=(6, 0, 3, 2))
    with pytest.raises(ValueError, match=r"window must be \(top, left, height, width\)"):
        spectra(net, torch.rand(2, 8, 8), window=(1, 2))
    with pytest.raises(ValueError, match=r"window needs an image input of shape \(C, H, W\)"):
        spectra(zoo.toy_circles(), [0.0, 1.0], window=(0, 0, 1, 1))


# ------------------------------------------------------------------ Lanczos


def test_lanczos_matches_dense_on_small_networks():
    net = _small_cnn(7)
    x = torch.rand(2, 8, 8)
    dense = spectra(net, x)
    lanczos = spectra(net, x, method="lanczos", k=3)
    for d, lz in zip(dense, lanczos, strict=True):
        nonzero = d.singular_values[d.singular_values > d.rank_tolerance]
        scale = nonzero[0]
        assert lz.method == "lanczos" and lz.largest.size == 3 and lz.smallest.size == 3 and lz.converged
        np.testing.assert_allclose(lz.largest, nonzero[:3], atol=1e-8 * scale)
        np.testing.assert_allclose(lz.smallest, nonzero[-3:], atol=1e-8 * scale)
        if lz.complete:
            assert lz.rank == d.rank
            np.testing.assert_allclose(lz.singular_values, d.singular_values, atol=1e-8 * scale)


def test_lanczos_with_few_steps_bounds_the_smallest_from_above():
    net = _small_cnn(8)
    x = torch.rand(2, 8, 8)
    dense = spectra(net, x)
    lanczos = spectra(net, x, method="lanczos", k=2, max_steps=25)
    for d, lz in zip(dense, lanczos, strict=True):
        nonzero = d.singular_values[d.singular_values > d.rank_tolerance]
        assert lz.steps <= 25
        # Ritz values of J restricted to a subspace of its row space interlace: never below the
        # smallest non-zero singular value, never above the largest.
        assert lz.smallest[-1] >= nonzero[-1] * (1 - 1e-10)
        assert lz.largest[0] <= nonzero[0] * (1 + 1e-10)
        if not lz.complete:
            assert lz.rank is None
    np.testing.assert_allclose(lanczos[0].largest, dense[0].singular_values[:2], rtol=1e-4)  # converging


def test_golub_kahan_skips_the_null_space_and_finds_repeated_values():
    rng = np.random.default_rng(9)
    s = np.array([3.0, 2.0, 2.0, 2.0, 1e-3, 0.0, 0.0])  # a null space and a triple value
    U, V = _orthonormal(rng, 9, 7), _orthonormal(rng, 7, 7)
    J = torch.from_numpy(U @ np.diag(s) @ V.T)
    result = golub_kahan(lambda v: J @ v, lambda u: J.T @ u, (9, 7), k=2, max_steps=50)
    assert result.exhausted
    np.testing.assert_allclose(result.ritz_values, s[:5], atol=1e-13)


def test_lanczos_window_matches_dense_window():
    net = _small_cnn(10)
    x = torch.rand(2, 8, 8)
    dense = spectra(net, x, window=(0, 0, 4, 4))
    lanczos = spectra(net, x, window=(0, 0, 4, 4), method="lanczos", k=2)
    for d, lz in zip(dense, lanczos, strict=True):
        nonzero = d.singular_values[d.singular_values > d.rank_tolerance]
        np.testing.assert_allclose(lz.largest, nonzero[:2], atol=1e-8 * nonzero[0])
        np.testing.assert_allclose(lz.smallest, nonzero[-2:], atol=1e-8 * nonzero[0])


# ------------------------------------------------------------------ Lemma 8


@st.composite
def matrices_and_preactivation_sets(draw):
    m = draw(st.integers(1, 9))
    n = draw(st.integers(1, 7))
    rank = draw(st.integers(0, min(m, n)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) if rank else np.zeros((m, n))
    x = rng.standard_normal(n)
    b = rng.standard_normal(m) * draw(st.sampled_from([0.0, 0.5, 2.0]))
    inactive = np.flatnonzero(A @ x + b <= 0)  # admissible by construction (Definition 7)
    return A, inactive


@settings(max_examples=150, deadline=None)
@given(matrices_and_preactivation_sets())
def test_lemma8_bounds_always_hold(case):
    A, inactive = case
    result = check_lemma8(A, inactive)
    assert result.holds, result
    assert result.removed == inactive.size
    assert result.k == result.n_nonzero - inactive.size


def test_lemma8_reports_both_sides():
    A = np.diag([3.0, 2.0, 1.0])
    result = check_lemma8(A, [0])
    assert result.n_nonzero == 3 and result.k == 2
    assert result.smallest_nonzero == pytest.approx(1.0) and result.smallest_bound == pytest.approx(2.0)
    assert result.largest == pytest.approx(2.0) and result.largest_bound == pytest.approx(3.0)
    assert result.holds
    everything = check_lemma8(A, np.ones(3, dtype=bool))
    assert (
        math.isnan(everything.smallest_nonzero) and everything.smallest_bound == math.inf and everything.holds
    )


def test_lemma8_rejects_bad_index_sets():
    with pytest.raises(ValueError, match=r"I has indices outside \[0, 3\)"):
        check_lemma8(np.eye(3), [3])
    with pytest.raises(ValueError, match=r"I as a boolean mask must have shape \(3,\)"):
        check_lemma8(np.eye(3), np.array([True, False]))
    with pytest.raises(ValueError, match=r"A contains 1 NaN or infinite entry"):
        check_lemma8(np.array([[np.nan, 1.0]]), [])


# ------------------------------------------------------------------ Lemma 9 / Appendix A5


def test_lemma9_counts_on_figure_3_like_rows():
    # Two strongly correlated remaining rows and one removed row almost orthogonal to them.
    A = np.array([[1.0, 0.0], [1.0, 0.1], [0.05, 1.0]])
    curve = lemma9_counts(A, [2], np.array([0.0, 0.1, 0.2, 0.5]), with_singular_values=True)
    M = 2
    correlations = np.abs(A[:2] @ A[2]) * math.sqrt(M) / np.linalg.norm(A[2])
    assert curve.remaining == M and curve.removed == 1 and curve.best_k == 2
    assert curve.c_star == pytest.approx(correlations.max())
    np.testing.assert_array_equal(curve.counts, [(correlations <= c).sum() for c in curve.cs])
    assert curve.best_k_in_row_space
    # Lemma 9: sigma_min(D_I A) <= c_star when a_k lies in the row space of the remaining rows.
    assert curve.sigma_min_after <= curve.c_star


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6), st.integers(3, 12))
def test_lemma9_bound_holds_whenever_its_hypothesis_does(seed, n, m):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    inactive = np.flatnonzero(A @ rng.standard_normal(n) + rng.standard_normal(m) <= 0)
    curve = lemma9_counts(A, inactive, np.linspace(0, 5, 11), with_singular_values=True)
    assert np.all(np.diff(curve.counts) >= 0) and np.all(curve.counts <= curve.remaining)
    if curve.best_k_in_row_space and not math.isnan(curve.c_star):
        assert curve.sigma_min_after <= curve.c_star * (1 + 1e-10)


def test_lemma9_curve_uses_the_pre_activation_linearisation():
    net = _small_cnn(11)
    x = torch.rand(2, 8, 8)
    cs = np.linspace(0, 20, 41)
    curve = lemma9_curve(net, x, 3, cs)
    A, _ = linearize(net, x, upto=3)
    direct = lemma9_counts(A, activation_pattern(net, x)[3], cs, with_singular_values=True)
    assert curve.layer == 3
    np.testing.assert_array_equal(curve.counts, direct.counts)
    assert curve.c_star == direct.c_star and curve.remaining == direct.remaining
    assert np.all(curve.counts[cs >= curve.c_star] == curve.remaining)
    with pytest.raises(ValueError, match=r"layer must be the module index of a ReLU, one of \[1, 3,"):
        lemma9_curve(net, x, 2, cs)


# ------------------------------------------------------------------ effect of one ReLU


def test_relu_effect_pairs_spectra_around_each_relu():
    net = _small_cnn(12)
    x = torch.rand(2, 8, 8)
    effects = relu_effect(net, x)
    layers = {layer.index: layer for layer in spectra(net, x)}
    assert [e.index for e in effects] == [1, 3, 5, 7, 9, 11, 14]
    for effect in effects:
        np.testing.assert_array_equal(effect.after.singular_values, layers[effect.index].singular_values)
        np.testing.assert_array_equal(effect.before.singular_values, layers[effect.index - 1].singular_values)
        assert effect.removed + effect.remaining == effect.after.out_dim
        assert effect.after.rank <= effect.before.rank
        assert effect.after.singular_values[0] <= effect.before.singular_values[0] * (1 + 1e-12)  # Lemma 8


# ------------------------------------------------------------------ bad input


def test_spectra_rejects_bad_options_and_inputs():
    net = _small_cnn(0)
    with pytest.raises(ValueError, match=r"method must be 'dense' or 'lanczos', got 'svd'"):
        spectra(net, torch.rand(2, 8, 8), method="svd")
    with pytest.raises(ValueError, match=r"k must be a positive integer, got 0"):
        spectra(net, torch.rand(2, 8, 8), method="lanczos", k=0)
    x = torch.rand(2, 8, 8)
    x[0, 3, 4] = math.nan
    with pytest.raises(ValueError, match=r"x contains 1 NaN or infinite entry"):
        spectra(net, x)
    with pytest.raises(
        ValueError, match=r"module 0 \(Conv2d\) cannot take a per-sample input of shape \(1, 2, 8\)"
    ):
        spectra(net, torch.rand(1, 2, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(C, H, W\) or \(1, C, H, W\)"):
        spectra(net, torch.rand(16, 8))
    with pytest.raises(ValueError, match=r"module '1' \(Sigmoid\) is not supported"):
        spectra(nn.Sequential(nn.Conv1d(2, 2, 1), nn.Sigmoid()), torch.rand(2, 8))


# ------------------------------------------------------------------ slow / CUDA


@pytest.mark.slow
def test_thin_cifar_spectra_match_lapack():
    torch.manual_seed(13)
    net = zoo.thin_cifar().eval()
    x = torch.rand(3, 32, 32)
    for layer in spectra(net, x):
        if layer.index in (0, 3, 10, 15):
            reference = _dense_reference(net, x, layer.index)
            np.testing.assert_allclose(layer.singular_values, reference, atol=1e-8 * reference[0])


@pytest.mark.cuda
def test_cuda_spectra_match_cpu():
    net = _small_cnn(14)
    x = torch.rand(2, 8, 8)
    cpu = spectra(net, x)
    gpu = spectra(net.cuda(), x.cuda())
    window_cpu = spectra(net.cpu(), x, window=(1, 1, 4, 5))
    window_gpu = spectra(net.cuda(), x.cuda(), window=(1, 1, 4, 5), batch_bytes=64 * 1024)
    for a, b in list(zip(cpu, gpu, strict=True)) + list(zip(window_cpu, window_gpu, strict=True)):
        scale = max(a.singular_values[0], 1e-300)
        np.testing.assert_allclose(b.singular_values, a.singular_values, atol=1e-8 * scale)
        assert a.rank == b.rank


@pytest.mark.cuda
def test_cuda_lanczos_matches_cpu():
    net = _small_cnn(15)
    x = torch.rand(2, 8, 8)
    cpu = spectra(net, x, method="lanczos", k=2)
    gpu = spectra(net.cuda(), x.cuda(), method="lanczos", k=2)
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(b.largest, a.largest, rtol=1e-8)
        np.testing.assert_allclose(b.smallest, a.smallest, atol=1e-8 * a.largest[0])


def test_split_modules_keep_every_name_importable_from_stability():
    import reluinv
    from reluinv import jacobian_svd, lanczos, layer_spectrum, lemmas, stability

    homes = {
        "LayerSpectrum": layer_spectrum,
        "rank_tolerance": layer_spectrum,
        "golub_kahan": lanczos,
        "Bidiagonalisation": lanczos,
        "check_lemma8": lemmas,
        "lemma9_counts": lemmas,
        "lemma9_curve": lemmas,
        "Lemma8Check": lemmas,
        "Lemma9Curve": lemmas,
        "singular_values": jacobian_svd,
        "staircase_r": jacobian_svd,
    }
    for name, home in homes.items():
        assert getattr(stability, name) is getattr(home, name), name
        assert name in stability.__all__
    for name in ("LayerSpectrum", "check_lemma8", "lemma9_curve", "relu_effect", "spectra"):
        assert getattr(reluinv, name) is getattr(stability, name)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_prefix_jacobians_on_cropped_rows_match_jacrev():
    # The tangent batch's convolutions run only on the rows each chunk of 32 tangents can reach
    # (reluinv._row_crop): strides, dilation, asymmetric kernels, "same" padding, groups, batch
    # norm, dropout and a ragged last chunk, against torch.func.jacrev of every prefix.
    import copy

    from reluinv._row_crop import ROW_CHUNK, chunk_rows
    from reluinv.layer_spectrum import input_columns
    from reluinv.network import prepare_input, slopes
    from reluinv.stability import _prefix_jacobians

    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(2, 0), dilation=(2, 1)),
        nn.ReLU(),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3, padding="same", groups=2),
        nn.Dropout(0.5),
        nn.LeakyReLU(0.1),
        nn.Conv2d(4, 4, 2, padding="same"),  # even kernel: the odd padding row/column at the end
        nn.Conv2d(4, 2, (2, 3), stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(24, 5),
    )
    model[2].running_mean.uniform_(-1, 1)
    model[2].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.rand(3, 13, 7)
    sample, chain = prepare_input(model, x)
    columns = input_columns(tuple(sample.shape), None)
    lo, hi = chunk_rows(columns, tuple(sample.shape))
    assert columns.size % ROW_CHUNK and np.all(hi - lo <= 2)  # ragged; each chunk on <= 3 rows
    prefixes = _prefix_jacobians(
        chain, slopes(chain, sample), tuple(sample.shape), columns, sample.device, 1 << 30
    )
    reference = copy.deepcopy(model).double()
    # Each J^T is checked before the generator resumes: activations scale the batch in place.
    for depth, (_, jacobian_t) in enumerate(prefixes):
        prefix = reference[: depth + 1]
        J = torch.func.jacrev(lambda v, p=prefix: p(v[None]).reshape(-1))(x.double()).reshape(-1, x.numel())
        expected = J[:, torch.as_tensor(columns)].T.detach().numpy()
        if jacobian_t is None:  # the step left J unchanged: the previous prefix's J
            continue
        np.testing.assert_allclose(jacobian_t.numpy(), expected, atol=1e-13, err_msg=f"prefix {depth}")
