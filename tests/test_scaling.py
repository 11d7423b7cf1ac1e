"""The preimage's kind is scale-free (Theorem 4 depends on each row and on x only up to scale).

``{x : A_pos x + b_pos = y_pos, A_zero x + b_zero <= 0}`` is unchanged when a row ``(A_i, b_i,
y_i)`` is multiplied by any ``s_i > 0``, and scaling A alone by s (the box by 1/s) maps it to
``P / s``.  So the kind must not change at any scale from 1e-200 to 1e200, and the certificates
must still check against the scaled data.  The oracle (2n LPs, tests/problems.py) runs on the
data at scale 1, where HiGHS is reliable.
"""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reluinv
from problems import CONSTRUCTED, PINNED_SINGLETON, brute_force_kind
from reluinv.preimage import CertificateError, _LayerSystem

SCALES = [10.0**e for e in (-200, -160, -100, -30, 0, 30, 100, 160, 200)]


def random_layer(m, n, seed, active, integer, box):
    """A layer, an output y = ReLU(A x + b) (or one off it) and a box, as in test_preimage."""
    rng = np.random.default_rng(seed)
    A = rng.integers(-2, 3, size=(m, n)).astype(float) if integer else rng.standard_normal((m, n))
    x = rng.integers(-2, 3, size=n).astype(float) if integer else rng.standard_normal(n)
    b = np.broadcast_to(-np.quantile(A @ x, 1 - active), (m,)).astype(float)
    b = b + (rng.integers(-1, 2, size=m) if integer else 0.0)
    y = np.maximum(A @ x + b, 0.0)
    if rng.random() < 0.3:  # an output no input produces
        y = y + rng.integers(0, 2, size=m) * (y > 0)
    lower = upper = None
    if box == "full":
        lower, upper = x - 1.0, x + 2.0
    elif box == "mixed":
        lower = np.where(rng.random(n) < 0.5, -np.inf, x - 1.0)
        upper = np.where(rng.random(n) < 0.5, np.inf, x + 1.0)
    return A, b, y, lower, upper


def scaled_box(bound, s):
    return None if bound is None else np.asarray(bound, float) * s


def assert_kind_at_scale(A, b, y, lower, upper, expected):
    r = reluinv.preimage(A, b, y, lower=lower, upper=upper)
    assert r.kind == expected, r.certificate.reason
    r.verify(A, b, y, lower=lower, upper=upper)
    return r


@pytest.mark.parametrize("s", SCALES)
def test_readme_singleton_at_every_scale(s):
    A, b, y, _, _, expected = PINNED_SINGLETON
    A, b, y = np.array(A, float), np.array(b, float), np.array(y, float)
    r = assert_kind_at_scale(A * s, b * s, y * s, None, None, expected)
    np.testing.assert_allclose(r.point, [1.0, 0.0], rtol=1e-12, atol=1e-12)
    assert not r.near_tolerance
    # A alone: x scales by 1/s
    r = assert_kind_at_scale(A * s, b, y, None, None, expected)
    np.testing.assert_allclose(r.point, [1.0 / s, 0.0], rtol=1e-12, atol=1e-12 / s)


@pytest.mark.parametrize("name", sorted(CONSTRUCTED))
@pytest.mark.parametrize("s", [1e-200, 1e-100, 1e100, 1e200])
def test_constructed_cases_at_extreme_scales(name, s):
    A, b, y, lower, upper, expected = CONSTRUCTED[name]
    A, b, y = np.array(A, float), np.array(b, float), np.array(y, float)
    assert_kind_at_scale(A * s, b * s, y * s, lower, upper, expected)
    assert_kind_at_scale(A * s, b, y, scaled_box(lower, 1 / s), scaled_box(upper, 1 / s), expected)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("s", [1e-200, 1e200])
def test_random_30x10_layers_at_extreme_scales(seed, s):
    A, b, y, _, _ = random_layer(30, 10, seed, [0.2, 0.5, 0.8][seed % 3], False, "none")
    expected = brute_force_kind(A, b, y)
    assert_kind_at_scale(A * s, b * s, y * s, None, None, expected)
    assert_kind_at_scale(A * s, b, y, None, None, expected)


