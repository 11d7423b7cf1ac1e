"""Figure 4: the paper's literal Algorithm 1 on constructed layers with known answers, the per-sample
record of both verdicts, and the claims over small fake results."""

from __future__ import annotations

import numpy as np
import pytest

from reluinv import preimage
from reluinv.experiments import fig4
from reluinv.experiments.paper_algorithm import LP_INFEASIBLE, LP_SOLVED, paper_finite_preimage


def _layer_at(A, x0, slack):
    """Bias putting ``A x0 + b`` at ``slack`` (positive: active, <= 0: inactive), and y."""
    A = np.asarray(A, dtype=float)
    b = np.asarray(slack, dtype=float) - A @ x0
    return A, b, np.maximum(A @ x0 + b, 0.0)


def test_full_rank_active_rows_are_a_singleton_for_both():
    A, b, y = _layer_at([[1, 0], [0, 1], [-1, -1]], np.array([1.0, 1.0]), [1, 2, 3])
    assert paper_finite_preimage(A, y)["paper_kind"] == "singleton"
    assert preimage(A, b, y).kind == "singleton"


def test_rows_around_the_origin_are_compact_for_both():
    # Inactive rows whose hull holds 0 inside: {x : A (x - x0) <= 1} is a triangle.
    A, b, y = _layer_at([[1, 0], [0, 1], [-1, -1]], np.zeros(2), [-1, -1, -1])
    r = paper_finite_preimage(A, y)
    assert (r["paper_kind"], r["lp_status"], r["k"], r["k_bar"]) == ("compact", LP_SOLVED, 2, 3)
    assert preimage(A, b, y).kind == "compact"


def test_rows_in_one_half_plane_are_unbounded_for_both():
    A, b, y = _layer_at([[1, 0], [0, 1], [1, 1]], np.zeros(2), [-1, -1, -1])
    r = paper_finite_preimage(A, y)
    assert (r["paper_kind"], r["lp_status"]) == ("unbounded", LP_INFEASIBLE)
    assert preimage(A, b, y).kind == "unbounded"


def test_too_few_inactive_rows_is_corollary_6_without_an_lp():
    A, b, y = _layer_at([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.zeros(3), [1, -1, -1])
    r = paper_finite_preimage(A, y)
    assert (r["paper_kind"], r["k"], r["k_bar"], r["lp_status"]) == ("unbounded", 2, 2, None)
    assert preimage(A, b, y).kind == "unbounded"


def test_zero_on_the_hull_boundary_makes_the_paper_say_finite_wrongly():
    # 0 = (e1 + (-e1)) / 2 lies in the closed hull but not its interior: x2 -> -inf stays inside.
    A, b, y = _layer_at([[1, 0], [-1, 0], [0, 1]], np.zeros(2), [-1, -1, -1])
    assert paper_finite_preimage(A, y)["paper_kind"] == "compact"
    exact = preimage(A, b, y)
    assert exact.kind == "unbounded"
    d = exact.direction
    assert np.all(A @ d <= 1e-12) and np.linalg.norm(d) > 0.5


def test_a_singleton_pinned_by_inequalities_is_compact_for_the_paper():
    # Theorem 4 (ii): b = -A x0 with omnidirectional A leaves {x0} only; Algorithm 1 ignores b.
    A, b, y = _layer_at([[1, 0], [0, 1], [-1, -1]], np.zeros(2), [0, 0, 0])
    assert paper_finite_preimage(A, y)["paper_kind"] == "compact"
    assert preimage(A, b, y).kind == "singleton"


def test_an_impossible_output_is_empty_only_for_the_exact_engine():
    A, b, y = np.array([[1.0], [1.0]]), np.zeros(2), np.array([1.0, 0.0])
    assert paper_finite_preimage(A, y)["paper_kind"] == "singleton"
    assert preimage(A, b, y).kind == "empty"


def _angle_oracle(rows: np.ndarray) -> str:
    """0 lies inside the hull of planar rows iff no angular gap between them reaches pi."""
    angles = np.sort(np.arctan2(rows[:, 1], rows[:, 0]))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi]))
    return "compact" if gaps.max() < np.pi else "unbounded"


def test_random_planar_rows_match_the_angle_oracle():
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(120):
        rows = rng.standard_normal((int(rng.integers(3, 7)), 2))
        expected = _angle_oracle(rows)
        seen.add(expected)
        assert paper_finite_preimage(rows, np.zeros(len(rows)))["paper_kind"] == expected
    assert seen == {"compact", "unbounded"}


