"""`reluinv analyze` end to end: loading models (TorchScript scripted/traced, module:function +
state dict) and inputs (.npy/.npz/.pt), and the CSV/JSON rows checked against an independent
computation: each layer's weights taken straight from the torch modules, activations from a
float64 forward pass, Jacobians from torch.func.jacrev and singular values from numpy."""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from problems import brute_force_kind
from reluinv.experiments.analyze import add_analyze_parser, analyze
from reluinv.model_io import load_inputs, load_model, sequential_from_torchscript
from reluinv.preimage import preimage

# TorchScript is deprecated in recent torch; saving test models with it is still what users do.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MLP_INPUT = (4,)
CNN_INPUT = (1, 6, 6)


# ----------------------------------------------------------------------------------------------
# models, files and the independent computation


def small_mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).eval()


def small_cnn() -> nn.Sequential:
    torch.manual_seed(5)
    norm = nn.BatchNorm2d(3)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    norm.weight.data.normal_()
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),  # 0
        nn.ReLU(),  # 1
        nn.AvgPool2d(2),  # 2
        nn.Conv2d(2, 3, 3, stride=1, padding=1),  # 3
        norm,  # 4
        nn.ReLU(),  # 5
        nn.Flatten(),  # 6
        nn.Linear(27, 4),  # 7
        nn.ReLU(),  # 8
        nn.Linear(4, 2),  # 9
    ).eval()


MLP_RELUS = [1, 3]
CNN_RELUS = [1, 5, 8]
# Modules feeding each ReLU, from the previous activation (the block that Theorem 4 inverts).
CNN_BLOCKS = {1: (0, 1), 5: (2, 5), 8: (6, 8)}
MLP_BLOCKS = {1: (0, 1), 3: (2, 3)}


def mlp_inputs(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *MLP_INPUT)).astype(np.float32)


def cnn_inputs(n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, *CNN_INPUT)).astype(np.float32)


def expected_rows(model: nn.Sequential, inputs: np.ndarray, blocks: dict[int, tuple[int, int]]) -> list[dict]:
    """Per sample and ReLU: the preimage of the feature under the block's own (W, c), built from
    the modules directly (jacrev of the block in float64), and the prefix Jacobian's spectrum."""
    model = copy.deepcopy(model).double()
    for p in model.parameters():
        p.requires_grad_(False)
    rows = []
    for sample, x in enumerate(torch.as_tensor(inputs, dtype=torch.float64)):
        for relu, (start, stop) in blocks.items():
            block = nn.Sequential(*list(model)[start:stop])
            h = nn.Sequential(*list(model)[:start])(x[None])[0]
            z = block(h[None])[0].reshape(-1)
            y = torch.relu(z).numpy()
            W = torch.func.jacrev(lambda v, block=block: block(v[None])[0].reshape(-1))(h)
            W = W.reshape(z.numel(), -1).numpy()
            c = block(torch.zeros_like(h)[None])[0].reshape(-1).numpy()
            assert np.allclose(W @ h.reshape(-1).numpy() + c, z.numpy())
            r = preimage(W, c, y)
            prefix = nn.Sequential(*list(model)[: relu + 1])
            J = torch.func.jacrev(lambda v, prefix=prefix: prefix(v[None])[0].reshape(-1))(x)
            J = J.reshape(z.numel(), -1).numpy()
            sigma = np.linalg.svd(J, compute_uv=False)
            nonzero = sigma[sigma > max(J.shape) * np.finfo(float).eps * sigma[0]]
            rows.append(
                {
                    "sample": sample,
                    "layer": relu,
                    "active": int((z > 0).sum()),
                    "kind": r.kind,
                    "rank_active_rows": r.rank,
                    "nullity": r.nullity,
                    "W": W,
                    "c": c,
                    "y": y,
                    "jacobian_rank": int(nonzero.size),
                    "condition": float(nonzero[0] / nonzero[-1]) if nonzero.size else math.nan,
                    "sigma_max": float(sigma[0]),
                }
            )
    return rows


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reluinv")
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["analyze", *argv])
    return args.run(args)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def check_rows(rows: list[dict], expected: list[dict], *, spectra: bool) -> None:
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        assert int(row["sample"]) == want["sample"] and int(row["layer"]) == want["layer"]
        assert row["kind"] == want["kind"]
        assert int(row["active"]) == want["active"]
        assert int(row["rank_active_rows"]) == want["rank_active_rows"]
        assert int(row["nullity"]) == want["nullity"]
        if spectra:
            assert int(row["jacobian_rank"]) == want["jacobian_rank"]
            condition = float(row["condition"])
            if math.isnan(want["condition"]):
                assert math.isnan(condition)
            else:
                assert condition == pytest.approx(want["condition"], rel=1e-8)
            assert float(row["sigma_max"]) == pytest.approx(want["sigma_max"], rel=1e-10)
        else:
            assert "condition" not in row


