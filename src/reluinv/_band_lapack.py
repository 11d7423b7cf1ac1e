"""Singular values of an upper band matrix through LAPACK ``dgbbrd`` and ``dlasq1``.

scipy's f2py wrappers (``scipy.linalg.lapack``) do not include the band bidiagonalisation
``dgbbrd``; scipy's Cython LAPACK (``scipy.linalg.cython_lapack``, a public, stable interface)
does, as a C function pointer in a capsule.  This module calls it through ``ctypes`` (which
releases the GIL during the call).  Values only: no ``Q`` or ``P^T`` is accumulated.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

import numpy as np
from numpy.typing import NDArray

__all__ = ["band_bidiagonal_svdvals"]

_Pointer = ctypes.c_void_p


@cache
def _routine(name: str, n_args: int) -> Callable[..., None]:
    from scipy.linalg import cython_lapack

    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(None, *([_Pointer] * n_args))(address)


def _int(value: int) -> ctypes._CArgObject:
    return ctypes.byref(ctypes.c_int(int(value)))


def _data(array: NDArray[np.float64]) -> _Pointer:
    return _Pointer(array.ctypes.data)


def band_bidiagonal_svdvals(band: NDArray[np.float64], n: int, ku: int) -> NDArray[np.float64]:
    """Singular values (descending) of the ``n x n`` upper band matrix held in LAPACK band storage.

    Args:
        band: Fortran-ordered ``(ku + 1, n)`` float64 array, ``band[ku + i - j, j] = A[i, j]`` for
            ``j - ku <= i <= j`` (overwritten).
        n: order of ``A``.
        ku: number of super-diagonals.

    ``dgbbrd`` reduces ``A`` to bidiagonal form by Givens rotations (backward stable, about
    ``n^2 ku`` rotations' work), ``dlasq1`` (dqds) computes the bidiagonal's singular values to
    high relative accuracy.  Raises ``RuntimeError`` if LAPACK reports a failure.
    """
    if band.shape != (ku + 1, n) or not band.flags.f_contiguous or band.dtype != np.float64:
        raise ValueError(f"band must be a Fortran-ordered float64 array of shape {(ku + 1, n)}")
    if n == 0:
        return np.zeros(0)
    diagonal = np.empty(n)
    off = np.empty(max(1, n - 1))
    work = np.empty(4 * n)
    unused = np.zeros(1)
    info = ctypes.c_int(0)
    dgbbrd = _routine("dgbbrd", 18)
    dgbbrd(
        ctypes.c_char_p(b"N"), _int(n), _int(n), _int(0), _int(0), _int(ku), _data(band), _int(ku + 1),
        _data(diagonal), _data(off), _data(unused), _int(1), _data(unused), _int(1), _data(unused), _int(1),
        _data(work), ctypes.byref(info),
    )  # fmt: skip
    if info.value != 0:
        raise RuntimeError(f"LAPACK dgbbrd failed (info={info.value})")
    dlasq1 = _routine("dlasq1", 5)
    dlasq1(_int(n), _data(diagonal), _data(off), _data(work), ctypes.byref(info))
    if info.value != 0:
        raise RuntimeError(f"LAPACK dlasq1 failed (info={info.value})")
    return diagonal
