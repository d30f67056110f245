"""The exact ensemble audit: does the ensemble's answer stay constant on the ball wherever it
claims robustness? One mixed-integer program per way the answer could change.

Members must be certified by the Lipschitz engine. For member i with exact logits y (the
network in real arithmetic: the MILP encoding of ``solvers/milp.py``, every member on the same
input variable x' in B(x, eps) and the data domain), pairwise constants K
(``LipschitzEngine.bounds(network, norm).pairwise()``) and D_cl = y_c - y_l, the engine at x'
computes float logits y~ with ||y~ - y||_2 <= E (its roundoff bound; so each difference moves
by at most sqrt(2) E) and certifies class c = argmax y~ iff (y~_c - y~_l) - sqrt(2) E > eps K_cl
for every l != c (rounded downwards). Hence, with E32 an upper bound of the engine's E on the
whole ball and E64 one of the float64 reference pass's error (``Network.forward64``, the
uncertified prediction):

- member i certifies t at x'  ==>  D_tl > eps K_tl for all l != t;
- member i certifies nothing  ==>  for every class c some l != c has
  D_cl <= eps K_cl + 2 sqrt(2) E32 (the float argmax c fails the test, within sqrt(2) E of the
  exact differences; any other class c' trails c, D_c'c <= sqrt(2) E32);
- member i predicts t (its certified class, which is then the exact argmax, or its float64
  argmax)  ==>  D_tl >= -sqrt(2) E64 for all l != t.

**Cascade** (answer a at x, claimed): the answer at x' differs iff for some member j, members
0 .. j-1 certify nothing and member j certifies some t != a; or no member certifies and the
last member predicts some t != a. **Voting** (winner w at x, claimed): some v != w beats w in
the weighted plurality of the members' predictions (more weight, or as much and v < w; a
strictly positive weight difference is at least the smallest positive signed sum of weights,
computed exactly for up to ``EXACT_GAP_MEMBERS`` members, else 0). Voting is sound: this is
the control, it must never find a violation.

The decision follows ``solvers/base.py``. Each case is searched first with the
**over-approximating** encoding (the implications above, every margin relaxed by
``TOLERANCE``): infeasible proves that no x' realises the case; every case infeasible proves
the answer constant on the ball (ROBUST). A solution is a candidate: it is moved exactly into
the closed ball and domain (``Ball.inside``) and re-checked by the ensemble itself, one point
at a time (``ensemble.answer(spec, x'[None], domain)`` differs from the answer at x[None]):
only a re-checked point is a violation (VIOLATED, with the witness). A candidate that fails
the re-check triggers the **under-approximating** search, with strict margins:
certifications D_tl >= eps K_tl + 2 sqrt(2) E32 + ``STRICT``; non-certifications
D_cl <= eps K_cl - min(``STRICT``, eps K_cl / 2) (already D_cl <= eps K_cl refutes a
certificate of c: with K_cl = 0 a tie D_cl <= 0 is allowed); predictions
D_tl >= sqrt(2) E64 + ``STRICT``. Its candidate is re-checked the same way; nothing that
re-checks leaves the point UNKNOWN. A solver error (or values past ``MAX_MAGNITUDE``,
``out_of_range``) is UNKNOWN, the time limit TIMEOUT: never ROBUST.

**The error bound on the ball.** E (``verispec.engines.roundoff``) is computed at x' from the
norms of the computed hidden values: E = sum over layers of products of the per-layer l2
bounds with local terms, every local term affine and nondecreasing in the norms it reads
(each rule of ``ROUNDOFF``), so E is nondecreasing in those norms. They are bounded on the
ball: the exact ||h_k(x')|| <= ||h_k(x)|| + (prod_{i < k} Lip_i) ||x' - x||_2 (the same
per-layer l2 bounds the pass propagates its error with), ||h_k(x)|| from a float64 pass at x
plus its own proven error; the computed norm of h~_k is at most the exact one plus the error
bound propagated so far, inflated as the pass's norm computation rounds. A rule that reads
the norm of its own output (Normalize, BatchNorm) makes that a fixed point v <= Phi(v) with
Phi affine of slope < 1, bounded by the point v* where Phi(v*) <= v* is checked. The pass's
error model holds while nothing overflows; where a bound could reach within 2^-50 of the
working precision's largest number the bound is infinite (nothing is assumed certified).
Running the pass's own rules on these norm bounds gives E32 >= E(x') for every x' in the ball
(and E64 the same way for the float64 pass).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import attrs
import numpy as np
import torch

from verispec.engines.base import validate_points
from verispec.engines.lipschitz import LipschitzEngine
from verispec.engines.lipschitz_bounds import safe_l2
from verispec.engines.roundoff import SAFETY, LayerError, RoundoffForward, gamma
from verispec.ensembles.members import Cascade, Ensemble, Voting
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.regions import Ball, Box, FloatArray, Norm
from verispec.solvers.base import Query, Search, SearchStatus
from verispec.solvers.bounds import BoundMethod, Bounds, InputSet, back_substitute, compute_bounds
from verispec.solvers.lowering import PiecewiseLinearNet, lower
from verispec.solvers.milp import (
    MAX_MAGNITUDE,
    MilpSolver,
    encode_input,
    encode_network,
    out_of_range,
    solve_cvxpy,
)
from verispec.specs import LocalRobustness

TOLERANCE = 1e-6
"""Slack of every margin of the over-approximating search (the MILP solvers' tolerances and
the lowering's float64 composition must stay below it), as ``SolverConfig.tolerance``."""

STRICT = 1e-5
"""Margin of every inequality of the under-approximating search (its candidates must survive
the float64 re-check)."""

EXACT_GAP_MEMBERS = 12
"""Up to this many voting members the smallest positive signed weight sum is computed exactly
(3^k sums); past it a strict vote lead is only known to be >= 0."""

SQRT2 = math.sqrt(2.0)
_UP = 1.0 + 2.0**-40
"""Inflation covering the float64 rounding of a few operations on nonnegative bounds."""


class AuditStatus(enum.Enum):
    """The audit's verdict at one point."""

    VIOLATED = "violated"
    """A point of the ball (re-checked) where the ensemble answers another class."""
    ROBUST = "robust"
    """Proven: the ensemble's answer is the same on the whole ball (and domain)."""
    NOT_CLAIMED = "not_claimed"
    """The ensemble does not claim robustness at the point: nothing to audit."""
    TIMEOUT = "timeout"
    UNKNOWN = "unknown"


@attrs.frozen(eq=False)
class EnsemblePointAudit:
    """The audit at point ``index``: its status, the ensemble's class at x (``answer``) and,
    when VIOLATED, a witness x' (input shape) and the class the ensemble answers there."""

    index: int
    status: AuditStatus
    answer: int
    witness: FloatArray | None
    witness_answer: int | None
    detail: str
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "status": self.status.value,
            "answer": self.answer,
            "witness": None if self.witness is None else self.witness.tolist(),
            "witness_answer": self.witness_answer,
            "detail": self.detail,
            "time_s": self.time_s,
        }


