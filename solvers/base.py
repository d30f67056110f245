"""The exact-solver protocol, the registry, and the decision procedure they share.

A solver answers one property: for all x in the region, does the predicate hold at f(x)?

    solver.solve(network, prop, timeout) -> CheckResult   # CERTIFIED, FALSIFIED(x'), TIMEOUT
                                                          # or UNKNOWN

Every solver only implements ``search(query, deadline)``: find x in the input set such that
*every* clause of the predicate has an atom ``c . y + d <= margin`` (the violation), or prove
there is none. ``ExactSolverBase.solve`` does the rest, the same way for every back-end:

1. lower the network to its piecewise-linear normal form (``lowering.py``);
2. a quick falsification pass (sampling and PGD in the region), unless disabled;
3. pre-activation bounds (``bounds.py``); atoms whose lower bound is > 0 cannot be violated
   and are dropped; a clause left with no atom holds everywhere, which certifies;
4. for low-dimensional box regions with many unstable ReLUs, branch on the input box
   (split the dimension with the largest influence on the violated atoms, re-bound, recurse);
5. the solver's search with ``margin = +tolerance``: no solution certifies (the predicate holds
   with slack above the solver's own tolerance); a solution is a candidate witness, re-checked
   by a float64 forward pass (inside the region, violating the predicate). A candidate that
   fails the re-check triggers one more search with ``margin = -tolerance``; if that finds
   nothing re-checkable either, the answer is UNKNOWN (the margin is within the solver's
   tolerance of zero): a failed re-check is never a verdict.

A back-end's own failure (an error status, an inaccurate or incomplete answer) is
``SearchStatus.ERROR``: the verdict is UNKNOWN with the solver's reason in the detail. TIMEOUT
means the time limit was reached: a search reporting it before the deadline (less
``DEADLINE_SLACK``) is treated as an error too.
"""

from __future__ import annotations

import enum
import time
from typing import Any, ClassVar, Protocol

import attrs
import numpy as np
import torch
from numpy.typing import NDArray
from verispec.solvers.bounds import (
    BoundMethod,
    Bounds,
    InputSet,
    back_substitute,
    compute_bounds,
    output_deviation,
)
from verispec.solvers.lowering import PiecewiseLinearNet, lower
from verispec.solvers.propagation import (
    PAD,
    LinearLower,
    Relaxed,
    Sets,
    TorchNet,
    crown_bounds,
    gradient_bound,
    linear_lower,
    relax,
)

from verispec import options
from verispec.attacks import pgd_attack, sample_attack
from verispec.errors import ConfigError, UnsupportedError
from verispec.network import Network
from verispec.options import resolve_device
from verispec.properties import Clause, Goal, Property
from verispec.regions import FloatArray, Polytope
from verispec.registry import Registry
from verispec.results import CheckResult, Verdict


class SearchStatus(enum.Enum):
    """The outcome of a solver's search for a violation."""

    FOUND = "found"
    NONE = "none"
    TIMEOUT = "timeout"
    ERROR = "error"
    """The solver failed (error status, inaccurate or incomplete answer): nothing is known."""


@attrs.frozen(eq=False)
class Search:
    """A search outcome; ``witness`` is a flattened input when FOUND."""

    status: SearchStatus
    witness: FloatArray | None = None
    detail: str = ""


@attrs.frozen(eq=False)
class Atoms:
    """The atoms of one clause that can still be violated: rows ``C @ y + d``; ``upper`` bounds
    each atom over the input set (it sets big-M constants)."""

    C: FloatArray
    d: FloatArray
    lower: FloatArray
    upper: FloatArray


@attrs.frozen(eq=False)
class Query:
    """Find x in ``inp`` with, for every entry of ``violation``, some atom <= ``margin``."""

    net: PiecewiseLinearNet
    inp: InputSet
    bounds: Bounds
    violation: tuple[Atoms, ...]
    margin: float


