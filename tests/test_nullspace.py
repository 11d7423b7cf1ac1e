"""The equality factorisation of Theorem 4's step 1 (``reluinv._nullspace``) against SVD oracles:
rank, a minimum-norm particular solution and an orthonormal null-space basis."""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import lapack

from reluinv import _nullspace
from reluinv._nullspace import EqualityFactor, wide_from_lu


def unit_rows(M):
    return M / np.linalg.norm(M, axis=1, keepdims=True)


def wide_system(n, gap, seed, decay):
    """``(E, rng)``: ``p = max(1, n - gap)`` unit rows in R^n whose singular values before the
    row scaling span ``decay`` decades, and the generator that drew them."""
    p = max(1, n - gap)
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((p, p)))
    V, _ = np.linalg.qr(rng.standard_normal((n, p)))
    return unit_rows(U @ np.diag(np.logspace(0, -decay, p)) @ V.T), rng


def assert_matches_svd(f, E, e, rank):
    """rank, x_p = pinv(E) e and O spanning N(E) orthonormally, checked against the SVD.

    Both are compared with the SVD's to within what a backward-stable solver guarantees: an error
    of ``1e3 * cond * eps`` relative to the norm (``cond`` of the rank rows' singular values), not
    entry by entry.  With singular values over 6 decades an entry of 7.4 in an x_p of norm 1e5 once
    differed from the SVD's in its 7th digit (2.4e-6: 2e-11 of the norm)."""
    assert f.rank == rank
    null = scipy.linalg.null_space(E)
    O = f.basis.matrix()
    assert O.shape == null.shape
    s = np.linalg.svd(E, compute_uv=False)[:rank]
    bound = 1e3 * (s[0] / s[-1] if rank else 1.0) * np.finfo(float).eps
    np.testing.assert_allclose(O.T @ O, np.eye(O.shape[1]), atol=1e-12)
    np.testing.assert_allclose(O @ O.T, null @ null.T, atol=max(1e-10, bound))  # the same subspace
    x_star = np.linalg.pinv(E) @ e
    assert np.linalg.norm(f.x_p - x_star) <= bound * np.linalg.norm(x_star) + 1e-12


#: Sizes and seeds of :func:`wide_system` for hypothesis.
WIDE_SYSTEMS = {"n": st.integers(2, 50), "gap": st.integers(1, 20), "seed": st.integers(0, 2**31 - 1)}


@settings(max_examples=60, deadline=None)
@given(**WIDE_SYSTEMS, decay=st.sampled_from([0.0, 2.0, 6.0]))
def test_wide_lu_factor_matches_the_svd(n, gap, seed, decay):
    """Random wide systems, some with singular values spread over up to 6 decades."""
    E, rng = wide_system(n, gap, seed, decay)
    p = E.shape[0]
    e = rng.standard_normal(p)
    f = EqualityFactor(E, e)
    assert_matches_svd(f, E, e, p)


def test_pivoting_picks_other_columns_when_the_leading_ones_are_singular():
    """The first p columns of E are zero: an LU without pivoting would break down."""
    rng = np.random.default_rng(0)
    E = np.zeros((5, 12))
    E[:, 5:] = rng.standard_normal((5, 7))
    E = unit_rows(E)
    e = rng.standard_normal(5)
    lu, piv, _ = lapack.dgetrf(E.T)
    solved = wide_from_lu(E, e, lu, piv)
    assert solved is not None
    f = EqualityFactor(E, e)
    assert_matches_svd(f, E, e, 5)


def test_rank_deficient_rows_go_to_the_pivoted_qr():
    rng = np.random.default_rng(1)
    B = rng.standard_normal((4, 10))
    E = unit_rows(np.vstack([B, B[:2].sum(axis=0)]))  # 5 rows of rank 4
    e = E @ rng.standard_normal(10)  # consistent
    lu, piv, _ = lapack.dgetrf(E.T)
    assert wide_from_lu(E, e, lu, piv) is None
    f = EqualityFactor(E, e)
    assert f.rank == 4 == np.linalg.matrix_rank(E)
    np.testing.assert_allclose(E @ f.x_p, e, atol=1e-10)
    np.testing.assert_allclose(E @ f.basis.matrix(), 0.0, atol=1e-12)


