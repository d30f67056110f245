"""The engine base class, the engine registry and shared batching helpers.

An engine checks a specification on a network, batched over points::

    engine.supports(network, spec)                   # raises UnsupportedError with the reason
    engine.check(network, spec, xs, labels, domain)  # -> BatchResult, one result per point

For a global property (``SafeOrdering``) ``xs`` is ignored and ``check`` returns one result.

``EngineBase.check`` is final and the same for every engine: it calls ``supports``, validates
the points (shape against ``network.input_shape``, real and finite, taken as float64) and the
labels (one integer class per point), answers what needs no engine (no points; an affinity
point whose predicted class is in no group is FALSIFIED by the point itself), hands the rest
to the engine's decision and assembles the ``BatchResult``. An engine implements only:

    _decide_points(network, spec, xs, domain) -> BatchResult   # point specs, goals non-empty
    _decide_global(network, spec) -> CheckResult               # SafeOrdering (optional)
    _supports(network, spec)                                   # engine-specific refusals

and declares ``spec_kinds`` (the spec classes it decides) and ``needs_bounded_precondition``
(a SafeOrdering polytope without a box is refused). An engine that does not implement
``_decide_global`` does not support SafeOrdering.

``engine.numbered(indices)`` is the engine for points with these indices in a run
(``verispec.check`` numbers each chunk by its points' indices in the data): an engine whose
decision at a point depends on the point's index (smoothing keys each point's noise by it)
overrides it; for the others it is the engine itself.

Engines are registered by name with ``@register_engine`` (a typed ``Registry``) and built from
their typed ``Config``.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol, Self, final

import attrs
import numpy as np

from verispec.errors import SpecError, UnsupportedError
from verispec.network import Network
from verispec.precision import certified_arithmetic
from verispec.regions import Box, FloatArray, Polytope
from verispec.registry import Registry
from verispec.results import BatchResult, CheckResult, Verdict
from verispec.specs import Affinity, LocalRobustness, PointSpec, RelaxedTopK, SafeOrdering, Spec

EMPTY_GOAL_DETAIL = "predicted class is in no group"
"""The detail of an affinity point falsified by itself."""


class Engine(Protocol):
    """What every engine provides (``EngineBase`` implements it; audits accept any)."""

    name: ClassVar[str]

    def supports(self, network: Network, spec: Spec) -> None:
        """Raise ``UnsupportedError`` (naming the spec, region or layer) if ``check`` cannot run."""

    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> Sequence[CheckResult]:
        """Check ``spec`` at every point of ``xs`` (n, *input_shape); labels (n,) are recorded."""
        ...


class EngineBase(abc.ABC):
    """The shared ``check`` template (module docstring); subclasses implement the decision."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[Any]]
    spec_kinds: ClassVar[tuple[type, ...]] = (LocalRobustness, RelaxedTopK, Affinity, SafeOrdering)
    """The spec classes the engine decides."""
    needs_bounded_precondition: ClassVar[bool] = False
    """Whether a SafeOrdering precondition must be bounded (a polytope needs a box)."""
    unsupported_reason: ClassVar[str] = ""
    """Why the spec kinds outside ``spec_kinds`` are refused (appended to the message)."""

    def __init__(self, config: Any = None) -> None:  # noqa: B027 (subclasses keep a typed config)
        """Engines are built from their ``Config`` (None: its defaults)."""

    # -- what the engine implements -----------------------------------------------------------
    @abc.abstractmethod
    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        """Decide ``spec`` at every point of ``xs`` (n, *input_shape), validated float64, n >= 1,
        every goal non-empty: one result per point, labels left to ``check``."""

    def _decide_global(self, network: Network, spec: SafeOrdering) -> CheckResult:
        """Decide a global property (the precondition is bounded if the engine said it must)."""
        raise UnsupportedError(f"the {self.name} engine does not check SafeOrdering")

    def _supports(self, network: Network, spec: Spec) -> None:  # noqa: B027 (optional hook)
        """Engine-specific refusals (layers, norms); the spec kind is already accepted."""

    def numbered(self, indices: int | Sequence[int] | np.ndarray) -> Self:
        """This engine for points with these indices in the run (an int: the first point's of
        each call, the others following; else one index per point): engines whose decision at a
        point depends on its index return a copy that uses them, the others themselves."""
        return self

    # -- the template -------------------------------------------------------------------------
    @final
    def supports(self, network: Network, spec: Spec) -> None:
        """Raise ``UnsupportedError`` if ``check`` cannot run (SpecError if the spec does not fit
        the network's classes)."""
        global_ok = type(self)._decide_global is not EngineBase._decide_global
        if not isinstance(spec, self.spec_kinds) or (
            isinstance(spec, SafeOrdering) and not global_ok
        ):
            reason = f": {self.unsupported_reason}" if self.unsupported_reason else ""
            raise UnsupportedError(
                f"the {self.name} engine does not support {type(spec).__name__}{reason}"
            )
        if isinstance(spec, SafeOrdering) and self.needs_bounded_precondition:
            region = spec.precondition
            if isinstance(region, Polytope) and region.box is None:
                raise UnsupportedError(
                    f"the {self.name} engine needs a bounded precondition: give the polytope a box"
                )
        spec.validate_for(network.num_classes)
        self._supports(network, spec)

    @final
    def check(
        self,
        network: Network,
        spec: Spec,
        xs: FloatArray | None = None,
        labels: np.ndarray | None = None,
        domain: Box | None = None,
    ) -> BatchResult:
        """Check ``spec`` at every point of ``xs`` (n, *input_shape); labels (n,) are recorded.
        A SafeOrdering spec ignores ``xs`` and ``labels``: exactly one result. The engine runs
        in IEEE arithmetic (``certified_arithmetic``: no TF32, no Winograd or FFT
        convolutions), whatever the process's torch flags are."""
        self.supports(network, spec)
        with certified_arithmetic():
            if isinstance(spec, SafeOrdering):
                result = self._decide_global(network, spec)
                if result.engine != self.name:
                    result = attrs.evolve(result, engine=self.name)
                return BatchResult.from_results([result])
            points = validate_points(network, xs, domain)
            checked_labels = validate_labels(network, labels, len(points))
            if len(points) == 0:
                batch = BatchResult.empty(self.name)
            elif isinstance(spec, Affinity):
                batch = self._decide_affinity(network, spec, points, domain)
            else:
                batch = self._decided(network, spec, points, domain)
            return batch.with_labels(checked_labels)

    def _decided(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        """The engine's decision, checked to be one result per point, under this engine's name."""
        batch = self._decide_points(network, spec, xs, domain)
        if len(batch) != len(xs):
            raise RuntimeError(
                f"engine {self.name!r} decided {len(batch)} points of {len(xs)}: an engine bug"
            )
        if batch.engine != self.name:
            batch = attrs.evolve(batch, engine=self.name)
        return _undecided_at_near_ties(network, spec, xs, batch)

    def _decide_affinity(
        self, network: Network, spec: Affinity, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        """Points whose predicted class (float64) is in no group fail at the point itself; the
        engine decides the others."""
        start = time.perf_counter()
        ys = network.forward64(xs)
        predicted = np.argmax(ys, axis=1)
        in_group = np.zeros(network.num_classes, dtype=bool)
        for group in spec.groups:
            in_group[sorted(group)] = True
        own: list[int] = []
        for i in np.flatnonzero(~in_group[predicted]).tolist():
            x = xs[i]
            y = network.forward64(x[None])[0]  # alone: a batched pass may round differently
            predicted[i] = int(np.argmax(y))
            if not spec.at(x, y, domain).alternatives:
                own.append(i)  # x lies in its ball (and the domain): it is the counterexample
            # else a near-tie: the point's own pass puts it in a group; the engine decides
        if not own:
            return self._decided(network, spec, xs, domain)
        rest = np.setdiff1d(np.arange(len(xs)), own)
        parts = [
            BatchResult.build(
                self.name,
                [Verdict.FALSIFIED] * len(own),
                time_s=(time.perf_counter() - start) / len(xs),
                predicted=predicted[own],
                counterexamples={k: xs[i] for k, i in enumerate(own)},
                details=dict.fromkeys(range(len(own)), EMPTY_GOAL_DETAIL),
            )
        ]
        if len(rest):
            decided = self._decided(network, spec, xs[rest], domain)
            if decided.predicted is None:
                decided = attrs.evolve(decided, predicted=predicted[rest])
            parts.insert(0, decided)
        order = np.concatenate([rest, np.array(own, dtype=np.int64)])
        return BatchResult.concat(parts).take(np.argsort(order, kind="stable"))


NEAR_TIE = 1e-11
"""Relative gap between ranked logits at x below which float64 does not decide the ranking
(``NEAR_TIE * (1 + max |y|)``): a spec compiled from that ranking is never FALSIFIED or
CERTIFIED there unless exact arithmetic confirms the ranking."""

NEAR_TIE_DETAIL = "near-tie at the point: float64 does not decide its ranking of the classes"


def _undecided_at_near_ties(
    network: Network, spec: PointSpec, xs: FloatArray, batch: BatchResult
) -> BatchResult:
    """FALSIFIED or CERTIFIED -> UNKNOWN where the spec's ranking at x (top two classes; the
    first k + 1 for relaxed top-k) is a float64 near-tie that exact rational arithmetic does
    not confirm: the goal itself may name the wrong class, so neither a witness against it
    nor a proof of it says anything about the spec. (An engine whose certificate needs a
    margin above its rounding never certifies there; an exact solver on the lowered network,
    whose composed float64 weights round, can.)"""
    decided = np.flatnonzero(
        (batch.verdicts == Verdict.FALSIFIED.code) | (batch.verdicts == Verdict.CERTIFIED.code)
    )
    if not len(decided):
        return batch
    ys = np.sort(network.forward64(xs[decided]), axis=1)[:, ::-1]
    depth = min(ys.shape[1], spec.k + 1 if isinstance(spec, RelaxedTopK) else 2)
    gaps = np.min(ys[:, : depth - 1] - ys[:, 1:depth], axis=1) if depth > 1 else np.inf
    scale = 1.0 + np.max(np.abs(ys), axis=1)
    close = decided[gaps <= NEAR_TIE * scale]
    tied = np.array(
        [i for i in close.tolist() if not _float_ranking_is_exact(network, xs[i], depth)],
        dtype=np.int64,
    )
    if not len(tied):
        return batch
    verdicts = batch.verdicts.copy()
    verdicts[tied] = Verdict.UNKNOWN.code
    details = dict(batch.details)
    details.update(dict.fromkeys(tied.tolist(), NEAR_TIE_DETAIL))
    witnesses = {k: v for k, v in batch.counterexamples.items() if k not in set(tied.tolist())}
    return attrs.evolve(batch, verdicts=verdicts, details=details, counterexamples=witnesses)


def _float_ranking_is_exact(network: Network, x: FloatArray, depth: int) -> bool:
    """Whether the float64 ranking of the first ``depth`` classes at x (argmax order: ties to
    the lower index) is the exact one (rational arithmetic)."""
    from verispec.exact_forward import exact_logits

    y = network.forward64(x[None])[0]
    exact = exact_logits(network, x)
    float_order = np.argsort(-y, kind="stable")[:depth].tolist()
    exact_order = sorted(range(len(exact)), key=lambda j: (-exact[j], j))[:depth]
    return bool(float_order == exact_order)


def validate_points(network: Network, xs: Any, domain: Box | None = None) -> FloatArray:
    """``xs`` as float64 points (n, *network.input_shape): real, finite, shaped for the network
    and inside ``domain`` when one is given (SpecError otherwise)."""
    if xs is None:
        raise SpecError("point specifications are checked at points: give xs (n, *input_shape)")
    arr = np.asarray(xs)
    want = network.input_shape
    if arr.dtype.kind not in "fiu":
        raise SpecError(f"points must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != len(want) + 1 or arr.shape[1:] != want:
        raise SpecError(
            f"points have shape {arr.shape}, the network expects (n, {', '.join(map(str, want))})"
            " with n the number of points"
        )
    arr = arr.astype(np.float64, copy=False)
    if not arr.size:
        return arr
    low, high = arr.min(), arr.max()  # NaN propagates: a fast path for the common case
    if (
        domain is not None
        and domain.lo.shape == want
        and low >= domain.lo.min()
        and high <= domain.hi.max()
        and domain.lo.min() == domain.lo.max()
        and domain.hi.min() == domain.hi.max()
    ):
        return arr  # inside a uniform box [lo, hi] (hence finite: boxes are)
    if domain is None and np.isfinite(low) and np.isfinite(high):
        return arr
    finite = np.isfinite(arr).reshape(arr.shape[0], math.prod(want)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise SpecError(
            f"points contain NaN or infinity: point {int(bad[0])} ({bad.size} of {arr.shape[0]})"
        )
    if domain is not None:
        if domain.lo.shape != want:
            raise SpecError(f"the domain has shape {domain.lo.shape}, the points {want}")
        inside = ((arr >= domain.lo) & (arr <= domain.hi)).reshape(arr.shape[0], -1).all(axis=1)
        if not inside.all():
            bad = np.flatnonzero(~inside)
            raise SpecError(
                f"points lie outside the data domain: point {int(bad[0])} "
                f"({bad.size} of {arr.shape[0]})"
            )
    return arr


def validate_labels(network: Network, labels: Any, n: int) -> np.ndarray | None:
    """``labels`` as (n,) int64 classes of the network, or None (SpecError otherwise)."""
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise SpecError(f"labels have shape {arr.shape}, want ({n},): one per point")
    if n == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise SpecError(f"labels must be integer classes, got dtype {arr.dtype}")
    m = network.num_classes
    bad = np.flatnonzero((arr < 0) | (arr >= m))
    if bad.size:
        raise SpecError(
            f"label {arr[bad[0]]} of point {int(bad[0])} is not a class of the model (0..{m - 1})"
        )
    return arr.astype(np.int64)


def _load_builtin_engines() -> None:
    """Import the modules that register the built-in engines (explicit, no import-time magic)."""
    from verispec.engines import exact, linear_bounds, lipschitz, projections, smoothing  # noqa: F401


ENGINES: Registry[EngineBase] = Registry("engine", loader=_load_builtin_engines)
"""Registered engine classes by name. Each has a ``Config`` attrs class and ``__init__(config)``."""

register_engine = ENGINES.register
"""Class decorator adding an engine to ``ENGINES`` under a name (a name taken twice raises)."""


def engine_class(name: str) -> type[EngineBase]:
    """The engine class registered as ``name``; unknown names raise UnsupportedError."""
    return ENGINES.lookup(name)


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
