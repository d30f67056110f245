"""Self-correcting networks: a layer on top of a classifier that enforces safe-ordering
constraints at run time.

Each constraint is a ``SafeOrdering`` whose postcondition is a DNF of orderings y_a > y_b. At
an input x with logits y, a constraint is *active* when x lies in its precondition (and, with
``predicted_in``, when a top class of y is in the set: a tie counts as in the set, so the
constraint is enforced). For each row the layer

1. returns y unchanged when y already satisfies every active constraint;
2. otherwise picks one disjunct per active constraint so that the union of the chosen
   orderings is acyclic, preferring a choice that y satisfies, then one that keeps the top
   class of y on top, and returns y's values re-assigned along a linear extension of that
   order close to y's own ranking (``_linear_extension``), made strictly decreasing along it
   (a value tied with the one above it becomes the next float below);
3. abstains when no choice is acyclic (the active constraints contradict each other), or y
   is not finite.

The output has one more column than y: the *abstain* logit. It lies strictly below every
other logit when the layer answers and strictly above them when it abstains (the other
columns are then y itself), so the argmax of an abstaining row is the abstain class
(``Correction.abstained`` says the same). Its behaviour depends on y only through the
comparisons between its entries (a weak ordering), which is what lets ``verify`` enumerate it.

The choices per set of active constraints (the acyclic unions, deduplicated and reduced to
the inclusion-minimal ones, their transitive closures) are computed once per set and cached;
a batch runs a fixed number of tensor operations (and a loop over its distinct sets of active
constraints, never over rows).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch
from torch import nn

from verispec.errors import SpecError, UnsupportedError
from verispec.network import Network
from verispec.regions import Box, Polytope
from verispec.selfcorrect.ranktable import RankTable, usable
from verispec.specs import SafeOrdering

MAX_CHOICES = 4096
"""Disjunct combinations one set of active constraints may have (their product); more raises
``UnsupportedError`` when the layer is built."""

Edge = tuple[int, int]
"""(a, b): y_a > y_b."""


def ordering_disjuncts(constraint: SafeOrdering, where: str) -> tuple[frozenset[Edge], ...]:
    """The postcondition's clauses as sets of orderings (a, b) meaning y_a > y_b. An atom
    that is not a pure ordering (one +1, one -1, no offset) raises SpecError naming it."""
    out = []
    for k, clause in enumerate(constraint.postcondition.clauses):
        edges = set()
        for row, (coeffs, offset) in enumerate(zip(clause.C, clause.d, strict=True)):
            plus, minus = np.flatnonzero(coeffs == 1.0), np.flatnonzero(coeffs == -1.0)
            if offset != 0 or len(plus) != 1 or len(minus) != 1 or np.count_nonzero(coeffs) != 2:
                raise SpecError(
                    f"{where}: clause {k}, atom {row} is not an ordering y_a > y_b; a "
                    "self-correcting layer enforces orderings only"
                )
            edges.add((int(plus[0]), int(minus[0])))
        out.append(frozenset(edges))
    return tuple(out)


def transitive_closure(adj: np.ndarray) -> np.ndarray:
    """The transitive closure of a boolean adjacency matrix (n, n) (Warshall)."""
    reach = adj.copy()
    for k in range(reach.shape[0]):
        reach |= reach[:, k : k + 1] & reach[k : k + 1, :]
    return reach


@attrs.frozen(eq=False)
class Choices:
    """For one set of active constraints: the transitive closures (u, n, n) of the acyclic
    inclusion-minimal unions of one disjunct per constraint (none: the set contradicts)."""

    closures: np.ndarray

    @classmethod
    def of(cls, disjuncts: Sequence[tuple[frozenset[Edge], ...]], n: int) -> Choices:
        unions: dict[bytes, np.ndarray] = {}
        for combo in itertools.product(*disjuncts):
            adj = np.zeros((n, n), dtype=bool)
            for edges in combo:
                for a, b in edges:
                    adj[a, b] = True
            reach = transitive_closure(adj)
            if not reach.diagonal().any():
                unions.setdefault(reach.tobytes(), reach)
        graphs = list(unions.values())
        minimal = [
            g
            for i, g in enumerate(graphs)
            if not any(
                j != i and np.all(h <= g) and not np.all(h == g) for j, h in enumerate(graphs)
            )
        ]
        closures = np.stack(minimal) if minimal else np.zeros((0, n, n), dtype=bool)
        return cls(closures)


@attrs.frozen(eq=False)
class Correction:
    """The layer's answer for a batch: ``logits`` (b, m + 1) with the abstain logit last,
    ``changed`` (b,): the first m columns differ from y, ``abstained`` (b,)."""

    logits: torch.Tensor
    changed: torch.Tensor
    abstained: torch.Tensor


class _Preconditions(nn.Module):
    """The constraints' preconditions on x, decided exactly for a batch: a box by comparisons
    (float32 inputs against the box rounded inward to float32, which decides the same; other
    inputs in float64); a polytope by float64 A x with a bound on its rounding error, and the
    rare points within that bound of the boundary in rational arithmetic
    (``Polytope.contains``)."""

    bounds: torch.Tensor
    bounds32: torch.Tensor

    def __init__(self, constraints: Sequence[SafeOrdering], dims: int) -> None:
        super().__init__()
        lo = np.full((len(constraints), dims), -np.inf)
        hi = np.full((len(constraints), dims), np.inf)
        self.polytopes: list[int] = []
        self.regions = [c.precondition for c in constraints]
        for c, constraint in enumerate(constraints):
            region = constraint.precondition
            box = region if isinstance(region, Box) else region.box
            if box is not None:
                lo[c], hi[c] = box.lo.ravel(), box.hi.ravel()
            if isinstance(region, Polytope):
                A = np.asarray(region.A, dtype=np.float64)
                self.register_buffer(f"A{c}", torch.from_numpy(A.copy()))
                self.register_buffer(f"absA{c}", torch.from_numpy(np.abs(A)))
                self.register_buffer(
                    f"b{c}", torch.from_numpy(np.array(region.b, dtype=np.float64))
                )
                self.polytopes.append(c)
        # x in [lo, hi] reads (x, -x) >= (lo, -hi): one comparison, negation is exact
        self.register_buffer("bounds", torch.from_numpy(np.concatenate([lo, -hi], axis=1)))
        self.register_buffer(
            "bounds32", torch.from_numpy(np.concatenate([_up32(lo), -_down32(hi)], axis=1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d) -> (c, b) boolean: x in each precondition, decided exactly (batch last: the
        comparisons run along the batch)."""
        if x.dtype == torch.float32:
            signed, bounds = torch.cat([x, -x], dim=1), self.bounds32
        else:
            x64 = x.to(torch.float64)
            signed, bounds = torch.cat([x64, -x64], dim=1), self.bounds
        inside = (signed.T[None] < bounds[:, :, None]).sum(dim=1) == 0  # no bound violated
        if not self.polytopes:
            return inside
        x64 = x.to(torch.float64)
        for c in self.polytopes:
            A, absA, b = (getattr(self, f"{name}{c}") for name in ("A", "absA", "b"))
            value = x64 @ A.T
            d = A.shape[1]
            slack = (d + 2) * 2.0**-53 * 1.01 * (x64.abs() @ absA.T) + 2.0**-1020
            sure_in = (value + slack <= b).all(dim=1)
            sure_out = (value - slack > b).any(dim=1)
            unsure = torch.nonzero(inside[c] & ~sure_in & ~sure_out).flatten().tolist()
            inside[c] &= sure_in
            region = self.regions[c]
            for i in unsure:  # within rounding of the boundary: rational arithmetic decides
                inside[c, i] = region.contains(x64[i].cpu().numpy())
        return inside


