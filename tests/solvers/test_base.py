"""The shared decision procedure: strict margins (a reachable tie is never certified), empty
regions and predicates, timeouts, goals with several alternatives, witness re-checks, solver
errors (UNKNOWN, never TIMEOUT) and the solver registry."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from verispec.solvers.base import (
    DEADLINE_SLACK,
    SOLVERS,
    ExactSolverBase,
    Query,
    Search,
    SearchStatus,
    SolverConfig,
    deadline_reached,
    register_solver,
    solver_class,
)
from verispec.solvers.milp import MilpSolver
from verispec.solvers.smt import SmtSolver

from tests.solvers.helpers import assert_confirmed, assert_goal_confirmed
from verispec.errors import UnsupportedError
from verispec.network import Dense, Network, ReLU
from verispec.properties import Clause, Goal, Predicate, Property, argmax_in
from verispec.regions import Ball, Box, Norm, Polytope
from verispec.results import Verdict
from verispec.specs import Affinity, LocalRobustness

ROOT = Path(__file__).resolve().parents[2]
EXACT = SolverConfig(falsify=False, split=False)  # the back-ends decide on their own
CONFIGS = [
    pytest.param(EXACT, id="exact-only"),
    pytest.param(SolverConfig(falsify=False), id="split"),
    pytest.param(SolverConfig(), id="defaults"),
]
NAMES = ["milp", "smt"]


def _identity(n: int = 2) -> Network:
    return Network((Dense(np.eye(n), np.zeros(n)),), (n,))


def _abs_net() -> Network:
    """y0 = |x0 - x1| (through two ReLUs), y1 = 0."""
    W1 = np.array([[1.0, -1.0], [-1.0, 1.0]])
    W2 = np.array([[1.0, 1.0], [0.0, 0.0]])
    return Network((Dense(W1, np.zeros(2)), ReLU(), Dense(W2, np.zeros(2))), (2,))


def _y0_beats_y1() -> Predicate:
    return Predicate((Clause.orderings([(0, 1)], 2),))


# -- registry and configuration -----------------------------------------------------------------


def test_registry_names_the_built_in_solvers():
    assert solver_class("milp") is MilpSolver
    assert solver_class("smt") is SmtSolver
    assert MilpSolver.name == "milp" and SmtSolver.name == "smt"
    assert isinstance(solver_class("milp")().config, SolverConfig)


def test_unknown_solver_names_the_available_ones():
    with pytest.raises(UnsupportedError, match="unknown solver 'gurobi'") as info:
        solver_class("gurobi")
    assert "milp" in str(info.value) and "smt" in str(info.value)


def test_register_solver_rejects_a_duplicate_and_adds_new_names():
    solver_class("milp")  # make sure the built-ins are registered
    before = dict(SOLVERS)
    with pytest.raises(ValueError, match="registered twice"):
        register_solver("milp")(type("Other", (ExactSolverBase,), {}))
    assert before == SOLVERS
    cls = type("Dummy", (ExactSolverBase,), {"name": "dummy-test"})
    try:
        assert register_solver("dummy-test")(cls) is cls
        assert solver_class("dummy-test") is cls
    finally:
        SOLVERS.pop("dummy-test", None)


def test_solver_config_validates():
    assert SolverConfig().bounds == "lp"
    for kw in (
        {"bounds": "exact"},
        {"timeout": 0.0},
        {"tolerance": 0.0},
        {"falsify_samples": -1},
    ):
        with pytest.raises(ValueError):
            SolverConfig(**kw)


def test_solvers_import_on_their_own():
    """Regression: importing a solvers module first used to fail with a circular import
    (lowering -> verispec -> verispec.api -> solvers.base -> lowering)."""
    code = "import verispec.solvers.lowering; import verispec.solvers.milp, verispec.solvers.smt"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


def test_lowered_network_is_cached_per_network():
    solver = MilpSolver()
    net = _abs_net()
    assert solver.lowered(net) is solver.lowered(net)
    assert solver.lowered(_identity()) is not solver.lowered(net)


# -- strict margins -----------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_a_tie_on_the_boundary_is_not_certified(name, config):
    """y = x at x = (0.75, 0.5), l_inf radius 0.125: the corner (0.625, 0.625) ties exactly
    (all values exact in binary), so y0 > y1 fails there."""
    net = _identity()
    x = np.array([0.75, 0.5])
    (prop,) = LocalRobustness(0.125, Norm.LINF).at(x, net.forward64(x[None])[0]).alternatives
    res = solver_class(name)(config).solve(net, prop)
    assert res.verdict in (Verdict.FALSIFIED, Verdict.UNKNOWN), res
    assert_confirmed(net, prop, res)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_an_interior_tie_through_relus_is_not_certified(name, config):
    """|x0 - x1| > 0 on the box [-1, 1]^2 fails on the diagonal only (a measure-zero set that
    sampling misses): the minimum margin is exactly 0."""
    net = _abs_net()
    prop = Property(Box.uniform(-1.0, 1.0, (2,)), _y0_beats_y1())
    res = solver_class(name)(config).solve(net, prop)
    assert res.verdict in (Verdict.FALSIFIED, Verdict.UNKNOWN), res
    assert_confirmed(net, prop, res)


@pytest.mark.parametrize("name", NAMES)
def test_a_tie_everywhere_is_falsified(name):
    net = Network((Dense(np.array([[1.0, 2.0], [1.0, 2.0]]), np.array([0.5, 0.5])),), (2,))
    prop = Property(Box.uniform(0.0, 1.0, (2,)), _y0_beats_y1())
    res = solver_class(name)(EXACT).solve(net, prop)
    assert res.verdict is Verdict.FALSIFIED
    assert_confirmed(net, prop, res)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_a_small_positive_margin_is_certified(name, config):
    """The same |x0 - x1| net on a box off the diagonal: the margin is >= 1e-3 > tolerance."""
    net = _abs_net()
    prop = Property(Box(np.array([0.501, -1.0]), np.array([1.0, 0.5])), _y0_beats_y1())
    res = solver_class(name)(config).solve(net, prop)
    assert res.verdict is Verdict.CERTIFIED, res
    assert_confirmed(net, prop, res)


# -- empty regions and trivial predicates -------------------------------------------------------


def _relu_net() -> Network:
    rng = np.random.default_rng(7)
    return Network(
        (
            Dense(rng.standard_normal((6, 2)), rng.standard_normal(6) * 0.1),
            ReLU(),
            Dense(rng.standard_normal((3, 6)), rng.standard_normal(3) * 0.1),
        ),
        (2,),
    )


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_an_empty_polytope_holds_vacuously(name, config):
    A = np.array([[1.0, 0.0]])
    region = Polytope(A, np.array([-1.0]), Box.uniform(0.0, 1.0, (2,)))  # x0 <= -1 in [0, 1]^2
    res = solver_class(name)(config).solve(_relu_net(), Property(region, Predicate(())))
    assert res.verdict is Verdict.CERTIFIED, res


def _regions() -> list:
    unit = Box.uniform(0.0, 1.0, (2,))
    c = np.array([0.3, 0.6])
    return [
        pytest.param(unit, id="box"),
        pytest.param(Ball(c, 0.2, Norm.LINF, unit), id="linf"),
        pytest.param(Ball(c, 0.2, Norm.L2), id="l2"),
        pytest.param(Polytope(np.array([[1.0, 1.0]]), np.array([0.5]), unit), id="polytope"),
    ]


@pytest.mark.parametrize("region", _regions())
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_the_empty_conjunction_always_holds(name, config, region):
    prop = Property(region, Predicate((Clause(np.zeros((0, 3)), np.zeros(0)),)))
    res = solver_class(name)(config).solve(_relu_net(), prop)
    assert res.verdict is Verdict.CERTIFIED, res


@pytest.mark.parametrize("region", _regions())
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_the_empty_predicate_never_holds(name, config, region):
    net = _relu_net()
    prop = Property(region, Predicate(()))
    res = solver_class(name)(config).solve(net, prop)
    assert res.verdict is Verdict.FALSIFIED, res
    assert region.contains(res.counterexample)
    assert_confirmed(net, prop, res)


@pytest.mark.parametrize("name", NAMES)
def test_argmax_in_every_class_holds(name):
    """RelaxedTopK with k = m compiles to the empty conjunction."""
    prop = Property(Box.uniform(0.0, 1.0, (2,)), argmax_in([0, 1, 2], 3))
    assert solver_class(name)(EXACT).solve(_relu_net(), prop).verdict is Verdict.CERTIFIED


# -- timeouts -----------------------------------------------------------------------------------


def _hard() -> tuple[Network, Property]:
    """4 inputs, two hidden layers of 16 ReLUs (~29 unstable on the unit box); the property
    holds (MILP proves it in a few seconds; z3 takes far longer)."""
    rng = np.random.default_rng(0)
    sizes = [4, 16, 16, 2]
    layers: list = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(Dense(rng.standard_normal((b, a)) / np.sqrt(a), rng.standard_normal(b) * 0.1))
        if i < 2:
            layers.append(ReLU())
    net = Network(layers, (4,))
    y = net.forward64(np.random.default_rng(0).uniform(0, 1, (5000, 4)))
    shift = -(y[:, 0] - y[:, 1]).min() + 0.05
    pred = Predicate((Clause(np.array([[1.0, -1.0]]), np.array([shift])),))
    return net, Property(Box.uniform(0.0, 1.0, (4,)), pred)


@pytest.mark.parametrize("timeout", [1e-3, 0.3])
@pytest.mark.parametrize("name", NAMES)
def test_a_short_timeout_gives_timeout_or_the_right_answer(name, timeout):
    """A tiny limit always times out; a short one may time out or, on a fast machine, finish:
    then the answer must be the right one (the property holds). Never a wrong verdict. (That
    the limit is honoured is tested on the deadline itself, not on the wall clock.)"""
    net, prop = _hard()
    res = solver_class(name)(EXACT).solve(net, prop, timeout)
    allowed = {Verdict.TIMEOUT} if timeout < 0.01 else {Verdict.TIMEOUT, Verdict.CERTIFIED}
    assert res.verdict in allowed, res
    assert res.counterexample is None


@pytest.mark.parametrize("name", NAMES)
def test_a_tiny_timeout_with_falsification_and_splitting_gives_timeout(name):
    net, prop = _hard()
    res = solver_class(name)(SolverConfig(timeout=1e-3)).solve(net, prop)
    assert res.verdict is Verdict.TIMEOUT, res
    goal = solver_class(name)(SolverConfig(timeout=1e-3)).solve_goal(net, Goal((prop, prop)))
    assert goal.verdict is Verdict.TIMEOUT, goal


# -- goals with several alternatives -------------------------------------------------------------


def _prop(lo: float, hi: float, C, d) -> Property:
    return Property(
        Box(np.array([lo]), np.array([hi])),
        Predicate((Clause(np.array(C, dtype=float), np.array(d, dtype=float)),)),
    )


def _line() -> Network:
    return Network((Dense(np.array([[1.0]]), np.zeros(1)),), (1,))  # y0 = x0


@pytest.mark.parametrize("name", NAMES)
def test_a_goal_without_alternatives_raises(name):
    with pytest.raises(UnsupportedError, match="no alternative"):
        solver_class(name)(EXACT).solve_goal(_line(), Goal(()))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_a_goal_holds_when_any_alternative_holds(name, config):
    fails = _prop(-1, 2, [[1.0]], [0.0])  # y0 > 0 fails for x <= 0
    holds = _prop(-1, 2, [[1.0]], [1.5])  # y0 > -1.5 holds on [-1, 2]
    for goal in (Goal((fails, holds)), Goal((holds, fails))):
        res = solver_class(name)(config).solve_goal(_line(), goal)
        assert res.verdict is Verdict.CERTIFIED, res


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_a_goal_is_falsified_by_one_point_refuting_every_alternative(name, config):
    a = _prop(-1, 2, [[1.0]], [-1.0])  # y0 > 1 fails for x <= 1
    b = _prop(-1, 2, [[1.0]], [-1.5])  # y0 > 1.5 fails for x <= 1.5
    goal = Goal((a, b))
    res = solver_class(name)(config).solve_goal(_line(), goal)
    assert res.verdict in (Verdict.FALSIFIED, Verdict.UNKNOWN), res
    assert_goal_confirmed(_line(), goal, res)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_alternatives_refuted_only_at_different_points_give_unknown(name, config):
    a = _prop(-1, 2, [[1.0]], [0.0])  # y0 > 0: fails only for x <= 0
    b = _prop(-1, 2, [[-1.0]], [1.0])  # y0 < 1: fails only for x >= 1
    res = solver_class(name)(config).solve_goal(_line(), Goal((a, b)))
    assert res.verdict is Verdict.UNKNOWN, res
    assert "different points" in res.detail


@pytest.mark.parametrize("name", NAMES)
def test_overlapping_affinity_groups(name):
    """Class 1 lies in {0, 1} and {1, 2}; near the 0/1 boundary, {0, 1} holds."""
    net = _identity(3)
    x = np.array([0.45, 0.5, 0.0])
    spec = Affinity([[0, 1], [1, 2]], 0.1, Norm.LINF, allow_overlap=True)
    goal = spec.at(x, net.forward64(x[None])[0])
    assert len(goal.alternatives) == 2
    res = solver_class(name)(EXACT).solve_goal(net, goal)
    assert res.verdict is Verdict.CERTIFIED, res
    assert_goal_confirmed(net, goal, res)
    # with a radius reaching class 0's region and class 2's, both groups fail at one corner
    wide = Affinity([[0, 1], [1, 2]], 0.3, Norm.LINF, allow_overlap=True)
    goal = wide.at(np.array([0.45, 0.5, 0.35]), net.forward64(np.array([[0.45, 0.5, 0.35]]))[0])
    res = solver_class(name)(EXACT).solve_goal(net, goal)
    assert res.verdict in (Verdict.FALSIFIED, Verdict.UNKNOWN), res
    assert_goal_confirmed(net, goal, res)


# -- the re-check: a bad witness is never a verdict ---------------------------------------------


class _Scripted(ExactSolverBase):
    """A fake back-end answering from a script; records the margins it was asked for."""

    name = "scripted"

    def __init__(self, answers: list[Search], config: SolverConfig = EXACT) -> None:
        super().__init__(config)
        self.answers = list(answers)
        self.margins: list[float] = []

    def search(self, query: Query, deadline: float) -> Search:
        self.margins.append(query.margin)
        return self.answers.pop(0)


def _found(*x: float) -> Search:
    return Search(SearchStatus.FOUND, np.array(x, dtype=float))


def _box_prop() -> Property:
    # y0 > y1 on the unit box under the identity: fails at (0.1, 0.9), holds at (0.9, 0.1)
    return Property(Box(np.array([0.0, 0.0]), np.array([1.0, 1.0])), _y0_beats_y1())


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(_found(0.9, 0.1), id="not-a-violation"),
        pytest.param(_found(5.0, 0.0), id="outside-the-region"),
        pytest.param(_found(np.nan, 0.5), id="nan"),
        pytest.param(Search(SearchStatus.FOUND, None), id="no-witness"),
    ],
)
def test_a_witness_failing_the_recheck_is_not_a_verdict(bad):
    """y0 > y1 on [0, 1]^2 fails above the diagonal (so the bounds cannot prove it), but the
    back-end's witness is bogus and its second search finds nothing: UNKNOWN, not FALSIFIED."""
    solver = _Scripted([bad, Search(SearchStatus.NONE)])
    res = solver.solve(_identity(), _box_prop())
    assert res.verdict is Verdict.UNKNOWN, res
    assert "re-check" in res.detail
    assert solver.margins == [EXACT.tolerance, -EXACT.tolerance]


