"""The exact solvers as engines: ``--engine milp`` / ``--engine smt`` on spec files.

Each point is compiled to its goal (``spec.at``) and decided by the solver, one point at a
time (the solvers are complete, not batched). Every spec kind is supported: local robustness,
relaxed top-k (``F(x') in top_k(x)``), affinity (one alternative per group holding the
predicted class) and safe ordering (one global property).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from verispec.engines.base import EngineBase, register_engine
from verispec.network import Network
from verispec.regions import Box, FloatArray
from verispec.results import BatchResult, CheckResult, Verdict
from verispec.solvers.base import SolverConfig, solver_class
from verispec.specs import PointSpec, SafeOrdering, Spec


class ExactEngine(EngineBase):
    """Decide each point's goal with an exact solver (``solver_name``)."""

    name: ClassVar[str] = ""
    solver_name: ClassVar[str] = ""
    Config = SolverConfig

    def __init__(self, config: SolverConfig | None = None) -> None:
        self.config = config or SolverConfig()
        self.solver: Any = solver_class(self.solver_name)(self.config)

    def _supports(self, network: Network, spec: Spec) -> None:
        """Lowering raises UnsupportedError for networks too large to encode."""
        self.solver.lowered(network)

    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        results = []
        for x in xs:
            y = network.forward64(x[None])[0]
            goal = spec.at(x, y, domain)
            if goal.alternatives:
                result = self.solver.solve_goal(network, goal)
            else:  # ``check`` falsified the empty goals; a pass rounding differently at a tie
                result = CheckResult(
                    Verdict.UNKNOWN, self.name, detail="near-tie: predicted class in no group"
                )
            results.append(attrs.evolve(result, engine=self.name, predicted=int(y.argmax())))
        return BatchResult.from_results(results, engine=self.name)

    def _decide_global(self, network: Network, spec: SafeOrdering) -> CheckResult:
        result: CheckResult = self.solver.solve(network, spec.as_property())
        return result


@register_engine("milp")
class MilpEngine(ExactEngine):
    """Mixed-integer programming (HiGHS; SCIP for l2 balls)."""

    name = "milp"
    solver_name = "milp"


@register_engine("smt")
class SmtEngine(ExactEngine):
    """z3 in exact real arithmetic."""

    name = "smt"
    solver_name = "smt"
