"""Omnidirectionality (Definition 1, Theorem 5, Corollary 6) against independent checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import reluinv
from reluinv.geometry import RowSource, omnidirectional_certificate


def brute_force_omni(A: np.ndarray) -> bool:
    """Corollary 2 iv by LPs alone: A is omnidirectional iff no d != 0 has A d <= 0, i.e. iff
    for every coordinate j and sign, max +-d_j over {A d <= 0, |d| <= 1} is 0."""
    m, n = A.shape
    for j in range(n):
        for sign in (1.0, -1.0):
            c = np.zeros(n)
            c[j] = -sign
            res = linprog(c, A_ub=A, b_ub=np.zeros(m), bounds=[(-1, 1)] * n, method="highs")
            assert res.status == 0
            if -res.fun > 1e-7:
                return False
    return True


def check_certificate(A, cert):
    A = np.asarray(A, float)
    if cert.omnidirectional:
        rows = A[cert.rows]
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        assert np.all(cert.multipliers > 0)
        assert np.abs(rows.T @ cert.multipliers).max() <= 1e-7 * cert.multipliers.sum()
        assert np.linalg.matrix_rank(rows) == A.shape[1]
    else:
        d = cert.direction
        assert abs(np.linalg.norm(d) - 1) < 1e-9
        unit = A[np.linalg.norm(A, axis=1) > 0]
        unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
        assert (unit @ d).max(initial=0.0) <= 1e-7


def test_square_cross_is_omnidirectional():
    assert reluinv.is_omnidirectional([[1, 0], [-1, 0], [0, 1], [0, -1]])


def test_hull_boundary_is_not_omnidirectional():
    # 0 = (a_1 + a_2) / 2 lies in conv(rows), so the printed LP of Appendix A3 accepts it,
    # but every row has <a_i, (0, -1)> <= 0.
    A = [[1, 0], [-1, 0], [0, 1]]
    cert = omnidirectional_certificate(A)
    assert not cert.omnidirectional
    check_certificate(A, cert)
    assert cert.margin == 0.0  # a decision on the boundary is reported as such


def test_simplex_is_omnidirectional_with_positive_multipliers():
    A = [[1, 0], [-1, -1], [-1, 1]]
    cert = omnidirectional_certificate(A)
    assert cert.omnidirectional
    check_certificate(A, cert)


@pytest.mark.parametrize("m,n", [(1, 1), (2, 2), (3, 3), (3, 5)])
def test_corollary6_few_rows_never_omnidirectional(m, n):
    A = np.random.default_rng(m * 10 + n).standard_normal((m, n))
    cert = omnidirectional_certificate(A)
    assert not cert.omnidirectional
    assert "Corollary 6" in cert.reason
    check_certificate(A, cert)


def test_rank_deficient_rows_are_not_omnidirectional():
    # 0 is a strictly positive combination, but all rows lie in a plane of R^3.
    A = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]]
    cert = omnidirectional_certificate(A)
    assert not cert.omnidirectional
    check_certificate(A, cert)


def test_one_dimensional():
    assert reluinv.is_omnidirectional([[2.0], [-0.5]])
    assert not reluinv.is_omnidirectional([[2.0], [0.5], [3.0]])


def test_bad_input():
    with pytest.raises(ValueError, match="2-dimensional"):
        reluinv.is_omnidirectional([1.0, 2.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        reluinv.is_omnidirectional([[1.0, np.nan], [0, 1]])


def test_many_rows():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3000, 20))
    cert = omnidirectional_certificate(A)
    assert cert.omnidirectional
    check_certificate(A, cert)
    # the same rows pushed into a half-space are not omnidirectional
    B = A.copy()
    B[:, 0] = np.abs(B[:, 0]) + 0.01
    cert = omnidirectional_certificate(B)
    assert not cert.omnidirectional
    check_certificate(B, cert)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    m=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    integer=st.booleans(),
)
def test_matches_brute_force(n, m, seed, integer):
    rng = np.random.default_rng(seed)
    A = rng.integers(-2, 3, size=(m, n)).astype(float) if integer else rng.standard_normal((m, n))
    cert = omnidirectional_certificate(A)
    assert cert.omnidirectional == brute_force_omni(A)
    check_certificate(A, cert)


@pytest.mark.parametrize("s", [1e-300, 1e-200, 1e200, 1e300])
def test_decision_is_the_same_at_every_scale(s):
    """Omnidirectionality depends on each row only up to a positive factor (Definition 1)."""
    rng = np.random.default_rng(5)
    for A in (
        np.array([[1.0, 0], [-1, -1], [-1, 1]]),
        np.array([[1.0, 0], [-1, 0], [0, 1]]),
        rng.standard_normal((40, 4)),
    ):
        expected = brute_force_omni(A)
        row_scales = 10.0 ** rng.integers(-150, 151, size=A.shape[0])
        for B in (A * s, A * row_scales[:, None]):
            cert = omnidirectional_certificate(B)
            assert cert.omnidirectional == expected
            check_certificate(A, cert)  # the certificate is about unit rows


@pytest.mark.parametrize("n", [2, 5, 40])
@pytest.mark.parametrize("many", [False, True])
def test_direction_from_the_nearest_hull_point(n, many):
    """Rows (1/2, +-e_j / 2) and random mixtures of them: their hull lies in x_0 = 1/2 and its
    point nearest 0 is (1/2, 0, ..., 0).  With at most 2n rows (all in the first subset) the
    direction is exactly -e_0 with margin 1/2; with more, any strict direction is right, and no
    direction can have a margin above the hull's distance from 0, 1/2."""
    from reluinv.geometry import RowSource, omni_lazy

    rng = np.random.default_rng(n)
    corners = np.hstack([np.full((2 * (n - 1), 1), 0.5), 0.5 * np.vstack([np.eye(n - 1), -np.eye(n - 1)])])
    rows = np.vstack([corners, rng.dirichlet(np.ones(corners.shape[0]), size=8 * n if many else 2) @ corners])
    rows = rows[rng.permutation(rows.shape[0])]
    # strict_enough = 1 refuses every direction of Newton's method (margins of unit rows are <= 1)
    cert = omni_lazy(RowSource.from_rows(rows), rtol=1e-9, strict_enough=1.0)
    assert not cert.omnidirectional
    assert "nearest 0" in cert.reason
    products = rows @ cert.direction
    assert cert.margin == pytest.approx(-products.max(), rel=1e-12)
    assert 0 < cert.margin <= 0.5 + 1e-9
    if not many:  # 2n rows
        assert np.allclose(cert.direction, -np.eye(n)[0], atol=1e-8)
        assert cert.margin == pytest.approx(0.5, rel=1e-8)


