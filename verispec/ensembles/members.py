"""Ensembles of certified classifiers: the cascade (as published, and unsound) and sound voting.

A member is a network with the engine that certifies it. At a point x and a local-robustness
spec (eps, norm) each member k has a prediction F_k(x) (its float64 argmax; the certified class
where its engine certifies) and a flag cert_k(x) (its engine says CERTIFIED at x for eps).

**Cascade** (Wong et al. 2018; its flaw: Mangal et al., *On the Perils of Cascading Robust
Classifiers*, ICLR 2023). The cascade answers with the first member that certifies x and claims
robustness at x; when no member certifies, it answers with the last member's prediction,
uncertified. The claim is **unsound**: at x' in the ball an earlier member may start to
certify, with another class, and the cascade's answer at x' changes although it "certified" x.
verispec keeps it exactly as published so that it can be attacked (``casa``) and audited
(``exact``); nothing else in verispec trusts its certificates.

**Voting** (Mangal et al., section 5). A weighted plurality of the members' predictions (ties to
the lowest class). It is certified at x when the winner w keeps its lead after the adversary
moves the vote of every member not certified at x to the strongest other class:
C_w > max_{j != w} (C_j + U), with C_j the weight of the certified members voting j and U the
total weight of the uncertified ones. Sound whenever the members' certifiers are: on the whole
ball the certified members keep their votes (their engines proved it), so w gets at least C_w
and any other class at most C_j + U. Weight sums are decided exactly (rationals) wherever
float64 sums come within rounding of each other.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, ClassVar, final

import attrs
import numpy as np

from verispec.engines.base import Engine, validate_labels, validate_points
from verispec.errors import SpecError, UnsupportedError
from verispec.network import Network
from verispec.regions import Box, FloatArray
from verispec.results import BatchResult, Verdict
from verispec.specs import LocalRobustness, Spec

CASCADE_UNSOUND = "the cascade's claim, unsound as published"


@attrs.frozen(eq=False)
class Member:
    """A network and the engine that certifies it (a deterministic engine: its CERTIFIED must
    hold for the network itself)."""

    network: Network = attrs.field(validator=attrs.validators.instance_of(Network))
    engine: Engine
    name: str = ""

    def label(self, index: int) -> str:
        """The member's name, or "member <index>"."""
        return self.name or f"member {index}"


def _members(value: Sequence[Member]) -> tuple[Member, ...]:
    members = tuple(value)
    if not members:
        raise SpecError("an ensemble needs at least one member")
    for i, m in enumerate(members):
        if not isinstance(m, Member):
            raise SpecError(f"ensemble member {i} is a {type(m).__name__}, not a Member")
    first = members[0].network
    for i, m in enumerate(members[1:], start=1):
        if m.network.input_shape != first.input_shape:
            raise SpecError(
                f"{m.label(i)} takes inputs of shape {m.network.input_shape}, "
                f"{members[0].label(0)} {first.input_shape}: members must share the input"
            )
        if m.network.num_classes != first.num_classes:
            raise SpecError(
                f"{m.label(i)} has {m.network.num_classes} classes, "
                f"{members[0].label(0)} {first.num_classes}: members must share the classes"
            )
    return members


@attrs.frozen(eq=False)
class MemberDecisions:
    """Each member's view of n points: ``predicted`` (k, n) classes (the certified class where
    certified, else the float64 argmax), ``certified`` (k, n) flags and ``time_s`` (k,) seconds
    each member's engine took."""

    predicted: np.ndarray
    certified: np.ndarray
    time_s: FloatArray


@attrs.frozen(eq=False)
class Answer:
    """An ensemble's answer at n points: its class (n,), whether it claims robustness (n,),
    per point a short account of how it decided (which member answered, the votes), where
    it abstains (n,; None: nowhere) and warnings that hold for every point."""

    predicted: np.ndarray
    certified: np.ndarray
    details: tuple[str, ...]
    abstained: np.ndarray | None = None
    warnings: tuple[str, ...] = ()


