"""Batched preimages of one layer (Theorem 4) against reluinv.preimage per sample and the 2n-LP
oracle, on both paths (LAPACK per sample, and batched torch factorisations)."""

import functools
import importlib

import numpy as np
import pytest
import torch

import reluinv
from problems import CONSTRUCTED, brute_force_kind
from reluinv._nullspace import EqualityFactor
from reluinv.preimage_batch import layer_outputs, preimage_batch

KINDS = {"empty", "singleton", "compact", "unbounded"}
VERDICT_KEYS = ("n_active", "kind", "rank", "nullity")


def same_result(r, q, A, b, y, lower=None, upper=None, same_lu=True):
    """q (batched) tells what r (reluinv.preimage) tells: the same verdict, rank, nullity and
    active count exactly, the same margin and tolerance up to rounding, and a certificate that
    checks against the layer on its own.

    ``same_lu=False``: q's LU came from torch, whose rounding differs from LAPACK's in the last
    bits.  An unbounded verdict's margin is then the strictness of whichever direction Newton's
    search reached, and that search may end elsewhere (on one random layer here: 0.035 against
    0.0072 from a null basis 3e-16 away); such margins must agree only on which side of the
    near-tolerance line they lie."""
    assert (q.kind, q.rank, q.nullity, q.n_active) == (r.kind, r.rank, r.nullity, r.n_active), (
        q.certificate.reason,
        r.certificate.reason,
    )
    if same_lu or q.direction is None:
        assert q.margin == pytest.approx(r.margin, rel=1e-6, abs=1e-12)
    else:
        assert q.near_tolerance == r.near_tolerance
    assert q.tolerance == pytest.approx(r.tolerance, rel=1e-12)
    assert (q.point is None) == (r.point is None)
    assert (q.direction is None) == (r.direction is None)
    q.verify(A, b, y, lower=lower, upper=upper)


