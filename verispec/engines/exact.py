"""The exact solvers as engines: ``--engine milp`` / ``--engine smt`` on spec files.

Each point is compiled to its goal (``spec.at``) and decided by the solver, one point at a
time (the solvers are complete, not batched). Every spec kind is supported: local robustness,
relaxed top-k (``F(x') in top_k(x)``), affinity (one alternative per group holding the
predicted class) and safe ordering (one global property).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from verispec.engines.base import register_engine
from verispec.network import Network
from verispec.regions import Box, FloatArray
from verispec.results import CheckResult, Verdict
from verispec.solvers.base import SolverConfig, solver_class
from verispec.specs import SafeOrdering, Spec


class ExactEngine:
    """Decide each point's goal with an exact solver (``solver_name``)."""

    name: ClassVar[str] = ""
    solver_name: ClassVar[str] = ""
    Config = SolverConfig

    def __init__(self, config: SolverConfig | None = None) -> None:
        self.config = config or SolverConfig()
        self.solver: Any = solver_class(self.solver_name)(self.config)

    def supports(self, network: Network, spec: Spec) -> None:
        """Lowering raises UnsupportedError for networks too large to encode; the spec must
        fit the model."""
        spec.validate_for(network.num_classes)
        self.solver.lowered(network)

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> list[CheckResult]:
        if isinstance(spec, SafeOrdering):
            return [self.solver.solve(network, spec.as_property())]
        xs = np.asarray(xs, dtype=np.float64)
        logits = network.forward64(xs)
        out = []
        for i, (x, y) in enumerate(zip(xs, logits, strict=True)):
            goal = spec.at(x, y, domain)
            if goal.alternatives:
                result = self.solver.solve_goal(network, goal)
            else:  # an affinity spec whose predicted class is in no group fails at x itself
                result = CheckResult(
                    Verdict.FALSIFIED,
                    self.name,
                    detail="predicted class is in no group",
                    counterexample=x,
                )
            label = None if labels is None else int(labels[i])
            out.append(attrs.evolve(result, predicted=int(np.argmax(y)), label=label))
        return out


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
