"""Verdicts, per-point results and reports, with a JSON round-trip.

JSON schema (``Report.to_json``), version ``verispec.report/1``::

    {
      "schema": "verispec.report/1",
      "property": str,               # the property's name in the spec file
      "spec": str,                   # a readable description of the spec
      "engine": str,
      "radii": [float, ...],         # radii of the certified-accuracy curve
      "summary": {"points": int, "clean_accuracy": float|null, "vra": float|null,
                  "counts": {"certified": int, ...}, "median_radius": float|null,
                  "certified_accuracy": [[radius, accuracy], ...],   # at "radii"
                  "curve": [[radius, accuracy], ...],  # 50 radii up to the largest radius
                  "points_per_second": float},
      "results": [
        {"verdict": "certified"|"falsified"|"unknown"|"abstain"|"timeout",
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
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np

from verispec.regions import FloatArray

SCHEMA = "verispec.report/1"


class Verdict(enum.Enum):
    """What an engine or solver concluded about one point or property."""

    CERTIFIED = "certified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"
    ABSTAIN = "abstain"
    TIMEOUT = "timeout"


class GuaranteeKind(enum.Enum):
    """Whether a CERTIFIED verdict is a proof or holds with probability 1 - alpha."""

    DETERMINISTIC = "deterministic"
    PROBABILISTIC = "probabilistic"


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


def _results(value: Iterable[CheckResult]) -> tuple[CheckResult, ...]:
    return tuple(value)


def _floats(value: Iterable[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@attrs.frozen(eq=False)
class Report:
    """The results of one property over a set of points, with summary metrics."""

    property_name: str
    spec: str
    engine: str
    results: tuple[CheckResult, ...] = attrs.field(converter=_results)
    radii: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    wall_time_s: float = 0.0

    @property
    def points(self) -> int:
        return len(self.results)

    def count(self, verdict: Verdict) -> int:
        return sum(r.verdict is verdict for r in self.results)

    @property
    def counts(self) -> dict[str, int]:
        return {v.value: self.count(v) for v in Verdict}

    @property
    def clean_accuracy(self) -> float | None:
        """Share of labelled points predicted correctly (None without labels)."""
        flags = [r.correct for r in self.results if r.correct is not None]
        return float(np.mean(flags)) if flags else None

    @property
    def vra(self) -> float | None:
        """Verified robust accuracy: share of labelled points both certified and correct."""
        labelled = [r for r in self.results if r.correct is not None]
        if not labelled:
            return None
        return float(np.mean([r.correct and r.verdict is Verdict.CERTIFIED for r in labelled]))

    @property
    def median_radius(self) -> float | None:
        """Median certified radius over points that have one (certified or not)."""
        radii = [r.radius for r in self.results if r.radius is not None]
        return float(np.median(radii)) if radii else None

    def certified_accuracy(self, radii: Sequence[float] | None = None) -> list[tuple[float, float]]:
        """(r, share of labelled points correct with certified radius >= r) for each r."""
        labelled = [r for r in self.results if r.correct is not None]
        out = []
        for rad in self.radii if radii is None else radii:
            ok = [bool(r.correct) and r.radius is not None and r.radius >= rad for r in labelled]
            out.append((float(rad), float(np.mean(ok)) if ok else float("nan")))
        return out

    def curve(self, points: int = 50) -> list[tuple[float, float]]:
        """Certified accuracy at ``points`` radii from 0 to just past the largest finite
        certified radius (empty when no result has a radius)."""
        radii = [r.radius for r in self.results if r.radius is not None]
        finite = [r for r in radii if math.isfinite(r) and r > 0]
        if not radii:
            return []
        top = max(finite, default=1.0) * 1.05
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
            "results": [r.to_dict() for r in self.results],
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
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))
