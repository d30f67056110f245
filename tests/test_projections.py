"""The fast geometric projections engine: exact region counts on hand-built networks, exact
decisions on affine models, and soundness against the MILP solver on generated networks."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tests.soundness import soundness_problems
from tests.strategies import small_networks, unit_points
from verispec.engines.base import engine_class
from verispec.engines.projections import ProjectionsConfig, ProjectionsEngine, regions_of
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.properties import Clause, Predicate
from verispec.regions import Box, Norm, Polytope
from verispec.results import Verdict
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering

FAST = ProjectionsConfig(
    max_regions=2000, time_per_point=5.0, pgd_steps=20, pgd_restarts=2, bounds="none"
)
"""The search alone: every ReLU within reach is flipped (the region counts below)."""


def _dense(w: list[list[float]], b: list[float]) -> nn.Linear:
    lin = nn.Linear(len(w[0]), len(w)).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w, dtype=torch.float64))
        lin.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return lin


def _one_layer_net() -> Network:
    """Hidden ReLUs on x1 = 0.5, x2 = 0.5, x1 + x2 = 1 and x1 = 3; class 0 always wins by 10."""
    hidden = _dense([[1, 0], [0, 1], [1, 1], [-1, 0]], [-0.5, -0.5, -1.0, 3.0])
    head = _dense([[1, 1, 1, 1], [0, 0, 0, 0]], [10.0, 0.0])
    return Network.from_torch(nn.Sequential(hidden, nn.ReLU(), head), (2,))


X0 = np.array([[0.45, 0.40]])
# distances from X0: x1 = 0.5 -> 0.05; x2 = 0.5 -> 0.10; x1 + x2 = 1 -> 0.106 (l2), 0.075
# (l_inf: |v| / ||w||_1); x1 = 3 -> 2.55. Each combination of reachable ReLUs is explored unless
# its (closed) region provably misses the ball: in l2 the quadrant {x1 >= 0.5, x2 >= 0.5} is at
# distance 0.112 (and so is {x2 >= 0.5, x1 + x2 >= 1}); in l_inf every combination is within 0.1.


@pytest.mark.parametrize(
    ("eps", "norm", "regions", "pruned"),
    [
        (0.04, Norm.L2, 1, 0),
        (0.06, Norm.L2, 2, 0),
        (0.105, Norm.L2, 3, 1),  # {}, {x1}, {x2}; {x1, x2} pruned
        (0.11, Norm.L2, 5, 3),  # + {diag}, {x1, diag}; three combinations with x2 pruned
        (0.04, Norm.LINF, 1, 0),
        (0.08, Norm.LINF, 4, 0),  # x1 = 0.5 and the diagonal (0.075 in l_inf), not x2 = 0.5
        (0.11, Norm.LINF, 8, 0),
    ],
)
def test_region_count_one_layer(eps, norm, regions, pruned):
    result = ProjectionsEngine(FAST).check(_one_layer_net(), LocalRobustness(eps, norm), X0)[0]
    assert result.verdict is Verdict.CERTIFIED
    assert regions_of(result) == regions
    assert f"pruned={pruned};" in result.detail


def _two_layer_net() -> Network:
    """h = relu(x1 - 0.5); g = relu(h - 0.01): g's hyperplane exists only where h is active
    (x1 = 0.51, at l2 distance 0.06 from X0); where h is inactive g's input is constant."""
    seq = nn.Sequential(
        _dense([[1, 0]], [-0.5]),
        nn.ReLU(),
        _dense([[1]], [-0.01]),
        nn.ReLU(),
        _dense([[1], [0]], [10.0, 0.0]),
    )
    return Network.from_torch(seq, (2,))


@pytest.mark.parametrize(("eps", "regions"), [(0.04, 1), (0.055, 2), (0.07, 4)])
def test_region_count_second_layer(eps, regions):
    """0.055: only h flips; 0.07: then g flips inside h's active region, and h flips back
    from there (an empty pattern, explored: the search over-approximates)."""
    result = ProjectionsEngine(FAST).check(_two_layer_net(), LocalRobustness(eps, Norm.L2), X0)[0]
    assert result.verdict is Verdict.CERTIFIED
    assert regions_of(result) == regions