def test_an_ill_conditioned_null_basis_is_left_to_the_pivoted_qr(monkeypatch):
    """When the Cholesky QR step is refused, the pivoted QR gives the same answer."""
    rng = np.random.default_rng(2)
    E = unit_rows(rng.standard_normal((6, 15)))
    e = rng.standard_normal(6)
    calls = []
    pivoted = EqualityFactor._pivoted
    monkeypatch.setattr(EqualityFactor, "_pivoted", lambda self, *a: calls.append(1) or pivoted(self, *a))
    assert_matches_svd(EqualityFactor(E, e), E, e, 6)
    assert calls == []
    monkeypatch.setattr(_nullspace, "_CHOLQR_RCOND", 2.0)  # no factor passes
    assert_matches_svd(EqualityFactor(E, e), E, e, 6)
    assert calls == [1]


@pytest.mark.parametrize("p", [1, 9, 10])
def test_tall_and_square_and_single_row_systems(p):
    rng = np.random.default_rng(p)
    n = 10 if p < 10 else 9
    E = unit_rows(rng.standard_normal((p if p != 10 else 14, n)))
    x = rng.standard_normal(n)
    e = E @ x
    f = EqualityFactor(E, e)
    assert_matches_svd(f, E, e, min(E.shape))


@pytest.mark.parametrize("seed", range(12))
def test_convolution_rows_rank_and_null_space_match_the_svd(seed):
    """Sparse, structured rows (a convolution's active units), some with dependent filters."""
    import torch

    from reluinv.preimage import affine_matrix

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    channels_in, channels_out = int(rng.integers(1, 4)), int(rng.integers(2, 6))
    conv = torch.nn.Conv2d(
        channels_in, channels_out, int(rng.integers(1, 4)), stride=int(rng.integers(1, 3)), padding=1
    ).double()
    if seed % 3 == 0:
        with torch.no_grad():
            conv.weight[0] = 2 * conv.weight[-1]  # dependent rows
    A, b, _ = affine_matrix(conv, (channels_in, 8, 8))
    x = rng.standard_normal(A.shape[1])
    active = (A @ x + b > 0) & (np.linalg.norm(A, axis=1) > 0)
    E = unit_rows(A[active])
    e = E @ x
    f = EqualityFactor(E, e)
    rank = np.linalg.matrix_rank(E)
    if rank == min(E.shape):
        assert_matches_svd(f, E, e, rank)
    else:  # the null space is as well defined as the gap below sigma_rank allows: check it holds
        O = f.basis.matrix()
        assert f.rank == rank and O.shape == (E.shape[1], E.shape[1] - rank)
        np.testing.assert_allclose(O.T @ O, np.eye(O.shape[1]), atol=1e-12)
        np.testing.assert_allclose(E @ O, 0.0, atol=1e-10)
        np.testing.assert_allclose(E @ f.x_p, e, atol=1e-10)


@settings(max_examples=80, deadline=None)
@given(**WIDE_SYSTEMS, decay=st.sampled_from([0.0, 3.0, 8.0]))
def test_the_randomised_estimate_of_the_inverse_norm_is_close_below_it(n, gap, seed, decay):
    """``|E1^{-1}|_2`` of the square block the LU picks, against its smallest singular value:
    never above it (beyond rounding), and well within a factor 5 below it (2.3 at worst over
    3000 random cases)."""
    E, _ = wide_system(n, gap, seed, decay)
    p = E.shape[0]
    lu, piv, _ = lapack.dgetrf(E.T)
    perm = np.arange(n)
    for i, j in enumerate(piv[:p].tolist()):
        perm[i], perm[j] = perm[j], perm[i]
    E1 = E[:, perm[:p]]
    estimate = _nullspace._inverse_norm_estimate(lu, np.linalg.solve(E1, _nullspace._probes(p)))
    norm = 1.0 / np.linalg.svd(E1, compute_uv=False)[-1]
    assert norm / 5 <= estimate <= norm * (1 + 1e-6)


