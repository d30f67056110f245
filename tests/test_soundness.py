"""The soundness suite: every registered engine, every spec kind it supports, on generated
networks and points, checked against the exact MILP solver, PGD and sampling.

A new engine joins by registering itself (``@register_engine``); give it a fast test
configuration in ``tests/soundness.py::ENGINE_CONFIGS`` if its defaults are slow. Run the
exhaustive profile with ``VERISPEC_SLOW=1`` (1,000 cases per test).

The ``hard`` tests hunt the classes of issue 12 (normalisation anywhere, float32-unrepresentable
weights, subnormal and huge scales, near-ties and points on boundaries, degenerate rows,
BatchNorm) on every deterministic engine and spec kind, and on the exact solvers themselves;
the ``test_regression_issue12_*`` tests are the probe's repros.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from torch import nn
from verispec.solvers.base import SolverConfig

from tests.soundness import (
    BATCHNORM,
    ENGINE_CONFIGS,
    ENSEMBLES,
    EXACT_ENGINES,
    REFERENCE_RULES,
    TORCH_RULES,
    PointEstimateSmoothing,
    TieMaskingEngine,
    assert_sound,
    exactly_in,
    into_region,
    is_probabilistic,
    linear_binary_net,
    probabilistic_wrong_certificates,
    reference_forward,
    soundness_problems,
    torch_forward64,
)
from tests.strategies import (
    adversarial_networks,
    hard_networks,
    hard_point_specs,
    hard_points,
    hard_safe_orderings,
    image_networks,
    point_specs,
    safe_orderings,
    small_networks,
    soundness_networks,
    soundness_points,
)
from verispec.engines.base import ENGINES, _load_builtin_engines, engine_class
from verispec.errors import UnsupportedError
from verispec.network import LAYER_TYPES, Conv2d, Dense, Flatten, Network, Normalize, ReLU
from verispec.regions import Ball, Box, Norm
from verispec.results import Verdict
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering

SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def engines_under_test() -> list[str]:
    """Every registered engine except the exact ones (the reference), and the ensembles."""
    _load_builtin_engines()
    return sorted((set(ENGINES) - EXACT_ENGINES) | set(ENSEMBLES))


def _engine(name: str):
    if name in ENSEMBLES:
        return ENSEMBLES[name]()
    cls = engine_class(name)
    return cls(ENGINE_CONFIGS.get(name))


def _skip_unsupported_kind(name: str, kind: str) -> None:
    """Skip a spec kind the engine refuses outright (ensembles: local robustness only)."""
    if kind == "SafeOrdering":
        if name in ENSEMBLES:
            pytest.skip(f"{name} certifies local robustness only")
        return
    specs = {
        "LocalRobustness": LocalRobustness(0.1, Norm.L2),
        "RelaxedTopK": RelaxedTopK(1, 0.1, Norm.L2),
        "Affinity": Affinity([[0, 1]], 0.1, Norm.L2),
    }
    if not _supported(_engine(name), linear_binary_net(np.array([1.0, -1.0]), 0.1), specs[kind]):
        pytest.skip(f"{name} does not check {kind}")


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
    _skip_unsupported_kind(name, kind)
    net = data.draw(soundness_networks())
    spec = data.draw(point_specs(net.num_classes, (kind,)))
    xs = data.draw(soundness_points(net))
    engine = _engine(name)
    assume(_supported(engine, net, spec))
    domain = Box.uniform(0.0, 1.0, net.input_shape)
    assert_sound(engine, net, spec, xs, domain)


@pytest.mark.parametrize("name", DETERMINISTIC)
@SETTINGS
@given(data=st.data())
def test_safe_orderings_are_sound(name, data):
    _skip_unsupported_kind(name, "SafeOrdering")
    net = data.draw(st.one_of(small_networks(max_hidden=12), adversarial_networks()))
    spec = data.draw(safe_orderings(net.input_size, net.num_classes))
    engine = _engine(name)
    assume(_supported(engine, net, spec))
    empty = np.zeros((0, *net.input_shape))
    assert_sound(engine, net, spec, empty, None)


def _tied_network() -> Network:
    """Classes 0 and 1 have identical rows and biases: they tie at every input."""
    torch.manual_seed(0)
    head = nn.Linear(6, 3)
    seq = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), head)
    with torch.no_grad():
        head.weight[1] = head.weight[0]
        head.bias[1] = head.bias[0] + 0.0
        head.bias[0] += 5.0
        head.bias[1] += 5.0  # classes 0 and 1 lead, tied
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
    assert_sound(engine, net, spec, xs, None)


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
    assert_sound(engine, net, above, x[None], None)


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


# -- the reference the suite judges by ---------------------------------------------------------


def test_reference_rules_cover_every_layer():
    """The checker's forward passes know every IR layer (a new layer must get a rule)."""
    for cls in LAYER_TYPES.values():
        assert cls in REFERENCE_RULES, cls
        assert cls in TORCH_RULES, cls


