import numpy as np
import pytest

from verispec.errors import SpecError
from verispec.properties import Clause, Predicate
from verispec.regions import Ball, Box, Norm, Polytope
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering, top_classes


@pytest.mark.parametrize("eps", [0.0, -1.0, float("inf"), float("nan")])
def test_eps_must_be_positive_and_finite(eps):
    with pytest.raises(SpecError, match="eps"):
        LocalRobustness(eps, Norm.L2)


def test_k_at_least_one_and_in_range():
    with pytest.raises(SpecError, match="k must be >= 1"):
        RelaxedTopK(0, 0.1, Norm.L2)
    with pytest.raises(SpecError, match="exceeds"):
        RelaxedTopK(4, 0.1, Norm.L2).validate_for(3)


def test_affinity_groups_disjoint_unless_allowed():
    with pytest.raises(SpecError, match="overlaps"):
        Affinity([[0, 1], [1, 2]], 0.1, Norm.L2)
    spec = Affinity([[0, 1], [1, 2]], 0.1, Norm.L2, allow_overlap=True)
    goal = spec.at(np.zeros(2), np.array([0.0, 1.0, 0.5]))
    assert len(goal.alternatives) == 2  # class 1 lies in both groups
    with pytest.raises(SpecError, match="empty"):
        Affinity([[0], []], 0.1, Norm.L2)
    with pytest.raises(SpecError, match="names class 5"):
        Affinity([[0, 5]], 0.1, Norm.L2).validate_for(3)


def test_local_robustness_compiles_to_strict_argmax():
    goal = LocalRobustness(0.5, Norm.LINF).at(np.zeros(2), np.array([0.1, 2.0, -1.0]))
    (prop,) = goal.alternatives
    assert isinstance(prop.region, Ball) and prop.region.norm is Norm.LINF
    assert prop.predicate.holds(np.array([[0.0, 1.0, 0.0]]))[0]
    assert not prop.predicate.holds(np.array([[1.0, 1.0, 0.0]]))[0]  # a tie is a violation
    assert not prop.predicate.holds(np.array([[2.0, 1.0, 0.0]]))[0]


def test_relaxed_top_k_allows_any_top_k_class():
    goal = RelaxedTopK(2, 0.1, Norm.L2).at(np.zeros(1), np.array([3.0, 2.0, 1.0, 0.0]))
    pred = goal.alternatives[0].predicate
    assert pred.holds(np.array([[0.0, 5.0, 1.0, 1.0]]))[0]
    assert not pred.holds(np.array([[0.0, 1.0, 5.0, 1.0]]))[0]
    assert top_classes(np.array([1.0, 3.0, 3.0]), 2) == [1, 2]


def test_safe_ordering_with_predicted_in_is_conditional():
    post = Predicate((Clause.orderings([(2, 1)], 3),))
    spec = SafeOrdering(Box(np.zeros(2), np.ones(2)), post, predicted_in=[0])
    pred = spec.as_property().predicate
    assert pred.holds(np.array([[3.0, 0.0, 1.0]]))[0]  # predicted 0 and post holds
    assert pred.holds(np.array([[0.0, 2.0, 1.0]]))[0]  # predicted 1: outside the condition
    assert not pred.holds(np.array([[3.0, 1.0, 0.0]]))[0]  # predicted 0, post fails
    assert not pred.holds(np.array([[1.0, 1.0, 0.0]]))[0]  # a 0/1 tie counts as predicted 0


def test_region_membership_and_validation():
    ball = Ball(np.zeros(3), 1.0, Norm.L2, Box.uniform(-0.5, 0.5, (3,)))
    assert ball.contains(np.array([0.5, 0.5, 0.0]))
    assert not ball.contains(np.array([0.6, 0.0, 0.0]))
    with pytest.raises(SpecError, match="lo > hi"):
        Box(np.ones(2), np.zeros(2))
    with pytest.raises(SpecError, match="NaN"):
        Box(np.array([np.nan]), np.array([1.0]))
    poly = Polytope(np.array([[1.0, 1.0]]), np.array([1.0]))
    assert poly.contains(np.array([0.5, 0.5])) and not poly.contains(np.array([1.0, 0.5]))
