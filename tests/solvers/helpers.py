"""Shared checks for the exact-solver tests: sampling regions and confirming verdicts."""

from __future__ import annotations

import numpy as np

from verispec.attacks import pgd_attack
from verispec.exact_forward import exact_logits
from verispec.network import Network
from verispec.properties import Goal, Property
from verispec.regions import Ball, Box, Norm, Polytope
from verispec.results import CheckResult, Verdict


def _corners(lo: np.ndarray, hi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    pick = rng.integers(0, 2, size=(n, *lo.shape)).astype(bool)
    return np.where(pick, hi, lo)


def sample_region(region: Box | Ball | Polytope, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` points (n', *shape) of the region: uniform, with corners of boxes and the
    surface of l2 balls over-represented; a polytope is sampled by rejection from its box."""
    if isinstance(region, Box):
        pts = rng.uniform(region.lo, region.hi, size=(n, *region.lo.shape))
        pts[: n // 4] = _corners(region.lo, region.hi, n // 4, rng)
        return pts
    if isinstance(region, Polytope):
        assert region.box is not None, "the tests only sample polytopes with a box"
        pts = sample_region(region.box, 4 * n, rng)
        inside = np.array([region.contains(p) for p in pts])
        return pts[inside][:n]
    shape = region.center.shape
    if region.norm is Norm.LINF:
        lo, hi = region.center - region.eps, region.center + region.eps
        if region.domain is not None:
            lo, hi = np.maximum(lo, region.domain.lo), np.minimum(hi, region.domain.hi)
        return sample_region(Box(lo, hi), n, rng)
    d = rng.standard_normal((n, int(np.prod(shape))))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    radii = region.eps * rng.uniform(0, 1, size=(n, 1)) ** (1 / d.shape[1])
    radii[: n // 4] = region.eps
    pts = region.center + (d * radii).reshape((n, *shape))
    # Clipping to the domain moves every coordinate towards the centre: it stays in the ball.
    return pts if region.domain is None else region.domain.clip(pts)


def holds_on_samples(network: Network, prop: Property, n: int = 2000, seed: int = 0) -> bool:
    """Whether no sampled point nor PGD finds a float64 counterexample to ``prop``."""
    rng = np.random.default_rng(seed)
    pts = sample_region(prop.region, n, rng)
    if len(pts):
        y = network.forward64(pts)
        for x, yi in zip(pts, y, strict=True):
            if prop.is_counterexample(x, yi):
                return False
    return pgd_attack(network, prop, rng, restarts=8) is None


def _exact_counterexample(network: Network, prop: Property, w: np.ndarray) -> bool:
    """Whether ``w`` lies in the region and violates the predicate in exact arithmetic (a
    witness at a near-tie can violate it exactly while float64 rounds it the other way)."""
    return prop.region.contains(w) and prop.predicate.exact_slack(exact_logits(network, w)) <= 0


def assert_confirmed(network: Network, prop: Property, result: CheckResult) -> None:
    """A FALSIFIED witness re-checks in float64, or at a near-tie in exact arithmetic; a
    CERTIFIED answer survives dense sampling and PGD."""
    if result.verdict is Verdict.FALSIFIED:
        w = result.counterexample
        assert w is not None and w.shape == network.input_shape
        float64 = prop.is_counterexample(w, network.forward64(w[None])[0])
        assert float64 or _exact_counterexample(network, prop, w), result.detail
    elif result.verdict is Verdict.CERTIFIED:
        assert holds_on_samples(network, prop), f"certified, yet sampling refutes: {result}"


def assert_goal_confirmed(network: Network, goal: Goal, result: CheckResult) -> None:
    """The goal version: a FALSIFIED witness refutes every alternative; a CERTIFIED goal has
    an alternative that survives dense sampling."""
    if result.verdict is Verdict.FALSIFIED:
        w = result.counterexample
        assert w is not None
        assert goal.is_counterexample(w, network.forward64(w[None])[0]), result.detail
    elif result.verdict is Verdict.CERTIFIED:
        assert any(holds_on_samples(network, p) for p in goal.alternatives), str(result)