def test_null_space_restriction_matches_a_brute_force_lift():
    # One active row in R^3: the paper's test runs on A_zero restricted to the plane x1 = 0.
    rng = np.random.default_rng(7)
    for _ in range(40):
        planar = rng.standard_normal((4, 2))
        A = np.vstack([[1.0, 0.0, 0.0], np.column_stack([rng.standard_normal(4), planar])])
        y = np.array([1.0, 0, 0, 0, 0])
        assert paper_finite_preimage(A, y)["paper_kind"] == _angle_oracle(planar)


@pytest.mark.parametrize(
    "A, y, match",
    [
        (np.ones(3), np.ones(3), "A must be"),
        (np.ones((3, 2)), np.ones(2), "y must be"),
        (np.ones((3, 2)), -np.ones(3), "y must be"),
        (np.full((2, 2), np.nan), np.ones(2), "A must be"),
    ],
)
def test_bad_input_is_a_value_error(A, y, match):
    with pytest.raises(ValueError, match=match):
        paper_finite_preimage(A, y)


def test_the_paper_s_full_rank_shortcut_matches_the_svd_on_generic_layers():
    rng = np.random.default_rng(11)
    for active in (0, 3, 5, 8, 10):
        A = rng.standard_normal((30, 8))
        y = np.zeros(30)
        y[:active] = 1.0
        literal = paper_finite_preimage(A, y)
        shortcut = paper_finite_preimage(A, y, assume_full_rank=True)
        assert shortcut == literal


def test_the_full_rank_shortcut_misses_a_rank_deficient_layer():
    # Two equal active rows in R^2: rank 1, not 2; the shortcut takes the paper's assumption.
    A, b, y = _layer_at([[1, 0], [1, 0], [0, 1], [0, -1]], np.zeros(2), [1, 1, -1, -1])
    assert paper_finite_preimage(A, y)["paper_kind"] == "compact"
    assert paper_finite_preimage(A, y, assume_full_rank=True)["paper_kind"] == "singleton"
    assert preimage(A, b, y).kind == "compact"


# --- one sample through Figure 4's worker -----------------------------------------------------


def test_both_verdicts_of_a_sample_and_the_checked_direction():
    # Boundary case of Appendix A3 as a layer: at x = 0 every unit is inactive.
    layer = {"weight": np.array([[1.0, 0], [-1, 0], [0, 1]]), "bias": -np.ones(3)}
    out = fig4.classify_sample(layer, np.zeros(2))
    paper = fig4.algorithm1_sample(layer, np.zeros(2))
    assert (out["kind"], paper["paper_kind"], out["n_active"]) == ("unbounded", "compact", 0)
    check = out["direction_check"]
    assert check["norm"] == pytest.approx(1.0)
    assert check["max_abs_active"] == 0.0 and check["max_inactive"] <= 1e-12
    assert "paper_kind" not in out


# --- comparison, conclusion and claims over small fake results --------------------------------


def _sample(n_active, kind, paper_kind=None):
    return {"n_active": n_active, "kind": kind, "paper_kind": paper_kind or kind}


def _entry(name, samples, change=""):
    return {
        "data_name": name,
        "data": name,
        "samples": samples,
        "recipe_change": change,
        "input_dim": 784,
        "training": {"test_accuracy": 0.9},
        "n_samples": len(samples),
        "comparison": fig4.compare(samples, 784),
    }


def _result(*entries):
    result = dict(entries[-1])
    result["other_data"] = list(entries[:-1])
    result["conclusion"] = fig4.conclude(list(entries))
    return result


def test_compare_counts_disagreements_with_their_reasons():
    c = fig4.compare(
        [
            _sample(800, "singleton"),
            _sample(700, "unbounded", "compact"),
            _sample(600, "singleton", "compact"),
            _sample(650, "compact"),
        ],
        784,
    )
    assert c["disagreements"] == 2 and c["bounded_disagreements"] == 1
    assert c["exact"]["unbounded"] == 1 and c["paper"]["compact"] == 3
    assert c["below_strip"] == 3 and c["exact_unbounded_below_strip"] == 1
    assert any("boundary of the hull" in r for r in c["reasons"])
    assert any("Theorem 4 ii" in r for r in c["reasons"])