@pytest.mark.parametrize("norm", [Norm.L2, Norm.LINF])
def test_affine_models_are_decided_exactly(norm):
    """Without hidden layers there is one region: certified iff every margin exceeds eps times
    the dual norm, and otherwise the projection is a genuine counterexample."""
    rng = np.random.default_rng(1)
    head = _dense(rng.standard_normal((3, 4)).tolist(), rng.standard_normal(3).tolist())
    net = Network.from_torch(head, (4,))
    xs = rng.uniform(0, 1, (40, 4))
    spec = LocalRobustness(0.2, norm)
    results = ProjectionsEngine(FAST).check(net, spec, xs)
    W, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    q = 2 if norm is Norm.L2 else 1
    for x, r in zip(xs, results, strict=True):
        y = W @ x + b
        c = int(np.argmax(y))
        radius = min((y[c] - y[j]) / np.linalg.norm(W[c] - W[j], q) for j in range(3) if j != c)
        expected = Verdict.CERTIFIED if radius > 0.2 else Verdict.FALSIFIED
        assert r.verdict is expected, (radius, r.detail)
        assert regions_of(r) == 1
    assert {r.verdict for r in results} == {Verdict.CERTIFIED, Verdict.FALSIFIED}
    assert soundness_problems(ProjectionsEngine(FAST), net, spec, xs, None) == []


@settings(max_examples=12)
@given(
    net=small_networks(max_hidden=10, activations=("relu",)),
    norm=st.sampled_from([Norm.L2, Norm.LINF]),
    eps=st.sampled_from([0.05, 0.1, 0.3]),
    seeds=st.lists(unit_points(4), min_size=3, max_size=3),
)
def test_relu_verdicts_agree_with_milp(net, norm, eps, seeds):
    """Every CERTIFIED survives the MILP solver and the attacks; every witness re-checks."""
    xs = np.stack([s[: net.input_size] for s in seeds])
    domain = Box.uniform(0.0, 1.0, net.input_shape)
    spec = LocalRobustness(eps, norm)
    assert soundness_problems(ProjectionsEngine(FAST), net, spec, xs, domain) == []


@settings(max_examples=8)
@given(
    net=small_networks(max_hidden=8, activations=("minmax",)),
    norm=st.sampled_from([Norm.L2, Norm.LINF]),
    seeds=st.lists(unit_points(4), min_size=3, max_size=3),
)
def test_minmax_verdicts_agree_with_milp(net, norm, seeds):
    xs = np.stack([s[: net.input_size] for s in seeds])
    domain = Box.uniform(0.0, 1.0, net.input_shape)
    spec = LocalRobustness(0.1, norm)
    assert soundness_problems(ProjectionsEngine(FAST), net, spec, xs, domain) == []


def test_decides_most_points_of_a_small_net():
    """Not vacuous: on a random 2-16-16-3 ReLU net the engine certifies and falsifies."""
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        seq[0].weight.mul_(4.0)
    net = Network.from_torch(seq, (2,))
    xs = np.random.default_rng(0).uniform(0, 1, (30, 2))
    spec = LocalRobustness(0.1, Norm.L2)
    results = ProjectionsEngine(FAST).check(net, spec, xs, domain=Box.uniform(0, 1, (2,)))
    counts = {v: sum(r.verdict is v for r in results) for v in Verdict}
    assert counts[Verdict.CERTIFIED] >= 20 and counts[Verdict.FALSIFIED] >= 1
    assert counts[Verdict.CERTIFIED] + counts[Verdict.FALSIFIED] >= 25
    for r in results:
        if r.verdict is Verdict.FALSIFIED:
            assert r.counterexample is not None
            assert np.all((r.counterexample >= 0) & (r.counterexample <= 1))


