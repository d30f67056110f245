"""The soundness check every engine goes through, and engines that are broken on purpose.

``soundness_problems`` audits an engine's verdicts on one case: every CERTIFIED point must
survive the centre, sampling, PGD and the exact MILP solver; every FALSIFIED witness must
re-check. Everything is judged on a reference independent of the library's torch modules:
the network as a real function (``exact_forward``: rationals on the IR's float64 arrays),
screened by a numpy float64 pass (``reference_forward``), and exact region membership
(``exactly_in``, no tolerance). The broken engines reproduce published bug classes; tests use
them to show the check can fail.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
from collections.abc import Callable
from fractions import Fraction
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from verispec.solvers.base import SolverConfig
from verispec.solvers.milp import MilpSolver

import verispec.network as vn
from verispec.engines.base import engine_class
from verispec.engines.lipschitz import LipschitzBounds, LipschitzEngine
from verispec.engines.projections import ProjectionsConfig
from verispec.engines.smoothing import SmoothingConfig, SmoothingEngine
from verispec.ensembles import Member, Voting
from verispec.network import Network
from verispec.properties import Goal, Predicate, Property, argmax_in
from verispec.regions import Ball, Box, FloatArray, Norm, Polytope, Region
from verispec.results import BatchResult, CheckResult, GuaranteeKind, Verdict
from verispec.specs import LocalRobustness, RelaxedTopK, SafeOrdering, Spec

BATCHNORM: type | None = getattr(vn, "BatchNorm", None)
"""The IR's BatchNorm layer once the library has one (issue 12); None before."""

EXACT_ENGINES = frozenset({"milp", "smt"})
"""Engines that wrap the exact solvers: the reference of the engine tests (checked themselves
by the attacks alone, on the hard networks)."""

ENGINE_CONFIGS: dict[str, Any] = {
    "smoothing": SmoothingConfig(n=1000, alpha=0.01),
    "projections": ProjectionsConfig(max_regions=2000, time_per_point=5.0),
}
"""Test configuration per engine name (engines with usable defaults need no entry)."""


class SameNetworkVoting:
    """A Voting ensemble (``verispec.ensembles``) whose members all compute the drawn network,
    each certified by another engine: the ensemble's classifier is the network's, so the
    suite's reference applies to its certificates unchanged. With equal weights it certifies
    exactly where every member's engine does."""

    name = "voting"

    def __init__(self, engines: tuple[str, ...]) -> None:
        self.engines = engines

    def ensemble(self, network: Network) -> Voting:
        return Voting(
            [Member(network, engine_class(e)(ENGINE_CONFIGS.get(e)), e) for e in self.engines]
        )

    def supports(self, network: Network, spec: Spec) -> None:
        self.ensemble(network).supports(spec)

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> BatchResult:
        return self.ensemble(network).check(spec, xs, labels, domain)


ENSEMBLES: dict[str, Callable[[], Any]] = {
    "voting": lambda: SameNetworkVoting(("lipschitz", "projections")),
}
"""Ensembles the suite checks like engines (a one-line registration each): name -> factory of
an object with the engine's ``name``, ``supports`` and ``check``."""


# -- the reference: numpy float64 on the IR's own float64 arrays, exact region membership ----
#
# The library's own float64 pass goes through torch modules; the checker must not share a bug
# with what it checks (issue 12: float32 parameters rounded the "float64" reference). Verdicts
# are judged in exact arithmetic (a certificate is refuted only by a point whose exact logits
# violate it; a witness stands if it refutes the goal exactly or on the float64 reference),
# with exact (rational) region membership.


def _channel_shape(ndim: int) -> tuple[int, ...]:
    """Broadcast shape of a per-channel vector over a batch of ``ndim``-dimensional arrays."""
    return (1, -1) + (1,) * (ndim - 2)


Arr = Callable[[Any], Any]
"""Converts a layer's float64 array to the arithmetic of the pass: ``np.asarray`` (float64) or
``exact_array`` (rationals: numpy object arrays of Fractions)."""