@pytest.mark.parametrize("n", [2, 5, 40])
@pytest.mark.parametrize("many", [False, True])
def test_direction_by_newton_on_the_same_rows(n, many):
    """The rows of the test above, by default: Newton's method on ``rows @ z <= -1`` finds a
    direction that holds every row strictly, with a margin no larger than the hull's distance
    from 0 (1/2, the largest any direction has)."""
    from reluinv.geometry import RowSource, omni_lazy

    rng = np.random.default_rng(n)
    corners = np.hstack([np.full((2 * (n - 1), 1), 0.5), 0.5 * np.vstack([np.eye(n - 1), -np.eye(n - 1)])])
    rows = np.vstack([corners, rng.dirichlet(np.ones(corners.shape[0]), size=8 * n if many else 2) @ corners])
    rows = rows[rng.permutation(rows.shape[0])]
    cert = omni_lazy(RowSource.from_rows(rows), rtol=1e-9)
    assert not cert.omnidirectional and "Newton" in cert.reason
    products = rows @ cert.direction
    assert products.max() < 0
    assert cert.margin == pytest.approx(-products.max(), rel=1e-12)
    assert 0 < cert.margin <= 0.5 + 1e-9
    check_certificate(rows, cert)


def test_newton_direction_gives_way_to_the_hull_point(monkeypatch):
    """A direction of Newton's method no stricter than ``strict_enough`` is not returned: the
    nearest hull point is sought instead (the caller's threshold for a clear verdict).  On an
    omnidirectional set Newton's method finds nothing."""
    from reluinv import geometry

    rng = np.random.default_rng(11)
    n = 12
    rows = rng.standard_normal((300, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.3
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    hull_points = []
    nearest = geometry._nearest_hull_point

    def counting(r):
        hull_points.append(r.shape[0])
        return nearest(r)

    monkeypatch.setattr(geometry, "_nearest_hull_point", counting)
    newton = geometry._min_norm_certificate(rows, 1e-9)
    assert newton is not None and "Newton" in newton.reason and not hull_points
    check_certificate(rows, newton)
    hull = geometry._min_norm_certificate(rows, 1e-9, strict_enough=newton.margin)
    assert hull is not None and "nearest 0" in hull.reason and hull_points
    check_certificate(rows, hull)
    spread = rng.standard_normal((300, n))
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    assert brute_force_omni(spread)
    assert geometry._hinge_direction(RowSource.from_rows(spread), 1e-9, spread @ np.eye(n)[0], 0.0) is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 9), extra=st.integers(1, 30))
