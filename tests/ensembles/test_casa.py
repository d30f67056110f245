"""CasA, the cascade attack: hand-built unsound cascades it must break, sound one-member cascades
it must leave alone, and on random cascades every witness re-checked independently here (exact
ball and domain membership, the cascade's own answer at x' alone), determinism, and a dense
sampling of 2-input balls that CasA must match."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verispec.engines.lipschitz import LipschitzEngine
from verispec.ensembles import (
    CasaConfig,
    CasaResult,
    Cascade,
    Member,
    Voting,
    cascade_attack,
)
from verispec.ensembles.casa import NO_MEMBER
from verispec.errors import UnsupportedError
from verispec.ir import Dense, Layer, ReLU
from verispec.network import Network
from verispec.regions import Ball, Box, FloatArray, Norm
from verispec.results import BatchResult
from verispec.specs import LocalRobustness

ENGINE = LipschitzEngine()
FAST = CasaConfig(steps=25, samples=8)
DOMAIN2 = Box.uniform(-1.0, 1.0, (2,))


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These passes are tiny: torch's thread pool only adds contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear(weight: list[list[float]], bias: list[float]) -> Network:
    w = np.array(weight, dtype=np.float64)
    return Network([Dense(w, np.array(bias, dtype=np.float64))], (w.shape[1],))


def _random_net(rng: np.random.Generator, d: int, m: int) -> Network:
    layers: list[Layer] = []
    width = d
    for _ in range(int(rng.integers(0, 2))):
        h = int(rng.integers(2, 6))
        layers += [Dense(rng.standard_normal((h, width)), rng.standard_normal(h) * 0.5), ReLU()]
        width = h
    layers.append(Dense(rng.standard_normal((m, width)), rng.standard_normal(m) * 0.5))
    return Network(layers, (d,))


def _random_cascade(rng: np.random.Generator, d: int, k: int, m: int) -> Cascade:
    return Cascade([Member(_random_net(rng, d, m), ENGINE) for _ in range(k)])


def _assert_witnesses_recheck(
    cascade: Cascade,
    spec: LocalRobustness,
    xs: FloatArray,
    domain: Box | None,
    result: CasaResult,
) -> None:
    """Every witness, independently: in the closed ball and the domain (exact tests), at a
    point the cascade claims, and the cascade's answer at it alone is another class."""
    at_xs = cascade.answer(spec, xs, domain)
    np.testing.assert_array_equal(result.claimed, at_xs.certified)
    np.testing.assert_array_equal(result.predicted, at_xs.predicted)
    for p, w in enumerate(result.witnesses):
        if w is None:
            assert result.member[p] == NO_MEMBER and result.witness_class[p] == NO_MEMBER
            continue
        assert result.claimed[p]
        assert w.shape == xs[p].shape and w.dtype == np.float64
        assert Ball(xs[p], spec.eps, spec.norm).contains(w)
        if domain is not None:
            assert domain.contains(w)
        at_x = cascade.answer(spec, xs[p][None], domain)
        at_w = cascade.answer(spec, w[None], domain)
        assert at_x.certified[0]
        assert at_w.predicted[0] != at_x.predicted[0]
        assert result.witness_class[p] == at_w.predicted[0]
        assert bool(result.member_certified[p]) == bool(at_w.certified[0])
        d = cascade.decisions(spec, w[None], domain)
        if at_w.certified[0]:
            assert result.member[p] == int(np.argmax(d.certified[:, 0]))
        else:
            assert result.member[p] == len(cascade.members) - 1


# -- hand-built cascades ------------------------------------------------------------------------

