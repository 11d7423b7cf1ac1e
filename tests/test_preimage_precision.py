"""Outputs computed in float32: ``reluinv.preimage`` decides the y it is given, at a tolerance of
1e-9, and says so (:class:`reluinv.PrecisionWarning`) where float32's rounding explains an "empty"
verdict.  The oracle for the intended verdict is the same layer's output recomputed in float64,
whose active rows have full column rank (``numpy.linalg.matrix_rank``): a singleton."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import reluinv
from reluinv._validate import coarse_float_dtype

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the layer of Figure 4's size
from preimage_speed import make_case, make_layer  # noqa: E402


def _float32_layer(seed: int, m: int = 60, n: int = 20):
    """A torch Linear layer and one input, with the output computed in float32 and in float64."""
    torch.manual_seed(seed)
    layer = torch.nn.Linear(n, m)
    x = torch.randn(n)
    A, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    y32 = torch.relu(layer(x)).detach().numpy()
    y64 = np.maximum(A.astype(np.float64) @ x.numpy().astype(np.float64) + b.astype(np.float64), 0.0)
    return A, b, x.numpy(), y32, y64


def _suggested_rtol(caught: list[warnings.WarningMessage]) -> float:
    (w,) = [w for w in caught if issubclass(w.category, reluinv.PrecisionWarning)]
    return float(re.search(r"pass rtol=([0-9.e+-]+)", str(w.message)).group(1))


def _no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


@pytest.mark.parametrize("seed", range(3))
def test_a_float32_output_of_a_wide_active_set_warns_and_the_suggested_rtol_decides(seed):
    A, b, x, y32, y64 = _float32_layer(seed)
    active = y64 > 0
    assert active.sum() > A.shape[1] and np.linalg.matrix_rank(A[active].astype(float)) == A.shape[1]
    assert _no_warning(lambda: reluinv.preimage(A, b, y64)).kind == "singleton"
    with pytest.warns(reluinv.PrecisionWarning, match="y is float32") as caught:
        r = reluinv.preimage(A, b, y32)
    assert r.kind == "empty"  # right for the y given: float32 left the equations inconsistent
    rtol = _suggested_rtol(caught.list)
    assert 1e-6 <= rtol <= 1e-4
    loose = _no_warning(lambda: reluinv.preimage(A, b, y32, rtol=rtol))
    assert loose.kind == "singleton"
    np.testing.assert_allclose(loose.point, x, atol=1e-4)


def test_the_figure_4_layer_in_float32_warns_where_it_was_confidently_empty():
    # 900 of 3500 units active on 784 inputs: in float64 a singleton; with the output computed in
    # float32 the y given has an empty preimage by a violation of about 1.5e-5, which is not near
    # the tolerance of 1e-9, so only the warning tells the user that float32 explains it.
    rng = np.random.default_rng(0)
    A = make_layer(rng)
    for active in (600, 700, 800, 900):  # the fourth case of this layer
        b, _y, x = make_case(rng, A, active)
    A32, b32, x32 = A.astype(np.float32), b.astype(np.float32), x.astype(np.float32)
    y32 = np.maximum(A32 @ x32 + b32, np.float32(0))
    with pytest.warns(reluinv.PrecisionWarning, match="product of 784 terms") as caught:
        r = reluinv.preimage(A32, b32, y32)
    assert r.kind == "empty" and not r.near_tolerance
    assert _no_warning(lambda: reluinv.preimage(A32, b32, y32, rtol=_suggested_rtol(caught.list))).kind == (
        "singleton"
    )


def test_float32_outputs_whose_preimage_is_not_empty_need_no_warning():
    # Fewer active units than inputs: the equations are consistent whatever the rounding.
    rng = np.random.default_rng(1)
    A = rng.standard_normal((120, 40)).astype(np.float32)
    x = rng.standard_normal(40).astype(np.float32)
    b = np.full(120, -8.0, dtype=np.float32)
    y = np.maximum(A @ x + b, np.float32(0))
    assert 0 < (y > 0).sum() < 40
    assert _no_warning(lambda: reluinv.preimage(A, b, y)).kind in ("compact", "unbounded")


def test_a_float32_output_that_no_input_gives_is_empty_without_a_warning():
    # y = 1 on every unit of a layer with more units than inputs: inconsistent by far more than
    # float32's rounding, so the verdict stands on its own.
    rng = np.random.default_rng(2)
    A = rng.standard_normal((30, 10)).astype(np.float32)
    r = _no_warning(lambda: reluinv.preimage(A, np.zeros(30, np.float32), np.ones(30, np.float32)))
    assert r.kind == "empty" and r.margin > 1e-3


def test_preimage_batch_warns_once_for_float32_outputs_and_not_for_float32_inputs():
    A, b, x, y32, _y64 = _float32_layer(0)
    with pytest.warns(reluinv.PrecisionWarning, match="2 'empty' verdicts") as caught:
        kinds = [r.kind for r in reluinv.preimage_batch(A, b, np.stack([y32, y32]))]
    assert kinds == ["empty", "empty"] and len(caught.list) == 1
    # From the inputs, Y is computed in float64: the singleton, and nothing to warn about.
    got = _no_warning(lambda: reluinv.preimage_batch(A, b, X=np.stack([x, x])))
    assert [r.kind for r in got] == ["singleton", "singleton"]


def test_coarse_float_dtype_names_only_floats_coarser_than_float64():
    assert coarse_float_dtype(np.zeros(3, np.float32)) == np.float32
    assert coarse_float_dtype(np.zeros(3, np.float16)) == np.float16
    assert coarse_float_dtype(torch.zeros(3)) == np.float32
    for exact in (np.zeros(3), np.zeros(3, np.int32), [1.0, 2.0], 3, torch.zeros(3, dtype=torch.float64)):
        assert coarse_float_dtype(exact) is None
    assert coarse_float_dtype(torch.zeros(3, requires_grad=True)) is None  # refused elsewhere, named
