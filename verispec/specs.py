"""Typed specifications (semantics: docs/architecture.md).

Point-based specs (local robustness, relaxed top-k, affinity) compile at a point x with logits
f(x) to a ``Goal`` via ``spec.at(x, logits, domain)``. ``SafeOrdering`` is a global property
and carries its region and predicate directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs
import numpy as np

from verispec.errors import SpecError
from verispec.properties import Goal, Predicate, Property, argmax_in, argmax_outside
from verispec.regions import Ball, Box, FloatArray, Norm, Polytope

__all__ = [
    "Affinity",
    "Domain",
    "LocalRobustness",
    "Norm",
    "PointSpec",
    "RelaxedTopK",
    "SafeOrdering",
    "Spec",
    "domain_box",
]


def _positive_finite(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise SpecError(
            f"{type(instance).__name__}.{attribute.name} must be > 0 and finite, got {value}"
        )


def _check_logits(logits: FloatArray) -> FloatArray:
    y = np.asarray(logits, dtype=np.float64).ravel()
    if not np.all(np.isfinite(y)):
        raise SpecError("logits contain NaN or infinity")
    return y


Domain = Box | tuple[float, float] | None
"""The input domain a point spec compiles with: a ``Box``, a pair ``(lo, hi)`` for every
coordinate (as ``Dataset.domain`` holds it), or None."""


def domain_box(domain: Domain, shape: tuple[int, ...]) -> Box | None:
    """``domain`` as a Box over inputs of ``shape`` (a pair becomes ``Box.uniform``)."""
    if domain is None or isinstance(domain, Box):
        return domain
    if isinstance(domain, tuple | list) and len(domain) == 2:
        lo, hi = domain
        if all(isinstance(v, int | float | np.floating | np.integer) for v in (lo, hi)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise SpecError(f"the domain must be finite with lo <= hi, got {domain!r}")
            return Box.uniform(float(lo), float(hi), shape)
    raise SpecError(
        f"the domain must be a Box, a pair (lo, hi) or None, got {type(domain).__name__} "
        f"{domain!r:.80}"
    )


def _ball(x: FloatArray, eps: float, norm: Norm, domain: Domain) -> Ball:
    centre = np.asarray(x)
    if centre.dtype.kind not in "fiu":
        raise SpecError(f"the point x must be a real array, got dtype {centre.dtype}")
    return Ball(centre, eps, norm, domain_box(domain, centre.shape))


def top_classes(logits: FloatArray, k: int) -> list[int]:
    """The k classes with the largest logits, best first (ties broken by the lower index)."""
    y = _check_logits(logits)
    return [int(i) for i in np.lexsort((np.arange(y.size), -y))[:k]]


@attrs.frozen
class LocalRobustness:
    """For all x' in B(x, eps): F(x') = F(x)."""

    eps: float = attrs.field(converter=float, validator=_positive_finite)
    norm: Norm = attrs.field(validator=attrs.validators.instance_of(Norm))

    def at(self, x: FloatArray, logits: FloatArray, domain: Domain = None) -> Goal:
        y = _check_logits(logits)
        ball = _ball(x, self.eps, self.norm, domain)
        return Goal((Property(ball, argmax_in([int(np.argmax(y))], y.size)),))

    def validate_for(self, num_classes: int) -> None:
        """Nothing class-dependent to check."""


@attrs.frozen
class RelaxedTopK:
    """Some kappa <= k: for all x' in B(x, eps), F(x') stays in the top-kappa set of x.

    As a property this is "F(x') in top_k(x)"; engines may prove the stronger statement that the
    top-kappa set itself is invariant for some kappa, and report which kappa.
    """

    k: int = attrs.field(validator=attrs.validators.instance_of(int))
    eps: float = attrs.field(converter=float, validator=_positive_finite)
    norm: Norm = attrs.field(validator=attrs.validators.instance_of(Norm))

    @k.validator
    def _check_k(self, attribute: attrs.Attribute, value: int) -> None:
        if value < 1:
            raise SpecError(f"RelaxedTopK.k must be >= 1, got {value}")

    def at(self, x: FloatArray, logits: FloatArray, domain: Domain = None) -> Goal:
        y = _check_logits(logits)
        ball = _ball(x, self.eps, self.norm, domain)
        return Goal((Property(ball, argmax_in(top_classes(y, self.k), y.size)),))

    def validate_for(self, num_classes: int) -> None:
        if self.k > num_classes:
            raise SpecError(f"RelaxedTopK.k = {self.k} exceeds the model's {num_classes} classes")


def _groups(value: Iterable[Iterable[int]]) -> tuple[frozenset[int], ...]:
    return tuple(frozenset(int(c) for c in g) for g in value)


@attrs.frozen
class Affinity:
    """Some group G containing c = F(x): for all x' in B(x, eps), F(x') in G.

    Groups must be non-empty; they must be disjoint unless ``allow_overlap`` is set.
    """

    groups: tuple[frozenset[int], ...] = attrs.field(converter=_groups)
    eps: float = attrs.field(converter=float, validator=_positive_finite)
    norm: Norm = attrs.field(validator=attrs.validators.instance_of(Norm))
    allow_overlap: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.groups:
            raise SpecError("Affinity.groups must not be empty")
        for i, g in enumerate(self.groups):
            if not g:
                raise SpecError(f"Affinity.groups[{i}] is empty")
            if min(g) < 0:
                raise SpecError(f"Affinity.groups[{i}] holds a negative class index")
        if not self.allow_overlap:
            seen: set[int] = set()
            for i, g in enumerate(self.groups):
                if seen & g:
                    raise SpecError(
                        f"Affinity.groups[{i}] overlaps an earlier group on {sorted(seen & g)}; "
                        "make the groups disjoint or set allow_overlap"
                    )
                seen |= g

    def groups_of(self, cls: int) -> tuple[frozenset[int], ...]:
        """The groups containing class ``cls``."""
        return tuple(g for g in self.groups if cls in g)

    def at(self, x: FloatArray, logits: FloatArray, domain: Domain = None) -> Goal:
        y = _check_logits(logits)
        ball = _ball(x, self.eps, self.norm, domain)
        c = int(np.argmax(y))
        return Goal(tuple(Property(ball, argmax_in(sorted(g), y.size)) for g in self.groups_of(c)))

    def validate_for(self, num_classes: int) -> None:
        for i, g in enumerate(self.groups):
            if max(g) >= num_classes:
                raise SpecError(
                    f"Affinity.groups[{i}] names class {max(g)}, but the model has {num_classes}"
                )


def _optional_classes(value: Iterable[int] | None) -> frozenset[int] | None:
    return None if value is None else frozenset(int(v) for v in value)


@attrs.frozen(eq=False)
class SafeOrdering:
    """For all x in the precondition region (optionally: with F(x) in ``predicted_in``), the
    logits satisfy ``postcondition`` (a DNF over strict linear inequalities, e.g. y_a > y_b)."""

    precondition: Box | Polytope
    postcondition: Predicate
    predicted_in: frozenset[int] | None = attrs.field(default=None, converter=_optional_classes)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.precondition, Box | Polytope):
            raise SpecError("SafeOrdering.precondition must be a Box or a Polytope")
        if not self.postcondition.clauses:
            raise SpecError("SafeOrdering.postcondition has no clause (it could never hold)")
        if self.predicted_in is not None and not self.predicted_in:
            raise SpecError("SafeOrdering.predicted_in is empty (the property would be vacuous)")

    @property
    def num_classes(self) -> int:
        return self.postcondition.clauses[0].num_classes

    def as_property(self) -> Property:
        """The property: post holds, or (with ``predicted_in``) F(x) lies outside the set.

        A tie between a class in the set and one outside counts as "in the set", so the
        postcondition is then required (conservative).
        """
        predicate = self.postcondition
        if self.predicted_in is not None:
            predicate = predicate.or_(argmax_outside(sorted(self.predicted_in), self.num_classes))
        return Property(self.precondition, predicate)

    def validate_for(self, num_classes: int) -> None:
        if self.num_classes != num_classes:
            raise SpecError(
                f"SafeOrdering postcondition is over {self.num_classes} classes, "
                f"the model has {num_classes}"
            )
        if self.predicted_in is not None and max(self.predicted_in) >= num_classes:
            raise SpecError(f"SafeOrdering.predicted_in names class {max(self.predicted_in)}")


PointSpec = LocalRobustness | RelaxedTopK | Affinity
Spec = PointSpec | SafeOrdering
