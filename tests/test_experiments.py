"""Each figure experiment end to end in a tiny configuration, checked for what must hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reluinv.cli import main
from reluinv.experiments import fig5, fig9, runner
from reluinv.experiments.claims import VERDICTS
from reluinv.experiments.common import RunConfig
from reluinv.parallel import Executor


def _smoke_config(tmp_path_factory, name: str, *, limit: int, epochs: int) -> RunConfig:
    """A quick, serial, silent run in its own folder, capped at ``limit`` samples and ``epochs``."""
    out = tmp_path_factory.mktemp(name)
    return RunConfig(
        quick=True,
        out=out,
        cache_dir=str(out / "cache"),
        executor=Executor(backend="serial"),
        progress=False,
        limit=limit,
        epochs=epochs,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> RunConfig:
    return _smoke_config(tmp_path_factory, "out", limit=12, epochs=2)


def test_fig1_points_with_two_active_units_are_singletons(tiny):
    result = runner("fig1")(tiny)
    kinds = np.array(result["kind"])
    active = np.array(result["n_active"])
    cond = np.array(result["condition"])
    codes = result["kind_codes"]
    # the trained toy layer is generic: two or more active rows in R^2 have rank 2
    assert np.all(kinds[active >= 2] == codes["singleton"])
    assert np.all(cond[active >= 2] >= 1.0)
    assert np.all(cond[active == 1] == 1.0)
    assert np.all(cond[active == 0] == 0.0)
    json.dumps(result)


def test_fig4_full_rank_samples_are_singletons(tiny):
    result = runner("fig4")(tiny)
    assert len(result["samples"]) == 12
    n = result["input_dim"]
    for s in result["samples"]:
        assert s["kind"] in ("singleton", "compact", "unbounded")
        if s["rank"] >= n:
            assert s["kind"] == "singleton"
        if s["kind"] == "singleton" and s["nullity"] > 0:
            pytest.fail("a generic trained layer pinned by inequalities is not expected")
    json.dumps(result)


def test_cli_reproduce_writes_report_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RELUINV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    assert (
        main(["reproduce", "fig1", "--out", str(out), "--no-progress", "--backend", "serial", "--limit", "8"])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert "fig1" in results and (out / "fig1.png").exists()
    assert "fig1" in (out / "index.html").read_text()
    assert main(["reproduce", "fig1", "--out", str(out), "--no-progress", "--limit", "8"]) == 0
    assert "already in" in capsys.readouterr().out


def test_cli_bad_data_dir_is_a_clear_error(tmp_path, capsys):
    assert (
        main(["reproduce", "fig4", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "--data-dir" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "reproduce",
                "fig4",
                "--data-dir",
                str(empty),
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
                "--limit",
                "4",
            ]
        )
        == 2
    )
    assert "empty" in capsys.readouterr().err


def test_cli_unknown_figure(tmp_path, capsys):
    assert main(["reproduce", "fig99", "--out", str(tmp_path)]) == 2
    assert "unknown figure 'fig99'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory) -> RunConfig:
    """Two samples, one epoch: the CNN figures end to end on the 3x16x16 quick-mode stand-in."""
    return _smoke_config(tmp_path_factory, "cnn", limit=2, epochs=1)


def test_fig5_cnns_run_on_three_channel_inputs_and_thin_loses_rank_where_forced(tiny_cnn):
    result = runner("fig5")(tiny_cnn)
    assert result["input_shape"] == "3x16x16" and result["input_dim"] == 768
    assert "stand-in" in result["data"] and "quick mode" in result["data"]
    for key in ("wide", "thin"):
        layers = result[key]["layers"]
        assert [layer["paper_layer"] for layer in layers] == list(range(1, len(layers) + 1))
        assert layers[11]["role"] == "ReLU 6" and layers[12]["role"] == "dense 7"
        for layer in layers:
            assert max(layer["ranks"]) <= min(layer["out_dim"], 768)
    # ThinCIFAR's convolution 6 has 32 x 4 x 4 = 512 units for 768 inputs: the rank must drop.
    assert result["thin"]["layers"][10]["out_dim"] == 512
    assert result["thin"]["first_rank_loss"]["block"] <= 6
    verdicts = [c.verdict for c in fig5.claims(result, {"mode": "quick"})]
    assert verdicts == ["not testable"] * 3  # two samples are too few for a median
    json.dumps(result)


def test_fig9_reaches_c_star_and_states_its_layer(tiny_cnn):
    result = runner("fig9")(tiny_cnn)
    assert (result["block"], result["paper_layer"], result["role"]) == (4, 8, "ReLU 4")
    assert result["units"] == 32 * 8 * 8  # layer 4 of WideCIFAR at 16x16
    assert result["counts"][-1] == result["remaining"]  # the grid reaches c*
    assert result["cs"][-1] >= result["c_star"]
    assert {c.verdict for c in fig9.claims(result, {"mode": "quick"})} <= set(VERDICTS)
    json.dumps(result)


def test_fig6_spectra_record_their_device_and_a_missing_gpu_is_a_clear_error(tiny_cnn, tmp_path, capsys):
    result = runner("fig6")(tiny_cnn)
    assert result["device"] == "cpu"
    assert [layer["role"] for layer in result["decay"]] == [f"ReLU {b}" for b in range(1, 7)]
    json.dumps(result)
    if torch.cuda.is_available():
        return
    assert main(["reproduce", "fig6", "--device", "cuda", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.cuda
def test_reproduce_spectra_on_cuda_match_the_cpu(tiny):
    """``--device cuda``: the figures' per-sample spectra equal the CPU ones to 1e-8 relative."""
    from reluinv.experiments.spectra_data import sample_spectra
    from reluinv.zoo import thin_cifar

    model = thin_cifar(in_channels=3, image_size=16).eval()
    image = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    cpu = sample_spectra({"model": model, "device": "cpu"}, image)["layers"]
    gpu = sample_spectra({"model": model, "device": "cuda"}, image)["layers"]
    for a, b in zip(cpu, gpu, strict=True):
        assert a["rank"] == b["rank"]
        scale = max(a["singular_values"][0], 1e-300)
        np.testing.assert_allclose(b["singular_values"], a["singular_values"], rtol=0, atol=1e-8 * scale)