@pytest.fixture
def builder_module(tmp_path, monkeypatch, request):
    """A module file in tmp_path (the cwd) that builds the test models; yields its import name."""
    name = f"reluinv_test_models_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent("""
        from torch import nn

        class Net(nn.Sequential):   # a user's subclass: it must not need importing in workers
            pass

        def mlp():
            return Net(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))

        def cnn():
            return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                 nn.Conv2d(2, 3, 3, stride=1, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(27, 4), nn.ReLU(), nn.Linear(4, 2))

        def with_maxpool():
            return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))

        def not_a_module():
            return 42
    """)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


# ----------------------------------------------------------------------------------------------
# end to end against the independent computation


def test_mlp_from_builder_and_state_dict_matches_direct_computation(tmp_path, builder_module, capsys):
    model = small_mlp()
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    inputs = mlp_inputs()
    np.save(tmp_path / "x.npy", inputs)
    out = tmp_path / "out"
    code = run_cli(
        [
            f"{builder_module}:mlp",
            "--weights",
            "mlp.pt",
            "--inputs",
            "x.npy",
            "--out",
            str(out),
            "--no-progress",
            "--backend",
            "local",
            "--workers",
            "2",
        ]
    )
    assert code == 0
    assert "1:ReLU" in capsys.readouterr().out

    expected = expected_rows(model, inputs, MLP_BLOCKS)
    rows = read_csv(out / "analysis.csv")
    check_rows(rows, expected, spectra=True)
    kinds = {r["kind"] for r in expected}
    assert len(kinds) >= 2, f"the test model should show more than one kind, got {kinds}"
    # The preimage oracle without any theory (tests/problems.py) agrees on the first layer.
    for want in expected:
        if want["layer"] == 1:
            assert brute_force_kind(want["W"], want["c"], want["y"]) == want["kind"]

    result = json.loads((out / "analysis.json").read_text())
    assert result["samples"] == len(inputs) and result["input_shape"] == list(MLP_INPUT)
    assert result["failed"] == [] and result["provenance"]["weights"] == "mlp.pt"
    assert [s["layer"] for s in result["layers"]] == MLP_RELUS
    for summary in result["layers"]:
        mine = [r for r in expected if r["layer"] == summary["layer"]]
        assert summary["kinds"] == {
            k: sum(r["kind"] == k for r in mine) for k in ("singleton", "compact", "unbounded", "empty")
        }
        assert summary["median_active"] == pytest.approx(np.median([r["active"] for r in mine]))
        conditions = [r["condition"] for r in mine if not math.isnan(r["condition"])]
        assert summary["median_condition"] == pytest.approx(np.median(conditions), rel=1e-8)
        assert summary["units"] in (6, 5) and summary["samples"] == len(inputs)
    assert len(result["rows"]) == len(rows)
    assert (out / "kinds_per_layer.png").stat().st_size > 0
    assert (out / "condition_rank_per_layer.png").stat().st_size > 0


@pytest.mark.parametrize("export", ["script", "trace"])
def test_cnn_from_torchscript_matches_direct_computation(tmp_path, export):
    model = small_cnn()
    inputs = cnn_inputs()
    example = torch.as_tensor(inputs[:1])
    saved = torch.jit.script(model) if export == "script" else torch.jit.trace(model, example)
    saved.save(str(tmp_path / "cnn.ts"))
    np.savez(tmp_path / "x.npz", other=np.zeros((2, 2)), inputs=inputs)  # key "inputs" wins
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                str(tmp_path / "cnn.ts"),
                "--inputs",
                str(tmp_path / "x.npz"),
                "--out",
                str(out),
                "--no-progress",
                "--backend",
                "serial",
            ]
        )
        == 0
    )
    check_rows(read_csv(out / "analysis.csv"), expected_rows(model, inputs, CNN_BLOCKS), spectra=True)
    result = json.loads((out / "analysis.json").read_text())
    by_layer = {s["layer"]: s for s in result["layers"]}
    assert by_layer[5]["affine_modules"] == ["2:AvgPool2d", "3:Conv2d", "4:BatchNorm2d"]
    assert by_layer[5]["input_dim"] == 72 and by_layer[5]["units"] == 27
    assert by_layer[5]["feeds_from"] == "the output of module 1:ReLU"


def test_mlp_torchscript_and_pt_inputs_give_the_rows_of_the_module(tmp_path):
    model = small_mlp()
    inputs = mlp_inputs(6)
    torch.save(torch.as_tensor(inputs), tmp_path / "x.pt")
    torch.jit.trace(model, torch.as_tensor(inputs[:1])).save(str(tmp_path / "mlp.ts"))
    loaded = load_model(tmp_path / "mlp.ts")
    assert isinstance(loaded, nn.Sequential) and not loaded.training
    batch = load_inputs(tmp_path / "x.pt")
    from_file = analyze(
        loaded, batch, out=tmp_path / "a", backend="serial", progress=False, spectra=False, plots=False
    )
    direct = analyze(
        model, inputs, out=tmp_path / "b", backend="serial", progress=False, spectra=False, plots=False
    )
    assert from_file["rows"] == direct["rows"]
    check_rows(from_file["rows"], expected_rows(model, inputs, MLP_BLOCKS), spectra=False)


# ----------------------------------------------------------------------------------------------
# options


def test_layers_option_and_no_spectra(tmp_path, capsys):
    model = small_cnn()
    torch.jit.script(model).save(str(tmp_path / "cnn.ts"))
    np.save(tmp_path / "x.npy", cnn_inputs(3))
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                str(tmp_path / "cnn.ts"),
                "--inputs",
                str(tmp_path / "x.npy"),
                "--out",
                str(out),
                "--layers",
                "8,5",
                "--no-spectra",
                "--no-progress",
                "--backend",
                "serial",
            ]
        )
        == 0
    )
    rows = read_csv(out / "analysis.csv")
    assert [int(r["layer"]) for r in rows] == [5, 8] * 3
    assert "condition" not in rows[0]
    assert (out / "kinds_per_layer.png").exists() and not (out / "condition_rank_per_layer.png").exists()
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"layer 3 is module 3:Conv2d, not a ReLU; .* 1, 5, 8"):
        run_cli(
            [
                str(tmp_path / "cnn.ts"),
                "--inputs",
                str(tmp_path / "x.npy"),
                "--out",
                str(out),
                "--layers",
                "3",
                "--backend",
                "serial",
            ]
        )
    with pytest.raises(ValueError, match="not a module index"):
        analyze(model, cnn_inputs(1), out=out, layers=[12], backend="serial")


def test_an_interrupted_run_resumes_from_its_store_and_a_changed_run_does_not(tmp_path):
    model = small_mlp()
    inputs = mlp_inputs(5)
    out = tmp_path / "out"
    first = analyze(model, inputs, out=out, backend="serial", progress=False, plots=False)
    store = first["files"]["store"]
    lines = open(store).read().splitlines()
    assert len(lines) == 5
    # Interrupt: keep two samples, as if the run was killed after them.
    with open(store, "w") as handle:
        handle.write("\n".join(lines[:2]) + "\n")
    again = analyze(model, inputs, out=out, backend="serial", progress=False, plots=False)
    assert again["rows"] == first["rows"]
    assert len(open(store).read().splitlines()) == 5  # only the three missing samples ran
    # Other layers (or model, or inputs): another store, nothing stale reused.
    only_first = analyze(model, inputs, out=out, layers=[1], backend="serial", progress=False, plots=False)
    assert only_first["files"]["store"] != store
    assert {r["layer"] for r in only_first["rows"]} == {1}


# ----------------------------------------------------------------------------------------------
# TorchScript rebuilding


def _rebuild_cases():
    torch.manual_seed(0)
    norm1d = nn.BatchNorm1d(5, affine=False)
    norm1d.running_mean.normal_()
    image = [
        nn.Conv2d(2, 4, 3, padding="same", padding_mode="reflect", dilation=1),
        nn.LeakyReLU(0.3),
        nn.Conv2d(4, 4, 2, padding="same", groups=2, bias=False),
        nn.ELU(0.5),
        nn.Conv2d(4, 3, 3, stride=(2, 1), padding=(1, 0), dilation=(1, 2), padding_mode="circular"),
        nn.Dropout2d(0.2),
        nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        nn.Sequential(nn.Identity(), nn.Tanh(), nn.Flatten()),
    ]
    probe = nn.Sequential(*image).eval()(torch.rand(1, 2, 8, 8))
    head = [nn.Linear(probe.shape[1], 5, bias=False), norm1d, nn.Dropout(0.1), nn.ReLU()]
    return nn.Sequential(*image, *head).eval()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("export", ["script", "trace"])
def test_torchscript_rebuild_is_exact_for_every_supported_module(tmp_path, export):
    model = _rebuild_cases()
    x = torch.rand(3, 2, 8, 8)
    saved = torch.jit.script(model) if export == "script" else torch.jit.trace(model, x)
    saved.save(str(tmp_path / "m.ts"))
    rebuilt = load_model(tmp_path / "m.ts")
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_weights_option_replaces_torchscript_weights(tmp_path):
    model = small_mlp()
    torch.jit.script(model).save(str(tmp_path / "mlp.ts"))
    other = small_mlp()
    for p in other.parameters():
        p.data.mul_(-2.0)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "mlp.ts", weights=tmp_path / "w.pt")
    x = torch.rand(2, 4)
    assert torch.equal(loaded(x), other(x))


# ----------------------------------------------------------------------------------------------
# clear errors


def test_unsupported_modules_are_named(tmp_path, builder_module):
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)))
    scripted.save(str(tmp_path / "maxpool.ts"))
    with pytest.raises(ValueError, match=r"'2' \(MaxPool2d\) is not supported.*AvgPool2d"):
        load_model(tmp_path / "maxpool.ts")

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), Square()))).save(
        str(tmp_path / "custom.ts")
    )
    with pytest.raises(ValueError, match=r"'1\.1' \(Square.*\) is not supported"):
        load_model(tmp_path / "custom.ts")

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def forward(self, x):
            return x + torch.relu(self.linear(x))

    torch.jit.trace(Residual(), torch.rand(1, 2)).save(str(tmp_path / "residual.ts"))
    with pytest.raises(ValueError, match="is a Residual, not an nn.Sequential"):
        load_model(tmp_path / "residual.ts")

    # module:function: a model that is not a chain (here a max-pool) is analysed as a traced graph.
    model = load_model(f"{builder_module}:with_maxpool")
    result = analyze(
        model,
        np.random.default_rng(0).normal(size=(1, 1, 6, 6)),
        out=tmp_path / "o",
        backend="serial",
        progress=False,
        plots=False,
    )
    assert [layer["name"] for layer in result["layers"]] == ["1", "2"]


def test_missing_files_and_bad_specs(tmp_path, builder_module):
    np.save(tmp_path / "x.npy", mlp_inputs(2))
    with pytest.raises(FileNotFoundError, match="neither an existing TorchScript file nor module:function"):
        run_cli(["nowhere.ts", "--inputs", "x.npy", "--backend", "serial"])
    with pytest.raises(FileNotFoundError, match="weights file"):
        run_cli(
            [f"{builder_module}:mlp", "--weights", "nowhere.pt", "--inputs", "x.npy", "--backend", "serial"]
        )
    torch.jit.script(small_mlp()).save(str(tmp_path / "mlp.ts"))
    with pytest.raises(FileNotFoundError, match="inputs file"):
        run_cli(["mlp.ts", "--inputs", "nowhere.npy", "--backend", "serial"])
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:build")
    with pytest.raises(ValueError, match="has no 'missing'"):
        load_model(f"{builder_module}:missing")
    with pytest.raises(ValueError, match="must return a torch.nn.Module, got int"):
        load_model(f"{builder_module}:not_a_module")
    torch.save(small_mlp().state_dict(), tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_model(tmp_path / "state.pt")
    torch.save(small_cnn().state_dict(), tmp_path / "cnn_state.pt")
    with pytest.raises(ValueError, match="do not fit the model"):
        load_model(f"{builder_module}:mlp", weights=tmp_path / "cnn_state.pt")


def test_inputs_files_and_their_errors(tmp_path):
    x = mlp_inputs(3)
    np.savez(tmp_path / "first.npz", x, np.zeros(2))
    assert np.array_equal(load_inputs(tmp_path / "first.npz"), x.astype(np.float64))
    assert load_inputs(tmp_path / "first.npz").dtype == np.float64
    bad = x.copy()
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 sample \(first: sample 2\)"):
        load_inputs(tmp_path / "nan.npy")
    np.save(tmp_path / "int.npy", np.zeros((2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="must be floating point, got uint8"):
        load_inputs(tmp_path / "int.npy")
    np.save(tmp_path / "flat.npy", np.zeros(4))
    with pytest.raises(ValueError, match="leading sample axis"):
        load_inputs(tmp_path / "flat.npy")
    torch.save({"inputs": torch.zeros(2, 4)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="holds a dict, not a tensor"):
        load_inputs(tmp_path / "dict.pt")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unknown type '.csv'"):
        load_inputs(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError):
        load_inputs(tmp_path / "missing.npy")


def test_inputs_of_the_wrong_shape_say_what_the_model_expects(tmp_path):
    with pytest.raises(ValueError, match=r"per-sample shape \(5,\).*expects per-sample shape \(4,\)"):
        analyze(small_mlp(), np.zeros((2, 5)), out=tmp_path, backend="serial")
    with pytest.raises(ValueError, match=r"per-sample shape \(6, 6\).*expects per-sample shape \(1, H, W\)"):
        analyze(small_cnn(), np.zeros((2, 6, 6)), out=tmp_path, backend="serial")
    # The first convolution takes 8 x 8, the Linear after Flatten does not.
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\) do not fit the model: module 7 \(Linear\)"):
        analyze(small_cnn(), np.zeros((2, 1, 8, 8)), out=tmp_path, backend="serial")
    with pytest.raises(ValueError, match="NaN"):
        analyze(small_mlp(), np.full((2, 4), np.nan), out=tmp_path, backend="serial")


def test_traced_in_training_mode_warns_and_is_analysed_in_eval_mode(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model.train(), torch.rand(2, 3), check_trace=False).save(str(tmp_path / "t.ts"))
    with pytest.warns(UserWarning, match="traced in training mode"):
        rebuilt = load_model(tmp_path / "t.ts")
    assert not rebuilt.training
    x = torch.rand(2, 3)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert sequential_from_torchscript(torch.jit.script(model.eval()))[1].p == 0.5


# ----------------------------------------------------------------------------------------------
# models that are not chains: traced graphs (residual add, max-pooling), by module path

GRAPH_MODELS = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.out = nn.Linear(4, 8), nn.Linear(8, 4), nn.Linear(4, 3)
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.act(self.fc1(x))
            return self.out(F.relu(self.fc2(h) + x))


    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.relu(self.pool(self.conv(x))), 1))


    class Block(nn.Module):
        # A ResNet basic block: one ReLU module called twice, batch norm, residual add.

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
            self.bn1, self.bn2, self.relu = nn.BatchNorm2d(2), nn.BatchNorm2d(2), nn.ReLU()
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

        def forward(self, x):
            h = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(h)) + x)


    class Sigmoid(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))


    def residual():
        torch.manual_seed(3)
        return Residual()


    def block():
        torch.manual_seed(6)
        return Block()


    def pooled():
        torch.manual_seed(4)
        return Pooled()
""")


