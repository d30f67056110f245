"""The MILP back-end: sound verdicts on generated small networks (witnesses re-check,
certificates survive dense sampling), its encoding, SCIP for l2 balls, the VNN-COMP 2021
test instances, and solver failures (UNKNOWN with the reason, never TIMEOUT) versus real time
limits."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from verispec.solvers.base import Query, SearchStatus, SolverConfig
from verispec.solvers.bounds import HIGHS_THREADS, BoundMethod, InputSet, compute_bounds
from verispec.solvers.lowering import lower
from verispec.solvers.milp import MilpSolver, cvxpy_search, encode, highs_search

from tests.solvers.cases import any_goals, point_goals
from tests.solvers.helpers import assert_confirmed, assert_goal_confirmed
from tests.solvers.test_base import _hard
from tests.strategies import orderings, small_networks
from verispec.errors import ExtraNotInstalledError
from verispec.network import Dense, Network, ReLU
from verispec.properties import Clause, Predicate, Property, argmax_in
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


# -- HiGHS threads, solver errors and time limits (issue 12, bug 5) -----------------------------

ROOT = Path(__file__).resolve().parents[2]

_AFTER_OTHER_HIGHS = """
import sys
import highspy
import numpy as np
from verispec.solvers.base import SolverConfig
from verispec.solvers.milp import MilpSolver
from tests.solvers.test_base import _hard

threads = sys.argv[1]
if threads != "none":  # HiGHS used outside verispec first, starting the global scheduler
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    if threads != "default":
        h.setOptionValue("threads", int(threads))
    h.addVar(0.0, 1.0)
    h.changeColCost(0, -1.0)
    assert h.run() == highspy.HighsStatus.kOk
