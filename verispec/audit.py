"""Audit an engine's claims against an exact solver.

For every point the engine checks, the exact solver decides the same goal. A point the engine
CERTIFIED and the solver FALSIFIED (with its float64-confirmed witness) is a **soundness
violation**; so is an engine FALSIFIED whose witness does not re-check. The report also gives
the engine's tightness: of the points the solver proves, the share the engine certified too,
and the time each side took.

Engines whose guarantee is probabilistic (randomized smoothing) certify a smoothed classifier,
not the network itself: their certificates are not comparable with an exact solver's, and
``audit`` refuses them (their statistical check lives in the soundness test suite).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from verispec.engines.base import Engine
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.properties import Goal
from verispec.regions import Box, FloatArray
from verispec.results import BatchResult, CheckResult, GuaranteeKind, Verdict
from verispec.specs import SafeOrdering, Spec


class ViolationKind(enum.Enum):
    """How an engine's claim was refuted."""

    UNSOUND_CERTIFICATE = "unsound_certificate"
    BAD_WITNESS = "bad_witness"


@attrs.frozen(eq=False)
class Violation:
    """One refuted claim: the point, the witness, and the predicate's slack (the margin: > 0
    means the property holds there) at the point and at the witness."""

    kind: ViolationKind
    index: int
    point: FloatArray | None
    witness: FloatArray
    point_margin: float
    witness_margin: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "index": self.index,
            "point": None if self.point is None else self.point.ravel().tolist(),
            "witness": self.witness.ravel().tolist(),
            "point_margin": self.point_margin,
            "witness_margin": self.witness_margin,
            "detail": self.detail,
        }


def _results(value: Sequence[CheckResult]) -> tuple[CheckResult, ...]:
    return value.results() if isinstance(value, BatchResult) else tuple(value)


def _violations(value: Sequence[Violation]) -> tuple[Violation, ...]:
    return tuple(value)


@attrs.frozen(eq=False)
class AuditReport:
    """Engine and solver verdicts side by side, the violations, tightness and times."""

    engine: str
    solver: str
    spec: str
    engine_results: tuple[CheckResult, ...] = attrs.field(converter=_results)
    solver_results: tuple[CheckResult, ...] = attrs.field(converter=_results)
    violations: tuple[Violation, ...] = attrs.field(converter=_violations)
    engine_time_s: float
    solver_time_s: float

    @property
    def points(self) -> int:
        return len(self.engine_results)

    def _count(self, results: tuple[CheckResult, ...], verdict: Verdict) -> int:
        return sum(r.verdict is verdict for r in results)

    @property
    def solver_proved(self) -> int:
        return self._count(self.solver_results, Verdict.CERTIFIED)

    @property
    def tightness(self) -> float | None:
        """Of the points the solver proves, the share the engine certified (None if none)."""
        both = sum(
            e.verdict is Verdict.CERTIFIED and s.verdict is Verdict.CERTIFIED
            for e, s in zip(self.engine_results, self.solver_results, strict=True)
        )
        return both / self.solver_proved if self.solver_proved else None

    @property
    def sound(self) -> bool:
        return not self.violations

    def summary(self) -> dict[str, Any]:
        e, s = self.engine_results, self.solver_results
        return {
            "engine": self.engine,
            "solver": self.solver,
            "spec": self.spec,
            "points": self.points,
            "engine_certified": self._count(e, Verdict.CERTIFIED),
            "engine_falsified": self._count(e, Verdict.FALSIFIED),
            "solver_certified": self.solver_proved,
            "solver_falsified": self._count(s, Verdict.FALSIFIED),
            "solver_undecided": self.points
            - self.solver_proved
            - self._count(s, Verdict.FALSIFIED),
            "violations": len(self.violations),
            "tightness": self.tightness,
            "engine_time_s": self.engine_time_s,
            "solver_time_s": self.solver_time_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "violations": [v.to_dict() for v in self.violations],
            "engine_results": [r.to_dict() for r in self.engine_results],
            "solver_results": [r.to_dict() for r in self.solver_results],
        }


def _goal_margin(network: Network, goal: Goal, x: FloatArray) -> float:
    """The best alternative's predicate slack at ``x`` (> 0: the goal's predicate holds)."""
    y = network.forward64(np.asarray(x)[None])
    return float(max(p.predicate.slack(y)[0] for p in goal.alternatives))