@attrs.frozen(eq=False)
class EnsembleAudit:
    """The audit of an ensemble's claims at a batch of points."""

    ensemble: str
    spec: str
    points: tuple[EnsemblePointAudit, ...]

    @property
    def violations(self) -> tuple[EnsemblePointAudit, ...]:
        """The VIOLATED points."""
        return tuple(p for p in self.points if p.status is AuditStatus.VIOLATED)

    @property
    def counts(self) -> dict[str, int]:
        """How many points have each status (every status named, by its value)."""
        out = {s.value: 0 for s in AuditStatus}
        for p in self.points:
            out[p.status.value] += 1
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "ensemble": self.ensemble,
            "spec": self.spec,
            "points": len(self.points),
            **self.counts,
            "time_s": float(sum(p.time_s for p in self.points)),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "results": [p.to_dict() for p in self.points]}


# -- the error bound on a ball -----------------------------------------------------------------


def _inflated_norm(bound: float, n: int) -> float:
    """An upper bound of the norm the roundoff pass computes (``RoundoffForward._norms``) for a
    tensor of ``n`` entries whose true l2 norm is at most ``bound``: the float32 route (norm
    within gamma_{n+4}, inflated by it again, plus sqrt(n) 2^-63 for underflowing squares) and
    the rescaled float64 route are both below it."""
    g = gamma(n + 4, 2.0**-24)
    return bound * (1 + g) ** 2 * (1 + 2.0**-30) + 2 * math.sqrt(n) * 2.0**-63 * (1 + g) + 2.0**-999


