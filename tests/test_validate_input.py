"""``as_model_input``: the one conversion of a network's input used by every entry point."""

import numpy as np
import pytest
import torch

import reluinv
from reluinv import zoo
from reluinv._validate import as_model_input
from reluinv.graph import prepare_graph
from reluinv.model_io import as_input_batch
from reluinv.network import prepare_input


def test_values_dtype_and_layout():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # a non-contiguous view
    out = as_model_input(x)
    assert out.dtype == np.float64 and out.flags.c_contiguous
    assert np.array_equal(out, np.array([[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]))
    assert np.array_equal(as_model_input(torch.tensor([1, 2])), [1.0, 2.0])  # integers convert
    assert np.array_equal(as_model_input([[1, 2]]), [[1.0, 2.0]])


def test_an_input_that_requires_grad_is_read_as_its_values():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    assert np.array_equal(as_model_input(x), [1.5, -2.0])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (torch.tensor([1.0 + 1j, 2.0]), "v has complex entries"),
        (np.array([1.0 + 1j, 2.0]), "v has complex entries"),
        ([1.0 + 1j, 2.0], "v has complex entries"),
        (torch.tensor([True, False]), r"v must be a real tensor, got dtype torch.bool"),
        (np.array([True, False]), r"v must be a real array, got dtype bool"),
        ("abc", "v must be a numeric array"),
        (np.float64(2.0), "v must be an array with at least one dimension, got a scalar"),
        (torch.tensor([0.0, float("nan")]), r"v contains 1 NaN or infinite entry"),
        (np.array([np.inf, np.nan, 0.0]), r"v contains 2 NaN or infinite entries \(1 infinite"),
    ],
)
def test_bad_inputs_are_named(value, match):
    with pytest.raises(ValueError, match=match):
        as_model_input(value, "v")


def test_a_batch_needs_samples_and_is_checked_per_sample():
    batch = np.zeros((4, 3))
    batch[1, 2] = np.nan
    batch[3, 0] = -np.inf
    with pytest.raises(ValueError, match=r"b contain NaN or infinite values in 2 samples \(first: sample 1"):
        as_model_input(batch, "b", samples=True)
    with pytest.raises(ValueError, match=r"b have shape \(3,\); they need a leading sample axis"):
        as_model_input(np.zeros(3), "b", samples=True)
    with pytest.raises(ValueError, match=r"b hold no samples \(shape \(0, 3\)\)"):
        as_model_input(np.zeros((0, 3)), "b", samples=True)
    assert as_model_input(np.ones((2, 3), np.float32), samples=True).shape == (2, 3)


def test_entry_points_share_the_conversion():
    """linearize (chain and graph paths), layer_preimage and loaded batches refuse alike."""
    net = zoo.toy_circles().eval()
    bad = torch.tensor([True, False])
    with pytest.raises(ValueError, match="x must be a real tensor, got dtype torch.bool"):
        prepare_input(net, bad)
    with pytest.raises(ValueError, match="x must be a real tensor, got dtype torch.bool"):
        prepare_graph(net, bad)
    with pytest.raises(ValueError, match="x must be a real tensor, got dtype torch.bool"):
        reluinv.layer_preimage(torch.nn.Linear(2, 3), bad)
    for fn in (prepare_input, prepare_graph):
        with pytest.raises(ValueError, match="x has complex entries"):
            fn(net, torch.tensor([1.0 + 1j, 0.0]))
        with pytest.raises(ValueError, match="x must be an array with at least one dimension"):
            fn(net, 1.0)
    with pytest.raises(ValueError, match=r"inputs in 'f' contain NaN or infinite values in 1 sample"):
        as_input_batch(np.array([[0.0, np.nan]]), source="f")
    with pytest.raises(ValueError, match=r"inputs in 'f' must be floating point, got torch.int64"):
        as_input_batch(torch.tensor([[1, 2]]), source="f")


def test_a_tensor_input_keeps_its_device_and_the_sample_its_values():
    net = zoo.toy_circles().eval()
    x = torch.tensor([[0.25, -0.5]], dtype=torch.float32, requires_grad=True)
    sample, _ = prepare_input(net, x)
    assert sample.device == x.device and sample.dtype == torch.float64
    assert torch.equal(sample, x.detach()[0].double())
    sample, _ = prepare_graph(net, x)
    assert torch.equal(sample, x.detach()[0].double())
