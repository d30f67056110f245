"""The library entry points: ``check`` a specification on a model and data."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
import numpy as np

from verispec.data import Dataset
from verispec.engines.base import Engine, engine_class
from verispec.ensembles import Ensemble
from verispec.errors import DataError, SpecError
from verispec.modelfile import load_network
from verispec.network import Network
from verispec.regions import Box, FloatArray
from verispec.results import BatchResult, CheckResult, Report, Verdict
from verispec.specs import SafeOrdering, Spec
from verispec.vnnlib import VnnlibSpec, parse_vnnlib, result_text, safe_property

if TYPE_CHECKING:
    from verispec.solvers.base import SolverConfig

CHUNK = 1024
"""Points handed to an engine per call (progress is reported between chunks)."""


def as_network(model: Network | str | Path) -> Network:
    """A network IR from an IR or a path (a verispec model file, or an ONNX file)."""
    if isinstance(model, Network):
        return model
    return load_network(model)


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


def points_of(
    network: Network | Ensemble, data: Dataset, limit: int | None = None
) -> tuple[FloatArray, np.ndarray, Box | None]:
    """The first ``limit`` points of ``data`` shaped for ``network`` (an ensemble: its members'
    input), their labels, and the data domain as a box (None when the data has no domain)."""
    ds = data.take(limit).shaped(network.input_shape)
    domain = None
    if ds.domain is not None:
        domain = Box.uniform(ds.domain[0], ds.domain[1], network.input_shape)
    return ds.x, ds.y, domain


def check(
    model: Network | Ensemble | str | Path,
    spec: Spec,
    data: Dataset | None = None,
    engine: Engine | str | None = None,
    limit: int | None = None,
    name: str = "",
    radii: Sequence[float] = (),
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Check ``spec`` on ``model`` at every point of ``data`` (the first ``limit``); a
    ``SafeOrdering`` spec needs no data. Returns a Report with one result per point (held as
    a ``BatchResult``).

    ``engine`` defaults to ``"lipschitz"``. An ``Ensemble`` as the model is checked with its
    members' engines (give no ``engine``); the Report names ``ensemble.name`` as its engine."""
    if isinstance(model, Ensemble):
        if engine is not None:
            given = engine if isinstance(engine, str) else getattr(engine, "name", engine)
            raise SpecError(
                f"engine={given!r} was given with a {model.kind} ensemble: its members carry "
                "their engines (Member(network, engine)); call check without engine="
            )
        return _check_ensemble(model, spec, data, limit, name, radii, progress)
    network = as_network(model)
    if engine is None:
        engine = "lipschitz"
    eng: Engine = engine_class(engine)() if isinstance(engine, str) else engine
    eng.supports(network, spec)
    start = time.perf_counter()
    parts: list[Sequence[CheckResult]] = []
    if isinstance(spec, SafeOrdering):
        parts.append(eng.check(network, spec, np.zeros((0, *network.input_shape))))
    else:
        if data is None:
            raise DataError(f"{describe(spec)} is checked at data points: give a data source")
        xs, ys, domain = points_of(network, data, limit)
        for lo in range(0, len(xs), CHUNK):
            hi = min(len(xs), lo + CHUNK)
            parts.append(eng.check(network, spec, xs[lo:hi], ys[lo:hi], domain))
            if progress is not None:
                progress(hi - lo)
    return Report(
        property_name=name or describe(spec),
        spec=describe(spec),
        engine=eng.name,
        results=_joined(parts, eng.name),
        radii=tuple(radii),
        wall_time_s=time.perf_counter() - start,
    )


def _check_ensemble(
    ensemble: Ensemble,
    spec: Spec,
    data: Dataset | None,
    limit: int | None,
    name: str,
    radii: Sequence[float],
    progress: Callable[[int], None] | None,
) -> Report:
    """``check`` on an ensemble: its ``check`` on the data's points, chunk by chunk."""
    ensemble.supports(spec)
    if data is None:
        raise DataError(f"{describe(spec)} is checked at data points: give a data source")
    start = time.perf_counter()
    xs, ys, domain = points_of(ensemble, data, limit)
    parts: list[Sequence[CheckResult]] = []
    for lo in range(0, len(xs), CHUNK):
        hi = min(len(xs), lo + CHUNK)
        parts.append(ensemble.check(spec, xs[lo:hi], ys[lo:hi], domain))
        if progress is not None:
            progress(hi - lo)
    return Report(
        property_name=name or describe(spec),
        spec=describe(spec),
        engine=ensemble.name,
        results=_joined(parts, ensemble.name),
        radii=tuple(radii),
        wall_time_s=time.perf_counter() - start,
    )