def test_compare_counts_the_engine_on_every_sample_and_algorithm1_on_its_subset():
    plain = {"n_active": 500, "kind": "unbounded"}  # Algorithm 1 did not run on it
    failed = {**_sample(400, "unbounded"), "paper_kind": "failed"}
    c = fig4.compare([_sample(800, "singleton"), plain, failed, _sample(700, "unbounded", "compact")], 784)
    assert (c["decided"], c["algorithm1_decided"]) == (4, 2)
    assert c["exact"]["unbounded"] == 3 and c["paper"] == {"compact": 1, "singleton": 1, "unbounded": 0}
    assert c["below_strip"] == 3 and c["exact_unbounded_below_strip"] == 3
    assert c["paper_unbounded_below_strip"] == 0 and c["disagreements"] == 1


@pytest.mark.parametrize(
    ("quick", "wanted", "expected"),
    [(True, None, 40), (False, None, 40), (True, 7, 7), (False, 7, 7), (False, 100, 40)],
)
def test_algorithm1_subset(quick, wanted, expected, monkeypatch):
    from reluinv.experiments.common import RunConfig

    monkeypatch.setattr(fig4, "ALGORITHM1_SAMPLES_FULL", 50)
    config = RunConfig(quick=quick, algorithm1_samples=wanted)
    chosen, rule = fig4.algorithm1_subset(config, 40)
    assert chosen.size == expected and np.all(np.diff(chosen) > 0) and chosen.max() < 40
    again, _ = fig4.algorithm1_subset(config, 40)
    assert np.array_equal(chosen, again)  # seeded: a rerun resumes the same subset
    assert (f"{expected:,} of the 40" in rule) if expected < 40 else rule == "all 40 scanned samples"
    full_default = fig4.algorithm1_subset(RunConfig(quick=False), 400)[0]
    assert full_default.size == 50 and len(set(full_default.tolist())) == 50


def test_conclusion_names_no_factor_when_everything_is_bounded():
    verdict = fig4.conclude([_entry("digits", [_sample(600, "compact"), _sample(800, "singleton")])])
    assert verdict["factors"] == []
    assert "not reproduced" in verdict["text"]


def test_conclusion_names_the_algorithm_when_the_verdicts_disagree_on_boundedness():
    verdict = fig4.conclude([_entry("digits", [_sample(600, "unbounded", "compact")])])
    assert "algorithm" in verdict["factors"]


def test_conclusion_names_the_training_when_no_sample_reaches_the_strip():
    verdict = fig4.conclude([_entry("digits", [_sample(900, "singleton")])])
    assert verdict["factors"] == ["training"]
    # The Keras-default recipe stayed above the strip; the analysed (changed) model did not.
    entry = _entry("digits", [_sample(600, "compact")])
    entry["training"]["paper_recipe_active"] = [1500, 1900]
    verdict = fig4.conclude([entry])
    assert verdict["factors"] == ["training"] and "1500-1900" in verdict["text"]
    assert "not reproduced" in verdict["text"]
    entry["training"]["paper_recipe_active"] = [700, 1900]
    assert fig4.conclude([entry])["factors"] == []


def test_conclusion_names_the_data_when_only_one_data_set_is_unbounded():
    verdict = fig4.conclude(
        [_entry("digits", [_sample(600, "compact")]), _entry("fashion", [_sample(600, "unbounded")])]
    )
    assert verdict["factors"] == ["data"]
    both = fig4.conclude(
        [_entry("digits", [_sample(600, "unbounded")]), _entry("fashion", [_sample(600, "unbounded")])]
    )
    assert both["factors"] == [] and "reproduces" in both["text"]


def _verdicts(result):
    return [c.verdict for c in fig4.claims(result, {"mode": "quick"})]


def test_claims_flip_with_the_numbers():
    good = _result(_entry("digits", [_sample(800, "singleton"), _sample(600, "unbounded")]))
    assert _verdicts(good) == ["reproduced"] * 3
    bad = _result(_entry("digits", [_sample(800, "compact"), _sample(600, "compact", "unbounded")]))
    assert _verdicts(bad) == ["not reproduced"] * 3
    none = _result(_entry("digits", [_sample(750, "compact")]))
    assert _verdicts(none)[:2] == ["not testable", "not testable"]
    # A second data set counts too: its singleton failure flips the first claim.
    two = _result(
        _entry("digits", [_sample(900, "compact")]),
        _entry("fashion", [_sample(800, "singleton"), _sample(600, "unbounded")]),
    )
    assert _verdicts(two)[0] == "not reproduced"
