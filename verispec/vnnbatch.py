"""VNN-COMP batch runs: every instance of an ``instances.csv`` in one process.

A VNN-COMP benchmark folder lists its instances in a CSV, one ``onnx,vnnlib,timeout`` line
each, the paths relative to the CSV's folder. ``run_instances`` decides them in order the way
the competition's scripts do: each instance within its own timeout, which counts everything
for it (the ONNX load, the VNN-LIB parse, the solve). ONNX networks shared by several
instances are loaded once (cached by path and modification time). Each result is handed to
``on_result`` and appended to the results CSV as soon as it is known, so a run that dies loses
nothing already decided.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from verispec.api import VnnlibAnswer, decide_vnnlib, parse_vnnlib_within
from verispec.errors import SpecFileError, VerispecError
from verispec.executor import Executor, TaskFailure, in_order
from verispec.network import Network

ANSWERS = ("sat", "unsat", "timeout", "unknown", "error")
"""The answers an instance can get; ``sat`` and ``unsat`` count as solved."""

RESULT_COLUMNS = ("onnx", "vnnlib", "answer", "time_s", "detail")
"""The header of a results CSV."""


@attrs.frozen
class Instance:
    """One line of an instances CSV: the network, the property and the timeout in seconds.
    ``onnx`` and ``vnnlib`` are as written in the CSV; ``onnx_path`` and ``vnnlib_path``
    resolve them against the CSV's folder."""

    onnx: str
    vnnlib: str
    timeout: float
    folder: Path
    line: int

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.onnx

    @property
    def vnnlib_path(self) -> Path:
        return self.folder / self.vnnlib

    @property
    def name(self) -> str:
        """``onnx vnnlib`` as the CSV names them."""
        return f"{self.onnx} {self.vnnlib}"


@attrs.frozen(eq=False)
class InstanceResult:
    """An instance's answer (one of ``ANSWERS``), the seconds it took, and the solver's detail
    (or the error's message). ``vnnlib_answer`` is the full answer, witness included, when
    the instance was decided."""

    instance: Instance
    answer: str
    time_s: float
    detail: str = ""
    vnnlib_answer: VnnlibAnswer | None = None

    @property
    def solved(self) -> bool:
        return self.answer in ("sat", "unsat")

    @property
    def late(self) -> bool:
        """Whether the instance was solved (sat or unsat) only after its time limit: the
        competition would count it as a timeout. (A ``timeout`` answer comes after the limit
        by definition; it is not late.)"""
        return self.solved and self.time_s > self.instance.timeout

    def row(self) -> tuple[str, str, str, str, str]:
        """The result as a results-CSV row (``RESULT_COLUMNS``)."""
        return (
            self.instance.onnx,
            self.instance.vnnlib,
            self.answer,
            f"{self.time_s:.3f}",
            self.detail,
        )

    def record(self) -> dict[str, Any]:
        """The result as a run-log record (the results-CSV fields, ``time_s`` a number)."""
        return {
            "onnx": self.instance.onnx,
            "vnnlib": self.instance.vnnlib,
            "answer": self.answer,
            "time_s": self.time_s,
            "detail": self.detail,
        }

    @classmethod
    def from_record(cls, instance: Instance, record: Mapping[str, Any]) -> InstanceResult:
        """The result a run log recorded for ``instance``; a record of another instance (the
        CSV changed since) or with an unknown answer raises RunLogError."""
        from verispec.runlog import RunLogError

        if (record.get("onnx"), record.get("vnnlib")) != (instance.onnx, instance.vnnlib):
            raise RunLogError(
                f"the run log's instance {record.get('onnx')} {record.get('vnnlib')} is not "
                f"line {instance.line} of the CSV ({instance.name}): the CSV changed since; "
                "start a new run without --resume"
            )
        answer = record.get("answer")
        time_s = record.get("time_s")
        if answer not in ANSWERS or not isinstance(time_s, int | float):
            raise RunLogError(
                f"the run log's record of {instance.name} has no valid answer and time_s"
            )
        return cls(instance, str(answer), float(time_s), str(record.get("detail", "")))

    def text(self) -> str:
        """The VNN-COMP result file's text (``error`` when the instance failed)."""
        if self.vnnlib_answer is not None:
            return self.vnnlib_answer.text()
        return self.answer + "\n"