# --- CIFAR-shaped inputs ------------------------------------------------------------------------


def test_stand_in_is_cifar_shaped_deterministic_and_every_input_varies():
    from reluinv.data import load_embedded_digits
    from reluinv.experiments.cifar_shaped import colour_stand_in

    grey = load_embedded_digits("test", limit=200)
    a, b = colour_stand_in(grey), colour_stand_in(grey)
    assert a.input_shape == (3, 32, 32) and len(a) == 200
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, grey.labels)
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert (a.images.reshape(200, -1).std(axis=0) > 0).all()  # all 3,072 coordinates vary
    # the digit stays visible: the channel mean follows the padded grey image
    padded = np.pad(grey.images[:, 0], ((0, 0), (2, 2), (2, 2)))
    corr = np.corrcoef(a.images.mean(axis=1).ravel(), padded.ravel())[0, 1]
    assert corr > 0.8
    # colours do not depend on the label: a train split draws other colours
    train = colour_stand_in(load_embedded_digits("train", limit=200))
    assert not np.allclose(train.images[:, :, 0, 0], a.images[:, :, 0, 0])


def test_stand_in_refuses_what_it_cannot_shape():
    from reluinv.data import Dataset
    from reluinv.experiments.cifar_shaped import colour_stand_in, shrink

    rgb = Dataset(
        images=np.zeros((2, 3, 32, 32), np.float32),
        labels=np.zeros(2, np.int64),
        name="x",
        source="x",
        split="test",
    )
    with pytest.raises(ValueError, match="one-channel"):
        colour_stand_in(rgb)
    with pytest.raises(ValueError, match="divide"):
        shrink(rgb, 12)


