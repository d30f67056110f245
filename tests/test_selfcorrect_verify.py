"""Proofs about self-corrected networks: enumeration of the layer's behaviours plus exact
queries on the plain network, against sampling through the real layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from verispec.solvers.base import solver_class

from verispec.network import Dense, Network, ReLU
from verispec.properties import Clause, Predicate
from verispec.regions import Box
from verispec.results import Verdict
from verispec.selfcorrect import SelfCorrecting, verify_corrected, weak_orderings
from verispec.selfcorrect.verify import corrected_failure
from verispec.specs import SafeOrdering

pytest.importorskip("highspy")


def _box(lo, hi) -> Box:
    return Box(np.array(lo, dtype=float), np.array(hi, dtype=float))


def _rule(pairs, n, box, pred=None) -> SafeOrdering:
    return SafeOrdering(box, Predicate((Clause.orderings(pairs, n),)), pred)


def _net(W, b) -> Network:
    """y = W x + b."""
    return Network([Dense(np.array(W, dtype=float), np.array(b, dtype=float))], (2,))


def test_weak_orderings_are_the_fubini_numbers():
    assert [len(weak_orderings(n)) for n in range(1, 6)] == [1, 3, 13, 75, 541]
    w = weak_orderings(3)
    assert len({tuple(r) for r in w.tolist()}) == 13


def test_a_violated_rule_is_falsified_plain_and_proved_after_correction():
    net = _net([[1, 0], [0, 1], [0.5, 0.5]], [0, 0, 0])  # y2 is the mean: never the top
    rule = _rule([(2, 0)], 3, _box([0, 0], [1, 1]))
    plain = solver_class("milp")().solve(net, rule.as_property())
    assert plain.verdict is Verdict.FALSIFIED
    got = verify_corrected(SelfCorrecting(net, [rule]), rule)
    assert got.verdict is Verdict.CERTIFIED and "enumeration" in got.detail, got.detail


def test_contradicting_rules_that_overlap_are_refuted_with_a_witness_in_the_overlap():
    net = _net([[1, 0], [0, 1]], [0, 0])
    first = _rule([(1, 0)], 2, _box([0, 0], [0.6, 1]))
    second = _rule([(0, 1)], 2, _box([0.4, 0], [1, 1]))
    got = verify_corrected(SelfCorrecting(net, [first, second]), first)
    assert got.verdict is Verdict.FALSIFIED, got.detail
    x = got.counterexample.ravel()
    assert 0.4 <= x[0] <= 0.6 and "abstains" in got.detail
    apart = _rule([(0, 1)], 2, _box([0.7, 0], [1, 1]))
    got = verify_corrected(SelfCorrecting(net, [first, apart]), first)
    assert got.verdict is Verdict.CERTIFIED, got.detail


def test_a_gated_rule_broken_by_another_rules_correction_is_found():
    """Rule 2 (no gate) puts class 0 above class 1; rule 1 applies when class 0 is predicted
    and wants class 2 above class 0. Where f ranks 1 > 0 > 2, rule 1 is off, rule 2 moves
    class 0 to the top, and the corrected output predicts 0 without satisfying rule 1."""
    net = _net([[1, 0], [0, 1], [0, 0]], [0, 0, -5])
    box = _box([0, 0], [1, 1])
    gated = _rule([(2, 0)], 3, box, pred=[0])
    other = _rule([(0, 1)], 3, box)
    layer = SelfCorrecting(net, [gated, other])
    got = verify_corrected(layer, gated)
    assert got.verdict is Verdict.FALSIFIED, got.detail
    x = got.counterexample.ravel()
    assert x[1] > x[0] and corrected_failure(layer, gated, x) is not None


@st.composite
def _cases(draw):
    """A random 2-16-n ReLU network on [0, 1]^2 and 1-3 rules over random boxes (often
    overlapping), some gated by a predicted class."""
    n = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    net = Network(
        [
            Dense(rng.normal(size=(16, 2)), rng.normal(size=16) * 0.5),
            ReLU(),
            Dense(rng.normal(size=(n, 16)), rng.normal(size=n) * 0.1),
        ],
        (2,),
    )
    rules = []
    for _ in range(draw(st.integers(1, 3))):
        lo = rng.uniform(0, 0.7, 2)
        hi = lo + rng.uniform(0.05, 0.5, 2)
        a, b = rng.choice(n, 2, replace=False)
        pred = [int(rng.integers(n))] if draw(st.booleans()) else None
        rules.append(_rule([(int(a), int(b))], n, Box(lo, np.minimum(hi, 1)), pred))
    return net, rules


@settings(deadline=None, max_examples=15)
@given(_cases(), st.data())
def test_verdicts_agree_with_sampling_through_the_layer(case, data):
    net, rules = case
    layer = SelfCorrecting(net, rules)
    k = data.draw(st.integers(0, len(rules) - 1))
    rule = rules[k]
    got = verify_corrected(layer, rule, timeout=60)
    rng = np.random.default_rng(0)
    box = rule.precondition
    xs = rng.uniform(box.lo, box.hi, (4000, 2))
    y = torch.from_numpy(net.forward64(xs))
    out = layer.revise(torch.from_numpy(xs), y)
    z = out.logits[:, : layer.num_classes].numpy()
    fails = out.abstained.numpy() | ~rule.as_property().predicate.holds(z)
    if got.verdict is Verdict.CERTIFIED:
        assert not fails.any(), (got.detail, xs[fails][:3])
    if got.verdict is Verdict.FALSIFIED:
        assert corrected_failure(layer, rule, got.counterexample.ravel()) is not None
    if fails.any():
        assert got.verdict is not Verdict.CERTIFIED