# member 0: logits (0, x_1), certifies class 1 where x_1 > eps (K_01 = 1);
# member 1: constant logits (1, 0), certifies class 0 everywhere (K = 0).
RISING = _linear([[0.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
CONSTANT = _linear([[0.0, 0.0], [0.0, 0.0]], [1.0, 0.0])


@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("domain", [None, DOMAIN2])
def test_breaks_the_cascade_where_an_earlier_member_starts_to_certify(norm, domain):
    cascade = Cascade([Member(RISING, ENGINE), Member(CONSTANT, ENGINE)])
    spec = LocalRobustness(0.5, norm)
    # x_1 = 0.3: member 0 does not certify, member 1 answers 0; at x_1 > 0.5 member 0 answers 1
    xs = np.array([[0.0, 0.3], [0.2, 0.1]])
    result = cascade_attack(cascade, spec, xs, domain)
    assert result.claimed.all() and (result.predicted == 0).all()
    assert result.broken.all()
    np.testing.assert_array_equal(result.member, [0, 0])
    np.testing.assert_array_equal(result.witness_class, [1, 1])
    assert result.member_certified.all()
    _assert_witnesses_recheck(cascade, spec, xs, domain, result)
    assert all(w is not None and w[1] > 0.5 for w in result.witnesses)


@pytest.mark.parametrize("norm", list(Norm))
def test_breaks_the_cascade_where_the_answering_member_stops_certifying(norm):
    cascade = Cascade([Member(RISING, ENGINE), Member(CONSTANT, ENGINE)])
    spec = LocalRobustness(0.5, norm)
    xs = np.array([[0.0, 0.6]])  # member 0 certifies class 1; below x_1 = 0.5 member 1 answers 0
    result = cascade_attack(cascade, spec, xs, DOMAIN2)
    assert result.claimed[0] and result.predicted[0] == 1
    w = result.witnesses[0]
    assert w is not None and w[1] <= 0.5
    assert result.member[0] == 1 and result.witness_class[0] == 0
    _assert_witnesses_recheck(cascade, spec, xs, DOMAIN2, result)


@pytest.mark.parametrize("norm", list(Norm))
def test_breaks_the_cascade_where_no_member_certifies(norm):
    # member 1, last: logits (0, x_0), certifies only where |x_0| > eps, which x = (0.1, 0.6)
    # cannot reach; with x_1 < eps member 0 stops certifying and member 1 answers 0 for x_0 < 0
    last = _linear([[0.0, 0.0], [1.0, 0.0]], [0.0, 0.0])
    cascade = Cascade([Member(RISING, ENGINE), Member(last, ENGINE)])
    spec = LocalRobustness(0.5, norm)
    xs = np.array([[0.1, 0.6]])
    result = cascade_attack(cascade, spec, xs, DOMAIN2)
    assert result.claimed[0] and result.predicted[0] == 1
    assert result.witnesses[0] is not None
    assert result.member[0] == 1 and not result.member_certified[0]
    assert result.witness_class[0] == 0
    _assert_witnesses_recheck(cascade, spec, xs, DOMAIN2, result)


def test_points_without_a_claim_are_not_attacked():
    # both members rise with x_1: neither certifies near x_1 = 0
    cascade = Cascade([Member(RISING, ENGINE), Member(RISING, ENGINE)])
    spec = LocalRobustness(0.5, Norm.L2)
    xs = np.array([[0.0, 0.0], [0.0, 0.9]])
    result = cascade_attack(cascade, spec, xs, DOMAIN2)
    np.testing.assert_array_equal(result.claimed, [False, True])
    assert result.witnesses == (None, None)  # the same certified member everywhere: sound


def test_refuses_members_not_certified_by_lipschitz():
    class Wrapped:
        """The Lipschitz engine behind another name (not a LipschitzEngine)."""

        name = "wrapped"

        def supports(self, network: Network, spec: LocalRobustness) -> None:
            ENGINE.supports(network, spec)

        def check(self, network, spec, xs, labels=None, domain=None) -> BatchResult:
            return ENGINE.check(network, spec, xs, labels, domain)

    cascade = Cascade([Member(RISING, ENGINE), Member(CONSTANT, Wrapped(), name="odd")])
    with pytest.raises(UnsupportedError, match=r"odd.*'wrapped'"):
        cascade_attack(cascade, LocalRobustness(0.5, Norm.L2), np.zeros((1, 2)))


def test_refuses_voting():
    voting = Voting([Member(RISING, ENGINE), Member(CONSTANT, ENGINE)])
    with pytest.raises(UnsupportedError, match="Cascade, not a Voting"):
        cascade_attack(voting, LocalRobustness(0.5, Norm.L2), np.zeros((1, 2)))


def test_no_points():
    cascade = Cascade([Member(RISING, ENGINE)])
    result = cascade_attack(cascade, LocalRobustness(0.5, Norm.L2), np.zeros((0, 2)))
    assert result.witnesses == () and result.claimed.shape == (0,)


# -- random cascades ------------------------------------------------------------------------------

cases = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "d": st.integers(2, 4),
        "k": st.integers(2, 3),
        "m": st.integers(2, 3),
        "norm": st.sampled_from(list(Norm)),
        "eps": st.floats(0.05, 0.4),
        "domain": st.booleans(),
        "batch_size": st.sampled_from([7, 4096]),
    }
)


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 4), st.integers(2, 3), st.sampled_from(list(Norm)))
def test_one_member_cascade_is_never_broken(seed, d, m, norm):
    rng = np.random.default_rng(seed)
    cascade = _random_cascade(rng, d, 1, m)
    spec = LocalRobustness(float(rng.uniform(0.05, 0.4)), norm)
    xs = rng.uniform(-1.0, 1.0, (6, d))
    result = cascade_attack(cascade, spec, xs, Box.uniform(-1.0, 1.0, (d,)), FAST)
    assert not result.broken.any()