def test_shrink_is_two_by_two_average_pooling():
    from reluinv.data import Dataset
    from reluinv.experiments.cifar_shaped import shrink

    images = np.random.default_rng(1).random((3, 3, 32, 32)).astype(np.float32)
    data = Dataset(images=images, labels=np.zeros(3, np.int64), name="x", source="x", split="test")
    small = shrink(data, 16)
    manual = np.array(
        [
            [
                [
                    [images[n, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for j in range(16)]
                    for i in range(16)
                ]
                for c in range(3)
            ]
            for n in range(3)
        ]
    )
    np.testing.assert_allclose(small.images, manual, rtol=1e-6)


def test_cnn_inputs_follow_the_mode(tmp_path):
    from reluinv.experiments.cifar_shaped import cnn_inputs

    quick = cnn_inputs(RunConfig(quick=True, out=tmp_path))
    full = cnn_inputs(RunConfig(quick=False, out=tmp_path))
    assert quick.test.input_shape == (3, 16, 16) and full.test.input_shape == (3, 32, 32)
    assert "quick mode" in quick.label and "quick mode" not in full.label
    assert not full.real_cifar and "stand-in" in full.label and full.label.endswith("3x32x32")


def test_paper_numbering_counts_relu_as_a_layer_and_skips_flatten():
    from reluinv.experiments.spectra_data import paper_numbering
    from reluinv.zoo import mlp_table2, wide_cifar

    def names(model):
        return [f"{i}:{type(m).__name__}" for i, m in enumerate(model)]

    cnn = paper_numbering(names(wide_cifar()))
    # Figure 8's caption: layer 2 is legend 3 and 4, layer 5 is legend 9 and 10
    assert [(n["paper_layer"], n["block"], n["role"]) for n in cnn[2:4]] == [
        (3, 2, "conv 2"),
        (4, 2, "ReLU 2"),
    ]
    assert [(n["paper_layer"], n["role"]) for n in cnn[8:10]] == [(9, "conv 5"), (10, "ReLU 5")]
    assert cnn[12]["paper_layer"] is None and cnn[13]["role"] == "dense 7"
    # Figure 11's caption: the MLP's layer 1 is legend 1 and 2
    mlp = paper_numbering(names(mlp_table2()))
    assert mlp[0]["paper_layer"] is None
    assert [(n["paper_layer"], n["role"]) for n in mlp[1:5]] == [
        (1, "dense 1"),
        (2, "ReLU 1"),
        (3, "dense 2"),
        (4, "ReLU 2"),
    ]


# --- claims over constructed results: each verdict must flip with the numbers ------------------


def _layers(
    ranks: list[float], conds: list[float] | None = None, tops=None, lows=None, n: int = 12
) -> list[dict]:
    """A fake CNN: convolution/ReLU pairs for blocks 1..len(ranks) (rank given after each ReLU,
    the convolution keeping the previous one), spectra ``[top, ..., low, 0...]`` of length n."""
    layers, previous = [], n
    for block, rank in enumerate(ranks, start=1):
        for kind, r in (("conv", previous), ("ReLU", rank)):
            top = tops[block - 1] if tops else 2.0
            low = lows[block - 1] if lows else 0.5
            r = int(r)
            values = list(np.geomspace(top, low, r)) + [0.0] * (n - r)
            cond = conds[block - 1] if conds else top / low
            number = 2 * block - (kind == "conv")
            layers.append(
                {
                    "index": number - 1,
                    "name": f"{number - 1}:{kind}",
                    "paper_layer": number,
                    "block": block,
                    "role": f"{kind} {block}",
                    "out_dim": 100,
                    "rank": float(r),
                    "ranks": [r] * 5,
                    "condition": cond,
                    "singular_values": values,
                }
            )
        previous = rank
    return layers


def _spectra_result(layers, samples=5, data="stand-in for CIFAR-10", n=12):
    return {
        "samples": samples,
        "input_dim": n,
        "input_shape": "3x2x2",
        "data": data,
        "training": {"epochs": 2},
        "layers": layers,
    }


def _fig5(thin_ranks, wide_ranks, thin_conds=None, wide_conds=None, samples=5):
    thin = _spectra_result(_layers(thin_ranks, thin_conds), samples)
    wide = _spectra_result(_layers(wide_ranks, wide_conds), samples)
    return {"thin": thin, "wide": wide, "input_dim": 12}


def _verdicts(claims):
    return [c.verdict for c in claims]


def _set_condition(result, key, role, value):
    for layer in result[key]["layers"]:
        if layer["role"] == role:
            layer["condition"] = value
    return result


def test_fig5_claims_flip_with_the_rank_pattern():
    meta = {"mode": "full"}
    full = [12] * 6

    def paper_like(thin, wide, conv5=500.0, relu5=50.0):
        result = _fig5(thin, wide)
        return _set_condition(_set_condition(result, "thin", "conv 5", conv5), "thin", "ReLU 5", relu5)

    holds = paper_like([12, 12, 12, 12, 9, 8], full[:5] + [10])
    assert _verdicts(fig5.claims(holds, meta)) == ["reproduced"] * 3
    # a first small loss earlier does not hide a decrease in layer 5
    again = paper_like([12, 12, 11, 11, 9, 8], full[:5] + [10])
    assert _verdicts(fig5.claims(again, meta)) == ["reproduced"] * 3
    early = paper_like([12, 12, 9, 9, 9, 8], full[:5] + [10])
    assert _verdicts(fig5.claims(early, meta)) == ["reproduced", "not reproduced", "not testable"]
    wide_first = paper_like([12, 12, 12, 12, 9, 8], [12, 11, 11, 11, 11, 10])
    assert _verdicts(fig5.claims(wide_first, meta))[:2] == ["not reproduced", "not reproduced"]
    worse = paper_like([12, 12, 12, 12, 9, 8], full, conv5=50.0, relu5=500.0)
    assert _verdicts(fig5.claims(worse, meta)) == ["reproduced", "reproduced", "not reproduced"]
    never = _fig5(full, full)
    assert _verdicts(fig5.claims(never, meta)) == ["not reproduced", "not reproduced", "not testable"]
    one = _fig5([12, 12, 12, 12, 9, 8], full, samples=1)
    assert _verdicts(fig5.claims(one, meta)) == ["not testable"] * 3


def _fig6(tops, lows, last_rank=10, samples=5):
    layers = _layers([12] * 5 + [last_rank], tops=tops, lows=lows)
    return {**_spectra_result(layers, samples), "decay": [l for l in layers if l["role"].startswith("ReLU")]}


def test_fig6_claims_flip_with_the_decay():
    from reluinv.experiments import fig6

    meta = {"mode": "quick"}
    holds = _fig6(tops=[1, 2, 3, 4, 5, 6], lows=[1, 0.5, 0.2, 0.1, 0.05, 0.01])
    assert _verdicts(fig6.claims(holds, meta)) == ["reproduced"] * 3
    flat = _fig6(tops=[6, 5, 4, 3, 2, 1], lows=[1, 0.9, 0.8, 0.7, 0.6, 0.5], last_rank=12)
    assert _verdicts(fig6.claims(flat, meta)) == ["not reproduced"] * 3
    assert _verdicts(fig6.claims(_fig6([1] * 6, [1] * 6, samples=2), meta)) == ["not testable"] * 3


def _effect(before_top, after_top, before_low=0.5, after_low=0.5, n=12):
    before = _layers([n], tops=[before_top], lows=[before_low])[1]
    after = _layers([n], tops=[after_top], lows=[after_low])[1]
    after = after | {"role": "ReLU 2", "paper_layer": 4, "block": 2}
    return {"before": before, "after": after}


def test_fig8_claims_lemma8_and_the_absolute_bound_only_where_comparable():
    from reluinv.experiments import fig8

    base = _spectra_result([], data="CIFAR-10, 3x32x32")
    holds = {**base, "effect": [_effect(2.4, 2.0), _effect(2.2, 2.1)]}
    assert _verdicts(fig8.claims(holds, {"mode": "full"})) == ["reproduced", "reproduced"]
    raised = {**base, "effect": [_effect(2.0, 3.0), _effect(2.2, 2.1)]}
    assert _verdicts(fig8.claims(raised, {"mode": "full"})) == ["not reproduced", "not reproduced"]
    assert _verdicts(fig8.claims(holds, {"mode": "quick"})) == ["reproduced", "not testable"]
    stand_in = {**holds, "data": "stand-in for CIFAR-10"}
    assert _verdicts(fig8.claims(stand_in, {"mode": "full"})) == ["reproduced", "not testable"]


def test_fig9_claims_flip_with_c_star_and_the_counts():
    cs = list(np.linspace(0, 10, 101))
    counts = [min(100, int(60 + 5 * c)) for c in cs]  # 60 rows at c = 0, all 100 from c = 8
    base = {
        "cs": cs,
        "counts": counts,
        "remaining": 100,
        "removed": 50,
        "c_star": 8.0,
        "sigma_max_after": 2.0,
        "training": {"epochs": 2},
        "input_shape": "3x32x32",
    }
    assert fig9.count_at(base, 2.05) == 70
    assert _verdicts(fig9.claims(base, {"mode": "full"})) == ["reproduced", "reproduced"]
    above = {**base, "sigma_max_after": 9.0}
    assert _verdicts(fig9.claims(above, {"mode": "full"})) == ["not reproduced", "not reproduced"]
    few = {**base, "counts": [min(100, int(10 * c)) for c in cs], "sigma_max_after": 2.0}
    assert _verdicts(fig9.claims(few, {"mode": "full"}))[1] == "not reproduced"
    none_removed = {**base, "c_star": float("nan")}
    assert _verdicts(fig9.claims(none_removed, {"mode": "full"})) == ["not testable"] * 2


def test_fig10_claims_compare_thin_with_wide():
    from reluinv.experiments import fig10

    layers = _layers([12] * 6, tops=[2] * 6, lows=[1, 0.5, 0.4, 0.3, 0.2, 0.1])
    decay = [l for l in layers if l["role"].startswith("ReLU")]
    strong, mild = _effect(2, 2, before_low=0.5, after_low=0.01), _effect(2, 2, before_low=0.5, after_low=0.4)
    base = {**_spectra_result(layers), "decay": decay, "wide_samples": 5}
    holds = {**base, "effect": [strong, mild], "wide_effect": [mild]}
    assert _verdicts(fig10.claims(holds, {"mode": "quick"})) == ["reproduced"] * 3
    assert fig10.relu_effect_factor(strong) == pytest.approx(50.0)
    weaker = {**base, "effect": [mild, mild], "wide_effect": [strong], "decay": list(reversed(decay))}
    assert _verdicts(fig10.claims(weaker, {"mode": "quick"}))[:2] == ["not reproduced"] * 2
