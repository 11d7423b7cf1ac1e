"""Convolutions of a batch of tangents on the image rows they can reach (used by :func:`reluinv.spectra`).

The dense spectra of Section 3.2 push the identity basis of the input through the network: tangent
``j`` is the input pixel ``j`` switched on, and after ``l`` layers it is zero outside that pixel's
receptive field.  With pixel-major columns (:func:`reluinv.layer_spectrum.input_columns`), a chunk
of consecutive tangents comes from one or two image rows, so at every early layer it is zero
outside a band of rows.  :func:`conv_rows` convolves each chunk on that band only (plus the rows
the kernel needs, zero padding made explicit) and writes the result into a zero batch: the same
numbers as the full convolution, at a fraction of the work (WideCIFAR at 3x32x32: its third
convolution's tangents touch about 5 of 16 rows).

A chunk's band is tracked as ``(lo, hi)``, the first and last row where any of its tangents can
be non-zero (``hi < lo``: the chunk is zero).  An activation or a batch norm keeps the band; any
other step ends the tracking (the caller then applies the step to the whole batch).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from ._graph_ops import explicit_padding
from .network import CONV_CHUNK, ActivationStep, AffineStep, Step

__all__ = ["ROW_CHUNK", "chunk_rows", "conv_rows", "crops", "keeps_rows"]

#: Tangents per chunk: the chunk size of the float64 convolutions (:data:`reluinv.network.CONV_CHUNK`,
#: 32), whose consecutive pixel-major columns span at most two image rows of a 3-channel input.
ROW_CHUNK = CONV_CHUNK

Rows = tuple[NDArray[np.intp], NDArray[np.intp]]


def chunk_rows(columns: NDArray[np.intp], in_shape: tuple[int, ...]) -> Rows | None:
    """``(lo, hi)`` per chunk of :data:`ROW_CHUNK` tangents of the input columns (flat indices
    into a ``(C, H, W)`` input), or None for other input shapes."""
    if len(in_shape) != 3 or columns.size == 0:
        return None
    _, height, width = in_shape
    rows = (columns // width) % height
    starts = np.arange(0, rows.size, ROW_CHUNK)
    return np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts)


def crops(step: AffineStep, device: torch.device) -> bool:
    """Whether :func:`conv_rows` applies: a 2-D convolution with zero padding, on the CPU (on a
    GPU the whole-batch convolution is fast and many small calls are not)."""
    module = step.module
    return device.type == "cpu" and isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"


def keeps_rows(step: Step) -> bool:
    """Steps that leave every tangent's non-zero rows where they were: pointwise maps and maps
    that change nothing (Identity, Dropout; not Flatten, which changes the shape)."""
    if isinstance(step, ActivationStep):
        return True
    return isinstance(step.module, nn.BatchNorm2d) or (step.is_identity and step.out_shape == step.in_shape)


def conv_rows(step: AffineStep, tangents: torch.Tensor, rows: Rows) -> tuple[torch.Tensor, Rows]:
    """``W v`` of a convolution step for a batch whose chunks are zero outside ``rows``, and the
    rows where each chunk of the result can be non-zero.

    Output row ``o`` reads input rows ``o s - top + i d`` (``i < k``; stride ``s``, dilation
    ``d``, kernel height ``k``, top padding ``top``), so a chunk non-zero on rows ``lo..hi`` can
    only reach outputs ``ceil((lo + top - (k - 1) d) / s) .. floor((hi + top) / s)``; those are
    computed from the input rows they read, with explicit zero rows where they fall outside.
    """
    module = step.module
    assert isinstance(module, nn.Conv2d)
    kernel, dilation, stride = module.kernel_size[0], module.dilation[0], module.stride[0]
    left, right, top, _ = explicit_padding(module)
    height, width, out_height = step.in_shape[1], step.in_shape[2], step.out_shape[1]
    lo, hi = rows
    out = tangents.new_zeros((tangents.shape[0], *step.out_shape))
    out_lo, out_hi = np.zeros_like(lo), np.full_like(hi, -1)
    for j, start in enumerate(range(0, tangents.shape[0], ROW_CHUNK)):
        if hi[j] < lo[j]:
            continue
        first = max(0, -(-(int(lo[j]) + top - (kernel - 1) * dilation) // stride))
        last = min(out_height - 1, (int(hi[j]) + top) // stride)
        if last < first:
            continue
        need_first, need_last = first * stride - top, last * stride - top + (kernel - 1) * dilation
        read_first, read_last = max(0, need_first), min(height - 1, need_last)
        piece = tangents[start : start + ROW_CHUNK, :, read_first : read_last + 1]
        missing = (read_first - need_first, need_last - read_last)  # zero rows above and below
        if missing != (0, 0) or left != right:  # else the convolution pads the width itself
            piece = F.pad(piece, (left, right, *missing))
        out[start : start + ROW_CHUNK, :, first : last + 1] = F.conv2d(
            piece, step.weight, None, module.stride, (0, 0 if piece.shape[-1] > width else left),
            module.dilation, module.groups,
        )  # fmt: skip
        out_lo[j], out_hi[j] = first, last
    return out, (out_lo, out_hi)
