"""Preimage of one ReLU layer (Theorem 4, Remark 3) against the 2n-LP oracle and known cases."""

import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reluinv
from problems import CONSTRUCTED, brute_force_kind
from reluinv.preimage import CertificateError, affine_matrix


def check_result(r, A, b, y, lower=None, upper=None):
    """The documented invariants of every result, checked independently."""
    r.verify(A, b, y, lower=lower, upper=upper)
    A = np.asarray(A, float)
    assert r.n_active == int((np.asarray(y) > 0).sum())
    if r.kind == "unbounded":
        assert r.direction is not None
    else:
        assert r.direction is None
    assert (r.point is None) == (r.kind == "empty")


@pytest.mark.parametrize("name", sorted(CONSTRUCTED))
def test_constructed_cases(name):
    A, b, y, lower, upper, expected = CONSTRUCTED[name]
    r = reluinv.preimage(A, b, y, lower=lower, upper=upper)
    assert r.kind == expected, r.certificate.reason
    assert brute_force_kind(A, b, y, lower, upper) == expected
    check_result(r, A, b, y, lower, upper)


def test_pinned_singleton_is_found_although_nullity_is_positive():
    r = reluinv.preimage([[1, 0], [0, 1], [1, -1]], [0, 0, -1], [1, 0, 0])
    assert (r.kind, r.nullity, r.n_active) == ("singleton", 1, 1)
    np.testing.assert_allclose(r.point, [1.0, 0.0], atol=1e-12)
    assert set(r.certificate.rows.tolist()) == {1, 2}  # x2 <= 0 and x1 - x2 - 1 <= 0 pin x


def test_hull_boundary_case_is_unbounded_with_a_checkable_direction():
    A = np.array([[1.0, 0], [-1, 0], [0, 1]])
    r = reluinv.preimage(A, np.zeros(3), np.zeros(3))
    assert r.kind == "unbounded"
    assert np.all(A @ r.direction <= 1e-12)
    assert r.near_tolerance  # the direction lies on two hyperplanes: a boundary decision


def test_box_turns_unbounded_into_compact_and_direction_respects_box():
    A = np.array([[1.0, 0], [-1, 0], [0, 1]])
    assert reluinv.preimage(A, np.zeros(3), np.zeros(3), lower=-1, upper=1).kind == "compact"
    r = reluinv.preimage(A, np.zeros(3), np.zeros(3), upper=[None, 5])
    assert r.kind == "unbounded" and r.direction[1] < 0


def test_unreachable_output_is_empty_not_an_error():
    r = reluinv.preimage([[1.0, 0], [1.0, 0]], [0, 0], [1.0, 2.0])
    assert r.kind == "empty" and r.point is None
    r.verify([[1.0, 0], [1.0, 0]], [0, 0], [1.0, 2.0])


def test_zero_row_constant_conflict_is_empty():
    assert reluinv.preimage([[0.0, 0.0], [1, 0]], [2.0, 0], [0.0, 1.0]).kind == "empty"
    assert reluinv.preimage([[0.0, 0.0], [1, 0]], [2.0, 0], [2.0, 1.0]).kind == "unbounded"


def test_full_rank_singleton_recovers_the_input():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 10))
    x = rng.standard_normal(10)
    b = rng.standard_normal(40)
    y = np.maximum(A @ x + b, 0)
    r = reluinv.preimage(A, b, y)
    assert r.kind == "singleton" and r.nullity == 0
    np.testing.assert_allclose(r.point, x, atol=1e-9)


def test_verify_rejects_a_forged_certificate():
    A, b, y = [[1.0, 0], [-1, 0], [0, 1]], [0.0, 0, 0], [0.0, 0, 0]
    r = reluinv.preimage(A, b, y)
    from dataclasses import replace

    forged = replace(r, direction=np.array([0.0, 1.0]))
    with pytest.raises(CertificateError):
        forged.verify(A, b, y)


@pytest.mark.parametrize(
    "args,message",
    [
        (([[1.0, 2.0]], [0.0, 1.0], [1.0]), "b must have shape"),
        (([[1.0, 2.0]], [0.0], [1.0, 2.0]), "y must have shape"),
        (([[1.0, np.nan]], [0.0], [1.0]), "A contains 1 NaN"),
        (([[1.0, 2.0]], [np.inf], [1.0]), "b contains 1 NaN or infinite"),
        (([[1.0, 2.0]], [0.0], [-1.0]), "must be >= 0"),
        (([1.0, 2.0], [0.0], [1.0]), "A must be 2-dimensional"),
        (([[1e300, 1.0], [-np.inf, 0.0]], [0.0, 0.0], [1.0, 0.0]), r"A contains 1 NaN .* \(1 inf"),
        (([[np.nan, np.inf], [1e-320, 0.0]], [0.0, 0.0], [1.0, 0.0]), "A contains 2 NaN or infinite entries"),
    ],
)
def test_bad_input_raises_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        reluinv.preimage(*args)


@pytest.mark.parametrize(
    "hint,message",
    [
        ([1.0], r"hint must have shape \(2,\)"),
        ([[1.0, 2.0]], "hint must be 1-dimensional"),
        ([1.0, np.nan], "hint contains 1 NaN"),
        (["a", "b"], "hint"),
    ],
)
def test_bad_hint_raises_value_error_naming_it(hint, message):
    with pytest.raises(ValueError, match=message):
        reluinv.preimage([[1.0, 2.0]], [0.0], [1.0], hint=hint)


def test_bad_box_raises_value_error():
    with pytest.raises(ValueError, match="lower > upper at coordinate 1"):
        reluinv.preimage([[1.0, 0]], [0.0], [1.0], lower=[0, 2], upper=[1, 1])
    with pytest.raises(ValueError, match="upper must be a scalar or have shape"):
        reluinv.preimage([[1.0, 0]], [0.0], [1.0], upper=[1, 1, 1])