@settings(max_examples=20, deadline=None)
@given(net=st.one_of(image_networks(), hard_networks(False)), seed=st.integers(0, 2**32 - 1))
def test_reference_forward_agrees_with_torch_float64(net, seed):
    """numpy and torch float64 on the IR's arrays agree to float64 round-off, relative to the
    outputs (not on cancelling networks: their outputs are round-off, which two float64
    passes may get wholly different)."""
    x = np.random.default_rng(seed).uniform(0, 1, (4, *net.input_shape))
    a = reference_forward(net, x)
    b = torch_forward64(net, torch.from_numpy(x)).numpy()
    scale = np.abs(a).max() + 1e-300
    assert np.allclose(a, b, rtol=1e-9, atol=1e-9 * scale)


@settings(max_examples=20, deadline=None)
@given(net=image_networks(), seed=st.integers(0, 2**32 - 1))
def test_reference_forward_agrees_with_the_library_on_ordinary_networks(net, seed):
    """On float32-representable weights the library's own float64 pass is the same function."""
    x = np.random.default_rng(seed).uniform(0, 1, (4, *net.input_shape))
    assert np.allclose(reference_forward(net, x), net.forward64(x), rtol=1e-6, atol=1e-6)


def test_exact_membership_has_no_tolerance():
    c = np.array([0.5, 0.5])
    ball = Ball(c, 1e-12, Norm.L2)
    outside = c + np.array([1.001e-12, 0.0])
    assert not exactly_in(ball, outside)  # the library's 1e-9 tolerance would accept it
    assert exactly_in(ball, into_region(ball, outside))
    linf = Ball(np.array([0.1]), 0.3, Norm.LINF)
    corner = np.array([0.1]) + 0.3  # rounds to 0.4, which is 0.1 + 0.3 + 2e-17 exactly
    assert exactly_in(linf, into_region(linf, corner))


# -- issue 12: the hard classes, on every deterministic engine and spec kind -------------------

HARD_EXAMPLES = os.environ.get("VERISPEC_HARD_EXAMPLES")
"""Cases per hard test: the profile's (25 by default, 1,000 with VERISPEC_SLOW=1) unless
VERISPEC_HARD_EXAMPLES says otherwise (a longer hunt)."""
HARD = settings(SETTINGS, max_examples=int(HARD_EXAMPLES)) if HARD_EXAMPLES else SETTINGS
HARD_TIMEOUT = 20.0
"""Seconds for the reference MILP solver per goal (an extreme-scale case may stall it)."""


@pytest.mark.parametrize("kind", ["LocalRobustness", "RelaxedTopK", "Affinity"])
@pytest.mark.parametrize("name", DETERMINISTIC)
@HARD
@given(data=st.data())
def test_hard_point_specs_are_sound(name, kind, data):
    _skip_unsupported_kind(name, kind)
    net = data.draw(hard_networks())
    xs = data.draw(hard_points(net))
    spec = data.draw(hard_point_specs(net.num_classes, (kind,), net, xs[0]))
    engine = _engine(name)
    assume(_supported(engine, net, spec))
    domain = Box.uniform(0.0, 1.0, net.input_shape)
    assert_sound(engine, net, spec, xs, domain, timeout=HARD_TIMEOUT, record=event)


@pytest.mark.parametrize("name", DETERMINISTIC)
@HARD
@given(data=st.data())
def test_hard_safe_orderings_are_sound(name, data):
    _skip_unsupported_kind(name, "SafeOrdering")
    net = data.draw(hard_networks())
    flat = (
        st.nothing()
        if len(net.input_shape) > 1
        else safe_orderings(net.input_size, net.num_classes)
    )
    spec = data.draw(st.one_of(hard_safe_orderings(net), flat))
    engine = _engine(name)
    assume(_supported(engine, net, spec))
    assert_sound(engine, net, spec, np.zeros(0), None, timeout=HARD_TIMEOUT, record=event)


