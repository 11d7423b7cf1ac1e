"""Each figure experiment end to end in a tiny configuration, checked for what must hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reluinv.cli import main
from reluinv.experiments import runner
from reluinv.experiments.common import RunConfig
from reluinv.parallel import Executor


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> RunConfig:
    out = tmp_path_factory.mktemp("out")
    return RunConfig(quick=True, out=out, cache_dir=str(out / "cache"),
                     executor=Executor(backend="serial"), progress=False, limit=12, epochs=2)


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
    assert main(["reproduce", "fig1", "--out", str(out), "--no-progress", "--backend", "serial",
                 "--limit", "8"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "fig1" in results and (out / "fig1.png").exists()
    assert "fig1" in (out / "index.html").read_text()
    assert main(["reproduce", "fig1", "--out", str(out), "--no-progress", "--limit", "8"]) == 0
    assert "already in" in capsys.readouterr().out


def test_cli_bad_data_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["reproduce", "fig4", "--data-dir", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["reproduce", "fig4", "--data-dir", str(empty), "--out", str(tmp_path / "o"),
                 "--no-progress", "--limit", "4"]) == 2
    assert "empty" in capsys.readouterr().err


def test_cli_unknown_figure(tmp_path, capsys):
    assert main(["reproduce", "fig99", "--out", str(tmp_path)]) == 2
    assert "unknown figure 'fig99'" in capsys.readouterr().err


def test_fig6_spectra_record_their_device_and_a_missing_gpu_is_a_clear_error(tiny, tmp_path, capsys):
    result = runner("fig6")(tiny)
    assert result["device"] == "cpu"
    json.dumps(result)
    if torch.cuda.is_available():
        return
    assert main(["reproduce", "fig6", "--device", "cuda", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reproduce_spectra_on_cuda_match_the_cpu(tiny):
    """``--device cuda``: the figures' per-sample spectra equal the CPU ones to 1e-8 relative."""
    from reluinv.experiments.spectra_data import sample_spectra
    from reluinv.zoo import thin_cifar

    model = thin_cifar(in_channels=1, image_size=28).eval()
    image = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    cpu = sample_spectra({"model": model, "device": "cpu"}, image)["layers"]
    gpu = sample_spectra({"model": model, "device": "cuda"}, image)["layers"]
    for a, b in zip(cpu, gpu):
        assert a["rank"] == b["rank"]
        scale = max(a["singular_values"][0], 1e-300)
        np.testing.assert_allclose(b["singular_values"], a["singular_values"], rtol=0, atol=1e-8 * scale)