layers = st.tuples(st.integers(1, 8), st.integers(1, 12), st.integers(0, 2**31 - 1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(4, 11),
    rows_per_input=st.integers(6, 12),
    lean=st.floats(0.2, 1.2),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_brute_force_on_layers_with_many_leaning_rows(n, rows_per_input, lean, seed):
    """Layers with more inactive rows than the spread 3k + 32 and weights shifted on half the
    inputs (non-negative inputs, as images), so that the inactive rows lean to one side: many
    decisions get past the spread rows to row generation and Newton's method from its direction
    (``geometry._follow_spread_rows``; 102 of 600 such layers in one run, 31 unbounded).  The kind
    agrees with the LP oracle and the certificates check."""
    rng = np.random.default_rng(seed)
    m = rows_per_input * n + 40
    A = rng.standard_normal((m, n)) / np.sqrt(n) + lean * (rng.random(n) < 0.5)
    x = rng.random(n) * (rng.random(n) < 0.7)
    z = A @ x
    k = int(rng.integers(2, n))  # active units: a null space of dimension n - k
    b = np.full(m, -np.sort(z)[-k - 1 : -k + 1].mean())
    y = np.maximum(A @ x + b, 0.0)
    r = reluinv.preimage(A, b, y)
    if not r.near_tolerance:
        assert r.kind == brute_force_kind(A, b, y), r.certificate.reason
    check_result(r, A, b, y, None, None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=layers,
    active=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    integer=st.booleans(),
    box=st.sampled_from(["none", "full", "lower", "mixed"]),
    reachable=st.booleans(),
)
def test_matches_brute_force_on_random_layers(shape, active, integer, box, reachable):
    n, m, seed = shape
    rng = np.random.default_rng(seed)
    A = rng.integers(-2, 3, size=(m, n)).astype(float) if integer else rng.standard_normal((m, n))
    x = rng.integers(-2, 3, size=n).astype(float) if integer else rng.standard_normal(n)
    z = A @ x
    # shift the bias so that about `active` of the units are on
    b = -np.quantile(z, 1 - active) + (rng.integers(-1, 2, size=m) if integer else 0.0)
    b = np.broadcast_to(b, (m,)).astype(float)
    y = np.maximum(A @ x + b, 0.0)
    if not reachable:
        y = y + rng.integers(0, 2, size=m) * (y > 0)
    lower = upper = None
    if box == "full":
        lower, upper = x - 1.0, x + 2.0
    elif box == "lower":
        lower = np.floor(x) - 1.0
    elif box == "mixed":
        lower = np.where(rng.random(n) < 0.5, -np.inf, x - 1.0)
        upper = np.where(rng.random(n) < 0.5, np.inf, x + 1.0)
    r = reluinv.preimage(A, b, y, lower=lower, upper=upper)
    assert r.kind == brute_force_kind(A, b, y, lower, upper), r.certificate.reason
    check_result(r, A, b, y, lower, upper)


def widely_scaled_case(rng, n, m):
    """``(A, b, y)``: rows and biases scaled by 1e-3 to 1e3 each, some inputs that no row reads
    (zero columns), and y from a standard normal input."""
    A = rng.standard_normal((m, n)) * 10.0 ** rng.uniform(-3, 3, (m, 1))
    A[:, rng.random(n) < 0.1] = 0.0
    b = rng.standard_normal(m) * 10.0 ** rng.uniform(-3, 3, m)
    return A, b, np.maximum(A @ rng.standard_normal(n) + b, 0.0)


def assert_matches_brute_force_and_is_not_empty(A, b, y):
    """The input that produced y lies in the preimage, so it is never empty; the oracle (on unit
    rows) agrees on the kind."""
    r = reluinv.preimage(A, b, y)
    assert r.kind != "empty", r.certificate.reason
    assert r.kind == brute_force_kind(A, b, y), r.certificate.reason
    check_result(r, A, b, y)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(5, 40), rows_per_input=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_matches_brute_force_with_row_norms_and_biases_over_six_decades(n, rows_per_input, seed):
    rng = np.random.default_rng(seed)
    assert_matches_brute_force_and_is_not_empty(*widely_scaled_case(rng, n, rows_per_input * n + 5))


@pytest.mark.parametrize("n,m,seed", [(29, 121, 69), (51, 158, 192), (47, 146, 46)])
def test_widely_scaled_layers_the_raw_row_oracle_got_wrong(n, m, seed):
    """Three such layers on which HiGHS, given the raw rows, called the preimage empty (6 of the
    first 193 with 10-79 inputs): a singleton, and two sets unbounded along a zero column."""
    assert_matches_brute_force_and_is_not_empty(*widely_scaled_case(np.random.default_rng(seed), n, m))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=layers,
    active=st.sampled_from([0.2, 0.5, 0.8, 1.0]),
    box=st.sampled_from(["none", "full", "mixed"]),
    hint=st.sampled_from(["input", "moved", "far", "face"]),
)
def test_a_hint_changes_no_verdict(shape, active, box, hint):
    # The hint is checked, never trusted: the generating input (a point of P), a point moved off
    # the equations, one far outside, and the input on a face of the box (where the search for a
    # point starts from it) all give the brute-force verdict.
    n, m, seed = shape
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    x = rng.standard_normal(n)
    z = A @ x
    b = np.full(m, -np.quantile(z, 1 - active))
    y = np.maximum(A @ x + b, 0.0)
    lower = upper = None
    if box == "full":
        lower, upper = x - 1.0, x + 2.0
    elif box == "mixed":
        lower = np.where(rng.random(n) < 0.5, -np.inf, x - 1.0)
    if hint == "face":  # x on the lower face in about a third of the coordinates
        on_face = rng.random(n) < 0.35
        lower = np.where(on_face, x, -np.inf if lower is None else lower)
    point = {
        "input": x,
        "moved": x + 1e-3 * rng.standard_normal(n),
        "far": x + 100.0 * rng.standard_normal(n),
        "face": x,
    }[hint]
    r = reluinv.preimage(A, b, y, lower=lower, upper=upper, hint=point)
    assert r.kind == brute_force_kind(A, b, y, lower, upper), r.certificate.reason
    assert r.kind == reluinv.preimage(A, b, y, lower=lower, upper=upper).kind
    check_result(r, A, b, y, lower, upper)


def _compact_case(seed=0, m=700, n=157, active=120):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n)) / np.sqrt(n)
    x = rng.standard_normal(n)
    ax = np.sort(A @ x)
    b = np.full(m, -(ax[-active] + ax[-active - 1]) / 2)
    return A, b, np.maximum(A @ x + b, 0.0), x


