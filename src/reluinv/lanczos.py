"""Spectra by Lanczos (Golub-Kahan bidiagonalisation on the row space), never forming ``J``.

:func:`golub_kahan` is the iteration on any pair ``v -> J v``, ``u -> J^T u``;
:func:`lanczos_spectra` runs it on every prefix of a network (``spectra(..., method="lanczos")``,
Section 3.2), with the Jacobian products as passes through the masked network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from .layer_spectrum import EPS, LayerSpectrum, jacobian_unchanged, rank_tolerance
from .network import AffineStep, Step, push_tangents

__all__ = ["Bidiagonalisation", "golub_kahan", "lanczos_spectra"]


@dataclass(frozen=True)
class Bidiagonalisation:
    """Result of :func:`golub_kahan`.

    Attributes:
        ritz_values: singular values of ``J`` restricted to the Krylov subspace, descending.
        residuals: residual norm of each Ritz triple (same order); 0 means exact.
        steps: bidiagonalisation steps taken (pairs of ``J v`` and ``J^T u``).
        exhausted: the Krylov space is the whole row space, so ``ritz_values`` are exactly the
            non-zero singular values (down to about ``sqrt(eps) * sigma_max``).
    """

    ritz_values: NDArray[np.float64]
    residuals: NDArray[np.float64]
    steps: int
    exhausted: bool


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    # Two passes of classical Gram-Schmidt ("twice is enough") keep full orthogonality.
    for _ in range(2):
        if basis.shape[0]:
            w = w - basis.T @ (basis @ w)
    return w


def golub_kahan(
    matvec: Any,
    rmatvec: Any,
    shape: tuple[int, int],
    *,
    k: int,
    max_steps: int,
    tol: float = 1e-10,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Bidiagonalisation:
    """Ritz approximations of the singular values of ``J`` (m x n) from ``J v`` and ``J^T u``.

    Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation, started from a random
    vector in the *output* space: ``beta_1 u_1 = b``, ``alpha_1 v_1 = J^T u_1``, then
    ``beta_{i+1} u_{i+1} = J v_i - alpha_i u_i`` and ``alpha_{i+1} v_{i+1} = J^T u_{i+1} - beta_{i+1} v_i``.
    Every ``v_i`` is in the range of ``J^T``, i.e. in the row space ``N(J)^perp``, and
    ``J V_p = U_{p+1} B_p`` with ``B_p`` lower bidiagonal, so the Ritz values ``svd(B_p)`` are the
    singular values of ``J`` restricted to a ``p``-dimensional subspace of its row space.  Hence
    (Cauchy interlacing) the ``i``-th largest Ritz value is at most ``sigma_i`` and the smallest is
    at least the smallest *non-zero* singular value of ``J``: null directions never appear.  When
    ``alpha`` or ``beta`` vanishes the process restarts with a fresh direction (so repeated
    singular values are found too); when no fresh row-space direction exists, ``V_p`` spans the row
    space and the Ritz values are exactly the non-zero singular values (``exhausted``).

    Couplings ``alpha`` or ``beta`` below ``sqrt(eps) * sigma_max`` count as breakdowns: dividing
    by them would amplify rounding errors into spurious (null-space) directions.  This perturbs the
    Ritz values by at most ``sqrt(eps) * sigma_max`` (about ``1.5e-8`` relative) and means that
    singular values below that level may go unseen.

    Stops when exhausted, after ``max_steps`` steps, or when the ``k`` largest and ``k`` smallest
    Ritz values have residuals ``alpha_{p+1} |e_{p+1}^T P_i| <= tol * sigma_max`` (not right after
    a restart).  A converged smallest Ritz value is a singular value of ``J`` but, before
    exhaustion, possibly not the smallest one (Krylov methods reach the bottom of an
    ill-conditioned spectrum slowly).

    Example::

        J = torch.diag(torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64))
        golub_kahan(lambda v: J @ v, lambda u: J.T @ u, (3, 3), k=1, max_steps=10).ritz_values
        # array([3., 2.]): the null direction never appears

    Args:
        matvec, rmatvec: ``v -> J v`` and ``u -> J^T u`` on 1-d torch float64 tensors.
        shape: ``(m, n)``.
        k: how many values at each end must converge.
        max_steps: at most this many ``(J v, J^T u)`` pairs; memory ``max_steps * (m + n) * 8`` bytes.
        tol: relative residual tolerance.
        seed: for the random start (and restarts).
    """
    m, n = shape
    state = _Bidiagonaliser(matvec, rmatvec, shape, max(1, min(max_steps, m, n)), seed, torch.device(device))
    if not state.start():  # J = 0
        return Bidiagonalisation(np.zeros(0), np.zeros(0), 0, True)
    p, last_check = 1, 0
    ritz = residual = np.zeros(0)
    while True:
        beta, exhausted = state.left_step(p)
        next_alpha, next_v, exhausted = state.right_step(p, beta, exhausted)
        stopping = exhausted or p >= state.limit
        # The small SVD of B costs O(p^3); testing convergence every ~p/8 steps keeps it minor.
        if stopping or (p >= 2 * k and p - last_check >= max(1, p // 8)):
            last_check = p
            ritz, residual = _ritz_values(state.alphas, state.betas, next_alpha)
            top = float(ritz[0]) if ritz.size else 0.0
            ends = np.r_[residual[:k], residual[-k:]]
            # Right after a breakdown the residuals vanish (the values found are exact) but a
            # fresh direction may still hide larger or smaller values: keep going then.
            if stopping or (next_alpha > 0 and bool(np.all(ends <= tol * top))):
                break
        assert next_v is not None  # not stopping: a next direction exists
        state.V[p] = next_v
        state.alphas.append(next_alpha)
        p += 1
    return Bidiagonalisation(ritz, residual, p, exhausted or p >= min(m, n))


def _ritz_values(
    alphas: list[float], betas: list[float], next_alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Singular values of the lower bidiagonal ``B_p`` and their residuals ``alpha_{p+1} |P[-1]|``."""
    p = len(alphas)
    B = np.zeros((p + 1, p))
    B[np.arange(p), np.arange(p)] = alphas
    B[np.arange(1, p + 1), np.arange(p)] = betas
    P, ritz, _ = np.linalg.svd(B, full_matrices=False)
    return ritz, next_alpha * np.abs(P[-1])