def test_a_second_search_with_a_real_witness_falsifies():
    net = _identity()
    prop = _box_prop()
    solver = _Scripted([_found(0.9, 0.1), _found(0.1, 0.9)])
    res = solver.solve(net, prop)
    assert res.verdict is Verdict.FALSIFIED
    np.testing.assert_array_equal(res.counterexample, [0.1, 0.9])
    assert solver.margins == [EXACT.tolerance, -EXACT.tolerance]


def test_a_witness_a_last_digit_outside_the_region_is_pulled_in():
    net = _identity()
    prop = _box_prop()
    res = _Scripted([_found(-1e-12, 1.0 + 1e-12)]).solve(net, prop)
    assert res.verdict is Verdict.FALSIFIED
    assert prop.region.contains(res.counterexample)


def test_no_violation_certifies():
    res = _Scripted([Search(SearchStatus.NONE)]).solve(_identity(), _box_prop())
    assert res.verdict is Verdict.CERTIFIED, res
    assert res.engine == "scripted"


# -- solver errors and time limits --------------------------------------------------------------


class _Late(_Scripted):
    """A scripted back-end that answers only once the deadline is reached (a real time limit)."""

    def search(self, query: Query, deadline: float) -> Search:
        while not deadline_reached(deadline):
            time.sleep(0.01)
        return super().search(query, deadline)


