"""The exact solvers' branch and bound over input boxes (verispec/solvers/base.py): a
disjunction of one-atom clauses is proved on a box where no single atom is, the verdicts agree
with the search without splitting on generated disjunctions, and a leaf left undecided (a
near-tie) does not stop the search for a witness elsewhere."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from verispec.solvers.base import SolverConfig
from verispec.solvers.milp import MilpSolver

from tests.solvers.helpers import assert_confirmed
from tests.strategies import disjunction_properties
from verispec.network import Dense, Network, ReLU
from verispec.properties import Clause, Predicate, Property
from verispec.regions import Box
from verispec.results import Verdict

UNIT = Box(np.full(1, -1.0), np.full(1, 1.0))


def _line_net(d1: float, d2: float) -> Network:
    """y = (0, x + d1, -x + d2) on one input."""
    W = np.array([[0.0], [1.0], [-1.0]])
    return Network((Dense(W, np.array([0.0, d1, d2])),), (1,))


def _either_beats_y0() -> Predicate:
    """y1 > y0 or y2 > y0: two one-atom clauses."""
    return Predicate(tuple(Clause.orderings([(j, 0)], 3) for j in (1, 2)))


def _live(net: Network, prop: Property) -> bool:
    solver = MilpSolver()
    lo, hi = UNIT.lo[None], UNIT.hi[None]
    live, _, _, _ = solver._bound_boxes(solver.lowered(net), prop, lo, hi)
    return bool(live[0])


def test_a_disjunction_is_proved_where_no_single_atom_is():
    """max(x + 0.1, -x + 0.1) > 0 on [-1, 1], though each atom is negative somewhere: the
    half-sum of the atoms is 0.1 everywhere."""
    prop = Property(UNIT, _either_beats_y0())
    assert not _live(_line_net(0.1, 0.1), prop)
    single = Property(UNIT, Predicate(_either_beats_y0().clauses[:1]))
    assert _live(_line_net(0.1, 0.1), single)


def test_a_false_disjunction_stays_open_and_is_falsified():
    """max(x + 0.1, -x - 0.2) < 0 at x = -0.15: the box is not proved, the solver finds it."""
    net, prop = _line_net(0.1, -0.2), Property(UNIT, _either_beats_y0())
    assert _live(net, prop)
    res = MilpSolver(SolverConfig(falsify=False)).solve(net, prop)
    assert res.verdict is Verdict.FALSIFIED, res
    assert_confirmed(net, prop, res)


@settings(deadline=None)
@given(disjunction_properties())
def test_branching_on_disjunctions_agrees_with_the_search_without_splitting(problem):
    net, prop = problem
    split = MilpSolver(SolverConfig(falsify=False, split_leaf_unstable=2)).solve(net, prop)
    whole = MilpSolver(SolverConfig(falsify=False, split=False)).solve(net, prop)
    assert_confirmed(net, prop, split)
    decided = {Verdict.CERTIFIED, Verdict.FALSIFIED}
    if split.verdict in decided and whole.verdict in decided:
        assert split.verdict is whole.verdict, (split, whole)


class _FirstLeafUndecided(MilpSolver):
    """The MILP solver with its boxes' bounds and candidate points ignored (every box goes to
    the leaves), whose first leaf reports a near-tie (UNKNOWN)."""

    def __init__(self) -> None:
        super().__init__(SolverConfig(falsify=False, split_leaf_unstable=0))
        self.calls = 0

    def _bound_boxes(self, *args, **kwargs):
        live, score, points, unstable = super()._bound_boxes(*args, **kwargs)
        return np.ones_like(live), score, points, unstable

    def _try_points(self, *args, **kwargs):
        return None

    def _decide(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            return Verdict.UNKNOWN, None, "a near-tie"
        return super()._decide(*args, **kwargs)


def _below(level: float) -> tuple[Network, Property]:
    """y0 = |x| (two ReLUs), y1 = 0, and y0 < level on [-1, 1]: the halves are leaves."""
    W1, W2 = np.array([[1.0], [-1.0]]), np.array([[1.0, 1.0], [0.0, 0.0]])
    net = Network((Dense(W1, np.zeros(2)), ReLU(), Dense(W2, np.zeros(2))), (1,))
    return net, Property(UNIT, Predicate((Clause(np.array([[-1.0, 0.0]]), [level]),)))


def test_an_undecided_leaf_does_not_stop_the_search_for_a_witness():
    net, prop = _below(0.5)
    solver = _FirstLeafUndecided()
    res = solver.solve(net, prop)
    assert res.verdict is Verdict.FALSIFIED and solver.calls >= 2, res
    assert_confirmed(net, prop, res)


def test_an_undecided_leaf_is_never_certified():
    net, prop = _below(2.0)
    solver = _FirstLeafUndecided()
    res = solver.solve(net, prop)
    assert res.verdict is Verdict.UNKNOWN and solver.calls >= 2, res
    assert "a near-tie" in res.detail, res.detail