def _recorded_products(monkeypatch) -> list[np.ndarray]:
    """The row indices of every product of inactive rows with the null-space basis, in order."""
    from reluinv.preimage import _UnitInequalities

    products: list[np.ndarray] = []
    restricted = _UnitInequalities.restricted
    monkeypatch.setattr(
        _UnitInequalities,
        "restricted",
        lambda self, idx, O, out: (products.append(idx.copy()), restricted(self, idx, O, out)),
    )
    return products


def test_an_accepted_hint_spares_the_search_for_a_point(monkeypatch):
    # The generating input holds every inactive row with slack: it is the decision's point, no
    # interior point is sought, the product of the layer with x_p is never formed, and only the
    # boundedness test's spread rows are restricted to the null space.
    from reluinv.geometry import spread_rows

    module = sys.modules["reluinv.preimage"]
    A, b, y, x = _compact_case()
    plain = reluinv.preimage(A, b, y)
    products = _recorded_products(monkeypatch)
    monkeypatch.setattr(module, "interior_point", lambda **kw: pytest.fail("an interior point was sought"))
    systems, taken = _recorded_systems(monkeypatch)
    r = reluinv.preimage(A, b, y, hint=x)
    assert taken == [True]
    assert (r.kind, r.nullity, r.margin) == (plain.kind, plain.nullity, plain.margin)
    np.testing.assert_array_equal(r.point, x)
    r.verify(A, b, y)
    (system,) = systems
    assert system.product is None and "c" not in vars(system)
    assert len(products) == 1
    np.testing.assert_array_equal(products[0], spread_rows(700 - 120, 37))


def _hint_near_a_face(where: str):
    """The compact case of seed 1 and a hint: its input moved off the equations, or along the null
    space onto or across the bound of the inactive row nearest it."""
    A, b, y, x = _compact_case(seed=1)
    inactive = np.flatnonzero(y == 0)
    i = inactive[np.argmax(A[inactive] @ x + b[inactive])]
    E = A[y > 0]
    d = A[i] - E.T @ np.linalg.lstsq(E.T, A[i], rcond=None)[0]  # row i projected onto N(A_pos)
    step = -(A[i] @ x + b[i]) / (A[i] @ d)  # x + step * d puts row i on its bound
    point = {
        "off the equations": x + 1e-6 * np.random.default_rng(2).standard_normal(x.size),
        "outside an inequality": x + 2 * step * d,
        "on an inequality": x + step * d,
    }[where]
    return A, b, y, point


def _recorded_systems(monkeypatch) -> tuple[list, list[bool]]:
    """The decisions' systems and what each one's ``_take_hint`` answered."""
    from reluinv.preimage import _LayerSystem

    systems: list = []
    taken: list[bool] = []
    take = _LayerSystem._take_hint

    def recorded(self, tol):
        systems.append(self)
        taken.append(take(self, tol))
        return taken[-1]

    monkeypatch.setattr(_LayerSystem, "_take_hint", recorded)
    return systems, taken


def test_a_hint_off_the_equations_is_ignored(monkeypatch):
    A, b, y, point = _hint_near_a_face("off the equations")
    _systems, taken = _recorded_systems(monkeypatch)
    r = reluinv.preimage(A, b, y, hint=point)
    assert taken == [False]
    plain = reluinv.preimage(A, b, y)
    assert (r.kind, r.nullity) == (plain.kind, plain.nullity) == ("compact", 37)
    np.testing.assert_array_equal(r.point, plain.point)
    r.verify(A, b, y)


def test_a_hint_across_a_face_is_where_the_search_starts(monkeypatch):
    # It solves the equations, so the search for a point starts from it (in place of x_p) with
    # the slacks of its own pass, and finds a point with slack in every row.
    A, b, y, point = _hint_near_a_face("outside an inequality")
    systems, taken = _recorded_systems(monkeypatch)
    r = reluinv.preimage(A, b, y, hint=point)
    assert taken == [True]
    (system,) = systems
    assert system.inside is None
    np.testing.assert_array_equal(np.ldexp(system.x_p, system.Q), point)
    plain = reluinv.preimage(A, b, y)
    assert (r.kind, r.nullity) == (plain.kind, plain.nullity) == ("compact", 37)
    assert not np.array_equal(r.point, point)
    r.verify(A, b, y)


def test_a_hint_on_a_face_is_the_point_and_its_tight_rows_are_tested(monkeypatch):
    # A point of P with one tight row: no search; the tight row is not omnidirectional, so a
    # second point steps off it, and the spread rows bound P.
    module = sys.modules["reluinv.preimage"]
    A, b, y, point = _hint_near_a_face("on an inequality")
    systems, taken = _recorded_systems(monkeypatch)
    monkeypatch.setattr(module, "interior_point", lambda **kw: pytest.fail("an interior point was sought"))
    r = reluinv.preimage(A, b, y, hint=point)
    assert taken == [True] and systems[0].inside is not None
    assert (r.kind, r.nullity) == ("compact", 37)
    np.testing.assert_array_equal(r.point, point)
    assert r.certificate.second_point is not None and not np.array_equal(r.certificate.second_point, point)
    r.verify(A, b, y)


def test_a_hint_at_a_pinned_singleton_is_its_point(monkeypatch):
    # Theorem 4 ii: the point of PINNED_SINGLETON, given as the hint, is the decision's point and
    # its tight rows are omnidirectional in N(A_pos); neither Newton nor the LP runs.
    module = sys.modules["reluinv.preimage"]
    A, b, y = [[1, 0], [0, 1], [1, -1]], [0, 0, -1], [1, 0, 0]
    monkeypatch.setattr(module, "interior_point", lambda **kw: pytest.fail("an interior point was sought"))
    monkeypatch.setattr(
        module._LayerSystem, "_chebyshev_point", lambda *a: pytest.fail("the Chebyshev LP ran")
    )
    r = reluinv.preimage(A, b, y, hint=[1.0, 0.0])
    assert (r.kind, r.nullity) == ("singleton", 1)
    np.testing.assert_array_equal(r.point, [1.0, 0.0])
    r.verify(A, b, y)