class Ensemble(abc.ABC):
    """Members with their certifiers; ``check`` is the same for every kind of ensemble."""

    kind: ClassVar[str] = ""
    sound: ClassVar[bool] = True
    """Whether the ensemble's certificates are sound (False only for the published cascade)."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = _members(members)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.members[0].network.input_shape

    @property
    def num_classes(self) -> int:
        return self.members[0].network.num_classes

    @property
    def name(self) -> str:
        """What reports name as the engine: the kind and the members' engines."""
        engines = ",".join(m.engine.name for m in self.members)
        return f"{self.kind}[{engines}]"

    def supports(self, spec: Spec) -> None:
        """Raise UnsupportedError unless every member's engine can check ``spec`` (local
        robustness only: the combination rules are stated for a single predicted class)."""
        if not isinstance(spec, LocalRobustness):
            raise UnsupportedError(
                f"a {self.kind} ensemble certifies LocalRobustness only, not {type(spec).__name__}"
            )
        for i, m in enumerate(self.members):
            try:
                m.engine.supports(m.network, spec)
            except UnsupportedError as err:
                raise UnsupportedError(f"{m.label(i)}: {err}") from None

    def decisions(
        self, spec: LocalRobustness, xs: FloatArray, domain: Box | None = None
    ) -> MemberDecisions:
        """Run every member's engine at ``xs`` (validated float64 points)."""
        k, n = len(self.members), len(xs)
        predicted = np.empty((k, n), dtype=np.int64)
        certified = np.zeros((k, n), dtype=bool)
        times = np.zeros(k)
        for i, m in enumerate(self.members):
            start = time.perf_counter()
            batch = m.engine.check(m.network, spec, xs, None, domain)
            if not isinstance(batch, BatchResult):
                batch = BatchResult.from_results(list(batch))
            if batch.probabilistic:
                raise UnsupportedError(
                    f"{m.label(i)}: engine {m.engine.name!r} certifies a smoothed classifier "
                    "(a probabilistic guarantee), not the member: ensembles need deterministic "
                    "certifiers"
                )
            certified[i] = batch.verdicts == Verdict.CERTIFIED.code
            predicted[i] = np.argmax(m.network.forward64(xs), axis=1)
            if batch.predicted is not None:  # the certified class is the engine's
                predicted[i] = np.where(certified[i], batch.predicted, predicted[i])
            times[i] = time.perf_counter() - start
        return MemberDecisions(predicted, certified, times)

    def answer(self, spec: LocalRobustness, xs: Any, domain: Box | None = None) -> Answer:
        """The ensemble's class and claim at each point of ``xs`` (n, *input_shape)."""
        self.supports(spec)
        points = validate_points(self.members[0].network, xs, domain)
        if not len(points):
            return Answer(np.zeros(0, np.int64), np.zeros(0, bool), ())
        return self._combine(self.decisions(spec, points, domain))

    def combine(self, d: MemberDecisions) -> Answer:
        """The ensemble's answer from its members' decisions (``decisions``), for callers
        that decide the members once and combine them in several ways."""
        if d.predicted.shape[0] != len(self.members):
            raise SpecError(
                f"decisions of {d.predicted.shape[0]} members for an ensemble of "
                f"{len(self.members)}"
            )
        return self._combine(d)

    @abc.abstractmethod
    def _combine(self, d: MemberDecisions) -> Answer:
        """The ensemble's rule: its answer from the members' decisions."""

    @final
    def check(
        self,
        spec: Spec,
        xs: Any,
        labels: Any = None,
        domain: Box | None = None,
    ) -> BatchResult:
        """CERTIFIED where the ensemble claims robustness at the point for ``spec``, ABSTAIN
        where it abstains, else UNKNOWN; ``predicted`` is the ensemble's class and each detail
        says how it decided."""
        start = time.perf_counter()
        self.supports(spec)
        assert isinstance(spec, LocalRobustness)  # supports() refuses every other kind
        points = validate_points(self.members[0].network, xs, domain)
        checked = validate_labels(self.members[0].network, labels, len(points))
        n = len(points)
        ans = (
            self._combine(self.decisions(spec, points, domain))
            if n
            else Answer(np.zeros(0, np.int64), np.zeros(0, bool), ())
        )
        abstained = np.zeros(n, bool) if ans.abstained is None else ans.abstained
        open_ = np.where(abstained, Verdict.ABSTAIN.code, Verdict.UNKNOWN.code)
        verdicts = np.where(ans.certified, Verdict.CERTIFIED.code, open_)
        return BatchResult.build(
            self.name,
            verdicts.astype(np.int8),
            time_s=(time.perf_counter() - start) / max(n, 1),
            predicted=ans.predicted if n else None,
            labels=checked,
            details=dict(enumerate(ans.details)),
            warnings={i: ans.warnings for i in range(n)} if ans.warnings else None,
        )