def test_batching_does_not_change_answers():
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    net = Network.from_torch(seq, (3,))
    xs = np.random.default_rng(3).uniform(0, 1, (12, 3))
    spec = LocalRobustness(0.1, Norm.LINF)
    together = ProjectionsEngine(FAST).check(net, spec, xs)
    one = attrs.evolve(FAST, batch_size=1)
    alone = [ProjectionsEngine(one).check(net, spec, x[None])[0] for x in xs]
    for a, b in zip(together, alone, strict=True):
        assert a.verdict is b.verdict
        if a.verdict is Verdict.CERTIFIED:
            assert regions_of(a) == regions_of(b)


def test_region_budget_gives_timeout():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        seq[2].bias.copy_(torch.tensor([100.0, 0.0]))  # robust: only the budget can stop it
    net = Network.from_torch(seq, (2,))
    spec = LocalRobustness(2.0, Norm.L2)
    tight = ProjectionsEngine(ProjectionsConfig(max_regions=3, pgd_restarts=0, bounds="none"))
    r = tight.check(net, spec, X0)[0]
    assert r.verdict is Verdict.TIMEOUT and regions_of(r) == 3
    assert ProjectionsEngine(FAST).check(net, spec, X0)[0].verdict is Verdict.CERTIFIED
    # CROWN's bounds prove the margin of 100 outright: no region is searched
    guided = ProjectionsEngine(ProjectionsConfig(max_regions=3, pgd_restarts=0))
    r = guided.check(net, spec, X0)[0]
    assert r.verdict is Verdict.CERTIFIED and regions_of(r) == 0


@pytest.mark.parametrize("bounds", ["ibp", "crown"])
def test_bounds_fix_the_stable_relus_and_keep_the_answers(bounds):
    """With the bounds, the search flips only the ReLUs they leave unstable: never more
    regions than without them, the same verdict wherever the plain search decides, and
    sometimes a decision where it does not (the bounds hold on the ball within the domain;
    the plain search's safety test ignores the domain)."""
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    net = Network.from_torch(seq, (3,))
    xs = np.random.default_rng(5).uniform(0, 1, (10, 3))
    for spec in (LocalRobustness(0.05, Norm.LINF), LocalRobustness(0.15, Norm.L2)):
        plain = ProjectionsEngine(FAST).check(net, spec, xs)
        guided = ProjectionsEngine(attrs.evolve(FAST, bounds=bounds)).check(net, spec, xs)
        decided = (Verdict.CERTIFIED, Verdict.FALSIFIED)
        for a, b in zip(plain, guided, strict=True):
            if a.verdict in decided:
                assert a.verdict is b.verdict, (a.detail, b.detail)
            assert regions_of(b) <= regions_of(a)
        assert sum(regions_of(r) for r in guided) < sum(regions_of(r) for r in plain)


def test_default_minmax_model(default_network_and_points):
    """The GloRo-trained MinMax default model: small balls are certified, every verdict sound
    by attack (the MILP audit of this model is too slow for a unit test)."""
    net, xs, domain = default_network_and_points
    engine = ProjectionsEngine(ProjectionsConfig(max_regions=300, pgd_steps=20, pgd_restarts=2))
    results = engine.check(net, LocalRobustness(0.02, Norm.L2), xs, domain=domain)
    assert sum(r.verdict is Verdict.CERTIFIED for r in results) >= len(xs) // 2
    ys = net.forward64(xs)
    from tests.soundness import _attack

    rng = np.random.default_rng(0)
    for x, y, r in zip(xs, ys, results, strict=True):
        goal = LocalRobustness(0.02, Norm.L2).at(x, y, domain)
        if r.verdict is Verdict.CERTIFIED:
            assert _attack(net, goal, rng) is None
        if r.verdict is Verdict.FALSIFIED:
            w = r.counterexample
            assert w is not None and goal.is_counterexample(w, net.forward64(w[None])[0])


@pytest.fixture(scope="module")
def default_network_and_points():
    from verispec.api import as_network
    from verispec.data import Split, load_data

    net = as_network("specs/models/digits_mlp.pt")
    ds = load_data("sklearn:digits", Split.TEST)
    xs = np.asarray(ds.x[:6], dtype=np.float64).reshape((-1, *net.input_shape))
    return net, xs, Box.uniform(0.0, 1.0, net.input_shape)