def test_layer_preimage_linear_matches_matrix_form():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 9)
    x = torch.randn(6)
    r = reluinv.layer_preimage(layer, x)
    A = layer.weight.detach().double().numpy()
    b = layer.bias.detach().double().numpy()
    y = np.maximum(A @ x.double().numpy() + b, 0)
    expected = reluinv.preimage(A, b, y)
    assert (r.kind, r.nullity, r.n_active) == (expected.kind, expected.nullity, expected.n_active)
    assert reluinv.layer_preimage(layer, x[None]).kind == r.kind  # batch dimension of 1


@pytest.mark.parametrize(
    "stride,padding,extra",
    [
        (1, 0, {}),
        (1, 1, {}),
        (2, 1, {}),
        (2, 0, {}),
        (1, 1, {"padding_mode": "circular"}),
        (1, 1, {"padding_mode": "reflect"}),
        (1, 2, {"dilation": 2}),
        (1, 1, {"groups": 2, "out_channels": 4}),
    ],
)
def test_conv_matrix_matches_torch(stride, padding, extra):
    torch.manual_seed(stride * 10 + padding)
    kw = {"out_channels": 3, **extra}
    conv = torch.nn.Conv2d(2, kernel_size=3, stride=stride, padding=padding, **kw).double()
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    A, b, _ = affine_matrix(conv, tuple(x.shape))
    np.testing.assert_allclose(
        A @ x.reshape(-1).numpy() + b, conv(x[None]).reshape(-1).detach().numpy(), atol=1e-12
    )


@pytest.mark.parametrize("stride,padding,bias_shift", [(1, 0, 0.0), (2, 1, -0.3), (1, 1, 0.5), (2, 0, -1.0)])
def test_layer_preimage_conv_matches_explicit_matrix(stride, padding, bias_shift):
    torch.manual_seed(stride + 7 * padding)
    conv = torch.nn.Conv2d(1, 2, 3, stride=stride, padding=padding)
    with torch.no_grad():
        conv.bias += bias_shift
    x = torch.rand(1, 5, 5)
    r = reluinv.layer_preimage(conv, x)
    A, b, _ = affine_matrix(conv, tuple(x.shape))
    y = np.maximum(A @ x.double().reshape(-1).numpy() + b, 0)
    # the rank of the active rows is computed, not assumed to be the number of active units
    assert r.rank == np.linalg.matrix_rank(A[y > 0])
    expected = reluinv.preimage(A, b, y)
    assert (r.kind, r.nullity) == (expected.kind, expected.nullity)
    assert r.kind == brute_force_kind(A, b, y)
    check_result(r, A, b, y)


def test_layer_preimage_rejects_unsupported_and_misshaped():
    with pytest.raises(ValueError, match="supports torch.nn.Linear and torch.nn.Conv2d, got ReLU"):
        reluinv.layer_preimage(torch.nn.ReLU(), torch.zeros(3))
    with pytest.raises(ValueError, match=r"Linear\(4, 2\) needs an input of shape \(4,\)"):
        reluinv.layer_preimage(torch.nn.Linear(4, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="Conv2d"):
        reluinv.layer_preimage(torch.nn.Conv2d(3, 2, 3), torch.zeros(1, 5, 5))
    with pytest.raises(ValueError, match="NaN"):
        reluinv.layer_preimage(torch.nn.Linear(2, 2), torch.tensor([np.nan, 1.0]))


def test_rows_that_vanish_in_the_null_space_do_not_bound_it():
    # Both inactive rows are parallel to the row space of the active ones: restricted to the
    # one-dimensional null space they are zero up to rounding and bound nothing.
    A = [
        [1.13182891, -0.3692075, -1.66273411],
        [0.79376604, -0.09905927, -1.38882422],
        [-1.724960505947981, 0.38296751381042143, 2.7844690950677724],
        [-1.005817408908903, 0.3126524916894812, 1.4991384445188316],
    ]
    b = [1.06813816, -0.53598699, -3.6099127118084064, -1.6177644635077226]
    y = [0, 0, 1, 1]
    r = reluinv.preimage(A, b, y)
    assert r.kind == brute_force_kind(A, b, y) == "unbounded"


def test_unit_inequalities_match_the_explicit_system():
    """Lazy unit rows (layer rows, then upper, then lower box rows) equal the stacked matrix."""
    from reluinv.preimage import _UnitInequalities

    rng = np.random.default_rng(3)
    A = rng.standard_normal((7, 4))
    A[2] *= 5.0
    inv = 1.0 / np.linalg.norm(A, axis=1)
    layer, up, lo = np.array([0, 2, 5]), np.array([1, 3]), np.array([0])
    G = _UnitInequalities(A, inv, layer, up, lo)
    explicit = np.vstack([A[layer] * inv[layer, None], np.eye(4)[up], -np.eye(4)[lo]])
    x = rng.standard_normal(4)
    assert G.size == 6
    np.testing.assert_allclose(G.dot(x), explicit @ x, rtol=1e-12)
    for idx in ([0, 1, 2], [5, 3, 0, 4], [4]):
        np.testing.assert_array_equal(G.rows(np.array(idx)), explicit[idx])


@pytest.mark.parametrize("which", ["A", "b", "y", "lower", "upper"])
def test_tensor_that_requires_grad_is_refused_by_name(which):
    args = {
        "A": [[1.0, 0], [0, 1], [1, -1]],
        "b": [0.0, 0, -1],
        "y": [1.0, 0, 0],
        "lower": [-5.0, -5.0],
        "upper": [5.0, 5.0],
    }
    args[which] = torch.tensor(args[which], requires_grad=True)
    with pytest.raises(ValueError, match=f"{which} is a torch tensor that requires grad"):
        reluinv.preimage(args["A"], args["b"], args["y"], lower=args["lower"], upper=args["upper"])


@pytest.mark.parametrize("which", ["A", "b", "y", "lower"])
@pytest.mark.parametrize("kind", ["numpy", "torch", "list"])
def test_complex_input_is_refused_by_name(which, kind):
    import warnings

    args = {"A": [[1.0, 0], [0, 1], [1, -1]], "b": [0.0, 0, -1], "y": [1.0, 0, 0], "lower": [-5.0, -5.0]}
    value = [np.asarray(row, dtype=complex).tolist() for row in np.atleast_2d(args[which])]
    value = value if which == "A" else value[0]
    value = {"numpy": np.asarray(value), "torch": torch.tensor(value), "list": value}[kind]
    args[which] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way to the error
        with pytest.raises(ValueError, match=f"{which} has complex entries"):
            reluinv.preimage(args["A"], args["b"], args["y"], lower=args["lower"])


def test_other_array_entry_points_refuse_grad_and_complex():
    A = [[1.0, 0], [-1, 0], [0, 1], [0, -1]]
    for fn in (reluinv.is_omnidirectional, reluinv.omnidirectional_certificate):
        with pytest.raises(ValueError, match="A is a torch tensor that requires grad"):
            fn(torch.tensor(A, requires_grad=True))
        with pytest.raises(ValueError, match="A has complex entries"):
            fn(np.asarray(A, dtype=complex))
    layer = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="x has complex entries"):
        reluinv.layer_preimage(layer, torch.tensor([1.0 + 1j, 2.0]))
    with pytest.raises(ValueError, match="x has complex entries"):
        reluinv.layer_preimage(layer, [1.0 + 1j, 2.0])
    r = reluinv.preimage([[1.0, 0], [0, 1]], [0.0, 0], [1.0, 1.0])
    with pytest.raises(ValueError, match="y has complex entries"):
        r.verify([[1.0, 0], [0, 1]], [0.0, 0], np.array([1.0, 1.0 + 2j]))
    # a layer's input may carry a graph: layer_preimage reads its values
    assert reluinv.layer_preimage(layer, torch.tensor([1.0, 2.0], requires_grad=True)).kind