class Cascade(Ensemble):
    """The first member that certifies x answers, and the cascade claims robustness at x; with
    no member certifying, the last member answers, uncertified. UNSOUND (module docstring)."""

    kind = "cascade"
    sound = False

    def _combine(self, d: MemberDecisions) -> Answer:
        k, n = d.certified.shape
        any_cert: np.ndarray = np.asarray(d.certified.any(axis=0))
        first = np.where(any_cert, np.argmax(d.certified, axis=0), k - 1)
        predicted = d.predicted[first, np.arange(n)]
        labels = [m.label(i) for i, m in enumerate(self.members)]
        details = tuple(
            f"{labels[f]} certified class {c} ({CASCADE_UNSOUND})"
            if a
            else f"no member certified: {labels[f]} answered {c}"
            for f, c, a in zip(first.tolist(), predicted.tolist(), any_cert.tolist(), strict=True)
        )
        return Answer(predicted, any_cert, details)


def _weights(value: Sequence[float] | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    out = tuple(float(w) for w in value)
    if not out or not all(np.isfinite(w) and w > 0 for w in out):
        raise SpecError(f"voting weights must be positive and finite, got {list(out)}")
    return out


class Voting(Ensemble):
    """A weighted plurality of the members' predictions, certified when the winner keeps its
    lead with every uncertified member's vote given to the strongest other class (sound)."""

    kind = "voting"

    def __init__(self, members: Sequence[Member], weights: Sequence[float] | None = None) -> None:
        super().__init__(members)
        given = _weights(weights)
        if given is not None and len(given) != len(self.members):
            raise SpecError(f"{len(given)} voting weights for {len(self.members)} members")
        self.weights: tuple[float, ...] = given or (1.0,) * len(self.members)

    def _combine(self, d: MemberDecisions) -> Answer:
        k, n = d.certified.shape
        m = self.num_classes
        w = np.asarray(self.weights)
        onehot = np.zeros((k, n, m))
        onehot[np.arange(k)[:, None], np.arange(n)[None, :], d.predicted] = 1.0
        total = np.einsum("k,knm->nm", w, onehot)  # every vote
        sure = np.einsum("k,knm->nm", w, onehot * d.certified[:, :, None])  # certified votes
        loose = w @ (~d.certified)  # (n,) the weight the adversary may move
        winner = np.argmax(total, axis=1)
        rows = np.arange(n)
        rivals = sure + loose[:, None]
        rivals[rows, winner] = -np.inf
        lead = sure[rows, winner] - rivals.max(axis=1)
        certified = lead > 0
        # float64 sums of weights round: decide exactly where they come close
        scale = float(np.sum(w)) * 2.0**-40
        close = np.flatnonzero((np.abs(lead) <= scale) | _near_tie(total, scale))
        for p in close.tolist():
            winner[p], certified[p] = self._exact(d, p)
        details = tuple(
            f"votes {_tally(d.predicted[:, p], d.certified[:, p], self.weights)}: class "
            f"{int(winner[p])} {'keeps' if certified[p] else 'may lose'} its lead"
            for p in range(n)
        )
        return Answer(winner, certified, details)

    def _exact(self, d: MemberDecisions, p: int) -> tuple[int, bool]:
        """Winner and certification at point ``p`` in rational arithmetic."""
        m = self.num_classes
        total = [Fraction(0)] * m
        sure = [Fraction(0)] * m
        loose = Fraction(0)
        for i, w in enumerate(self.weights):
            c, fw = int(d.predicted[i, p]), Fraction(w)
            total[c] += fw
            if d.certified[i, p]:
                sure[c] += fw
            else:
                loose += fw
        winner = max(range(m), key=lambda j: (total[j], -j))
        best_rival = max((sure[j] + loose for j in range(m) if j != winner), default=None)
        return winner, best_rival is None or sure[winner] > best_rival


def _near_tie(total: FloatArray, scale: float) -> np.ndarray:
    """Points whose top two vote totals are within ``scale`` (the plurality is decided
    exactly there)."""
    if total.shape[1] < 2:
        return np.zeros(total.shape[0], dtype=bool)
    top = np.sort(total, axis=1)[:, -2:]
    return np.asarray((top[:, 1] - top[:, 0]) <= scale)


def _tally(predicted: np.ndarray, certified: np.ndarray, weights: Sequence[float]) -> str:
    """ "class: certified weight + uncertified weight" for each class that got a vote."""
    out: dict[int, list[float]] = {}
    for c, cert, w in zip(predicted.tolist(), certified.tolist(), weights, strict=True):
        out.setdefault(int(c), [0.0, 0.0])[0 if cert else 1] += w
    return ", ".join(f"{c}: {s:g}+{u:g}" for c, (s, u) in sorted(out.items()))