EXACT_CONFIG = SolverConfig(timeout=10.0)


@pytest.mark.parametrize("name", sorted(EXACT_ENGINES))
@HARD
@given(data=st.data())
def test_exact_solvers_are_sound_on_hard_networks(name, data):
    """The reference itself: the exact solvers' verdicts on the hard classes survive the
    attacks on the independent float64 reference, and their witnesses re-check on it."""
    net = data.draw(hard_networks())
    xs = data.draw(hard_points(net, 2))
    spec = data.draw(
        st.one_of(
            hard_point_specs(net.num_classes, ("LocalRobustness",), net, xs[0]),
            hard_safe_orderings(net),
        )
    )
    engine = engine_class(name)(EXACT_CONFIG)
    assume(_supported(engine, net, spec))
    domain = None if isinstance(spec, SafeOrdering) else Box.uniform(0.0, 1.0, net.input_shape)
    assert_sound(engine, net, spec, xs, domain, use_solver=False, record=event)


# -- issue 12: the probe's repros (xfail until the fixes land; remove a mark when it passes) ----


def _issue12(names: list[str], failing: dict[str, str]) -> list:
    """``names`` as parameters; those in ``failing`` marked as expected failures, with the bug
    of issue 12 that makes them fail (remove the entry when its fix lands)."""
    return [
        pytest.param(
            n, marks=pytest.mark.xfail(strict=True, reason=f"issue 12 {failing[n]}: awaiting fix")
        )
        if n in failing
        else n
        for n in names
    ]


# What made each repro fail on 61e1d57 (issue 12): Normalize before the head left out of K
# (bug 1: lipschitz); weights rounded to float32 (bug 2: a false CERTIFIED on the 1x1 conv by
# projections, milp and smt; false FALSIFIED witnesses on the 1 + 1e-9 weights and the 1e-170
# head by projections, milp and smt); the float32 error bound ignoring underflow (bug 3:
# lipschitz); sampled witnesses 1 ulp outside the l2 ball (milp and smt on the bug 1 repros).
# eps 1e300 overflowed squaring eps in the exact l2 membership test (milp, smt). All fixed.


ALL_ENGINES = DETERMINISTIC + sorted(EXACT_ENGINES)


def _check(name: str) -> object:
    return engine_class(name)(EXACT_CONFIG) if name in EXACT_ENGINES else _engine(name)


def _identity_head(n: int, bias: np.ndarray | None = None) -> Dense:
    return Dense(np.eye(n), np.zeros(n) if bias is None else bias)


@pytest.mark.parametrize("name", _issue12(ALL_ENGINES, {}))
def test_regression_issue12_normalize_before_the_head(name):
    """Bug 1: Normalize(0.5, 0.1) directly before the last dense layer: 1/std = 10 was dropped
    from K (the engine certified l2 eps 0.5 at (0.6, 0.4) with radius 1.414; true 0.141)."""
    net = Network([Normalize(np.array([0.5]), np.array([0.1])), _identity_head(2)], (2,))
    x = np.array([[0.6, 0.4]])
    assert_sound(_check(name), net, LocalRobustness(0.5, Norm.L2), x, None)


@pytest.mark.parametrize("name", _issue12(ALL_ENGINES, {}))
def test_regression_issue12_normalize_between_relu_and_head(name):
    """Bug 1: Dense-ReLU-Normalize(std 0.05)-Dense: the normalisation's 1/std = 20 counts."""
    w1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    layers = [Dense(w1, np.full(2, 0.1)), ReLU(), Normalize(np.array([0.3]), np.array([0.05]))]
    net = Network([*layers, _identity_head(2)], (2,))
    x = np.array([[0.6, 0.4]])  # true l2 radius 0.2 / sqrt(2) = 0.141
    assert_sound(_check(name), net, LocalRobustness(0.3, Norm.L2), x, None)


def _conv_10000() -> Network:
    """A 1x1 convolution with kernels 10000.0003 and 10000 (equal in float32), then Dense(I,
    b = (0, 2e-4)): class 1 at x = 0.5, class 0 for x > 2/3."""
    conv = Conv2d(np.array([10000.0003, 10000.0]).reshape(2, 1, 1, 1), np.zeros(2), 1, 0)
    return Network([conv, Flatten(), _identity_head(2, np.array([0.0, 2e-4]))], (1, 1, 1))