def _product_up(values: Sequence[float]) -> float:
    if any(v == 0.0 for v in values):
        return 0.0
    return math.prod(values) * (1 + (len(values) + 1) * 2.0**-52)


def _norm_tensor(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64)


def _centre_norms(fwd64: RoundoffForward, x: FloatArray) -> list[float]:
    """Upper bounds of the exact ||h_k(x)||_2, k = 0 .. L (h_0 = x), from a float64 pass of the
    error model ``fwd64`` (computed norm plus the proven error so far)."""
    h = torch.from_numpy(np.array(x, dtype=np.float64)[None])
    out = [float(fwd64._norms(h)[0])]
    err = 0.0
    with torch.no_grad():
        for layer, model in zip(fwd64.module, fwd64.errors, strict=True):
            y = layer(h)
            local = float(model.local(h, y, fwd64._norms)[0])
            err = (model.lip * err + SAFETY * local) * _UP
            out.append((float(fwd64._norms(y)[0]) + err) * _UP)
            h = y
    return out


def error_bound(fwd: RoundoffForward, network: Network, norms: Sequence[float]) -> float:
    """An upper bound of the error bound E that ``fwd`` computes at any input whose exact values
    satisfy ||h_k||_2 <= ``norms[k]`` (k = 0: the input, then every layer's output): the pass's
    own rules evaluated on upper bounds of the norms it would compute (module docstring);
    +inf when the bound could overflow the working precision or a layer's fixed point fails."""
    p = fwd.precision
    limit = float(torch.finfo(fwd.dtype).max) * 2.0**-50
    sizes = [math.prod(s) for s in network.shapes]
    d = sizes[0]
    if fwd.dtype == torch.float64:
        current = _inflated_norm(norms[0], d)
        err = 0.0
    else:  # storing x: ||h_0|| <= (1 + u) ||x|| + eta sqrt(d)
        current = _inflated_norm(norms[0] * (1 + p.u) + p.eta * math.sqrt(d), d)
        err = (p.u * (1 + 2 * p.u) * current + 2 * p.eta * math.sqrt(d)) * (1 + 2.0**-40) * _UP
    for k, model in enumerate(fwd.errors):
        if not (math.isfinite(current) and current <= limit and math.isfinite(err)):
            return math.inf

        def err_of(
            v: float, model: LayerError = model, fixed: float = current, e: float = err
        ) -> float:
            return model.lip * e + SAFETY * _local_error(model, fixed, v)

        out = _output_norm(err_of, norms[k + 1], sizes[k + 1])
        if not math.isfinite(out):
            return math.inf
        err = err_of(out) * _UP
        current = out
    if not (math.isfinite(current) and current <= limit and math.isfinite(err)):
        return math.inf
    return (err * (1 + 2.0**-40) + 2.0**-1000) * _UP


def _local_error(model: LayerError, input_norm: float, output_norm: float) -> float:
    """The layer's local error term where its computed input and output have (at most) these
    norms (every rule reads its tensors only through ``norms`` and their batch size)."""
    h, y = torch.zeros(1), torch.zeros(1)

    def norms(t: torch.Tensor) -> torch.Tensor:
        return _norm_tensor(input_norm if t is h else output_norm)

    return float(model.local(h, y, norms)[0])


def _output_norm(err_of: Callable[[float], float], exact: float, n: int) -> float:
    """An upper bound v* of the computed output norm v, which satisfies v <= Phi(v) with
    Phi(v) = inflated(exact + err_of(v)), err_of affine nondecreasing: v* = Phi(0) / (1 - s)
    for the slope s, confirmed by Phi(v*) <= v* (then every v <= Phi(v) is <= v*)."""

    def phi(v: float) -> float:
        return _inflated_norm(exact + err_of(v), n)

    base = phi(0.0)
    if not math.isfinite(base):
        return math.inf
    probe = max(1.0, base) * 2.0**20
    slope = max(phi(probe) - base, 0.0) / probe * (1 + 2.0**-20) + 2.0**-60
    if not slope < 0.5:
        return math.inf
    v = base / (1 - slope) * (1 + 2.0**-30) + 2.0**-1000
    return v if phi(v) <= v else math.inf