@pytest.fixture
def graph_module(tmp_path, monkeypatch):
    name = f"graph_models_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(GRAPH_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield name
    sys.modules.pop(name, None)


def residual_oracle(model, x):
    """Per layer: (A, b, y) built from the weights by hand, y from the model's own forward."""
    with torch.no_grad():
        t = torch.as_tensor(x, dtype=torch.float64)[None]
        m = copy.deepcopy(model).double()
        h = torch.relu(m.fc1(t))
        y2 = torch.relu(m.fc2(h) + t)
    W1, b1 = m.fc1.weight.detach().numpy(), m.fc1.bias.detach().numpy()
    W2, b2 = m.fc2.weight.detach().numpy(), m.fc2.bias.detach().numpy()
    return {"act": (W1, b1, h[0].numpy()), "relu()": (np.hstack([W2, np.eye(4)]), b2, y2[0].numpy())}


def pooled_oracle(model, x):
    """The max-pool layer's preimage rows, built independently: ``(A, b)`` of ``z = conv(u)`` by
    jacrev, the argmax from torch's own max_pool2d; equalities ``A_sel u + b_sel = y`` written as
    ``(A_sel, b_sel - y + 1)`` with target 1, selection inequalities ``z_k - z_sel <= 0``."""
    m = copy.deepcopy(model).double()

    def z(u):
        return m.conv(u.reshape(1, 1, 4, 4)).reshape(-1)

    with torch.no_grad():
        A = torch.func.jacrev(z)(torch.zeros(16, dtype=torch.float64)).numpy()
        b = z(torch.zeros(16, dtype=torch.float64)).numpy()
        pre = m.conv(torch.as_tensor(x, dtype=torch.float64)[None])
        y, idx = torch.nn.functional.max_pool2d(pre, 2, return_indices=True)
    y, idx = y.reshape(-1).numpy(), idx.reshape(4, 4).numpy()
    rows, offsets, targets = [], [], []
    for channel in range(4):
        for j in range(4):
            sel = channel * 16 + idx[channel, j]
            rows.append(A[sel]), offsets.append(b[sel] - y[channel * 4 + j] + 1.0), targets.append(1.0)
            top, left = 2 * (j // 2), 2 * (j % 2)
            for k in (channel * 16 + (top + di) * 4 + left + dj for di in (0, 1) for dj in (0, 1)):
                if k != sel:
                    rows.append(A[k] - A[sel]), offsets.append(b[k] - b[sel]), targets.append(0.0)
    return A, b, (np.array(rows), np.array(offsets), np.array(targets))


@pytest.mark.parametrize("form", ["factory", "pt2"])
def test_analyze_residual_and_maxpool_graphs(tmp_path, graph_module, form):
    import importlib

    from reluinv.graph_preimage import graph_layer_preimage

    models = importlib.import_module(graph_module)
    rng = np.random.default_rng(5)
    kinds: dict[str, set[str]] = {"residual": set(), "pooled": set()}
    for name, shape in (("residual", (4,)), ("pooled", (1, 4, 4))):
        reference = getattr(models, name)().eval()
        spec = f"{graph_module}:{name}"
        if form == "pt2":
            example = torch.zeros(1, *shape)
            torch.export.save(torch.export.export(reference, (example,)), str(tmp_path / f"{name}.pt2"))
            spec = str(tmp_path / f"{name}.pt2")
        x = rng.normal(scale=2.0, size=(6, *shape))
        np.save(tmp_path / f"{name}.npy", x)
        out = tmp_path / f"out-{name}"
        assert (
            run_cli(
                [spec, "--inputs", f"{name}.npy", "--out", str(out), "--backend", "serial", "--no-progress"]
            )
            == 0
        )
        rows = read_csv(out / "analysis.csv")
        if name == "residual":
            assert sorted({r["name"] for r in rows}) == ["act", "relu()"]
            for row in rows:
                A, b, y = residual_oracle(reference, x[int(row["sample"])])[row["name"]]
                assert row["kind"] == preimage(A, b, y).kind
                assert row["kind"] == brute_force_kind(A, b, y)
                assert int(row["active"]) == int(np.count_nonzero(y > 0))
                assert int(row["input_dim"]) == A.shape[1]
        else:
            assert sorted({r["name"] for r in rows}) == ["pool", "relu"]
            for row in (r for r in rows if r["name"] == "pool"):
                sample = x[int(row["sample"])]
                A, b, oracle_rows = pooled_oracle(reference, sample)
                _, system = graph_layer_preimage(reference, sample, "pool")
                np.testing.assert_allclose(system.A, A, rtol=0, atol=1e-12)
                np.testing.assert_allclose(system.b, b, rtol=0, atol=1e-12)
                assert row["kind"] == preimage(*oracle_rows).kind
                assert int(row["input_dim"]) == 16 and int(row["active"]) == 16
        kinds[name] |= {r["kind"] for r in rows}
    assert len(kinds["residual"]) >= 2 and len(kinds["pooled"]) >= 2  # the oracles are exercised


def test_analyze_refuses_scripted_graph_in_one_line(tmp_path, graph_module, capsys):
    import importlib

    from reluinv.cli import main

    model = importlib.import_module(graph_module).residual().eval()
    torch.jit.script(model).save(str(tmp_path / "res.ts"))
    np.save(tmp_path / "x.npy", np.zeros((2, 4)))
    assert main(["analyze", "res.ts", "--inputs", "x.npy", "--backend", "serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("reluinv: error:")
    assert "not an nn.Sequential" in err[0] and ".pt2" in err[0] and "module:function" in err[0]


def test_graph_layers_chosen_by_module_path(tmp_path, graph_module):
    model = load_model(f"{graph_module}:pooled")
    x = np.random.default_rng(1).normal(size=(2, 1, 4, 4))
    result = analyze(
        model,
        x,
        out=tmp_path / "o",
        layers=["relu"],
        spectra=False,
        backend="serial",
        progress=False,
        plots=False,
    )
    assert [(layer["layer"], layer["name"]) for layer in result["layers"]] == [(1, "relu")]
    assert {row["name"] for row in result["rows"]} == {"relu"}
    with pytest.raises(
        ValueError, match=r"layer 'conv' is not a layer of the model; its layers are 0:pool, 1:relu"
    ):
        analyze(model, x, out=tmp_path / "o", layers=["conv"], backend="serial", progress=False)
    with pytest.raises(ValueError, match=r"per-sample shape \(1, 5\) do not fit the model"):
        analyze(model, np.zeros((2, 1, 5)), out=tmp_path / "o", backend="serial", progress=False)


@pytest.mark.parametrize("form", ["factory", "pt2"])
def test_analyze_basic_block_names_and_maps(tmp_path, graph_module, form, capsys):
    import importlib

    from reluinv.graph_preimage import graph_layer_preimage

    models = importlib.import_module(graph_module)
    reference = models.block().eval()
    spec = f"{graph_module}:block"
    if form == "pt2":
        torch.export.save(torch.export.export(reference, (torch.zeros(1, 2, 3, 3),)), str(tmp_path / "b.pt2"))
        spec = str(tmp_path / "b.pt2")
        rebuilt = load_model(spec)
        probe = torch.randn(4, 2, 3, 3)
        assert torch.allclose(rebuilt(probe), reference(probe), rtol=0, atol=1e-6)
    x = np.random.default_rng(7).normal(size=(3, 2, 3, 3))
    np.save(tmp_path / "x.npy", x)
    assert run_cli([spec, "--inputs", "x.npy", "--out", "o", "--backend", "serial", "--no-progress"]) == 0
    assert "relu#2" in capsys.readouterr().out
    rows = read_csv(tmp_path / "o" / "analysis.csv")
    assert [r["name"] for r in rows[:2]] == ["relu", "relu#2"]
    m = copy.deepcopy(reference).double()

    def second(u):  # the second ReLU's input from its sources (block input, first ReLU's output)
        return (m.bn2(m.conv2(u[18:].reshape(1, 2, 3, 3))) + u[:18].reshape(1, 2, 3, 3)).reshape(-1)

    zero = torch.zeros(36, dtype=torch.float64)
    with torch.no_grad():
        A, b = torch.func.jacrev(second)(zero).numpy(), second(zero).numpy()
    for row in (r for r in rows if r["name"] == "relu#2"):
        sample = torch.as_tensor(x[int(row["sample"])], dtype=torch.float64)
        with torch.no_grad():
            y = m(sample[None]).reshape(-1).numpy()
        _, system = graph_layer_preimage(reference, sample, "relu#2")
        assert system.sources == (("input", (2, 3, 3)), ("relu", (2, 3, 3)))
        np.testing.assert_allclose(system.A, A, rtol=0, atol=1e-12)
        np.testing.assert_allclose(system.b, b, rtol=0, atol=1e-12)
        assert row["kind"] == preimage(A, b, y).kind
        assert int(row["active"]) == int(np.count_nonzero(y > 0)) and int(row["input_dim"]) == 36


def test_pt2_with_unsupported_operator_is_one_line(tmp_path, graph_module, capsys):
    import importlib

    from reluinv.cli import main

    model = importlib.import_module(graph_module).Sigmoid().eval()
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3),)), str(tmp_path / "s.pt2"))
    np.save(tmp_path / "x.npy", np.zeros((2, 3)))
    (tmp_path / "junk.pt2").write_bytes(b"not an archive")
    assert main(["analyze", "s.pt2", "--inputs", "x.npy", "--backend", "serial"]) == 2
    assert main(["analyze", "junk.pt2", "--inputs", "x.npy", "--backend", "serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("reluinv: error:") for line in err)
    assert "aten.sigmoid" in err[0] and "(at 'top level')" in err[0] and "cannot analyse" in err[0]
    assert "is not a torch.export archive" in err[1]


def _recording_preimage(monkeypatch) -> list[tuple]:
    """Every ``(A, b, y, hint)`` the analysis hands to :func:`reluinv.preimage`, in this process."""
    import reluinv.experiments.analyze as module

    calls: list[tuple] = []
    real = module.preimage

    def recorded(A, b, y, hint=None):
        calls.append((A, b, y, hint))
        return real(A, b, y, hint=hint)

    monkeypatch.setattr(module, "preimage", recorded)
    return calls


def _check_hints_are_points(calls) -> None:
    # Each hint is the layer's input at the sample: ReLU(A hint + b) reproduces the output.
    for A, b, y, hint in calls:
        assert hint is not None and hint.shape == (A.shape[1],)
        np.testing.assert_allclose(np.maximum(A @ hint + b, 0.0), y, rtol=0, atol=1e-9)


def test_each_chain_decision_gets_its_blocks_input_as_hint(tmp_path, monkeypatch):
    # The CNN's ReLUs are fed by blocks of one, three (pool, conv, norm) and two (flatten,
    # linear) modules: the hint is the input of the block's first module.
    calls = _recording_preimage(monkeypatch)
    analyze(small_cnn(), cnn_inputs(2), out=tmp_path / "o", backend="serial", progress=False, plots=False)
    assert len(calls) == 2 * len(CNN_RELUS)
    _check_hints_are_points(calls)


def test_each_graph_decision_gets_its_sources_values_as_hint(tmp_path, graph_module, monkeypatch):
    import importlib

    calls = _recording_preimage(monkeypatch)
    model = importlib.import_module(graph_module).residual().eval()
    x = np.random.default_rng(2).normal(scale=2.0, size=(3, 4))
    analyze(model, x, out=tmp_path / "o", backend="serial", progress=False, spectra=False, plots=False)
    assert len(calls) == 3 * 2
    _check_hints_are_points(calls)
