"""Proving that a self-corrected network satisfies a safe ordering, or refuting it with a
checked witness.

The layer's answer at an input x depends on two things only: which constraints' regions hold
x (a *region pattern*) and the weak ordering of the logits y = f(x) (how its entries compare,
ties included): every step of ``SelfCorrecting.revise_masked`` compares entries of y, and its
output is y itself or y's values strictly decreasing along an order it computes. There are
finitely many of both, so ``verify_corrected`` runs the layer on every weak ordering of the m
logits (one representative each: integer levels) under every region pattern that can occur in
the property's region P, and marks the *bad* ones: the layer abstains, or its output breaks
the property. What is left is a question about the plain network: can an x in P with that
region pattern reach a bad weak ordering? Each such question is one exact-solver query on the
original network (the closed region; the closed cone of the ordering, covering whole groups
of bad orderings at once: every ranking that starts with a given prefix). No reachable bad
case: CERTIFIED. A witness from the solver is re-checked by a float64 forward pass on the
exact weights through the real layer: FALSIFIED only if the corrected network fails there.

Over-approximations (each can only turn a proof into UNKNOWN, never the reverse): a region
pattern with a constraint's region *off* does not exclude that region from the query, and
tied orderings are queried with closed cones.

Abstaining counts as a violation: the corrected network *answers and* satisfies the property.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from verispec.errors import UnsupportedError
from verispec.properties import Clause, Predicate, Property
from verispec.regions import Box, Polytope
from verispec.results import CheckResult, Verdict
from verispec.selfcorrect.layer import SelfCorrecting, ordering_disjuncts
from verispec.solvers.base import SolverConfig, solver_class
from verispec.specs import SafeOrdering
from verispec.vnnlib import parse_vnnlib, safe_property

MAX_CLASSES = 7
"""The most logits ``verify_corrected`` enumerates the weak orderings of (47,293 at 7)."""

MAX_PATTERNS = 4096
"""The most region patterns (2^k for k constraints whose regions overlap P but need not
contain it)."""

MAX_QUERIES = 512
"""The most solver queries one proof may need; more gives UNKNOWN with the count."""


def weak_orderings(n: int) -> np.ndarray:
    """Every weak ordering of n classes as level numbers (K, n): level 0 is the top; classes
    on one level are tied. K is the n-th Fubini number (541 for 5 classes)."""
    out = [
        levels
        for levels in itertools.product(range(n), repeat=n)
        if len(set(levels)) == max(levels) + 1  # the levels used are 0, 1, ..., k - 1
    ]
    return np.array(out, dtype=np.int64).reshape(-1, n)


def _intersect(regions: Sequence[Box | Polytope]) -> Box | Polytope | None:
    """The intersection of boxes and polytopes (None when the boxes alone are disjoint)."""
    boxes: list[Box] = []
    for r in regions:
        b = r if isinstance(r, Box) else r.box
        if b is not None:
            boxes.append(b)
    box = None
    if boxes:
        lo = np.max([b.lo.ravel() for b in boxes], axis=0)
        hi = np.min([b.hi.ravel() for b in boxes], axis=0)
        if np.any(lo > hi):
            return None
        box = Box(lo.reshape(boxes[0].lo.shape), hi.reshape(boxes[0].lo.shape))
    polys = [r for r in regions if isinstance(r, Polytope)]
    if not polys:
        return box
    return Polytope(np.concatenate([p.A for p in polys]), np.concatenate([p.b for p in polys]), box)


def _relation(region: Box | Polytope, target: Box | Polytope) -> str:
    """ "out" when ``region`` and ``target`` cannot meet (their boxes are disjoint), "in" when
    ``region`` is a box containing ``target``'s box, else "free"."""
    a = region if isinstance(region, Box) else region.box
    t = target if isinstance(target, Box) else target.box
    if a is None or t is None:
        return "free"
    if np.any(a.lo.ravel() > t.hi.ravel()) or np.any(a.hi.ravel() < t.lo.ravel()):
        return "out"
    inside = np.all(a.lo.ravel() <= t.lo.ravel()) and np.all(a.hi.ravel() >= t.hi.ravel())
    return "in" if isinstance(region, Box) and inside else "free"


def _patterns(layer: SelfCorrecting, region: Box | Polytope) -> Iterator[np.ndarray]:
    """Each region pattern (c,) boolean an x in ``region`` can have."""
    relation = [_relation(c.precondition, region) for c in layer.constraints]
    free = [c for c, r in enumerate(relation) if r == "free"]
    if 2 ** len(free) > MAX_PATTERNS:
        raise UnsupportedError(
            f"{len(free)} constraints' regions overlap the property's region without "
            f"containing it: {2 ** len(free)} region patterns (more than {MAX_PATTERNS})"
        )
    base = np.array([r == "in" for r in relation], dtype=bool)
    for bits in itertools.product([False, True], repeat=len(free)):
        pattern = base.copy()
        pattern[free] = bits
        yield pattern