def test_infinite_entries_are_named_as_beyond_float64():
    with pytest.raises(
        ValueError,
        match=r"y contains 2 NaN or infinite entries \(1 infinite: beyond "
        r"the float64 range",
    ):
        reluinv.preimage([[1.0, 0], [0, 1]], [0.0, 0], [np.inf, np.nan])


def _slack_oracle(R, c, log=None):
    """``slack_at`` of :func:`reluinv._interior.interior_point` for explicit rows; ``log`` gets
    how many rows each call recomputed."""

    def slack_at(z, idx):
        rows = slice(None) if idx is None else idx
        if log is not None:
            log.append(c[rows].size)
        return c[rows] - R[rows] @ z

    return slack_at


@pytest.mark.parametrize("seed", range(6))
def test_newton_interior_point_has_slack_in_every_row(seed):
    # Random polytopes {z : R z <= c} built around a point with slack 0.05 .. 1 in every row: the
    # returned point is checked against the rows directly.  The slacks it reports bound the true
    # ones from below and are exact near the bound (4 margins), where rounds pick rows up.
    from reluinv._interior import interior_point

    rng = np.random.default_rng(seed)
    m, k = 400, 30
    R = rng.standard_normal((m, k))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    c = R @ rng.standard_normal(k) * 3 + rng.uniform(0.05, 1.0, m)
    found = interior_point(lambda idx: R[idx], _slack_oracle(R, c), c, margin=1e-3, tol=1e-9)
    assert found is not None
    z, slack = found
    true = c - R @ z
    assert true.min() > 1e-9 and slack.min() > 1e-9
    assert np.all(slack <= true + 1e-12)
    near = true < 4e-3
    np.testing.assert_allclose(slack[near], true[near])


@pytest.mark.parametrize("seed", [1, 4])
def test_later_rounds_recheck_only_rows_their_move_can_reach(seed):
    # A polytope around a point at distance about 6 from z = 0: the first round's point misses
    # rows outside its subset, so a second round follows (a third for seed 4).  Rows far from
    # their bound keep the slack of the first full check less the length of the move, so the
    # later checks recompute a small fraction of the 3000 rows, and the answer is still a point
    # with slack in every row.
    from reluinv._interior import interior_point

    rng = np.random.default_rng(seed)
    m, k = 3000, 40
    R = rng.standard_normal((m, k))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    c = R @ rng.standard_normal(k) + rng.uniform(0.05, 1.0, m)
    log: list[int] = []
    found = interior_point(lambda idx: R[idx], _slack_oracle(R, c, log), c, margin=1e-3, tol=1e-9)
    assert found is not None
    z, slack = found
    assert (c - R @ z).min() > 1e-9 and np.all(slack <= c - R @ z + 1e-12)
    assert len(log) >= 2 and log[0] == m, log
    assert all(n < m / 3 for n in log[1:]), log


@pytest.mark.parametrize("shift", [0.0, -0.5])
def test_newton_interior_point_gives_up_without_interior(shift):
    # A single point (x = 0 pinned by +-x_1, +-x_2) and an empty set have no point with slack:
    # the shortcut must not claim one (the LP decides those).
    from reluinv._interior import interior_point

    R = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1], [1, 1]]) / np.array([1, 1, 1, 1, np.sqrt(2)])[:, None]
    c = np.array([0.0, shift, 0, 0, 1])
    assert interior_point(lambda idx: R[idx], _slack_oracle(R, c), c, margin=1e-3, tol=1e-9) is None


@pytest.mark.parametrize("shift", [0.0, -0.5])
def test_feasible_point_reaches_a_pinned_point_and_refuses_an_empty_set(shift):
    # The rows of the last test: where there is no point with slack, the steps aimed at the bounds
    # themselves still reach the single point x = 0, and claim none for the empty set.
    from reluinv._interior import feasible_point

    R = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1], [1, 1]]) / np.array([1, 1, 1, 1, np.sqrt(2)])[:, None]
    c = np.array([0.0, shift, 0, 0, 1])
    found = feasible_point(lambda idx: R[idx], lambda z: c - R @ z, c, tol=1e-9)
    if shift < 0:
        assert found is None
    else:
        assert found is not None
        z, slack = found
        np.testing.assert_allclose(slack, c - R @ z)
        assert slack.min() >= -1e-9 and np.abs(z).max() <= 1e-9