def _up32(v: np.ndarray) -> np.ndarray:
    """The least float32 at or above each float64 (a float32 x has x >= v iff x >= it)."""
    with np.errstate(over="ignore"):  # beyond the float32 range: inf, which decides the same
        r = v.astype(np.float32)
        low = r.astype(np.float64) < v
        r[low] = np.nextafter(r[low], np.float32(np.inf))
    return r


def _down32(v: np.ndarray) -> np.ndarray:
    """The greatest float32 at or below each float64 (x <= v iff x <= it)."""
    return -_up32(-v)


class SelfCorrecting(nn.Module):
    """``network`` (a verispec ``Network`` or a torch module) followed by the self-correcting
    layer for ``constraints``. ``forward(x)`` returns (b, m + 1) logits, the abstain logit
    last; ``correct(x)`` also says which rows changed or abstained."""

    predicted_in: torch.Tensor
    gated: torch.Tensor
    bits: torch.Tensor

    def __init__(
        self,
        network: Network | nn.Module,
        constraints: Sequence[SafeOrdering],
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        top: str = "max",
    ) -> None:
        super().__init__()
        if top not in ("max", "min"):
            raise SpecError(f"SelfCorrecting top must be 'max' or 'min', got {top!r}")
        self.top = top
        """Which score is the prediction: "max" (logits) or "min" (costs, as in ACAS Xu,
        where the advisory is the minimal score). With "min" the layer keeps the minimal
        score's class, and the abstain logit is the minimum when it abstains."""
        self.sign = 1.0 if top == "max" else -1.0
        self.dtype: torch.dtype | None = None
        """The input dtype the network needs (float64 for a verispec Network; else None)."""
        self.ir: Network | None = None
        """The verispec network (what ``verify`` needs), when built from one."""
        if isinstance(network, Network):
            self.network: nn.Module = network.module(torch.float64)
            self.dtype = torch.float64
            self.ir = network
            input_shape, num_classes = network.input_shape, network.num_classes
        else:
            self.network = network
        if not constraints:
            raise SpecError("SelfCorrecting needs at least one constraint")
        if num_classes is None:
            num_classes = constraints[0].num_classes
        if input_shape is None:
            raise SpecError("SelfCorrecting on a torch module needs its input_shape")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.constraints = tuple(constraints)
        dims = math.prod(self.input_shape)
        for c, constraint in enumerate(self.constraints):
            constraint.validate_for(self.num_classes)
            region = constraint.precondition
            size = region.lo.size if isinstance(region, Box) else region.A.shape[1]
            if size != dims:
                raise SpecError(
                    f"constraint {c}: its precondition has {size} coordinates, the network's "
                    f"input {dims}"
                )
        self.disjuncts = tuple(
            ordering_disjuncts(c, f"constraint {k}") for k, c in enumerate(self.constraints)
        )
        if top == "min":  # work on -y, where y_a > y_b reads (-y)_b > (-y)_a
            self.disjuncts = tuple(
                tuple(frozenset((b, a) for a, b in d) for d in ds) for ds in self.disjuncts
            )
        combos = math.prod(len(d) for d in self.disjuncts)
        if combos > MAX_CHOICES:
            raise UnsupportedError(
                f"the constraints have {combos} disjunct combinations (more than "
                f"{MAX_CHOICES}): split them, or give fewer disjuncts per constraint"
            )
        pred = np.zeros((len(self.constraints), self.num_classes), dtype=bool)
        gated = np.zeros(len(self.constraints), dtype=bool)
        for c, constraint in enumerate(self.constraints):
            if constraint.predicted_in is not None:
                gated[c] = True
                pred[c, sorted(constraint.predicted_in)] = True
            else:
                pred[c] = True
        self.register_buffer("predicted_in", torch.from_numpy(pred))
        self.register_buffer("gated", torch.from_numpy(gated))
        self.register_buffer("bits", torch.tensor([1 << c for c in range(len(constraints))]))
        self.preconditions = _Preconditions(self.constraints, dims)
        self._choices: dict[int, Choices] = {}
        self._tables: dict[tuple[int, str], torch.Tensor] = {}
        self._ranks = (
            RankTable(self.num_classes, len(self.constraints), self.sign, self._reference)
            if usable(self.num_classes, len(self.constraints))
            else None
        )

    def choices(self, mask: int) -> Choices:
        """The choices for the active constraints named by the bits of ``mask`` (cached)."""
        if mask not in self._choices:
            active = [d for c, d in enumerate(self.disjuncts) if mask >> c & 1]
            self._choices[mask] = Choices.of(active, self.num_classes)
        return self._choices[mask]

    def _table(self, mask: int, device: torch.device) -> torch.Tensor:
        """``choices(mask).closures`` as a tensor on ``device`` (cached)."""
        key = (mask, str(device))
        if key not in self._tables:
            self._tables[key] = torch.from_numpy(self.choices(mask).closures).to(device)
        return self._tables[key]

    def active(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(b, c) boolean: each constraint's precondition holds at (x, y)."""
        return self.gate(self.preconditions(x.reshape(x.shape[0], -1)).T, y)

    def gate(self, inside: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(b, c) active constraints from ``inside`` (b, c), x in each precondition's region,
        and the logits: a constraint with ``predicted_in`` needs a predicted class of y (a top
        score; with ``top="min"`` a minimal one) in its set."""
        score = y * self.sign
        top = score == score.max(dim=1, keepdim=True).values
        predicted = (top[:, None, :] & self.predicted_in[None]).any(dim=2)
        return inside & (predicted | ~self.gated[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.correct(x).logits

    def correct(self, x: torch.Tensor) -> Correction:
        """The corrected logits of a batch of inputs, with the changed and abstained rows."""
        if self.dtype is not None:
            x = x.to(self.dtype)
        return self.revise(x, self.network(x))

    def revise(self, x: torch.Tensor, y: torch.Tensor) -> Correction:
        """The layer on given logits ``y`` (b, m) at inputs ``x`` (b, *input_shape): the
        answers by ranking (``ranktable``) for rows without ties, the general path
        (``revise_masked``) for the others, and for layers too large for the table."""
        inside = self.preconditions(x.reshape(x.shape[0], -1))  # (c, b)
        if self._ranks is None:
            return self.revise_masked(self.gate(inside.T, y), y)
        key, strict = self._ranks.keys_of(y)
        masks = (inside * self.bits[:, None]).sum(dim=0)
        gather, flags = self._ranks.lookup(masks, key)
        changed = (flags & RankTable.CHANGED) != 0
        abstained = (flags & RankTable.ABSTAINED) != 0
        low, high = torch.aminmax(y, dim=1)
        up = abstained if self.sign > 0 else ~abstained  # the abstain logit goes above all
        extra = torch.where(up, high + (1 + high.abs()), low - (1 + low.abs()))
        out = torch.cat([y.gather(1, gather), extra[:, None]], dim=1)
        # rows with a tie (or NaN) or an infinite logit (or a span that overflows) go to the
        # general path
        general = ~(strict & torch.isfinite(high - low))
        if bool(general.any()):
            rows = torch.nonzero(general).flatten()
            part = self.revise_masked(self.gate(inside.T[rows], y[rows]), y[rows])
            out = out.index_copy(0, rows, part.logits)
            changed = changed.index_copy(0, rows, part.changed)
            abstained = abstained.index_copy(0, rows, part.abstained)
        return Correction(out, changed, abstained)

    def _reference(
        self, inside: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The general path on regions and logits, for ``RankTable``."""
        got = self.revise_masked(self.gate(inside, y), y)
        return got.logits[:, : self.num_classes], got.changed, got.abstained

    def revise_masked(self, active: torch.Tensor, y: torch.Tensor) -> Correction:
        """The layer on logits ``y`` (b, m) with the active constraints given (b, c)."""
        if self.sign < 0:
            flipped = self._revise(active, -y)
            return attrs.evolve(flipped, logits=-flipped.logits)
        return self._revise(active, y)

    def _revise(self, active: torch.Tensor, y: torch.Tensor) -> Correction:
        """Rows with no active constraint (and finite logits) pass through; the others go to
        ``_revise_rows``."""
        busy = active.any(dim=1) | ~torch.isfinite(y).all(dim=1)
        if bool(busy.all()):
            return self._revise_rows(active, y)
        low = y.min(dim=1).values
        out = torch.cat([y, (low - (1 + low.abs()))[:, None]], dim=1)
        changed = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        abstained = torch.zeros_like(changed)
        rows = torch.nonzero(busy).flatten()
        if len(rows):
            part = self._revise_rows(active[rows], y[rows])
            out = out.index_copy(0, rows, part.logits)
            changed[rows], abstained[rows] = part.changed, part.abstained
        return Correction(out, changed, abstained)

    def _revise_rows(self, active: torch.Tensor, y: torch.Tensor) -> Correction:
        b, n = y.shape
        masks = (active.long() * self.bits[None]).sum(dim=1)
        finite = torch.isfinite(y).all(dim=1)
        unique, inverse = torch.unique(masks, return_inverse=True)
        tables = [self._table(int(m), y.device) for m in unique.tolist()]
        if len(tables) == 1:  # one set of active constraints: no padding, no gather
            closures = tables[0][None].expand(b, -1, -1, -1)  # (b, u, n, n)
            real = torch.ones((b, closures.shape[1]), dtype=torch.bool, device=y.device)
        else:
            width = max(t.shape[0] for t in tables)
            table = torch.zeros((len(tables), width, n, n), dtype=torch.bool, device=y.device)
            padded = torch.zeros((len(tables), width), dtype=torch.bool, device=y.device)
            for k, t in enumerate(tables):
                table[k, : t.shape[0]] = t
                padded[k, : t.shape[0]] = True
            closures, real = table[inverse], padded[inverse]
        if closures.shape[1] == 0:  # every row's constraints contradict: a dummy choice
            closures = torch.zeros((b, 1, n, n), dtype=torch.bool, device=y.device)
            real = torch.zeros((b, 1), dtype=torch.bool, device=y.device)
        valid = real & finite[:, None]
        above = y[:, :, None] > y[:, None, :]  # (b, n, n): y_a > y_c
        satisfied = (~closures | above[:, None]).all(dim=(2, 3))
        rank = _ranks(y)
        top = torch.argmin(rank, dim=1)
        keeps_top = ~closures[torch.arange(b), :, :, top].any(dim=2)
        score = torch.where(valid, 1 + keeps_top.long() + 2 * satisfied.long(), 0)
        best = torch.argmax(score, dim=1)
        rows = torch.arange(b, device=y.device)
        abstained = score[rows, best] == 0
        unchanged = satisfied[rows, best] & ~abstained
        graph = closures[rows, best]  # (b, n, n): graph[a, c] means a must be above c
        order = _linear_extension(graph, rank)
        values = _strictly_decreasing(torch.sort(y, dim=1, descending=True).values)
        moved = torch.empty_like(y).scatter(1, order, values)
        # a guard, not a rule: the order is a linear extension of the graph and the values
        # strictly decrease along it, so this only fails where a value overflowed
        ok = torch.isfinite(moved).all(dim=1) & (
            ~graph | (moved[:, :, None] > moved[:, None, :])
        ).all(dim=(1, 2))
        abstained = abstained | (~unchanged & ~ok)
        keep = (unchanged | abstained)[:, None]
        logits = torch.where(keep, y, moved)
        low, high = logits.min(dim=1).values, logits.max(dim=1).values
        extra = torch.where(abstained, high + (1 + high.abs()), low - (1 + low.abs()))
        extra = torch.where(finite, extra, torch.full_like(extra, math.inf))
        out = torch.cat([logits, extra[:, None]], dim=1)
        changed = (logits != y).any(dim=1) & ~abstained
        return Correction(out, changed, abstained)


def _ranks(y: torch.Tensor) -> torch.Tensor:
    """(b, n) position of each class in y's ranking: descending logits, ties to the lower
    class index."""
    order = torch.sort(y, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    positions = torch.arange(y.shape[1], device=y.device).expand_as(order)
    return rank.scatter_(1, order, positions)


def _linear_extension(graph: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """(b, n) classes in an order that is a linear extension of each row's ``graph`` (a
    transitive closure: graph[a, j] means a must be above j), close to ``rank``: sorted by
    the worst rank among the class and the classes required above it, then by how many are
    required above it, then by its own rank. A class required above j sorts before j: its
    worst rank is at most j's, and when equal it has fewer classes above it (the closure is
    acyclic). A class with nothing required above it keeps its rank as its key, so y's top
    class stays first whenever nothing is required above it."""
    n = rank.shape[1]
    above = torch.where(graph, rank[:, :, None], -1)  # (b, a, j): rank of a if a above j
    worst = torch.maximum(above.amax(dim=1), rank)
    count = graph.sum(dim=1)
    key = (worst * (n + 1) + count) * n + rank
    return torch.argsort(key, dim=1)


def _strictly_decreasing(values: torch.Tensor) -> torch.Tensor:
    """Sorted (descending) rows made strictly decreasing: a value not below the one before it
    becomes the next float below that one."""
    cols = [values[:, 0]]
    for k in range(1, values.shape[1]):
        last = cols[-1]
        step = (last - torch.nextafter(last, torch.full_like(last, -math.inf))).detach()
        cols.append(torch.minimum(values[:, k], last - step))  # last - step: exact, and has a
    return torch.stack(cols, dim=1)  # gradient (nextafter has none)