net, prop = _hard()
res = MilpSolver(SolverConfig(falsify=False, split=False)).solve(net, prop, 120.0)
print(res.verdict.value, "|", res.detail)
"""


@pytest.mark.parametrize("threads", ["none", "default", "2"])
def test_the_milp_runs_after_other_highs_instances(threads):
    """Regression: the LP bounds ran HiGHS with its default threads (starting the process-wide
    scheduler with 2 on a 2-core machine), then the MILP asked for 1: run() failed ("Not Set")
    and the answer read as a timeout. A fresh process each time (the scheduler is global)."""
    done = subprocess.run(
        [sys.executable, "-c", _AFTER_OTHER_HIGHS, threads],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    verdict, _, detail = done.stdout.strip().splitlines()[-1].partition(" | ")
    assert verdict == "certified", detail
    assert "lp bounds" in detail


def test_every_highs_run_asks_the_same_threads(monkeypatch):
    """The LP bounds and the MILP both run HiGHS, each with HIGHS_THREADS."""
    highspy = pytest.importorskip("highspy")
    asked: list[int] = []
    run = highspy.Highs.run

    def recording(self):
        asked.append(self.getOptionValue("threads")[1])
        return run(self)

    monkeypatch.setattr(highspy.Highs, "run", recording)
    net, prop = _hard()
    res = MilpSolver(EXACT).solve(net, prop)
    assert res.verdict is Verdict.CERTIFIED, res
    assert len(asked) > 1
    assert set(asked) == {HIGHS_THREADS}


def test_a_failing_highs_run_is_unknown_and_the_lp_bounds_fall_back(monkeypatch):
    """Every HiGHS run fails (as with the scheduler conflict): the LP bounds keep the sound
    linear bounds (a failed LP bounds nothing), the MILP answer is UNKNOWN with HiGHS's status,
    never TIMEOUT."""
    highspy = pytest.importorskip("highspy")
    monkeypatch.setattr(highspy.Highs, "run", lambda self: highspy.HighsStatus.kError)
    net, prop = _hard()
    pl, inp = lower(net), InputSet.of(prop.region)
    lp, linear = (
        compute_bounds(pl, inp, BoundMethod.LP),
        compute_bounds(pl, inp, BoundMethod.LINEAR),
    )
    for a, b in zip(lp.lo + lp.hi, linear.lo + linear.hi, strict=True):
        np.testing.assert_array_equal(a, b)
    res = MilpSolver(EXACT).solve(net, prop, 60.0)
    assert res.verdict is Verdict.UNKNOWN, res
    assert "solver error" in res.detail and "Not Set" in res.detail, res.detail


class _FakeHighs:
    """The parts of a finished ``highspy.Highs`` that ``highs_search`` reads."""

    def __init__(self, status, solution: bool) -> None:
        self.status = status
        self.solution = solution

    def getModelStatus(self):
        return self.status

    def modelStatusToString(self, status) -> str:
        return status.name

    def getSolution(self):
        return type("Sol", (), {"value_valid": self.solution, "col_value": [0.25, 0.5, 1.0]})


def _highs_statuses() -> list:
    highspy = pytest.importorskip("highspy")
    ms, run = highspy.HighsModelStatus, highspy.HighsStatus
    error, none, timeout, found = (
        SearchStatus.ERROR,
        SearchStatus.NONE,
        SearchStatus.TIMEOUT,
        SearchStatus.FOUND,
    )
    return [
        (run.kError, ms.kNotset, False, error),
        (run.kError, ms.kInfeasible, False, error),
        (run.kError, ms.kOptimal, True, error),
        (run.kOk, ms.kSolveError, False, error),
        (run.kOk, ms.kModelError, False, error),
        (run.kWarning, ms.kUnboundedOrInfeasible, False, error),
        (run.kWarning, ms.kInterrupt, False, error),
        (run.kWarning, ms.kMemoryLimit, False, error),
        (run.kWarning, ms.kIterationLimit, False, error),
        (run.kWarning, ms.kUnknown, False, error),
        (run.kOk, ms.kOptimal, False, error),
        (run.kOk, ms.kInfeasible, False, none),
        (run.kWarning, ms.kTimeLimit, False, timeout),
        (run.kWarning, ms.kTimeLimit, True, found),
        (run.kOk, ms.kOptimal, True, found),
    ]


@pytest.mark.parametrize(
    "run, status, solution, expected",
    [pytest.param(*c, id=f"{c[0].name}-{c[1].name}-{c[2]}") for c in _highs_statuses()],
)
def test_highs_statuses_map_to_search_outcomes(run, status, solution, expected):
    found = highs_search(_FakeHighs(status, solution), run, 2)
    assert found.status is expected, found
    if expected in (SearchStatus.ERROR, SearchStatus.TIMEOUT):
        assert status.name in found.detail and run.name in found.detail
    if expected is SearchStatus.FOUND:
        np.testing.assert_array_equal(found.witness, [0.25, 0.5])


@pytest.mark.parametrize(
    "status, value, past, expected",
    [
        ("infeasible", None, False, SearchStatus.NONE),
        ("infeasible_inaccurate", None, False, SearchStatus.ERROR),
        ("infeasible_inaccurate", None, True, SearchStatus.ERROR),
        ("unbounded", None, False, SearchStatus.ERROR),
        ("solver_error", None, True, SearchStatus.ERROR),
        ("user_limit", None, False, SearchStatus.ERROR),
        ("user_limit", None, True, SearchStatus.TIMEOUT),
        ("optimal", None, False, SearchStatus.ERROR),
        ("optimal", np.array([0.5]), False, SearchStatus.FOUND),
        ("optimal_inaccurate", np.array([0.5]), True, SearchStatus.FOUND),
    ],
)
def test_cvxpy_statuses_map_to_search_outcomes(status, value, past, expected):
    deadline = time.perf_counter() + (-1.0 if past else 60.0)
    found = cvxpy_search(status, value, deadline)
    assert found.status is expected, found
    if expected is SearchStatus.ERROR:
        assert status in found.detail


def _l2_prop() -> tuple[Network, Property]:
    """``_hard`` on the l2 ball around the unit box's centre through its corners (the bounds
    alone do not prove it)."""
    net, prop = _hard()
    ball = Ball(np.full(4, 0.5), 1.0, Norm.L2, Box.uniform(0.0, 1.0, (4,)))
    return net, Property(ball, prop.predicate)


@pytest.mark.parametrize("past", [False, True])
def test_a_scip_failure_is_unknown_unless_at_the_deadline(monkeypatch, past):
    """cvxpy raises SolverError both for SCIP's errors and for its time limit without a
    solution: UNKNOWN with the reason before the deadline, TIMEOUT once it is reached."""
    pytest.importorskip("pyscipopt")

    def fail(self, *args, **kwargs):
        if past:
            time.sleep(0.2)
        raise cp.error.SolverError("Solver 'SCIP' failed: numerical trouble")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    net, prop = _l2_prop()
    res = MilpSolver(EXACT).solve(net, prop, 0.2 if past else 60.0)
    if past:
        assert res.verdict is Verdict.TIMEOUT, res
    else:
        assert res.verdict is Verdict.UNKNOWN, res
        assert "numerical trouble" in res.detail


def _harder() -> tuple[Network, Property]:
    """8 inputs, two hidden layers of 32 ReLUs (~64 unstable on the unit box); the property
    holds on samples, and HiGHS does not decide it within a minute."""
    rng = np.random.default_rng(0)
    sizes = [8, 32, 32, 2]
    layers: list = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(Dense(rng.standard_normal((b, a)) / np.sqrt(a), rng.standard_normal(b) * 0.1))
        if i < 2:
            layers.append(ReLU())
    net = Network(layers, (8,))
    y = net.forward64(np.random.default_rng(0).uniform(0, 1, (20000, 8)))
    shift = -(y[:, 0] - y[:, 1]).min() + 0.05
    pred = Predicate((Clause(np.array([[1.0, -1.0]]), np.array([shift])),))
    return net, Property(Box.uniform(0.0, 1.0, (8,)), pred)


def test_a_real_highs_time_limit_is_timeout():
    """Linear bounds (fast), then the MILP runs into HiGHS's own time limit."""
    net, prop = _harder()
    config = SolverConfig(falsify=False, split=False, bounds="linear")
    res = MilpSolver(config).solve(net, prop, 1.0)
    assert res.verdict is Verdict.TIMEOUT, res
    assert "time limit" in res.detail.lower(), res.detail


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
def test_values_beyond_the_solvers_range_are_unknown_and_name_smt(norm):
    """Five 1e8 layers give logits near 1e40: SCIP refuses such input (it raised a bare
    Exception), HiGHS reads it as infinite. The MILP answers UNKNOWN and says to use smt; the
    exact smt solver decides the same property (the ball crosses the tie: it is false)."""
    from verispec.solvers.smt import SmtSolver

    layer = Dense(np.eye(2) * 1e8, np.zeros(2))
    net = Network((layer,) * 5, (2,))
    prop = Property(Ball(np.array([0.5, 0.6]), 0.2, norm), argmax_in([1], 2))
    res = MilpSolver(EXACT).solve(net, prop)
    assert res.verdict is Verdict.UNKNOWN, res
    assert "--solver smt" in res.detail and "1e+40" in res.detail
    assert SmtSolver(EXACT).solve(net, prop).verdict is Verdict.FALSIFIED