def read_instances(csv_path: str | Path, timeout_scale: float = 1.0) -> list[Instance]:
    """The instances of a VNN-COMP ``instances.csv`` (``onnx,vnnlib,timeout`` lines; blank
    lines skipped), their timeouts multiplied by ``timeout_scale``. A malformed line raises
    SpecFileError naming the file and line."""
    path = Path(csv_path)
    if not (math.isfinite(timeout_scale) and timeout_scale > 0):
        raise SpecFileError(f"the timeout scale must be a positive number, got {timeout_scale}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecFileError(f"cannot read instances file {path}: {err}") from None
    out: list[Instance] = []
    for number, fields in enumerate(csv.reader(text.splitlines()), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        where = f"{path}, line {number}"
        if len(fields) != 3:
            raise SpecFileError(
                f"{where}: expected onnx,vnnlib,timeout (3 fields), got {len(fields)}"
            )
        onnx, prop, limit = (f.strip() for f in fields)
        try:
            timeout = float(limit)
        except ValueError:
            raise SpecFileError(f"{where}: the timeout {limit!r} is not a number") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise SpecFileError(f"{where}: the timeout must be positive seconds, got {limit!r}")
        if not onnx or not prop:
            raise SpecFileError(f"{where}: an empty network or property path")
        out.append(Instance(onnx, prop, timeout * timeout_scale, path.parent, number))
    if not out:
        raise SpecFileError(f"{path} lists no instances (expected onnx,vnnlib,timeout lines)")
    return out


class NetworkCache:
    """ONNX networks loaded once per file, keyed by resolved path, modification time and size
    (a file rewritten between instances is loaded again)."""

    def __init__(self) -> None:
        self._networks: dict[tuple[str, int, int], Network] = {}

    def load(self, path: str | Path) -> Network:
        """The network in the ONNX file ``path``, loaded on first use."""
        from verispec.onnx import load_onnx

        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return load_onnx(p)  # load_onnx names the missing or unreadable file
        key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
        if key not in self._networks:
            self._networks[key] = load_onnx(p)
        return self._networks[key]


def solve_instance(
    instance: Instance,
    solver: str = "milp",
    cache: NetworkCache | None = None,
) -> InstanceResult:
    """Decide one instance within its timeout (counting the load, the parse and the solve).
    Bad input or a failing solver gives an ``error`` result naming the cause, not an
    exception; a parse that ends past the deadline gives ``timeout``."""
    start = time.perf_counter()
    deadline = start + instance.timeout
    try:
        network = (cache if cache is not None else NetworkCache()).load(instance.onnx_path)
        spec = parse_vnnlib_within(instance.vnnlib_path, network, deadline)
        answer = decide_vnnlib(network, spec, solver, instance.timeout, start=start)
    except Exception as err:  # one failing instance must not end the batch
        elapsed = time.perf_counter() - start
        if time.perf_counter() >= deadline:
            return InstanceResult(instance, "timeout", elapsed, f"time limit passed: {err}")
        text = str(err) if isinstance(err, VerispecError) else f"{type(err).__name__}: {err}"
        return InstanceResult(instance, "error", elapsed, text)
    detail = answer.detail
    if answer.time_s > instance.timeout:  # a solver step that does not watch the clock
        detail += f"; answered after {answer.time_s:.2f} s, past the {instance.timeout:g} s limit"
    return InstanceResult(instance, answer.answer, answer.time_s, detail, answer)


class ResultsWriter:
    """A results CSV written as the run goes: the header at once, then one flushed and
    fsynced row per instance, so the rows of a run that dies are kept."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: IO[str] = self.path.open("w", newline="")
        except OSError as err:
            raise SpecFileError(f"cannot write results file {self.path}: {err}") from None
        self._csv = csv.writer(self._file)
        self._write(RESULT_COLUMNS)

    def _write(self, row: tuple[str, ...]) -> None:
        self._csv.writerow(row)
        self._file.flush()
        os.fsync(self._file.fileno())

    def add(self, result: InstanceResult) -> None:
        """Append ``result``'s row."""
        self._write(result.row())

    def close(self) -> None:
        self._file.close()


def run_instances(
    csv_path: str | Path,
    solver: str = "milp",
    results_path: str | Path | None = None,
    on_result: Callable[[InstanceResult], None] | None = None,
    timeout_scale: float = 1.0,
    done: Mapping[int, Mapping[str, Any]] | None = None,
    on_decided: Callable[[int, InstanceResult], None] | None = None,
    executor: Executor | None = None,
) -> list[InstanceResult]:
    """Decide every instance of the VNN-COMP ``csv_path`` in order with ``solver``; each
    result goes to ``on_result`` and a row of ``results_path`` (a CSV with ``RESULT_COLUMNS``)
    as soon as it is known. The CSV is read and the results file opened
    before the first instance runs, so bad paths fail at once.

    ``done`` holds run-log records (``InstanceResult.record``) by instance index (0-based,
    in CSV order) of instances decided before: they are not run again, and still go to the
    results file and ``on_result``. ``on_decided(index, result)`` sees each instance this
    call decides (a run log's writer). ``executor`` runs the instances (one task each, in
    this process by default; ``verispec.cluster`` for Ray workers): the results come in CSV
    order whatever it is, and an instance whose task fails is an ``error`` saying why."""
    from verispec.solvers.base import solver_class

    solver_class(solver)  # an unknown solver fails before the run, not once per instance
    instances = read_instances(csv_path, timeout_scale)
    known = done or {}
    prior = {
        i: InstanceResult.from_record(instances[i], r)
        for i, r in known.items()
        if i < len(instances)
    }
    if len(prior) != len(known):
        from verispec.runlog import RunLogError

        raise RunLogError(
            f"the run log holds instance {max(known)}, but {csv_path} lists {len(instances)}: "
            "the CSV changed since; start a new run without --resume"
        )
    writer = ResultsWriter(results_path) if results_path is not None else None
    cache = NetworkCache()

    def one(index: int) -> InstanceResult:
        return solve_instance(instances[index], solver, cache)

    def failed(index: int, why: TaskFailure) -> InstanceResult:
        return InstanceResult(instances[index], "error", 0.0, why.detail)

    results: list[InstanceResult] = []
    try:
        tasks = list(range(len(instances)))
        for index, result, new in in_order(executor, one, tasks, prior, failed):
            if new and on_decided is not None:
                on_decided(index, result)
            results.append(result)
            if writer is not None:
                writer.add(result)
            if on_result is not None:
                on_result(result)
    finally:
        if writer is not None:
            writer.close()
    return results


def summary(results: list[InstanceResult], wall_s: float | None = None) -> str:
    """One line: the instances, the solved count and each answer's count, how many answered
    past their time limit (when any did), the total time."""
    counts = {a: sum(r.answer == a for r in results) for a in ANSWERS}
    solved = counts["sat"] + counts["unsat"]
    parts = ", ".join(f"{counts[a]} {a}" for a in ANSWERS)
    late = sum(r.late for r in results)
    past = f", {late} past their time limit," if late else ""
    total = sum(r.time_s for r in results) if wall_s is None else wall_s
    return f"total: {len(results)} instances, {solved} solved ({parts}){past} in {total:.2f} s"