def _bad(layer: SelfCorrecting, prop: Property, pattern: np.ndarray, levels: np.ndarray):
    """(K,) boolean: the layer abstains, or its output breaks ``prop``, at the weak orderings
    ``levels`` (K, n) under region ``pattern``."""
    y = torch.from_numpy((levels.max(initial=0) - levels).astype(np.float64))
    inside = torch.from_numpy(np.broadcast_to(pattern, (len(levels), len(pattern))).copy())
    got = layer.revise_masked(layer.gate(inside, y), y)
    z = got.logits[:, : layer.num_classes].numpy()
    return got.abstained.numpy() | ~prop.predicate.holds(z)


def _cones(levels: np.ndarray, bad: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed cones covering every bad weak ordering, as lists of (a, b): y_a >= y_b. Bad
    total orders are grouped by prefix (every ranking that starts with p_1, ..., p_k is bad:
    one cone y_p1 >= ... >= y_pk >= every other entry); a bad tied ordering that no bad
    ranking refines gets its own cone (ties as two inequalities)."""
    n = levels.shape[1]
    total = np.array([len(set(row)) == n for row in levels.tolist()])
    bad_rankings = {tuple(np.argsort(row).tolist()) for row in levels[total & bad]}
    cones: list[list[tuple[int, int]]] = []

    def cover(prefix: tuple[int, ...]) -> None:
        rest = [c for c in range(n) if c not in prefix]
        below = [prefix + p for p in itertools.permutations(rest)]
        hits = sum(p in bad_rankings for p in below)
        if hits == 0:
            return
        if hits == len(below):
            chain = list(itertools.pairwise(prefix))
            tail = [(prefix[-1], c) for c in rest] if prefix else []
            cones.append(chain + tail)
            return
        for c in rest:
            cover((*prefix, c))

    cover(())
    for row in levels[~total & bad]:
        if any(all(row[r[i]] <= row[r[i + 1]] for i in range(n - 1)) for r in bad_rankings):
            continue  # the closed cone of a bad ranking consistent with the ties holds it
        order = np.argsort(row, kind="stable").tolist()
        cone = []
        for a, b in itertools.pairwise(order):
            cone.append((a, b))
            if row[a] == row[b]:
                cone.append((b, a))
        cones.append(cone)
    return cones


def _outside(cone: list[tuple[int, int]], n: int) -> Predicate:
    """The predicate "y is not in the closed cone": some y_a >= y_b of it fails."""
    return Predicate(tuple(Clause.orderings([(b, a)], n) for a, b in cone))


def verify_corrected(
    layer: SelfCorrecting,
    prop: SafeOrdering,
    solver: str = "milp",
    timeout: float | None = None,
    config: SolverConfig | None = None,
) -> CheckResult:
    """Decide whether the corrected network answers and satisfies ``prop`` on its whole
    precondition region (CERTIFIED), fails at a checked witness (FALSIFIED), or neither
    within ``timeout`` seconds (TIMEOUT / UNKNOWN with the reason)."""
    start = time.perf_counter()
    config = config or SolverConfig()
    budget = config.timeout if timeout is None else timeout
    name = f"{solver}+selfcorrect"
    network = layer.ir
    if network is None:
        raise UnsupportedError(
            "verify_corrected needs the layer built on a verispec Network "
            "(SelfCorrecting(vs.Network.from_torch(module, input_shape), constraints))"
        )
    prop.validate_for(layer.num_classes)
    ordering_disjuncts(prop, "the property")
    if layer.top == "min" and prop.predicted_in is not None:
        raise UnsupportedError(
            "a property with predicted_in names argmax classes, but this layer predicts the "
            "minimal score (top='min'): state the property without predicted_in"
        )
    n = layer.num_classes
    if n > MAX_CLASSES:
        raise UnsupportedError(
            f"verify_corrected enumerates the weak orderings of the logits: {n} classes is "
            f"more than {MAX_CLASSES}"
        )
    target = prop.as_property()
    levels = weak_orderings(n)
    exact = solver_class(solver)(config)
    queries: list[tuple[Box | Polytope, list[tuple[int, int]]]] = []
    patterns = bad_cases = 0
    for pattern in _patterns(layer, prop.precondition):
        bad = _bad(layer, target, pattern, levels)
        patterns += 1
        if not bad.any():
            continue
        bad_cases += int(bad.sum())
        on = [layer.constraints[c].precondition for c in np.flatnonzero(pattern)]
        region = _intersect([prop.precondition, *on])
        if region is None:
            continue
        queries += [(region, cone) for cone in _cones(levels, bad)]
    enumerated = f"{len(levels)} weak orderings x {patterns} region pattern(s)"

    def answer(verdict: Verdict, detail: str, witness: np.ndarray | None = None) -> CheckResult:
        return CheckResult(
            verdict,
            name,
            time_s=time.perf_counter() - start,
            detail=detail,
            counterexample=witness,
        )

    if not queries:
        return answer(
            Verdict.CERTIFIED,
            f"proved by enumeration: the layer answers and satisfies the property on all "
            f"{enumerated}",
        )
    if len(queries) > MAX_QUERIES:
        return answer(
            Verdict.UNKNOWN,
            f"{bad_cases} bad cases need {len(queries)} solver queries (more than {MAX_QUERIES})",
        )
    asked = f"{len(queries)} solver queries for {bad_cases} bad cases of {enumerated}"
    spurious = 0
    for region, cone in queries:
        left = budget - (time.perf_counter() - start)
        res = None if left <= 0 else exact.solve(network, Property(region, _outside(cone, n)), left)
        if res is None or res.verdict is Verdict.TIMEOUT:
            return answer(Verdict.TIMEOUT, f"time limit; {asked}")
        if res.verdict is Verdict.CERTIFIED:
            continue
        if res.verdict is Verdict.FALSIFIED and res.counterexample is not None:
            witness = np.asarray(res.counterexample, dtype=np.float64)
            why = corrected_failure(layer, prop, witness)
            if why is not None:
                return answer(Verdict.FALSIFIED, why, witness.reshape(network.input_shape))
        spurious += 1
    if spurious:
        return answer(
            Verdict.UNKNOWN,
            f"{spurious} solver witness(es) failed the float64 re-check through the layer (a "
            f"tie, or another constraint's region); {asked}",
        )
    return answer(Verdict.CERTIFIED, f"proved: no bad case reachable; {asked}")


def corrected_failure(layer: SelfCorrecting, prop: SafeOrdering, x: np.ndarray) -> str | None:
    """Why the corrected network fails ``prop`` at x (float64 forward pass on the exact
    weights, then the layer), or None when it does not (or x is outside the region)."""
    network = layer.ir
    if network is None:
        raise UnsupportedError("corrected_failure needs the layer built on a verispec Network")
    if not prop.precondition.contains(x):
        return None
    y = torch.from_numpy(network.forward64(x[None]))
    xt = torch.from_numpy(np.array(x, dtype=np.float64).reshape(1, *network.input_shape))
    got = layer.revise(xt, y)
    if bool(got.abstained[0]):
        return "the corrected network abstains there (its active constraints contradict)"
    z = got.logits[:, : layer.num_classes].numpy()
    if not prop.as_property().predicate.holds(z)[0]:
        return f"the corrected logits {np.array2string(z[0], precision=6)} break the property"
    return None


SAMPLES = 10_000
"""Uniform samples of a property's region on which ``sampled_corrections`` counts the
layer's changes and abstentions."""


def sampled_corrections(
    layer: SelfCorrecting, region: Box | Polytope, samples: int = SAMPLES, seed: int = 0
) -> tuple[int, int, int]:
    """(points, changed, abstained): the layer's answers on ``samples`` seeded uniform points
    of ``region``'s box (a polytope: those of its box inside it; none without a box)."""
    box = region if isinstance(region, Box) else region.box
    if box is None or samples == 0:
        return 0, 0, 0
    rng = np.random.default_rng(seed)
    xs = rng.uniform(box.lo.ravel(), box.hi.ravel(), (samples, box.lo.size))
    if isinstance(region, Polytope):
        xs = xs[[region.contains(x) for x in xs]]
    if not len(xs):
        return 0, 0, 0
    with torch.no_grad():
        got = layer.correct(torch.from_numpy(xs.reshape(len(xs), *layer.input_shape)))
    return len(xs), int(got.changed.sum()), int(got.abstained.sum())


def vnnlib_constraints(
    path: str | Path, input_shape: tuple[int, ...], classes: int
) -> list[SafeOrdering]:
    """The safe orderings a VNN-LIB file states (its unsafe set negated), one per input box.
    A file whose safe set is not a DNF of orderings raises SpecError naming it."""
    spec = parse_vnnlib(path, math.prod(input_shape), classes)
    out = []
    for box in spec.boxes:
        shaped = Box(box.lo.reshape(input_shape), box.hi.reshape(input_shape))
        ordering = SafeOrdering(shaped, safe_property(spec, shaped).predicate)
        ordering_disjuncts(ordering, str(path))
        out.append(ordering)
    return out
