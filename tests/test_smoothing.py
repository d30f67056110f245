"""Randomized smoothing: the confidence bound, radii against a closed form, abstention,
determinism, each point's own noise stream (keyed by seed and index, not by chunk or batch)
and PREDICT."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import verispec.api
from tests.soundness import linear_binary_net
from verispec.data import Dataset
from verispec.engines import smoothing
from verispec.engines.smoothing import (
    MAX_POINT_INDEX,
    NO_CLASS,
    NoiseSource,
    Phase,
    PointNoise,
    SmoothingConfig,
    SmoothingEngine,
    best_radius,
    clopper_pearson_lower,
)
from verispec.errors import SpecError, UnsupportedError
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
    counts = engine.counts(net, xs, 1000, NoiseSource(0, Phase.ESTIMATE))
    assert counts.shape == (4, 2) and (counts.sum(axis=1) == 1000).all()


# -- each point its own noise -------------------------------------------------------------------


def _noise(source, indices, num, shape, cuts):
    """The noise rows of ``num`` samples at ``indices``, filled in pieces of the given sizes."""
    noise = PointNoise(source, np.asarray(indices), num, shape, torch.device("cpu"))
    out = torch.empty((len(indices) * num, *shape))
    start = 0
    for size in cuts:
        noise.fill(out[start : start + size])
        start += size
    assert start == len(out)
    return out.reshape(len(indices), num, *shape)


def _cuts(total, size):
    return [min(size, total - s) for s in range(0, total, size)]


@pytest.mark.parametrize("block_elements", [1 << 20, 30, 1])
def test_noise_depends_on_seed_phase_and_index_only_not_on_batching(monkeypatch, block_elements):
    """Blocks of 10 samples (30 elements / 3) and of one sample, cut across fills of every size:
    each point's rows are the same as drawn alone in one piece."""
    monkeypatch.setattr(smoothing, "BLOCK_ELEMENTS", block_elements)
    source, shape, num = NoiseSource(3, Phase.ESTIMATE), (3,), 47
    indices = [0, 1, 5, 1024, 1025]
    whole = _noise(source, indices, num, shape, [len(indices) * num])
    for size in (1, 7, 10, 46, 47, 48, 100, 1000):
        cut = _noise(source, indices, num, shape, _cuts(len(indices) * num, size))
        assert torch.equal(cut, whole), size
    for k, i in enumerate(indices):  # alone, in one piece
        assert torch.equal(_noise(source, [i], num, shape, [num])[0], whole[k])
    assert not torch.equal(whole[0], whole[3])  # j and j + 1024
    assert not torch.equal(whole[1], whole[4])
    assert (whole.reshape(len(indices), -1).std(dim=1) > 0.7).all()  # N(0, 1) noise
    other_phase = _noise(NoiseSource(3, Phase.SELECT), indices, num, shape, [len(indices) * num])
    other_seed = _noise(NoiseSource(4, Phase.ESTIMATE), indices, num, shape, [len(indices) * num])
    for k in range(len(indices)):
        assert not torch.equal(other_phase[k], whole[k])
        assert not torch.equal(other_seed[k], whole[k])


def test_noise_fills_must_not_run_past_the_points():
    noise = PointNoise(NoiseSource(0, Phase.SELECT), np.arange(2), 5, (2,), torch.device("cpu"))
    noise.fill(torch.empty((6, 2)))
    with pytest.raises(ValueError, match=r"noise rows 6\.\.11"):
        noise.fill(torch.empty((5, 2)))


def test_stream_seeds_are_distinct_for_every_point_and_phase_of_a_run():
    """Injective by construction (bijections of the stream number); checked on 3 x 40,000."""
    for seed in (0, 1, 2**40 + 7):
        seeds = {NoiseSource(seed, phase).stream_seed(i) for phase in Phase for i in range(40_000)}
        assert len(seeds) == 3 * 40_000
        assert all(0 <= s < 2**32 for s in seeds)
    assert NoiseSource(0, Phase.SELECT).stream_seed(MAX_POINT_INDEX) >= 0
    for bad in (-1, MAX_POINT_INDEX + 1):
        with pytest.raises(SpecError, match="point index"):
            NoiseSource(0, Phase.SELECT).stream_seed(bad)


SPEC = LocalRobustness(0.01, Norm.L2)
NEAR = np.random.default_rng(0).uniform(0.3, 0.5, (60, 2))  # near the boundary: counts matter


def _boundary_net():
    return linear_binary_net(np.array([1.0, -1.0]), 0.0)  # p_A = 1/2 at x1 = x2


def _dataset(xs):
    return Dataset(x=xs, y=np.zeros(len(xs), dtype=np.int64), name="points")


