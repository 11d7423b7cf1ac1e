"""Input checks shared by the public functions: every failure is a ``ValueError`` naming the culprit."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray


def as_finite_array(value: Any, name: str, *, ndim: int | None = None) -> NDArray[np.float64]:
    """Return ``value`` as a float64 array, or raise ``ValueError`` naming ``name``.

    Rejects non-numeric input, the wrong number of dimensions, and NaN or infinite entries.
    """
    arr = as_real_array(value, name)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    # One reduction finds the common all-finite case without a boolean temporary the size of arr
    # (a finite sum means no NaN or inf; an overflowing sum falls back to the exact test).
    if not np.isfinite(arr.sum()) and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        inf = int(np.count_nonzero(np.isinf(arr)))
        why = (
            f" ({inf} infinite: beyond the float64 range of about 1.8e308, as when a "
            f"computation that produced {name} overflowed)"
            if inf
            else ""
        )
        raise ValueError(f"{name} contains {bad} NaN or infinite entr{'y' if bad == 1 else 'ies'}{why}")
    return arr


def coarse_float_dtype(value: Any) -> np.dtype[Any] | None:
    """The floating dtype of ``value`` where it holds fewer digits than float64 (float32, float16),
    else None (float64, integers, Python numbers, or anything that is not an array of floats)."""
    try:
        dtype = np.asarray(value).dtype
    except (RuntimeError, TypeError, ValueError):  # refused, with its message, by as_real_array
        return None
    if np.issubdtype(dtype, np.floating) and np.finfo(dtype).eps > np.finfo(np.float64).eps:
        return dtype
    return None


def as_real_array(value: Any, name: str) -> NDArray[np.float64]:
    """``value`` as a float64 array; ``ValueError`` naming ``name`` for anything that is not real.

    Refused rather than converted: a torch tensor that requires grad (torch would raise its own
    RuntimeError; pass ``value.detach()``), complex values (numpy would drop the imaginary part
    with only a warning), and non-numeric input.
    """
    if getattr(value, "requires_grad", False):
        raise ValueError(
            f"{name} is a torch tensor that requires grad; pass {name}.detach() "
            f"(the analysis does not differentiate through it)"
        )
    try:
        arr = np.asarray(value)
    except RuntimeError as exc:  # e.g. a list of tensors that require grad
        raise ValueError(f"{name} cannot be read as an array ({exc})") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
    if np.iscomplexobj(arr) or (
        arr.dtype == object and any(isinstance(v, (complex, np.complexfloating)) for v in arr.flat)
    ):
        raise _complex_error(name)
    try:
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from exc


def _complex_error(name: str) -> ValueError:
    return ValueError(
        f"{name} has complex entries; the preimage is defined over real "
        f"numbers (pass the real part explicitly if that is what you mean)"
    )


def as_model_input(x: Any, name: str = "x", *, samples: bool = False) -> NDArray[np.float64]:
    """A network's input as a finite float64 NumPy array on the CPU: the one conversion behind
    every entry point that takes an input (``linearize``, ``layer_preimage``, the graph and
    invariance paths, loaded input files).

    ``x`` is a torch tensor or array-like.  A tensor is read as its values: detached (an input
    may carry an autograd graph; the analysis does not differentiate through it) and copied to
    the CPU; integer tensors are converted.  ``ValueError`` naming ``name`` for complex entries,
    boolean arrays and tensors, non-numeric input, a 0-d scalar, and NaN or infinite entries.

    With ``samples=True``, ``x`` is a batch ``(N, *input_shape)`` with ``N >= 1``, and a
    non-finite entry is reported by sample (the message reads ``name`` as a plural noun, e.g.
    ``"inputs in 'x.npy'"``).  The result is C-contiguous.

    Example::

        as_model_input(torch.ones(2, 3, requires_grad=True)).dtype      # float64
    """
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        if x.is_complex():
            raise _complex_error(name)
        if x.dtype == torch.bool:
            raise ValueError(f"{name} must be a real tensor, got dtype {x.dtype}")
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    elif isinstance(x, np.ndarray) and x.dtype == np.bool_:
        raise ValueError(f"{name} must be a real array, got dtype bool")
    arr = as_real_array(x, name)
    if samples:
        return np.ascontiguousarray(_finite_samples(arr, name))
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array with at least one dimension, got a scalar")
    return np.ascontiguousarray(as_finite_array(arr, name))


def _finite_samples(arr: NDArray[np.float64], name: str) -> NDArray[np.float64]:
    if arr.ndim < 2:
        raise ValueError(
            f"{name} have shape {arr.shape}; they need a leading sample axis, shape (N, *input_shape)"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} hold no samples (shape {arr.shape})")
    finite = np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} contain NaN or infinite values in {bad.size} sample"
            f"{'' if bad.size == 1 else 's'} (first: sample {int(bad[0])})"
        )
    return arr


def as_bounds(lower: Any, upper: Any, n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Box bounds (Remark 3) as two length-``n`` arrays; ``None`` (whole or per entry) means no bound.

    Scalars broadcast. Bounds may be infinite but not NaN; ``lower > upper`` is an error.
    """
    out = []
    for name, value, default in (("lower", lower, -np.inf), ("upper", upper, np.inf)):
        if value is None:
            out.append(np.full(n, default))
            continue
        if isinstance(value, (list, tuple)):  # None entries mean "no bound on this coordinate"
            value = [default if v is None else v for v in value]
        arr = as_real_array(value, name)
        if arr.ndim == 0:
            arr = np.full(n, float(arr))
        if arr.shape != (n,):
            raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {arr.shape}")
        if np.any(np.isnan(arr)):
            raise ValueError(f"{name} contains NaN")
        out.append(arr.astype(np.float64, copy=True))
    lo, up = out
    if np.any(np.isposinf(lo)) or np.any(np.isneginf(up)):
        raise ValueError("lower may not be +inf and upper may not be -inf")
    bad = np.flatnonzero(lo > up)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"lower > upper at coordinate {i} ({lo[i]} > {up[i]}); the box is empty")
    return lo, up