def _ball_radius_l2(x: FloatArray, eps: float, norm: Norm, domain: Box | None) -> float:
    """An upper bound of ||x' - x||_2 over the ball (and domain)."""
    flat = x.ravel()
    reach = np.full(flat.size, eps)
    if domain is not None:
        room = np.maximum(domain.hi.ravel() - flat, flat - domain.lo.ravel()) * (1 + 2.0**-50)
        reach = np.minimum(reach, room)
    r = float(safe_l2(reach[None])[0]) * (1 + 2.0**-50)
    return min(r, eps) if norm is Norm.L2 else r


# -- members -----------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class _Model:
    """A member's constants for the spec: its lowered network, pairwise K, the engine's
    roundoff pass and the float64 reference pass's error model."""

    label: str
    network: Network
    net: PiecewiseLinearNet
    K: FloatArray
    fwd: RoundoffForward
    fwd64: RoundoffForward


@attrs.frozen(eq=False)
class _Local:
    """A member on one ball: bounds, L[c, l] <= D_cl <= U[c, l], E32 and E64 on the ball."""

    bounds: Bounds
    L: FloatArray
    U: FloatArray
    e32: float
    e64: float


def _models(ensemble: Ensemble, spec: LocalRobustness) -> list[_Model]:
    out = []
    for i, m in enumerate(ensemble.members):
        if not isinstance(m.engine, LipschitzEngine):
            raise UnsupportedError(
                f"{m.label(i)} is certified by engine {m.engine.name!r}: the exact ensemble "
                "audit encodes Lipschitz certificates only (members certified by 'lipschitz')"
            )
        out.append(_model(m.network, m.engine, m.label(i), spec))
    return out


def _model(network: Network, engine: LipschitzEngine, label: str, spec: LocalRobustness) -> _Model:
    fwd = engine._forward(network)
    lips = [e.lip for e in fwd.errors]
    fwd64 = RoundoffForward(network, lips, torch.float64, torch.device("cpu"))
    K = np.asarray(engine.bounds(network, spec.norm).pairwise(), dtype=np.float64)
    return _Model(label, network, lower(network), K, fwd, fwd64)


def _local(
    model: _Model,
    x: FloatArray,
    spec: LocalRobustness,
    domain: Box | None,
    inp: InputSet,
    deadline: float,
) -> _Local:
    net = model.net
    bounds = compute_bounds(net, inp, BoundMethod.LP, deadline)
    m = net.num_outputs
    eye = np.eye(m)
    C = (eye[:, None, :] - eye[None, :, :]).reshape(m * m, m)
    low = back_substitute(net, inp, bounds, net.depth - 1, C, np.zeros(m * m)).value
    L = low.reshape(m, m)
    U = -L.T
    np.fill_diagonal(L, 0.0)
    np.fill_diagonal(U, 0.0)
    e32, e64 = _ball_errors(model, x, spec, domain)
    return _Local(bounds, L, U, e32, e64)


def _ball_errors(
    model: _Model, x: FloatArray, spec: LocalRobustness, domain: Box | None
) -> tuple[float, float]:
    """Upper bounds of the engine's roundoff bound E and of the float64 pass's on the whole
    ball (module docstring)."""
    r2 = _ball_radius_l2(x, spec.eps, spec.norm, domain)
    centre = _centre_norms(model.fwd64, x)
    lips = [e.lip for e in model.fwd.errors]
    ball_norms = []
    for k, c in enumerate(centre):
        grow = _product_up(lips[:k]) * r2 if r2 > 0 else 0.0
        ball_norms.append((c + grow) * _UP)
    if not all(math.isfinite(b) for b in ball_norms):
        return math.inf, math.inf
    return (
        error_bound(model.fwd, model.network, ball_norms),
        error_bound(model.fwd64, model.network, ball_norms),
    )


