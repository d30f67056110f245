"""The z3 back-end: exact rational encoding, and agreement with the MILP on generated small
networks for every region and spec kind (the issue's acceptance test), and z3's ``unknown``
(UNKNOWN with its reason unless it is the time limit)."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from verispec.solvers.base import Query, SearchStatus, SolverConfig
from verispec.solvers.bounds import BoundMethod, InputSet, compute_bounds
from verispec.solvers.lowering import lower
from verispec.solvers.milp import MilpSolver
from verispec.solvers.smt import SmtSolver, _q, _to_float, encode, unknown_search

from tests.solvers.cases import any_goals, ordering_goals, point_goals
from tests.solvers.helpers import assert_confirmed
from tests.solvers.test_base import _hard
from verispec.network import Dense, Network, ReLU
from verispec.properties import Property
from verispec.regions import Ball, Box, Norm, Polytope
from verispec.results import Verdict

z3 = pytest.importorskip("z3")

EXACT = SolverConfig(falsify=False, split=False, timeout=120.0)
DEFAULTS = SolverConfig(timeout=120.0)
DECIDED = (Verdict.CERTIFIED, Verdict.FALSIFIED)


def _region_kind(prop: Property) -> str:
    r = prop.region
    if isinstance(r, Ball):
        return f"{r.norm.value} ball"
    return "polytope" if isinstance(r, Polytope) else "box"


def _agree(net: Network, prop: Property, config: SolverConfig) -> None:
    milp = MilpSolver(config).solve(net, prop)
    smt = SmtSolver(config).solve(net, prop)
    event(f"{_region_kind(prop)}: {milp.verdict.value} / {smt.verdict.value}")
    how = "bounds" if "proved by the bounds" in milp.detail else "falsification"
    event("milp decided by: " + (how if "bounds" in how or "sampling" in milp.detail else "search"))
    # generous timeouts: neither may run out of time on these tiny networks
    assert Verdict.TIMEOUT not in (milp.verdict, smt.verdict), (milp, smt)
    assert {milp.verdict, smt.verdict} != set(DECIDED), (milp, smt)
    # UNKNOWN only where the margin is within tolerance of 0, so never against CERTIFIED
    if Verdict.UNKNOWN in (milp.verdict, smt.verdict):
        assert Verdict.CERTIFIED not in (milp.verdict, smt.verdict), (milp, smt)
    assert_confirmed(net, prop, milp)
    if smt.verdict is not Verdict.CERTIFIED or milp.verdict is not Verdict.CERTIFIED:
        assert_confirmed(net, prop, smt)


@settings(max_examples=30)
@given(point_goals())
def test_milp_and_z3_agree_exactly_on_point_specs(case):
    """Without falsification or splitting, both exact back-ends decide every alternative."""
    net, goal = case
    for prop in goal.alternatives:
        _agree(net, prop, EXACT)


@settings(max_examples=20)
@given(ordering_goals())
def test_milp_and_z3_agree_exactly_on_safe_orderings(case):
    net, goal = case
    for prop in goal.alternatives:
        _agree(net, prop, EXACT)


@settings(max_examples=20)
@given(any_goals)
def test_milp_and_z3_agree_with_falsification_and_splitting(case):
    net, goal = case
    for prop in goal.alternatives:
        _agree(net, prop, DEFAULTS)


@pytest.mark.slow
@settings(max_examples=300)
@given(any_goals, st.sampled_from([EXACT, DEFAULTS]))
def test_milp_and_z3_agree_exhaustive(case, config):
    net, goal = case
    for prop in goal.alternatives:
        _agree(net, prop, config)


# -- the encoding -------------------------------------------------------------------------------


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_floats_enter_as_their_exact_rationals(v):
    q = _q(z3, v)
    assert Fraction(q.numerator_as_long(), q.denominator_as_long()) == Fraction(v)
    assert _to_float(z3, z3.simplify(q)) == v


def test_an_irrational_model_value_is_rounded():
    x = z3.Real("x")
    s = z3.Solver()
    s.add(x * x == 2, x > 0)
    assert s.check() == z3.sat
    assert _to_float(z3, s.model()[x]) == pytest.approx(np.sqrt(2), abs=1e-15)


def _query(net: Network, region, prop_margin: float = 0.0) -> Query:
    pl = lower(net)
    inp = InputSet.of(region)
    return Query(pl, inp, compute_bounds(pl, inp, BoundMethod.LP), (), prop_margin)


def test_only_unstable_relus_get_variables():
    """Neuron 0 is always active, neuron 1 always inactive, neuron 2 unstable on [-1, 1]."""
    W1 = np.array([[0.1, 0.0], [-0.1, 0.0], [1.0, 1.0]])
    b1 = np.array([1.0, -1.0, 0.0])
    net = Network((Dense(W1, b1), ReLU(), Dense(np.ones((2, 3)), np.zeros(2))), (2,))
    solver, x = encode(_query(net, Box.uniform(-1.0, 1.0, (2,))))
    assert [str(v) for v in x] == ["x0", "x1"]
    text = solver.sexpr()
    assert "h0_2" in text and "h0_0" not in text and "h0_1" not in text


def test_l2_ball_is_a_polynomial_constraint():
    """On the l2 ball of radius 1 around 0 no point has x0 + x1 > sqrt(2) (the box would
    allow 2); z3 finds x0 + x1 >= 1.4 but not >= 1.42."""
    net = Network((Dense(np.array([[1.0, 1.0]]), np.zeros(1)),), (2,))
    q = _query(net, Ball(np.zeros(2), 1.0, Norm.L2))
    for target, expected in ((1.4, z3.sat), (1.42, z3.unsat)):
        solver, x = encode(q)
        solver.add(x[0] + x[1] >= target)
        assert solver.check() == expected


def test_polytope_rows_are_encoded():
    net = Network((Dense(np.eye(2), np.zeros(2)),), (2,))
    region = Polytope(np.array([[1.0, 1.0]]), np.array([0.5]), Box.uniform(0.0, 1.0, (2,)))
    solver, x = encode(_query(net, region))
    solver.add(x[0] >= 0.4, x[1] >= 0.2)
    assert solver.check() == z3.unsat


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(DEFAULTS, id="defaults"),
        pytest.param(EXACT, id="exact-only", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize(
    "onnx_name, expected",
    [("test_sat.onnx", Verdict.FALSIFIED), ("test_unsat.onnx", Verdict.CERTIFIED)],
)
def test_vnncomp_test_instances(onnx_name, expected, config):
    from tests.solvers.test_milp import BENCH, _vnncomp

    if not BENCH.is_dir():
        pytest.skip(f"benchmarks not found at {BENCH}")
    net, prop = _vnncomp(onnx_name)
    res = SmtSolver(config).solve(net, prop)
    assert res.verdict is expected, res
    assert_confirmed(net, prop, res)


# -- unknown, errors and time limits (issue 12, bug 5) -------------------------------------------


@pytest.mark.parametrize(
    "reason, past, expected",
    [
        ("timeout", True, SearchStatus.TIMEOUT),
        ("canceled", True, SearchStatus.TIMEOUT),
        ("timeout", False, SearchStatus.ERROR),
        ("(incomplete (theory arithmetic))", True, SearchStatus.ERROR),
        ("(incomplete (theory arithmetic))", False, SearchStatus.ERROR),
        ("max. resource limit exceeded", False, SearchStatus.ERROR),
    ],
)
def test_z3_unknown_reasons_map_to_search_outcomes(reason, past, expected):
    deadline = time.perf_counter() + (-1.0 if past else 60.0)
    found = unknown_search(reason, deadline)
    assert found.status is expected, found
    assert reason in found.detail


def _unknown(reason: str):
    def check(self, *args):
        return z3.unknown

    def reason_unknown(self):
        return reason

    return check, reason_unknown


def test_z3_unknown_with_a_reason_is_unknown_not_timeout(monkeypatch):
    check, reason_unknown = _unknown("smt tactic failed (incomplete (theory nonlinear arithmetic))")
    monkeypatch.setattr(z3.Solver, "check", check)
    monkeypatch.setattr(z3.Solver, "reason_unknown", reason_unknown)
    net, prop = _hard()
    res = SmtSolver(EXACT).solve(net, prop, 60.0)
    assert res.verdict is Verdict.UNKNOWN, res
    assert "solver error" in res.detail
    assert "incomplete (theory nonlinear arithmetic)" in res.detail, res.detail


def test_a_z3_exception_is_unknown_with_its_message(monkeypatch):
    def check(self, *args):
        raise z3.Z3Exception("out of memory")

    monkeypatch.setattr(z3.Solver, "check", check)
    net, prop = _hard()
    res = SmtSolver(EXACT).solve(net, prop, 60.0)
    assert res.verdict is Verdict.UNKNOWN, res
    assert "out of memory" in res.detail


def test_z3_claiming_a_timeout_early_is_unknown(monkeypatch):
    """z3's "timeout" with most of the budget left is not the time limit."""
    check, reason_unknown = _unknown("timeout")
    monkeypatch.setattr(z3.Solver, "check", check)
    monkeypatch.setattr(z3.Solver, "reason_unknown", reason_unknown)
    net, prop = _hard()
    res = SmtSolver(EXACT).solve(net, prop, 60.0)
    assert res.verdict is Verdict.UNKNOWN, res


def test_a_real_z3_time_limit_is_timeout():
    """z3 does not decide ``_hard`` within a minute: a 1 s budget runs into its time limit."""
    net, prop = _hard()
    res = SmtSolver(EXACT).solve(net, prop, 1.0)
    assert res.verdict is Verdict.TIMEOUT, res
    assert "z3" in res.detail
