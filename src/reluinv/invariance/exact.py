"""The exact kind of a multi-layer preimage (Section 4, "Scope"): :func:`network_preimage`, its
certificate, and :func:`verify_network_preimage`.

The search is a small class with named stages -- x's own piece, the enumeration of activation
patterns, the MILPs over all patterns, the time-out answer -- and the route through them is
chosen from :data:`ROUTES` by ``strategy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from .._lp import MIN_SOLVE_SECONDS, MIP_FEAS_TOL, HighsModel
from ..preimage import CertificateError, Kind, Preimage, PreimageCertificate, preimage
from .bounds import preimage_bounds, states_from_bounds
from .encoding import Encoding
from .pieces import PreimagePiece, feature_jacobian, piece_system
from .problem import (
    ACTIVE,
    FREE,
    INACTIVE,
    PIECE_RTOL,
    ZERO_RTOL,
    Clock,
    Problem,
    TimeShares,
    make_problem,
    setup,
)


@dataclass(frozen=True)
class NetworkPreimageCertificate(PreimageCertificate):
    """:class:`reluinv.PreimageCertificate` plus the pieces examined by :func:`network_preimage`.

    Attributes:
        pieces: every non-empty piece classified (all of them when ``method`` is "enumeration"
            and ``complete``; otherwise those met before the answer: x's own piece first).
        complete: True when the answer covers every activation pattern (the enumeration
            finished, or the MILPs proved a singleton).
        method: what decided: "own piece" (x's linear piece alone: unbounded, or compact in a
            box), "milp" (finite box: MILPs over all patterns maximised each ``+-(x'_j - x_j)``),
            "enumeration", or "time limit".
        n_lp: LPs and MILPs solved (bound tightening, pruning, distance maximisation).
        n_pruned: partial patterns discarded (LP infeasible, or contained in a sibling piece).
        seconds: wall-clock time.
    """

    pieces: tuple[PreimagePiece, ...] = ()
    complete: bool = False
    method: str = ""
    n_lp: int = 0
    n_pruned: int = 0
    seconds: float = 0.0


States = list[NDArray[np.int8]]


class _PreimageSearch:
    """The stages of :func:`network_preimage`; each returns the answer when it decides one."""

    def __init__(self, problem: Problem, clock: Clock, *, rtol: float, boxed: tuple[bool, bool]):
        self.problem, self.clock, self.rtol = problem, clock, rtol
        net = problem.net
        # the box handed to reluinv.preimage for each piece: only the sides the caller gave
        self.lo_b = problem.lo if boxed[0] else None
        self.up_b = problem.up if boxed[1] else None
        jac = feature_jacobian(problem)
        self.rank = int(np.linalg.matrix_rank(jac)) if jac.size else 0
        self.n_active = int((problem.features > 0).sum()) if net.fixed_last else int(problem.features.size)
        self.bounds, self.n_lp = preimage_bounds(
            problem, "auto", clock.since_start(TimeShares.PREIMAGE_TIGHTEN)
        )
        self.states = states_from_bounds(problem, self.bounds)
        self.x_signs = [problem.zs[l] > 0 for l in range(net.n_var_blocks)]
        # the undetermined units, branched on last layer first
        self.order = [
            (l, int(i))
            for l in reversed(range(net.n_var_blocks))
            for i in np.flatnonzero(self.states[l] == FREE)
        ]
        self.pieces: list[PreimagePiece] = []
        self.second: NDArray[np.float64] | None = None
        self.n_pruned = 0
        self.seen: set[bytes] = set()
        self.method = "own piece"

    # -- answers ----------------------------------------------------------------------------------

    def answer(
        self,
        kind: Kind,
        point: NDArray[np.float64],
        direction: NDArray[np.float64] | None,
        reason: str,
        *,
        complete: bool,
        piece: Preimage | None = None,
    ) -> Preimage:
        pieces = self.pieces
        if kind in ("compact", "unknown"):
            second = self.second
        else:
            second = piece.certificate.second_point if piece is not None and kind == "unbounded" else None
        cert = NetworkPreimageCertificate(
            reason=reason,
            second_point=second,
            pieces=tuple(pieces),
            complete=complete,
            method="time limit" if kind == "unknown" else self.method,
            n_lp=self.n_lp,
            n_pruned=self.n_pruned,
            seconds=self.clock.elapsed(),
        )
        if piece is not None:
            margin, tol = piece.margin, piece.tolerance
        else:
            margin = min((p.result.margin for p in pieces), default=0.0)
            tol = pieces[0].result.tolerance if pieces else self.rtol
        return Preimage(
            kind=kind,
            point=point,
            direction=direction,
            nullity=self.problem.n - self.rank,
            n_active=self.n_active,
            rank=self.rank,
            margin=float(margin),
            tolerance=float(tol),
            certificate=cert,
        )

    def timeout(self) -> Preimage:
        found = (
            "a second point was found, so the preimage is not a singleton, but unboundedness is not settled"
            if self.second is not None
            else "no second point found yet"
        )
        return self.answer(
            "unknown",
            self.problem.x.copy(),
            None,
            f"time limit of {self.clock.time_limit:g} s reached after "
            f"{len(self.pieces)} pieces and {self.n_lp} LPs; {found}",
            complete=False,
        )

    # -- stage 1: one piece (x's own first) ---------------------------------------------------------

    def own_piece(self) -> Preimage | None:
        """x's own linear region: often it decides alone (unbounded, or compact in a box)."""
        return self.classify(tuple(a.astype(bool) for a in self.x_signs))

    def classify(self, pattern: tuple[NDArray[np.bool_], ...]) -> Preimage | None:
        """Classify one complete pattern's piece; returns the final answer when it decides one."""
        problem = self.problem
        key = b"".join(np.packbits(p).tobytes() for p in pattern)
        if key in self.seen:
            return None
        self.seen.add(key)
        A, b, y = piece_system(problem, pattern)
        r = preimage(A, b, y, lower=self.lo_b, upper=self.up_b, rtol=self.rtol)
        if r.kind == "empty":  # feasible for the LP, empty at preimage's tolerance: a sliver
            self.n_pruned += 1
            return None
        self.pieces.append(PreimagePiece(pattern, A, b, y, r))
        if r.kind == "unbounded":
            assert r.point is not None  # every non-empty kind carries a point
            return self.answer(
                "unbounded",
                r.point,
                r.direction,
                f"the piece of activation pattern #{len(self.pieces)} is unbounded "
                f"(Theorem 4 iii on the piece): along its direction every feature at "
                f"{problem.net.where} stays equal",
                complete=False,
                piece=r,
            )
        if self.second is None:
            self._note_second_point(r)
        if self.second is not None and problem.box_finite:
            return self.answer(
                "compact",
                problem.x.copy(),
                None,
                "two distinct points of the preimage inside a finite box (every "
                "piece is bounded by the box, Remark 3)",
                complete=False,
            )
        return None

    def _note_second_point(self, r: Preimage) -> None:
        x, tol = self.problem.x, self.problem.point_tol
        assert r.point is not None  # every non-empty kind carries a point
        if r.kind == "compact":
            self.second = r.certificate.second_point
            if self.second is not None and np.linalg.norm(self.second - x) <= tol:
                self.second = r.point  # prefer a second point away from x
        elif np.linalg.norm(r.point - x) > tol:
            self.second = r.point

    # -- stage 2: enumeration of activation patterns ------------------------------------------------

    def enumerate(self, deadline: float) -> Preimage | None:
        """Depth-first over the undetermined units; None when ``deadline`` comes first."""
        self.method = "enumeration"
        stack: list[tuple[States, int]] = [([a.copy() for a in self.states], 0)]
        while stack:
            if time.perf_counter() >= deadline:
                return None
            st, depth = stack.pop()
            if depth == len(self.order):
                decided = self.classify(tuple(a == ACTIVE for a in st))
                if decided is not None:
                    return decided
                continue
            children = self._children(st, depth, deadline)
            if children is None:
                return None
            for child in reversed(children):  # x's own sign is explored first
                stack.append((child, depth + 1))
        return self._enumeration_verdict()

    def _children(self, st: States, depth: int, deadline: float) -> list[States] | None:
        """Both signs of the next unit that can hold points (x's sign first); None on time-out."""
        l, i = self.order[depth]
        preferred = ACTIVE if self.x_signs[l][i] else INACTIVE
        children = []
        for sign in (preferred, ACTIVE + INACTIVE - preferred):
            child = [a.copy() for a in st]
            child[l][i] = sign
            keep = self._branch_holds_points(child, l, i, deadline)
            if keep is None:
                return None
            if keep:
                children.append(child)
        return children

    def _branch_holds_points(self, child: States, l: int, i: int, deadline: float) -> bool | None:
        """False when the partial pattern's LP relaxation is infeasible, or unit ``(l, i)`` is set
        active yet ``max z_i = 0`` on it (its points lie in the inactive sibling); None on time-out."""
        enc = Encoding(self.problem, child, self.bounds, integral=False)
        if child[l][i] == ACTIVE:
            cost, const = enc.z_objective(l, i)
        else:
            cost, const = np.zeros(enc.n_cols), 0.0
        out = enc.solver().run(
            cost,
            maximize=True,
            offset=const,
            time_limit=max(deadline - time.perf_counter(), MIN_SOLVE_SECONDS),
        )
        self.n_lp += 1
        if out.status == "time_limit":
            return None
        if out.status == "infeasible":
            self.n_pruned += 1
            return False
        if (
            child[l][i] == ACTIVE
            and out.status == "optimal"
            and out.objective <= ZERO_RTOL * self.problem.unit_scale(l, i)
        ):
            self.n_pruned += 1
            return False
        return True

    def _enumeration_verdict(self) -> Preimage:
        x = self.problem.x
        if self.second is not None:
            return self.answer(
                "compact",
                x.copy(),
                None,
                f"all {len(self.pieces)} pieces of the preimage are bounded "
                f"(Theorem 4 iii on each) and it holds two distinct points",
                complete=True,
            )
        reasons = sorted({p.result.certificate.reason for p in self.pieces})
        return self.answer(
            "singleton",
            x.copy(),
            None,
            f"every one of the {len(self.pieces)} pieces (one per activation pattern "
            f"consistent with the features, {self.n_pruned} partial patterns pruned) "
            f"is the single point x: " + "; ".join(reasons),
            complete=True,
        )

    # -- stage 3: MILPs over all patterns (finite box) ----------------------------------------------

    def milp(self, deadline: float) -> Preimage | None:
        """Maximise ``+-(x'_j - x_j)`` for every j over all patterns; None when undecided."""
        problem = self.problem
        enc = Encoding(problem, self.states, self.bounds, integral=True)
        solver = enc.solver()
        start = enc.start_vector(problem.x)
        x0, tol = problem.x, problem.point_tol
        for j in range(problem.n):
            for sign in (1.0, -1.0):
                if (problem.up[j] - x0[j] if sign > 0 else x0[j] - problem.lo[j]) <= tol:
                    continue  # the box leaves no room on this side
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                decided, go_on = self._milp_move(solver, enc, start, j, sign, left)
                if not go_on:
                    return decided
        self.method = "milp"
        own = self.pieces[0].result.certificate.reason if self.pieces else "n/a"
        return self.answer(
            "singleton",
            x0.copy(),
            None,
            f"for every input coordinate j and both signs a MILP over all activation "
            f"patterns (big-M from bounds valid on the preimage; HiGHS, feasibility "
            f"tolerance {MIP_FEAS_TOL:g}) proves max +-(x'_j - x_j) <= {tol:.1g}; "
            f"x's own piece: {own}",
            complete=True,
        )

    def _milp_move(
        self, solver: HighsModel, enc: Encoding, start: NDArray[np.float64], j: int, sign: float, left: float
    ) -> tuple[Preimage | None, bool]:
        """One MILP; ``(answer, go on)``: a verified second point decides "compact", a proof that
        x cannot move goes on, anything else stops the route undecided."""
        problem = self.problem
        x0, tol = problem.x, problem.point_tol
        out = solver.run(
            enc.input_cost(sign, j), maximize=True, time_limit=left, offset=-sign * x0[j], start=start
        )
        self.n_lp += 1
        if out.values is not None and out.objective > tol:
            cand = problem.clip(out.values)
            if problem.feature_diff(cand) <= problem.feature_tol and np.linalg.norm(cand - x0) > tol:
                self.second = cand
                self.method = "milp"
                return self.answer(
                    "compact",
                    x0.copy(),
                    None,
                    f"a MILP over all activation patterns found a second point "
                    f"(|x'_{j} - x_{j}| = {abs(cand[j] - x0[j]):.3g}) inside a "
                    f"finite box, which bounds every piece (Remark 3)",
                    complete=False,
                ), False
            return None, False  # a doubtful point: leave the decision to the enumeration
        if out.status != "optimal" or out.bound > tol:
            return None, False  # not proven within the tolerance: enumerate instead
        return None, True


# --- routes -------------------------------------------------------------------------------------------


def _route_enumerate(search: _PreimageSearch) -> Preimage | None:
    return search.enumerate(search.clock.deadline)


def _route_milp(search: _PreimageSearch) -> Preimage | None:
    return search.milp(search.clock.deadline)


def _route_auto(search: _PreimageSearch) -> Preimage | None:
    """Without a finite box: the enumeration with all the time.  Inside one only "singleton or
    not" is open; the enumeration is quickest on small networks and gives per-piece certificates,
    the MILPs scale further (benchmarks/invariance_speed.py): a short enumeration first
    (:attr:`TimeShares.ENUMERATION_FIRST`), then the MILPs with the rest of the time."""
    if not search.problem.box_finite:
        return _route_enumerate(search)
    clock = search.clock
    return search.enumerate(clock.of_rest(TimeShares.ENUMERATION_FIRST)) or _route_milp(search)


#: ``strategy`` -> what runs after x's own piece (None: undecided at the time limit).
ROUTES: dict[str, Callable[[_PreimageSearch], Preimage | None]] = {
    "auto": _route_auto,
    "enumerate": _route_enumerate,
    "milp": _route_milp,
}


def network_preimage(
    model: Any,
    x: Any,
    layer: int | str,
    *,
    lower: Any = None,
    upper: Any = None,
    time_limit: float = 60.0,
    strategy: Literal["auto", "enumerate", "milp"] = "auto",
    rtol: float = PIECE_RTOL,
) -> Preimage:
    """Exact kind of ``{x' : F_layer(x') = F_layer(x)}`` across layers (Section 4, "Scope").

    The paper characterises one layer (Theorem 4) and names the obstacle for several: the
    preimage under layer l must be intersected with the image of the layers below.  Here the
    preimage is taken in input space directly.  Fixing the activation pattern of every ReLU up to
    ``layer`` makes the network affine, so each pattern's *piece*

        P_s = { x' in box : z_l(x') >= 0 where s_l = 1, z_l(x') <= 0 where s_l = 0,
                F_layer(x') = F_layer(x) }

    is a closed polyhedron, and the preimage is the union of the pieces (ReLU is continuous, so a
    point on a boundary lies in both neighbours; the union is exact).  When the features are a
    ReLU output ``y`` the last layer's pattern is fixed by ``y`` (``y_i > 0`` active, else inactive).

    Kind of the union: "unbounded" as soon as one piece is unbounded (its point and recession
    direction keep the features equal along the whole ray); otherwise "singleton" when every
    piece is the single point ``x``; otherwise "compact" (with a second point).  Inside a finite box
    every piece is bounded, so two distinct points decide "compact" at once.

    Steps (``certificate.method`` says which one decided; the route is :data:`ROUTES`
    [``strategy``]):

    1. "own piece": x's own linear piece is classified first; unbounded decides "unbounded",
       compact inside a finite box decides "compact".
    2. "enumeration": units whose sign is fixed on the whole preimage are found first (interval
       bounds from the box, LP-tightened over the relaxation that contains the feature
       equalities on small networks).  The remaining units are branched on depth-first, last
       layer first, x's own signs first; a partial pattern is pruned when its LP relaxation is
       infeasible, and an "active" branch is dropped when ``max z_i <= 0`` on it (its points
       then have ``z_i = 0`` and lie in the "inactive" sibling).  Each complete pattern's piece
       is written as a one-layer system in input space and classified by
       :func:`reluinv.preimage` (Theorem 4 with the box, Remark 3), which also certifies it.
       Without a box nothing prunes by bounds and the enumeration can grow exponentially; it
       then has all the time.  With a finite box it has 15% of the remaining time, then:
    3. "milp" (finite box only): for every coordinate j and sign, the MILP over all activation
       patterns (the encoding of :func:`invariance_search`, mode "exact") maximises
       ``+-(x'_j - x_j)``.  A verified point away from x decides "compact"; all optima proven
       below the point tolerance (1e-7 of the scale of x) decide "singleton".  This scales to
       wider networks than the enumeration, but its proof rests on the MILP solver's tolerances
       rather than on per-piece certificates.

    At ``time_limit`` the answer is "unknown" rather than a guess (the certificate says what was
    found so far, e.g. a second point).

    Fields of the result (a :class:`reluinv.Preimage`): ``point`` a point of the preimage (x, or
    the deciding piece's point), ``direction`` for "unbounded", ``n_active`` the number of
    positive features (all features when the layer is affine), ``rank`` / ``nullity`` of the
    features' Jacobian on x's linear region, ``margin`` / ``tolerance`` of the deciding piece, and
    ``certificate`` a :class:`NetworkPreimageCertificate` (pieces, ``second_point``, reason).
    :func:`verify_network_preimage` checks it by forward passes and per-piece certificates.

    Args:
        model: as for :func:`invariance_search`.
        x: one input without batch dimension.
        layer: whose output defines the features: as for :func:`invariance_search`.
        lower, upper: optional box (None = unbounded); must contain ``x``.
        time_limit: seconds; beyond it the kind is "unknown".
        strategy: "auto" (the steps above), "enumerate" (step 2 with all the time) or "milp"
            (step 3 with all the time; needs a finite box).  Step 1 always runs first.
        rtol: relative tolerance passed to :func:`reluinv.preimage` for every piece.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.eye(2)); _ = net[0].bias.zero_()
        >>> network_preimage(net, [1.0, -1.0], 1).kind   # x2 may go to -infinity
        'unbounded'
        >>> network_preimage(net, [1.0, -1.0], 1, lower=-2, upper=2).kind
        'compact'
    """
    problem, clock = setup(
        (model, x, layer, lower, upper),
        time_limit=time_limit,
        choices=(("strategy", strategy, tuple(ROUTES)),),
        finite_box=(
            "strategy='milp' needs a finite box (lower and upper finite for every "
            "input); without one use 'enumerate' or 'auto'"
        )
        if strategy == "milp"
        else None,
    )
    search = _PreimageSearch(problem, clock, rtol=rtol, boxed=(lower is not None, upper is not None))
    return search.own_piece() or ROUTES[strategy](search) or search.timeout()


# --- checking an answer ---------------------------------------------------------------------------------

#: :func:`verify_network_preimage`: default relative tolerance of "in the box" (times
#: ``max(1, |point|_inf)``) and "same features" (times that and :attr:`Problem.feature_scale`).
VERIFY_RTOL = 1e-7
#: :func:`verify_network_preimage`: a direction is a unit vector up to this.
UNIT_DIRECTION_TOL = 1e-8
#: :func:`verify_network_preimage`: relative tolerance of each piece's own certificate, and of
#: "a singleton's piece holds only x" (times ``max(1, |x|_inf)``).
PIECE_VERIFY_RTOL = 1e-6


def verify_network_preimage(
    result: Preimage,
    model: Any,
    x: Any,
    layer: int | str,
    *,
    lower: Any = None,
    upper: Any = None,
    rtol: float = VERIFY_RTOL,
) -> None:
    """Check a :func:`network_preimage` answer by float64 forward passes; raise CertificateError.

    Checks that ``point`` (and ``second_point``, ``point + t * direction`` for t in 1, 10, 1000)
    lie in the box and give the features of ``x`` up to ``rtol`` times the features' scale, that a
    second point differs from the point, and every piece's own certificate
    (:meth:`reluinv.Preimage.verify` on its one-layer system).
    """
    problem = make_problem((model, x, layer, lower, upper))
    cert = result.certificate

    def check(point: NDArray[np.float64], what: str) -> None:
        xs = max(1.0, float(np.abs(point).max(initial=0.0)))
        if np.any(point < problem.lo - rtol * xs) or np.any(point > problem.up + rtol * xs):
            raise CertificateError(f"{what} lies outside the box")
        diff = problem.feature_diff(point)
        if diff > rtol * problem.feature_scale * xs:
            raise CertificateError(f"{what} changes the features by {diff:.3g}")

    if result.kind == "empty":
        raise CertificateError("a network preimage contains x and cannot be empty")
    if result.point is None:
        raise CertificateError("the result carries no point")
    check(result.point, "point")
    if result.kind == "unbounded":
        d = result.direction
        if d is None or abs(np.linalg.norm(d) - 1) > UNIT_DIRECTION_TOL:
            raise CertificateError("unbounded needs a unit direction")
        for t in (1.0, 10.0, 1e3):
            check(result.point + t * d, f"point + {t:g} direction")
    _check_second_point(result, check)
    if isinstance(cert, NetworkPreimageCertificate):
        _check_pieces(result, cert, problem, boxed=(lower is not None, upper is not None))


def _check_second_point(result: Preimage, check: Callable[[NDArray[np.float64], str], None]) -> None:
    second, point = result.certificate.second_point, result.point
    if second is not None:
        check(second, "second point")
        if point is not None and np.linalg.norm(second - point) == 0:
            raise CertificateError("second point equals the point")
        if result.kind == "singleton":
            raise CertificateError("a singleton cannot have a second point")
    if result.kind == "compact" and second is None:
        raise CertificateError("compact needs a second point")


def _check_pieces(
    result: Preimage, cert: NetworkPreimageCertificate, problem: Problem, *, boxed: tuple[bool, bool]
) -> None:
    lo_b = problem.lo if boxed[0] else None
    up_b = problem.up if boxed[1] else None
    for piece in cert.pieces:
        piece.result.verify(piece.A, piece.b, piece.y, lower=lo_b, upper=up_b, rtol=PIECE_VERIFY_RTOL)
        point = piece.result.point
        if (
            result.kind == "singleton"
            and point is not None
            and np.linalg.norm(point - problem.x) > PIECE_VERIFY_RTOL * problem.x_scale
        ):
            raise CertificateError("a piece of a singleton preimage holds a point other than x")