def random_layer(seed, m, n, *, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # ties and rank-deficient active rows
        return rng, rng.integers(-2, 3, size=(m, n)).astype(float), rng.integers(-1, 2, size=m).astype(float)
    return rng, rng.standard_normal((m, n)), 0.5 * rng.standard_normal(m)


def outputs(rng, A, b, s, *, integer=False):
    """s outputs with active counts from none to all, some of them unreachable."""
    m, n = A.shape
    X = rng.integers(-2, 3, size=(s, n)).astype(float) if integer else rng.standard_normal((s, n))
    Z = X @ A.T
    levels = np.linspace(0.0, 1.0, s)
    shift = np.array([-np.quantile(z, 1 - a) for z, a in zip(Z, levels, strict=True)])
    Y = np.maximum(Z + b + (np.round(shift) if integer else shift)[:, None] - b, 0.0)
    bump = rng.random(s) < 0.25  # an active output moved off the layer's range
    Y[bump] += (Y[bump] > 0) * rng.integers(0, 2, size=(int(bump.sum()), m))
    return Y


# (m, n, integer, box): dense layers as in Figure 4, small enough for the 2n-LP oracle
CASES = [
    (40, 6, False, None),
    (60, 10, False, None),
    (12, 10, False, None),
    (9, 5, True, None),
    (30, 6, True, None),
    (20, 8, False, "full"),
    (20, 8, False, "mixed"),
]


def box(rng, kind, n):
    if kind == "full":
        return -np.ones(n) * 2, np.ones(n) * 3
    if kind == "mixed":
        lower = np.where(rng.random(n) < 0.5, -np.inf, -1.0)
        return lower, np.where(rng.random(n) < 0.5, np.inf, 2.0)
    return None, None


@pytest.mark.parametrize("device", [None, "cpu"], ids=["lapack", "torch-cpu"])
def test_matches_preimage_and_the_lp_oracle_on_random_layers(device, one_thread):
    seen = set()
    for seed, (m, n, integer, box_kind) in enumerate(CASES * 2):
        rng, A, b = random_layer(seed, m, n, integer=integer)
        Y = outputs(rng, A, b, 12, integer=integer)
        lower, upper = box(rng, box_kind, n)
        batch = preimage_batch(A, b, Y, lower=lower, upper=upper, device=device, group=5)
        assert len(batch) == len(Y)
        for y, q in zip(Y, batch, strict=True):
            r = reluinv.preimage(A, b, y, lower=lower, upper=upper)
            same_result(r, q, A, b, y, lower, upper, same_lu=device is None)
            assert q.kind == brute_force_kind(A, b, y, lower, upper), q.certificate.reason
            seen.add(q.kind)
    assert seen == KINDS  # the cases reach every verdict of Theorem 4


@pytest.mark.parametrize("device", [None, "cpu"], ids=["lapack", "torch-cpu"])
@pytest.mark.parametrize("name", sorted(CONSTRUCTED))
def test_constructed_cases(name, device, one_thread):
    A, b, y, lower, upper, expected = CONSTRUCTED[name]
    batch = preimage_batch(A, b, [y, y], lower=lower, upper=upper, device=device)
    assert [q.kind for q in batch] == [expected, expected]
    for q in batch:
        same_result(reluinv.preimage(A, b, y, lower=lower, upper=upper), q, A, b, y, lower, upper)


def test_lapack_path_repeats_the_per_sample_computation(one_thread):
    """Same code and same row norms: points agree to rounding, not merely in kind."""
    rng, A, b = random_layer(7, 80, 12)
    Y = outputs(rng, A, b, 16)
    for y, q in zip(Y, preimage_batch(A, b, Y), strict=True):
        r = reluinv.preimage(A, b, y)
        if r.point is not None:
            np.testing.assert_allclose(q.point, r.point, rtol=1e-9, atol=1e-12)
        if r.direction is not None:
            np.testing.assert_allclose(q.direction, r.direction, rtol=1e-9, atol=1e-12)


def test_inputs_are_mapped_by_the_layer_first(one_thread):
    rng, A, b = random_layer(3, 50, 8)
    X = rng.standard_normal((10, 8)) * np.linspace(0.1, 3, 10)[:, None]
    Y = layer_outputs(A, b, X)
    np.testing.assert_allclose(Y, [np.maximum(A @ x + b, 0) for x in X], rtol=1e-13, atol=1e-13)
    for x, q in zip(X, preimage_batch(A, b, X=X), strict=True):
        y = np.maximum(A @ x + b, 0)
        same_result(reluinv.preimage(A, b, y), q, A, b, y)  # X serves as the hints
        same_result(reluinv.preimage(A, b, y, hint=x), q, A, b, y)
        assert q.kind != "empty"  # every output of an input is reachable
        if q.kind == "singleton":
            np.testing.assert_allclose(q.point, x, atol=1e-8)


def test_hints_are_those_of_preimage(one_thread):
    # Each sample's hint goes to its own decision: the generating inputs are the points of the
    # compact preimages, a hint that fails its check (another sample's input) changes nothing.
    rng = np.random.default_rng(5)
    A = rng.standard_normal((300, 40)) / np.sqrt(40)
    X = rng.standard_normal((6, 40))
    b = np.full(300, -1.4)  # about 25 of 300 units active: compact preimages
    Y = layer_outputs(A, b, X)
    for hints in (X, X[::-1]):
        for x, y, q in zip(hints, Y, preimage_batch(A, b, Y, hints=hints), strict=True):
            r = reluinv.preimage(A, b, y, hint=x)
            same_result(r, q, A, b, y)
            np.testing.assert_allclose(q.point, r.point, rtol=1e-9, atol=1e-12)
    kinds = [q.kind for q in preimage_batch(A, b, Y, hints=X)]
    assert kinds.count("compact") == 6
    for x, q in zip(X, preimage_batch(A, b, Y, hints=X), strict=True):
        if q.kind == "compact":
            np.testing.assert_array_equal(q.point, x)


def counting_fallback(monkeypatch):
    """Count the per-sample factorisations the torch path falls back to."""
    module = importlib.import_module("reluinv.preimage_batch")  # the package exports the function

    calls = []

    def counted(E, e, **options):
        calls.append(E.shape)
        return EqualityFactor(E, e, **options)

    monkeypatch.setattr(module, "EqualityFactor", counted)
    return calls


def counting_lu_tries(monkeypatch):
    """Count the LU factorisations EqualityFactor tries before its QRs."""
    tries = []
    for name in ("_try_lu_wide", "_try_square_subset"):
        tried = getattr(EqualityFactor, name)

        def counted(self, E, e, *args, _name=name, _tried=tried, **kwargs):
            tries.append(_name)
            return _tried(self, E, e, *args, **kwargs)

        monkeypatch.setattr(EqualityFactor, name, counted)
    return tries


def test_rank_deficient_active_rows_fall_back_to_the_pivoted_qr(one_thread, monkeypatch):
    """9 active rows of rank 3 (three rows, each three times) in R^10: the torch QR fails the
    rank certificate and the per-sample pivoted QR decides, as in reluinv.preimage."""
    rng = np.random.default_rng(5)
    n = 10
    base = rng.standard_normal((3, n))
    x = rng.standard_normal(n)
    base *= np.sign(base @ x)[:, None]  # base @ x > 0
    A = np.vstack([np.repeat(base, 3, axis=0), rng.standard_normal((30, n))])
    b = np.r_[np.zeros(9), np.full(30, -100.0)]  # the random rows stay inactive near x
    Y = np.maximum(np.stack([x, 2 * x, -x]) @ A.T + b, 0)
    for device in (None, "cpu"):
        for y, q in zip(Y, preimage_batch(A, b, Y, device=device), strict=True):
            same_result(reluinv.preimage(A, b, y), q, A, b, y)
            assert q.kind == brute_force_kind(A, b, y)
    calls = counting_fallback(monkeypatch)
    tries = counting_lu_tries(monkeypatch)
    first = preimage_batch(A, b, Y[:1], device="cpu")[0]
    assert (first.n_active, first.rank) == (9, 3)
    assert calls == [(9, n)]  # the torch factor was refused, the pivoted QR decided
    assert tries == []  # without repeating the LU the torch factor had been


def test_tall_singular_pick_falls_back(one_thread, monkeypatch):
    """All 10 rows active in R^5, the n rows that the LU picks (0, 2, 4, 6, 9) dependent (rows
    0-4 are equal) though A_pos has full rank: the batched LU fails its certificate and the QR of
    all rows decides."""
    rng = np.random.default_rng(11)
    n = 5
    A = np.vstack([np.tile(rng.standard_normal(n), (n, 1)), rng.standard_normal((n, n))])
    b = np.full(2 * n, 50.0)
    X = rng.standard_normal((3, n))
    Y = np.maximum(X @ A.T + b, 0)
    assert np.all(Y > 0)
    for device in (None, "cpu"):
        for y, q in zip(Y, preimage_batch(A, b, Y, device=device), strict=True):
            same_result(reluinv.preimage(A, b, y), q, A, b, y)
            assert (q.kind, q.rank) == ("singleton", n)
    calls = counting_fallback(monkeypatch)
    tries = counting_lu_tries(monkeypatch)
    preimage_batch(A, b, Y, device="cpu")
    assert calls == [(2 * n, n)] * 3  # every batched LU was refused
    assert tries == []  # and the QR of all rows decided without repeating it
    reluinv.preimage(A, b, Y[0])
    assert tries == ["_try_square_subset"]  # the per-sample path tries that LU itself


def test_empty_batch_and_zero_rows(one_thread):
    A = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    b = np.array([0.0, 0.5, 0.0, -5.0])
    assert preimage_batch(A, b, np.zeros((0, 4))) == []
    assert preimage_batch(A, b, X=np.zeros((0, 2)), device="cpu") == []
    Y = np.array([[1.0, 0.5, 2.0, 0.0], [1.0, 0.0, 2.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    for device in (None, "cpu"):
        for y, q in zip(Y, preimage_batch(A, b, Y, device=device), strict=True):
            r = reluinv.preimage(A, b, y)
            same_result(r, q, A, b, y)
            assert q.kind == brute_force_kind(A, b, y)
    assert [q.kind for q in preimage_batch(A, b, Y)] == ["singleton", "empty", "compact"]


@pytest.mark.cuda
def test_cuda_factors_match_preimage():
    rng, A, b = random_layer(2, 300, 40)
    Y = outputs(rng, A, b, 24)
    for y, q in zip(Y, preimage_batch(A, b, Y, device="cuda", group=8), strict=True):
        same_result(reluinv.preimage(A, b, y), q, A, b, y)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of Y"),
        ({"Y": np.zeros((1, 3)), "X": np.zeros((1, 2))}, "exactly one of Y"),
        ({"Y": np.zeros((2, 4))}, r"Y must have shape \(samples, 3\)"),
        ({"Y": np.zeros(3)}, r"Y must have shape \(samples, 3\)"),
        ({"Y": [[0.0, -1.0, 0.0]]}, r"Y\[0, 1\] = -1.0"),
        ({"Y": [[0.0, np.nan, 0.0]]}, "Y contains 1 NaN"),
        ({"X": np.zeros((1, 3))}, r"X must have shape \(samples, 2\)"),
        ({"X": [[np.inf, 0.0]]}, "X contains 1 NaN or infinite"),
        ({"Y": np.zeros((1, 3)), "group": 0}, "group must be a positive integer"),
        ({"Y": np.zeros((1, 3)), "group": True}, "group must be a positive integer"),
        ({"Y": np.zeros((1, 3)), "lower": [0, 0], "upper": [-1, 1]}, "lower > upper"),
        ({"Y": np.zeros((1, 3)), "upper": [1, 1, 1]}, "upper must be a scalar or have shape"),
        ({"Y": np.zeros((1, 3)) + 1j}, "complex"),
        ({"Y": np.zeros((1, 3)), "device": "tpu:x"}, "device must be None or a torch device"),
        ({"Y": np.zeros((1, 3)), "device": "meta"}, "device must be a CPU or CUDA torch device"),
        ({"Y": np.zeros((1, 3)), "device": 3.5}, "device must be None or a torch device"),
        ({"Y": np.zeros((1, 3)), "hints": np.zeros((2, 2))}, r"hints must have one row per sample \(1\)"),
        ({"Y": np.zeros((1, 3)), "hints": np.zeros((1, 3))}, r"hints must have shape \(samples, 2\)"),
        ({"X": np.zeros((1, 2)), "hints": [[np.nan, 0.0]]}, "hints contains 1 NaN"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=message):
        preimage_batch(A, np.zeros(3), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
def test_cuda_without_a_device_is_a_value_error():
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        preimage_batch(np.eye(2), np.zeros(2), np.zeros((0, 2)), device="cuda")


def test_bad_layer_raises_value_error():
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        preimage_batch(np.eye(2), np.zeros(3), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="A contains 1 NaN"):
        preimage_batch([[np.nan, 0.0]], [0.0], [[0.0]])
    with pytest.raises(ValueError, match="A must be 2-dimensional"):
        preimage_batch(np.zeros(3), np.zeros(3), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="requires grad"):
        preimage_batch(torch.eye(2, requires_grad=True), np.zeros(2), np.zeros((1, 2)))


# --- Figure 4's chunked worker --------------------------------------------------------------


def test_figure4_chunk_records_match_the_per_sample_worker(one_thread):
    from reluinv.experiments import fig4

    rng, A, b = random_layer(20, 14, 8)
    images = rng.standard_normal((14, 8)) * np.linspace(0.05, 3, 14)[:, None]
    layer = {"weight": A, "bias": b - 0.5}
    chunk = fig4.classify_batch(layer, images.astype(np.float32))["samples"]
    assert len(chunk) == len(images)
    kinds = set()
    for image, got in zip(images.astype(np.float32), chunk, strict=True):
        want = fig4.classify_sample(layer, image)
        assert set(got) == set(want)
        assert {k: got[k] for k in ("n_active", "kind", "rank", "nullity")} == {
            k: want[k] for k in ("n_active", "kind", "rank", "nullity")
        }
        assert got["margin"] == pytest.approx(want["margin"], rel=1e-6, abs=1e-12)
        if "direction_check" in want:
            assert got["direction_check"]["max_abs_active"] <= 1e-9
            assert got["direction_check"]["max_inactive"] <= 1e-9
            assert got["direction_check"]["norm"] == pytest.approx(1.0)
        kinds.add(got["kind"])
    assert kinds == {"unbounded", "compact", "singleton"}  # every kind of record


def test_figure4_chunk_keeps_the_other_verdicts_when_one_sample_fails(monkeypatch, one_thread):
    from reluinv.experiments import fig4

    real = fig4.preimage_batch
    poison = np.full(6, 7.0)

    def failing(A, b, Y, **kw):
        if any(np.allclose(y, np.maximum(A @ poison + b, 0)) for y in Y):
            raise ValueError("this output cannot be decided")
        return real(A, b, Y, **kw)

    monkeypatch.setattr(fig4, "preimage_batch", failing)
    rng, A, b = random_layer(17, 30, 6)
    images = np.vstack([rng.standard_normal((2, 6)), poison, rng.standard_normal((1, 6))])
    chunk = fig4.classify_batch({"weight": A, "bias": b}, images)["samples"]
    assert chunk[2] == {
        "n_active": int(np.count_nonzero(A @ poison + b > 0)),
        "kind": "failed",
        "error": "ValueError: this output cannot be decided",
    }
    for i in (0, 1, 3):
        assert chunk[i]["kind"] == fig4.classify_sample({"weight": A, "bias": b}, images[i])["kind"]


def test_figure4_engine_scan_is_stored_per_chunk_and_resumes(tmp_path, monkeypatch, one_thread):
    import json

    from reluinv.experiments import fig4
    from reluinv.experiments.common import RunConfig

    rng, A, b = random_layer(23, 30, 6)
    images = (rng.standard_normal((150, 6)) * rng.uniform(0.05, 3, (150, 1))).astype(np.float32)
    counts = (images @ A.T + b > 0).sum(1)
    layer = {"weight": A, "bias": b}
    config = RunConfig(out=tmp_path, progress=False)
    real = fig4.classify_batch

    @functools.wraps(real)  # the store keeps the function's name
    def second_chunk_dies(shared, chunk):
        if len(chunk) == fig4.SCAN_CHUNK and np.array_equal(chunk[0], images[fig4.SCAN_CHUNK]):
            raise RuntimeError("worker lost")
        return real(shared, chunk)

    monkeypatch.setattr(fig4, "classify_batch", second_chunk_dies)
    first = fig4._engine_scan(config, layer, images, counts, "scan", "random")
    lost = range(fig4.SCAN_CHUNK, 2 * fig4.SCAN_CHUNK)
    assert [first[i] for i in lost] == [
        {"n_active": int(counts[i]), "kind": "failed", "error": "RuntimeError: worker lost"} for i in lost
    ]
    calls = []

    @functools.wraps(real)
    def counted(shared, chunk):
        calls.append(len(chunk))
        return real(shared, chunk)

    monkeypatch.setattr(fig4, "classify_batch", counted)
    again = fig4._engine_scan(config, layer, images, counts, "scan", "random")
    assert calls == [fig4.SCAN_CHUNK]  # only the failed chunk ran again
    assert len(again) == len(images)
    for i, (image, got) in enumerate(zip(images, again, strict=True)):
        want = fig4.classify_sample(layer, image)
        assert {k: got[k] for k in VERDICT_KEYS} == {k: want[k] for k in VERDICT_KEYS}
        if i not in lost:
            assert got == first[i]  # read back from the store
    stored = [
        json.loads(line) for line in (tmp_path / "work" / "scan-chunks64.jsonl").read_text().splitlines()
    ]
    assert sorted({r["key"] for r in stored if r["status"] == "ok"}) == [0, 64, 128]
