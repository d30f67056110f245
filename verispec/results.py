"""Verdicts, per-point results, batches of results held as arrays, and reports (JSON).

An engine's ``check`` returns a ``BatchResult``: per-point numpy arrays (verdict codes, radii,
margins, predictions, labels, times) and sparse per-point extras (counterexamples, details,
warnings). It is a sequence of ``CheckResult``, each built only when asked for; a ``Report``
computes its counts and metrics from the arrays directly.

JSON schema (``Report.to_json``), version ``verispec.report/1``::

    {
      "schema": "verispec.report/1",
      "property": str,               # the property's name in the spec file
      "spec": str,                   # a readable description of the spec
      "engine": str,
      "radii": [float, ...],         # radii of the certified-accuracy curve
      "norm": "l2"|"linf"|null,      # the spec's ball norm (null without a ball)
      "eps": float|null,             # the spec's ball radius (null without a ball)
      "summary": {"points": int, "clean_accuracy": float|null, "vra": float|null,
                  "counts": {"certified": int, ...}, "median_radius": float|null,
                  "certified_accuracy": [[radius, accuracy], ...],   # at "radii"
                  "curve": [[radius, accuracy], ...],  # 50 radii up to the largest radius
                  "points_per_second": float},
      "results": [
        {"index": int,               # the point's index in the data
         "verdict": "certified"|"falsified"|"unknown"|"abstain"|"timeout",
         "predicted": int|null, "label": int|null, "radius": float|null,
         "engine": str, "guarantee": "deterministic"|"probabilistic",
         "confidence": float,        # 1.0 for deterministic guarantees, 1 - alpha otherwise
         "time_s": float, "detail": str, "warnings": [str, ...],
         "counterexample": [float, ...] | null,   # flattened input
         "counterexample_shape": [int, ...] | null}
      ]
    }
"""

from __future__ import annotations

import enum
import json
import math
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import attrs
import numpy as np
from numpy.typing import NDArray

from verispec.regions import FloatArray, Norm

SCHEMA = "verispec.report/1"


class Verdict(enum.Enum):
    """What an engine or solver concluded about one point or property."""

    CERTIFIED = "certified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"
    ABSTAIN = "abstain"
    TIMEOUT = "timeout"

    @property
    def code(self) -> int:
        """This verdict's index in ``VERDICTS`` (the code ``BatchResult.verdicts`` holds)."""
        return VERDICTS.index(self)


VERDICTS: tuple[Verdict, ...] = tuple(Verdict)
"""Every verdict in code order."""


class GuaranteeKind(enum.Enum):
    """Whether a CERTIFIED verdict is a proof or holds with probability 1 - alpha."""

    DETERMINISTIC = "deterministic"
    PROBABILISTIC = "probabilistic"

    @property
    def code(self) -> int:
        """This kind's index in ``GUARANTEES`` (the code ``BatchResult.guarantees`` holds)."""
        return GUARANTEES.index(self)


