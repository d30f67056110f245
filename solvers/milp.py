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
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np

from solvers.base import ExactSolverBase, Query, Search, SearchStatus, register_solver
from solvers.bounds import InputSet
from verispec.errors import ExtraNotInstalledError

TIGHT = 1e-9
"""Feasibility / integrality tolerance asked of the MILP solvers."""


def _cvxpy() -> Any:
    try:
        import cvxpy
    except ImportError:  # pragma: no cover - depends on the installation
        raise ExtraNotInstalledError(
            "the MILP solver needs cvxpy and highspy: pip install 'verispec[solvers]'"
        ) from None
    return cvxpy


def encode(query: Query) -> tuple[Any, Any]:
    """The cvxpy problem of ``query`` and its input variable."""
    cp = _cvxpy()
    net, inp, bounds = query.net, query.inp, query.bounds
    x = cp.Variable(inp.size)
    cons = [x >= inp.lo, x <= inp.hi]
    if inp.l2_eps is not None and inp.center is not None:
        cons.append(cp.norm(x - inp.center, 2) <= inp.l2_eps)
    if inp.A is not None and inp.b is not None:
        cons.append(inp.A @ x <= inp.b)
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
    y = net.weights[-1] @ h + net.biases[-1]
    for atoms in query.violation:
        vals = atoms.C @ y + atoms.d
        if atoms.C.shape[0] == 1:
            cons.append(vals <= query.margin)
            continue
        s = cp.Variable(atoms.C.shape[0], boolean=True)
        slack = np.maximum(atoms.upper - query.margin, 0.0)
        cons += [cp.sum(s) == 1, vals <= query.margin + cp.multiply(slack, 1 - s)]
    return cp.Problem(cp.Minimize(0), cons), x


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
        cp = _cvxpy()
        problem, x = encode(query)
        left = deadline - time.perf_counter()
        if left <= 0:
            return Search(SearchStatus.TIMEOUT, detail="time limit before the MILP")
        try:
            if query.inp.l2_eps is not None:
                problem.solve(
                    solver=cp.SCIP,
                    scip_params={
                        "limits/time": max(left, 0.01),
                        "numerics/feastol": TIGHT,
                        "display/verblevel": 0,
                    },
                )
            else:
                problem.solve(
                    solver=cp.HIGHS,
                    time_limit=max(left, 0.01),
                    mip_feasibility_tolerance=TIGHT,
                    primal_feasibility_tolerance=TIGHT,
                )
        except cp.error.SolverError as err:
            return Search(SearchStatus.TIMEOUT, detail=f"MILP solver failed: {err}")
        if problem.status == cp.INFEASIBLE:
            return Search(SearchStatus.NONE)
        if x.value is not None and problem.status in (
            cp.OPTIMAL,
            cp.OPTIMAL_INACCURATE,
            cp.USER_LIMIT,
        ):
            return Search(SearchStatus.FOUND, np.asarray(x.value, dtype=np.float64))
        return Search(SearchStatus.TIMEOUT, detail=f"MILP status {problem.status}")
