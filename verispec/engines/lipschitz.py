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
from typing import Any

import attrs
import numpy as np
import torch

from verispec import options
from verispec.attacks import first_counterexample, sample_attack
from verispec.engines.base import EngineBase, batches, register_engine
from verispec.engines.lipschitz_bounds import (
    LipschitzBounds,
    layer_bounds,
    network_lipschitz,
    safe_l2,
)
from verispec.engines.roundoff import RoundoffForward, check_representable
from verispec.errors import ConfigError, UnsupportedError
from verispec.network import Dense, Network
from verispec.options import resolve_device
from verispec.regions import Box, FloatArray, Norm
from verispec.results import BatchResult, CheckResult, Verdict
from verispec.specs import Affinity, LocalRobustness, PointSpec, RelaxedTopK, SafeOrdering, Spec

SQRT2 = math.sqrt(2.0)


def _precision(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in (torch.float32, torch.float64):
        raise ConfigError(
            f"option 'precision' (LipschitzConfig.precision) must be torch.float32 or "
            f"torch.float64, got {value!r}",
            "precision",
        )


@attrs.frozen
class LipschitzConfig:
    """Options of the Lipschitz engine."""

    batch_size: int = attrs.field(default=4096, validator=options.integer(1))
    device: str = attrs.field(default="cpu", validator=options.device)
    precision: torch.dtype = attrs.field(default=torch.float32, validator=_precision)
    falsify_samples: int = attrs.field(default=256, validator=options.integer(0))
    seed: int = attrs.field(default=0, validator=options.seed)


@register_engine("lipschitz")
class LipschitzEngine(EngineBase):
    """Certify with global Lipschitz bounds; K cached per (network fingerprint, norm)."""

    name = "lipschitz"
    Config = LipschitzConfig
    needs_bounded_precondition = True

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

    # -- decisions ----------------------------------------------------------------------------
    def _supports(self, network: Network, spec: Spec) -> None:
        if not isinstance(spec, SafeOrdering) and not isinstance(network.layers[-1], Dense):
            raise UnsupportedError(
                "the lipschitz engine needs a final dense layer for point specifications"
            )
        check_representable(network, self.config.precision)

    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        """One roundoff-bounded forward pass per batch, then the margins of ``_decide``."""
        pair_k = self.bounds(network, spec.norm).pairwise()
        forward = self._forward(network)
        n = len(xs)
        certified = np.empty(n, dtype=bool)
        radii = np.empty(n)
        margins = np.empty(n)
        predicted = np.empty(n, dtype=np.int64)
        times = np.empty(n)
        details: dict[int, str] = {}
        for sl in batches(n, self.config.batch_size):
            start = time.perf_counter()
            logits, err = forward(xs[sl])
            decision = _decide(spec, logits, err, pair_k)
            certified[sl] = decision.certified
            radii[sl] = decision.radius
            margins[sl] = decision.margin
            predicted[sl] = np.argmax(logits, axis=1)
            details.update({sl.start + k: d for k, d in decision.details.items()})
            times[sl] = (time.perf_counter() - start) / (sl.stop - sl.start)
        verdicts = np.where(certified, Verdict.CERTIFIED.code, Verdict.UNKNOWN.code)
        return BatchResult.build(
            self.name,
            verdicts,
            radii=radii,
            margins=margins,
            time_s=times,
            predicted=predicted,
            details=details,
        )

    def _decide_global(self, network: Network, spec: SafeOrdering) -> CheckResult:
        """Safe ordering over a box: each atom's value at the centre, less its Lipschitz
        constant times the box's radius and the float error, must stay > 0."""
        start = time.perf_counter()
        prop = spec.as_property()
        region = spec.precondition
        box = region if isinstance(region, Box) else region.box
        if box is None:  # refused by supports() (needs_bounded_precondition)
            raise UnsupportedError("the lipschitz engine needs a bounded precondition")
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
        # the farthest any point of the box lies from the (rounded) centre, rounded up
        reach = np.maximum(box.hi - centre, centre - box.lo).ravel() * _UP
        radius_l2 = float(safe_l2(reach[None])[0]) * _UP
        radius_inf = float(np.max(reach, initial=0.0))
        l2 = self.bounds(network, Norm.L2)
        linf = self.bounds(network, Norm.LINF)
        certified_clause = None
        finite = bool(np.all(np.isfinite(logits)) and np.all(np.isfinite(err)))
        for k, clause in enumerate(prop.predicate.clauses if finite else ()):
            values = clause.values(logits)[0]
            # evaluating C y + d rounds: |error| <= gamma_{m+2} (|C| |y| + |d|)
            rounding = (
                (clause.C.shape[1] + 2)
                * 2.0**-52
                * (np.abs(clause.C) @ np.abs(logits[0]) + np.abs(clause.d))
            )
            slack_err = safe_l2(clause.C) * err[0]
            move = np.minimum(l2.of(clause.C) * radius_l2, linf.of(clause.C) * radius_inf)
            needed = (slack_err + move + rounding) * _UP
            if clause.C.shape[0] == 0 or np.all(values * _DOWN - needed > 0):
                certified_clause = k
                break
        verdict = Verdict.CERTIFIED if certified_clause is not None else Verdict.UNKNOWN
        detail = "" if certified_clause is None else f"clause {certified_clause} holds on the box"
        return CheckResult(verdict, self.name, time_s=time.perf_counter() - start, detail=detail)


@attrs.frozen(eq=False)
class Decision:
    """The Lipschitz test on a batch of n points: certified (n,), radius (n,) (0 where no
    positive margin), margin (n,) (the slack of the test in logit units: > 0 where it passes,
    -inf for non-finite logits) and details keyed by point (which kappa / group certified)."""

    certified: np.ndarray
    radius: FloatArray
    margin: FloatArray
    details: dict[int, str]


def _decide(
    spec: LocalRobustness | RelaxedTopK | Affinity,
    logits: FloatArray,
    err: FloatArray,
    pair_k: FloatArray,
) -> Decision:
    """The test at each point from logits (n, m), error bounds (n,) and K_ij (m, m)."""
    n, m = logits.shape
    finite = np.isfinite(err) & np.isfinite(logits).all(axis=1)
    if not finite.all():
        logits = np.where(finite[:, None], logits, 0.0)
    rows = np.arange(n)
    eps = spec.eps
    if isinstance(spec, LocalRobustness):
        return _decide_robustness(logits, err, pair_k, eps, finite)
    order = np.argsort(-logits, axis=1, kind="stable")
    low = _low(logits[:, :, None] - logits[:, None, :], err[:, None, None])
    ratio = _ratio(low, pair_k[None])
    slack = low - eps * pair_k[None]
    ranks = np.empty_like(order)
    ranks[rows[:, None], order] = np.arange(m)[None, :]
    best = np.zeros(n)
    margin = np.full(n, -np.inf)
    chosen = np.full(n, -1)
    labels: list[str] = []
    if isinstance(spec, RelaxedTopK):
        for kappa in range(1, spec.k + 1):
            inside = ranks < kappa
            r = _set_min(ratio, inside)
            better = finite & (r > best)
            best = np.where(better, r, best)
            chosen = np.where(better, len(labels), chosen)
            margin = np.where(finite, np.maximum(margin, _set_min(slack, inside)), margin)
            labels.append(f"kappa={kappa}")
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
                r = _set_min(ratio, inside)
                better = usable & (r > best)
                best = np.where(better, r, best)
                chosen = np.where(better, len(labels), chosen)
                margin = np.where(usable, np.maximum(margin, _set_min(slack, inside)), margin)
                labels.append(f"group={sorted(group)} kappa={kappa}")
    certified = best > eps
    details = {int(p): labels[chosen[p]] for p in np.flatnonzero(certified)}
    return Decision(certified, best, margin, details)


def _decide_robustness(
    logits: FloatArray, err: FloatArray, pair_k: FloatArray, eps: float, finite: np.ndarray
) -> Decision:
    """``_decide`` for local robustness: the predicted class c against every j != c (the same
    ``_low`` and ``_ratio`` arithmetic, in place: this runs on every point of every batch)."""
    n = len(logits)
    rows = np.arange(n)
    c = np.argmax(logits, axis=1)
    low = logits[rows, c][:, None] - logits
    low *= _DOWN
    low -= (SQRT2 * _UP) * err[:, None]  # err >= 0 is exact or rounded up: rounding pushed
    low *= _DOWN  # below by _DOWN, as in _low
    k_c = pair_k[c]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        radius = low / k_c
    radius *= _DOWN
    radius[~(low > 0)] = 0.0  # also the NaN of 0 / 0
    radius[rows, c] = np.inf
    slack = k_c
    slack *= -eps
    slack += low  # low - eps K, one rounding, as before
    slack[rows, c] = np.inf
    r = radius.min(axis=1)
    margin = slack.min(axis=1)
    if not finite.all():
        r[~finite] = 0.0
        margin[~finite] = -np.inf
    return Decision(r > eps, r, margin, {})


_DOWN = 1.0 - 2.0**-50
_UP = 1.0 + 2.0**-50


def _low(diff: FloatArray, err: FloatArray) -> FloatArray:
    """A lower bound of (y_c - y_j) - sqrt(2) E from the computed difference: each float64
    operation's rounding (relative <= 2^-53) is pushed downwards, so cancellation cannot
    turn a non-positive value positive."""
    return (diff * _DOWN - SQRT2 * err * _UP) * _DOWN


def _ratio(low: FloatArray, k: FloatArray) -> FloatArray:
    """low / k (rounded down) where low > 0 (+inf when k = 0), else 0: the radius each pair
    allows."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.where(low > 0, (low / k) * _DOWN, 0.0)
    return np.where(np.isnan(out), 0.0, out)


def _set_min(values: FloatArray, inside: np.ndarray) -> FloatArray:
    """Per point, the min of values[p, s, j] (n, m, m) over classes s inside the set (mask
    (n, m)) and j outside (+inf if none outside): with ``ratio``, the radius within which every
    class inside keeps beating every class outside."""
    pairs = inside[:, :, None] & ~inside[:, None, :]
    return np.where(pairs, values, np.inf).min(axis=(1, 2))