def test_feasible_point_gives_up_on_an_empty_set_once_the_violation_stops_shrinking(monkeypatch):
    # 400 rows around a feasible region, and a pair u z <= -0.05, -u z <= -0.05 that no z meets.
    # The steps reduce the squared violation to its least value and then move it little, without
    # ever reaching 0: on one of these six systems for all 200 steps of a round.  They stop once 20
    # steps leave more than half of it, so the six take far fewer steps than 242.
    from reluinv import _interior

    steps = []
    least_squares_step = _interior._least_squares_step
    monkeypatch.setattr(
        _interior, "_least_squares_step", lambda V, r: steps.append(1) or least_squares_step(V, r)
    )
    for seed in range(6):
        rng = np.random.default_rng(seed)
        k = 30
        R = rng.standard_normal((400, k))
        R /= np.linalg.norm(R, axis=1, keepdims=True)
        c = R @ rng.standard_normal(k) + rng.uniform(0.0, 1.0, 400)
        u = rng.standard_normal(k)
        u /= np.linalg.norm(u)
        R, c = np.vstack([R, u, -u]), np.r_[c, -0.05, -0.05]
        every_row = _slack_oracle(R, c)
        found = _interior.feasible_point(R.__getitem__, lambda z, at=every_row: at(z, None), c, tol=1e-9)
        assert found is None
    assert len(steps) < 120, len(steps)


@pytest.mark.parametrize("seed", range(4))
def test_feasible_point_reaches_a_point_pinned_by_many_rows(seed):
    # {z : R z <= c} is the single point p: 2k rows through p in opposite pairs (along a random
    # orthonormal basis), and 600 rows with slack 0.01 .. 1 there.  From z = 0, about 3 away, the
    # point returned is p to the tolerance, checked against every row directly.
    from reluinv._interior import feasible_point

    rng = np.random.default_rng(seed)
    k = 20
    p = rng.standard_normal(k) * 3 / np.sqrt(k)
    basis = np.linalg.qr(rng.standard_normal((k, k)))[0]
    loose = rng.standard_normal((600, k))
    loose /= np.linalg.norm(loose, axis=1, keepdims=True)
    R = np.vstack([basis.T, -basis.T, loose])
    c = R @ p + np.concatenate([np.zeros(2 * k), rng.uniform(0.01, 1.0, 600)])
    found = feasible_point(lambda idx: R[idx], lambda z: c - R @ z, c, tol=1e-9)
    assert found is not None
    z, slack = found
    assert (c - R @ z).min() >= -1e-9
    np.testing.assert_allclose(z, p, atol=1e-8)


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (7, 7), (1, 3), (12, 4)])
@pytest.mark.parametrize("dependent", [False, True])
def test_newton_step_is_the_minimum_norm_least_squares_solution(shape, dependent):
    # The Newton step (Gram-matrix Cholesky, or gelsy for a singular or ill-conditioned Gram
    # matrix) against numpy's SVD-based least squares, which is minimum-norm.
    from reluinv._interior import _least_squares_step

    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    V = rng.standard_normal(shape)
    if dependent:  # a repeated row, or a repeated column: rank below min(shape)
        V = np.vstack([V, V[:1]]) if shape[0] <= shape[1] else np.hstack([V, V[:, :1]])
    r = rng.standard_normal(V.shape[0])
    expected = np.linalg.lstsq(V, -r, rcond=None)[0]
    np.testing.assert_allclose(_least_squares_step(V, r), expected, atol=1e-10)