def ball_error_bounds(
    engine: LipschitzEngine,
    network: Network,
    x: FloatArray,
    spec: LocalRobustness,
    domain: Box | None = None,
) -> tuple[float, float]:
    """(E32, E64): upper bounds, valid at every point of B(x, eps) (and the domain), of the
    error bound ``engine``'s roundoff pass computes for ``network`` and of the error of its
    float64 reference pass (``Network.forward64``)."""
    model = _model(network, engine, "", spec)
    return _ball_errors(model, np.asarray(x, dtype=np.float64), spec, domain)


# -- cases: conjunctions of groups of clauses of atoms on D^i_cl -----------------------------


@attrs.frozen
class _Atom:
    """D^member_{c,o} = y_c - y_o >= rhs (``geq``) or <= rhs."""

    member: int
    c: int
    o: int
    geq: bool
    rhs: float


_Clause = tuple[_Atom, ...]
"""A conjunction of atoms."""


@attrs.frozen
class _Group:
    """Some clause holds (a disjunction of conjunctions)."""

    clauses: tuple[_Clause, ...]


@attrs.frozen
class _Vote:
    """Voting: v beats w. One-hot predictions z_i over the members' allowed classes (an atom
    clause per (member, class): the prediction implies it) and sum_i w_i (z_iv - z_iw) >= gap."""

    options: tuple[tuple[_Clause, ...], ...]
    weights: tuple[float, ...]
    v: int
    w: int
    gap: float


@attrs.frozen
class _Case:
    description: str
    groups: tuple[_Group, ...] = ()
    vote: _Vote | None = None


def _status(atom: _Atom, loc: Sequence[_Local]) -> bool | None:
    """True: the atom holds on the whole ball (by the bounds); False: nowhere; None: live."""
    lo, hi = loc[atom.member].L[atom.c, atom.o], loc[atom.member].U[atom.c, atom.o]
    if atom.geq:
        return True if lo >= atom.rhs else False if hi < atom.rhs else None
    return True if hi <= atom.rhs else False if lo > atom.rhs else None


def _live_clause(clause: _Clause, loc: Sequence[_Local]) -> _Clause | None:
    """The clause's live atoms (empty: it holds everywhere), None if it holds nowhere."""
    out = []
    for a in clause:
        s = _status(a, loc)
        if s is False:
            return None
        if s is None:
            out.append(a)
    return tuple(out)


class _Builder:
    """A cvxpy problem over one input variable with the networks it needs, encoded once."""

    def __init__(self, models: Sequence[_Model], loc: Sequence[_Local], inp: InputSet) -> None:
        import cvxpy as cp

        self.cp = cp
        self.models, self.loc, self.inp = models, loc, inp
        self.x, self.cons = encode_input(inp)
        self.ys: dict[int, Any] = {}
        self.problems: list[str] = []

    def y(self, i: int) -> Any:
        if i not in self.ys:
            query = Query(self.models[i].net, self.inp, self.loc[i].bounds, (), 0.0)
            bad = out_of_range(query)
            if bad is not None:
                self.problems.append(f"{self.models[i].label}: {bad}")
            y, cons = encode_network(self.models[i].net, self.loc[i].bounds, self.x)
            self.ys[i] = y
            self.cons += cons
        return self.ys[i]

    def _check(self, *values: float) -> None:
        for v in values:
            if not (math.isfinite(v) and abs(v) <= MAX_MAGNITUDE):
                self.problems.append(
                    f"a margin or big-M constant of {v:.3g} exceeds the {MAX_MAGNITUDE:g} the "
                    "floating-point MILP solvers can decide"
                )

    def atom(self, a: _Atom, selector: Any = None) -> None:
        """The atom, or (with a binary ``selector``) the atom implied by selector = 1."""
        y = self.y(a.member)
        diff = y[a.c] - y[a.o]
        lo, hi = self.loc[a.member].L[a.c, a.o], self.loc[a.member].U[a.c, a.o]
        if selector is None:
            self._check(a.rhs)
            self.cons.append(diff >= a.rhs if a.geq else diff <= a.rhs)
            return
        big = max(a.rhs - lo, 0.0) if a.geq else max(hi - a.rhs, 0.0)
        self._check(a.rhs, big)
        if a.geq:
            self.cons.append(diff >= a.rhs - big * (1 - selector))
        else:
            self.cons.append(diff <= a.rhs + big * (1 - selector))

    def group(self, clauses: Sequence[_Clause]) -> None:
        if len(clauses) == 1:
            for a in clauses[0]:
                self.atom(a)
            return
        s = self.cp.Variable(len(clauses), boolean=True)
        self.cons.append(self.cp.sum(s) == 1)
        for k, clause in enumerate(clauses):
            for a in clause:
                self.atom(a, s[k])

    def vote(self, options: Sequence[dict[int, _Clause]], vote: _Vote) -> bool:
        """The one-hot predictions and the vote lead; False when no member may vote v or w
        and the lead 0 cannot reach the gap (the case is impossible)."""
        total: Any = 0.0
        terms = 0
        for i, allowed in enumerate(options):
            z = self.cp.Variable(len(allowed), boolean=True)
            self.cons.append(self.cp.sum(z) == 1)
            for k, (t, clause) in enumerate(sorted(allowed.items())):
                for a in clause:
                    self.atom(a, z[k])
                if t in (vote.v, vote.w):
                    sign = 1.0 if t == vote.v else -1.0
                    total = total + sign * vote.weights[i] * z[k]
                    terms += 1
        if not terms:
            return vote.gap <= 0.0
        self._check(vote.gap, *vote.weights)
        self.cons.append(total >= vote.gap)
        return True