def test_other_point_specs_and_safe_ordering():
    net = _one_layer_net()
    eng = ProjectionsEngine(FAST)
    for spec in (
        RelaxedTopK(1, 0.11, Norm.L2),
        Affinity([[0], [1]], 0.11, Norm.LINF),
    ):
        assert eng.check(net, spec, X0)[0].verdict is Verdict.CERTIFIED
    box = Box(np.array([0.4, 0.4]), np.array([0.6, 0.6]))
    holds = SafeOrdering(box, Predicate((Clause.orderings([(0, 1)], 2),)))
    fails = SafeOrdering(box, Predicate((Clause.orderings([(1, 0)], 2),)))
    assert eng.check(net, holds, np.zeros((0, 2)))[0].verdict is Verdict.CERTIFIED
    r = eng.check(net, fails, np.zeros((0, 2)))[0]
    assert r.verdict is Verdict.FALSIFIED
    with pytest.raises(UnsupportedError):
        eng.supports(net, SafeOrdering(Polytope(np.eye(2), np.ones(2)), holds.postcondition))


def test_registered():
    assert engine_class("projections") is ProjectionsEngine


def test_regression_the_gram_route_with_a_tiny_head():
    """Found by the slow profile: conv (4 inputs, 2 first-layer neurons: the Gram route), then
    BatchNorm and a 1e-171 head. J G J^T squared the 1e-171 Jacobian rows to 0, every boundary
    looked out of reach, and the point was certified although an attack flips it."""
    from verispec.network import BatchNorm, Conv2d, Dense, Flatten, ReLU

    net = Network(
        [
            Conv2d(
                np.array(
                    [
                        [
                            [
                                [-0.3258955763058448, -0.08735864616288858],
                                [0.8318619956955984, 0.3295738749161275],
                            ]
                        ],
                        [
                            [
                                [-0.8206986472923233, -0.0026016320859659887],
                                [-0.3117318704941967, 0.07431576162601317],
                            ]
                        ],
                    ]
                ),
                np.array([-0.1608187784186389, 0.024177187687685134]),
                (1, 1),
                (0, 0),
            ),
            ReLU(),
            Flatten(),
            BatchNorm(
                np.array([0.7497006881301395, 1.4959663698075154]),
                np.array([-0.4929016584965423, 0.03536471262292806]),
            ),
            Dense(
                np.array(
                    [
                        [-6.227111246550656e-171, -4.640635816190053e-171],
                        [-4.751861377506478e-171, 2.6883428526241993e-171],
                    ]
                ),
                np.zeros(2),
            ),
        ],
        (1, 2, 2),
    )
    x = np.array(
        [[0.5495936876730595, 0.027559113243068367], [0.7535131086748066, 0.5381433132192782]]
    )[None, None]
    res = ProjectionsEngine().check(net, LocalRobustness(0.05, Norm.L2), x[0][None])[0]
    assert res.verdict is not Verdict.CERTIFIED, res.detail


@settings(deadline=None, max_examples=10)
@given(st.integers(0, 2**16), st.sampled_from([1e-171, 1e-250, 1e-300]))
def test_the_gram_route_is_sound_with_tiny_heads(seed, scale):
    """More inputs than first-layer neurons (the Gram route) and heads whose squares
    underflow: the verdicts survive the attacks."""
    from verispec.network import Dense, ReLU

    rng = np.random.default_rng(seed)
    d, h = 6, 3
    net = Network(
        [
            Dense(rng.normal(size=(h, d)), rng.normal(size=h) * 0.3),
            ReLU(),
            Dense(rng.normal(size=(2, h)) * scale, np.zeros(2)),
        ],
        (d,),
    )
    xs = rng.uniform(0, 1, (8, d))
    problems = soundness_problems(
        ProjectionsEngine(), net, LocalRobustness(0.3, Norm.L2), xs, Box.uniform(0, 1, (d,))
    )
    assert not problems, "\n".join(problems)