def test_rows_whose_squared_norm_overflows_are_finite_data():
    # Entries near the float64 limit (squared norms overflow) and subnormal ones are finite: the
    # one pass that checks A must not take their rows for NaN or inf.  The kind is that of the
    # same layer at unit scale, and the point scales with 1 / (the rows' scale).
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b, y = np.array([0.0, 0.0, -1.0]), np.array([2.0, 0.0, 1.0])
    expected = reluinv.preimage(A, b, y)
    assert expected.kind == "singleton"
    for s in (1e300, 1e-300):
        r = reluinv.preimage(A * s, b, y)
        assert r.kind == expected.kind
        np.testing.assert_allclose(r.point * s, expected.point, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("with_box", [False, True])
def test_unit_inequalities_restricted_to_a_subspace(with_box):
    # G[idx] @ O against the unit rows written out by hand: inactive layer rows over their norms,
    # then +e_j for each finite upper bound and -e_j for each finite lower bound.
    from reluinv.preimage import _UnitInequalities

    rng = np.random.default_rng(3)
    A = rng.standard_normal((9, 5)) * rng.uniform(0.1, 10.0, (9, 1))
    inactive = np.array([0, 2, 3, 7])
    up_idx, lo_idx = (np.array([1, 4]), np.array([0])) if with_box else (np.zeros(0, int), np.zeros(0, int))
    G = _UnitInequalities(A, 1.0 / np.linalg.norm(A, axis=1), inactive, up_idx, lo_idx)
    unit = A[inactive] / np.linalg.norm(A[inactive], axis=1, keepdims=True)
    explicit = np.vstack([unit, np.eye(5)[up_idx], -np.eye(5)[lo_idx]])
    O = np.linalg.qr(rng.standard_normal((5, 3)))[0]
    x = rng.standard_normal(5)
    for idx in (np.arange(G.size), np.array([3, 0]), np.arange(G.size)[::-1], np.zeros(0, np.intp)):
        out = np.full((idx.size, 3), np.nan)
        G.restricted(idx, O, out)
        np.testing.assert_allclose(out, explicit[idx] @ O, atol=1e-14)
        np.testing.assert_allclose(G.rows(idx), explicit[idx], atol=1e-15)
        np.testing.assert_allclose(G.dot_rows(x, idx), explicit[idx] @ x, atol=1e-14)


def test_restricted_rows_are_formed_once_and_returned_in_the_order_asked():
    # The store of a decision's restricted rows: overlapping requests in any order (past its
    # first capacity, so it grows) give G[idx] @ O, read-only, and form each row once, in the
    # order first asked for.
    from reluinv.preimage import _RestrictedRows, _UnitInequalities

    rng = np.random.default_rng(5)
    A = rng.standard_normal((200, 6))
    inactive = np.arange(0, 200, 2)  # 100 layer rows and 3 box rows, more than the first room (74)
    G = _UnitInequalities(A, 1.0 / np.linalg.norm(A, axis=1), inactive, np.array([2]), np.array([0, 5]))
    explicit = np.vstack(
        [A[inactive] / np.linalg.norm(A[inactive], axis=1, keepdims=True), np.eye(6)[[2]], -np.eye(6)[[0, 5]]]
    )
    O = np.linalg.qr(rng.standard_normal((6, 2)))[0]
    store = _RestrictedRows(G, O)
    formed = []
    restricted = G.restricted
    G.restricted = lambda idx, O, out: (formed.extend(idx.tolist()), restricted(idx, O, out))
    first_asked: list[int] = []
    for idx in (
        np.arange(5),
        np.array([4, 3, 30, 30]),
        np.array([62, 0, 61]),
        np.arange(G.size)[::-1],
        np.arange(10, 40),
    ):
        rows = store(idx)
        np.testing.assert_allclose(rows, explicit[idx] @ O, atol=1e-14)
        assert not rows.flags.writeable
        first_asked += [i for i in dict.fromkeys(idx.tolist()) if i not in first_asked]
    assert formed == first_asked  # each row once, in the order it was first asked for


def test_the_boundedness_test_and_the_interior_point_share_one_product(monkeypatch):
    # A compact decision forms the spread rows of the boundedness test and the rows the interior
    # point starts from in one product, the spread rows first (so the test reads them as a block):
    # the interior point's first request forms nothing more.
    from reluinv._interior import first_rows
    from reluinv.geometry import spread_rows

    module = sys.modules["reluinv.preimage"]  # the package attribute is the function
    A, b, y, _x = _compact_case()  # 120 of 700 units active, nullity 37
    products = _recorded_products(monkeypatch)
    formed_by_first: list[int] = []
    interior_point = module.interior_point

    def first_request_counted(rows, slack_at, c, margin, tol):
        before = len(products)
        rows(first_rows(c, margin))
        formed_by_first.append(len(products) - before)
        return interior_point(rows=rows, slack_at=slack_at, c=c, margin=margin, tol=tol)

    monkeypatch.setattr(module, "interior_point", first_request_counted)
    r = reluinv.preimage(A, b, y)
    assert (r.kind, r.n_active, r.nullity) == ("compact", 120, 37)
    spread = spread_rows(700 - 120, 37)
    np.testing.assert_array_equal(products[0][: spread.size], spread)
    assert products[0].size > spread.size  # the interior point's first rows joined them
    assert formed_by_first == [0]


def test_a_violated_row_that_is_constant_in_the_null_space_means_empty():
    """Row 2 lies in the span of the active rows (up to rounding in the null basis), and the
    active equations put it above its threshold: no point at all, however far along N(A_pos).
    Newton's steps on the rounded restriction (about 1e-16) once reached a point 1e16 away whose
    slack was positive by rounding; such constant rows are left to the LP, which says empty."""
    A = np.array(
        [
            [-1.0, -1.0, -1.0, -2.0, 0.0],
            [0.0, -1.0, 1.0, -1.0, -1.0],
            [1.0, 0.0, 2.0, -1.0, 0.0],
            [1.0, -2.0, -2.0, -2.0, -1.0],
            [1.0, -2.0, 2.0, -2.0, -2.0],
        ]
    )
    b = np.array([-0.8, 1.2, -0.8, 1.2, 1.2])
    y = np.array([6.2, 1.2, 0.0, 11.2, 3.2])
    assert brute_force_kind(A, b, y, None, None) == "empty"
    r = reluinv.preimage(A, b, y)
    assert r.kind == "empty", r.certificate.reason
    r.verify(A, b, y)


def test_compact_preimage_next_to_the_strip_is_certified_by_the_projections(monkeypatch):
    """A shifted layer (every weight + 0.02, sparse non-negative inputs; the --shift 0.02 --seed 1
    cases of benchmarks/preimage_speed.py) at 390 active units, nullity 394, just past where
    preimages turn unbounded: its inactive rows pass the projections on every row only after about
    300 rounds.  They get them (they keep closing in on the test), so the Stiemke LP, which took
    6 s here, is never built; the certificate is checked independently."""
    from reluinv import geometry

    rng = np.random.default_rng(1)
    m, n = 3500, 784
    A = rng.standard_normal((m, n)) / np.sqrt(n) + 0.02
    for n_active in (380, 390):  # the benchmark's draws, in its order
        x = rng.random(n) * (rng.random(n) < 0.5)
        z = A @ x
        b = -np.sort(z)[-n_active - 1 : -n_active + 1].mean() * np.ones(m)
    y = np.maximum(A @ x + b, 0.0)

    class NoLP:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the Stiemke LP was built")

    monkeypatch.setattr(geometry, "_StiemkeLP", NoLP)
    r = reluinv.preimage(A, b, y)
    assert r.kind == "compact" and r.nullity == 394
    assert "omnidirectional" in r.certificate.reason
    r.verify(A, b, y)


def test_spread_rows_that_stall_give_way_to_every_row_early(monkeypatch):
    """The projections on the 3k + 32 spread rows are a first try: past 50 rounds they go on only
    while every 50 rounds shrink their shortfall 1.5x.  On a shifted layer (the --shift 0.02 --seed 1
    cases of benchmarks/preimage_speed.py) at 578 active units, nullity 206, they stall and stop
    at round 100, where without the rule they went on until their gap became a direction of the
    rows (round 124); the projections on every row then certify the preimage compact, with the
    same verdict and margin either way, and the certificate is checked independently."""
    from reluinv import geometry

    rng = np.random.default_rng(1)
    m, n = 3500, 784
    A = rng.standard_normal((m, n)) / np.sqrt(n) + 0.02
    for n_active in np.linspace(200, 880, 10).round().astype(int)[:6]:  # the benchmark's draws
        x = rng.random(n) * (rng.random(n) < 0.5)
        z = A @ x
        b = -np.sort(z)[-n_active - 1 : -n_active + 1].mean() * np.ones(m)
    y = np.maximum(A @ x + b, 0.0)

    rounds: list[list[int]] = []  # projections made by each call of _project_subset
    range_projector, project_subset = geometry._range_projector, geometry._project_subset

    def counting_projector(rows):
        factor = range_projector(rows)
        if factor is None:
            return None
        project, rcond = factor

        def counted(v):
            rounds[-1][1] += 1
            return project(v)

        return geometry._Projector(project.coefficients, counted), rcond

    def recorded(rows, *args, **kwargs):
        rounds.append([rows.shape[0], 0])
        return project_subset(rows, *args, **kwargs)

    monkeypatch.setattr(geometry, "_range_projector", counting_projector)
    monkeypatch.setattr(geometry, "_project_subset", recorded)
    r = reluinv.preimage(A, b, y)
    assert r.kind == "compact" and r.nullity == 206
    r.verify(A, b, y)
    assert rounds[0][0] == 3 * 206 + 32 and rounds[0][1] <= 101  # rounds 0-100 at most
    assert rounds[1][0] > rounds[0][0]  # every row, which passes
    spread_rounds = rounds[0][1]

    def patient(rows, *args, **kwargs):  # the spread rows' rule before: up to 200 rounds
        kwargs["steady_after"] = geometry._PROJECTION_ROUNDS
        return recorded(rows, *args, **kwargs)

    rounds.clear()
    monkeypatch.setattr(geometry, "_project_subset", patient)
    before = reluinv.preimage(A, b, y)
    assert rounds[0][0] == 3 * 206 + 32 and rounds[0][1] >= spread_rounds  # 125 against 101 here
    assert (before.kind, before.margin) == (r.kind, r.margin)


def test_unbounded_preimage_whose_direction_newton_finds(monkeypatch):
    """A 600 x 100 layer with every weight shifted and a sparse non-negative input (as
    ``benchmarks/preimage_speed.py --shift``), 33 active units, nullity 67: the projections on the
    spread rows and on every row give up, and Newton's method on ``R z <= -1`` finds the direction
    without the hull point nearest 0 ever being sought.  The verdict agrees with the LP oracle and
    the certificate checks against the layer."""
    from reluinv import geometry

    def no_hull_point(rows):
        raise AssertionError("the hull point was sought")

    found = []
    hinge = geometry._hinge_direction

    def recording(*args, **kwargs):
        found.append(hinge(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr(geometry, "_nearest_hull_point", no_hull_point)
    monkeypatch.setattr(geometry, "_hinge_direction", recording)
    m, n, active = 600, 100, 33
    rng = np.random.default_rng(2)
    A = rng.standard_normal((m, n)) / np.sqrt(n) + 0.56 / np.sqrt(n)
    x = rng.random(n) * (rng.random(n) < 0.5)
    z = A @ x
    b = -np.sort(z)[-active - 1 : -active + 1].mean() * np.ones(m)
    y = np.maximum(z + b, 0.0)
    r = reluinv.preimage(A, b, y)
    assert (r.kind, r.nullity) == ("unbounded", n - active)
    assert len(found) == 1 and found[0] is not None and "Newton" in found[0].reason
    assert not r.near_tolerance
    assert brute_force_kind(A, b, y) == "unbounded"
    check_result(r, A, b, y)


def _counting(monkeypatch, module, name, counts, key, found=None):
    """Wrap ``module.name`` to count its calls in ``counts[key]`` (and non-None results in
    ``counts[found]``)."""
    original = getattr(module, name)

    def counted(*args, **kwargs):
        counts[key] += 1
        result = original(*args, **kwargs)
        if found is not None:
            counts[found] += result is not None
        return result

    monkeypatch.setattr(module, name, counted)


def test_box_preimages_of_sparse_inputs_are_decided_without_the_lp(monkeypatch):
    # Inputs with half their entries 0 in the box [0, 1], as images: many preimages are singletons
    # pinned by box faces and zero outputs, or thinner than the slack Newton's method seeks, so
    # no point with that slack exists.  The steps aimed at the bounds find a point of each, and
    # the kind agrees with the LP oracle on every layer, the Chebyshev LP never running.
    module = sys.modules["reluinv.preimage"]
    counts = {"lp": 0, "tried": 0, "found": 0}
    _counting(monkeypatch, module._LayerSystem, "_chebyshev_point", counts, "lp")
    _counting(monkeypatch, module, "feasible_point", counts, "tried", found="found")
    kinds = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(6, 16))
        A = rng.standard_normal((3 * n, n))
        x = rng.random(n) * (rng.random(n) < 0.5)
        k = int(rng.integers(1, n))  # active units: nullity n - k >= 1
        b = np.full(3 * n, -np.sort(A @ x)[::-1][k - 1 : k + 1].mean())
        y = np.maximum(A @ x + b, 0.0)
        r = reluinv.preimage(A, b, y, lower=0, upper=1)
        assert r.kind == brute_force_kind(A, b, y, 0, 1), (seed, r.certificate.reason)
        check_result(r, A, b, y, 0, 1)
        kinds.append(r.kind)
    assert counts["lp"] == 0
    assert counts["found"] == counts["tried"] >= 8, counts
    assert kinds.count("singleton") >= 5 and kinds.count("compact") >= 20, kinds


def test_a_boundary_point_with_a_second_point_too_close_goes_to_the_lp(monkeypatch):
    # P = [0, w]^2 with w far below the slack Newton's method seeks (the row x1 + x2 <= 10 sets the
    # scale): the steps aimed at the bounds stop at the corner 0, whose second point lies within
    # 1e3 tolerances of it, so the Chebyshev LP's point decides, and it is compact.
    module = sys.modules["reluinv.preimage"]
    counts = {"lp": 0, "tried": 0, "found": 0}
    _counting(monkeypatch, module._LayerSystem, "_chebyshev_point", counts, "lp")
    _counting(monkeypatch, module, "feasible_point", counts, "tried", found="found")
    w = 1e-7
    A, b, y = np.array([[1.0, 0], [0, 1], [1, 1]]), np.array([-w, -w, -10]), np.zeros(3)
    r = reluinv.preimage(A, b, y, lower=0, upper=1)
    assert counts == {"lp": 1, "tried": 1, "found": 1}
    assert r.kind == "compact"
    check_result(r, A, b, y, 0, 1)
    assert 0 < np.abs(r.certificate.second_point - r.point).max() < w