GUARANTEES: tuple[GuaranteeKind, ...] = tuple(GuaranteeKind)
"""Every guarantee kind in code order."""


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def _optional_array(value: Any) -> FloatArray | None:
    if value is None:
        return None
    arr = np.array(value, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


@attrs.frozen(eq=False)
class CheckResult:
    """The outcome for one point (or one global property)."""

    verdict: Verdict
    engine: str
    predicted: int | None = None
    label: int | None = None
    radius: float | None = None
    guarantee: GuaranteeKind = GuaranteeKind.DETERMINISTIC
    confidence: float = 1.0
    time_s: float = 0.0
    detail: str = ""
    counterexample: FloatArray | None = attrs.field(default=None, converter=_optional_array)
    warnings: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    def __attrs_post_init__(self) -> None:
        if (self.verdict is Verdict.FALSIFIED) != (self.counterexample is not None):
            raise ValueError("a FALSIFIED result carries a counterexample, and only it does")

    @property
    def correct(self) -> bool | None:
        """Whether the prediction matches the label (None without a label)."""
        if self.label is None or self.predicted is None:
            return None
        return self.predicted == self.label

    def to_dict(self) -> dict[str, Any]:
        cex = self.counterexample
        return {
            "verdict": self.verdict.value,
            "predicted": self.predicted,
            "label": self.label,
            "radius": _json_float(self.radius),
            "engine": self.engine,
            "guarantee": self.guarantee.value,
            "confidence": self.confidence,
            "time_s": self.time_s,
            "detail": self.detail,
            "warnings": list(self.warnings),
            "counterexample": None if cex is None else cex.ravel().tolist(),
            "counterexample_shape": None if cex is None else list(cex.shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        cex = d.get("counterexample")
        if cex is not None:
            cex = np.asarray(cex, dtype=np.float64).reshape(d["counterexample_shape"])
        return cls(
            verdict=Verdict(d["verdict"]),
            engine=d["engine"],
            predicted=d.get("predicted"),
            label=d.get("label"),
            radius=_from_json_float(d.get("radius")),
            guarantee=GuaranteeKind(d.get("guarantee", "deterministic")),
            confidence=float(d.get("confidence", 1.0)),
            time_s=float(d.get("time_s", 0.0)),
            detail=d.get("detail", ""),
            counterexample=cex,
            warnings=tuple(d.get("warnings", ())),
        )


def _json_float(value: float | None) -> float | str | None:
    """JSON has no infinity: +inf is written as the string "inf"."""
    if value is not None and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _from_json_float(value: float | str | None) -> float | None:
    return None if value is None else float(value)


IntArray = NDArray[np.int64]
CodeArray = NDArray[np.int8]


def _frozen(value: Any, dtype: Any) -> NDArray[Any]:
    arr = np.array(value, dtype=dtype, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"per-point arrays are one-dimensional, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def _codes(value: Any) -> CodeArray:
    return _frozen(value, np.int8)


def _floats64(value: Any) -> FloatArray:
    return _frozen(value, np.float64)


def _optional_ints(value: Any) -> IntArray | None:
    return None if value is None else _frozen(value, np.int64)


def _sparse_arrays(value: Mapping[int, Any]) -> Mapping[int, FloatArray]:
    out: dict[int, FloatArray] = {}
    for k, v in value.items():
        arr = _optional_array(v)
        if arr is None:
            raise ValueError(f"counterexample {k} is None")
        out[int(k)] = arr
    return types.MappingProxyType(out)


def _sparse_strings(value: Mapping[int, str]) -> Mapping[int, str]:
    return types.MappingProxyType({int(k): str(v) for k, v in value.items() if v})


def _sparse_warnings(value: Mapping[int, Iterable[str]]) -> Mapping[int, tuple[str, ...]]:
    out = {int(k): _strings(v) for k, v in value.items()}
    return types.MappingProxyType({k: v for k, v in out.items() if v})


def _per_point(value: Any, n: int, dtype: Any, missing: float | None = None) -> NDArray[Any]:
    """``value`` as an (n,) array: None -> ``missing`` everywhere, a scalar -> broadcast."""
    arr = np.asarray(missing if value is None else value, dtype=dtype)
    return np.broadcast_to(arr, (n,)) if arr.ndim == 0 else arr


@attrs.frozen(eq=False)
class BatchResult(Sequence[CheckResult]):
    """The outcomes for n points (or one global property, n = 1) as per-point arrays.

    It is a sequence of ``CheckResult``: ``batch[i]``, ``iter(batch)`` and ``results()`` build
    the objects on demand (``batch[a:b]`` and ``take`` give sub-batches). Missing values:
    a NaN radius or margin is "none", ``predicted`` / ``labels`` are None when no point has
    one. Extras are sparse, keyed by point index: every FALSIFIED point has its counterexample
    (and only those), details and warnings default to "" and ().
    """

    engine: str
    verdicts: CodeArray = attrs.field(converter=_codes)
    """(n,) int8 codes into ``VERDICTS``."""
    radii: FloatArray = attrs.field(converter=_floats64)
    """(n,) certified radius per point, NaN where the engine computes none."""
    margins: FloatArray = attrs.field(converter=_floats64)
    """(n,) the engine's certification slack (> 0 where its test passes), NaN where it has
    none. Informational: not part of ``CheckResult`` or the JSON report."""
    time_s: FloatArray = attrs.field(converter=_floats64)
    """(n,) seconds attributed to each point."""
    guarantees: CodeArray = attrs.field(converter=_codes)
    """(n,) int8 codes into ``GUARANTEES``."""
    confidence: FloatArray = attrs.field(converter=_floats64)
    """(n,) 1.0 for deterministic guarantees, 1 - alpha otherwise."""
    predicted: IntArray | None = attrs.field(default=None, converter=_optional_ints)
    """(n,) predicted class per point (smoothing's NO_CLASS included), or None."""
    labels: IntArray | None = attrs.field(default=None, converter=_optional_ints)
    """(n,) true label per point, or None."""
    counterexamples: Mapping[int, FloatArray] = attrs.field(factory=dict, converter=_sparse_arrays)
    details: Mapping[int, str] = attrs.field(factory=dict, converter=_sparse_strings)
    warnings: Mapping[int, tuple[str, ...]] = attrs.field(factory=dict, converter=_sparse_warnings)

    def __attrs_post_init__(self) -> None:
        n = self.verdicts.shape[0]
        for name in ("radii", "margins", "time_s", "guarantees", "confidence"):
            if getattr(self, name).shape != (n,):
                raise ValueError(
                    f"BatchResult.{name} has shape {getattr(self, name).shape}, want ({n},)"
                )
        for name in ("predicted", "labels"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise ValueError(f"BatchResult.{name} has shape {value.shape}, want ({n},)")
        if n and not (self.verdicts.min() >= 0 and self.verdicts.max() < len(VERDICTS)):
            raise ValueError("BatchResult.verdicts holds a code outside VERDICTS")
        if n and not (self.guarantees.min() >= 0 and self.guarantees.max() < len(GUARANTEES)):
            raise ValueError("BatchResult.guarantees holds a code outside GUARANTEES")
        for name in ("counterexamples", "details", "warnings"):
            keys = getattr(self, name).keys()
            if keys and not all(0 <= k < n for k in keys):
                raise ValueError(f"BatchResult.{name} has a key outside range({n})")
        falsified = set(np.flatnonzero(self.verdicts == Verdict.FALSIFIED.code).tolist())
        if falsified != set(self.counterexamples):
            raise ValueError("a FALSIFIED result carries a counterexample, and only it does")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        engine: str,
        verdicts: Sequence[Verdict] | NDArray[np.integer[Any]],
        *,
        radii: Any = None,
        margins: Any = None,
        time_s: Any = 0.0,
        guarantee: GuaranteeKind | CodeArray = GuaranteeKind.DETERMINISTIC,
        confidence: Any = 1.0,
        predicted: Any = None,
        labels: Any = None,
        counterexamples: Mapping[int, Any] | None = None,
        details: Mapping[int, str] | None = None,
        warnings: Mapping[int, Iterable[str]] | None = None,
    ) -> BatchResult:
        """A batch from per-point values; scalars are broadcast, radii / margins default to
        NaN (none). ``verdicts`` are Verdict members or their codes."""
        if len(verdicts) and isinstance(verdicts[0], Verdict):
            codes = np.array([v.code for v in verdicts], dtype=np.int8)
        else:
            codes = np.asarray(verdicts, dtype=np.int8)
        n = codes.shape[0]
        if isinstance(guarantee, GuaranteeKind):
            guarantee = np.full(n, guarantee.code, dtype=np.int8)
        return cls(
            engine=engine,
            verdicts=codes,
            radii=_per_point(radii, n, np.float64, math.nan),
            margins=_per_point(margins, n, np.float64, math.nan),
            time_s=_per_point(time_s, n, np.float64),
            guarantees=guarantee,
            confidence=_per_point(confidence, n, np.float64),
            predicted=predicted,
            labels=labels,
            counterexamples=counterexamples or {},
            details=details or {},
            warnings=warnings or {},
        )

    @classmethod
    def empty(cls, engine: str) -> BatchResult:
        """No points."""
        return cls.build(engine, np.zeros(0, dtype=np.int8))

    @classmethod
    def from_results(cls, results: Iterable[CheckResult], engine: str | None = None) -> BatchResult:
        """A batch holding these results (one engine; predictions and labels each given for
        every result or for none). ``engine`` names an empty batch."""
        rs = list(results)
        name = engine if engine is not None else (rs[0].engine if rs else None)
        if name is None:
            raise ValueError("an empty BatchResult needs an engine name")
        if any(r.engine != name for r in rs):
            raise ValueError(f"results of several engines cannot share a batch of {name!r}")

        def column(values: list[int | None], what: str) -> list[int] | None:
            present = [v is not None for v in values]
            if not any(present):
                return None
            if not all(present):
                raise ValueError(f"some results have a {what} and some do not")
            return [int(v) for v in values if v is not None]

        return cls.build(
            name,
            [r.verdict for r in rs],
            radii=[math.nan if r.radius is None else r.radius for r in rs],
            time_s=[r.time_s for r in rs],
            guarantee=np.array([r.guarantee.code for r in rs], dtype=np.int8),
            confidence=[r.confidence for r in rs],
            predicted=column([r.predicted for r in rs], "prediction"),
            labels=column([r.label for r in rs], "label"),
            counterexamples={
                i: r.counterexample for i, r in enumerate(rs) if r.counterexample is not None
            },
            details={i: r.detail for i, r in enumerate(rs) if r.detail},
            warnings={i: r.warnings for i, r in enumerate(rs) if r.warnings},
        )

    @classmethod
    def concat(cls, parts: Sequence[BatchResult]) -> BatchResult:
        """The points of every part, in order (one engine)."""
        if not parts:
            raise ValueError("concat needs at least one batch")
        if len(parts) == 1:
            return parts[0]
        engine = parts[0].engine
        if any(p.engine != engine for p in parts):
            raise ValueError("batches of several engines cannot be concatenated")
        offsets = np.cumsum([0] + [len(p) for p in parts]).tolist()

        def optional(name: str) -> IntArray | None:
            values = [getattr(p, name) for p in parts if len(p)]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise ValueError(f"some batches have {name} and some do not")
            return np.concatenate(values)

        def sparse(name: str) -> dict[int, Any]:
            return {
                k + off: v
                for p, off in zip(parts, offsets, strict=False)
                for k, v in getattr(p, name).items()
            }

        def joined(name: str) -> NDArray[Any]:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(
            engine=engine,
            verdicts=joined("verdicts"),
            radii=joined("radii"),
            margins=joined("margins"),
            time_s=joined("time_s"),
            guarantees=joined("guarantees"),
            confidence=joined("confidence"),
            predicted=optional("predicted"),
            labels=optional("labels"),
            counterexamples=sparse("counterexamples"),
            details=sparse("details"),
            warnings=sparse("warnings"),
        )

    def take(self, indices: Sequence[int] | NDArray[np.integer[Any]]) -> BatchResult:
        """The points at ``indices`` (in that order; repeats allowed)."""
        n = len(self)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a batch of {n}")
        idx = np.where(idx < 0, idx + n, idx)
        sparse: dict[str, dict[int, Any]] = {
            "counterexamples": {},
            "details": {},
            "warnings": {},
        }
        if self.counterexamples or self.details or self.warnings:
            for new, old in enumerate(idx.tolist()):
                for name, out in sparse.items():
                    value = getattr(self, name).get(old)
                    if value is not None:
                        out[new] = value
        return BatchResult(
            engine=self.engine,
            verdicts=self.verdicts[idx],
            radii=self.radii[idx],
            margins=self.margins[idx],
            time_s=self.time_s[idx],
            guarantees=self.guarantees[idx],
            confidence=self.confidence[idx],
            predicted=None if self.predicted is None else self.predicted[idx],
            labels=None if self.labels is None else self.labels[idx],
            **sparse,
        )

    def with_labels(self, labels: Any) -> BatchResult:
        """The same batch with labels (n,) recorded (None removes them)."""
        return attrs.evolve(self, labels=labels)

    # -- the sequence of CheckResult --------------------------------------------------------
    def __len__(self) -> int:
        return int(self.verdicts.shape[0])

    @overload
    def __getitem__(self, index: int) -> CheckResult: ...

    @overload
    def __getitem__(self, index: slice) -> BatchResult: ...

    def __getitem__(self, index: int | slice) -> CheckResult | BatchResult:
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"point {index} out of range for a batch of {n}")
        return self._result(i)

    def __iter__(self) -> Iterator[CheckResult]:
        for i in range(len(self)):
            yield self._result(i)

    def results(self) -> tuple[CheckResult, ...]:
        """Every point's CheckResult (built now)."""
        return tuple(self)

    def _result(self, i: int) -> CheckResult:
        radius = float(self.radii[i])
        return CheckResult(
            verdict=VERDICTS[self.verdicts[i]],
            engine=self.engine,
            predicted=None if self.predicted is None else int(self.predicted[i]),
            label=None if self.labels is None else int(self.labels[i]),
            radius=None if math.isnan(radius) else radius,
            guarantee=GUARANTEES[self.guarantees[i]],
            confidence=float(self.confidence[i]),
            time_s=float(self.time_s[i]),
            detail=self.details.get(i, ""),
            counterexample=self.counterexamples.get(i),
            warnings=self.warnings.get(i, ()),
        )

    # -- summaries from the arrays -----------------------------------------------------------
    def verdict_counts(self) -> dict[Verdict, int]:
        """How many points got each verdict (every verdict listed, zeros included)."""
        counts = np.bincount(self.verdicts, minlength=len(VERDICTS))
        return {v: int(counts[v.code]) for v in VERDICTS}

    def is_verdict(self, verdict: Verdict) -> NDArray[np.bool_]:
        """(n,) whether each point got ``verdict``."""
        return self.verdicts == verdict.code

    @property
    def probabilistic(self) -> bool:
        """Whether any point's guarantee is probabilistic."""
        return bool(np.any(self.guarantees == GuaranteeKind.PROBABILISTIC.code))


def _results(value: Iterable[CheckResult]) -> BatchResult | tuple[CheckResult, ...]:
    return value if isinstance(value, BatchResult) else tuple(value)


def _floats(value: Iterable[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _ints(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _read_indices(results: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
    """The "index" of every result dict (empty when a result has none, or they are 0..n-1)."""
    indices = [r.get("index") for r in results]
    if any(i is None for i in indices):
        return ()
    ints = tuple(int(i) for i in indices if i is not None)
    return () if ints == tuple(range(len(ints))) else ints


CSV_COLUMNS: tuple[str, ...] = (
    "property",
    "index",
    "verdict",
    "predicted",
    "label",
    "radius",
    "engine",
    "guarantee",
    "confidence",
    "time_s",
    "detail",
)
"""The columns of ``Report.csv_rows`` (``verispec check --csv``)."""


@attrs.frozen(eq=False)
class _Columns:
    """What the metrics need, per point: verdict codes, whether a label and a prediction are
    both present, whether they agree, the radius (NaN: none), and whether any label is given."""

    verdicts: CodeArray
    labelled: NDArray[np.bool_]
    correct: NDArray[np.bool_]
    radii: FloatArray
    any_label: bool


def _columns(results: BatchResult | tuple[CheckResult, ...]) -> _Columns:
    if isinstance(results, BatchResult):
        n = len(results)
        if results.predicted is None or results.labels is None:
            labelled = np.zeros(n, dtype=bool)
            correct = labelled
        else:
            labelled = np.ones(n, dtype=bool)
            correct = results.predicted == results.labels
        return _Columns(
            results.verdicts, labelled, correct, results.radii, results.labels is not None and n > 0
        )
    flags = [r.correct for r in results]
    return _Columns(
        np.array([r.verdict.code for r in results], dtype=np.int8),
        np.array([f is not None for f in flags], dtype=bool),
        np.array([bool(f) for f in flags], dtype=bool),
        np.array([math.nan if r.radius is None else r.radius for r in results], dtype=np.float64),
        any(r.label is not None for r in results),
    )


def _optional_norm(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and value not in NORM_NAMES:
        raise ValueError(f"Report.{attribute.name} is {value!r}: want one of {NORM_NAMES} or None")


NORM_NAMES = tuple(n.value for n in Norm)
"""The ``Report.norm`` values: ``verispec.regions.Norm`` values."""


@attrs.frozen(eq=False)
class Report:
    """The results of one property over a set of points, with summary metrics.

    ``results`` is a ``BatchResult`` (what ``verispec.check`` builds: the metrics read its
    arrays) or a tuple of ``CheckResult`` (e.g. read back from JSON)."""

    property_name: str
    spec: str
    engine: str
    results: BatchResult | tuple[CheckResult, ...] = attrs.field(converter=_results)
    radii: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    wall_time_s: float = 0.0
    indices: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    """Each result's point index in the data (empty: 0, 1, ... in order)."""
    norm: str | None = attrs.field(default=None, validator=_optional_norm)
    """The spec's ball norm ("l2" or "linf"; None for specs without a ball)."""
    eps: float | None = attrs.field(default=None, converter=attrs.converters.optional(float))
    """The spec's ball radius (None for specs without a ball)."""

    def __attrs_post_init__(self) -> None:
        if self.indices and len(self.indices) != len(self.results):
            raise ValueError(
                f"Report has {len(self.indices)} indices for {len(self.results)} results"
            )

    @property
    def points(self) -> int:
        return len(self.results)

    @property
    def point_indices(self) -> tuple[int, ...]:
        """Each result's point index in the data."""
        return self.indices or tuple(range(self.points))

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per point under ``CSV_COLUMNS``: the property, the point's index and its
        result."""
        rows = []
        for index, r in zip(self.point_indices, self.results, strict=True):
            rows.append(
                {
                    "property": self.property_name,
                    "index": index,
                    "verdict": r.verdict.value,
                    "predicted": r.predicted,
                    "label": r.label,
                    "radius": r.radius,
                    "engine": r.engine,
                    "guarantee": r.guarantee.value,
                    "confidence": r.confidence,
                    "time_s": r.time_s,
                    "detail": r.detail,
                }
            )
        return rows

    def count(self, verdict: Verdict) -> int:
        return int(np.count_nonzero(_columns(self.results).verdicts == verdict.code))

    @property
    def counts(self) -> dict[str, int]:
        codes = _columns(self.results).verdicts
        tally = np.bincount(codes, minlength=len(VERDICTS))
        return {v.value: int(tally[v.code]) for v in Verdict}

    @property
    def has_labels(self) -> bool:
        """Whether any point has a label."""
        return _columns(self.results).any_label

    @property
    def has_radii(self) -> bool:
        """Whether any point has a certified radius."""
        return bool(np.any(~np.isnan(_columns(self.results).radii)))

    @property
    def clean_accuracy(self) -> float | None:
        """Share of labelled points predicted correctly (None without labels)."""
        c = _columns(self.results)
        return float(np.mean(c.correct[c.labelled])) if c.labelled.any() else None

    @property
    def vra(self) -> float | None:
        """Verified robust accuracy: share of labelled points both certified and correct."""
        c = _columns(self.results)
        if not c.labelled.any():
            return None
        ok = c.correct & (c.verdicts == Verdict.CERTIFIED.code)
        return float(np.mean(ok[c.labelled]))

    @property
    def median_radius(self) -> float | None:
        """Median certified radius over points that have one (certified or not)."""
        radii = _columns(self.results).radii
        radii = radii[~np.isnan(radii)]
        return float(np.median(radii)) if radii.size else None

    def certified_accuracy(self, radii: Sequence[float] | None = None) -> list[tuple[float, float]]:
        """(r, share of labelled points correct with certified radius >= r) for each r."""
        c = _columns(self.results)
        correct = c.correct[c.labelled]
        have = c.radii[c.labelled]
        have = np.where(np.isnan(have), -np.inf, have)
        out = []
        for rad in self.radii if radii is None else radii:
            ok = correct & (have >= rad)
            out.append((float(rad), float(np.mean(ok)) if ok.size else float("nan")))
        return out

    def curve(self, points: int = 50) -> list[tuple[float, float]]:
        """Certified accuracy at ``points`` radii from 0 to just past the largest finite
        certified radius (empty when no result has a radius)."""
        radii = _columns(self.results).radii
        radii = radii[~np.isnan(radii)]
        if not radii.size:
            return []
        finite = radii[np.isfinite(radii) & (radii > 0)]
        top = (float(finite.max()) if finite.size else 1.0) * 1.05
        return self.certified_accuracy(list(np.linspace(0.0, top, points)))

    @property
    def points_per_second(self) -> float:
        return self.points / self.wall_time_s if self.wall_time_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "property": self.property_name,
            "spec": self.spec,
            "engine": self.engine,
            "radii": list(self.radii),
            "norm": self.norm,
            "eps": self.eps,
            "wall_time_s": self.wall_time_s,
            "summary": {
                "points": self.points,
                "clean_accuracy": self.clean_accuracy,
                "vra": self.vra,
                "counts": self.counts,
                "median_radius": _json_float(self.median_radius),
                "certified_accuracy": [list(p) for p in self.certified_accuracy()],
                "curve": [list(p) for p in self.curve()],
                "points_per_second": _json_float(self.points_per_second),
            },
            "results": [
                {"index": i, **r.to_dict()}
                for i, r in zip(self.point_indices, self.results, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a verispec report (schema {d.get('schema')!r}, want {SCHEMA!r})")
        return cls(
            property_name=d["property"],
            spec=d["spec"],
            engine=d["engine"],
            results=tuple(CheckResult.from_dict(r) for r in d["results"]),
            radii=tuple(d.get("radii", ())),
            wall_time_s=float(d.get("wall_time_s", 0.0)),
            indices=_read_indices(d["results"]),
            norm=d.get("norm"),
            eps=d.get("eps"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))
