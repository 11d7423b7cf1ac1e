"""Per-thread work arrays (reluinv._scratch) and the decisions that use them."""

from __future__ import annotations

import threading

import numpy as np

import reluinv
from reluinv import _scratch


def test_gathered_rows_are_the_rows_asked_for_in_one_reused_array():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((50, 7))
    first = _scratch.gathered_rows(M, np.array([3, 3, 49, 0]), "test rows")
    np.testing.assert_array_equal(first, M[[3, 3, 49, 0]])
    assert first.flags.c_contiguous
    second = _scratch.gathered_rows(M, np.arange(10, 13), "test rows")
    np.testing.assert_array_equal(second, M[10:13])
    assert np.shares_memory(first, second)  # the same work array, not a new allocation
    other = _scratch.gathered_rows(M, np.arange(2), "other rows")
    assert not np.shares_memory(other, second)
    np.testing.assert_array_equal(_scratch.gathered_rows(M, np.zeros(0, np.intp), "test rows"), M[:0])


def test_work_arrays_grow_keep_their_order_and_stay_bounded():
    small = _scratch.work_array("test grow", (3, 4), order="F")
    assert small.shape == (3, 4) and small.flags.f_contiguous
    grown = _scratch.work_array("test grow", (30, 40))
    assert grown.shape == (30, 40) and grown.flags.c_contiguous
    again = _scratch.work_array("test grow", (5, 5))
    assert np.shares_memory(again, grown)
    rows = _scratch.MAX_KEPT // 8 // 100 + 1  # just over the limit: allocated afresh each time
    big = _scratch.work_array("test big", (rows, 100))
    assert not np.shares_memory(big, _scratch.work_array("test big", (rows, 100)))


def test_each_thread_has_its_own_work_arrays():
    seen = {}

    def claim(name):
        seen[name] = _scratch.work_array("test thread", (10, 10))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.shares_memory(seen[0], seen[1])


def test_decisions_in_parallel_threads_match_the_same_decisions_in_turn():
    # Two threads deciding different preimages at once (each with its work arrays) give the
    # kinds, points and certificates that the same calls give one after the other.
    rng = np.random.default_rng(1)
    A = rng.standard_normal((400, 60))
    cases = []
    for _ in range(8):
        x = rng.standard_normal(60)
        b = -np.quantile(A @ x, rng.uniform(0.88, 0.93)) * np.ones(400)
        cases.append((b, np.maximum(A @ x + b, 0.0)))
    expected = [reluinv.preimage(A, b, y) for b, y in cases]
    got: dict[int, reluinv.Preimage] = {}

    def run(part):
        for i in range(part, len(cases), 2):
            for _ in range(3):
                got[i] = reluinv.preimage(A, *cases[i])

    threads = [threading.Thread(target=run, args=(part,)) for part in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.kind for r in expected} == {"compact"}
    for i, r in enumerate(expected):
        assert got[i].kind == r.kind and got[i].nullity == r.nullity
        np.testing.assert_array_equal(got[i].point, r.point)
        np.testing.assert_array_equal(got[i].certificate.multipliers, r.certificate.multipliers)
