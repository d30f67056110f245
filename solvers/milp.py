"""Mixed-integer encoding in cvxpy: HiGHS for box / l_inf / polytope regions (a MILP), SCIP
(``pyscipopt``) for an l2 ball (a mixed-integer second-order-cone program).

Encoding of the lowered network (``lowering.py``) with the bounds of ``bounds.py``:

- z_k = W_k h_{k-1} + b_k, kept as affine expressions;
- pass-through and provably active neurons: h = z; provably inactive: h = 0;
- unstable ReLU with l < 0 < u and a binary a: h >= 0, h >= z, h <= z - l (1 - a), h <= u a;
- the violation: for each clause with atoms v_i = c_i . y + d_i, a selector s (binary, sum 1)
  and v_i <= margin + (U_i - margin)(1 - s_i), where U_i is the atom's upper bound; a clause
  with one live atom needs no selector.

The problem is a feasibility problem: the solver stops at the first solution. Tolerances are
tightened (1e-9) so that integrality slack cannot fake an infeasibility.

Only an infeasible status proves there is no violation and only a time-limit status (HiGHS) or
a failure at the deadline (SCIP, whose time limit cvxpy reports as a solver error) is a
timeout; every other status (HiGHS errors, "Not Set", cvxpy's ``infeasible_inaccurate``...)
is ``SearchStatus.ERROR`` with the status in the detail.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np
from verispec.solvers.base import (
    ExactSolverBase,
    Query,
    Search,
    SearchStatus,
    deadline_reached,
    register_solver,
)
from verispec.solvers.bounds import (
    HIGHS_THREADS,
    Bounds,
    InputSet,
    highs_outcome,
    new_highs,
    run_highs,
    silence_highs_banner,
)
from verispec.solvers.lowering import PiecewiseLinearNet

from verispec.errors import ExtraNotInstalledError

TIGHT = 1e-9
"""Feasibility / integrality tolerance asked of the MILP solvers."""

MAX_MAGNITUDE = 1e9
"""The largest weight, bias or bound the floating-point MILP solvers are given. Past it, one
float64 rounding (2^-53 |v| > 1e-7) comes within a factor 10 of the decision margin (the
config's tolerance, 1e-6 by default) and the solvers' absolute tolerances (1e-9) mean nothing;
HiGHS and SCIP also read values from 1e20 on as infinite, and SCIP refuses such input. Such a
query is an error (an UNKNOWN verdict that says to use the exact ``smt`` solver)."""


def out_of_range(query: Query) -> str | None:
    """Why the floating-point MILP solvers cannot be trusted on ``query`` (a value beyond
    ``MAX_MAGNITUDE`` or not finite), or None."""
    net, bounds = query.net, query.bounds
    parts = [*net.weights, *net.biases, *bounds.lo, *bounds.hi]
    parts += [a.C for a in query.violation] + [a.d for a in query.violation]
    parts += [a.upper for a in query.violation]
    inp = query.inp
    parts += [p for p in (inp.lo, inp.hi, inp.A, inp.b, inp.center) if p is not None]
    with np.errstate(invalid="ignore"):
        top = max((float(np.max(np.abs(p), initial=0.0)) for p in parts), default=0.0)
    if np.isfinite(top) and top <= MAX_MAGNITUDE:
        return None
    return (
        f"values up to {top:.3g} in the network, its bounds or the region exceed the "
        f"{MAX_MAGNITUDE:g} the floating-point MILP solvers can decide at this tolerance; "
        "use --solver smt (exact rational arithmetic)"
    )


def _cvxpy() -> Any:
    try:
        import cvxpy
    except ImportError:  # pragma: no cover - depends on the installation
        raise ExtraNotInstalledError(
            "the MILP solver needs cvxpy and highspy: pip install 'verispec[solvers]'"
        ) from None
    return cvxpy


def encode_input(inp: InputSet) -> tuple[Any, list[Any]]:
    """A cvxpy variable over the flattened input and the constraints of the input set."""
    cp = _cvxpy()
    x = cp.Variable(inp.size)
    cons = [x >= inp.lo, x <= inp.hi]
    if inp.l2_eps is not None and inp.center is not None:
        cons.append(cp.norm(x - inp.center, 2) <= inp.l2_eps)
    if inp.A is not None and inp.b is not None:
        cons.append(inp.A @ x <= inp.b)
    return x, cons


def encode_network(net: PiecewiseLinearNet, bounds: Bounds, x: Any) -> tuple[Any, list[Any]]:
    """The lowered network on the input expression ``x`` (module docstring): the affine
    expression of its outputs and the constraints of its hidden layers (``bounds`` valid over
    every value ``x`` may take). Called once per network, several networks may share ``x``."""
    cp = _cvxpy()
    cons: list[Any] = []
    h = x
    for k in range(net.depth - 1):
        z = net.weights[k] @ h + net.biases[k]
        lo, hi = bounds.lo[k], bounds.hi[k]
        relu = net.relu[k]
        new = cp.Variable(z.shape[0])
        linear = np.flatnonzero(~relu | (lo >= 0))
        dead = np.flatnonzero(relu & (hi <= 0) & (lo < 0))
        unstable = np.flatnonzero(bounds.unstable(net, k))
        if linear.size:
            cons.append(new[linear] == z[linear])
        if dead.size:
            cons.append(new[dead] == 0)
        if unstable.size:
            a = cp.Variable(unstable.size, boolean=True)
            hu, zu = new[unstable], z[unstable]
            lu, uu = lo[unstable], hi[unstable]
            cons += [hu >= 0, hu >= zu, hu <= zu - cp.multiply(lu, 1 - a), hu <= cp.multiply(uu, a)]
        h = new
    return net.weights[-1] @ h + net.biases[-1], cons


def encode(query: Query) -> tuple[Any, Any]:
    """The cvxpy problem of ``query`` and its input variable."""
    cp = _cvxpy()
    x, cons = encode_input(query.inp)
    y, hidden = encode_network(query.net, query.bounds, x)
    cons += hidden
    for atoms in query.violation:
        vals = atoms.C @ y + atoms.d
        if atoms.C.shape[0] == 1:
            cons.append(vals <= query.margin)
            continue
        s = cp.Variable(atoms.C.shape[0], boolean=True)
        slack = np.maximum(atoms.upper - query.margin, 0.0)
        cons += [cp.sum(s) == 1, vals <= query.margin + cp.multiply(slack, 1 - s)]
    return cp.Problem(cp.Minimize(0), cons), x


class _Rows:
    """A sparse row-wise constraint matrix under construction (HiGHS format)."""

    def __init__(self) -> None:
        self.starts, self.index, self.value = [0], [], []  # type: ignore[var-annotated]
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, idx: np.ndarray, val: np.ndarray, lo: float, hi: float) -> None:
        keep = val != 0
        self.index.append(np.asarray(idx, dtype=np.int32)[keep])
        self.value.append(np.asarray(val, dtype=np.float64)[keep])
        self.starts.append(self.starts[-1] + int(keep.sum()))
        self.lower.append(lo)
        self.upper.append(hi)


def encode_highs(query: Query) -> tuple[Any, int]:
    """The MILP of ``query`` (box / l_inf / polytope regions) as a ``highspy.HighsLp`` (the same
    encoding as ``encode``, built directly: no modelling-layer overhead), and the number of
    input columns (the first ones)."""
    import highspy

    inf = highspy.kHighsInf
    net, inp, bounds = query.net, query.inp, query.bounds
    col_lo: list[np.ndarray] = [np.asarray(inp.lo, dtype=np.float64)]
    col_hi: list[np.ndarray] = [np.asarray(inp.hi, dtype=np.float64)]
    integer: list[np.ndarray] = [np.zeros(inp.size, dtype=bool)]
    n_cols = inp.size
    rows = _Rows()

    def new_cols(lo: np.ndarray, hi: np.ndarray, is_int: bool) -> np.ndarray:
        nonlocal n_cols
        idx = np.arange(n_cols, n_cols + lo.size)
        n_cols += lo.size
        col_lo.append(lo)
        col_hi.append(hi)
        integer.append(np.full(lo.size, is_int))
        return idx

    if inp.A is not None and inp.b is not None:
        for a, bi in zip(inp.A, inp.b, strict=True):
            rows.add(np.arange(inp.size), a, -inf, float(bi))
    prev = np.arange(inp.size)
    for k in range(net.depth - 1):
        W, b = net.weights[k], net.biases[k]
        lo, hi = bounds.lo[k], bounds.hi[k]
        relu = net.relu[k]
        unstable = bounds.unstable(net, k)
        dead = relu & (hi <= 0) & ~unstable
        h_lo = np.where(relu, np.maximum(lo, 0.0), lo)
        h_hi = np.where(relu, np.maximum(hi, 0.0), hi)
        h_lo, h_hi = np.where(dead, 0.0, h_lo), np.where(dead, 0.0, h_hi)
        h = new_cols(np.minimum(h_lo, h_hi), h_hi, False)
        a_idx = new_cols(np.zeros(int(unstable.sum())), np.ones(int(unstable.sum())), True)
        a_of = dict(zip(np.flatnonzero(unstable).tolist(), a_idx.tolist(), strict=True))
        for i in range(W.shape[0]):
            if dead[i]:
                continue
            idx = np.concatenate([[h[i]], prev])
            val = np.concatenate([[1.0], -W[i]])
            if not unstable[i]:  # h = z (pass-through or provably active)
                rows.add(idx, val, float(b[i]), float(b[i]))
                continue
            a = a_of[i]
            rows.add(idx, val, float(b[i]), inf)  # h >= z
            # h <= z - l (1 - a)  <=>  h - W h_prev - l a <= b - l ;  h <= u a
            rows.add(
                np.concatenate([idx, [a]]),
                np.concatenate([val, [-lo[i]]]),
                -inf,
                float(b[i] - lo[i]),
            )
            rows.add(np.array([h[i], a]), np.array([1.0, -hi[i]]), -inf, 0.0)
        prev = h
    W, b = net.weights[-1], net.biases[-1]
    for atoms in query.violation:
        G, g = atoms.C @ W, atoms.C @ b + atoms.d  # atom values: G h + g
        if atoms.C.shape[0] == 1:
            rows.add(prev, G[0], -inf, float(query.margin - g[0]))
            continue
        sel = new_cols(np.zeros(G.shape[0]), np.ones(G.shape[0]), True)
        rows.add(sel, np.ones(sel.size), 1.0, 1.0)
        slack = np.maximum(atoms.upper - query.margin, 0.0)
        for i in range(G.shape[0]):
            rows.add(
                np.concatenate([prev, [sel[i]]]),
                np.concatenate([G[i], [slack[i]]]),
                -inf,
                float(query.margin + slack[i] - g[i]),
            )
    lp = highspy.HighsLp()
    lp.num_col_ = n_cols
    lp.num_row_ = len(rows.lower)
    lp.col_cost_ = np.zeros(n_cols)
    lp.col_lower_ = np.concatenate(col_lo)
    lp.col_upper_ = np.concatenate(col_hi)
    lp.row_lower_ = np.asarray(rows.lower, dtype=np.float64)
    lp.row_upper_ = np.asarray(rows.upper, dtype=np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.asarray(rows.starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.concatenate(rows.index) if rows.index else np.zeros(0, np.int32)
    lp.a_matrix_.value_ = np.concatenate(rows.value) if rows.value else np.zeros(0)
    kinds = np.concatenate(integer)
    lp.integrality_ = [
        highspy.HighsVarType.kInteger if t else highspy.HighsVarType.kContinuous for t in kinds
    ]
    return lp, inp.size


def search_highs(query: Query, deadline: float) -> Search:
    """Solve the MILP of ``query`` with HiGHS directly (box / l_inf / polytope regions)."""
    lp, n_in = encode_highs(query)
    left = deadline - time.perf_counter()
    if left <= 0:
        return Search(SearchStatus.TIMEOUT, detail="time limit before the MILP")
    h = new_highs()
    h.setOptionValue("time_limit", max(left, 0.01))
    h.setOptionValue("mip_feasibility_tolerance", TIGHT)
    h.setOptionValue("primal_feasibility_tolerance", TIGHT)
    h.passModel(lp)
    run = run_highs(h)
    return highs_search(h, run, n_in)


def highs_search(h: Any, run: Any, n_in: int) -> Search:
    """The search outcome of a finished HiGHS MILP run (``run`` its ``HighsStatus``)."""
    import highspy

    ms = highspy.HighsModelStatus
    status = h.getModelStatus()
    outcome = highs_outcome(h, run)
    if run != highspy.HighsStatus.kError:
        if status == ms.kInfeasible:
            return Search(SearchStatus.NONE)
        sol = h.getSolution()
        if sol.value_valid and status in (ms.kOptimal, ms.kTimeLimit, ms.kSolutionLimit):
            return Search(SearchStatus.FOUND, np.asarray(sol.col_value[:n_in], dtype=np.float64))
        if status == ms.kTimeLimit:
            return Search(SearchStatus.TIMEOUT, detail=outcome)
    return Search(SearchStatus.ERROR, detail=outcome)


@register_solver("milp")
class MilpSolver(ExactSolverBase):
    """Complete decisions by mixed-integer programming (cvxpy; HiGHS, or SCIP for l2 balls)."""

    name = "milp"

    def supports_region(self, inp: InputSet) -> None:
        if importlib.util.find_spec("cvxpy") is None:  # imported when first needed (seconds)
            _cvxpy()
        if inp.l2_eps is not None:
            try:
                import pyscipopt  # noqa: F401
            except ImportError:
                raise ExtraNotInstalledError(
                    "an l2 ball needs SCIP for the MILP solver (a second-order cone with "
                    "binaries): pip install pyscipopt (or 'verispec[solvers]'), or use --solver smt"
                ) from None

    def search(self, query: Query, deadline: float) -> Search:
        problem_range = out_of_range(query)
        if problem_range is not None:
            return Search(SearchStatus.ERROR, detail=problem_range)
        if query.inp.l2_eps is None and importlib.util.find_spec("highspy") is not None:
            return search_highs(query, deadline)
        problem, x = encode(query)
        return solve_cvxpy(problem, x, query.inp.l2_eps is not None, deadline)


def solve_cvxpy(problem: Any, x: Any, l2: bool, deadline: float) -> Search:
    """Solve a cvxpy feasibility problem with SCIP (``l2``: a second-order cone with binaries)
    or HiGHS, within the time left before ``deadline``, at the ``TIGHT`` tolerances; the
    outcome for the input variable ``x`` (``cvxpy_search`` / ``cvxpy_failure``)."""
    cp = _cvxpy()
    left = deadline - time.perf_counter()
    if left <= 0:
        return Search(SearchStatus.TIMEOUT, detail="time limit before the MILP")
    try:
        if l2:
            problem.solve(
                solver=cp.SCIP,
                scip_params={
                    "limits/time": max(left, 0.01),
                    "numerics/feastol": TIGHT,
                    "display/verblevel": 0,
                },
            )
        else:
            silence_highs_banner()
            problem.solve(
                solver=cp.HIGHS,
                time_limit=max(left, 0.01),
                threads=HIGHS_THREADS,
                mip_feasibility_tolerance=TIGHT,
                primal_feasibility_tolerance=TIGHT,
            )
    except cp.error.SolverError as err:
        return cvxpy_failure(err, deadline)
    except Exception as err:  # cvxpy's result unpacking; pyscipopt raises bare Exception
        return Search(SearchStatus.ERROR, detail=f"cvxpy failed: {type(err).__name__}: {err}")
    return cvxpy_search(problem.status, x.value, deadline)


def cvxpy_failure(err: Exception, deadline: float) -> Search:
    """A cvxpy solver error: a timeout when the deadline is reached (cvxpy reports SCIP's time
    limit without a solution as a solver error), otherwise an error."""
    if deadline_reached(deadline):
        return Search(SearchStatus.TIMEOUT, detail=f"MILP solver stopped: {err}")
    return Search(SearchStatus.ERROR, detail=f"MILP solver failed: {err}")


def cvxpy_search(status: str, value: Any, deadline: float) -> Search:
    """The search outcome of a cvxpy problem's ``status`` and its input's ``value``:
    ``infeasible`` proves there is none, a solution is a candidate, a limit without one is a
    timeout at the deadline; anything else (``infeasible_inaccurate``, ``unbounded``, a limit
    before the deadline...) is an error."""
    cp = _cvxpy()
    if status == cp.INFEASIBLE:
        return Search(SearchStatus.NONE)
    if value is not None and status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE, cp.USER_LIMIT):
        return Search(SearchStatus.FOUND, np.asarray(value, dtype=np.float64))
    if status == cp.USER_LIMIT and deadline_reached(deadline):
        return Search(SearchStatus.TIMEOUT, detail=f"MILP status {status}")
    return Search(SearchStatus.ERROR, detail=f"MILP status {status}")
