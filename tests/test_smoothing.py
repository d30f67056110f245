"""Randomized smoothing: the confidence bound, radii against a closed form, abstention,
determinism and PREDICT."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from tests.soundness import linear_binary_net
from verispec.engines.smoothing import (
    NO_CLASS,
    SmoothingConfig,
    SmoothingEngine,
    best_radius,
    clopper_pearson_lower,
)
from verispec.errors import UnsupportedError
from verispec.regions import Norm
from verispec.results import GuaranteeKind, Verdict
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK


@pytest.mark.parametrize("n", [1, 10, 1000, 100_000])
def test_clopper_pearson_is_the_beta_quantile_and_an_exact_tail_bound(n):
    ks = np.unique(np.linspace(0, n, 7).astype(int))
    alpha = 0.001
    lower = clopper_pearson_lower(ks, n, alpha)
    for k, p in zip(ks, lower, strict=True):
        if k == 0:
            assert p == 0.0
            continue
        assert p == pytest.approx(stats.beta.ppf(alpha, k, n - k + 1), rel=1e-12)
        # defining property: seeing >= k successes has probability alpha when p is the truth
        assert stats.binom.sf(k - 1, n, p) == pytest.approx(alpha, rel=1e-6)


def test_best_radius_matches_all_successes_formula():
    sigma, n, alpha = 0.5, 1000, 0.01
    assert best_radius(sigma, n, alpha) == pytest.approx(sigma * stats.norm.ppf(alpha ** (1 / n)))
    assert best_radius(sigma, 3, 0.1) == 0.0  # 0.1 ** (1/3) = 0.46 < 1/2: nothing certifiable


def _case(seed: int):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(3)
    x = rng.uniform(0, 1, 3)
    b = float(rng.normal(0, 0.3) - w @ x)
    return linear_binary_net(w, b), x, abs(w @ x + b) / np.linalg.norm(w), int(w @ x + b <= 0)


def test_radius_never_exceeds_the_exact_smoothed_radius_across_seeds():
    """Each certificate fails with probability <= alpha = 1e-6: over 200 seeds, never."""
    over = 0
    for seed in range(200):
        net, x, true_radius, g = _case(seed)
        engine = SmoothingEngine(SmoothingConfig(sigma=0.5, n=2000, alpha=1e-6, seed=seed))
        c, _, radius = engine.certify(net, x[None])
        if np.isfinite(radius[0]):
            assert c[0] == g
            over += radius[0] > true_radius
    assert over == 0


def test_radius_is_close_to_the_exact_one_at_large_n():
    net, x, true_radius, _ = _case(3)
    engine = SmoothingEngine(SmoothingConfig(sigma=0.5, n=200_000, alpha=0.001))
    _, _, radius = engine.certify(net, x[None])
    assert true_radius * 0.97 <= radius[0] <= true_radius


def test_abstains_on_the_decision_boundary_and_when_n_is_too_small():
    net = linear_binary_net(np.array([1.0, -1.0]), 0.0)
    on_boundary = np.array([[0.4, 0.4]])
    engine = SmoothingEngine(SmoothingConfig(n=5000))
    (res,) = engine.check(net, LocalRobustness(0.01, Norm.L2), on_boundary)
    assert res.verdict is Verdict.ABSTAIN and res.predicted == NO_CLASS and res.radius is None
    tiny = SmoothingEngine(SmoothingConfig(n=5, alpha=0.05))  # 0.05 ** (1/5) = 0.55: p > 1/2
    far = np.array([[5.0, 0.0]])
    with pytest.warns(UserWarning, match="certification impossible"):
        (res,) = tiny.check(net, LocalRobustness(1.0, Norm.L2), far)
    assert res.verdict is not Verdict.CERTIFIED
    assert res.warnings and "certification impossible" in res.warnings[0]
    hopeless = SmoothingEngine(SmoothingConfig(n=3, alpha=0.05))  # 0.05 ** (1/3) = 0.37
    with pytest.warns(UserWarning):
        (res,) = hopeless.check(net, LocalRobustness(0.01, Norm.L2), far)
    assert res.verdict is Verdict.ABSTAIN


def test_results_are_probabilistic_and_deterministic_for_a_seed():
    net, x, _, _ = _case(1)
    xs = np.stack([x, x * 0.5, 1 - x])
    spec = LocalRobustness(0.05, Norm.L2)
    first = SmoothingEngine(SmoothingConfig(n=3000, seed=7, batch_size=700)).check(net, spec, xs)
    again = SmoothingEngine(SmoothingConfig(n=3000, seed=7, batch_size=700)).check(net, spec, xs)
    other = SmoothingEngine(SmoothingConfig(n=3000, seed=8, batch_size=700)).check(net, spec, xs)
    assert [r.radius for r in first] == [r.radius for r in again]
    assert [r.radius for r in first] != [r.radius for r in other]
    for r in first:
        assert r.guarantee is GuaranteeKind.PROBABILISTIC
        assert r.confidence == pytest.approx(0.999)
        assert "smoothed classifier" in r.detail and "seed=7" in r.detail


def test_counts_are_shared_across_points_and_add_up():
    net, x, _, _ = _case(2)
    xs = np.stack([x, x + 0.1, x - 0.1, x * 0.3])
    engine = SmoothingEngine(SmoothingConfig(batch_size=333))
    import torch

    gen = torch.Generator()
    gen.manual_seed(0)
    counts = engine.counts(net, xs, 1000, gen)
    assert counts.shape == (4, 2) and (counts.sum(axis=1) == 1000).all()


def test_predict_abstains_near_one_half_and_answers_far_away():
    net = linear_binary_net(np.array([1.0, 0.0]), 0.0)
    engine = SmoothingEngine(SmoothingConfig(n=2000, alpha=0.001))
    pred = engine.predict(net, np.array([[0.0, 0.3], [2.0, 0.0], [-2.0, 0.0]]))
    assert pred.classes.tolist() == [NO_CLASS, 0, 1]
    assert pred.p_values[0] > 0.001 >= pred.p_values[1]


def test_supports_only_l2_local_robustness():
    net = linear_binary_net(np.ones(2), 0.0)
    engine = SmoothingEngine()
    engine.supports(net, LocalRobustness(0.1, Norm.L2))
    for spec in (
        LocalRobustness(0.1, Norm.LINF),
        RelaxedTopK(1, 0.1, Norm.L2),
        Affinity([[0], [1]], 0.1, Norm.L2),
    ):
        with pytest.raises(UnsupportedError):
            engine.supports(net, spec)


def test_certified_only_when_radius_exceeds_eps():
    net, x, _, _ = _case(4)
    engine = SmoothingEngine(SmoothingConfig(n=5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, radius = engine.certify(net, x[None])
        below = engine.check(net, LocalRobustness(radius[0] * 0.99, Norm.L2), x[None])[0]
        above = engine.check(net, LocalRobustness(radius[0] * 1.01, Norm.L2), x[None])[0]
    assert below.verdict is Verdict.CERTIFIED
    assert above.verdict is Verdict.UNKNOWN
