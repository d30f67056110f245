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

import verispec.opnorm as opnorm
from verispec.attacks import first_counterexample, sample_attack
from verispec.engines.base import batches, register_engine, resolve_device
from verispec.engines.roundoff import RoundoffForward
from verispec.errors import SpecError, UnsupportedError
from verispec.network import (
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    GroupSort,
    Layer,
    Network,
    Normalize,
    ReLU,
)
from verispec.regions import Box, FloatArray, Norm, Polytope
from verispec.results import CheckResult, GuaranteeKind, Verdict
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering, Spec

SQRT2 = math.sqrt(2.0)
_ONE_LIPSCHITZ = (ReLU, GroupSort, Flatten)


@attrs.frozen
class LayerBound:
    """A layer's proven l2 operator-norm bound, whether it is linear, and (for the first linear
    layer, when asked for) its l_inf -> l2 bound."""

    index: int
    kind: str
    l2: float
    linear: bool
    linf_to_l2: float | None = None


def _folded_weight(
    layer: Dense | Conv2d, norm_layer: Normalize | None, in_shape: tuple[int, ...]
) -> FloatArray:
    """The layer's weight with a preceding normalisation's 1/std folded in."""
    if norm_layer is None:
        return layer.weight
    if isinstance(layer, Dense):
        return layer.weight * norm_layer.scale(in_shape).reshape(1, -1)
    inv = norm_layer.scale(in_shape)[:, 0, 0]
    return layer.weight * inv.reshape(1, -1, 1, 1)


def layer_bounds(
    network: Network, upto: int, fold: bool = True, linf_first: bool = False
) -> list[LayerBound]:
    """Proven bounds for layers ``0 .. upto - 1``. With ``fold``, a Normalize directly before a
    dense or conv layer is folded into it (tighter) and reported with l2 = 1. With
    ``linf_first``, the first linear layer also gets its l_inf -> l2 bound."""
    out: list[LayerBound] = []
    pending: Normalize | None = None
    for i in range(upto):
        want_linf = linf_first and not any(b.linear for b in out)
        layer: Layer = network.layers[i]
        in_shape = network.shapes[i]
        nxt = network.layers[i + 1] if i + 1 < upto else None
        if fold and isinstance(layer, Normalize) and isinstance(nxt, Dense | Conv2d):
            pending = layer
            out.append(LayerBound(i, layer.kind, 1.0, linear=False))
            continue
        if isinstance(layer, Dense):
            w = _folded_weight(layer, pending, network.shapes[i - 1] if pending else in_shape)
            linf = opnorm.dense_linf_to_l2_bound(w) if want_linf else None
            out.append(LayerBound(i, layer.kind, opnorm.dense_l2_bound(w), True, linf))
        elif isinstance(layer, Conv2d):
            w = _folded_weight(layer, pending, in_shape)
            hw = (in_shape[1], in_shape[2])
            l2 = opnorm.conv2d_l2_bound(w, layer.stride, layer.padding, hw)
            linf = (
                opnorm.conv2d_linf_to_l2_bound(w, layer.stride, layer.padding, hw)
                if want_linf
                else None
            )
            out.append(LayerBound(i, layer.kind, l2, True, linf))
        elif isinstance(layer, Normalize):
            scale = np.abs(layer.scale(in_shape))
            out.append(
                LayerBound(
                    i,
                    layer.kind,
                    float(scale.max()) * (1 + opnorm.ROUNDING_ALLOWANCE),
                    True,
                    float(np.linalg.norm(scale)) * (1 + opnorm.ROUNDING_ALLOWANCE),
                )
            )
        elif isinstance(layer, AvgPool2d):
            l2 = opnorm.avgpool2d_l2_bound(layer.kernel, layer.stride)
            in_size, out_size = int(np.prod(in_shape)), int(np.prod(network.shapes[i + 1]))
            linf = min(math.sqrt(out_size), math.sqrt(in_size) * l2)
            out.append(LayerBound(i, layer.kind, l2, True, linf))
        elif isinstance(layer, _ONE_LIPSCHITZ):
            out.append(LayerBound(i, layer.kind, 1.0, linear=False))
        else:  # pragma: no cover - the IR admits no other layer; never default to 1
            raise UnsupportedError(f"layer {i} ({layer.kind}) has no Lipschitz bound")
        pending = None
    return out


@attrs.frozen(eq=False)
class LipschitzBounds:
    """Everything needed to bound how far any linear functional of the logits can move."""

    norm: Norm
    layers: tuple[LayerBound, ...]
    body: float
    head: FloatArray | None  # (m, h) weights of the last dense layer, None if there is none
    head_dual_q: float  # 2.0, or 1.0 for l_inf with no linear layer in the body

    def of(self, c: FloatArray) -> FloatArray:
        """Lipschitz constants (w.r.t. the input norm) of c . f for each row of ``c`` (k, m)."""
        c = np.atleast_2d(c)
        if self.head is None:
            return np.linalg.norm(c, axis=1) * self.body
        return (
            np.linalg.norm(c @ self.head, ord=self.head_dual_q, axis=1)
            * self.body
            * (1 + opnorm.ROUNDING_ALLOWANCE)
        )

    def pairwise(self) -> FloatArray:
        """K (m, m) with K_ij the Lipschitz constant of y_i - y_j."""
        m = self.head.shape[0] if self.head is not None else None
        if m is None:
            raise UnsupportedError("pairwise constants need a final dense layer")
        eye = np.eye(m)
        diffs = (eye[:, None, :] - eye[None, :, :]).reshape(m * m, m)
        return self.of(diffs).reshape(m, m)


def network_lipschitz(network: Network, norm: Norm) -> LipschitzBounds:
    """Sound Lipschitz bounds of ``network`` for perturbations measured in ``norm``."""
    n = len(network.layers)
    last = network.layers[-1]
    head = last.weight if isinstance(last, Dense) else None
    body_end = n - 1 if head is not None else n
    bounds = layer_bounds(network, n, linf_first=norm is Norm.LINF)
    body_bounds = bounds[:body_end]
    first_linear = next((b for b in body_bounds if b.linear), None)
    q = 2.0
    if norm is Norm.L2:
        body = math.prod(b.l2 for b in body_bounds)
    elif first_linear is None:
        body, q = 1.0, 1.0  # only l_inf-1-Lipschitz layers: the head sees an l_inf ball
        if head is None:
            body, q = math.sqrt(network.input_size), 2.0
    else:
        body = (first_linear.linf_to_l2 or math.inf) * math.prod(
            b.l2 for b in body_bounds if b.index > first_linear.index
        )
    return LipschitzBounds(norm, tuple(bounds), body, head, q)


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
