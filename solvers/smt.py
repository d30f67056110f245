"""An SMT encoding in z3 over the reals: exact arithmetic, independent of the MILP's numerics.

Every float64 weight, bias and bound enters as the exact rational it denotes. ReLUs whose sign
the bounds fix are replaced by their linear piece (or 0); an unstable one is
``h >= 0, h >= z, (h = 0 or h = z)`` (much faster in z3 than an if-then-else term). An l2 ball
is the polynomial constraint sum (x_i - c_i)^2 <= eps^2 (nonlinear real arithmetic). The model
z3 returns is exact; it is rounded to float64 and re-checked by the shared procedure.

``unknown`` is a timeout only when z3 gives the time limit as its reason ("timeout", or
"canceled" at the deadline); any other reason (incomplete nonlinear arithmetic, a resource
limit, an exception) is ``SearchStatus.ERROR`` with z3's ``reason_unknown()`` in the detail.
"""

from __future__ import annotations

import time
from fractions import Fraction
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
from verispec.solvers.bounds import InputSet

from verispec.errors import ExtraNotInstalledError


def _z3() -> Any:
    try:
        import z3
    except ImportError:  # pragma: no cover - depends on the installation
        raise ExtraNotInstalledError(
            "the SMT solver needs z3: pip install z3-solver (or 'verispec[solvers]')"
        ) from None
    return z3


def _q(z3: Any, v: float) -> Any:
    """The exact rational value of a float64."""
    f = Fraction(float(v))
    return z3.Q(f.numerator, f.denominator)


def _affine(z3: Any, W: np.ndarray, b: np.ndarray, h: list[Any]) -> list[Any]:
    out = []
    for row, bias in zip(W, b, strict=True):
        terms = [_q(z3, w) * h[j] for j, w in enumerate(row) if w != 0 and not _is_zero(h[j])]
        out.append(z3.Sum(*terms, _q(z3, bias)) if terms else _q(z3, bias))
    return out


def _is_zero(term: Any) -> bool:
    return isinstance(term, int) and term == 0


def encode(query: Query) -> tuple[Any, list[Any]]:
    """A z3 solver holding the constraints of ``query`` and the input variables."""
    z3 = _z3()
    net, inp, bounds = query.net, query.inp, query.bounds
    solver = z3.Solver()
    x = [z3.Real(f"x{i}") for i in range(inp.size)]
    for xi, lo, hi in zip(x, inp.lo, inp.hi, strict=True):
        solver.add(xi >= _q(z3, lo), xi <= _q(z3, hi))
    if inp.l2_eps is not None and inp.center is not None:
        dist = z3.Sum(
            *[(xi - _q(z3, c)) * (xi - _q(z3, c)) for xi, c in zip(x, inp.center, strict=True)]
        )
        solver.add(dist <= _q(z3, inp.l2_eps) * _q(z3, inp.l2_eps))
    if inp.A is not None and inp.b is not None:
        for row, bi in zip(
            _affine(z3, inp.A, np.zeros(inp.A.shape[0]), list(x)), inp.b, strict=True
        ):
            solver.add(row <= _q(z3, bi))
    h: list[Any] = list(x)
    for k in range(net.depth - 1):
        z = _affine(z3, net.weights[k], net.biases[k], h)
        lo, hi = bounds.lo[k], bounds.hi[k]
        relu = net.relu[k]
        new: list[Any] = []
        for i, zi in enumerate(z):
            if not relu[i] or lo[i] >= 0:
                new.append(zi)
            elif hi[i] <= 0:
                new.append(0)
            else:
                hv = z3.Real(f"h{k}_{i}")
                solver.add(hv >= 0, hv >= zi, z3.Or(hv == 0, hv == zi), hv <= _q(z3, hi[i]))
                new.append(hv)
        h = new
    y = _affine(z3, net.weights[-1], net.biases[-1], h)
    for atoms in query.violation:
        vals = _affine(z3, atoms.C, atoms.d, y)
        solver.add(z3.Or(*[v <= _q(z3, query.margin) for v in vals]))
    return solver, x


def _to_float(z3: Any, value: Any) -> float:
    if z3.is_rational_value(value):
        return float(Fraction(value.numerator_as_long(), value.denominator_as_long()))
    if z3.is_algebraic_value(value):  # an irrational point on an l2 sphere
        return float(Fraction(value.approx(20).as_fraction()))
    return float(value.as_fraction())


@register_solver("smt")
class SmtSolver(ExactSolverBase):
    """Complete decisions by z3 in exact real arithmetic (slower: a second opinion)."""

    name = "smt"

    def supports_region(self, inp: InputSet) -> None:
        _z3()

    def search(self, query: Query, deadline: float) -> Search:
        z3 = _z3()
        solver, x = encode(query)
        left = deadline - time.perf_counter()
        if left <= 0:
            return Search(SearchStatus.TIMEOUT, detail="time limit before z3")
        solver.set("timeout", max(1, int(left * 1000)))
        try:
            status = solver.check()
        except z3.Z3Exception as err:
            return Search(SearchStatus.ERROR, detail=f"z3 failed: {err}")
        if status == z3.unsat:
            return Search(SearchStatus.NONE)
        if status == z3.sat:
            model = solver.model()
            values = [model.eval(xi, model_completion=True) for xi in x]
            return Search(SearchStatus.FOUND, np.array([_to_float(z3, v) for v in values]))
        return unknown_search(solver.reason_unknown(), deadline)


TIME_REASONS = frozenset({"timeout", "canceled"})
"""``reason_unknown()`` values z3 gives when it stops at its time limit."""


def unknown_search(reason: str, deadline: float) -> Search:
    """The search outcome of z3 answering ``unknown`` for ``reason``: TIMEOUT when it stopped
    for time and the deadline is reached, otherwise ERROR."""
    if reason in TIME_REASONS and deadline_reached(deadline):
        return Search(SearchStatus.TIMEOUT, detail=f"z3: {reason}")
    return Search(SearchStatus.ERROR, detail=f"z3 unknown: {reason}")