class _Bidiagonaliser:
    """State of :func:`golub_kahan`: the Krylov bases ``U``, ``V``, the couplings, the random stream."""

    def __init__(
        self, matvec: Any, rmatvec: Any, shape: tuple[int, int], limit: int, seed: int, device: torch.device
    ):
        self.matvec, self.rmatvec = matvec, rmatvec
        self.m, self.n = shape
        self.limit = limit
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)
        self.U = torch.zeros(limit + 1, self.m, dtype=torch.float64, device=device)
        self.V = torch.zeros(limit + 1, self.n, dtype=torch.float64, device=device)
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[i] couples u_{i+1} to v_i (0-based: B[i+1, i])
        self.scale = 0.0  # running estimate of sigma_max for the breakdown tests
        self.breakdown = 0.0

    def random(self, size: int) -> torch.Tensor:
        return torch.randn(size, generator=self.generator, dtype=torch.float64).to(self.device)

    def fresh_right(self, p: int, threshold: float) -> torch.Tensor | None:
        """A new row-space direction orthogonal to ``V[:p]``, or None if the row space is
        exhausted: ``J^T u`` is in the row space for every ``u``, so only its part outside
        ``span(V)`` can be new."""
        for _ in range(3):
            u_random = self.random(self.m)
            w = self.rmatvec(u_random / torch.linalg.norm(u_random))
            before = float(torch.linalg.norm(w))
            w = _orthogonalise(w, self.V[:p])
            after = float(torch.linalg.norm(w))
            if after > max(1e-10 * before, threshold):
                return w / after
        return None

    def start(self) -> bool:
        """``u_1`` random, ``alpha_1 v_1 = J^T u_1``; False when ``J = 0``."""
        u = self.random(self.m)
        self.U[0] = u / torch.linalg.norm(u)
        w = self.rmatvec(self.U[0])
        alpha = float(torch.linalg.norm(w))
        if alpha == 0.0:
            v = self.fresh_right(0, 0.0)
            if v is None:
                return False
        else:
            v = w / alpha
        self.V[0] = v
        self.alphas.append(alpha)
        return True

    def left_step(self, p: int) -> tuple[float, bool]:
        """``beta_{p+1} u_{p+1} = J v_p - alpha_p u_p``; returns ``(beta, exhausted)``."""
        U = self.U
        w = _orthogonalise(self.matvec(self.V[p - 1]) - self.alphas[-1] * U[p - 1], U[:p])
        beta = float(torch.linalg.norm(w))
        self.scale = max(self.scale, self.alphas[-1], beta)
        # Dividing by a tiny alpha or beta would blow rounding errors up into spurious directions
        # (null-space leakage); treating couplings below sqrt(eps) * sigma_max as breakdowns
        # costs at most that much accuracy in the Ritz values.
        self.breakdown = math.sqrt(EPS) * max(self.scale, 1e-300)
        exhausted = False
        if beta > self.breakdown:
            U[p] = w / beta
        else:
            beta = 0.0  # J v_p lies in span(U): restart the left side with a fresh direction
            fresh = _orthogonalise(self.random(self.m), U[:p])
            norm = float(torch.linalg.norm(fresh))
            if norm <= 1e-10:
                exhausted = True
            else:
                U[p] = fresh / norm
        self.betas.append(beta)
        return beta, exhausted

    def right_step(self, p: int, beta: float, exhausted: bool) -> tuple[float, torch.Tensor | None, bool]:
        """``alpha_{p+1} v_{p+1} = J^T u_{p+1} - beta_{p+1} v_p``; returns
        ``(alpha_{p+1}, v_{p+1}, exhausted)`` (a fresh direction after a breakdown)."""
        if exhausted:
            return 0.0, None, True
        w = _orthogonalise(self.rmatvec(self.U[p]) - beta * self.V[p - 1], self.V[:p])
        next_alpha = float(torch.linalg.norm(w))
        if next_alpha > self.breakdown:
            return next_alpha, w / next_alpha, False
        if p < self.limit:
            next_v = self.fresh_right(p, self.breakdown)
            return 0.0, next_v, next_v is None
        return 0.0, None, p >= min(self.m, self.n)


