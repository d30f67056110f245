"""The engine base: the final check() template, the typed registries, batches as arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from verispec.engines.base import (
    EMPTY_GOAL_DETAIL,
    ENGINES,
    EngineBase,
    engine_class,
    register_engine,
)
from verispec.errors import SpecError, UnsupportedError
from verispec.network import Network
from verispec.properties import Clause, Predicate
from verispec.regions import Box, FloatArray, Norm, Polytope
from verispec.registry import Registry
from verispec.results import BatchResult, CheckResult, GuaranteeKind, Report, Verdict
from verispec.specs import Affinity, LocalRobustness, PointSpec, SafeOrdering


def _net() -> Network:
    """f(x) = (x0, x1, 0): class 2 wins where both coordinates are negative."""
    lin = nn.Linear(2, 3).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        lin.bias.zero_()
    return Network.from_torch(lin, (2,))


class PointsOnly(EngineBase):
    """Implements only the point decision: UNKNOWN everywhere, recording what it was given."""

    name = "points-only"

    def __init__(self, config: object = None) -> None:
        self.seen: list[FloatArray] = []

    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        self.seen.append(xs.copy())
        return BatchResult.build(self.name, [Verdict.UNKNOWN] * len(xs), radii=0.5)


class WithGlobal(PointsOnly):
    """Also decides SafeOrdering (certifies it), counting the calls."""

    name = "with-global"
    needs_bounded_precondition = True

    def __init__(self, config: object = None) -> None:
        super().__init__(config)
        self.global_calls = 0

    def _decide_global(self, network: Network, spec: SafeOrdering) -> CheckResult:
        self.global_calls += 1
        return CheckResult(Verdict.CERTIFIED, "some-other-name", detail="toy")


def _safe_ordering(region: Box | Polytope) -> SafeOrdering:
    return SafeOrdering(region, Predicate((Clause.orderings([(0, 2)], 3),)))


# -- the final check: validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("xs", "message"),
    [
        (np.zeros((3, 4)), r"points have shape \(3, 4\), the network expects \(n, 2\)"),
        (np.zeros(2), r"points have shape \(2,\)"),
        (np.zeros((1, 1, 2)), r"points have shape \(1, 1, 2\)"),
        (np.array([[0.1, 0.2], [np.nan, 0.0]]), r"NaN or infinity: point 1 \(1 of 2\)"),
        (np.array([[np.inf, 0.0]]), "NaN or infinity: point 0"),
        (np.array([[1 + 2j, 0.0]]), "points must be real numbers"),
        (np.array([["a", "b"]]), "points must be real numbers"),
        (None, "checked at points"),
    ],
)
def test_check_refuses_bad_points_with_a_clear_error(xs, message):
    engine = PointsOnly()
    with pytest.raises(SpecError, match=message):
        engine.check(_net(), LocalRobustness(0.1, Norm.L2), xs)
    assert engine.seen == []  # the decision never ran


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 1, 2]), r"labels have shape \(3,\), want \(2,\)"),
        (np.array([[0, 1]]), r"labels have shape \(1, 2\)"),
        (np.array([0.0, 1.0]), "labels must be integer classes, got dtype float64"),
        (np.array([0, 3]), r"label 3 of point 1 is not a class of the model \(0..2\)"),
        (np.array([-1, 0]), "label -1 of point 0"),
    ],
)
def test_check_refuses_bad_labels(labels, message):
    with pytest.raises(SpecError, match=message):
        PointsOnly().check(_net(), LocalRobustness(0.1, Norm.L2), np.zeros((2, 2)), labels)


def test_points_are_taken_as_float64_and_labels_recorded():
    engine = PointsOnly()
    xs = np.array([[1, 2], [3, 4]], dtype=np.int32)
    batch = engine.check(_net(), LocalRobustness(0.1, Norm.L2), xs, np.array([1, 0], np.int32))
    assert engine.seen[0].dtype == np.float64 and np.array_equal(engine.seen[0], xs)
    assert isinstance(batch, BatchResult) and len(batch) == 2
    assert [r.label for r in batch] == [1, 0]
    assert batch.labels is not None and batch.labels.dtype == np.int64


def test_no_points_give_an_empty_batch_without_a_decision():
    engine = PointsOnly()
    batch = engine.check(_net(), LocalRobustness(0.1, Norm.L2), np.zeros((0, 2)))
    assert len(batch) == 0 and list(batch) == [] and engine.seen == []
    assert batch.engine == "points-only"


def test_spec_that_does_not_fit_the_model_is_refused():
    with pytest.raises(SpecError, match="names class 5"):
        PointsOnly().check(_net(), Affinity([[0, 5]], 0.1, Norm.L2), np.zeros((1, 2)))


# -- empty goals and safe orderings come for free ------------------------------------------------


def test_affinity_point_in_no_group_is_falsified_by_itself():
    engine = PointsOnly()
    xs = np.array([[1.0, 0.0], [-1.0, -2.0], [0.0, 3.0], [-0.5, -0.1]])
    spec = Affinity([[0, 1]], 0.1, Norm.L2)  # class 2 (points 1 and 3) is in no group
    batch = engine.check(_net(), spec, xs, np.array([0, 2, 1, 0]))
    assert [r.verdict for r in batch] == [
        Verdict.UNKNOWN,
        Verdict.FALSIFIED,
        Verdict.UNKNOWN,
        Verdict.FALSIFIED,
    ]
    # the engine decided only the points whose goal is not empty, in order
    assert len(engine.seen) == 1 and np.array_equal(engine.seen[0], xs[[0, 2]])
    for i in (1, 3):
        assert np.array_equal(batch[i].counterexample, xs[i])
        assert batch[i].detail == EMPTY_GOAL_DETAIL and batch[i].radius is None
    assert [r.predicted for r in batch] == [0, 2, 1, 2]  # filled from the float64 pass
    assert [r.label for r in batch] == [0, 2, 1, 0]
    assert batch[0].radius == 0.5


def test_affinity_with_every_point_in_no_group_never_calls_the_engine():
    engine = PointsOnly()
    xs = np.array([[-1.0, -1.0], [-2.0, -0.5]])
    batch = engine.check(_net(), Affinity([[0, 1]], 0.1, Norm.L2), xs)
    assert engine.seen == []
    assert all(r.verdict is Verdict.FALSIFIED for r in batch)


def test_points_outside_the_domain_are_refused():
    domain = Box.uniform(0.0, 1.0, (2,))
    xs = np.array([[0.5, 0.5], [-1.0, 0.5]])
    for spec in (Affinity([[0, 1]], 0.1, Norm.L2), LocalRobustness(0.1, Norm.L2)):
        with pytest.raises(SpecError, match=r"outside the data domain: point 1 \(1 of 2\)"):
            PointsOnly().check(_net(), spec, xs, domain=domain)
    with pytest.raises(SpecError, match="the domain has shape"):
        PointsOnly().check(_net(), spec, xs[:1], domain=Box.uniform(0.0, 1.0, (3,)))
    assert len(PointsOnly().check(_net(), spec, xs[:1], domain=domain)) == 1


def test_safe_ordering_gives_exactly_one_result_and_ignores_the_points():
    engine = WithGlobal()
    spec = _safe_ordering(Box.uniform(0.0, 1.0, (2,)))
    for xs in (np.zeros((0, 2)), np.zeros((5, 7)), None):
        batch = engine.check(_net(), spec, xs, np.array([0]))
        assert len(batch) == 1
        (r,) = batch
        assert r.verdict is Verdict.CERTIFIED and r.engine == "with-global" and r.label is None
    assert engine.global_calls == 3 and engine.seen == []


def test_unbounded_precondition_is_refused_where_the_engine_needs_a_box():
    unbounded = _safe_ordering(Polytope(np.array([[1.0, 0.0]]), np.array([1.0])))
    with pytest.raises(UnsupportedError, match="needs a bounded precondition"):
        WithGlobal().supports(_net(), unbounded)
    with pytest.raises(UnsupportedError, match="needs a bounded precondition"):
        WithGlobal().check(_net(), unbounded)

    class Unbounded(WithGlobal):
        needs_bounded_precondition = False

    assert Unbounded().check(_net(), unbounded)[0].verdict is Verdict.CERTIFIED


def test_an_engine_without_a_global_decision_does_not_support_safe_ordering():
    spec = _safe_ordering(Box.uniform(0.0, 1.0, (2,)))
    with pytest.raises(UnsupportedError, match="points-only engine does not support SafeOrdering"):
        PointsOnly().check(_net(), spec)


def test_spec_kinds_limit_what_an_engine_supports():
    class RobustnessOnly(PointsOnly):
        spec_kinds = (LocalRobustness,)
        unsupported_reason = "toy reason"

    with pytest.raises(UnsupportedError, match="does not support Affinity: toy reason"):
        RobustnessOnly().check(_net(), Affinity([[0, 1]], 0.1, Norm.L2), np.zeros((1, 2)))
    assert len(RobustnessOnly().check(_net(), LocalRobustness(0.1, Norm.L2), np.zeros((1, 2))))


def test_a_decision_with_the_wrong_number_of_results_is_an_error():
    class Short(PointsOnly):
        def _decide_points(self, network, spec, xs, domain):
            return BatchResult.build(self.name, [Verdict.UNKNOWN])

    with pytest.raises(RuntimeError, match="decided 1 points of 3"):
        Short().check(_net(), LocalRobustness(0.1, Norm.L2), np.zeros((3, 2)))


def test_every_built_in_engine_uses_the_final_template():
    for name in ENGINES.names():
        cls = engine_class(name)
        assert issubclass(cls, EngineBase), name
        assert cls.check is EngineBase.check and cls.supports is EngineBase.supports, name
        assert cls.name == name


# -- registries -------------------------------------------------------------------------------


def test_registry_unknown_names_list_the_known_ones() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register("b")(int)
    reg.register("a")(str)
    assert reg.names() == ("a", "b") and list(reg) == ["a", "b"] and len(reg) == 2
    assert reg.lookup("a") is str and reg["b"] is int and "a" in reg and "c" not in reg
    with pytest.raises(UnsupportedError, match=r"unknown widget 'c'; available: a, b"):
        reg.lookup("c")
    with pytest.raises(KeyError):
        reg["c"]


def test_registry_refuses_a_duplicate_however_it_is_added() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("x")
    class X:
        pass

    with pytest.raises(ValueError, match="widget 'x' registered twice"):
        reg.register("x")(int)
    with pytest.raises(ValueError, match="registered twice"):
        reg["x"] = int
    assert reg.lookup("x") is X
    del reg["x"]
    reg["x"] = int
    assert reg.lookup("x") is int


def test_registry_loads_its_built_ins_lazily_once() -> None:
    calls: list[type] = []
    reg: Registry[object] = Registry("widget", loader=lambda: calls.append(reg.register("b")(int)))
    assert calls == []  # building the registry loads nothing
    assert reg.names() == ("b",) and reg.lookup("b") is int and dict(reg) == {"b": int}
    assert len(calls) == 1


def test_engine_registry_is_typed_and_decorator_filled():
    assert engine_class("lipschitz").name == "lipschitz"
    with pytest.raises(
        UnsupportedError, match="unknown engine 'nope'; available: crown, lipschitz"
    ):
        engine_class("nope")
    try:
        assert register_engine("test-toy")(PointsOnly) is PointsOnly
        assert "test-toy" in ENGINES.names() and engine_class("test-toy") is PointsOnly
        with pytest.raises(ValueError, match="registered twice"):
            register_engine("test-toy")(WithGlobal)
    finally:
        del ENGINES["test-toy"]
    assert "test-toy" not in ENGINES


# -- BatchResult --------------------------------------------------------------------------------


def _eager() -> list[CheckResult]:
    return [
        CheckResult(Verdict.CERTIFIED, "e", predicted=1, label=1, radius=0.5, time_s=0.1),
        CheckResult(Verdict.UNKNOWN, "e", predicted=2, label=1, radius=math.inf, detail="d"),
        CheckResult(
            Verdict.FALSIFIED,
            "e",
            predicted=0,
            label=0,
            counterexample=np.arange(4.0).reshape(2, 2),
            warnings=("w1", "w2"),
        ),
        CheckResult(
            Verdict.ABSTAIN,
            "e",
            predicted=-1,
            label=2,
            guarantee=GuaranteeKind.PROBABILISTIC,
            confidence=0.99,
        ),
        CheckResult(Verdict.TIMEOUT, "e", predicted=2, label=2, radius=0.0),
    ]


def test_lazy_results_equal_the_eager_ones():
    eager = _eager()
    batch = BatchResult.from_results(eager)
    assert len(batch) == 5
    assert [r.to_dict() for r in batch] == [r.to_dict() for r in eager]
    assert [r.to_dict() for r in batch.results()] == [r.to_dict() for r in eager]
    assert batch[-1].to_dict() == eager[-1].to_dict()
    assert [r.to_dict() for r in batch[1:4]] == [r.to_dict() for r in eager[1:4]]
    with pytest.raises(IndexError):
        batch[5]
    assert batch.verdict_counts()[Verdict.CERTIFIED] == 1 and batch.probabilistic
    assert not np.isnan(batch.radii[0]) and np.isnan(batch.radii[2])  # NaN is "no radius"


def test_take_and_concat_keep_the_sparse_extras_with_their_points():
    eager = _eager()
    batch = BatchResult.from_results(eager)
    order = [4, 2, 0, 2]
    assert [r.to_dict() for r in batch.take(order)] == [eager[i].to_dict() for i in order]
    joined = BatchResult.concat([batch[:2], batch[2:3], BatchResult.empty("e"), batch[3:]])
    assert [r.to_dict() for r in joined] == [r.to_dict() for r in eager]
    with pytest.raises(ValueError, match="several engines"):
        BatchResult.concat([batch, BatchResult.empty("other")])


def test_batch_result_validates_its_arrays():
    with pytest.raises(ValueError, match="counterexample"):
        BatchResult.build("e", [Verdict.FALSIFIED])
    with pytest.raises(ValueError, match="counterexample"):
        BatchResult.build("e", [Verdict.CERTIFIED], counterexamples={0: np.zeros(2)})
    with pytest.raises(ValueError, match="radii has shape"):
        BatchResult.build("e", [Verdict.CERTIFIED], radii=np.zeros(2))
    with pytest.raises(ValueError, match="outside VERDICTS"):
        BatchResult.build("e", np.array([9]))
    with pytest.raises(ValueError, match="key outside"):
        BatchResult.build("e", [Verdict.UNKNOWN], details={3: "x"})
    batch = BatchResult.build("e", [Verdict.UNKNOWN])
    with pytest.raises(ValueError):
        batch.verdicts[0] = 0  # the arrays are read-only


def test_report_from_a_batch_matches_the_report_from_its_objects():
    eager = _eager()
    batch = BatchResult.from_results(eager)
    lazy = Report("p", "spec", "e", batch, radii=(0.0, 0.2, 1.0), wall_time_s=2.0)
    objects = Report("p", "spec", "e", tuple(eager), radii=(0.0, 0.2, 1.0), wall_time_s=2.0)
    assert isinstance(lazy.results, BatchResult)
    assert lazy.to_dict() == objects.to_dict()
    assert lazy.vra == pytest.approx(1 / 5) and lazy.clean_accuracy == pytest.approx(3 / 5)
    assert lazy.has_labels and lazy.has_radii and lazy.counts["abstain"] == 1
    unlabelled = Report("p", "s", "e", BatchResult.build("e", [Verdict.CERTIFIED]))
    assert not unlabelled.has_labels and not unlabelled.has_radii and unlabelled.vra is None


_VALUES = st.one_of(
    st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, np.nextafter(1.0, 2.0), np.nan, np.inf])
)


@settings(max_examples=200)
@given(
    xs=st.lists(st.tuples(_VALUES, _VALUES), min_size=1, max_size=4),
    uniform=st.booleans(),
)
def test_point_validation_accepts_exactly_the_finite_points_in_the_domain(xs, uniform):
    """The min/max fast path of the validation agrees with the elementwise rule: a point is
    refused iff some coordinate is not finite or leaves [lo, hi] (uniform or per-coordinate)."""
    arr = np.array(xs, dtype=np.float64)
    domain = Box.uniform(0.0, 1.0, (2,)) if uniform else Box(np.array([0.0, 0.25]), np.ones(2))
    for box in (domain, None):
        ok = np.isfinite(arr).all()
        if box is not None:
            ok = ok and bool(((arr >= box.lo) & (arr <= box.hi)).all())
        if ok:
            assert len(PointsOnly().check(_net(), LocalRobustness(0.1, Norm.L2), arr, None, box))
        else:
            with pytest.raises(SpecError, match=r"NaN or infinity|outside the data domain"):
                PointsOnly().check(_net(), LocalRobustness(0.1, Norm.L2), arr, None, box)


def test_a_certificate_at_an_unconfirmed_near_tie_is_withdrawn():
    """Found by the soundness suite on the smt engine: logits near 1e20, float64 puts class 0
    on top, exact arithmetic class 1; the goal names class 0, and the solver, deciding the
    lowered network (composed float64 weights), certified it."""
    from verispec.solvers.base import SolverConfig

    from tests.strategies import LOWERING_REGRESSION as net

    x = np.array([[0.4999999944944531]])
    spec = LocalRobustness(2.769784042531284e-17, Norm.L2)
    result = engine_class("smt")(SolverConfig(timeout=10.0)).check(
        net, spec, x, None, Box.uniform(0.0, 1.0, (1,))
    )
    assert result[0].verdict is Verdict.UNKNOWN and "near-tie" in result[0].detail


def test_a_witness_refuted_only_by_a_cancelling_float64_pass_is_not_reported():
    """Found by the soundness suite with ``cancelling_networks``: layers at 1e15 whose product
    cancels to order 1. float64 puts y_1 above y_0 at x = 0.1157 (a violation of y_0 > y_1),
    exact arithmetic does not (y = [-1.43, -3.83]); the band relative to the outputs did not
    cover the rounding. Small networks now decide every witness exactly."""
    import verispec.network as vn
    from verispec.properties import Clause, Predicate
    from verispec.regions import Polytope
    from verispec.specs import SafeOrdering

    net = vn.Network(
        (
            vn.Dense(
                np.array([[1651423223606960.8], [-7300955658863260.0]]),
                np.array([433985048532450.4, 1164838300587626.8]),
            ),
            vn.Dense(
                np.array([[1.906314631258549, 0.4311945450237482],
                          [1.3261070582457242, 0.2999557996654189]]),
                np.array([-1329583968812979.5, -924910639965664.8]),
            ),
            vn.ReLU(),
            vn.Dense(np.eye(2), np.array([0.004896402519327581, 0.09444624736710015])),
            vn.Normalize(np.array([0.5673795591360873, 0.7954361494439858]),
                         np.array([0.07853881252304407, 0.08598462013271072])),
        ),
        (1,),
    )  # fmt: skip
    box = Box(np.array([-0.36303831]), np.array([1.63696169]))
    spec = SafeOrdering(
        Polytope(np.array([[0.12573022]]), np.array([0.09704551]), box),
        Predicate((Clause(np.array([[1.0, -1.0]]), np.array([0.0])),)),
    )
    x = np.array([0.11570057330735861])
    assert net.forward64(x[None])[0, 0] < net.forward64(x[None])[0, 1]  # float64 says violated
    assert spec.as_property().confirm(net, x) is None
    assert engine_class("lipschitz")().check(net, spec)[0].verdict is not Verdict.FALSIFIED
