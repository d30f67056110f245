"""Soundness and behaviour of the global-Lipschitz engine."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.strategies import conv_networks, dense_networks, epsilons, norms, points
from verispec.attacks import pgd_attack, sample_attack
from verispec.engines.lipschitz import LipschitzConfig, LipschitzEngine, network_lipschitz
from verispec.engines.roundoff import RoundoffForward
from verispec.network import Network
from verispec.properties import Clause, Predicate
from verispec.regions import Box, Norm
from verispec.results import Verdict
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering

SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
DOMAIN_LO, DOMAIN_HI = 0.0, 1.0


def _domain(net: Network) -> Box:
    return Box.uniform(DOMAIN_LO, DOMAIN_HI, net.input_shape)


def _assert_no_counterexample(net, spec, xs, results, seed=0):
    rng = np.random.default_rng(seed)
    for x, r in zip(xs, results, strict=True):
        if r.verdict is not Verdict.CERTIFIED:
            continue
        y = net.forward64(x[None])[0]
        for prop in spec.at(x, y, _domain(net)).alternatives:
            assert sample_attack(net, prop, 300, rng) is None, (spec, x)
            assert pgd_attack(net, prop, rng, steps=30, restarts=4) is None, (spec, x)


@SETTINGS
@given(
    st.one_of(dense_networks(), conv_networks()).flatmap(
        lambda n: st.tuples(st.just(n), points(n))
    ),
    norms,
    epsilons,
)
def test_certified_local_robustness_admits_no_counterexample(case, norm, eps):
    net, xs = case
    spec = LocalRobustness(eps, norm)
    results = LipschitzEngine().check(net, spec, xs, domain=_domain(net))
    _assert_no_counterexample(net, spec, xs, results)


@SETTINGS
@given(
    dense_networks().flatmap(lambda n: st.tuples(st.just(n), points(n))),
    norms,
    epsilons,
    st.integers(1, 3),
)
def test_certified_relaxed_top_k_admits_no_counterexample(case, norm, eps, k):
    net, xs = case
    k = min(k, net.num_classes)
    spec = RelaxedTopK(k, eps, norm)
    results = LipschitzEngine().check(net, spec, xs, domain=_domain(net))
    _assert_no_counterexample(net, spec, xs, results)
    for r in results:
        if r.verdict is Verdict.CERTIFIED:
            assert r.detail.startswith("kappa=") and 1 <= int(r.detail[6:]) <= k


@SETTINGS
@given(
    dense_networks().flatmap(lambda n: st.tuples(st.just(n), points(n))),
    norms,
    epsilons,
    st.randoms(use_true_random=False),
)
def test_certified_affinity_admits_no_counterexample(case, norm, eps, rnd):
    net, xs = case
    classes = list(range(net.num_classes))
    rnd.shuffle(classes)
    cut = rnd.randint(1, len(classes))
    groups = [classes[:cut], classes[cut:]] if cut < len(classes) else [classes]
    spec = Affinity(groups, eps, norm)
    results = LipschitzEngine().check(net, spec, xs, domain=_domain(net))
    _assert_no_counterexample(net, spec, xs, results)


@SETTINGS
@given(dense_networks(max_inputs=3), st.integers(0, 2**32 - 1), st.sampled_from([0.02, 0.1, 0.4]))
def test_safe_ordering_checked_by_dense_sampling(net, seed, half):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 1, net.input_shape)
    box = Box(centre - half, centre + half)
    m = net.num_classes
    y = net.forward64(centre[None])[0]
    order = np.argsort(-y)
    # the ordering at the centre between the top two classes, often true on small boxes
    post = Predicate(
        (
            Clause.orderings([(int(order[0]), int(order[-1]))], m),
            Clause.orderings([(int(order[1]), int(order[0]))], m),
        )
    )
    spec = SafeOrdering(box, post)
    (result,) = LipschitzEngine().check(net, spec, np.zeros((0, *net.input_shape)))
    samples = rng.uniform(box.lo, box.hi, size=(20000, *net.input_shape))
    holds = post.holds(net.forward64(samples))
    if result.verdict is Verdict.CERTIFIED:
        assert holds.all()
    if result.verdict is Verdict.FALSIFIED:
        x = result.counterexample
        assert box.contains(x) and not post.holds(net.forward64(x[None]))[0]


def _linear_net(weight, bias) -> Network:
    lin = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        lin.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return Network.from_torch(lin, (len(weight[0]),))


def test_point_on_decision_boundary_is_never_certified():
    net = _linear_net([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    (r,) = LipschitzEngine().check(net, LocalRobustness(1e-9, Norm.L2), np.array([[0.5, 0.5]]))
    assert r.verdict is Verdict.UNKNOWN and r.radius == 0.0


def test_identical_rows_tie_is_not_certified_with_infinite_radius():
    # y0 == y1 everywhere: K_01 = 0; the published tie-masking bug certified this with radius inf
    net = _linear_net([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], [0.0, 0.0, -5.0])
    (r,) = LipschitzEngine().check(net, LocalRobustness(0.1, Norm.L2), np.array([[0.3, 0.3]]))
    assert r.verdict is Verdict.UNKNOWN and r.radius == 0.0
    # with a strictly larger bias the difference is a positive constant: radius inf is right
    net = _linear_net([[1.0, 2.0], [1.0, 2.0]], [0.5, 0.0])
    (r,) = LipschitzEngine().check(net, LocalRobustness(0.1, Norm.L2), np.array([[0.3, 0.3]]))
    assert r.verdict is Verdict.CERTIFIED and r.radius == math.inf


@SETTINGS
@given(dense_networks().flatmap(lambda n: st.tuples(st.just(n), points(n))), norms)
def test_near_threshold_points_are_not_certified(case, norm):
    """eps just above the float64 radius must never be certified (float32 error included)."""
    net, xs = case
    engine = LipschitzEngine()
    pair = engine.bounds(net, norm).pairwise()
    y = net.forward64(xs)
    for x, yy in zip(xs, y, strict=True):
        c = int(np.argmax(yy))
        others = [j for j in range(len(yy)) if j != c]
        with np.errstate(divide="ignore"):
            r64 = min((yy[c] - yy[j]) / pair[c, j] for j in others)
        if not (0 < r64 < math.inf):
            continue
        (res,) = engine.check(net, LocalRobustness(r64 * (1 + 1e-7), norm), x[None])
        assert res.verdict is not Verdict.CERTIFIED


@SETTINGS
@given(st.one_of(dense_networks(), conv_networks()), st.integers(0, 2**32 - 1))
def test_pairwise_constants_bound_gradients(net, seed):
    """||grad (y_i - y_j)||_dual <= K_ij at random points, for l2 and l_inf."""
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.uniform(0, 1, (16, *net.input_shape)), requires_grad=True)
    y = net.module(torch.float64)(x)
    m = net.num_classes
    for norm, dual in ((Norm.L2, 2), (Norm.LINF, 1)):
        pair = network_lipschitz(net, norm).pairwise()
        for i in range(m):
            for j in range(m):
                if i == j:
                    continue
                (g,) = torch.autograd.grad((y[:, i] - y[:, j]).sum(), x, retain_graph=True)
                gnorm = g.flatten(1).norm(p=dual, dim=1).max().item()
                assert gnorm <= pair[i, j] * (1 + 1e-9) + 1e-300, (norm, i, j)


def test_tiny_weights_are_bounded_soundly():
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in seq.parameters():
            p.mul_(1e-6)
    net = Network.from_torch(seq, (4,))
    bounds = network_lipschitz(net, Norm.L2)
    exact = np.linalg.svd(net.layers[0].weight, compute_uv=False)[0]
    assert bounds.body >= exact and bounds.body <= exact * 1.02
    xs = np.random.default_rng(0).uniform(0, 1, (20, 4))
    results = LipschitzEngine().check(net, LocalRobustness(1e-3, Norm.L2), xs)
    _assert_no_counterexample(net, LocalRobustness(1e-3, Norm.L2), xs, results)


@SETTINGS
@given(st.one_of(dense_networks(), conv_networks()), st.integers(0, 2**32 - 1))
def test_roundoff_bound_covers_float32_error(net, seed):
    xs = np.random.default_rng(seed).uniform(0, 1, (8, *net.input_shape))
    lips = [b.l2 for b in network_lipschitz(net, Norm.L2).layers]
    fwd = RoundoffForward(net, lips, torch.float32, torch.device("cpu"))
    y32, err = fwd(xs)
    y64 = net.forward64(xs)
    assert np.all(np.linalg.norm(y32 - y64, axis=1) <= err)


def test_constants_are_cached_per_network_and_norm():
    net = _linear_net([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.1])
    engine = LipschitzEngine(LipschitzConfig(batch_size=2))
    xs = np.random.default_rng(0).uniform(0, 1, (5, 2))
    first = engine.check(net, LocalRobustness(0.01, Norm.L2), xs)
    engine.check(net, LocalRobustness(0.02, Norm.L2), xs)
    engine.check(net, LocalRobustness(0.02, Norm.LINF), xs)
    assert len(engine._bounds) == 2
    assert len(first) == 5


def test_linf_uses_dual_norm_not_l2_radius():
    # a linear model: the exact l_inf radius is margin / ||w_c - w_j||_1
    net = _linear_net([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]], [0.0, 0.0])
    x = np.array([[0.6, 0.2, 0.1]])
    (r,) = LipschitzEngine().check(net, LocalRobustness(0.01, Norm.LINF), x)
    margin = 1.3 - 0.2
    assert r.radius == pytest.approx(margin / 4.0, rel=1e-5)
    assert r.radius <= margin / 4.0


def test_unit_roundoff_follows_matmul_precision():
    from verispec.engines.roundoff import unit_roundoff

    cpu = torch.device("cpu")
    old = torch.get_float32_matmul_precision()
    try:
        assert unit_roundoff(torch.float32, cpu) == 2.0**-24
        torch.set_float32_matmul_precision("medium")
        assert unit_roundoff(torch.float32, cpu) == 2.0**-8
        assert unit_roundoff(torch.float64, cpu) == 2.0**-53
    finally:
        torch.set_float32_matmul_precision(old)


@SETTINGS
@given(
    dense_networks().flatmap(lambda n: st.tuples(st.just(n), points(n))),
    norms,
    epsilons,
    st.integers(0, 2),
)
def test_batch_arrays_agree_with_the_verdicts(case, norm, eps, kind):
    """The margins are the test's slack: > 0 exactly where a point is certified (local
    robustness, top-k and affinity alike), and the lazy results read the same arrays."""
    net, xs = case
    m = net.num_classes
    spec = [
        LocalRobustness(eps, norm),
        RelaxedTopK(min(2, m), eps, norm),
        Affinity([list(range(m))], eps, norm),
    ][kind]
    batch = LipschitzEngine().check(net, spec, xs, np.zeros(len(xs), dtype=np.int64))
    certified = batch.is_verdict(Verdict.CERTIFIED)
    clear = np.abs(batch.radii - eps) > 1e-9 * max(eps, 1.0)  # not at the last ulp of eps
    assert np.array_equal((batch.margins > 0)[clear], certified[clear])
    assert np.array_equal(certified, batch.radii > eps)
    for i, r in enumerate(batch):
        assert r.verdict is (Verdict.CERTIFIED if certified[i] else Verdict.UNKNOWN)
        assert r.radius == batch.radii[i] and r.label == 0
        assert r.predicted == batch.predicted[i]


def test_affinity_point_in_no_group_is_falsified_at_the_point():
    # f(x) = (x0, x1, 0.5): class 2 is in no group
    net = _linear_net([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.0, 0.5])
    xs = np.array([[0.9, 0.1], [0.1, 0.2], [0.1, 0.95]])
    spec = Affinity([[0, 1]], 0.01, Norm.L2)
    batch = LipschitzEngine().check(net, spec, xs, domain=_domain(net))
    assert [r.verdict for r in batch] == [Verdict.CERTIFIED, Verdict.FALSIFIED, Verdict.CERTIFIED]
    assert np.array_equal(batch[1].counterexample, xs[1]) and batch[1].predicted == 2
    assert batch[0].detail.startswith("group=[0, 1]")