@settings(max_examples=6, deadline=None)
@given(cases)
def test_every_witness_rechecks_and_the_attack_is_deterministic(case):
    rng = np.random.default_rng(case["seed"])
    d = case["d"]
    cascade = _random_cascade(rng, d, case["k"], case["m"])
    spec = LocalRobustness(case["eps"], case["norm"])
    domain = Box.uniform(-1.0, 1.0, (d,)) if case["domain"] else None
    xs = rng.uniform(-1.0, 1.0, (6, d))
    config = CasaConfig(
        steps=25, samples=8, seed=case["seed"] % 1000, batch_size=case["batch_size"]
    )
    result = cascade_attack(cascade, spec, xs, domain, config)
    _assert_witnesses_recheck(cascade, spec, xs, domain, result)
    again = cascade_attack(cascade, spec, xs, domain, config)
    for w, v in zip(result.witnesses, again.witnesses, strict=True):
        assert (w is None) == (v is None)
        if w is not None and v is not None:
            np.testing.assert_array_equal(w, v)
    np.testing.assert_array_equal(result.member, again.member)
    np.testing.assert_array_equal(result.witness_class, again.witness_class)


def _sample_ball(rng: np.random.Generator, ball: Ball, n: int) -> FloatArray:
    """``n`` points of the ball (a quarter on its surface), clipped into its domain."""
    d = ball.center.size
    if ball.norm is Norm.LINF:
        pts = ball.center + rng.uniform(-ball.eps, ball.eps, (n, d))
        pts[: n // 4] = ball.center + ball.eps * rng.choice([-1.0, 1.0], (n // 4, d))
    else:
        g = rng.standard_normal((n, d))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        radius = ball.eps * np.sqrt(rng.uniform(0.0, 1.0, (n, 1)))
        radius[: n // 4] = ball.eps
        pts = ball.center + g * radius
    return pts if ball.domain is None else ball.domain.clip(pts)


def test_casa_finds_every_break_dense_sampling_finds():
    """2-input cascades: wherever 1500 samples of a claimed point's ball change the cascade's
    answer, CasA found a witness too (and sampling finds some: the comparison is not empty)."""
    sampled = casa = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        cascade = _random_cascade(rng, 2, int(rng.integers(2, 4)), int(rng.integers(2, 4)))
        spec = LocalRobustness(float(rng.uniform(0.1, 0.4)), list(Norm)[seed % 2])
        xs = rng.uniform(-1.0, 1.0, (8, 2))
        result = cascade_attack(cascade, spec, xs, DOMAIN2)
        _assert_witnesses_recheck(cascade, spec, xs, DOMAIN2, result)
        for p in np.flatnonzero(result.claimed).tolist():
            ball = Ball(xs[p], spec.eps, spec.norm, DOMAIN2)
            answers = cascade.answer(spec, _sample_ball(rng, ball, 1500), DOMAIN2).predicted
            if (answers != result.predicted[p]).any():
                sampled += 1
                assert result.witnesses[p] is not None, (seed, p)
            casa += result.witnesses[p] is not None
    assert sampled >= 3
    assert casa >= sampled
