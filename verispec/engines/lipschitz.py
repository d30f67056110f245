"""Global Lipschitz certification (Leino, Wang & Fredrikson, ICML 2021), with sound constants.

The network is split into a *body* (every layer before the last dense layer) and the *head*
(that dense layer, weights W). For an input norm p:

- K_body bounds ||h(x') - h(x)||_2 / ||x' - x||_p: the product of per-layer proven l2 bounds
  (``verispec.opnorm``: exact float64 SVD for dense layers, FFT/Gram-iteration or explicit SVD
  for convolutions), with the first linear layer bounded l_inf -> l2 when p = inf;
  normalisation folded into the following linear layer; ReLU, GroupSort, Flatten are
  1-Lipschitz (in l2 and l_inf); any other layer raises.
- For a linear functional c . f(x) (e.g. c = e_i - e_j) the Lipschitz constant is
  L(c) = ||W^T c||_q K_body (q = 2; q = 1 when p = inf and the body has no linear layer).
- A point is certified for local robustness iff for every j != c:
  (y_c - y_j) - sqrt(2) E > eps K_cj, with E the proven bound on the float error of the
  forward pass (``roundoff``): ties and near-ties are never certified.
"""

from __future__ import annotations

import math
import time

import attrs
import numpy as np
import torch

from verispec.attacks import first_counterexample, sample_attack
from verispec.engines.base import batches, register_engine, resolve_device
from verispec.engines.lipschitz_bounds import LipschitzBounds, layer_bounds, network_lipschitz
from verispec.engines.roundoff import RoundoffForward
from verispec.errors import SpecError, UnsupportedError
from verispec.network import Dense, Network
from verispec.regions import Box, FloatArray, Norm, Polytope
from verispec.results import CheckResult, GuaranteeKind, Verdict
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering, Spec

SQRT2 = math.sqrt(2.0)


@attrs.frozen
class LipschitzConfig:
    """Options of the Lipschitz engine."""

    batch_size: int = attrs.field(default=4096, validator=attrs.validators.gt(0))
    device: str = "cpu"
    precision: torch.dtype = torch.float32
    falsify_samples: int = attrs.field(default=256, validator=attrs.validators.ge(0))
    seed: int = 0


@register_engine("lipschitz")
class LipschitzEngine:
    """Certify with global Lipschitz bounds; K cached per (network fingerprint, norm)."""

    name = "lipschitz"
    Config = LipschitzConfig

    def __init__(self, config: LipschitzConfig | None = None) -> None:
        self.config = config or LipschitzConfig()
        self.device = resolve_device(self.config.device)
        self._bounds: dict[tuple[str, Norm], LipschitzBounds] = {}
        self._forwards: dict[str, RoundoffForward] = {}

    # -- cached constants -------------------------------------------------------------------
    def bounds(self, network: Network, norm: Norm) -> LipschitzBounds:
        """The network's Lipschitz bounds for ``norm`` (computed once per weights and norm)."""
        key = (network.fingerprint(), norm)
        if key not in self._bounds:
            self._bounds[key] = network_lipschitz(network, norm)
        return self._bounds[key]

    def _forward(self, network: Network) -> RoundoffForward:
        key = network.fingerprint()
        if key not in self._forwards:
            lips = [b.l2 for b in layer_bounds(network, len(network.layers), fold=False)]
            self._forwards[key] = RoundoffForward(network, lips, self.config.precision, self.device)
        return self._forwards[key]

    # -- protocol -----------------------------------------------------------------------------
    def supports(self, network: Network, spec: Spec) -> None:
        if isinstance(spec, LocalRobustness | RelaxedTopK | Affinity):
            if not isinstance(network.layers[-1], Dense):
                raise UnsupportedError(
                    "the lipschitz engine needs a final dense layer for point specifications"
                )
            spec.validate_for(network.num_classes)
            return
        if isinstance(spec, SafeOrdering):
            spec.validate_for(network.num_classes)
            region = spec.precondition
            if isinstance(region, Polytope) and region.box is None:
                raise UnsupportedError(
                    "the lipschitz engine needs a bounded precondition: give the polytope a box"
                )
            return
        raise UnsupportedError(f"the lipschitz engine does not support {type(spec).__name__}")

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> list[CheckResult]:
        self.supports(network, spec)
        if isinstance(spec, SafeOrdering):
            return [self._check_safe_ordering(network, spec)]
        xs = np.asarray(xs, dtype=np.float64)
        if xs.shape[1:] != network.input_shape:
            raise SpecError(
                f"points have shape {xs.shape[1:]}, the network expects {network.input_shape}"
            )
        if not np.all(np.isfinite(xs)):
            raise SpecError("points contain NaN or infinity")
        pair_k = self.bounds(network, spec.norm).pairwise()
        forward = self._forward(network)
        results: list[CheckResult] = []
        for sl in batches(len(xs), self.config.batch_size):
            start = time.perf_counter()
            logits, err = forward(xs[sl])
            verdicts = _decide(spec, logits, err, pair_k)
            per_point = (time.perf_counter() - start) / max(1, sl.stop - sl.start)
            predicted = np.argmax(logits, axis=1).tolist()
            batch_labels = (
                [None] * len(predicted) if labels is None else np.asarray(labels)[sl].tolist()
            )
            results.extend(
                CheckResult(
                    verdict=Verdict.CERTIFIED if ok else Verdict.UNKNOWN,
                    engine=self.name,
                    predicted=pred,
                    label=label,
                    radius=radius,
                    guarantee=GuaranteeKind.DETERMINISTIC,
                    time_s=per_point,
                    detail=detail,
                )
                for (ok, radius, detail), pred, label in zip(
                    verdicts, predicted, batch_labels, strict=True
                )
            )
        return self._falsify_trivial(network, spec, xs, results, domain)

    # -- point specifications ----------------------------------------------------------------
    def _falsify_trivial(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        results: list[CheckResult],
        domain: Box | None,
    ) -> list[CheckResult]:
        """An affinity spec whose predicted class is in no group fails at x itself."""
        if not isinstance(spec, Affinity):
            return results
        out = []
        for x, r in zip(xs, results, strict=True):
            if r.verdict is Verdict.UNKNOWN and not spec.groups_of(int(r.predicted or 0)):
                y = network.forward64(x[None])[0]
                if spec.at(x, y, domain).is_counterexample(x, y):
                    r = attrs.evolve(
                        r,
                        verdict=Verdict.FALSIFIED,
                        counterexample=x,
                        detail="predicted class is in no group",
                    )
            out.append(r)
        return out

    # -- safe ordering -----------------------------------------------------------------------
    def _check_safe_ordering(self, network: Network, spec: SafeOrdering) -> CheckResult:
        start = time.perf_counter()
        prop = spec.as_property()
        region = spec.precondition
        box = region if isinstance(region, Box) else region.box
        if box is None:  # excluded by supports()
            raise UnsupportedError("unbounded precondition")
        # falsify first: the centre, then seeded uniform samples of the region
        witness = first_counterexample(network, prop, box.center[None])
        if witness is None and self.config.falsify_samples:
            rng = np.random.default_rng(self.config.seed)
            witness = sample_attack(network, prop, self.config.falsify_samples, rng)
        if witness is not None:
            return CheckResult(
                Verdict.FALSIFIED,
                self.name,
                time_s=time.perf_counter() - start,
                detail="sampled counterexample",
                counterexample=witness,
            )
        centre = box.center
        logits, err = self._forward(network)(centre[None])
        radius_l2 = box.l2_radius
        radius_inf = float(np.max(box.hi - box.lo)) / 2.0
        l2 = self.bounds(network, Norm.L2)
        linf = self.bounds(network, Norm.LINF)
        certified_clause = None
        for k, clause in enumerate(prop.predicate.clauses):
            values = clause.values(logits)[0]
            slack_err = np.linalg.norm(clause.C, axis=1) * err[0]
            move = np.minimum(l2.of(clause.C) * radius_l2, linf.of(clause.C) * radius_inf)
            if clause.C.shape[0] == 0 or np.all(values - slack_err - move > 0):
                certified_clause = k
                break
        verdict = Verdict.CERTIFIED if certified_clause is not None else Verdict.UNKNOWN
        detail = "" if certified_clause is None else f"clause {certified_clause} holds on the box"
        return CheckResult(verdict, self.name, time_s=time.perf_counter() - start, detail=detail)


