"""Independent check of a :class:`reluinv.preimage.Preimage` verdict (Theorem 4, Remark 3).

Uses only numpy/scipy linear algebra, never the LP solver that produced the verdict: membership of
the point (equations (1), inequalities (2), the box), the unbounded direction (Theorem 4 iii),
strictly positive multipliers that combine to zero and span ``N(A_pos)`` (Theorem 5, Theorem 12),
and the Farkas inequality for an empty preimage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from ._validate import as_bounds, as_finite_array
from .geometry import unit_rows

if TYPE_CHECKING:
    from .preimage import Preimage

__all__ = ["CertificateError", "verify_preimage"]

F64 = NDArray[np.float64]
Idx = NDArray[np.intp]


#: Each row's check allows this many eps times its largest term (see :class:`_UnitLayer`).
_ROUNDING = 64 * np.finfo(float).eps


class CertificateError(AssertionError):
    """A certificate of a :class:`~reluinv.preimage.Preimage` failed an independent check."""


def verify_preimage(r: Preimage, A: Any, b: Any, y: Any, *, lower: Any, upper: Any, rtol: float) -> None:
    """See :meth:`reluinv.preimage.Preimage.verify`; raises :class:`CertificateError`."""
    layer = _UnitLayer(A, b, y, lower, upper, rtol)
    if r.kind != "empty":
        layer.check_zero_rows()
    null = scipy.linalg.null_space(layer.U_pos) if layer.U_pos.shape[0] else np.eye(layer.n)
    if r.nullity != null.shape[1]:
        raise CertificateError(f"nullity {r.nullity} but N(A_pos) has dimension {null.shape[1]}")
    if r.kind == "empty":
        _verify_empty(r, layer)
        return
    if r.point is None:
        raise CertificateError(f"a {r.kind} preimage must carry a point")
    layer.in_preimage(r.point, "point")
    if r.kind == "unbounded":
        d = _verify_direction(r, layer.U_pos, layer.U_zero, layer.lo, layer.up, rtol)
        size = max(layer.scale, float(np.abs(r.point).max(initial=0.0))) or 1.0
        reach = min(1e3 * size, max(size, 1e307))  # far out, but short of float64's end
        layer.in_preimage(r.point + reach * d, "point + t d (t = 1000 times the scale)")
        return
    _verify_bounded(r, r.point, layer, null)


class _UnitLayer:
    """The layer's rows scaled to unit norm and their distances ``rho`` from the origin, so every
    test is relative (to a row's own norm, and to the scale of the points: ``max |rho|`` over the
    equations, else over every row, ``max |box|`` and ``max |x|``) and holds at any scale of the
    data.  Each row's test also allows its own rounding, ``64 eps`` times its largest term
    ``max(|b_i|, y_i) / |A_i|``: a unit that is off far from the origin must not loosen the test
    of every equation (it once let a point that misses equations at scale 1 by 1e-4 pass, the
    scale being an inactive hyperplane 4e5 away).

    Inequality labels are those of :class:`reluinv.preimage.PreimageCertificate`.
    """

    def __init__(self, A: Any, b: Any, y: Any, lower: Any, upper: Any, rtol: float) -> None:
        A = as_finite_array(A, "A", ndim=2)
        self.b = as_finite_array(b, "b", ndim=1)
        self.y = as_finite_array(y, "y", ndim=1)
        self.m, self.n = A.shape
        self.rtol = rtol
        self.lo, self.up = as_bounds(lower, upper, self.n)
        self.pos = self.y > 0
        self.U, self.p, self.norm = unit_rows(A)
        self.live = self.norm > 0
        live, p = self.live, self.p
        largest = np.maximum(np.abs(self.b), self.y)
        pb = np.frexp(largest)[1]
        norm, exp = np.where(live, self.norm, 1.0), pb - np.where(live, p, 0)
        with np.errstate(over="ignore"):  # beyond float64: inf, which no finite point satisfies
            num = np.ldexp(self.y, -pb) - np.ldexp(self.b, -pb)
            self.rho = np.where(live, np.ldexp(num / norm, exp), 0.0)
            # each row's largest term, max(|b_i|, y_i) / |A_i|: its rho carries that much rounding
            terms = np.where(live, np.ldexp(np.ldexp(largest, -pb) / norm, exp), 0.0)
        self.floor = np.where(np.isfinite(terms), _ROUNDING * terms, 0.0)
        box = np.concatenate([self.lo, self.up])
        equations = self.pos & live & (self.rho != 0) & np.isfinite(self.rho)
        distances = self.rho[equations] if equations.any() else self.rho[np.isfinite(self.rho)]
        self.scale = max(
            float(np.abs(distances).max(initial=0.0)),
            float(np.abs(box[np.isfinite(box)]).max(initial=0.0)),
        )
        self.U_pos = self.U[self.pos & live]
        self.U_zero = self.U[~self.pos & live]

    def check_zero_rows(self) -> None:
        """Rows with ``a_i = 0`` are constants that must hold."""
        b, y, rtol = self.b, self.y, self.rtol
        for i in np.flatnonzero(~self.live):
            if (y[i] > 0 and not abs(b[i] - y[i]) <= rtol * max(abs(b[i]), y[i])) or (y[i] <= 0 and b[i] > 0):
                raise CertificateError(f"row {i} has a_i = 0 and cannot produce y_i = {y[i]}")

    def in_preimage(self, x: F64, what: str) -> None:
        """``x`` satisfies the equations (1), the inequalities (2) and the box."""
        if not np.all(np.isfinite(x)):
            raise CertificateError(f"{what} is not finite")
        atol = self.rtol * max(self.scale, float(np.abs(x).max(initial=0.0)))
        z = self.U @ x - self.rho
        eq, ineq = self.pos & self.live, ~self.pos & self.live
        if not np.all(np.abs(z[eq]) <= atol + self.floor[eq]):
            raise CertificateError(f"{what} misses the equations by {np.abs(z[eq]).max():.3g}")
        if not np.all(z[ineq] <= atol + self.floor[ineq]):
            raise CertificateError(f"{what} violates an inactive row by {z[ineq].max():.3g}")
        if np.any(x < self.lo - atol) or np.any(x > self.up + atol):
            raise CertificateError(f"{what} lies outside the box")

    def rows_matrix(self, labels: Idx) -> F64:
        """The unit inequality rows with these labels."""
        m, n = self.m, self.n
        out = np.zeros((labels.size, n))
        for t, lab in enumerate(labels):
            if lab < m:
                out[t] = self.U[lab]
            elif lab < m + n:
                out[t, lab - m] = 1.0
            else:
                out[t, lab - m - n] = -1.0
        return out

    def rows_rhs(self, labels: Idx) -> F64:
        """Their right-hand sides."""
        m, n = self.m, self.n
        return np.array(
            [
                self.rho[lab] if lab < m else (self.up[lab - m] if lab < m + n else -self.lo[lab - m - n])
                for lab in labels
            ],
            dtype=np.float64,
        )

    def rows_floor(self, labels: Idx) -> F64:
        """Their allowances for rounding (0 for box rows, whose bounds are the user's numbers)."""
        out = np.zeros(labels.size)
        layer = labels < self.m
        out[layer] = self.floor[labels[layer]]
        return out

    def on_unit_rows(self, values: F64, labels: Idx) -> tuple[F64, NDArray[np.int64]]:
        """Multipliers on the user's rows times the rows' norms (a common power of two apart)."""
        layer = labels < self.m
        mant = np.array(values, dtype=np.float64)
        mant[layer] *= self.norm[labels[layer]]
        exp = np.where(layer, self.p[np.where(layer, labels, 0)], 0).astype(np.int64)
        exp[layer & ~self.live[np.where(layer, labels, 0)]] = 0
        return mant, exp


def _common(*pairs: tuple[F64, NDArray[np.int64]]) -> list[F64]:
    """``mant * 2^exp`` for every pair, all divided by one power of two so the largest is about 1."""
    every = np.concatenate([mant for mant, _ in pairs])
    exps = np.concatenate([exp for _, exp in pairs])
    nz = every != 0
    top = int((np.frexp(every[nz])[1] + exps[nz]).max()) if nz.any() else 0
    return [np.ldexp(mant, exp - top) for mant, exp in pairs]


def _verify_empty(r: Preimage, layer: _UnitLayer) -> None:
    """Farkas' lemma: the multipliers combine the rows to zero with a negative right-hand side."""
    cert = r.certificate
    if r.point is not None:
        raise CertificateError("an empty preimage has no point")
    if cert.farkas_equalities is None:
        return  # a zero row decided it; the reason names the row
    nu, lam, labels = cert.farkas_equalities, cert.farkas_inequalities, cert.farkas_rows
    assert lam is not None and labels is not None
    if np.any(lam < 0):
        raise CertificateError("Farkas inequality multipliers must be >= 0")
    active = np.flatnonzero(layer.pos)
    nu_u, lam_u = _common(layer.on_unit_rows(nu, active), layer.on_unit_rows(lam, labels))
    combo = layer.U[active].T @ nu_u + layer.rows_matrix(labels).T @ lam_u
    value = layer.rho[active] @ nu_u + layer.rows_rhs(labels) @ lam_u
    size = max(1e-300, float(np.abs(nu_u).sum() + np.abs(lam_u).sum()))
    if not np.abs(combo).max(initial=0.0) <= layer.rtol * size:
        raise CertificateError(f"Farkas combination is not zero ({np.abs(combo).max():.3g})")
    if not value < 0:
        raise CertificateError(f"Farkas value {value:.3g} is not negative")


def _verify_bounded(r: Preimage, point: F64, layer: _UnitLayer, null: F64) -> None:
    """ "compact" and "singleton": second point, box, or omnidirectional multipliers (Theorem 4)."""
    cert = r.certificate
    if r.kind in ("compact", "singleton") and r.direction is not None:
        raise CertificateError("a bounded preimage has no direction")
    if cert.second_point is not None:
        layer.in_preimage(cert.second_point, "second point")
        if r.kind == "singleton":
            raise CertificateError("a singleton cannot have a second point")
        if np.array_equal(cert.second_point, point):
            raise CertificateError("second point equals the point")
    if r.kind == "singleton" and r.nullity == 0:
        return
    if cert.bounded_by_box:
        if not (np.all(np.isfinite(layer.lo)) and np.all(np.isfinite(layer.up))):
            raise CertificateError("bounded_by_box claimed but the box is not finite")
        return
    if cert.rows is None or cert.multipliers is None:
        raise CertificateError(f"a {r.kind} preimage with nullity > 0 needs multipliers")
    if np.any(cert.multipliers <= 0):
        raise CertificateError("multipliers must be strictly positive")
    (lam,) = _common(layer.on_unit_rows(cert.multipliers, cert.rows))
    if np.any(lam <= 0):
        raise CertificateError("multipliers on unit rows underflow to 0")
    restricted = layer.rows_matrix(cert.rows) @ null
    combo = restricted.T @ lam
    if not np.abs(combo).max(initial=0.0) <= layer.rtol * float(lam.sum()):
        raise CertificateError(f"multipliers do not combine to zero ({np.abs(combo).max():.3g})")
    if np.linalg.matrix_rank(restricted) < null.shape[1]:
        raise CertificateError("certifying rows do not span N(A_pos)")
    if r.kind == "singleton":
        slack = layer.rows_rhs(cert.rows) - layer.rows_matrix(cert.rows) @ point
        atol = layer.rtol * max(layer.scale, float(np.abs(point).max()))
        if not np.all(np.abs(slack) <= atol + layer.rows_floor(cert.rows)):
            raise CertificateError("pinning rows are not tight at the point")


def _verify_direction(r: Preimage, U_pos: F64, U_zero: F64, lo: F64, up: F64, rtol: float) -> F64:
    """An unbounded verdict's direction: unit, in N(A_pos), ``A_zero d <= 0``, inside the box;
    returns it."""
    d = r.direction
    if d is None or not abs(np.linalg.norm(d) - 1) <= 1e-8:
        raise CertificateError("unbounded needs a unit direction")
    if not (np.abs(U_pos @ d).max(initial=0.0) <= rtol and (U_zero @ d).max(initial=0.0) <= rtol):
        raise CertificateError("direction leaves the preimage (A_pos d != 0 or A_zero d > 0)")
    if np.any(d[np.isfinite(up)] > rtol) or np.any(d[np.isfinite(lo)] < -rtol):
        raise CertificateError("direction leaves the box")
    return d