SPLIT = SolverConfig(falsify=False)  # the input box is split, its leaves searched


@pytest.mark.parametrize("config", [EXACT, SPLIT], ids=["exact-only", "split"])
def test_a_solver_error_is_unknown_with_its_reason(config):
    """Regression (issue 12, bug 5): a back-end failure used to read as a timeout."""
    net, prop = _hard()  # holds, and neither the bounds nor the splitting alone prove it
    error = Search(SearchStatus.ERROR, detail="HiGHS run kError, model status 'Not Set'")
    solver = _Scripted([error], config)
    res = solver.solve(net, prop, 60.0)
    assert solver.margins, "the search was never asked"
    assert res.verdict is Verdict.UNKNOWN, res
    assert "solver error" in res.detail and "'Not Set'" in res.detail, res.detail


def test_a_solver_error_after_a_bad_witness_is_unknown_with_its_reason():
    error = Search(SearchStatus.ERROR, detail="z3 unknown: incomplete")
    solver = _Scripted([_found(0.9, 0.1), error])
    res = solver.solve(_identity(), _box_prop(), 60.0)
    assert res.verdict is Verdict.UNKNOWN, res
    assert "z3 unknown: incomplete" in res.detail
    assert solver.margins == [EXACT.tolerance, -EXACT.tolerance]