def test_a_nearly_singular_square_block_is_refused():
    """Singular values down to 1e-14 (far below the rank rule): no LU certificate."""
    rng = np.random.default_rng(3)
    U, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    V, _ = np.linalg.qr(rng.standard_normal((45, 30)))
    E = unit_rows(U @ np.diag(np.r_[np.ones(29), 1e-14]) @ V.T)
    lu, piv, _ = lapack.dgetrf(E.T)
    assert wide_from_lu(E, rng.standard_normal(30), lu, piv) is None


@pytest.mark.parametrize("deficient", [False, True])
def test_with_a_source_the_lu_works_in_place_and_the_fallback_gets_a_fresh_copy(deficient):
    """``source``: the LU overwrites the E it was given; a pivoted QR after a refused LU factors
    ``source()``, so the answers equal those of a factorisation that copies."""
    rng = np.random.default_rng(7)
    B = rng.standard_normal((6, 14))
    E = unit_rows(np.vstack([B, B[:2].sum(axis=0)]) if deficient else B)
    e = E @ rng.standard_normal(14)
    given, sources = E.copy(), []
    f = EqualityFactor(given, e, source=lambda: sources.append(1) or E.copy())
    copying = EqualityFactor(E, e)
    assert not np.array_equal(given, E)  # overwritten by the LU
    assert sources == ([1] if deficient else [])
    assert f.rank == copying.rank == np.linalg.matrix_rank(E)
    np.testing.assert_allclose(f.x_p, copying.x_p, atol=1e-12)
    np.testing.assert_allclose(E @ f.basis.matrix(), 0.0, atol=1e-12)
    assert f.basis.k == E.shape[1] - f.rank


@settings(max_examples=40, deadline=None)
@given(**WIDE_SYSTEMS, decay=st.sampled_from([0.0, 3.0]), spread=st.sampled_from([0.0, 3.0, 8.0]))
def test_row_scales_passed_alongside_give_the_scaled_systems_answer(n, gap, seed, decay, spread):
    """``row_scale``: rows given at other norms (spanning ``spread`` decades) with the scales
    that make them E's unit rows factor as E itself does, against E's SVD; the LU then never
    sees the scaled rows, only its solves do."""
    E, rng = wide_system(n, gap, seed, decay)
    p = E.shape[0]
    e = rng.standard_normal(p)
    norms = 10.0 ** rng.uniform(-spread / 2, spread / 2, p)
    raw = E * norms[:, None]
    f = EqualityFactor(raw.copy(), e, source=E.copy, row_scale=1.0 / norms)
    assert_matches_svd(f, E, e, p)
    lu, piv, _ = lapack.dgetrf(raw.T)
    scaled, unscaled = wide_from_lu(E, e, lu, piv, 1.0 / norms), wide_from_lu(E, e, *lapack.dgetrf(E.T)[:2])
    assert (scaled is None) == (unscaled is None)
    if scaled is not None and unscaled is not None:
        assert scaled[2] == pytest.approx(unscaled[2], rel=1e-6)  # the same rcond estimate


@pytest.mark.parametrize("shape", [(12, 9), (7, 7), (5, 12)])
def test_row_scales_of_tall_square_and_deficient_systems(shape):
    """Where the LU of ``E^T`` is not the factorisation (p >= n, or dependent rows), the rows are
    scaled before the others see them."""
    rng = np.random.default_rng(shape[0])
    B = rng.standard_normal(shape)
    if shape == (5, 12):
        B[-1] = B[0] + B[1]  # rank 4: the pivoted QR decides
    E = unit_rows(B)
    x = rng.standard_normal(shape[1])
    e = E @ x
    norms = 10.0 ** rng.uniform(-3, 3, shape[0])
    f = EqualityFactor(E * norms[:, None], e, row_scale=1.0 / norms)
    rank = np.linalg.matrix_rank(E)
    assert f.rank == rank
    np.testing.assert_allclose(E @ f.x_p, e, atol=1e-10)
    O = f.basis.matrix()
    np.testing.assert_allclose(E @ O, 0.0, atol=1e-10)
    assert O.shape[1] == shape[1] - rank
