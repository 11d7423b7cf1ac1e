"""reluinv.model_io: TorchScript saved in training mode, and input files numpy cannot read safely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reluinv.model_io import load_inputs, load_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.mark.parametrize(
    "mode_module",
    [nn.Dropout(0.3), nn.BatchNorm1d(4), nn.AlphaDropout(0.2)],
    ids=["dropout", "batchnorm", "alpha-dropout"],
)
def test_scripted_in_training_mode_is_refused(tmp_path, mode_module):
    """Its forward is random or batch-dependent: analysing it in eval mode would analyse another
    network, so it is refused, naming the module, as the same module in training mode is."""
    model = nn.Sequential(nn.Linear(3, 4), mode_module, nn.ReLU(), nn.Linear(4, 2))
    path = tmp_path / "net.ts"
    torch.jit.script(model.train()).save(str(path))
    name = type(mode_module).__name__
    with pytest.raises(ValueError, match=rf"'1' \({name}\): was saved in training mode.*model\.eval\(\)"):
        load_model(path)
    torch.jit.script(model.eval()).save(str(path))
    loaded = load_model(path)
    x = torch.rand(5, 3)
    torch.testing.assert_close(loaded(x), model(x))


def test_scripted_in_training_mode_without_mode_dependent_modules_loads(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    path = tmp_path / "net.ts"
    torch.jit.script(model.train()).save(str(path))
    x = torch.rand(5, 3)
    torch.testing.assert_close(load_model(path)(x), model(x))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_object_array_inputs_name_the_file(tmp_path, suffix):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros(3), np.zeros(2)
    path = tmp_path / f"inputs{suffix}"
    if suffix == ".npy":
        np.save(path, ragged, allow_pickle=True)
    else:
        np.savez(path, inputs=ragged)
    with pytest.raises(ValueError, match=rf"inputs file '{path}' holds an object array"):
        load_inputs(path)


def test_unreadable_npy_names_the_file(tmp_path):
    path = tmp_path / "inputs.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(ValueError, match=rf"inputs file '{path}'"):
        load_inputs(path)