def _joined(
    parts: list[Sequence[CheckResult]], engine: str
) -> BatchResult | tuple[CheckResult, ...]:
    """The chunks' results as one batch (a tuple when an engine returns plain results)."""
    if all(isinstance(p, BatchResult) for p in parts):
        batches = [p for p in parts if isinstance(p, BatchResult)]
        return BatchResult.concat(batches) if batches else BatchResult.empty(engine)
    return tuple(r for p in parts for r in p)


@attrs.frozen(eq=False)
class VnnlibAnswer:
    """The answer to a VNN-LIB instance: ``sat`` (a counterexample, re-checked in float64),
    ``unsat`` (the property holds), ``timeout`` or ``unknown``."""

    answer: str
    time_s: float
    detail: str = ""
    witness: FloatArray | None = None
    outputs: FloatArray | None = None

    def text(self) -> str:
        """The VNN-COMP result format."""
        return result_text(self.answer, self.witness, self.outputs)


def solve_vnnlib(
    onnx_path: str | Path,
    vnnlib_path: str | Path,
    solver: str = "milp",
    timeout: float = 116.0,
    config: SolverConfig | None = None,
) -> VnnlibAnswer:
    """Decide a VNN-COMP instance: every input box of the file must keep f(x) out of its unsafe
    set. ``sat`` as soon as one box has a counterexample. ``timeout`` counts everything: the
    ONNX load, the VNN-LIB parse and the solve."""
    from verispec.onnx import load_onnx

    from verispec.errors import VerispecError

    start = time.perf_counter()
    network = load_onnx(onnx_path)
    try:
        spec = parse_vnnlib_within(vnnlib_path, network, start + timeout)
    except VerispecError as err:
        if time.perf_counter() < start + timeout:
            raise
        return VnnlibAnswer("timeout", time.perf_counter() - start, f"parsing the file: {err}")
    return decide_vnnlib(network, spec, solver, timeout, config, start)


def parse_vnnlib_within(path: str | Path, network: Network, deadline: float) -> VnnlibSpec:
    """``parse_vnnlib`` for ``network``'s inputs and outputs, bound by ``deadline`` (a
    ``time.perf_counter`` value) where the parser takes one."""
    parse: Any = parse_vnnlib
    if "deadline" in inspect.signature(parse_vnnlib).parameters:
        return cast(
            VnnlibSpec,
            parse(path, network.input_size, network.num_classes, deadline=deadline),
        )
    return parse_vnnlib(path, network.input_size, network.num_classes)


def decide_vnnlib(
    network: Network,
    spec: VnnlibSpec,
    solver: str = "milp",
    timeout: float = 116.0,
    config: SolverConfig | None = None,
    start: float | None = None,
) -> VnnlibAnswer:
    """Decide a parsed VNN-LIB ``spec`` on ``network`` within ``timeout`` seconds from
    ``start`` (a ``time.perf_counter`` value; now by default), box by box. ``timeout`` is only
    answered once that time has passed; a solver that gives up earlier answers ``unknown``."""
    from verispec.solvers.base import DEADLINE_SLACK, SolverConfig, solver_class

    if start is None:
        start = time.perf_counter()
    deadline = start + timeout
    exact = solver_class(solver)(config or SolverConfig(timeout=timeout))
    undecided = []
    for i, box in enumerate(spec.boxes):
        shaped = Box(box.lo.reshape(network.input_shape), box.hi.reshape(network.input_shape))
        left = deadline - time.perf_counter()
        if left <= 0:
            return VnnlibAnswer("timeout", time.perf_counter() - start, f"box {i}: no time left")
        res = exact.solve(network, safe_property(spec, shaped), left)
        if res.verdict is Verdict.FALSIFIED and res.counterexample is not None:
            y = network.forward64(res.counterexample[None])[0]
            return VnnlibAnswer(
                "sat",
                time.perf_counter() - start,
                f"box {i}: {res.detail}",
                np.asarray(res.counterexample),
                y,
            )
        if res.verdict is not Verdict.CERTIFIED:
            undecided.append((res.verdict, f"box {i}: {res.detail}"))
    if not undecided:
        elapsed = time.perf_counter() - start
        return VnnlibAnswer("unsat", elapsed, f"{len(spec.boxes)} box(es) proved")
    verdict, detail = undecided[0]
    left = deadline - time.perf_counter()
    if verdict is Verdict.TIMEOUT and 0 < left <= DEADLINE_SLACK:
        time.sleep(left)  # the solver stopped within its rounding slack of the deadline
    if verdict is Verdict.TIMEOUT and time.perf_counter() >= deadline:
        return VnnlibAnswer("timeout", time.perf_counter() - start, detail)
    if verdict is Verdict.TIMEOUT:
        detail = f"{detail} (stopped with {left:.2f} s of {timeout:g} s left)"
    return VnnlibAnswer("unknown", time.perf_counter() - start, detail)