def exact_array(a: Any) -> Any:
    """An object array of the exact rationals of a float64 array (or scalar)."""
    arr = np.asarray(a, dtype=np.float64)
    out = np.empty(arr.shape, dtype=object)
    out.flat[:] = [Fraction(float(v)) for v in arr.flat]
    return out


def _np_dense(layer: Any, h: Any, arr: Arr) -> Any:
    return h @ arr(layer.weight).T + arr(layer.bias)


def _windows(h: Any, kernel: tuple[int, int], stride: tuple[int, int]) -> Any:
    """(n, c, oh, ow, kh, kw) windows of ``h`` (n, c, H, W), floor mode."""
    win = sliding_window_view(h, kernel, axis=(2, 3))
    return win[:, :, :: stride[0], :: stride[1]]


def _np_conv2d(layer: Any, h: Any, arr: Arr) -> Any:
    ph, pw = layer.padding
    padded = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=arr(0.0))
    win = _windows(padded, tuple(layer.weight.shape[2:]), layer.stride)
    out = np.einsum("ncyxij,ocij->noyx", win, arr(layer.weight))
    return out + arr(layer.bias).reshape(1, -1, 1, 1)


def _np_relu(layer: Any, h: Any, arr: Arr) -> Any:
    return np.maximum(h, arr(0.0))


def _np_groupsort(layer: Any, h: Any, arr: Arr) -> Any:
    n, c = h.shape[:2]
    g = layer.group_size
    grouped = h.reshape(n, c // g, g, *h.shape[2:])
    return np.sort(grouped, axis=2).reshape(h.shape)


def _np_flatten(layer: Any, h: Any, arr: Arr) -> Any:
    return h.reshape(h.shape[0], -1)


def _np_normalize(layer: Any, h: Any, arr: Arr) -> Any:
    shape = _channel_shape(h.ndim)
    return (h - arr(layer.mean).reshape(shape)) / arr(layer.std).reshape(shape)


def _np_avgpool(layer: Any, h: Any, arr: Arr) -> Any:
    win = _windows(h, layer.kernel, layer.stride)
    return win.sum(axis=(-2, -1)) / (layer.kernel[0] * layer.kernel[1])


def _np_batchnorm(layer: Any, h: Any, arr: Arr) -> Any:
    shape = _channel_shape(h.ndim)
    return h * arr(layer.scale).reshape(shape) + arr(layer.shift).reshape(shape)


Rule = Callable[[Any, Any, Arr], Any]
REFERENCE_RULES: dict[type, Rule] = {
    vn.Dense: _np_dense,
    vn.Conv2d: _np_conv2d,
    vn.ReLU: _np_relu,
    vn.GroupSort: _np_groupsort,
    vn.Flatten: _np_flatten,
    vn.Normalize: _np_normalize,
    vn.AvgPool2d: _np_avgpool,
}
"""The reference forward rule of every IR layer type, in float64 or in exact rationals (a test
asserts the table is complete)."""
if BATCHNORM is not None:
    REFERENCE_RULES[BATCHNORM] = _np_batchnorm


def _run(network: Network, h: Any, arr: Arr) -> Any:
    for layer in network.layers:
        rule = REFERENCE_RULES.get(type(layer))
        if rule is None:
            raise NotImplementedError(f"no reference rule for layer {layer.kind}")
        h = rule(layer, h, arr)
    return h.reshape(h.shape[0], -1)


def reference_forward(network: Network, x: FloatArray) -> FloatArray:
    """Float64 logits (n, m) of ``x`` (n, *input_shape) by numpy on the IR's float64 arrays."""
    h = np.array(x, dtype=np.float64).reshape((-1, *network.input_shape))
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        return np.asarray(_run(network, h, np.asarray), dtype=np.float64)


def exact_forward(network: Network, x: FloatArray) -> Any:
    """The exact logits (n, m) of ``x`` (n, *input_shape) in rational arithmetic (an object
    array of Fractions): the network as a real function, no rounding anywhere."""
    h = exact_array(np.asarray(x, dtype=np.float64).reshape((-1, *network.input_shape)))
    return _run(network, h, exact_array)


def exact_holds(predicate: Predicate, y: Any) -> bool:
    """Whether the predicate holds at exact logits ``y`` (m,): some clause with every atom
    C y + d > 0 in rationals."""
    for clause in predicate.clauses:
        values = exact_array(clause.C) @ y + exact_array(clause.d)
        if all(v > 0 for v in values):
            return True
    return False


def _torch_channel(a: FloatArray, ndim: int) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64)).reshape(_channel_shape(ndim))


