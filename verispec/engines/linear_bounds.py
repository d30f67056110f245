"""The ``crown`` engine: certify with linear bound propagation (IBP, CROWN, alpha-CROWN),
batched over points.

The bounds are those of ``verispec/solvers/propagation.py`` (its docstring states the
algorithms and the floating-point argument): they hold for the exact network, the lowering's
rounding included. For each batch of points the engine bounds every atom c.y + d of the spec's
goal directly, as a linear function of the logits, over each point's input set.

The engine certifies a point when, for some alternative of the spec's goal at the point,
some clause has every atom's lower bound above 0 on the input set. It falsifies a point only
with the point itself, re-checked by a float64 forward pass (``Goal.confirm``); otherwise the
point is UNKNOWN.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs
import numpy as np
import torch

from verispec import options
from verispec.engines.base import EngineBase, batches, register_engine
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.options import resolve_device
from verispec.properties import Goal
from verispec.regions import Box, FloatArray, Polytope
from verispec.results import BatchResult, CheckResult, Verdict
from verispec.solvers.bounds import InputSet, to_sets
from verispec.solvers.lowering import PiecewiseLinearNet, lower
from verispec.solvers.propagation import Method, TorchNet, atom_bounds
from verispec.specs import PointSpec, SafeOrdering


@attrs.frozen
class LinearBoundsConfig:
    """Options of the ``crown`` engine."""

    method: str = attrs.field(default="crown", validator=options.one_of(*(m.value for m in Method)))
    alpha_steps: int = attrs.field(default=20, validator=options.integer(1))
    alpha_lr: float = attrs.field(default=0.1, validator=options.number(0.0))
    batch_size: int = attrs.field(default=64, validator=options.integer(1))
    device: str = attrs.field(default="cpu", validator=options.device)

    @property
    def kind(self) -> Method:
        """``method`` as the enum."""
        return Method(self.method)


@attrs.frozen(eq=False)
class _Atoms:
    """The atoms of one goal: its input set and, per atom, its clause's index, coefficients
    and offset (every alternative's clauses, numbered together)."""

    inputs: InputSet
    clause: list[int]
    C: list[FloatArray]
    d: list[float]
    trivial: bool
    """Some clause is empty (always true), or the input set is empty (holds vacuously)."""

    @classmethod
    def of(cls, goal: Goal) -> _Atoms | None:
        if not goal.alternatives:
            return None
        inputs = InputSet.of(goal.alternatives[0].region)  # the alternatives share it
        clause: list[int] = []
        C: list[FloatArray] = []
        d: list[float] = []
        trivial = inputs.empty
        number = 0
        for prop in goal.alternatives:
            for c in prop.predicate.clauses:
                trivial = trivial or c.C.shape[0] == 0
                for row in range(c.C.shape[0]):
                    clause.append(number)
                    C.append(c.C[row])
                    d.append(float(c.d[row]))
                number += 1
        return cls(inputs, clause, C, d, trivial)


@register_engine("crown")
class LinearBoundsEngine(EngineBase):
    """Certify with linear bound propagation (IBP, CROWN, alpha-CROWN; module docstring)."""

    name = "crown"
    Config = LinearBoundsConfig
    needs_bounded_precondition = True

    def __init__(self, config: LinearBoundsConfig | None = None) -> None:
        self.config = config or LinearBoundsConfig()
        self._lowered: dict[str, PiecewiseLinearNet] = {}

    def _lower(self, network: Network) -> PiecewiseLinearNet:
        """The network's lowered form (the last network's kept; the lowering raises naming
        a layer it has no rule for)."""
        key = network.fingerprint()
        if key not in self._lowered:
            self._lowered = {key: lower(network)}
        return self._lowered[key]

    def _net(self, network: Network, device: torch.device) -> TorchNet:
        return TorchNet.of(self._lower(network), device)

    def _supports(self, network: Network, spec: object) -> None:
        self._lower(network)

    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        start = time.perf_counter()
        device = resolve_device(self.config.device)
        net = self._net(network, device)
        ys = network.forward64(xs)
        method = self.config.method
        verdicts = np.full(len(xs), Verdict.UNKNOWN.code, dtype=np.int8)
        witnesses: dict[int, FloatArray] = {}
        details: dict[int, str] = {}
        for part in batches(len(xs), self.config.batch_size):
            goals = [spec.at(xs[i], ys[i], domain) for i in range(part.start, part.stop)]
            margins = self._margins(net, goals, device)
            for k, i in enumerate(range(part.start, part.stop)):
                if margins[k] > 0:
                    verdicts[i] = Verdict.CERTIFIED.code
                    details[i] = f"{method}: every atom of a clause >= {margins[k]:.6g}"
                    continue
                w = goals[k].confirm(network, xs[i])  # re-checked, exactly near zero
                if w is not None:
                    verdicts[i], witnesses[i] = Verdict.FALSIFIED.code, w
                    details[i] = "the point itself violates the spec"
                    continue
                details[i] = f"{method}: the best clause's smallest atom bound {margins[k]:.6g}"
        return BatchResult.build(
            self.name,
            verdicts,
            time_s=(time.perf_counter() - start) / len(xs),
            predicted=np.argmax(ys, axis=1),
            counterexamples=witnesses,
            details=details,
        )

    def _margins(self, net: TorchNet, goals: Sequence[Goal], device: torch.device) -> FloatArray:
        """Per goal: the best clause's smallest atom lower bound on the goal's region (inf
        when a clause is trivially true or the region empty, -inf without alternatives). A
        goal is proved where it is > 0."""
        out = np.full(len(goals), -np.inf)
        live: list[tuple[int, _Atoms]] = []  # goals with atoms to bound
        for i, goal in enumerate(goals):
            a = _Atoms.of(goal)
            if a is not None and a.trivial:
                out[i] = np.inf
            elif a is not None and a.C:
                live.append((i, a))
        if not live:
            return out
        m = net.weights[-1].shape[0]
        p = max(len(a.C) for _, a in live)
        C = np.zeros((len(live), p, m))
        d = np.zeros((len(live), p))
        for r, (_, a) in enumerate(live):
            C[r, : len(a.C)], d[r, : len(a.d)] = np.array(a.C), a.d
        sets = to_sets([a.inputs for _, a in live], device)
        with torch.no_grad():
            value = atom_bounds(
                net,
                sets,
                torch.as_tensor(C, device=device),
                torch.as_tensor(d, device=device),
                self.config.kind,
                self.config.alpha_steps,
                self.config.alpha_lr,
            )
        value = np.nan_to_num(value.cpu().numpy(), nan=-np.inf)  # NaN (overflow) proves nothing
        for r, (i, a) in enumerate(live):
            worst: dict[int, float] = {}
            for k, c in enumerate(a.clause):
                worst[c] = min(worst.get(c, np.inf), float(value[r, k]))
            out[i] = max(worst.values())
        return out

    def _decide_global(self, network: Network, spec: SafeOrdering) -> CheckResult:
        """A safe ordering on its precondition's box (a polytope's box holds it: sound)."""
        start = time.perf_counter()
        device = resolve_device(self.config.device)
        prop = spec.as_property()
        region = prop.region
        if isinstance(region, Polytope):
            if region.box is None:  # refused by supports() (needs_bounded_precondition)
                raise UnsupportedError("the crown engine needs a bounded precondition")
            region = region.box
        goal = Goal((attrs.evolve(prop, region=region),))
        margin = self._margins(self._net(network, device), [goal], device)[0]
        return CheckResult(
            Verdict.CERTIFIED if margin > 0 else Verdict.UNKNOWN,
            self.name,
            time_s=time.perf_counter() - start,
            detail=f"{self.config.method}: the best clause's smallest atom bound {margin:.6g}",
        )