def _decide(
    spec: LocalRobustness | RelaxedTopK | Affinity,
    logits: FloatArray,
    err: FloatArray,
    pair_k: FloatArray,
) -> list[tuple[bool, float, str]]:
    """(certified, radius, detail) per point from logits (n, m) and error bounds (n,)."""
    n, m = logits.shape
    finite = np.all(np.isfinite(logits), axis=1) & np.isfinite(err)
    logits = np.where(finite[:, None], logits, 0.0)
    order = np.argsort(-logits, axis=1, kind="stable")
    rows = np.arange(n)
    if isinstance(spec, LocalRobustness):
        c = order[:, 0]
        low = logits[rows, c][:, None] - logits - SQRT2 * err[:, None]
        radius = _ratio(low, pair_k[c])
        radius[rows, c] = np.inf
        r = np.where(finite, radius.min(axis=1), 0.0)
        return [(bool(ri > spec.eps), float(ri), "") for ri in r]
    ratio = _ratio(
        logits[:, :, None] - logits[:, None, :] - SQRT2 * err[:, None, None], pair_k[None]
    )
    ranks = np.empty_like(order)
    ranks[rows[:, None], order] = np.arange(m)[None, :]
    best = np.zeros(n)
    detail = [""] * n
    if isinstance(spec, RelaxedTopK):
        for kappa in range(1, spec.k + 1):
            r = _set_radius(ratio, ranks < kappa)
            better = finite & (r > best)
            best = np.where(better, r, best)
            for p in np.flatnonzero(better):
                detail[p] = f"kappa={kappa}"
    else:
        predicted = order[:, 0]
        for group in spec.groups:
            in_group = np.zeros(m, dtype=bool)
            in_group[sorted(group)] = True
            for kappa in range(1, len(group) + 1):
                inside = ranks < kappa
                usable = finite & in_group[predicted] & ~np.any(inside & ~in_group[None], axis=1)
                if not usable.any():
                    break
                r = _set_radius(ratio, inside)
                better = usable & (r > best)
                best = np.where(better, r, best)
                for p in np.flatnonzero(better):
                    detail[p] = f"group={sorted(group)} kappa={kappa}"
    return [
        (bool(b > spec.eps), float(b), d if b > spec.eps else "")
        for b, d in zip(best, detail, strict=True)
    ]


def _ratio(low: FloatArray, k: FloatArray) -> FloatArray:
    """low / k where low > 0 (+inf when k = 0), else 0: the radius each pair allows."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(low > 0, low / k, 0.0)
    return np.where(np.isnan(out), 0.0, out)


def _set_radius(ratio: FloatArray, inside: np.ndarray) -> FloatArray:
    """Per point, the radius within which every class inside the set (mask (n, m)) keeps beating
    every class outside: min of ratio[p, s, j] over s inside, j outside (+inf if none outside)."""
    pairs = inside[:, :, None] & ~inside[:, None, :]
    return np.where(pairs, ratio, np.inf).min(axis=(1, 2))