def _t(a: FloatArray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64))


def _torch_groupsort(layer: Any, h: torch.Tensor) -> torch.Tensor:
    g = layer.group_size
    grouped = h.reshape(h.shape[0], h.shape[1] // g, g, *h.shape[2:])
    return grouped.sort(dim=2).values.reshape(h.shape)


TorchRule = Callable[[Any, torch.Tensor], torch.Tensor]
TORCH_RULES: dict[type, TorchRule] = {
    vn.Dense: lambda layer, h: F.linear(h, _t(layer.weight), _t(layer.bias)),
    vn.Conv2d: lambda layer, h: F.conv2d(
        h, _t(layer.weight), _t(layer.bias), layer.stride, layer.padding
    ),
    vn.ReLU: lambda layer, h: torch.relu(h),
    vn.GroupSort: _torch_groupsort,
    vn.Flatten: lambda layer, h: h.flatten(1),
    vn.Normalize: lambda layer, h: (
        (h - _torch_channel(layer.mean, h.dim())) / _torch_channel(layer.std, h.dim())
    ),
    vn.AvgPool2d: lambda layer, h: F.avg_pool2d(h, layer.kernel, layer.stride),
}
"""The same functions in torch float64 (differentiable: the attacks' gradients)."""
if BATCHNORM is not None:
    TORCH_RULES[BATCHNORM] = lambda layer, h: (
        h * _torch_channel(layer.scale, h.dim()) + _torch_channel(layer.shift, h.dim())
    )


def torch_forward64(network: Network, x: torch.Tensor) -> torch.Tensor:
    """Float64 logits of ``x`` (n, *input_shape) in torch, on the IR's float64 arrays."""
    h = x
    for layer in network.layers:
        h = TORCH_RULES[type(layer)](layer, h)
    return h.reshape(h.shape[0], -1)


def linear_radius(network: Network, x: FloatArray, norm: Norm) -> float:
    """The distance from ``x`` to the decision boundary of the network linearised at ``x``
    (exact for a linear network): min over j of (y_c - y_j) / ||grad(y_c - y_j)||_dual, on the
    reference. 0 at a tie; inf when no other class can catch up."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64)[None], requires_grad=True)
    y = torch_forward64(network, xt)[0]
    c = int(torch.argmax(y))
    best = math.inf
    dual = 1.0 if norm is Norm.LINF else 2.0
    for j in range(y.numel()):
        if j == c:
            continue
        (g,) = torch.autograd.grad(y[c] - y[j], xt, retain_graph=True)
        flat = g.flatten().numpy()
        s = float(np.max(np.abs(flat)))
        if s == 0.0:
            continue
        size = s * float(np.linalg.norm(flat / s, ord=dual))
        best = min(best, float(y[c] - y[j]) / size)
    return best


def _fractions(a: FloatArray) -> list[Fraction]:
    return [Fraction(float(v)) for v in np.ravel(a)]


def exactly_in(region: Region, x: FloatArray) -> bool:
    """Whether ``x`` lies in the closed region, decided in exact rational arithmetic (no
    tolerance: a witness 1e-15 outside a ball of radius 1e-12 is outside)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return False
    if isinstance(region, Box):
        return x.shape == region.lo.shape and bool(
            np.all(region.lo <= x) and np.all(x <= region.hi)
        )
    if isinstance(region, Polytope):
        if region.box is not None and not exactly_in(region.box, x):
            return False
        xs = _fractions(x)
        for row, b in zip(region.A, region.b, strict=True):
            if sum(
                (Fraction(float(a)) * v for a, v in zip(row, xs, strict=True)), Fraction(0)
            ) > Fraction(float(b)):
                return False
        return True
    if region.domain is not None and not exactly_in(region.domain, x):
        return False
    diffs = [a - c for a, c in zip(_fractions(x), _fractions(region.center), strict=True)]
    eps = Fraction(region.eps)
    if region.norm is Norm.LINF:
        return all(abs(d) <= eps for d in diffs)
    return sum((d * d for d in diffs), Fraction(0)) <= eps * eps


def excess(region: Region, x: FloatArray) -> float | None:
    """None if ``x`` lies exactly in the region, else how far outside (relative to eps for a
    ball, absolute for boxes and polytope rows)."""
    if exactly_in(region, x):
        return None
    x = np.asarray(x, dtype=np.float64)
    if isinstance(region, Ball):
        d = (x - region.center).ravel()
        dist = float(np.max(np.abs(d))) if region.norm is Norm.LINF else _scaled_norm(d)
        if dist > region.eps:
            return (dist - region.eps) / region.eps if region.eps > 0 else dist
        if region.domain is not None:
            return excess(region.domain, x)
        return float(np.finfo(float).eps)  # outside by less than float64 resolves
    box = region if isinstance(region, Box) else region.box
    worst = 0.0
    if box is not None:
        worst = float(max(np.max(box.lo - x), np.max(x - box.hi), 0.0))
    if isinstance(region, Polytope):
        worst = max(worst, float(np.max(region.A @ x.ravel() - region.b)))
    return worst


def _scaled_norm(d: FloatArray) -> float:
    """||d||_2 without underflow or overflow of the squares."""
    s = float(np.max(np.abs(d))) if d.size else 0.0
    return 0.0 if s == 0.0 else s * float(np.linalg.norm(d / s))


def into_region(region: Region, x: FloatArray) -> FloatArray:
    """``x`` moved into the region where a rounding error left it just outside: clipped to boxes,
    pulled towards a ball's centre by a few ulps (polytope constraints are left as they are)."""
    x = np.array(x, dtype=np.float64)
    if isinstance(region, Box):
        return np.asarray(np.clip(x, region.lo, region.hi))
    if isinstance(region, Polytope):
        return x if region.box is None else into_region(region.box, x)
    c, eps = region.center, region.eps
    ball = Ball(c, eps, region.norm)
    if region.norm is Norm.LINF:
        x = np.clip(x, c - eps, c + eps)
        for _ in range(8):
            if exactly_in(ball, x):
                break
            flat, cf = x.reshape(-1), c.reshape(-1)
            for i in range(flat.size):
                if abs(Fraction(float(flat[i])) - Fraction(float(cf[i]))) > Fraction(eps):
                    flat[i] = np.nextafter(flat[i], cf[i])
    else:
        d = x - c
        n = _scaled_norm(d)
        if n > eps:
            d = d * (eps / n)
        for k in range(8):
            if exactly_in(ball, c + d):
                break
            d = d * (1.0 - 2.0**-52 * 4.0**k)
        x = c + d
    return x if region.domain is None else into_region(region.domain, x)


def is_counterexample(network: Network, goal: Goal, x: FloatArray) -> bool:
    """Whether ``x`` refutes every alternative of the goal in exact arithmetic: it lies in each
    region and the exact logits violate each predicate. (A goal without alternatives fails at
    its point: any x does.)"""
    if not all(exactly_in(p.region, x) for p in goal.alternatives):
        return False
    y = exact_forward(network, np.asarray(x)[None])[0]
    return not any(exact_holds(p.predicate, y) for p in goal.alternatives)


def float64_counterexample(network: Network, goal: Goal, x: FloatArray) -> bool:
    """The same test with the reference float64 logits (the library's definition of a witness:
    one that violates the predicate when re-evaluated in float64), membership still exact."""
    if not all(exactly_in(p.region, x) for p in goal.alternatives):
        return False
    y = reference_forward(network, np.asarray(x)[None])
    return bool(np.all(np.isfinite(y))) and not any(
        p.predicate.holds(y)[0] for p in goal.alternatives
    )


def exact_ranking(y: Any) -> list[int]:
    """Classes best first by exact logits ``y`` (m,), ties broken by the lower index."""
    return sorted(range(len(y)), key=lambda i: (-y[i], i))


def _goal_for(spec: Spec, order: list[int], x: FloatArray, domain: Box | None) -> Goal:
    """The goal of a point spec at ``x`` when the classes rank as ``order`` (best first)."""
    assert not isinstance(spec, SafeOrdering)
    m = len(order)
    if isinstance(spec, LocalRobustness):
        sets = [order[:1]]
    elif isinstance(spec, RelaxedTopK):
        sets = [order[: spec.k]]
    else:
        sets = [sorted(g) for g in spec.groups_of(order[0])]
    ball = Ball(x, spec.eps, spec.norm, domain)
    return Goal(tuple(Property(ball, argmax_in(g, m)) for g in sets))


def reference_goals(network: Network, spec: Spec, xs: FloatArray, domain: Box | None) -> list[Goal]:
    """The goal of ``spec`` at each point, its classes ranked by the exact logits (one global
    goal for a safe-ordering spec)."""
    if isinstance(spec, SafeOrdering):
        return [Goal((spec.as_property(),))]
    ys = exact_forward(network, xs)
    return [_goal_for(spec, exact_ranking(y), x, domain) for x, y in zip(xs, ys, strict=True)]


FLOAT64_SLACK = 2.0**-40
"""Logits closer than this times their magnitude bound are tied for float64: a float64 pass in
another summation order may rank them either way (the error is ~ n u magnitude, u = 2^-53)."""


def _magnitudes(network: Network, x: FloatArray) -> FloatArray:
    """Bounds (m,) on the magnitude of every term summed into each logit at ``x`` (|W| |h| +
    |b| layer by layer): float64 errors are a small multiple of u times these."""
    h = np.abs(np.asarray(x, dtype=np.float64)).reshape((1, *network.input_shape))
    with np.errstate(over="ignore", invalid="ignore"):
        for layer in network.layers:
            if isinstance(layer, vn.Normalize):
                shape = _channel_shape(h.ndim)
                h = (h + np.abs(layer.mean).reshape(shape)) / np.abs(layer.std).reshape(shape)
            elif isinstance(layer, vn.GroupSort):
                n, c = h.shape[:2]
                g = layer.group_size
                grouped = h.reshape(n, c // g, g, *h.shape[2:])
                h = np.broadcast_to(grouped.max(axis=2, keepdims=True), grouped.shape).reshape(
                    h.shape
                )
            else:
                h = REFERENCE_RULES[type(layer)](layer, h, np.abs)
    return np.asarray(h.reshape(-1))


def plausible_goals(network: Network, spec: Spec, x: FloatArray, domain: Box | None) -> list[Goal]:
    """The goals of a point spec at ``x`` under every ranking a float64 pass could give: classes
    whose exact logits are within float64 resolution of each other may swap. A witness refuting
    any of them is a fair float64 witness (the engine's own float64 pass decides F(x))."""
    if isinstance(spec, SafeOrdering):
        return [Goal((spec.as_property(),))]
    y = exact_forward(network, np.asarray(x)[None])[0]
    slack = Fraction(float(FLOAT64_SLACK * np.max(_magnitudes(network, x))))
    order = exact_ranking(y)
    clusters: list[list[int]] = [[order[0]]]
    for a, b in itertools.pairwise(order):
        if y[a] - y[b] <= slack:
            clusters[-1].append(b)
        else:
            clusters.append([b])
    rankings: list[list[int]] = [[]]
    for cluster in clusters:
        rankings = [r + list(p) for r in rankings for p in itertools.permutations(cluster)][:120]
    return [_goal_for(spec, r, x, domain) for r in rankings]


def fair_witness(
    network: Network, spec: Spec, x: FloatArray | None, domain: Box | None, w: FloatArray
) -> bool:
    """Whether ``w`` is a fair witness against ``spec`` at ``x`` (None for a safe ordering): it
    lies exactly in the region and refutes, exactly or on the float64 reference, the goal of
    some ranking a float64 pass could give at ``x``."""
    if isinstance(spec, SafeOrdering) or x is None:
        goals = [Goal((spec.as_property(),))] if isinstance(spec, SafeOrdering) else []
    else:
        goals = plausible_goals(network, spec, x, domain)
    return any(
        is_counterexample(network, g, w) or float64_counterexample(network, g, w) for g in goals
    )


def _covers_domain(region: Ball) -> bool:
    """Whether the ball contains its whole domain (then the region *is* the domain)."""
    dom = region.domain
    if dom is None:
        return False
    far = np.maximum(np.abs(dom.hi - region.center), np.abs(region.center - dom.lo)).ravel()
    reach = float(far.max()) if region.norm is Norm.LINF else _scaled_norm(far) * (1 + 1e-12)
    return region.eps >= reach


def search_region(region: Region) -> Region:
    """The same set in a form the attacks and the MILP solver handle well: a ball holding its
    whole domain (eps 1e300) is the domain box."""
    if isinstance(region, Ball) and _covers_domain(region):
        assert region.domain is not None
        return region.domain
    return region


def _simplified(goal: Goal) -> Goal:
    return Goal(tuple(Property(search_region(p.region), p.predicate) for p in goal.alternatives))


# -- refuting a goal: sampling and PGD on the reference, then the exact MILP solver ------------


def _corners(lo: FloatArray, hi: FloatArray, n: int, rng: np.random.Generator) -> FloatArray:
    pick = rng.integers(0, 2, size=(n, *lo.shape)).astype(bool)
    return np.where(pick, hi, lo)


def sample_points(region: Region, n: int, rng: np.random.Generator) -> FloatArray:
    """``n`` points (n, *shape) of (or, after rounding, next to) the region: uniform, with box
    corners and the surface of l2 balls over-represented; a polytope is sampled in its box."""
    region = search_region(region)
    if isinstance(region, Polytope):
        if region.box is None:
            return np.zeros((0, region.A.shape[1]))
        region = region.box
    if isinstance(region, Ball) and region.norm is Norm.LINF:
        lo, hi = region.center - region.eps, region.center + region.eps
        if region.domain is not None:
            lo, hi = np.maximum(lo, region.domain.lo), np.minimum(hi, region.domain.hi)
        region = Box(lo, hi)
    if isinstance(region, Box):
        pts = rng.uniform(region.lo, region.hi, size=(n, *region.lo.shape))
        pts[: n // 4] = _corners(region.lo, region.hi, n // 4, rng)
        return np.asarray(pts)
    shape = region.center.shape
    d = rng.standard_normal((n, int(np.prod(shape))))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    radii = region.eps * rng.uniform(0, 1, size=(n, 1)) ** (1 / d.shape[1])
    radii[: n // 4] = region.eps
    pts = region.center + (d * radii).reshape((n, *shape))
    return pts if region.domain is None else region.domain.clip(pts)


def _slack(prop: Property, y: torch.Tensor) -> torch.Tensor:
    """Differentiable predicate slack (n,): max over clauses of min over atoms."""
    per_clause = [
        (y @ _t(clause.C).T + _t(clause.d)).min(dim=1).values for clause in prop.predicate.clauses
    ]
    return torch.stack(per_clause, dim=1).max(dim=1).values


def _project(region: Region, x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` mapped into the region (a polytope: into its box)."""
    if isinstance(region, Polytope):
        return x if region.box is None else _project(region.box, x)
    if isinstance(region, Box):
        return torch.maximum(torch.minimum(x, _t(region.hi)), _t(region.lo))
    c = _t(region.center)
    d = x - c
    if region.norm is Norm.LINF:
        d = d.clamp(-region.eps, region.eps)
    else:
        flat = d.flatten(1)
        s = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
        norms = (flat / s).norm(dim=1, keepdim=True) * s
        d = (flat * torch.clamp(region.eps / norms.clamp_min(1e-300), max=1.0)).reshape(d.shape)
    x = c + d
    return x if region.domain is None else _project(region.domain, x)


def pgd_points(
    network: Network, prop: Property, rng: np.random.Generator, steps: int = 30, restarts: int = 4
) -> FloatArray:
    """End points (restarts, *shape) of PGD minimising the predicate's slack on the reference
    network (sign steps in boxes and l_inf balls, normalised steps in l2 balls; the step does not
    depend on the scale of the logits)."""
    clauses = prop.predicate.clauses
    region = search_region(prop.region)
    if not clauses or any(c.C.shape[0] == 0 for c in clauses) or restarts == 0:
        return np.zeros((0, *network.input_shape))
    start = sample_points(region, restarts, rng)
    if not len(start):
        return start
    if isinstance(region, Ball):
        start[0] = region.center
    box = region.box if isinstance(region, Polytope) else region
    l2 = isinstance(box, Ball) and box.norm is Norm.L2
    if isinstance(box, Ball):
        half = torch.full(network.input_shape, box.eps, dtype=torch.float64)
    else:
        assert box is not None
        half = _t((box.hi - box.lo) / 2)
    x = torch.tensor(start, requires_grad=True)
    for step in range(steps):
        (grad,) = torch.autograd.grad(_slack(prop, torch_forward64(network, x)).sum(), x)
        rate = 2.5 / steps * (1.0 if step < steps // 2 else 0.5)
        with torch.no_grad():
            if l2:
                g = grad.flatten(1)
                g = g / g.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
                g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
                x = x - rate * float(half.max()) * g.reshape(x.shape)
            else:
                x = x - rate * half * grad.sign()
            x = _project(region, x)
        x.requires_grad_(True)
    return np.asarray(x.detach().numpy())


def first_counterexample(
    network: Network, goal: Goal, candidates: FloatArray, limit: int = 32
) -> FloatArray | None:
    """The first candidate that, moved into the region past rounding, refutes the goal."""
    if not goal.alternatives or not len(candidates):
        return None
    home = goal.alternatives[0].region
    ys = reference_forward(network, candidates)
    with np.errstate(invalid="ignore", over="ignore"):
        slack = np.max([p.predicate.slack(ys) for p in goal.alternatives], axis=0)
        near = slack <= 1e-10 * np.max(np.abs(ys), axis=1)  # violated, or too close to call
    for i in np.flatnonzero(near)[np.argsort(slack[near])][:limit]:
        w = into_region(home, candidates[i])
        if is_counterexample(network, goal, w):
            return w
    return None


def refute(
    network: Network,
    goal: Goal,
    rng: np.random.Generator,
    samples: int = 256,
    steps: int = 30,
    restarts: int = 4,
) -> FloatArray | None:
    """A point refuting the goal (every alternative) found at the centre, by sampling or by
    PGD, checked on the reference; or None."""
    if not goal.alternatives:
        return None
    shape = network.input_shape
    cands = []
    home = goal.alternatives[0].region
    if isinstance(home, Ball):
        cands.append(np.asarray(home.center).reshape((1, *shape)))
    for prop in goal.alternatives:
        cands.append(sample_points(prop.region, samples, rng).reshape((-1, *shape)))
        cands.append(pgd_points(network, prop, rng, steps, restarts).reshape((-1, *shape)))
    return first_counterexample(network, goal, np.concatenate(cands))


_attack = refute  # the name older tests use


def solver_refutation(
    solver: Any, network: Network, goal: Goal, timeout: float
) -> tuple[FloatArray | None, str]:
    """The exact solver's witness against the goal if it re-checks on the reference (else
    None), and the solver's verdict in words."""
    if not goal.alternatives:
        return None, "no alternative"
    res = solver.solve_goal(network, _simplified(goal), timeout)
    if res.counterexample is None:
        return None, f"{res.verdict.value} ({res.detail})"
    w = into_region(goal.alternatives[0].region, np.asarray(res.counterexample))
    if is_counterexample(network, goal, w):
        return w, f"{res.verdict.value} ({res.detail})"
    return None, f"{res.verdict.value} with a witness that fails the reference re-check"


def soundness_problems(
    engine: Any,
    network: Network,
    spec: Spec,
    xs: FloatArray,
    domain: Box | None,
    seed: int = 0,
    timeout: float = 60.0,
    solver: Any | None = None,
    use_solver: bool = True,
    record: Callable[[str], object] | None = None,
) -> list[str]:
    """Every reason the engine's verdicts on this case are unsound (empty when sound).

    Goals rank classes by the exact logits. A FALSIFIED witness must lie exactly in the region
    and refute the goal of a ranking float64 could give (``fair_witness``); a CERTIFIED goal
    must survive the centre, sampling, PGD and (with ``use_solver``) the exact MILP solver (or
    ``solver``), every refutation checked in exact arithmetic; a certified local-robustness
    point must have the exact predicted class. ``record`` (e.g. ``hypothesis.event``) is told
    each verdict."""
    solver = solver or MilpSolver(SolverConfig(timeout=timeout, seed=seed))
    ordering = isinstance(spec, SafeOrdering)
    shape = network.input_shape
    xs = np.zeros((0, *shape)) if ordering else np.asarray(xs, np.float64).reshape((-1, *shape))
    claims = engine.check(network, spec, xs, None, domain)
    if record is not None:  # e.g. hypothesis.event: the verdict mix shows the test is not vacuous
        for claim in claims:
            record(f"{engine.name}: {claim.verdict.value}")
    if is_probabilistic(claims):
        raise ValueError(f"{engine.name} is probabilistic: check it statistically")
    goals = reference_goals(network, spec, xs, domain)
    logits = reference_forward(network, xs) if len(xs) else np.zeros((0, network.num_classes))
    exact = exact_forward(network, xs) if len(xs) else []
    rng = np.random.default_rng(seed)
    problems = []
    for i, (goal, claim) in enumerate(zip(goals, claims, strict=True)):
        where = (
            "the safe ordering"
            if ordering
            else f"point {i} {xs[i].ravel().tolist()} (logits {logits[i].tolist()})"
        )
        if claim.verdict is Verdict.FALSIFIED:
            w = claim.counterexample
            if w is None:
                problems.append(f"{where}: falsified without a witness")
            elif not goal.alternatives:
                assert not isinstance(spec, SafeOrdering)
                if not exactly_in(Ball(xs[i], spec.eps, spec.norm, domain), w):
                    problems.append(f"{where}: the witness {w.tolist()} is outside the ball")
            elif not fair_witness(network, spec, None if ordering else xs[i], domain, w):
                y = reference_forward(network, np.asarray(w)[None])[0]
                out = excess(goal.alternatives[0].region, np.asarray(w))
                place = "in the region" if out is None else f"OUTSIDE the region by {out:.3g}"
                problems.append(
                    f"{where}: bad witness {np.asarray(w).ravel().tolist()} ({claim.detail}): "
                    f"{place}, reference logits {y.tolist()}"
                )
        if claim.verdict is not Verdict.CERTIFIED:
            continue
        if not goal.alternatives:
            problems.append(f"{where}: certified, but the spec fails at the point itself")
            continue
        predicted = claim.predicted
        if isinstance(spec, LocalRobustness) and predicted not in (
            None,
            exact_ranking(exact[i])[0],
        ):
            problems.append(f"{where}: certified class {claim.predicted}, the reference's differs")
        w = refute(network, goal, rng)
        how = "an attack"
        if w is None and use_solver:
            w, how = solver_refutation(solver, network, goal, timeout)
            how = f"{solver.name}: {how}"
        if w is not None:
            y = reference_forward(network, w[None])[0]
            problems.append(
                f"{where}: certified ({claim.detail}), but {how} refutes it at "
                f"{w.tolist()} (reference logits {y.tolist()})"
            )
    return problems


DUMP = "VERISPEC_SOUNDNESS_DUMP"
"""Environment variable: a file each failing case (engine name, network, spec, points, domain,
problems) is pickled into, to replay it with full-precision weights."""


def assert_sound(*args: Any, **kwargs: Any) -> None:
    """``soundness_problems(*args, **kwargs)`` is empty; the message lists every problem."""
    problems = soundness_problems(*args, **kwargs)
    if problems and os.environ.get(DUMP):
        engine, network, spec, xs, domain = args[:5]
        with open(os.environ[DUMP], "ab") as f:
            pickle.dump((engine.name, network, spec, xs, domain, problems), f)
    assert not problems, "\n".join(problems)


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
            wrong += int(res.predicted != g or true_radius <= eps)
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