def _check_witness(network: Network, goal: Goal, witness: FloatArray) -> bool:
    y = network.forward64(np.asarray(witness)[None])[0]
    return goal.is_counterexample(witness, y)


def audit(
    engine: Engine,
    solver: Any,
    network: Network,
    spec: Spec,
    points: FloatArray | None = None,
    labels: np.ndarray | None = None,
    domain: Box | None = None,
    timeout: float | None = None,
) -> AuditReport:
    """Run ``engine`` on every point, then ``solver`` (an exact solver) on the same goals; report
    every soundness violation. A ``SafeOrdering`` spec is global: no points."""
    engine.supports(network, spec)
    if isinstance(spec, SafeOrdering):
        xs = np.zeros((0, *network.input_shape))
    elif points is None:
        raise UnsupportedError("auditing a point spec needs points")
    else:
        xs = np.asarray(points, dtype=np.float64).reshape((-1, *network.input_shape))
    start = time.perf_counter()
    engine_results = engine.check(network, spec, xs, labels, domain)
    engine_time = time.perf_counter() - start
    if (
        engine_results.probabilistic
        if isinstance(engine_results, BatchResult)
        else any(r.guarantee is GuaranteeKind.PROBABILISTIC for r in engine_results)
    ):
        raise UnsupportedError(
            f"engine {engine.name!r} gives probabilistic guarantees about a smoothed classifier: "
            "an exact solver cannot audit them"
        )
    goals = goals_at(network, spec, xs, domain)
    start = time.perf_counter()
    solver_results, violations = [], []
    for i, (goal, claim) in enumerate(zip(goals, engine_results, strict=True)):
        point = None if isinstance(spec, SafeOrdering) else xs[i]
        if goal.alternatives:
            res = solver.solve_goal(network, goal, timeout)
        else:
            res = CheckResult(
                Verdict.FALSIFIED,
                solver.name,
                detail="predicted class is in no group",
                counterexample=xs[i],
            )
        solver_results.append(res)
        violations += _refutations(network, goal, i, point, claim, res)
    return AuditReport(
        engine=engine.name,
        solver=solver.name,
        spec=_describe(spec),
        engine_results=engine_results,
        solver_results=solver_results,
        violations=violations,
        engine_time_s=engine_time,
        solver_time_s=time.perf_counter() - start,
    )


def goals_at(network: Network, spec: Spec, xs: FloatArray, domain: Box | None) -> list[Goal]:
    """The goal of ``spec`` at each point (one global goal for a safe-ordering spec)."""
    if isinstance(spec, SafeOrdering):
        return [Goal((spec.as_property(),))]
    logits = network.forward64(xs)
    return [spec.at(x, y, domain) for x, y in zip(xs, logits, strict=True)]


def _refutations(
    network: Network,
    goal: Goal,
    index: int,
    point: FloatArray | None,
    claim: CheckResult,
    exact: CheckResult,
) -> list[Violation]:
    out = []
    point_margin = float("nan")
    if point is not None and goal.alternatives:
        point_margin = _goal_margin(network, goal, point)
    w = exact.counterexample  # present exactly when the solver says FALSIFIED
    if claim.verdict is Verdict.CERTIFIED and w is not None:
        out.append(
            Violation(
                ViolationKind.UNSOUND_CERTIFICATE,
                index,
                point,
                w,
                point_margin,
                _goal_margin(network, goal, w) if goal.alternatives else float("nan"),
                f"{claim.engine} certified; {exact.engine} found a counterexample ({exact.detail})",
            )
        )
    if claim.verdict is Verdict.FALSIFIED and claim.counterexample is not None:
        w = claim.counterexample
        if goal.alternatives and not _check_witness(network, goal, w):
            out.append(
                Violation(
                    ViolationKind.BAD_WITNESS,
                    index,
                    point,
                    w,
                    point_margin,
                    _goal_margin(network, goal, w),
                    f"{claim.engine}'s witness does not violate the property in float64",
                )
            )
    return out


def _describe(spec: Spec) -> str:
    from verispec.api import describe

    return describe(spec)
