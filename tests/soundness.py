"""The soundness check every engine goes through, and engines that are broken on purpose.

``soundness_problems`` audits an engine's verdicts on one case: every CERTIFIED point must
survive the exact MILP solver, PGD and sampling; every FALSIFIED witness must re-check. The
broken engines reproduce published bug classes; tests use them to show the check can fail.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np
from verispec.solvers.base import SolverConfig
from verispec.solvers.milp import MilpSolver

from verispec.attacks import pgd_attack, sample_attack
from verispec.audit import audit, goals_at
from verispec.engines.lipschitz import LipschitzBounds, LipschitzEngine
from verispec.engines.projections import ProjectionsConfig
from verispec.engines.smoothing import SmoothingConfig, SmoothingEngine
from verispec.network import Network
from verispec.properties import Goal
from verispec.regions import Box, FloatArray, Norm
from verispec.results import CheckResult, GuaranteeKind, Verdict
from verispec.specs import LocalRobustness, Spec

EXACT_ENGINES = frozenset({"milp", "smt"})
"""Engines that wrap the exact solvers: they are the reference, not audited here."""

ENGINE_CONFIGS: dict[str, Any] = {
    "smoothing": SmoothingConfig(n=1000, alpha=0.01),
    "projections": ProjectionsConfig(max_regions=2000, time_per_point=5.0),
}
"""Test configuration per engine name (engines with usable defaults need no entry)."""


def _attack(network: Network, goal: Goal, rng: np.random.Generator) -> FloatArray | None:
    """A point refuting the goal (every alternative) found by sampling or PGD, or None."""
    for prop in goal.alternatives:
        for w in (sample_attack(network, prop, 300, rng), pgd_attack(network, prop, rng, 30, 4)):
            if w is not None and goal.is_counterexample(w, network.forward64(w[None])[0]):
                return w
    return None


def soundness_problems(
    engine: Any,
    network: Network,
    spec: Spec,
    xs: FloatArray,
    domain: Box | None,
    seed: int = 0,
    timeout: float = 60.0,
) -> list[str]:
    """Every reason the engine's verdicts on this case are unsound (empty when sound)."""
    solver = MilpSolver(SolverConfig(timeout=timeout, seed=seed))
    report = audit(engine, solver, network, spec, xs, None, domain, timeout)
    problems = [f"{v.kind.value} at point {v.index}: {v.detail}" for v in report.violations]
    rng = np.random.default_rng(seed)
    points = report.engine_results
    for i, (goal, claim) in enumerate(
        zip(goals_at(network, spec, xs, domain), points, strict=True)
    ):
        if claim.verdict is Verdict.CERTIFIED and goal.alternatives:
            w = _attack(network, goal, rng)
            if w is not None:
                problems.append(f"point {i}: certified, but an attack refutes it at {w}")
    return problems


class ScaledKEngine(LipschitzEngine):
    """The Lipschitz engine with every constant multiplied by ``factor`` (< 1: unsound, like a
    normalisation constant that under-estimates spectral norms)."""

    name = "scaled-k"
    factor: ClassVar[float] = 0.95

    def bounds(self, network: Network, norm: Norm) -> LipschitzBounds:
        b = super().bounds(network, norm)
        return attrs.evolve(b, body=b.body * self.factor)


class TieMaskingEngine:
    """The published tie-masking bug: class pairs with K_ij = 0 are skipped, so a point whose
    top two logits tie exactly (identical rows) is certified with an infinite radius."""

    name = "tie-masking"

    def supports(self, network: Network, spec: Spec) -> None:
        assert isinstance(spec, LocalRobustness)

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> list[CheckResult]:
        assert isinstance(spec, LocalRobustness)
        K = LipschitzEngine().bounds(network, spec.norm).pairwise()
        out = []
        for y in network.forward64(xs):
            c = int(np.argmax(y))
            radii = [(y[c] - y[j]) / K[c, j] for j in range(y.size) if j != c and K[c, j] > 0]
            radius = min(radii, default=float("inf"))
            verdict = Verdict.CERTIFIED if radius > spec.eps else Verdict.UNKNOWN
            out.append(CheckResult(verdict, self.name, predicted=c, radius=radius))
        return out


class FalseWitnessEngine:
    """Claims every point is FALSIFIED by the point itself (a bad witness when it is robust)."""

    name = "false-witness"

    def supports(self, network: Network, spec: Spec) -> None:
        """Everything."""

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> list[CheckResult]:
        return [CheckResult(Verdict.FALSIFIED, self.name, counterexample=x) for x in xs]


def is_probabilistic(results: list[CheckResult]) -> bool:
    return any(r.guarantee is GuaranteeKind.PROBABILISTIC for r in results)


def linear_binary_net(w: FloatArray, b: float) -> Network:
    """f(x) = (w.x + b, 0): class 0 iff w.x + b > 0. Its Gaussian-smoothed classifier equals f
    (P[f(x + d) = 0] = Phi((w.x + b) / (sigma ||w||))), so g's exact robust radius at x is the
    distance |w.x + b| / ||w|| to the hyperplane."""
    import torch
    from torch import nn

    lin = nn.Linear(w.size, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.stack([w, np.zeros_like(w)])))
        lin.bias.copy_(torch.tensor([b, 0.0]))
    return Network.from_torch(lin, (w.size,))


def probabilistic_wrong_certificates(engine: Any, cases: int, seed: int = 0) -> tuple[int, int]:
    """(wrong, certified) over ``cases`` linear binary problems with eps near the exact radius:
    a certificate is wrong when the smoothed prediction is not g(x) or the exact radius of g is
    <= eps."""
    rng = np.random.default_rng(seed)
    wrong = certified = 0
    for _ in range(cases):
        d = int(rng.integers(2, 6))
        w = rng.standard_normal(d)
        x = rng.uniform(0, 1, d)
        b = float(rng.normal(0, 0.3) - w @ x)
        net = linear_binary_net(w, b)
        true_radius = abs(w @ x + b) / np.linalg.norm(w)
        eps = float(true_radius * rng.uniform(0.5, 1.5)) + 1e-6
        (res,) = engine.check(net, LocalRobustness(eps, Norm.L2), x[None])
        if res.verdict is Verdict.CERTIFIED:
            certified += 1
            g = 0 if w @ x + b > 0 else 1
            wrong += res.predicted != g or true_radius <= eps
    return wrong, certified


class PointEstimateSmoothing(SmoothingEngine):
    """Smoothing that uses the empirical p_A instead of its lower confidence bound: unsound."""

    name = "point-estimate-smoothing"

    def certify(self, network: Network, xs: FloatArray) -> Any:
        guess, _, _ = super().certify(network, xs)
        counts = self.counts(network, xs, self.config.n, self._generator())
        p = counts[np.arange(len(guess)), guess] / self.config.n
        from scipy import stats

        with np.errstate(divide="ignore"):
            radius = np.where(
                p > 0.5, self.config.sigma * stats.norm.ppf(np.minimum(p, 1 - 1e-12)), -np.inf
            )
        return guess, p, radius