def test_a_timeout_reported_before_the_deadline_is_unknown():
    """A back-end that claims a time limit with most of the budget left has failed."""
    early = Search(SearchStatus.TIMEOUT, detail="status 7")
    res = _Scripted([early]).solve(_identity(), _box_prop(), 60.0)
    assert res.verdict is Verdict.UNKNOWN, res
    assert "status 7" in res.detail and "before the deadline" in res.detail, res.detail


@pytest.mark.parametrize("config", [EXACT, SPLIT], ids=["exact-only", "split"])
def test_a_timeout_at_the_deadline_is_timeout(config):
    net, prop = _hard()
    res = _Late([Search(SearchStatus.TIMEOUT, detail="limit")], config).solve(net, prop, 0.5)
    assert res.verdict is Verdict.TIMEOUT, res
    assert "limit" in res.detail


def test_a_goal_whose_alternatives_fail_is_unknown_not_timeout():
    errors = [Search(SearchStatus.ERROR, detail=f"failure {i}") for i in range(2)]
    res = _Scripted(errors).solve_goal(_identity(), Goal((_box_prop(), _box_prop())), 60.0)
    assert res.verdict is Verdict.UNKNOWN, res
    assert "failure 0" in res.detail and "failure 1" in res.detail


def test_deadline_reached_allows_only_the_slack():
    now = time.perf_counter()
    assert deadline_reached(now)
    assert deadline_reached(now + DEADLINE_SLACK / 2)
    assert not deadline_reached(now + 10.0)