def _search(
    case: _Case,
    models: Sequence[_Model],
    loc: Sequence[_Local],
    inp: InputSet,
    deadline: float,
) -> Search:
    """Solve one case (presolved with the bounds of the differences)."""
    groups: list[tuple[_Clause, ...]] = []
    for g in case.groups:
        live = [c for c in (_live_clause(c, loc) for c in g.clauses) if c is not None]
        if not live:
            return Search(SearchStatus.NONE)  # no clause can hold: the case is impossible
        if any(not c for c in live):
            continue  # some clause holds everywhere: the group is no constraint
        groups.append(tuple(live))
    options: list[dict[int, _Clause]] = []
    if case.vote is not None:
        for member_options in case.vote.options:
            allowed = {}
            for t, clause in enumerate(member_options):
                live_clause = _live_clause(clause, loc)
                if live_clause is not None:
                    allowed[t] = live_clause
            if not allowed:
                return Search(SearchStatus.NONE)
            options.append(allowed)
    b = _Builder(models, loc, inp)
    for clauses in groups:
        b.group(clauses)
    if case.vote is not None and not b.vote(options, case.vote):
        return Search(SearchStatus.NONE)
    if b.problems:
        return Search(SearchStatus.ERROR, detail="; ".join(b.problems))
    problem = b.cp.Problem(b.cp.Minimize(0), b.cons)
    return solve_cvxpy(problem, b.x, inp.l2_eps is not None, deadline)


# -- the ensembles' cases ---------------------------------------------------------------------


def _no_certificate(
    i: int, models: Sequence[_Model], loc: Sequence[_Local], eps: float, over: bool
) -> list[_Group]:
    """Member i certifies no class: for every class c, some l != c with D_cl small."""
    K, m = models[i].K, models[i].K.shape[0]
    out = []
    for c in range(m):
        atoms = []
        for o in range(m):
            if o == c:
                continue
            if over:
                rhs = eps * K[c, o] * _UP + 2 * SQRT2 * loc[i].e32 * _UP + TOLERANCE
            else:  # D_co <= eps K_co already refutes c (a certificate needs D > eps K)
                rhs = eps * K[c, o] - min(STRICT, eps * K[c, o] / 2)
            atoms.append((_Atom(i, c, o, False, rhs),))
        out.append(_Group(tuple(atoms)))
    return out


def _certifies(
    i: int, t: int, models: Sequence[_Model], loc: Sequence[_Local], eps: float, over: bool
) -> _Clause:
    """Member i certifies class t."""
    K, m = models[i].K, models[i].K.shape[0]
    atoms = []
    for o in range(m):
        if o == t:
            continue
        if over:
            rhs = eps * K[t, o] - TOLERANCE
        else:
            rhs = (eps * K[t, o] + 2 * SQRT2 * loc[i].e32) * _UP + STRICT
        atoms.append(_Atom(i, t, o, True, rhs))
    return tuple(atoms)


