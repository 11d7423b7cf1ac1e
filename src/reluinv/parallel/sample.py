"""Running one sample, in whichever process executes it, the same way for every back end."""

from __future__ import annotations

import json
import traceback as traceback_module
from collections.abc import Callable, Mapping
from typing import Any

from .store import SampleKey, SampleResult

SampleFunction = Callable[[Any, Any], Mapping[str, Any]]


def evaluate(fn: SampleFunction, shared: Any, key: SampleKey, payload: Any) -> SampleResult:
    """``fn(shared, payload)`` as this sample's result, read back from JSON; its failure if it raised."""
    # Converting to JSON and back here, in the worker, makes every back end and a resumed run
    # return the very same values, and turns an unserialisable result into this sample's failure.
    try:
        value = fn(shared, payload)
        if not isinstance(value, Mapping):
            raise TypeError(f"{qualified_name(fn)} must return a dict, got {type(value).__name__}")
        result = json.loads(json.dumps(dict(value), default=_json_value))
    except Exception as exc:  # noqa: BLE001 - any error of one sample is that sample's result
        return failure(key, exc)
    return SampleResult(key=key, status="ok", result=result)


def failure(key: SampleKey, exc: BaseException) -> SampleResult:
    """The failed result of sample ``key``, with ``exc`` and its traceback."""
    return SampleResult(
        key=key,
        status="failed",
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback_module.format_exception(exc)),
    )


def _json_value(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    raise TypeError(f"a result value of type {type(value).__name__} is not JSON-serialisable")


def qualified_name(fn: Callable[..., Any]) -> str:
    """``module.qualname`` of a sample function (of the wrapped function for a ``partial``)."""
    target = getattr(fn, "func", fn)  # functools.partial
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}"