def test_newton_direction_does_not_depend_on_the_basis(seed, n, extra):
    """Rows ``R`` with a strict direction and the same rows in another orthonormal basis,
    ``R Q``: Newton's method takes the same steps, so the directions agree (``d`` and ``Q^T d``)
    and so do the margins.  Rows that a full step puts on their bound stay in the next step
    whatever the rounding (``hold``); with 0 instead, ``preimage`` and ``preimage_batch`` gave
    margins up to 3 % apart on 32 of 5,040 small random preimages."""
    from reluinv import geometry

    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n + extra, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.2
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    start = rows @ -rows.mean(axis=0)
    one = geometry._hinge_direction(RowSource.from_rows(rows), 1e-9, start, 0.0)
    other = geometry._hinge_direction(RowSource.from_rows(rows @ Q), 1e-9, start, 0.0)
    assert (one is None) == (other is None)
    if one is not None:
        assert other.margin == pytest.approx(one.margin, rel=1e-9)
        np.testing.assert_allclose(Q @ other.direction, one.direction, atol=1e-9)
        check_certificate(rows, one)


@pytest.mark.parametrize("cond", [1.0, 1e3, 1e6, 1e9])
def test_range_projector_matches_an_svd_projector(cond):
    """The projector onto range(rows) that the alternating projections use, through the Gram
    matrix's Cholesky factor when well conditioned and a QR otherwise, against the SVD's left
    singular vectors; rows of rank below n give None."""
    from reluinv.geometry import _GRAM_RCOND, _range_projector

    rng = np.random.default_rng(int(np.log10(cond)))
    m, n = 60, 12
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    rows = U @ np.diag(np.geomspace(1.0, 1.0 / cond, n)) @ V.T
    found = _range_projector(rows)
    assert found is not None
    project, rcond = found
    v = rng.standard_normal(m)
    np.testing.assert_allclose(project(v), U @ (U.T @ v), atol=1e-9 * cond**0.5 * np.linalg.norm(v))
    # the coefficients w with project(v) = rows @ w: the least-squares solution of rows w = v
    np.testing.assert_allclose(
        project.coefficients(v), np.linalg.lstsq(rows, v, rcond=None)[0], rtol=1e-6 * cond, atol=1e-9
    )
    assert rcond == pytest.approx(1.0 / cond, rel=10.0)  # LAPACK's estimate is within a factor n
    assert (rcond > _GRAM_RCOND) == (cond < 1e4)  # which factor was used
    assert _range_projector(np.hstack([rows[:, :-1], rows[:, :1]])) is None  # rank n - 1


@pytest.mark.parametrize("seed", range(3))
def test_alternating_projections_certify_spread_rows(seed):
    """Unit rows spread around 0 (Gaussian, 3n + 32 of them): the relaxed alternating
    projections return multipliers that are checked here directly (strictly positive, a vanishing
    combination, full rank) and agree with the LP-based brute force."""
    from reluinv.geometry import _project_subset

    rng = np.random.default_rng(seed)
    n = 12
    rows = rng.standard_normal((3 * n + 32, n))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cert = _project_subset(rows, np.arange(rows.shape[0]), n, 1e-9)
    assert cert is not None and cert.omnidirectional and "alternating projections" in cert.reason
    assert cert.multipliers.min() == pytest.approx(1.0) and cert.multipliers.min() > 0
    np.testing.assert_allclose(rows[cert.rows].T @ cert.multipliers, 0, atol=1e-9 * cert.multipliers.sum())
    assert np.linalg.matrix_rank(rows[cert.rows]) == n
    assert brute_force_omni(rows)


def _counting_projector(monkeypatch, geometry, calls):
    projector = geometry._range_projector

    def counting(r):
        project, rcond = projector(r)
        return (lambda v: calls.append(1) or project(v)), rcond

    monkeypatch.setattr(geometry, "_range_projector", counting)


