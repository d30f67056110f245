"""The MILP back-end: sound verdicts on generated small networks (witnesses re-check,
certificates survive dense sampling), its encoding, SCIP for l2 balls, and the VNN-COMP 2021
test instances."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from verispec.solvers.base import Query, SolverConfig
from verispec.solvers.bounds import BoundMethod, InputSet, compute_bounds
from verispec.solvers.lowering import lower
from verispec.solvers.milp import MilpSolver, encode

from tests.solvers.cases import any_goals, point_goals
from tests.solvers.helpers import assert_confirmed, assert_goal_confirmed
from tests.strategies import orderings, small_networks
from verispec.errors import ExtraNotInstalledError
from verispec.network import Dense, Network, ReLU
from verispec.properties import Property, argmax_in
from verispec.regions import Ball, Box, Norm
from verispec.results import Verdict

cp = pytest.importorskip("cvxpy")

EXACT = SolverConfig(falsify=False, split=False, timeout=120.0)
DEFAULTS = SolverConfig(timeout=120.0)
BENCH = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks" / "vnncomp2021"


@settings(max_examples=20)
@given(any_goals, st.sampled_from([EXACT, DEFAULTS]))
def test_goals_are_decided_soundly(case, config):
    """solve_goal: a FALSIFIED witness refutes every alternative in float64, a CERTIFIED goal
    has an alternative that survives 2000 samples and PGD."""
    net, goal = case
    res = MilpSolver(config).solve_goal(net, goal)
    assert res.verdict is not Verdict.TIMEOUT, res
    assert_goal_confirmed(net, goal, res)


@settings(max_examples=15)
@given(small_networks(max_inputs=2), st.data(), st.integers(0, 2**32 - 1))
def test_certified_means_no_violation_on_a_dense_grid(net, data, seed):
    """2-input nets on a box: when a 201 x 201 grid finds a violation (by more than the
    tolerance) the MILP falsifies; when the MILP certifies, the whole grid satisfies."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, 2)
    r = rng.uniform(0.05, 0.5, 2)
    box = Box(c - r, c + r)
    prop = Property(box, data.draw(orderings(net.num_classes)))
    res = MilpSolver(EXACT).solve(net, prop)
    axes = [np.linspace(lo, hi, 201) for lo, hi in zip(box.lo, box.hi, strict=True)]
    grid = np.stack(np.meshgrid(*axes), -1).reshape(-1, 2)
    slack = prop.predicate.slack(net.forward64(grid))
    if res.verdict is Verdict.CERTIFIED:
        assert slack.min() > 0
    elif slack.min() < -1e-6:
        assert res.verdict is Verdict.FALSIFIED, res
    assert_confirmed(net, prop, res)


@pytest.mark.slow
@settings(max_examples=300)
@given(any_goals, st.sampled_from([EXACT, DEFAULTS]))
def test_goals_are_decided_soundly_exhaustive(case, config):
    net, goal = case
    res = MilpSolver(config).solve_goal(net, goal)
    assert res.verdict is not Verdict.TIMEOUT, res
    assert_goal_confirmed(net, goal, res)


@settings(max_examples=10)
@given(point_goals(), st.sampled_from(list(BoundMethod)))
def test_every_bound_method_gives_the_same_verdict(case, method):
    net, goal = case
    prop = goal.alternatives[0]
    ref = MilpSolver(EXACT).solve(net, prop).verdict
    got = MilpSolver(SolverConfig(falsify=False, split=False, bounds=method.value)).solve(net, prop)
    if Verdict.UNKNOWN not in (ref, got.verdict):
        assert got.verdict is ref, got
    assert_confirmed(net, prop, got)


# -- the encoding -------------------------------------------------------------------------------


def _net() -> Network:
    W1 = np.array([[0.1, 0.0], [-0.1, 0.0], [1.0, 1.0], [1.0, -1.0]])
    b1 = np.array([1.0, -1.0, 0.0, 0.0])  # active, inactive, unstable, unstable on [-1, 1]^2
    return Network((Dense(W1, b1), ReLU(), Dense(np.ones((2, 4)), np.zeros(2))), (2,))


def test_stable_relus_get_no_binary():
    pl = lower(_net())
    inp = InputSet.of(Box.uniform(-1.0, 1.0, (2,)))
    bounds = compute_bounds(pl, inp, BoundMethod.LP)
    assert bounds.num_unstable(pl) == 2
    problem, x = encode(Query(pl, inp, bounds, (), 0.0))
    binaries = sum(v.size for v in problem.variables() if v.attributes["boolean"])
    assert binaries == 2
    assert x.size == 2


def test_l2_ball_without_scip_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyscipopt", None)
    net = _net()
    x = np.zeros(2)
    prop = Property(Ball(x, 0.5, Norm.L2), argmax_in([0], 2))
    with pytest.raises(ExtraNotInstalledError, match="SCIP"):
        MilpSolver(EXACT).solve(net, prop)


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
def test_ball_radius_threshold_is_exact(norm):
    """y0 - y1 = x0 - x1 at (0.6, 0.5): robust iff eps < 0.1/sqrt(2) (l2) or 0.05 (l_inf)."""
    net = Network((Dense(np.eye(2), np.zeros(2)),), (2,))
    x = np.array([0.6, 0.5])
    limit = 0.1 / np.sqrt(2) if norm is Norm.L2 else 0.05
    for eps, expected in ((limit * 0.99, Verdict.CERTIFIED), (limit * 1.01, Verdict.FALSIFIED)):
        prop = Property(Ball(x, eps, norm), argmax_in([0], 2))
        res = MilpSolver(EXACT).solve(net, prop)
        assert res.verdict is expected, (eps, res)
        assert_confirmed(net, prop, res)


# -- VNN-COMP 2021 test instances ---------------------------------------------------------------

needs_bench = pytest.mark.skipif(not BENCH.is_dir(), reason=f"benchmarks not found at {BENCH}")


def _vnncomp(onnx_name: str) -> tuple[Network, Property]:
    pytest.importorskip("onnx")
    from verispec.onnx import load_onnx
    from verispec.vnnlib import parse_vnnlib, safe_property

    net = load_onnx(BENCH / "test" / onnx_name)
    spec = parse_vnnlib(BENCH / "test" / "test_prop.vnnlib", 5, 5)
    (box,) = spec.boxes
    return net, safe_property(spec, box)


@needs_bench
@pytest.mark.parametrize("config", [DEFAULTS, EXACT], ids=["defaults", "exact-only"])
@pytest.mark.parametrize(
    "onnx_name, expected",
    [("test_sat.onnx", Verdict.FALSIFIED), ("test_unsat.onnx", Verdict.CERTIFIED)],
)
def test_vnncomp_test_instances(onnx_name, expected, config):
    net, prop = _vnncomp(onnx_name)
    res = MilpSolver(config).solve(net, prop)
    assert res.verdict is expected, res
    if expected is Verdict.FALSIFIED:
        x = res.counterexample
        assert prop.is_counterexample(x, net.forward64(x[None])[0])