class ExactSolver(Protocol):
    """What every exact solver provides."""

    name: ClassVar[str]

    def solve(self, network: Network, prop: Property, timeout: float | None = None) -> CheckResult:
        """CERTIFIED, FALSIFIED (with a float64-confirmed witness), TIMEOUT or UNKNOWN."""
        ...

    def solve_goal(self, network: Network, goal: Goal, timeout: float | None = None) -> CheckResult:
        """A goal holds iff one of its alternatives does."""
        ...


def _load_builtin_solvers() -> None:
    """Import the modules that register the built-in solvers (explicit, no import-time magic)."""
    from verispec.solvers import milp, smt  # noqa: F401


SOLVERS: Registry[ExactSolverBase] = Registry("solver", loader=_load_builtin_solvers)
"""Registered solver classes by name; each has a ``Config`` attrs class and ``__init__``."""

register_solver = SOLVERS.register
"""Class decorator adding a solver to ``SOLVERS`` under a name (a name taken twice raises)."""


def solver_class(name: str) -> type[ExactSolverBase]:
    """The solver class registered as ``name``; unknown names raise UnsupportedError."""
    return SOLVERS.lookup(name)


def _bound_method(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in {m.value for m in BoundMethod}:
        raise ConfigError(
            f"option 'bounds' (SolverConfig.bounds) must be one of "
            f"{[m.value for m in BoundMethod]}, got {value!r}",
            "bounds",
        )


@attrs.frozen
class SolverConfig:
    """Options shared by the exact solvers."""

    timeout: float = attrs.field(default=60.0, validator=options.number(0.0))
    bounds: str = attrs.field(default="lp", validator=_bound_method)
    falsify: bool = attrs.field(default=True, validator=options.flag)
    falsify_samples: int = attrs.field(default=256, validator=options.integer(0))
    pgd_restarts: int = attrs.field(default=4, validator=options.integer(0))
    split: bool = attrs.field(default=True, validator=options.flag)
    split_max_dims: int = attrs.field(default=8, validator=options.integer(0))
    split_leaf_unstable: int = attrs.field(default=10, validator=options.integer(0))
    tolerance: float = attrs.field(default=1e-6, validator=options.number(0.0, 1.0))
    seed: int = attrs.field(default=0, validator=options.seed)
    device: str = attrs.field(default="cpu", validator=options.device)


DEADLINE_SLACK = 0.05
"""Seconds before the deadline from which a solver's stop counts as reaching the time limit
(solvers round their limits, e.g. z3 to whole milliseconds)."""


def _elapsed(start: float) -> float:
    return time.perf_counter() - start


def deadline_reached(deadline: float) -> bool:
    """Whether the time limit ending at ``deadline`` (a ``time.perf_counter`` value) is reached,
    up to ``DEADLINE_SLACK``."""
    return time.perf_counter() >= deadline - DEADLINE_SLACK


class ExactSolverBase:
    """The shared decision procedure (module docstring); subclasses implement ``search``."""

    name: ClassVar[str] = ""
    Config = SolverConfig

    def __init__(self, config: SolverConfig | None = None) -> None:
        self.config = config or SolverConfig()
        self.device = resolve_device(self.config.device)  # of the torch bounds
        self._lowered: dict[str, PiecewiseLinearNet] = {}

    # -- to implement ---------------------------------------------------------------------------
    def search(self, query: Query, deadline: float) -> Search:  # pragma: no cover - abstract
        raise NotImplementedError

    def supports_region(self, inp: InputSet) -> None:
        """Raise UnsupportedError when the back-end cannot encode this input set."""

    # -- shared ---------------------------------------------------------------------------------
    def lowered(self, network: Network) -> PiecewiseLinearNet:
        key = network.fingerprint()
        if key not in self._lowered:
            self._lowered[key] = lower(network)
        return self._lowered[key]

    def _result(self, verdict: Verdict, start: float, detail: str, **kw: Any) -> CheckResult:
        return CheckResult(
            verdict=verdict, engine=self.name, time_s=_elapsed(start), detail=detail, **kw
        )

    def solve(self, network: Network, prop: Property, timeout: float | None = None) -> CheckResult:
        """Decide ``prop`` on ``network`` within ``timeout`` seconds (the config's by default)."""
        start = time.perf_counter()
        deadline = start + (self.config.timeout if timeout is None else timeout)
        net = self.lowered(network)
        inp = InputSet.of(prop.region)
        self.supports_region(inp)
        if inp.empty:
            return self._result(Verdict.CERTIFIED, start, "the region is empty")
        if self.config.falsify:
            witness = self._falsify(network, prop)
            if witness is not None:
                return self._result(
                    Verdict.FALSIFIED, start, "found by sampling/PGD", counterexample=witness
                )
        if self._should_split(inp):
            verdict, witness, detail = self._branch(network, net, prop, inp, deadline)
        else:
            bounds = compute_bounds(net, inp, BoundMethod(self.config.bounds), deadline)
            verdict, witness, detail = self._decide(network, net, prop, inp, bounds, deadline)
        return self._result(verdict, start, detail, counterexample=witness)

    def solve_goal(self, network: Network, goal: Goal, timeout: float | None = None) -> CheckResult:
        """Solve each alternative; CERTIFIED as soon as one holds. FALSIFIED needs one point
        refuting every alternative: with several alternatives refuted only by different points
        the answer is UNKNOWN, with the reason."""
        start = time.perf_counter()
        if not goal.alternatives:
            raise UnsupportedError("the goal has no alternative: it fails at the point itself")
        budget = self.config.timeout if timeout is None else timeout
        witnesses, timed_out, details = [], False, []
        for prop in goal.alternatives:
            left = budget - _elapsed(start)
            res = self.solve(network, prop, max(left, 1e-3))
            details.append(res.detail)
            if res.verdict is Verdict.CERTIFIED:
                return attrs.evolve(res, time_s=_elapsed(start))
            if res.verdict is Verdict.FALSIFIED and res.counterexample is not None:
                witnesses.append(res.counterexample)
            elif res.verdict is Verdict.TIMEOUT:
                timed_out = True
        detail = "; ".join(details)
        if timed_out or len(witnesses) < len(goal.alternatives):
            verdict = Verdict.TIMEOUT if timed_out else Verdict.UNKNOWN
            return self._result(verdict, start, detail)
        for candidate in witnesses:
            w = goal.confirm(network, candidate)
            if w is not None:
                return self._result(Verdict.FALSIFIED, start, detail, counterexample=w)
        return self._result(
            Verdict.UNKNOWN,
            start,
            "every alternative fails, but at different points: the spec "
            "does not hold, yet no single witness refutes all of them",
        )

    def _falsify(self, network: Network, prop: Property) -> FloatArray | None:
        rng = np.random.default_rng(self.config.seed)
        if isinstance(prop.region, Polytope) and prop.region.box is None:
            return None  # nothing to sample from without a box; the exact search decides
        if self.config.falsify_samples:
            w = sample_attack(network, prop, self.config.falsify_samples, rng)
            if w is not None:
                return w
        if self.config.pgd_restarts:
            return pgd_attack(network, prop, rng, restarts=self.config.pgd_restarts)
        return None

    # -- one input set ------------------------------------------------------------------------
    def _violation(
        self,
        net: PiecewiseLinearNet,
        inp: InputSet,
        bounds: Bounds,
        prop: Property,
        out_dev: FloatArray,
    ) -> tuple[Atoms, ...] | None:
        """The clauses' violable atoms with their bounds (``out_dev``: the outputs' deviation,
        ``bounds.output_deviation``); None when some clause provably holds everywhere."""
        out = []
        last = net.depth - 1
        for clause in prop.predicate.clauses:
            if clause.C.shape[0] == 0:
                return None  # an empty conjunction is true
            lb = back_substitute(net, inp, bounds, last, clause.C, clause.d)
            ub = back_substitute(net, inp, bounds, last, -clause.C, -clause.d)
            # lower holds for the exact network; upper (big-M) must hold for the lowered one
            lower = lb.value
            upper = -ub.value + np.abs(clause.C) @ out_dev
            live = lower <= 0
            if not live.any():
                return None  # every atom > 0 everywhere: the clause, hence the predicate
            if (upper[live] <= 0).any():
                continue  # some atom is <= 0 everywhere: the clause is always violated
            out.append(Atoms(clause.C[live], clause.d[live], lower[live], upper[live]))
        return tuple(out)

    def _decide(
        self,
        network: Network,
        net: PiecewiseLinearNet,
        prop: Property,
        inp: InputSet,
        bounds: Bounds,
        deadline: float,
    ) -> tuple[Verdict, FloatArray | None, str]:
        out_dev = output_deviation(net, inp, bounds)
        violation = self._violation(net, inp, bounds, prop, out_dev)
        stats = f"{bounds.num_unstable(net)} unstable ReLUs ({bounds.method.value} bounds)"
        if violation is None:
            return Verdict.CERTIFIED, None, f"proved by the bounds; {stats}"
        tol = self.config.tolerance
        # The search decides the lowered network: a violation of the exact one is a violation
        # of the lowered one by at most the outputs' deviation, which the margin adds.
        slack = max((float((np.abs(a.C) @ out_dev).max()) for a in violation), default=0.0)
        first = self._search(Query(net, inp, bounds, violation, tol + slack), deadline)
        if first.status is SearchStatus.NONE:
            return Verdict.CERTIFIED, None, f"{self.name}: no violation; {stats}"
        if first.status in (SearchStatus.TIMEOUT, SearchStatus.ERROR):
            return self._no_answer(first, stats)
        witness = self._recheck(network, prop, first.witness)
        if witness is not None:
            return Verdict.FALSIFIED, witness, f"{self.name}: violation; {stats}"
        second = self._search(Query(net, inp, bounds, violation, -tol), deadline)
        if second.status is SearchStatus.FOUND:
            witness = self._recheck(network, prop, second.witness)
            if witness is not None:
                return Verdict.FALSIFIED, witness, f"{self.name}: violation; {stats}"
        if second.status in (SearchStatus.TIMEOUT, SearchStatus.ERROR):
            return self._no_answer(second, stats)
        return (
            Verdict.UNKNOWN,
            None,
            f"{self.name}: solver error: its candidate witness failed the float64 re-check and "
            f"no violation by more than {tol:g} exists (the margin is within tolerance of 0)",
        )

    def _search(self, query: Query, deadline: float) -> Search:
        """``search``, with a TIMEOUT reported before the deadline turned into an ERROR."""
        found = self.search(query, deadline)
        if found.status is SearchStatus.TIMEOUT and not deadline_reached(deadline):
            left = deadline - time.perf_counter()
            reason = f"{found.detail}; " if found.detail else ""
            return Search(
                SearchStatus.ERROR,
                detail=f"{reason}it reported a time limit {left:.3g} s before the deadline",
            )
        return found

    def _no_answer(self, found: Search, stats: str) -> tuple[Verdict, None, str]:
        """The verdict of a TIMEOUT or ERROR search: TIMEOUT, or UNKNOWN with the reason."""
        reason = f" ({found.detail})" if found.detail else ""
        if found.status is SearchStatus.TIMEOUT:
            return Verdict.TIMEOUT, None, f"{self.name}: time limit{reason}; {stats}"
        return Verdict.UNKNOWN, None, f"{self.name}: solver error{reason}; {stats}"

    @staticmethod
    def _recheck(network: Network, prop: Property, flat: FloatArray | None) -> FloatArray | None:
        """The witness (input shape), moved into the closed region (checked exactly) if the
        solver left it a few ulps outside, when its float64 forward pass violates the
        predicate; otherwise None (``Property.confirm``)."""
        if flat is None or not np.all(np.isfinite(flat)):
            return None
        return prop.confirm(network, np.asarray(flat, dtype=np.float64))

    # -- input splitting --------------------------------------------------------------------------
    def _should_split(self, inp: InputSet) -> bool:
        return self.config.split and inp.size <= self.config.split_max_dims and inp.l2_eps is None

    def _branch(
        self,
        network: Network,
        net: PiecewiseLinearNet,
        prop: Property,
        inp: InputSet,
        deadline: float,
    ) -> tuple[Verdict, FloatArray | None, str]:
        """Branch and bound over the input box, a frontier of boxes at a time: bound each box
        (CROWN, batched over the frontier, on every layer and on the atoms), drop the boxes where
        some clause, or the disjunction of the one-atom clauses, provably holds, try the centre
        and the minimising vertex of every atom's linear bound as witnesses, run the exact
        search on boxes with few unstable ReLUs, and halve the others. A leaf the exact search
        leaves UNKNOWN (a near-tie) does not end the search: a witness may lie in another box,
        and without one the answer is UNKNOWN."""
        stack_lo, stack_hi = [inp.lo[None]], [inp.hi[None]]
        pieces = leaves = 0
        undecided = ""  # a leaf left UNKNOWN (a near-tie): the search goes on for a witness
        while stack_lo:
            if time.perf_counter() > deadline:
                return Verdict.TIMEOUT, None, f"time limit after {pieces} pieces"
            lo, hi = _take(stack_lo, stack_hi, BATCH)
            pieces += lo.shape[0]
            live, score, points, unstable = self._bound_boxes(net, prop, lo, hi)
            witness = self._try_points(network, net, prop, points)
            if witness is not None:
                return Verdict.FALSIFIED, witness, f"found after {pieces} pieces"
            if not live.any():
                continue
            lo, hi, score, unstable = lo[live], hi[live], score[live], unstable[live]
            small = np.all(hi - lo <= 1e-7 * (1 + np.abs(lo)), axis=1)
            leaf = (unstable <= self.config.split_leaf_unstable) | small
            for i in np.flatnonzero(leaf):
                leaves += 1
                piece = inp.with_box(lo[i], hi[i])
                bounds = compute_bounds(net, piece, BoundMethod.LINEAR)
                verdict, witness, detail = self._decide(network, net, prop, piece, bounds, deadline)
                if verdict is Verdict.UNKNOWN:
                    undecided = undecided or detail
                elif verdict is not Verdict.CERTIFIED:
                    return verdict, witness, f"{detail}; after {pieces} pieces"
            rest = ~leaf
            if rest.any():
                left, right = _halve(lo[rest], hi[rest], score[rest])
                stack_lo.append(right[0])
                stack_hi.append(right[1])
                stack_lo.append(left[0])
                stack_hi.append(left[1])
        if undecided:
            return Verdict.UNKNOWN, None, f"{undecided}; no witness in the other {pieces} pieces"
        return Verdict.CERTIFIED, None, f"{pieces} pieces, {leaves} solved exactly"

    def _bound_boxes(
        self, net: PiecewiseLinearNet, prop: Property, lo: FloatArray, hi: FloatArray
    ) -> tuple[NDArray[np.bool_], FloatArray, FloatArray, NDArray[np.integer]]:
        """For boxes (B, d): which may still hold a violation (no clause, nor the disjunction
        of the one-atom clauses, proved everywhere by CROWN, ``propagation.py``), a split score
        per dimension, candidate witnesses (centres and minimising vertices, (n, d)), and the
        number of unstable ReLUs of each box.

        The score is ReluVal's smear: width x a bound of |d atom / dx| over the box, summed
        over the live atoms. The gradient bound counts every path through a ReLU that may be
        active, so it sees the dimensions that make ReLUs unstable; the coefficients of the
        atoms' linear bounds do not (on ACAS Xu they can be 1e-4 on the dimensions that drive
        the relaxation's looseness, and splitting the others to widths of 1e-10 proved nothing:
        15 of the 186 instances timed out that way)."""
        dev = self.device
        tnet = TorchNet.of(net, dev)
        sets = Sets.boxes(torch.tensor(lo, device=dev), torch.tensor(hi, device=dev))
        B = lo.shape[0]
        width = hi - lo
        safe = np.zeros(B, dtype=bool)
        score = np.zeros_like(lo)
        points = [(lo + hi) / 2]
        singles: list[tuple[Clause, LinearLower]] = []
        with torch.no_grad():
            los, his = crown_bounds(tnet, sets)
            layers = relax(tnet, sets, los, his, net.depth - 1)
            unstable = sum(
                (m & (a < 0) & (b > 0)).sum(dim=1)
                for m, a, b in zip(tnet.relu, los, his, strict=False)
            )
            for clause in prop.predicate.clauses:
                if clause.C.shape[0] == 0:
                    safe[:] = True  # an empty conjunction is true
                    break
                C = torch.tensor(clause.C, device=dev).expand(B, *clause.C.shape)
                d = torch.tensor(clause.d, device=dev).expand(B, clause.d.size)
                lb = linear_lower(tnet, sets, layers, C, d, net.depth - 1)
                value = np.nan_to_num(lb.value.cpu().numpy(), nan=-np.inf)
                coef = lb.coef.cpu().numpy()
                live = value <= 0
                safe |= ~live.any(axis=1)
                slope = gradient_bound(tnet, his, C).cpu().numpy()
                score += (slope * width[:, None, :] * live[:, :, None]).sum(axis=1)
                # The vertex minimising the linear lower bound of the clause's most violable
                # atom.
                worst = np.argmin(value, axis=1)
                c = coef[np.arange(B), worst]
                points.append(np.where(c > 0, lo, hi))
                if clause.C.shape[0] == 1:
                    singles.append((clause, lb))
            if len(singles) > 1 and not safe.all():
                safe |= _disjunction_holds(tnet, sets, layers, singles, los[-1], his[-1], ~safe)
        count = (
            np.asarray(unstable.cpu(), dtype=np.int64)
            if isinstance(unstable, torch.Tensor)
            else np.zeros(B, np.int64)
        )
        return ~safe, score, np.concatenate(points), count

    def _try_points(
        self, network: Network, net: PiecewiseLinearNet, prop: Property, points: FloatArray
    ) -> FloatArray | None:
        """The first candidate point whose float64 forward pass through ``network`` violates
        the property (screened on the lowered network first)."""
        y = net.forward(points)
        bad = np.flatnonzero(~prop.predicate.holds(y))
        for i in bad[:8]:
            x = prop.confirm(network, points[i])
            if x is not None:
                return x
        return None


def _disjunction_holds(
    net: TorchNet,
    sets: Sets,
    layers: list[Relaxed],
    singles: list[tuple[Clause, LinearLower]],
    y_lo: torch.Tensor,
    y_hi: torch.Tensor,
    todo: NDArray[np.bool_],
) -> NDArray[np.bool_]:
    """Which boxes (of ``todo``) provably satisfy the disjunction of the one-atom clauses
    ``singles`` (each with its CROWN bound), though no single atom holds on the whole box.

    If ``sum_j lambda_j (c_j y + d_j) > 0`` on a box for some lambda >= 0, then at every point
    of it some atom is positive. lambda is chosen on the atoms' linear bounds (the dual of the
    small LP ``max_x-min max_j L_j(x)``, by exponentiated-gradient steps) and the combined atom
    is then bounded by CROWN directly; its rounding (``PAD`` relative to the terms at the
    logits' bounds ``y_lo``, ``y_hi``) is subtracted."""
    dev = sets.lo.device
    rows = torch.as_tensor(np.flatnonzero(todo), device=dev)
    coef = torch.stack([lb.coef[rows, 0] for _, lb in singles], dim=1)  # (b, m, d)
    const = torch.stack([lb.const[rows, 0] for _, lb in singles], dim=1)  # (b, m)
    lo, hi = sets.lo[rows], sets.hi[rows]
    scale = torch.stack([lb.value[rows, 0] for _, lb in singles], dim=1).abs().amax(1) + 1e-12
    lam = torch.full_like(const, 1.0 / len(singles))
    best, best_lam = torch.full_like(scale, -torch.inf), lam
    for _ in range(DISJUNCTION_STEPS):
        a = torch.einsum("bm,bmd->bd", lam, coef)
        x = torch.where(a > 0, lo, hi)
        atoms = torch.einsum("bmd,bd->bm", coef, x) + const
        value = (lam * atoms).sum(1)
        better_now = value > best
        best = torch.where(better_now, value, best)
        best_lam = torch.where(better_now[:, None], lam, best_lam)
        lam = lam * torch.exp((DISJUNCTION_RATE * atoms / scale[:, None]).clamp(max=50.0))
        lam = lam / lam.sum(1, keepdim=True)
    out = np.zeros_like(todo)
    hopeful = torch.nonzero(best > 0)[:, 0]
    if hopeful.numel() == 0:
        return out
    owner, lam = rows[hopeful], best_lam[hopeful]
    C = torch.tensor(np.stack([c.C[0] for c, _ in singles]), device=dev)  # (m, n_L)
    d = torch.tensor(np.array([c.d[0] for c, _ in singles]), device=dev)
    combined_C, combined_d = lam @ C, lam @ d
    ymag = torch.maximum(y_lo[owner].abs(), y_hi[owner].abs())
    rounding = PAD * (((lam @ C.abs()) * ymag).sum(1) + lam @ d.abs())
    lb = linear_lower(
        net, sets, layers, combined_C[:, None, :], combined_d[:, None], net.depth - 1, owner=owner
    )
    proved = (lb.value[:, 0] - rounding > 0).cpu().numpy()
    out[owner.cpu().numpy()[proved]] = True
    return out


DISJUNCTION_STEPS = 30
"""Exponentiated-gradient steps choosing the weights of a disjunction's atoms."""

DISJUNCTION_RATE = 0.5
"""Their step size, relative to the largest |bound| of the box's atoms."""

BATCH = 64
"""Boxes bounded together in one batched pass by the input branch and bound."""


def _take(
    stack_lo: list[FloatArray], stack_hi: list[FloatArray], n: int
) -> tuple[FloatArray, FloatArray]:
    """Pop up to ``n`` boxes from the top of a stack of (k, d) box blocks (depth first)."""
    lo, hi = stack_lo.pop(), stack_hi.pop()
    while lo.shape[0] < n and stack_lo:
        lo, hi = np.concatenate([lo, stack_lo.pop()]), np.concatenate([hi, stack_hi.pop()])
    if lo.shape[0] > n:
        stack_lo.append(lo[n:])
        stack_hi.append(hi[n:])
        lo, hi = lo[:n], hi[:n]
    return lo, hi


def _halve(
    lo: FloatArray, hi: FloatArray, score: FloatArray
) -> tuple[tuple[FloatArray, FloatArray], tuple[FloatArray, FloatArray]]:
    """Halve each box (rows) along its highest-scoring dimension (the widest without a score)."""
    width = hi - lo
    dim = np.where(score.max(axis=1) > 0, np.argmax(score, axis=1), np.argmax(width, axis=1))
    rows = np.arange(lo.shape[0])
    mid = (lo[rows, dim] + hi[rows, dim]) / 2
    hi_left, lo_right = hi.copy(), lo.copy()
    hi_left[rows, dim] = mid
    lo_right[rows, dim] = mid
    return (lo, hi_left), (lo_right, hi)
