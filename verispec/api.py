"""The library entry points: ``check`` a specification on a model and data."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch
from numpy.typing import NDArray

from verispec.audit import AuditReport, Violation, ViolationKind
from verispec.data import Dataset
from verispec.engines.base import Engine, EngineBase, engine_class
from verispec.ensembles import AuditStatus, Ensemble, EnsembleAudit, EnsemblePointAudit
from verispec.errors import DataError, SpecError, UnsupportedError
from verispec.executor import Executor, TaskFailure, in_order
from verispec.modelfile import load_network
from verispec.network import Network
from verispec.regions import Box, FloatArray
from verispec.results import BatchResult, CheckResult, Report, Verdict
from verispec.selfcorrect import SelfCorrecting, sampled_corrections, verify_corrected
from verispec.specs import LocalRobustness, SafeOrdering, Spec
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


def ball_of(spec: Spec) -> dict[str, Any]:
    """The ``Report`` fields of a spec's ball: its norm name and eps (None for a safe
    ordering, which has no ball)."""
    if isinstance(spec, SafeOrdering):
        return {"norm": None, "eps": None}
    return {"norm": spec.norm.value, "eps": spec.eps}


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


IndexArray = NDArray[np.int64]
"""Point indices in the data."""

POINT_CHUNKS: Mapping[str, int] = {
    "smoothing": 8,
    "projections": 8,
    "milp": 1,
    "smt": 1,
}
"""Points per engine call by engine name (an engine not named here: its ``chunk_points``
attribute, else ``CHUNK``). Small chunks for slow engines: results stream and progress moves
between calls."""


def chunk_points(engine: Engine | Ensemble) -> int:
    """Points handed to ``engine`` (or an ensemble: its slowest member's engine) per call. The
    chunks are a function of the selected indices alone, so a resumed run decides every point
    in the same call as an uninterrupted one."""
    if isinstance(engine, Ensemble):
        return min(chunk_points(m.engine) for m in engine.members)
    own = getattr(engine, "chunk_points", None)
    if isinstance(own, int) and own >= 1:
        return own
    return POINT_CHUNKS.get(engine.name, CHUNK)


OnResult = Callable[[int, CheckResult], None]
"""Called with each newly decided point's index in the data and its result, in index order."""


def check(
    model: Network | Ensemble | SelfCorrecting | str | Path,
    spec: Spec,
    data: Dataset | None = None,
    engine: Engine | str | None = None,
    limit: int | None = None,
    name: str = "",
    radii: Sequence[float] = (),
    progress: Callable[[int], None] | None = None,
    *,
    points: Sequence[int] | None = None,
    done: Mapping[int, CheckResult] | None = None,
    on_result: OnResult | None = None,
    executor: Executor | None = None,
) -> Report:
    """Check ``spec`` on ``model`` at every point of ``data`` (the first ``limit``); a
    ``SafeOrdering`` spec needs no data (one global result, index 0). Returns a Report with
    one result per point (held as a ``BatchResult``).

    ``engine`` defaults to ``"lipschitz"``. An ``Ensemble`` as the model is checked with its
    members' engines (give no ``engine``); the Report names ``ensemble.name`` as its engine.
    A ``SelfCorrecting`` model (a network with its self-correcting layer) is checked on safe
    orderings by an exact engine (``"milp"``, ``"smt"``): ``verify_corrected`` proves or
    refutes the corrected network.

    ``points``: the indices (among the first ``limit``) to check, in ascending order; all by
    default. ``done``: results already known by index (a run log being resumed): chunks made
    only of them are not run again. ``on_result(index, result)`` sees every point decided
    now; ``progress(k)`` is told after each chunk (known ones included). ``executor`` runs
    the chunks (``verispec.executor``; in this process by default, ``verispec.cluster`` for
    Ray workers); the results and their order do not depend on it."""
    if isinstance(model, Ensemble):
        if engine is not None:
            given = engine if isinstance(engine, str) else getattr(engine, "name", engine)
            raise SpecError(
                f"engine={given!r} was given with a {model.kind} ensemble: its members carry "
                "their engines (Member(network, engine)); call check without engine="
            )
        return _check_ensemble(
            model, spec, data, limit, name, radii, progress, points, done, on_result, executor
        )
    if isinstance(model, SelfCorrecting):
        return _check_corrected(model, spec, engine, name, radii, progress)
    network = as_network(model)
    if engine is None:
        engine = "lipschitz"
    eng: Engine = engine_class(engine)() if isinstance(engine, str) else engine
    eng.supports(network, spec)
    start = time.perf_counter()
    decide: Callable[[IndexArray], Sequence[CheckResult]]
    if isinstance(spec, SafeOrdering):
        global_spec = spec
        indices: tuple[int, ...] = (0,)

        def decide(idx: IndexArray) -> Sequence[CheckResult]:
            return eng.check(network, global_spec, np.zeros((0, *network.input_shape)))

        size = 1
    else:
        if data is None:
            raise DataError(f"{describe(spec)} is checked at data points: give a data source")
        xs, ys, domain = points_of(network, data, limit)
        indices = selected_points(points, len(xs))
        point_spec = spec

        def decide(idx: IndexArray) -> Sequence[CheckResult]:
            run = eng.numbered(idx) if isinstance(eng, EngineBase) else eng  # index-keyed noise
            return run.check(network, point_spec, xs[idx], ys[idx], domain)

        size = chunk_points(eng)
    results, prior = _decide_chunks(
        decide, indices, size, eng.name, done, on_result, progress, executor
    )
    return Report(
        property_name=name or describe(spec),
        spec=describe(spec),
        engine=eng.name,
        results=results,
        radii=tuple(radii),
        wall_time_s=time.perf_counter() - start + prior,
        indices=indices,
        **ball_of(spec),
    )


def _check_corrected(
    model: SelfCorrecting,
    spec: Spec,
    engine: Engine | str | None,
    name: str,
    radii: Sequence[float],
    progress: Callable[[int], None] | None,
) -> Report:
    """``check`` on a self-corrected network: a safe ordering, by an exact engine."""
    from verispec.engines.exact import ExactEngine

    eng: Engine = engine_class(engine or "milp")() if isinstance(engine, str | None) else engine
    if not isinstance(spec, SafeOrdering):
        raise UnsupportedError(
            f"{describe(spec)} on a self-corrected network: only safe-ordering properties are "
            "checked on the corrected network (check point properties on the plain model)"
        )
    if not isinstance(eng, ExactEngine):
        raise UnsupportedError(
            f"the {eng.name} engine cannot check a self-corrected network: use an exact "
            "engine (milp or smt), which proves the corrected network or refutes it"
        )
    start = time.perf_counter()
    result = verify_corrected(model, spec, eng.solver_name, config=eng.config)
    points, changed, abstained = sampled_corrections(model, spec.precondition)
    if points:
        result = attrs.evolve(
            result,
            detail=f"{result.detail}; on {points} uniform samples of the region the layer "
            f"changed {changed} outputs and abstained on {abstained}",
        )
    if progress is not None:
        progress(1)
    return Report(
        property_name=name or describe(spec),
        spec=describe(spec) + ", self-corrected",
        engine=result.engine,
        results=(result,),
        radii=tuple(radii),
        wall_time_s=time.perf_counter() - start,
        indices=(0,),
        **ball_of(spec),
    )


def selected_points(points: Sequence[int] | None, total: int) -> tuple[int, ...]:
    """``points`` (all of ``range(total)`` when None) checked, ascending, without repeats."""
    if points is None:
        return tuple(range(total))
    chosen = sorted({int(i) for i in points})
    bad = [i for i in chosen if not 0 <= i < total]
    if bad:
        raise DataError(
            f"points: index {bad[0]} is out of range: there are {total} points (0..{total - 1})"
        )
    return tuple(chosen)


def _decide_chunks(
    decide: Callable[[IndexArray], Sequence[CheckResult]],
    indices: Sequence[int],
    size: int,
    engine: str,
    done: Mapping[int, CheckResult] | None,
    on_result: OnResult | None,
    progress: Callable[[int], None] | None,
    executor: Executor | None = None,
) -> tuple[BatchResult | tuple[CheckResult, ...], float]:
    """Every index's result, chunk by chunk (known chunks from ``done``), and the seconds the
    known results took when they were decided."""
    known = done or {}
    chunks = [tuple(int(i) for i in indices[lo : lo + size]) for lo in range(0, len(indices), size)]
    old: dict[tuple[int, ...], Sequence[CheckResult]] = {
        c: BatchResult.from_results([known[i] for i in c], engine)
        for c in chunks
        if all(i in known for i in c)
    }
    prior = sum(known[i].time_s for c in old for i in c)
    parts: list[Sequence[CheckResult]] = []
    for idx, part, new in in_order(
        executor,
        lambda c: decide(np.asarray(c, dtype=np.int64)),
        chunks,
        old,
        lambda c, why: _failed(len(c), engine, why),
    ):
        if new and on_result is not None:
            for i, result in zip(idx, part, strict=True):
                if i not in known:
                    on_result(i, result)
        parts.append(part)
        if progress is not None:
            progress(len(idx))
    return _joined(parts, engine), prior


def _failed(count: int, engine: str, failure: TaskFailure) -> tuple[CheckResult, ...]:
    """The results of a chunk whose task could not complete: UNKNOWN, saying why."""
    return tuple(CheckResult(Verdict.UNKNOWN, engine, detail=failure.detail) for _ in range(count))


def _check_ensemble(
    ensemble: Ensemble,
    spec: Spec,
    data: Dataset | None,
    limit: int | None,
    name: str,
    radii: Sequence[float],
    progress: Callable[[int], None] | None,
    points: Sequence[int] | None,
    done: Mapping[int, CheckResult] | None,
    on_result: OnResult | None,
    executor: Executor | None = None,
) -> Report:
    """``check`` on an ensemble: its ``check`` on the data's points, chunk by chunk."""
    ensemble.supports(spec)
    if data is None:
        raise DataError(f"{describe(spec)} is checked at data points: give a data source")
    start = time.perf_counter()
    xs, ys, domain = points_of(ensemble, data, limit)
    indices = selected_points(points, len(xs))

    def decide(idx: IndexArray) -> Sequence[CheckResult]:
        return ensemble.check(spec, xs[idx], ys[idx], domain)

    size = chunk_points(ensemble)
    results, prior = _decide_chunks(
        decide, indices, size, ensemble.name, done, on_result, progress, executor
    )
    return Report(
        property_name=name or describe(spec),
        spec=describe(spec),
        engine=ensemble.name,
        results=results,
        radii=tuple(radii),
        wall_time_s=time.perf_counter() - start + prior,
        indices=indices,
        **ball_of(spec),
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
class AuditPoint:
    """One point's audit: the engine's and the solver's results, the violations found there
    (``index``: the point's index in the data) and each side's seconds."""

    index: int
    engine_result: CheckResult
    solver_result: CheckResult
    violations: tuple[Violation, ...]
    engine_time_s: float
    solver_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine_result": self.engine_result.to_dict(),
            "solver_result": self.solver_result.to_dict(),
            "violations": [v.to_dict() for v in self.violations],
            "engine_time_s": self.engine_time_s,
            "solver_time_s": self.solver_time_s,
        }

    @classmethod
    def from_dict(cls, index: int, d: Mapping[str, Any], shape: tuple[int, ...]) -> AuditPoint:
        """The point ``to_dict`` wrote; ``shape``: the network's input shape."""

        def array(value: Any) -> FloatArray | None:
            return None if value is None else np.asarray(value, dtype=np.float64).reshape(shape)

        violations = []
        for v in d["violations"]:
            witness = array(v["witness"])
            assert witness is not None  # every violation has its witness
            violations.append(
                Violation(
                    ViolationKind(v["kind"]),
                    int(v["index"]),
                    array(v["point"]),
                    witness,
                    float(v["point_margin"]),
                    float(v["witness_margin"]),
                    str(v["detail"]),
                )
            )
        return cls(
            index,
            CheckResult.from_dict(d["engine_result"]),
            CheckResult.from_dict(d["solver_result"]),
            tuple(violations),
            float(d["engine_time_s"]),
            float(d["solver_time_s"]),
        )


def audit_points(
    engine: Engine,
    solver: Any,
    network: Network,
    spec: Spec,
    data: Dataset | None,
    limit: int | None = None,
    timeout: float | None = None,
    *,
    points: Sequence[int] | None = None,
    done: Mapping[int, AuditPoint] | None = None,
    on_point: Callable[[AuditPoint], None] | None = None,
    progress: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> AuditReport:
    """``verispec.audit.audit`` point by point over the first ``limit`` points of ``data`` (a
    ``SafeOrdering`` spec: its one global goal, index 0): ``points`` selects indices, ``done``
    holds points already audited (not run again), ``on_point`` sees each new one, in index
    order; ``executor`` runs the points (one task each; in this process by default)."""
    from verispec.audit import audit

    known = done or {}
    if isinstance(spec, SafeOrdering):
        indices: tuple[int, ...] = (0,)
        xs: FloatArray | None = None
        ys: np.ndarray | None = None
        domain = None
    else:
        if data is None:
            raise DataError(f"{describe(spec)} is audited at data points: give a data source")
        xs, ys, domain = points_of(network, data, limit)
        indices = selected_points(points, len(xs))

    def one(i: int) -> AuditPoint:
        run = engine.numbered([i]) if isinstance(engine, EngineBase) else engine
        x = None if xs is None else xs[i : i + 1]
        y = None if ys is None else ys[i : i + 1]
        rep = audit(run, solver, network, spec, x, y, domain, timeout)
        return AuditPoint(
            i,
            rep.engine_results[0],
            rep.solver_results[0],
            tuple(attrs.evolve(v, index=i) for v in rep.violations),
            rep.engine_time_s,
            rep.solver_time_s,
        )

    def failed(i: int, why: TaskFailure) -> AuditPoint:
        result = CheckResult(Verdict.UNKNOWN, engine.name, detail=why.detail)
        return AuditPoint(i, result, attrs.evolve(result, engine=solver.name), (), 0.0, 0.0)

    out: list[AuditPoint] = []
    for _, point, new in in_order(executor, one, indices, known, failed):
        if new and on_point is not None:
            on_point(point)
        out.append(point)
        if progress is not None:
            progress(1)
    return AuditReport(
        engine=engine.name,
        solver=solver.name,
        spec=describe(spec),
        engine_results=[p.engine_result for p in out],
        solver_results=[p.solver_result for p in out],
        violations=[v for p in out for v in p.violations],
        engine_time_s=sum(p.engine_time_s for p in out),
        solver_time_s=sum(p.solver_time_s for p in out),
    )


def ensemble_point_from_dict(index: int, d: Mapping[str, Any]) -> EnsemblePointAudit:
    """The point ``EnsemblePointAudit.to_dict`` wrote."""
    witness = d.get("witness")
    return EnsemblePointAudit(
        index,
        AuditStatus(d["status"]),
        int(d["answer"]),
        None if witness is None else np.asarray(witness, dtype=np.float64),
        None if d.get("witness_answer") is None else int(d["witness_answer"]),
        str(d.get("detail", "")),
        float(d.get("time_s", 0.0)),
    )


def audit_ensemble_points(
    ensemble: Ensemble,
    spec: LocalRobustness,
    data: Dataset,
    limit: int | None = None,
    timeout: float = 60.0,
    *,
    points: Sequence[int] | None = None,
    done: Mapping[int, EnsemblePointAudit] | None = None,
    on_point: Callable[[EnsemblePointAudit], None] | None = None,
    progress: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> EnsembleAudit:
    """``audit_ensemble`` point by point over the first ``limit`` points of ``data``, with
    ``points``, ``done``, ``on_point`` and ``executor`` as in ``audit_points``."""
    from verispec.ensembles import audit_ensemble
    from verispec.ensembles.exact import _spec_text as ensemble_spec_text

    known = done or {}
    xs, _, domain = points_of(ensemble, data, limit)
    indices = selected_points(points, len(xs))

    def one(i: int) -> EnsemblePointAudit:
        rep = audit_ensemble(ensemble, spec, xs[i : i + 1], domain, timeout)
        return attrs.evolve(rep.points[0], index=i)

    def failed(i: int, why: TaskFailure) -> EnsemblePointAudit:
        # no answer is known: its task did not complete (-1, as the detail says)
        return EnsemblePointAudit(i, AuditStatus.UNKNOWN, -1, None, None, why.detail, 0.0)

    out: list[EnsemblePointAudit] = []
    for _, point, new in in_order(executor, one, indices, known, failed):
        if new and on_point is not None:
            on_point(point)
        out.append(point)
        if progress is not None:
            progress(1)
    return EnsembleAudit(ensemble.name, ensemble_spec_text(spec), tuple(out))


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
    correct_with: Sequence[str | Path] = (),
    top: str = "max",
) -> VnnlibAnswer:
    """Decide a VNN-COMP instance: every input box of the file must keep f(x) out of its unsafe
    set. ``sat`` as soon as one box has a counterexample. ``timeout`` counts everything: the
    ONNX load, the VNN-LIB parse and the solve.

    ``correct_with``: VNN-LIB files whose safe sets (orderings) a self-correcting layer on
    the network enforces (``top``: "max" or "min", the score that is the prediction); the
    instance is then decided on the corrected network."""
    from verispec.errors import VerispecError
    from verispec.onnx import load_onnx
    from verispec.selfcorrect import vnnlib_constraints

    start = time.perf_counter()
    network = load_onnx(onnx_path)
    corrected = None
    if correct_with:
        shape, m = network.input_shape, network.num_classes
        rules = [c for path in correct_with for c in vnnlib_constraints(path, shape, m)]
        corrected = SelfCorrecting(network, rules, top=top)
    try:
        spec = parse_vnnlib_within(vnnlib_path, network, start + timeout)
    except VerispecError as err:
        if time.perf_counter() < start + timeout:
            raise
        return VnnlibAnswer("timeout", time.perf_counter() - start, f"parsing the file: {err}")
    return decide_vnnlib(network, spec, solver, timeout, config, start, corrected)


def parse_vnnlib_within(path: str | Path, network: Network, deadline: float) -> VnnlibSpec:
    """``parse_vnnlib`` for ``network``'s inputs and outputs, stopped at ``deadline`` (a
    ``time.perf_counter`` value) by ``VnnlibTimeout``."""
    return parse_vnnlib(path, network.input_size, network.num_classes, deadline=deadline)


def decide_vnnlib(
    network: Network,
    spec: VnnlibSpec,
    solver: str = "milp",
    timeout: float = 116.0,
    config: SolverConfig | None = None,
    start: float | None = None,
    corrected: SelfCorrecting | None = None,
) -> VnnlibAnswer:
    """Decide a parsed VNN-LIB ``spec`` on ``network`` within ``timeout`` seconds from
    ``start`` (a ``time.perf_counter`` value; now by default), box by box. ``timeout`` is only
    answered once that time has passed; a solver that gives up earlier answers ``unknown``.
    With ``corrected`` (the network with a self-correcting layer) the corrected network is
    decided (``verify_corrected``), and a witness's outputs are the corrected logits."""
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
        safe = safe_property(spec, shaped)
        if corrected is None:
            res = exact.solve(network, safe, left)
        else:
            rule = SafeOrdering(shaped, safe.predicate)
            res = verify_corrected(corrected, rule, solver, left, exact.config)
        if res.verdict is Verdict.FALSIFIED and res.counterexample is not None:
            y = network.forward64(res.counterexample[None])[0]
            if corrected is not None:
                x = res.counterexample.reshape(1, *network.input_shape)
                out = corrected.revise(torch.from_numpy(x), torch.from_numpy(y[None]))
                y = out.logits[0, : network.num_classes].numpy()
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