def _predicts(i: int, t: int, m: int, loc: Sequence[_Local], over: bool) -> _Clause:
    """Member i predicts class t (its certified class or its float64 argmax)."""
    rhs = -SQRT2 * loc[i].e64 * _UP - TOLERANCE if over else SQRT2 * loc[i].e64 * _UP + STRICT
    return tuple(_Atom(i, t, o, True, rhs) for o in range(m) if o != t)


def _cascade_cases(
    models: Sequence[_Model], loc: Sequence[_Local], eps: float, a: int, over: bool
) -> list[_Case]:
    k, m = len(models), models[0].K.shape[0]
    others = [t for t in range(m) if t != a]
    cases = []
    for j in range(k):
        groups = [g for i in range(j) for g in _no_certificate(i, models, loc, eps, over)]
        groups.append(_Group(tuple(_certifies(j, t, models, loc, eps, over) for t in others)))
        before = f"members 0..{j - 1} certify nothing and " if j else ""
        cases.append(_Case(f"{before}{models[j].label} certifies a class != {a}", tuple(groups)))
    groups = [g for i in range(k) for g in _no_certificate(i, models, loc, eps, over)]
    groups.append(_Group(tuple(_predicts(k - 1, t, m, loc, over) for t in others)))
    cases.append(
        _Case(f"no member certifies and {models[-1].label} predicts a class != {a}", tuple(groups))
    )
    return cases


def vote_gap(weights: Sequence[float]) -> float:
    """A lower bound of the smallest positive value of sum_i s_i w_i, s_i in {-1, 0, 1}
    (exact for up to ``EXACT_GAP_MEMBERS`` weights, rounded down; 0 beyond)."""
    if len(weights) > EXACT_GAP_MEMBERS:
        return 0.0
    sums = {Fraction(0)}
    for w in weights:
        f = Fraction(w)
        sums = {s + d for s in sums for d in (-f, Fraction(0), f)}
    positive = [s for s in sums if s > 0]
    return float(min(positive)) * (1 - 2.0**-50) if positive else 0.0


def _voting_cases(
    ensemble: Voting, models: Sequence[_Model], loc: Sequence[_Local], w: int, over: bool
) -> list[_Case]:
    m = models[0].K.shape[0]
    weights = ensemble.weights
    slack = TOLERANCE * 1e-3 * sum(weights)
    gap = vote_gap(weights)
    options = tuple(
        tuple(_predicts(i, t, m, loc, over) for t in range(m)) for i in range(len(models))
    )
    cases = []
    for v in range(m):
        if v == w:
            continue
        if over:
            need = (gap if v > w else 0.0) - slack
        else:
            need = gap / 2 if v > w and gap > 0 else slack if v > w else 0.0
        vote = _Vote(options, weights, v, w, need)
        cases.append(_Case(f"class {v} beats {w} in the vote", vote=vote))
    return cases


def _cases(
    ensemble: Ensemble,
    models: Sequence[_Model],
    loc: Sequence[_Local],
    eps: float,
    a: int,
    over: bool,
) -> list[_Case]:
    if isinstance(ensemble, Cascade):
        return _cascade_cases(models, loc, eps, a, over)
    assert isinstance(ensemble, Voting)
    return _voting_cases(ensemble, models, loc, a, over)


# -- the audit ---------------------------------------------------------------------------------


def _spec_text(spec: LocalRobustness) -> str:
    return f"LocalRobustness(eps={spec.eps:g}, norm={spec.norm.value})"