def test_identical_points_of_a_run_get_independent_noise(monkeypatch):
    """1100 copies of one point on the decision boundary, checked by verispec.check (in chunks)
    with batches of 500 rows: with shared noise the count vectors of points j and j + 1024 (and
    j + 500) would be equal; independent ones tie rarely (n = 200: about 4%)."""
    recorded = {}
    counts = SmoothingEngine.counts

    def spy(self, network, xs, num, source):
        out = counts(self, network, xs, num, source)
        for i, row in zip(self.point_indices(len(xs)).tolist(), out.tolist(), strict=True):
            assert (source.phase, i) not in recorded  # every point counted once per phase
            recorded[source.phase, i] = tuple(row)
        return out

    monkeypatch.setattr(SmoothingEngine, "counts", spy)
    xs = np.full((1100, 2), 0.4)
    engine = SmoothingEngine(SmoothingConfig(n0=50, n=200, batch_size=500, seed=11))
    report = verispec.api.check(_boundary_net(), SPEC, _dataset(xs), engine=engine)
    assert len(report.results) == 1100
    assert len(recorded) == 2 * 1100
    for phase in (Phase.SELECT, Phase.ESTIMATE):
        for shift in (1024, 500):
            pairs = [(j, j + shift) for j in range(1100 - shift)]
            tied = sum(recorded[phase, a] == recorded[phase, b] for a, b in pairs)
            assert tied <= 0.15 * len(pairs), (phase, shift, tied, len(pairs))
    n_a = np.array([max(recorded[Phase.ESTIMATE, i]) for i in range(1100)])
    assert n_a.std() > 3  # binomial spread (sd about 7), not one repeated vector


def _outcomes(results):
    return [(r.verdict, r.radius, r.predicted, r.detail) for r in results]


def _chunked(seed, chunk, batch_size):
    """The engine on ``NEAR`` in chunks, numbered by their first index or by index arrays."""
    engine = SmoothingEngine(SmoothingConfig(n0=30, n=400, batch_size=batch_size, seed=seed))
    out = []
    for k, lo in enumerate(range(0, len(NEAR), chunk)):
        hi = min(len(NEAR), lo + chunk)
        part = engine.numbered(lo if k % 2 else np.arange(lo, hi))
        out += _outcomes(part.check(_boundary_net(), SPEC, NEAR[lo:hi]))
    return out


def test_same_seed_same_results_whatever_the_chunk_and_batch_size():
    reference = _chunked(5, len(NEAR), 10_000)
    for chunk, batch_size in [(7, 10_000), (len(NEAR), 97), (13, 31), (1, 400), (8, 1)]:
        assert _chunked(5, chunk, batch_size) == reference, (chunk, batch_size)
    engine = SmoothingEngine(SmoothingConfig(n0=30, n=400, batch_size=50, seed=5))
    report = verispec.api.check(_boundary_net(), SPEC, _dataset(NEAR), engine=engine)
    assert _outcomes(report.results) == reference  # verispec.check numbers its chunks alike
    other = _chunked(6, len(NEAR), 10_000)
    assert other != reference
    details = [r[3] for r in reference]
    assert len(set(details)) > 20  # p_A bounds differ from point to point
    assert sum(a != b for a, b in zip(details, [r[3] for r in other], strict=True)) > 40


def test_numbered_engines_key_the_noise_by_the_given_indices():
    net, x, _, _ = _case(5)
    xs = np.stack([x, x, x])
    engine = SmoothingEngine(SmoothingConfig(n=500, seed=2))
    together = engine.numbered([7, 3, 2000]).certify(net, xs)
    for k, i in enumerate([7, 3, 2000]):
        alone = engine.numbered(i).certify(net, x[None])
        assert [float(a[k]) for a in together] == [float(a[0]) for a in alone]
    assert engine.numbered(0).certify(net, xs)[1].tolist() == engine.certify(net, xs)[1].tolist()
    shifted = engine.numbered(1).certify(net, xs)[1].tolist()
    assert shifted[:2] == engine.certify(net, xs)[1].tolist()[1:]
    assert engine.point_indices(3).tolist() == [0, 1, 2]  # the engine itself is unchanged
    with pytest.raises(SpecError, match="numbered for 2 points, given 3"):
        engine.numbered([0, 1]).certify(net, xs)
    with pytest.raises(SpecError, match="distinct"):
        engine.numbered([4, 4, 5])
    for bad in (-1, [0, -3], [[0, 1]], [0.5, 1.5], MAX_POINT_INDEX + 1):
        with pytest.raises(SpecError):
            engine.numbered(bad)
    with pytest.raises(SpecError, match="too long"):
        engine.numbered(MAX_POINT_INDEX).certify(net, xs)


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
