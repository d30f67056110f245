"""Properties: a region of inputs and a predicate every output in it must satisfy.

A predicate is a disjunction (``Predicate.clauses``) of conjunctions (``Clause``) of strict
linear inequalities over the logits y (m,): clause k holds iff ``C_k @ y + d_k > 0``
componentwise. That is exactly what VNN-LIB can state. The empty disjunction is false.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import attrs
import numpy as np

from verispec.errors import SpecError
from verispec.network import Network
from verispec.regions import FloatArray, Region, frozen_array


@attrs.frozen(eq=False)
class Clause:
    """A conjunction of atoms ``C @ y + d > 0``; ``C`` is (k, m), ``d`` is (k,)."""

    C: FloatArray = attrs.field(converter=frozen_array)
    d: FloatArray = attrs.field(converter=frozen_array)

    def __attrs_post_init__(self) -> None:
        if self.C.ndim != 2 or self.d.shape != (self.C.shape[0],):
            raise SpecError(
                f"Clause: C must be (k, m) and d (k,), got {self.C.shape}, {self.d.shape}"
            )
        if not (np.all(np.isfinite(self.C)) and np.all(np.isfinite(self.d))):
            raise SpecError("Clause: coefficients must be finite")

    @classmethod
    def orderings(cls, pairs: Sequence[tuple[int, int]], num_classes: int) -> Clause:
        """The conjunction of ``y_a > y_b`` for each (a, b) in ``pairs``."""
        C = np.zeros((len(pairs), num_classes))
        for row, (a, b) in enumerate(pairs):
            for cls_index in (a, b):
                if not 0 <= cls_index < num_classes:
                    raise SpecError(f"class index {cls_index} out of range [0, {num_classes})")
            if a == b:
                raise SpecError(f"ordering y{a} > y{b} compares a class with itself")
            C[row, a], C[row, b] = 1.0, -1.0
        return cls(C, np.zeros(len(pairs)))

    @property
    def num_classes(self) -> int:
        return int(self.C.shape[1])

    def values(self, y: FloatArray) -> FloatArray:
        """Atom values for logits ``y`` (n, m) -> (n, k)."""
        return y @ self.C.T + self.d


def _clauses(value: Iterable[Clause]) -> tuple[Clause, ...]:
    return tuple(value)


@attrs.frozen(eq=False)
class Predicate:
    """A disjunction of clauses over the logits."""

    clauses: tuple[Clause, ...] = attrs.field(converter=_clauses)

    def __attrs_post_init__(self) -> None:
        sizes = {c.num_classes for c in self.clauses}
        if len(sizes) > 1:
            raise SpecError(f"Predicate: clauses over different numbers of classes {sorted(sizes)}")

    def slack(self, y: FloatArray) -> FloatArray:
        """max over clauses of min over atoms, for logits ``y`` (n, m) -> (n,).

        The predicate holds at a row iff its slack is > 0; -inf for the empty disjunction.
        """
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        out = np.full(y.shape[0], -np.inf)
        for clause in self.clauses:
            vals = clause.values(y)
            per = vals.min(axis=1) if vals.shape[1] else np.full(y.shape[0], np.inf)
            out = np.maximum(out, per)
        return out

    def exact_slack(self, y: Sequence[Fraction]) -> Fraction | float:
        """``slack`` for one vector of exact logits (rationals); -inf for the empty
        disjunction, +inf for a clause with no atoms."""
        best: Fraction | float = -math.inf
        for clause in self.clauses:
            worst: Fraction | float = math.inf
            for row, d in zip(clause.C.tolist(), clause.d.tolist(), strict=True):
                value = sum((Fraction(c) * v for c, v in zip(row, y, strict=True)), Fraction(d))
                worst = min(worst, value)
            best = max(best, worst)
        return best

    def decided(self, y: FloatArray, err: FloatArray) -> bool | None:
        """Whether the predicate holds at the exact logits, from float logits ``y`` (m,) within
        ``err`` (m,) of them elementwise: True or False where every clause is clear of zero by
        its error (the atoms' own rounding included), None where some is not."""
        m = y.shape[0]
        g = (m + 2) * 2.0**-53 / (1 - (m + 2) * 2.0**-53)
        unclear = False
        for clause in self.clauses:
            vals = clause.C @ y + clause.d
            absC = np.abs(clause.C)
            errs = (absC @ err + g * (absC @ np.abs(y) + np.abs(clause.d))) * (1 + 4 * g)
            if not np.all(np.isfinite(errs) & np.isfinite(vals)):
                unclear = True
            elif np.all(vals > errs):
                return True  # every atom is positive at the exact logits
            elif not np.any(vals <= -errs):
                unclear = True  # no atom is clearly <= 0: the clause may hold
        return None if unclear else False

    def holds(self, y: FloatArray) -> np.ndarray:
        """Boolean (n,): whether the predicate holds for each row of ``y`` (n, m)."""
        return self.slack(y) > 0

    def or_(self, other: Predicate) -> Predicate:
        """The disjunction of two predicates."""
        return Predicate(self.clauses + other.clauses)


def argmax_in(classes: Sequence[int], num_classes: int) -> Predicate:
    """F(y) in ``classes``, strictly: some class in the set beats every class outside it.

    A tie between a class inside and one outside does not satisfy it (no tie is certified).
    """
    inside = sorted(set(classes))
    outside = [j for j in range(num_classes) if j not in inside]
    if not outside:
        return Predicate((Clause(np.zeros((0, num_classes)), np.zeros(0)),))
    return Predicate(
        tuple(Clause.orderings([(c, j) for j in outside], num_classes) for c in inside)
    )


def argmax_outside(classes: Sequence[int], num_classes: int) -> Predicate:
    """Some class outside ``classes`` strictly beats every class in it."""
    outside = [j for j in range(num_classes) if j not in set(classes)]
    return argmax_in(outside, num_classes) if classes else Predicate(())


@attrs.frozen(eq=False)
class Property:
    """For every x in ``region``: ``predicate`` holds at f(x)."""

    region: Region
    predicate: Predicate

    def is_counterexample(self, x: FloatArray, y: FloatArray) -> bool:
        """Whether ``x`` (input shape) lies in the closed region (exactly) and its float64 logits
        ``y`` (m,) violate the predicate. ``y`` must come from a float64 forward pass of ``x``."""
        return self.region.contains(x) and not bool(self.predicate.holds(y.reshape(1, -1))[0])

    def confirm(self, network: Network, x: FloatArray) -> FloatArray | None:
        """The witness to report for a candidate ``x`` (input shape): ``x`` moved into the
        region (``Region.inside``) and re-checked by a float64 forward pass on the network's
        exact weights that bounds its own rounding error (``verispec.float_error``); where
        an atom is within that error of zero, in exact rationals instead. None when that
        point is not a counterexample."""
        return _confirm(network, self.region, (self,), x)


def _properties(value: Iterable[Property]) -> tuple[Property, ...]:
    return tuple(value)


@attrs.frozen(eq=False)
class Goal:
    """A spec compiled at a point: it holds iff at least one alternative property holds.

    Most specs compile to one alternative; an affinity spec with overlapping groups compiles to
    one per group containing the predicted class. No alternatives means the spec fails at the
    point itself.
    """

    alternatives: tuple[Property, ...] = attrs.field(converter=_properties)

    def is_counterexample(self, x: FloatArray, y: FloatArray) -> bool:
        """Whether ``x`` violates every alternative (a single witness refuting the goal)."""
        return all(p.is_counterexample(x, y) for p in self.alternatives)

    def confirm(self, network: Network, x: FloatArray) -> FloatArray | None:
        """As ``Property.confirm``, for every alternative at once (they share one region)."""
        if not self.alternatives:
            return None
        return _confirm(network, self.alternatives[0].region, self.alternatives, x)


def _confirm(
    network: Network, region: Region, props: Sequence[Property], x: FloatArray
) -> FloatArray | None:
    moved = region.inside(np.asarray(x, dtype=np.float64).reshape(network.input_shape))
    if moved is None:
        return None
    from verispec.float_error import float_logits

    y, err = float_logits(network, moved)
    decided = [p.predicate.decided(y, err) for p in props]
    if any(d is True for d in decided):
        return None  # the predicate holds for some alternative, rounding included
    if all(d is False for d in decided):
        return moved
    # within the float64 pass's rounding error of zero: decide in exact rational arithmetic
    from verispec.exact_forward import exact_logits

    exact = exact_logits(network, moved)
    return moved if all(p.predicate.exact_slack(exact) <= 0 for p in props) else None
