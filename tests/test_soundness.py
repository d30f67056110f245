"""The soundness suite: every registered engine, every spec kind it supports, on generated
networks and points, checked against the exact MILP solver, PGD and sampling.

A new engine joins by registering itself (``@register_engine``); give it a fast test
configuration in ``tests/soundness.py::ENGINE_CONFIGS`` if its defaults are slow. Run the
exhaustive profile with ``VERISPEC_SLOW=1`` (1,000 cases per test).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.soundness import (
    ENGINE_CONFIGS,
    EXACT_ENGINES,
    PointEstimateSmoothing,
    TieMaskingEngine,
    is_probabilistic,
    linear_binary_net,
    probabilistic_wrong_certificates,
    soundness_problems,
)
from tests.strategies import (
    adversarial_networks,
    point_specs,
    safe_orderings,
    small_networks,
    soundness_networks,
    soundness_points,
)
from verispec.engines.base import ENGINES, _load_builtin_engines, engine_class
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.regions import Box, Norm
from verispec.results import Verdict
from verispec.specs import LocalRobustness

SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def engines_under_test() -> list[str]:
    """Every registered engine except the exact ones (the reference)."""
    _load_builtin_engines()
    return sorted(set(ENGINES) - EXACT_ENGINES)


def _engine(name: str):
    cls = engine_class(name)
    return cls(ENGINE_CONFIGS.get(name))


def _supported(engine, network, spec) -> bool:
    try:
        engine.supports(network, spec)
    except UnsupportedError:
        return False
    return True


def _deterministic(engine) -> bool:
    """Whether the engine's guarantees are proofs (probabilistic ones are checked apart)."""
    net = linear_binary_net(np.array([1.0, -1.0]), 0.1)
    results = engine.check(net, LocalRobustness(0.01, Norm.L2), np.array([[0.5, 0.5]]))
    return not is_probabilistic(results)


DETERMINISTIC = [n for n in engines_under_test() if _deterministic(_engine(n))]
PROBABILISTIC = [n for n in engines_under_test() if n not in DETERMINISTIC]


@pytest.mark.parametrize("kind", ["LocalRobustness", "RelaxedTopK", "Affinity"])
@pytest.mark.parametrize("name", DETERMINISTIC)
@SETTINGS
@given(data=st.data())
def test_point_specs_are_sound(name, kind, data):
    net = data.draw(soundness_networks())
    spec = data.draw(point_specs(net.num_classes, (kind,)))
    xs = data.draw(soundness_points(net))
    engine = _engine(name)
    assume(_supported(engine, net, spec))
    domain = Box.uniform(0.0, 1.0, net.input_shape)
    assert soundness_problems(engine, net, spec, xs, domain) == []


@pytest.mark.parametrize("name", DETERMINISTIC)
@SETTINGS
@given(data=st.data())
def test_safe_orderings_are_sound(name, data):
    net = data.draw(st.one_of(small_networks(max_hidden=12), adversarial_networks()))
    spec = data.draw(safe_orderings(net.input_size, net.num_classes))
    engine = _engine(name)
    assume(_supported(engine, net, spec))
    empty = np.zeros((0, *net.input_shape))
    assert soundness_problems(engine, net, spec, empty, None) == []


def _tied_network() -> Network:
    """Classes 0 and 1 have identical rows and biases: they tie at every input."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        seq[2].weight[1] = seq[2].weight[0]
        seq[2].bias[1] = seq[2].bias[0] + 0.0
        seq[2].bias[0] += 5.0
        seq[2].bias[1] += 5.0  # classes 0 and 1 lead, tied
    return Network.from_torch(seq, (2,))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_regression_ties_are_never_certified(name):
    """Published bug class: tie masking certified points on the decision boundary."""
    net = _tied_network()
    xs = np.random.default_rng(0).uniform(0, 1, (10, 2))
    spec = LocalRobustness(0.05, Norm.L2)
    engine = _engine(name)
    results = engine.check(net, spec, xs)
    assert all(r.verdict is not Verdict.CERTIFIED for r in results)
    assert soundness_problems(engine, net, spec, xs, None) == []


def test_regression_tie_masking_engine_is_caught():
    net = _tied_network()
    xs = np.random.default_rng(0).uniform(0, 1, (10, 2))
    spec = LocalRobustness(0.05, Norm.L2)
    problems = soundness_problems(TieMaskingEngine(), net, spec, xs, None)
    assert len(problems) >= 10  # every point: MILP and the attacks refute it at the point


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_regression_tiny_weights_keep_sound_constants(name):
    """Published bug class: a normalisation constant under-estimated the spectral norm of
    small weights. A linear model with 1e-6 weights: certified radius must not exceed the
    exact one, so eps just above it is never certified."""
    w = np.array([[1.0, 2.0], [-1.0, 0.5]]) * 1e-6
    b = np.array([1.0, 0.0]) * 1e-7
    lin = nn.Linear(2, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    net = Network.from_torch(lin, (2,))
    x = np.array([0.5, 0.5])
    y = net.forward64(x[None])[0]
    exact = abs(y[0] - y[1]) / np.linalg.norm(w[0] - w[1])
    engine = _engine(name)
    above = LocalRobustness(exact * 1.001, Norm.L2)
    assert engine.check(net, above, x[None])[0].verdict is not Verdict.CERTIFIED
    assert soundness_problems(engine, net, above, x[None], None) == []


CASES = 1000 if os.environ.get("VERISPEC_SLOW") else 200
WRONG_LIMIT_SIGMAS = 4.0


def _wrong_limit(alpha: float, certified: int) -> float:
    """Certified-but-wrong counts above this are implausible (> 4 standard deviations) for an
    engine whose certificates each fail with probability <= alpha."""
    return alpha * certified + WRONG_LIMIT_SIGMAS * np.sqrt(alpha * certified) + 1


@pytest.mark.parametrize("name", PROBABILISTIC)
def test_probabilistic_engines_are_wrong_at_most_alpha_often(name):
    engine = _engine(name)
    wrong, certified = probabilistic_wrong_certificates(engine, CASES)
    alpha = (
        1.0
        - engine.check(
            linear_binary_net(np.ones(2), 0.3), LocalRobustness(0.01, Norm.L2), np.zeros((1, 2))
        )[0].confidence
    )
    assert certified >= CASES // 5  # the check must have something to check
    assert wrong <= _wrong_limit(alpha, certified), (wrong, certified)


def test_statistical_check_catches_point_estimate_smoothing():
    engine = PointEstimateSmoothing(ENGINE_CONFIGS["smoothing"])
    wrong, certified = probabilistic_wrong_certificates(engine, 200)
    assert wrong > _wrong_limit(0.01, certified), (wrong, certified)