@pytest.mark.parametrize("name", _issue12(ALL_ENGINES, {}))
def test_regression_issue12_unrepresentable_conv_weights(name):
    """Bug 2: weights rounded to float32 made x = 0.8 look like class 1: l_inf eps 0.3 at 0.5
    was certified (x = 0.8 has y0 - y1 = 4e-5 > 0)."""
    x = np.full((1, 1, 1, 1), 0.5)
    domain = Box.uniform(0.0, 1.0, (1, 1, 1))
    spec = LocalRobustness(0.3, Norm.LINF)
    assert_sound(_check(name), _conv_10000(), spec, x, domain)


@pytest.mark.parametrize("name", _issue12(ALL_ENGINES, {}))
def test_regression_issue12_unrepresentable_dense_weights(name):
    """Bug 2: W = [[1, 0.5], [1 + 1e-9, 0.5]]: class 1 leads by 4e-10 at (0.4, 0.3) and stays
    ahead in the l2 ball of radius 0.01; float32 weights tie, and a "witness" was returned."""
    net = Network([Dense(np.array([[1.0, 0.5], [1.0 + 1e-9, 0.5]]), np.zeros(2))], (2,))
    x = np.array([[0.4, 0.3]])
    assert_sound(_check(name), net, LocalRobustness(0.01, Norm.L2), x, None)


@pytest.mark.parametrize("name", _issue12(ALL_ENGINES, {}))
def test_regression_issue12_subnormal_float32_logits(name):
    """Bug 3: five Dense(1e-8 I) layers make the float32 logits subnormal (~1e-40); the
    rounding-error bound ignored underflow, so a radius above the true one was certified."""
    net = Network([Dense(1e-8 * np.eye(2), np.zeros(2)) for _ in range(5)], (2,))
    x = np.array([[0.5005409735239362, 0.5]])
    true_radius = (x[0, 0] - x[0, 1]) / np.sqrt(2)  # 3.8253e-4; the engine claimed 3.8390e-4
    spec = LocalRobustness(true_radius * 1.002, Norm.L2)
    assert_sound(_check(name), net, spec, x, None)


@pytest.mark.parametrize("name", _issue12(ALL_ENGINES, {}))
def test_regression_issue12_tiny_head_with_huge_eps(name):
    """Bug 3: head weights 1e-170: ||w_i - w_j||_2 underflows to 0 and eps 1e300 (the whole
    domain) was certified once the weights stay float64. (Where forward64 rounds weights to
    float32 the head is 0: the logits tie and the centre was returned as a witness.)"""
    net = Network(
        [Dense(np.eye(2), np.zeros(2)), ReLU(), Dense(1e-170 * np.eye(2), np.zeros(2))], (2,)
    )
    x = np.array([[0.6, 0.4]])
    domain = Box.uniform(0.0, 1.0, (2,))
    for norm in Norm:
        spec = LocalRobustness(1e300, norm)
        assert_sound(_check(name), net, spec, x, domain)


@pytest.mark.skipif(BATCHNORM is None, reason="the IR has no BatchNorm layer yet (issue 12)")
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1), dims=st.sampled_from([1, 2]), var=st.sampled_from([1.0, 1e-4])
)
def test_batchnorm_import_is_the_torch_function(seed, dims, var):
    """Bug 6: an eval-mode BatchNorm1d/2d imports as the same function (float64 torch)."""
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 4))
    bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(c).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.uniform(-1, 1, c)))
        bn.running_var.copy_(torch.from_numpy(var * rng.uniform(0.5, 2.0, c)))
        bn.weight.copy_(torch.from_numpy(rng.uniform(-2, 2, c)))
        bn.bias.copy_(torch.from_numpy(rng.standard_normal(c)))
    seq = nn.Sequential(bn, nn.Flatten()).eval()
    shape = (c,) if dims == 1 else (c, 2, 2)
    net = Network.from_torch(seq, shape)
    x = rng.uniform(-1, 1, (5, *shape))
    with torch.no_grad():
        expected = seq(torch.from_numpy(x)).numpy()
    assert np.allclose(reference_forward(net, x), expected, rtol=1e-12, atol=1e-12)