layers = st.tuples(st.integers(1, 8), st.integers(1, 12), st.integers(0, 2**31 - 1))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=layers,
    active=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    integer=st.booleans(),
    box=st.sampled_from(["none", "full", "mixed"]),
    exponent=st.integers(-200, 200),
)
def test_scaling_together_and_a_alone_match_the_oracle(shape, active, integer, box, exponent):
    n, m, seed = shape
    A, b, y, lower, upper = random_layer(m, n, seed, active, integer, box)
    expected = brute_force_kind(A, b, y, lower, upper)
    s = 10.0**exponent
    assert_kind_at_scale(A * s, b * s, y * s, lower, upper, expected)
    assert_kind_at_scale(A * s, b, y, scaled_box(lower, 1 / s), scaled_box(upper, 1 / s), expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=layers,
    active=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    integer=st.booleans(),
    box=st.sampled_from(["none", "full", "mixed"]),
    x_exponent=st.integers(-100, 100),
)
def test_row_by_row_scaling_matches_the_oracle(shape, active, integer, box, x_exponent):
    """Each row (A_i, b_i, y_i) times its own s_i in 1e-100 .. 1e100, and x times 10^x_exponent."""
    n, m, seed = shape
    A, b, y, lower, upper = random_layer(m, n, seed, active, integer, box)
    expected = brute_force_kind(A, b, y, lower, upper)
    rows = 10.0 ** np.random.default_rng(seed + 1).integers(-100, 101, size=m)
    t = 10.0**x_exponent
    assert_kind_at_scale(
        A * rows[:, None] / t, b * rows, y * rows, scaled_box(lower, t), scaled_box(upper, t), expected
    )


def test_zero_rows_are_judged_by_their_own_scale():
    # a_i = 0: the row holds for every x or for none, whatever its scale
    A = np.array([[0.0, 0.0], [1.0, 0.0]])
    for s in (1e-200, 1.0, 1e200):
        assert reluinv.preimage(A, [2e-10 * s, 0], [0.0, 1.0]).kind == "empty"
        assert reluinv.preimage(A, [2.0 * s, 0], [2.0 * s, 1.0]).kind == "unbounded"
        assert reluinv.preimage(A, [2.0 * s, 0], [2.5 * s, 1.0]).kind == "empty"


def test_multipliers_refer_to_the_users_rows():
    """Certificates combine the rows as given, not their unit versions."""
    A = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 0.0]]) * np.array([[1e150], [1.0], [1e-150]])
    b = np.array([0.0, 0.0, -5e-150])
    r = reluinv.preimage(A, b, np.zeros(3))
    assert (
        r.kind
        == "compact"
        == brute_force_kind(A / np.abs(A).max(axis=1, keepdims=True), b / np.abs(A).max(axis=1), np.zeros(3))
    )
    lam = r.certificate.multipliers
    combo = A[r.certificate.rows].T @ lam
    assert np.abs(combo).max() <= 1e-9 * np.abs(A[r.certificate.rows].T * lam).max()
    r.verify(A, b, np.zeros(3))


def test_points_beyond_float64_are_a_value_error():
    # rows of norm 1e-300 at distance 1e300 from 0 put the point at 1e600
    with pytest.raises(ValueError, match="beyond the float64 range"):
        reluinv.preimage([[1e-300, 0.0], [0.0, 1e-300]], [0.0, 0.0], [1e300, 1e300])


def test_verify_is_strict_at_every_scale():
    """A point off the preimage by 3 percent fails the check at every scale of A."""
    A, b, y = np.array([[1.0, 0], [0, 1], [1, -1]]), np.array([0.0, 0, -1]), np.array([1.0, 0, 0])
    for s in (1e-200, 1.0, 1e200):
        r = reluinv.preimage(A * s, b, y)
        moved = replace(r, point=r.point * 1.03)
        with pytest.raises(CertificateError, match="misses the equations"):
            moved.verify(A * s, b, y)


@pytest.mark.parametrize("magnitude", [1e300, 1e306])
def test_layer_fed_huge_inputs_is_decided(magnitude):
    """An input with entries of 1e300 (a 'huge image'): every layer's preimage is decided and
    checks, with the kind of the same data scaled down to 1 row by row (oracle)."""
    rng = np.random.default_rng(1)
    W1, c1 = rng.standard_normal((20, 8)) * 0.05, rng.standard_normal(20) * 0.1
    W2, c2 = rng.standard_normal((12, 20)) * 0.06, rng.standard_normal(12) * 0.1
    x = np.where(np.arange(8) % 2 == 0, magnitude, 0.0)
    y1 = np.maximum(W1 @ x + c1, 0)
    y2 = np.maximum(W2 @ y1 + c2, 0)
    for W, c, y in ((W1, c1, y1), (W2, c2, y2)):
        r = reluinv.preimage(W, c, y)
        r.verify(W, c, y)
        assert r.kind == brute_force_kind(W, c / magnitude, y / magnitude)