def test_projections_give_up_on_rows_with_a_direction(monkeypatch):
    """Rows that all lean to +e_1 (not omnidirectional: -e_1 is a strict direction): the
    projections stop as soon as their gap is such a direction, in a few of the 200 rounds they
    ran to before, with the same answer (None, and the direction search decides)."""
    from reluinv import geometry

    rng = np.random.default_rng(3)
    n = 30
    rows = rng.standard_normal((3 * n + 32, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.3
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert not brute_force_omni(rows)
    calls: list[int] = []
    _counting_projector(monkeypatch, geometry, calls)
    subset = np.arange(rows.shape[0])
    assert geometry._project_subset(rows, subset, n, 1e-9) is None
    early = len(calls)
    calls.clear()
    monkeypatch.setattr(geometry, "_HOPELESS", -np.inf)  # never give up
    assert geometry._project_subset(rows, subset, n, 1e-9) is None
    assert len(calls) == geometry._PROJECTION_ROUNDS
    assert early < 0.5 * geometry._PROJECTION_ROUNDS


def test_projections_report_the_direction_they_give_up_on():
    """Rows leaning to +e_1 (not omnidirectional): the projections give up and report a unit
    direction that the rows hold but for rounding (not strictly), which points against the lean."""
    from reluinv import geometry

    rng = np.random.default_rng(3)
    n = 30
    rows = rng.standard_normal((3 * n + 32, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.3
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    gave_up: list[geometry._GaveUp] = []
    assert geometry._project_subset(rows, np.arange(rows.shape[0]), n, 1e-9, gave_up=gave_up) is None
    (ended,) = gave_up
    assert ended.hopeless  # they stopped because d is a direction of the rows, not after all rounds
    d = ended.direction
    assert np.linalg.norm(d) == pytest.approx(1.0)
    products = rows @ d
    assert products.max() <= 1e-9 * np.abs(products).max()
    assert d[0] < 0


def recording_source(rows: np.ndarray, asked: list[int]) -> RowSource:
    """The rows as a :class:`RowSource` that records how many rows each request forms."""

    def formed(idx):
        asked.append(len(idx))
        return rows[idx]

    return RowSource(m=rows.shape[0], n=rows.shape[1], rows=formed, apply=lambda d: rows @ d)


def leaning_rows(n: int = 20, m: int = 400, back: int = 0) -> np.ndarray:
    """Unit rows leaning to +e_1 (seed 4); with ``back``, that many rows outside the spread
    3n + 32 point back (-e_1 mostly), which makes the set omnidirectional but not its spread rows."""
    from reluinv import geometry

    rng = np.random.default_rng(4)
    rows = rng.standard_normal((m, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.5
    spread = geometry._initial_subset(m, 3 * n + 32)
    rows[np.setdiff1d(np.arange(m), spread)[:back], 0] = -3.0 * np.sqrt(n)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


@pytest.mark.parametrize("back", [4, 16])
def test_rows_the_spread_rows_miss_join_their_projections(monkeypatch, back):
    """An omnidirectional set whose spread 3n + 32 rows are not (the 4 or 16 rows pointing back
    lie elsewhere): the n rows that the direction of the spread rows' last gap holds least join
    them, and the projections certify the set without every row formed.  The hull point's least
    squares, which cost seconds on such sets, never run."""
    from reluinv import geometry

    n, m = 20, 400
    rows = leaning_rows(n, m, back=back)
    spread = geometry._initial_subset(m, 3 * n + 32)
    assert brute_force_omni(rows) and not brute_force_omni(rows[spread])

    def no_hull_point(*args, **kwargs):
        raise AssertionError("the hull point was sought")

    monkeypatch.setattr(geometry, "_min_norm_certificate", no_hull_point)
    asked: list[int] = []
    cert = geometry.omni_lazy(recording_source(rows, asked), rtol=1e-9)
    assert cert.omnidirectional and "alternating projections" in cert.reason
    check_certificate(rows, cert)
    assert cert.rows is not None and 3 * n + 32 < cert.rows.size <= 3 * n + 32 + n
    assert max(asked) < m


def test_a_leaning_set_gets_newtons_direction_without_every_row(monkeypatch):
    """Rows that all lean to +e_1: the projections on the spread rows, and on them with the n rows
    their last gap's direction holds least, stop on a direction of their rows, and Newton's method
    starts from the second at once; it finds a strict direction (checked on every row), forming
    only the rows it takes, and the projections on every row never run."""
    from reluinv import geometry

    n, m = 20, 400
    rows = leaning_rows(n, m)
    assert not brute_force_omni(rows)
    project = geometry._project_subset

    def no_every_row(r, *args, **kwargs):
        assert r.shape[0] < m, "every row was projected"
        return project(r, *args, **kwargs)

    monkeypatch.setattr(geometry, "_project_subset", no_every_row)
    asked: list[int] = []
    cert = geometry.omni_lazy(recording_source(rows, asked), rtol=1e-9)
    assert not cert.omnidirectional and "Newton" in cert.reason and cert.margin > 0.01
    check_certificate(rows, cert)
    assert max(asked) < m


@pytest.mark.parametrize("m", [150, 400])
def test_spread_rows_get_few_rounds_when_they_are_many(monkeypatch, m):
    """n = 20: the 92 spread rows are 61 % of 150 rows, so their projections get the short round
    budget before every row is projected, and 23 % of 400, where they get all rounds; both
    certify the (Gaussian, omnidirectional) rows."""
    from reluinv import geometry

    rng = np.random.default_rng(m)
    n = 20
    rows = rng.standard_normal((m, n))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    calls: list[tuple[int, int]] = []
    project = geometry._project_subset

    def recording(r, *args, rounds=geometry._PROJECTION_ROUNDS, **kwargs):
        calls.append((r.shape[0], rounds))
        return project(r, *args, rounds=rounds, **kwargs)

    monkeypatch.setattr(geometry, "_project_subset", recording)
    cert = geometry.omni_lazy(geometry.RowSource.from_rows(rows), rtol=1e-9)
    assert cert.omnidirectional
    check_certificate(rows, cert)
    few = geometry._FEW_ROUNDS if m == 150 else geometry._PROJECTION_ROUNDS
    assert calls[0] == (3 * n + 32, few)


def test_newton_starts_from_the_direction_the_projections_gave_up_on(monkeypatch):
    """Rows that lean to one side: Newton's method starts from the projections' last direction,
    scaled so that all but 5 % of the rows it holds strictly meet ``R z <= -1``, and reaches a
    strict direction from there as from 0; without that direction, or with no row it holds, it
    starts from 0."""
    from reluinv import geometry

    rng = np.random.default_rng(5)
    n = 15
    rows = rng.standard_normal((400, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.3
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    found: list[geometry._GaveUp] = []
    geometry._project_subset(rows, np.arange(rows.shape[0]), n, 1e-9, gave_up=found)
    toward = found[0].direction
    prod = rows @ toward
    held = -prod[prod < 0]
    np.testing.assert_allclose(geometry._hinge_start(prod, toward), toward / np.quantile(held, 0.05))
    assert geometry._hinge_start(prod, None) is None
    assert geometry._hinge_start(np.abs(prod), toward) is None
    starts = []
    newton = geometry.hinge_newton

    def recording(R, c, slack, start, hold=0.0):
        starts.append(start)
        return newton(R, c, slack, start, hold=hold)

    monkeypatch.setattr(geometry, "hinge_newton", recording)
    for start_from in (toward, None):
        starts.clear()
        cert = geometry._hinge_direction(RowSource.from_rows(rows), 1e-9, prod, 0.0, start_from)
        assert cert is not None and not cert.omnidirectional
        check_certificate(rows, cert)
        if start_from is None:
            assert starts[0] is None
        else:
            np.testing.assert_allclose(starts[0], toward / np.quantile(held, 0.05))


def test_projection_progress_rule_over_one_window_and_over_several():
    """The projections stop once the shortfall (one value per 50 rounds) shrank less than 1.5x in
    the last window and, where a longer rule is given, less than that factor over the last four
    windows; constructed trails with the answer known."""
    from reluinv.geometry import _stalled

    assert not _stalled([0.1, 0.05], np.inf)  # 2x in the last window
    assert _stalled([0.1, 0.09], np.inf)
    slow = [0.1, 0.08, 0.066, 0.055, 0.046]  # 1.2x per window, 2.2x over four
    assert _stalled(slow, np.inf)
    assert not _stalled(slow, 1.3)
    assert _stalled(slow, 3.0)
    assert _stalled(slow[1:], 1.3)  # four values: no four-window history yet
    flat = [0.1, 0.09, 0.088, 0.087, 0.087]  # 1.15x over four windows
    assert _stalled(flat, 1.3)


def test_every_row_projections_get_the_longer_progress_rule(monkeypatch):
    """The projections on every row (after the spread rows fail) run under the four-window rule
    and the larger round budget; the spread rows' projections keep the one-window rule."""
    from reluinv import geometry

    rng = np.random.default_rng(4)
    n, m = 20, 400
    rows = rng.standard_normal((m, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.5
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    calls = []
    project = geometry._project_subset

    def recording(r, *args, **kwargs):
        calls.append((r.shape[0], kwargs.get("rounds"), kwargs.get("long_progress", np.inf)))
        return project(r, *args, **kwargs)

    monkeypatch.setattr(geometry, "_project_subset", recording)
    monkeypatch.setattr(geometry, "_follow_spread_rows", lambda *args: None)  # straight to every row
    cert = geometry.omni_lazy(geometry.RowSource.from_rows(rows), rtol=1e-9)
    check_certificate(rows, cert)
    assert calls[0][0] == 3 * n + 32 and calls[0][2] == np.inf
    assert calls[1] == (m, geometry._EVERY_ROW_ROUNDS, geometry._EVERY_ROW_LONG_PROGRESS)


@pytest.mark.parametrize("toward", ["gave up", "poor"])
def test_hull_point_search_from_a_given_direction(toward):
    """Rows with a direction (they lean to +e_1): the search for the hull point nearest 0, started
    from the direction the projections gave up on or from a poor one (+e_1, the lean itself; the
    search falls back to its start from the rows' mean if that finds nothing), gives a strict
    direction that holds on every row."""
    from reluinv import geometry

    rng = np.random.default_rng(5)
    n = 15
    rows = rng.standard_normal((400, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.3
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    if toward == "gave up":
        found: list[geometry._GaveUp] = []
        geometry._project_subset(rows, np.arange(rows.shape[0]), n, 1e-9, gave_up=found)
        start = found[0].direction
    else:
        start = np.eye(n)[0]
    cert = geometry._min_norm_certificate(rows, 1e-9, toward=start, strict_enough=1.0)  # no Newton
    assert cert is not None and not cert.omnidirectional and "nearest 0" in cert.reason
    assert cert.margin > 0
    check_certificate(rows, cert)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lean=st.floats(-0.3, 0.5),
    back=st.integers(0, 3),
    n=st.integers(2, 8),
    extra=st.integers(40, 160),
)
def test_verdicts_with_every_row_and_newton_match_the_lp_oracle(seed, lean, back, n, extra):
    """Row sets larger than the spread rows, so that the projections on every row, Newton's method
    and the hull point all take their turn: every first coordinate positive (``|x_0| + lean``)
    but for up to three rows that point back, which may or may not make the set omnidirectional
    (with this generator about a fifth of the sets have a direction, found by Newton's method).
    Clear verdicts agree with the LP oracle, and the certificate checks."""
    from reluinv.geometry import RowSource, omni_lazy

    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((3 * n + 32 + extra, n))
    rows[:, 0] = np.abs(rows[:, 0]) + lean
    rows[rng.choice(rows.shape[0], back, replace=False), 0] = -3.0
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cert = omni_lazy(RowSource.from_rows(rows), rtol=1e-9)
    if cert.margin > 1e-6:  # clear verdicts only: the oracle has its own tolerance
        assert cert.omnidirectional == brute_force_omni(rows)
    check_certificate(rows, cert)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lean=st.floats(0.0, 1.0), n=st.integers(2, 12))
def test_giving_up_never_changes_what_the_projections_answer(seed, lean, n):
    """Random row sets from spread around 0 to leaning to one side: the projections answer the
    same (a certificate on the same rows with the same multipliers, or None) with and without
    giving up early, and a certificate is one (checked here directly)."""
    from reluinv import geometry

    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((3 * n + 32, n))
    rows[:, 0] += lean * 2.0 * (np.abs(rows[:, 0]) + 0.1)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    subset = np.arange(rows.shape[0])
    found = geometry._project_subset(rows, subset, n, 1e-9)
    original = geometry._HOPELESS
    try:
        geometry._HOPELESS = -np.inf
        reference = geometry._project_subset(rows, subset, n, 1e-9)
    finally:
        geometry._HOPELESS = original
    assert (found is None) == (reference is None)
    if found is not None:
        assert reference is not None
        np.testing.assert_array_equal(found.multipliers, reference.multipliers)
        np.testing.assert_allclose(rows.T @ found.multipliers, 0, atol=1e-9 * found.multipliers.sum())
        assert found.multipliers.min() > 0 and brute_force_omni(rows)


def test_anderson_acceleration_finds_the_certificate_in_fewer_projections(monkeypatch):
    """Rows leaning to +e_1 with two pointing back (omnidirectional, but the plain alternating
    projections crawl): the accelerated rounds return a valid certificate, checked here
    directly and against the LP, in less than half the projections of the plain ones."""
    from reluinv import geometry

    rng = np.random.default_rng(2)
    n = 40
    rows = rng.standard_normal((3 * n + 32, n))
    rows[:, 0] = np.abs(rows[:, 0]) + 0.5
    rows[:2, 0] = -np.sqrt(n)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    assert brute_force_omni(rows)
    calls: list[int] = []
    _counting_projector(monkeypatch, geometry, calls)
    subset = np.arange(rows.shape[0])
    cert = geometry._project_subset(rows, subset, n, 1e-9)
    accelerated = len(calls)
    assert cert is not None and cert.omnidirectional
    assert cert.multipliers.min() == pytest.approx(1.0)
    np.testing.assert_allclose(rows[cert.rows].T @ cert.multipliers, 0, atol=1e-9 * cert.multipliers.sum())
    calls.clear()
    monkeypatch.setattr(geometry, "_PLAIN_ROUNDS", geometry._PROJECTION_ROUNDS)
    assert geometry._project_subset(rows, subset, n, 1e-9) is not None
    assert accelerated < 0.5 * len(calls)


@pytest.mark.parametrize("seed", range(3))
def test_stiemke_lp_grown_by_column_generation_keeps_its_multipliers_exact(seed):
    # The rows of a random omnidirectional set, given to the LP in two batches: the first (rows
    # with a positive first coordinate) has a direction, the LP reports it; with the second the LP
    # finds strictly positive multipliers, checked against all rows directly (tau's column, the
    # sum of the rows, must have been brought up to date when the rows grew).
    from reluinv.geometry import _StiemkeLP

    rng = np.random.default_rng(seed)
    n = 6
    R = rng.standard_normal((40, n))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    first, second = R[R[:, 0] > 0], R[R[:, 0] <= 0]
    lp = _StiemkeLP(n)
    lp.add(first)
    d, lam = lp.solve(first, 1e-9)
    assert lam is None and d is not None and np.all(first @ d <= 1e-9)
    lp.add(second)
    both = np.vstack([first, second])
    d, lam = lp.solve(both, 1e-9)
    assert d is None and lam is not None and lam.min() >= 1.0 - 1e-12
    np.testing.assert_allclose(both.T @ lam, 0.0, atol=1e-9 * lam.max())


@pytest.mark.parametrize("seed", range(3))
def test_small_sets_with_unbalanced_multipliers_pass_by_projections_alone(seed, monkeypatch):
    # 53 unit rows in R^40 (at most 3n + 32, so the spread rows are every row): an orthonormal
    # basis, minus its combination with weights 1 .. 1e-2, and 12 random rows.  They are
    # omnidirectional with unbalanced multipliers, which 32 rounds of projections do not reach;
    # with the rounds of the projections on every row they pass, and neither the direction search
    # nor the Stiemke LP runs.  The certificate is checked directly and against the LP oracle.
    from reluinv import geometry

    ran = []
    monkeypatch.setattr(geometry, "_min_norm_certificate", lambda *a, **k: ran.append("direction search"))
    monkeypatch.setattr(geometry, "_StiemkeLP", lambda n: ran.append("LP"))
    rng = np.random.default_rng(seed)
    n = 40
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    R = np.vstack([Q, -(np.logspace(0, -2, n) @ Q)[None], rng.standard_normal((12, n))])
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    cert = geometry.omni_lazy(RowSource.from_matrix(R), rtol=1e-9)
    assert ran == [] and cert.omnidirectional
    lam = np.zeros(R.shape[0])
    lam[cert.rows] = cert.multipliers
    assert cert.multipliers.min() > 0
    np.testing.assert_allclose(R.T @ lam, 0.0, atol=1e-9 * lam.max())
    assert brute_force_omni(R)
