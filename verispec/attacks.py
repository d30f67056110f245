"""Falsification by sampling and projected gradient descent (PGD) inside a region.

Both search for x in the property's region whose float64 logits violate the predicate (make
its slack <= 0) and return only witnesses confirmed by ``Property.confirm`` (moved into the closed
region, checked exactly, and re-evaluated in float64 on the exact weights). They are
incomplete: finding nothing proves nothing. Randomness comes from the generator passed in.
"""

from __future__ import annotations

import numpy as np
import torch

from verispec.network import Network
from verispec.properties import Property
from verispec.regions import Ball, Box, FloatArray, Norm, Polytope


def _project(region: Ball | Box, x: torch.Tensor) -> torch.Tensor:
    """Map rows of ``x`` (n, *shape) into the region (exact for boxes and balls; for a ball
    intersected with a box: project onto the ball, then clip, which stays in both because the
    centre lies in the box)."""
    if isinstance(region, Box):
        lo = torch.tensor(region.lo)
        hi = torch.tensor(region.hi)
        return torch.maximum(torch.minimum(x, hi), lo)
    c = torch.tensor(region.center)
    d = x - c
    if region.norm is Norm.LINF:
        d = d.clamp(-region.eps, region.eps)
    else:
        norms = d.flatten(1).norm(dim=1).clamp_min(1e-300)
        factor = torch.clamp(region.eps / norms, max=1.0)
        d = d * factor.reshape((-1,) + (1,) * (d.dim() - 1))
    x = c + d
    if region.domain is not None:
        x = _project(region.domain, x)
    return x


def _sample(region: Ball | Box, n: int, rng: np.random.Generator) -> FloatArray:
    """``n`` points of the region: uniform in boxes / l_inf balls, uniform directions with
    radii spread over [0, eps] (the surface included) in l2 balls."""
    if isinstance(region, Box):
        return rng.uniform(region.lo, region.hi, size=(n, *region.lo.shape))
    shape = region.center.shape
    if region.norm is Norm.LINF:
        pts = region.center + rng.uniform(-region.eps, region.eps, size=(n, *shape))
        pts[: n // 4] = region.center + region.eps * rng.choice([-1.0, 1.0], size=(n // 4, *shape))
    else:
        d = rng.standard_normal((n, int(np.prod(shape))))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        radii = region.eps * np.sqrt(rng.uniform(0, 1, size=(n, 1)))
        radii[: n // 4] = region.eps
        pts = region.center + (d * radii).reshape((n, *shape))
    return pts if region.domain is None else region.domain.clip(pts)


def first_counterexample(
    network: Network, prop: Property, candidates: FloatArray
) -> FloatArray | None:
    """The first of ``candidates`` (n, *shape) that is a counterexample confirmed in float64."""
    y = network.forward64(candidates)
    bad = np.flatnonzero(~prop.predicate.holds(y))
    for i in bad:
        witness = prop.confirm(network, candidates[i])
        if witness is not None:
            return witness
    return None


def _search_region(prop: Property) -> Ball | Box:
    region = prop.region
    if isinstance(region, Polytope):
        if region.box is None:
            raise ValueError("sampling a polytope needs a bounding box")
        return region.box
    return region


def sample_attack(
    network: Network, prop: Property, n: int, rng: np.random.Generator
) -> FloatArray | None:
    """A confirmed counterexample among ``n`` random points of the region, or None."""
    return first_counterexample(network, prop, _sample(_search_region(prop), n, rng))


def pgd_attack(
    network: Network,
    prop: Property,
    rng: np.random.Generator,
    steps: int = 50,
    restarts: int = 8,
) -> FloatArray | None:
    """Minimise the predicate's slack over the region by PGD in float64 (sign steps for l_inf
    and boxes, normalised gradient steps for l2); a confirmed counterexample or None."""
    region = _search_region(prop)
    clauses = prop.predicate.clauses
    if any(c.C.shape[0] == 0 for c in clauses):
        return None  # an empty conjunction is true: nothing can violate the predicate
    if not clauses:
        return sample_attack(network, prop, 1, rng)  # the empty disjunction is false everywhere
    module = network.module(torch.float64)
    for p in module.parameters():
        p.requires_grad_(False)
    start = _sample(region, restarts, rng)
    if isinstance(region, Ball):
        start[0] = region.center
        size = region.eps
    else:
        size = float(np.max(region.hi - region.lo)) / 2 if region.lo.size else 0.0
    x = torch.tensor(start, requires_grad=True)
    sign_steps = isinstance(region, Box) or region.norm is Norm.LINF
    for step in range(steps):
        slack = _slack(prop, module(x))
        (grad,) = torch.autograd.grad(slack.sum(), x)
        alpha = 2.5 * size / steps * (1.0 if step < steps // 2 else 0.5)
        with torch.no_grad():
            if sign_steps:
                x = x - alpha * grad.sign()
            else:
                g = grad.flatten(1)
                g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-300)
                x = x - alpha * g.reshape(x.shape)
            x = _project(region, x)
        x.requires_grad_(True)
    return first_counterexample(network, prop, x.detach().numpy())


def _slack(prop: Property, y: torch.Tensor) -> torch.Tensor:
    """Differentiable predicate slack (n,): max over clauses of min over atoms."""
    per_clause = []
    for clause in prop.predicate.clauses:
        vals = y @ torch.tensor(clause.C).T + torch.tensor(clause.d)
        per_clause.append(vals.min(dim=1).values)
    return torch.stack(per_clause, dim=1).max(dim=1).values