_Operator = Callable[[torch.Tensor], torch.Tensor]


def _jacobian_operator(
    prefix: Sequence[Step],
    slope_by_index: dict[int, torch.Tensor],
    in_shape: tuple[int, ...],
    columns_t: torch.Tensor,
    rows: torch.Tensor,
) -> tuple[_Operator, _Operator]:
    """``v -> J v`` and ``u -> J^T u`` for ``J`` restricted to the varying input columns and the
    reachable rows, matrix-free (one pass through the masked network each)."""
    in_dim = math.prod(in_shape)
    device = columns_t.device
    n = columns_t.numel()

    def forward(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (m,)
        full = torch.zeros(in_dim, dtype=torch.float64, device=device)
        full[columns_t] = v
        image = push_tangents(prefix, slope_by_index, full.reshape(1, *in_shape))
        return image.reshape(-1)[rows]

    # The map is linear, so its vjp at 0 is the exact transpose; build it once and reuse it.
    _, pullback, *_ = torch.func.vjp(forward, torch.zeros(n, dtype=torch.float64, device=device))

    def matvec(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return forward(v)

    def rmatvec(u: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = pullback(u)[0].detach()
        return result

    return matvec, rmatvec


def lanczos_spectra(
    chain: Sequence[Step],
    slope_by_index: dict[int, torch.Tensor],
    in_shape: tuple[int, ...],
    columns: NDArray[np.intp],
    device: torch.device,
    k: int,
    rank_rtol: float | None,
    tol: float,
    max_steps: int,
) -> list[LayerSpectrum]:
    """One Lanczos :class:`LayerSpectrum` per step of ``chain`` (``spectra(..., method="lanczos")``):
    :func:`golub_kahan` on the prefix Jacobian restricted to the input ``columns`` and to the rows
    that can be non-zero."""
    in_dim = math.prod(in_shape)
    n = columns.size
    columns_t = torch.as_tensor(columns, device=device)
    reach = torch.zeros(in_dim, dtype=torch.float64, device=device)
    reach[columns_t] = 1.0
    reach = reach.reshape(1, *in_shape)
    out: list[LayerSpectrum] = []
    for depth, step in enumerate(chain):
        slope = slope_by_index.get(step.index)
        reach = step.apply_abs_linear(reach) if isinstance(step, AffineStep) else reach * (slope != 0)
        if depth > 0 and jacobian_unchanged(step, slope):
            previous = out[-1].__dict__
            out.append(
                LayerSpectrum(**{**previous, "index": step.index, "name": step.name, "out_dim": step.out_dim})
            )
            continue
        # Rows that are zero by structure (switched off or out of reach) are left out of the operator.
        rows = torch.nonzero(reach.reshape(-1) > 0).reshape(-1)
        matvec, rmatvec = _jacobian_operator(chain[: depth + 1], slope_by_index, in_shape, columns_t, rows)
        result = golub_kahan(
            matvec, rmatvec, (int(rows.numel()), n), k=k, max_steps=max_steps, tol=tol, device=device
        )
        out.append(_lanczos_spectrum(step, n, result, k, rank_rtol, tol))
    return out


def _lanczos_spectrum(
    step: Step, n: int, result: Bidiagonalisation, k: int, rank_rtol: float | None, tol: float
) -> LayerSpectrum:
    ritz = result.ritz_values
    ends = np.r_[result.residuals[:k], result.residuals[-k:]]
    converged = result.exhausted or bool(np.all(ends <= tol * (ritz[0] if ritz.size else 0.0)))
    tolerance = rank_tolerance(float(ritz[0]) if ritz.size else 0.0, (step.out_dim, n), rank_rtol)
    nonzero = ritz[ritz > tolerance]
    null = int(ritz.size - nonzero.size)  # rounding only: the Ritz vectors lie in the row space
    largest, smallest = nonzero[:k].copy(), nonzero[-k:].copy()
    if result.exhausted:
        values = np.zeros(min(step.out_dim, n))
        values[: nonzero.size] = nonzero
        rank: int | None = int(nonzero.size)
    else:
        values = np.unique(np.concatenate([largest, smallest]))[::-1]
        rank = None
    return LayerSpectrum(
        index=step.index,
        name=step.name,
        out_dim=step.out_dim,
        in_dim=n,
        singular_values=values,
        rank=rank,
        rank_tolerance=tolerance,
        condition=float(nonzero[0] / nonzero[-1]) if nonzero.size else math.nan,
        method="lanczos",
        complete=result.exhausted,
        largest=largest,
        smallest=smallest,
        null_directions=null,
        steps=result.steps,
        converged=converged,
    )
