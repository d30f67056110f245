"""The library entry points: ``check`` a specification on a model and data."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from verispec.data import Dataset
from verispec.engines.base import Engine, engine_class
from verispec.errors import DataError
from verispec.modelfile import load_model
from verispec.network import Network
from verispec.regions import Box
from verispec.results import CheckResult, Report
from verispec.specs import SafeOrdering, Spec

CHUNK = 1024
"""Points handed to an engine per call (progress is reported between chunks)."""


def as_network(model: Network | str | Path) -> Network:
    """A network IR from an IR or a model file path."""
    if isinstance(model, Network):
        return model
    return load_model(model)[0]


def describe(spec: Spec) -> str:
    """A one-line human description of a spec."""
    if isinstance(spec, SafeOrdering):
        pre = type(spec.precondition).__name__.lower()
        cond = f" with F(x) in {sorted(spec.predicted_in)}" if spec.predicted_in else ""
        return f"safe ordering over a {pre}{cond}, {len(spec.postcondition.clauses)} clause(s)"
    extra = ""
    if hasattr(spec, "k"):
        extra = f" k={spec.k}"
    if hasattr(spec, "groups"):
        extra = " groups=" + "|".join(",".join(map(str, sorted(g))) for g in spec.groups)
    return f"{type(spec).__name__}({spec.norm.value} eps={spec.eps:g}{extra})"


def check(
    model: Network | str | Path,
    spec: Spec,
    data: Dataset | None = None,
    engine: Engine | str = "lipschitz",
    limit: int | None = None,
    name: str = "",
    radii: Sequence[float] = (),
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Check ``spec`` on ``model`` at every point of ``data`` (the first ``limit``); a
    ``SafeOrdering`` spec needs no data. Returns a Report with one result per point."""
    network = as_network(model)
    eng: Engine = engine_class(engine)() if isinstance(engine, str) else engine
    eng.supports(network, spec)
    start = time.perf_counter()
    results: list[CheckResult]
    if isinstance(spec, SafeOrdering):
        results = eng.check(network, spec, np.zeros((0, *network.input_shape)))
    else:
        if data is None:
            raise DataError(f"{describe(spec)} is checked at data points: give a data source")
        ds = data.take(limit).shaped(network.input_shape)
        domain = None
        if ds.domain is not None:
            domain = Box.uniform(ds.domain[0], ds.domain[1], network.input_shape)
        results = []
        for lo in range(0, len(ds), CHUNK):
            hi = min(len(ds), lo + CHUNK)
            results += eng.check(network, spec, ds.x[lo:hi], ds.y[lo:hi], domain)
            if progress is not None:
                progress(hi - lo)
    return Report(
        property_name=name or describe(spec),
        spec=describe(spec),
        engine=eng.name,
        results=tuple(results),
        radii=tuple(radii),
        wall_time_s=time.perf_counter() - start,
    )