@pytest.mark.parametrize("distance", [1e5, 1e7])
def test_a_unit_off_far_away_does_not_loosen_the_equations(distance):
    """Three equations in R^2 that disagree by 1e-6 (a point of norm 1.4), and one unit that is
    off with small weights and a large negative bias, its hyperplane ``distance`` from 0.  At 1e5
    the tolerance is the equations' own (1e-9 at their scale 1); at 1e7, 16 eps times the far
    row's terms (about 6e-8), which its own rounding needs.  Either way the preimage is empty, as
    the oracle says; with the scale set by every row alike, the tolerance was 1e-9 times that
    distance (1e-4, 1e-2) and the answer a singleton."""
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1e-4, 0.0]])
    b = np.array([0.0, 0.0, 0.0, -1e-4 * distance])
    y = np.array([1.0, 1.0, 2.0 + 1e-6, 0.0])
    r = reluinv.preimage(A, b, y)
    assert r.kind == "empty" == brute_force_kind(A, b, y), r.certificate.reason
    r.verify(A, b, y)
    consistent = y.copy()
    consistent[2] = 2.0
    assert reluinv.preimage(A, b, consistent).kind == "singleton"


def test_rows_far_beyond_the_equations_keep_every_right_hand_side_finite():
    """A hyperplane 1e200 from 0 next to equations at scale 1: the scale rises to 2^-18 of its
    distance (its own rounding stays below the tolerance, and no normalised right-hand side
    exceeds 2^18), and the decision matches the oracle on the same data."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((12, 4))
    x = rng.standard_normal(4)
    b = -np.quantile(A @ x, 0.6) * np.ones(12)
    A[-1] *= 1e-100
    b[-1] = -1e100
    y = np.maximum(A @ x + b, 0.0)
    system = _LayerSystem(A, b, y, np.full(4, -np.inf), np.full(4, np.inf), 1e-9)
    assert np.all(np.isfinite(system.h)) and np.abs(system.h).max() <= 2.0**19
    r = reluinv.preimage(A, b, y)
    assert r.kind == brute_force_kind(A, b, y), r.certificate.reason
    r.verify(A, b, y)


def test_verify_holds_the_equations_to_their_own_scale():
    """The point (1, 1) of the consistent system misses the third equation by 7e-5 once its output
    is raised by 1e-4; a unit off 1e7 from the origin must not make that pass (verify's scale
    was once every row's largest distance, here 1e7, and its tolerance 10)."""
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1e-4, 0.0]])
    b = np.array([0.0, 0.0, 0.0, -1e3])
    y = np.array([1.0, 1.0, 2.0, 0.0])
    r = reluinv.preimage(A, b, y)
    r.verify(A, b, y)
    raised = y + np.array([0.0, 0.0, 1e-4, 0.0])
    with pytest.raises(CertificateError, match="misses the equations"):
        r.verify(A, b, raised)


@pytest.mark.parametrize("x", [(0.1, 0.2), (0.123, 0.456), (0.3, 0.6)])
def test_outputs_rounded_next_to_a_large_bias_are_reached(x):
    """Three units with bias 1e12 and outputs 1e12 + (about 1): y = A x + b is rounded to the
    float64 spacing there (1.2e-4), so the three equations disagree by up to 1.2e-4 at the input
    that produced them.  That is the rounding of the data, not an empty preimage: the scale and
    verify's per-row allowance follow each row's largest term (once "empty", near_tolerance
    False, at the tolerance 1e-9 of the equations' own scale)."""
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    b = np.array([1e12, 1e12, 1e12, -5.0])
    y = np.maximum(A @ np.array(x) + b, 0.0)
    r = reluinv.preimage(A, b, y)
    assert r.kind == "singleton", r.certificate.reason
    r.verify(A, b, y)
    np.testing.assert_allclose(r.point, x, atol=1e-3)