def audit_ensemble(
    ensemble: Ensemble,
    spec: LocalRobustness,
    xs: Any,
    domain: Box | None = None,
    timeout: float = 60.0,
) -> EnsembleAudit:
    """Audit the ensemble's robustness claims at every point of ``xs`` (n, *input_shape):
    VIOLATED with a re-checked witness, ROBUST (proved), NOT_CLAIMED, TIMEOUT (``timeout``
    seconds per point) or UNKNOWN (module docstring). Cascade and Voting ensembles whose
    members are all certified by the Lipschitz engine; others raise UnsupportedError."""
    if not isinstance(ensemble, Cascade | Voting):
        raise UnsupportedError(
            f"the exact audit encodes cascades and voting, not {type(ensemble).__name__}"
        )
    ensemble.supports(spec)
    models = _models(ensemble, spec)
    points = validate_points(ensemble.members[0].network, xs, domain)
    out = []
    for p in range(len(points)):
        out.append(_audit_point(ensemble, spec, models, points[p], p, domain, timeout))
    return EnsembleAudit(ensemble.name, _spec_text(spec), tuple(out))


def _audit_point(
    ensemble: Ensemble,
    spec: LocalRobustness,
    models: Sequence[_Model],
    x: FloatArray,
    index: int,
    domain: Box | None,
    timeout: float,
) -> EnsemblePointAudit:
    start = time.perf_counter()
    deadline = start + timeout
    ans = ensemble.answer(spec, x[None], domain)
    a = int(ans.predicted[0])

    def result(status: AuditStatus, detail: str, **kw: Any) -> EnsemblePointAudit:
        return EnsemblePointAudit(
            index,
            status,
            a,
            kw.get("witness"),
            kw.get("witness_answer"),
            detail,
            time.perf_counter() - start,
        )

    if not bool(ans.certified[0]):
        return result(AuditStatus.NOT_CLAIMED, ans.details[0])
    ball = Ball(x, spec.eps, spec.norm, domain)
    inp = InputSet.of(ball)
    MilpSolver().supports_region(inp)
    loc = []
    for model in models:  # the bounds of a large member may take the whole budget
        if time.perf_counter() >= deadline:
            return result(
                AuditStatus.TIMEOUT, f"time limit while bounding the members ({model.label} next)"
            )
        loc.append(_local(model, x, spec, domain, inp, deadline))

    def recheck(found: Search) -> tuple[FloatArray, int, str] | None:
        flat = found.witness
        if flat is None or not np.all(np.isfinite(flat)):
            return None
        moved = ball.inside(flat.reshape(x.shape))
        if moved is None:
            return None
        there = ensemble.answer(spec, moved[None], domain)
        b = int(there.predicted[0])
        return (moved, b, there.details[0]) if b != a else None

    over = _cases(ensemble, models, loc, spec.eps, a, over=True)
    under = _cases(ensemble, models, loc, spec.eps, a, over=False)
    timeouts: list[str] = []
    unresolved: list[str] = []
    for first_case, strict_case in zip(over, under, strict=True):
        if time.perf_counter() >= deadline:
            timeouts.append(f"{first_case.description}: time limit before the search")
            continue
        found = _search(first_case, models, loc, inp, deadline)
        if found.status is SearchStatus.NONE:
            continue
        if found.status is SearchStatus.FOUND:
            hit = recheck(found)
            if hit is None:
                found = _search(strict_case, models, loc, inp, deadline)
                hit = recheck(found) if found.status is SearchStatus.FOUND else None
                if found.status in (SearchStatus.NONE, SearchStatus.FOUND) and hit is None:
                    unresolved.append(
                        f"{first_case.description}: a candidate failed the re-check and no "
                        "strict violation re-checks (within the error bounds and tolerance)"
                    )
                    continue
            if hit is not None:
                moved, b, how = hit
                return result(
                    AuditStatus.VIOLATED,
                    f"{first_case.description}; at the witness: {how}",
                    witness=moved,
                    witness_answer=b,
                )
        reason = f"{first_case.description}: {found.detail or found.status.value}"
        if found.status is SearchStatus.TIMEOUT:
            timeouts.append(reason)
        else:
            unresolved.append(f"solver error: {reason}")
    if unresolved:
        return result(AuditStatus.UNKNOWN, "; ".join(unresolved + timeouts))
    if timeouts:
        return result(AuditStatus.TIMEOUT, "; ".join(timeouts))
    return result(
        AuditStatus.ROBUST,
        f"no point of the ball changes the answer {a}: {len(over)} cases infeasible "
        f"({ans.details[0]})",
    )
