"""The ``verispec`` command line: parse, build typed objects, call the library, print."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
import click
import numpy as np

EXIT_BAD_INPUT = 2
EXIT_PROPERTY_FAILED = 3
"""``check`` / ``audit``: a property failed (recorded as an error); the others ran."""
PROGRESS_DELAY_S = 2.0
"""Seconds a run takes before its progress bar appears (stderr)."""


class RegistryChoice(click.Choice[str]):
    """The names in a registry as a click choice, read when click needs them (``--help``,
    parsing): importing the CLI imports no engine or solver."""

    def __init__(self, kind: str, names: Callable[[], Sequence[str]]) -> None:
        self.kind = kind
        self._names = names
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:
        """click.Choice.__init__ assigns a static list; the registry is the source instead."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        names = self.choices
        if isinstance(value, str) and value in names:
            return value
        self.fail(f"unknown {self.kind} {value!r}; available: {', '.join(names)}", param, ctx)


def _engine_names() -> tuple[str, ...]:
    from verispec.engines.base import ENGINES

    return ENGINES.names()


def _solver_names() -> tuple[str, ...]:
    from verispec.solvers.base import SOLVERS

    return SOLVERS.names()


ENGINE_CHOICE = RegistryChoice("engine", _engine_names)
SOLVER_CHOICE = RegistryChoice("solver", _solver_names)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def _guard(debug: bool, body: Callable[[], Any]) -> Any:
    """Run ``body``; bad input becomes a one-line error and exit 2 (a traceback with --debug)."""
    from verispec.errors import VerispecError

    try:
        return body()
    except VerispecError as err:
        if debug:
            raise
        _fail(str(err))
    except (OSError, ValueError) as err:
        if debug:
            raise
        _fail(f"{type(err).__name__}: {err}")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _significant(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, without an exponent (713, 1260, 4.23,
    0.0123)."""
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    rounded = round(value, digits - 1 - magnitude)
    decimals = max(0, digits - 1 - magnitude)
    return f"{rounded:.{decimals}f}"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


ENSEMBLE_DETAIL_POINTS = 3
"""Points whose ensemble details (which member answered, the votes) a table shows."""


WITNESS_SHOWN = 10
"""Values of a global property's counterexample the table shows (all are in --json)."""


def report_table(report: Any, ensemble: Any = None) -> str:
    """The human summary of one property's report (``ensemble``: the ensemble it ran on)."""
    counts = report.counts
    if not report.has_labels and report.points == 1:
        (result,) = report.results
        rows = [
            ("spec", report.spec),
            ("engine", report.engine),
            ("verdict", result.verdict.value.upper()),
            ("time", f"{result.time_s:.3f} s"),
        ]
        if result.detail:
            rows.append(("detail", result.detail))
        if result.counterexample is not None:
            flat = np.asarray(result.counterexample).ravel()
            shown = ", ".join(f"{v:.9g}" for v in flat[:WITNESS_SHOWN])
            more = f", ... ({flat.size} values; all in --json)" if flat.size > WITNESS_SHOWN else ""
            rows.append(("witness", f"[{shown}{more}]"))
        rows += _ensemble_rows(ensemble, report, details=False)
        return f"{report.property_name}\n{_table(rows)}"
    rows = [
        ("spec", report.spec),
        ("engine", report.engine),
        ("points", str(report.points)),
        ("clean accuracy", _fmt(report.clean_accuracy)),
        ("VRA", _fmt(report.vra)),
        ("certified", str(counts["certified"])),
        ("falsified", str(counts["falsified"])),
    ]
    if counts["abstain"]:
        rows.append(("abstained", str(counts["abstain"])))
    if counts["timeout"]:
        rows.append(("timed out", str(counts["timeout"])))
    rows += [
        ("unknown", str(counts["unknown"])),
        ("median radius", _fmt(report.median_radius)),
        ("points/s", _significant(report.points_per_second)),
    ]
    if report.has_radii:
        for r, acc in report.certified_accuracy():
            rows.append((f"cert. acc @ r={r:g}", _fmt(acc)))
    rows += _ensemble_rows(ensemble, report, details=True)
    return f"{report.property_name}\n{_table(rows)}"


def _ensemble_rows(ensemble: Any, report: Any, details: bool) -> list[tuple[str, str]]:
    """The members, a warning when the ensemble's certificates are unsound, and how it decided
    at the first points."""
    if ensemble is None:
        return []
    names = ", ".join(f"{m.label(i)} ({m.engine.name})" for i, m in enumerate(ensemble.members))
    rows = [("members", names)]
    if not ensemble.sound:
        rows.append(
            (
                "WARNING",
                f"a {ensemble.kind}'s certificates are unsound as published (Mangal et al., "
                "ICLR 2023): audit them with 'verispec audit --solver milp'",
            )
        )
    if getattr(ensemble, "kind", "") == "selective":
        rows += _selective_rows(ensemble, report)
    if details:
        shown = min(report.points, ENSEMBLE_DETAIL_POINTS)
        for i in range(shown):
            rows.append((f"point {i}", report.results[i].detail or "-"))
        if report.points > shown:
            rows.append(("", "(every point's details: --json)"))
    return rows


def _selective_rows(ensemble: Any, report: Any) -> list[tuple[str, str]]:
    """A selective ensemble's test: alpha, how many points abstained, the p-values' summary
    (from each point's detail) and the certified share."""
    from verispec.ensembles import pvalue_in

    found = [pvalue_in(r.detail) for r in report.results]
    p = np.array([v for v in found if v is not None])
    counts, n = report.counts, max(report.points, 1)
    rows = [("WARNING", ensemble.warning)] if ensemble.warning else []
    rows += [
        ("alpha", f"{ensemble.alpha:g} ({len(ensemble.members)} members)"),
        ("abstentions", f"{counts['abstain']} of {report.points}"),
    ]
    if len(p):
        rows.append(
            (
                "p-values",
                f"min {p.min():.3g}, median {np.median(p):.3g}, max {p.max():.3g}; "
                f"{int((p <= ensemble.alpha).sum())} significant",
            )
        )
    rows.append(("certified share", f"{counts['certified'] / n:.3f} (robust selective answer)"))
    return rows


@click.group()
@click.version_option(package_name="verispec", prog_name="verispec", message="%(prog)s %(version)s")
def main() -> None:
    """verispec: certify properties of trained neural networks."""
    warnings.formatwarning = _format_warning  # a warning is a line for the user, no source


def _format_warning(message: Warning | str, *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


EXIT_HELP = (
    "\b\nExit status: 0 every property ran; 2 bad input (the spec file, a flag, an output\n"
    "path): nothing ran; 3 a property failed (its error is printed and recorded in\n"
    "--json/--jsonl): the others ran and are reported."
)


def _progress_options(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--progress/--no-progress",
        default=None,
        help=f"a progress bar on stderr: from the start / never (default: once a run has "
        f"taken {PROGRESS_DELAY_S:g} s)",
    )(f)


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``check`` and ``audit`` share: the points, the output files, progress."""
    for option in reversed(
        [
            click.option(
                "--points",
                "points_text",
                default=None,
                help="points to run: indices and ranges a:b (b excluded), e.g. 0:100,250",
            ),
            click.option(
                "--json",
                "json_path",
                type=click.Path(dir_okay=False),
                default=None,
                help="write the reports as JSON (at the end, atomically)",
            ),
            click.option(
                "--csv",
                "csv_path",
                type=click.Path(dir_okay=False),
                default=None,
                help="write one row per point (property, index, verdicts) as CSV",
            ),
            click.option(
                "--jsonl",
                "jsonl_path",
                type=click.Path(dir_okay=False),
                default=None,
                help="stream one JSON line per point as it is decided (a run log)",
            ),
            click.option(
                "--resume",
                is_flag=True,
                help="with --jsonl: keep the points the run log holds, run only the others",
            ),
        ]
    ):
        f = option(f)
    return _progress_options(f)


def _cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--workers, --address and --task-timeout: the work spread over Ray workers."""
    for option in reversed(
        [
            click.option(
                "--workers",
                type=click.IntRange(min=1),
                default=None,
                help="run the work on N Ray workers (a local Ray, or N tasks at a time on "
                "--address); needs verispec[cluster]",
            ),
            click.option(
                "--address",
                default=None,
                help="the address of a running Ray cluster to use (e.g. ray://head:10001)",
            ),
            click.option(
                "--task-timeout",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="with --workers/--address: seconds a task (a chunk of points, an "
                "instance) may run before it is cancelled and recorded as failed",
            ),
        ]
    ):
        f = option(f)
    return f


@attrs.frozen
class Cluster:
    """--workers, --address and --task-timeout as given (all None: this process)."""

    workers: int | None = None
    address: str | None = None
    task_timeout: float | None = None


@contextlib.contextmanager
def _executor(cluster: Cluster, device: str | None) -> Iterator[Any]:
    """None (this process) without --workers and --address, else a Ray executor (one GPU per
    task when the device is CUDA)."""
    if cluster.workers is None and cluster.address is None:
        if cluster.task_timeout is not None:
            raise click.UsageError("--task-timeout goes with --workers or --address")
        yield None
        return
    from verispec.cluster import ray_cluster

    gpus = 1.0 if device is not None and device.startswith("cuda") else 0.0
    with ray_cluster(cluster.workers, cluster.address, cluster.task_timeout, gpus) as executor:
        yield executor


@contextlib.contextmanager
def _progress_bar(
    total: int, label: str, mode: bool | None, unit: str = "pt"
) -> Iterator[Callable[[int], None]]:
    """``update(k)`` of a tqdm bar on stderr (never stdout): ``mode`` None shows it once
    PROGRESS_DELAY_S seconds have passed, True at once, False never."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(
        total=total,
        desc=label,
        unit=unit,
        file=sys.stderr,
        disable=mode is False,
        delay=0 if mode else PROGRESS_DELAY_S,
        leave=False,
        mininterval=0.2 if tty else 5.0,
        dynamic_ncols=tty,
    )

    def update(k: int) -> None:
        bar.update(k)

    try:
        yield update
    finally:
        bar.close()


def _out_paths(**paths: str | None) -> None:
    """Refuse, before anything runs, an output path that cannot be written (exit 2)."""
    from verispec.runlog import ensure_writable

    for flag, path in paths.items():
        if path is not None:
            ensure_writable(path, "--" + flag)


def _open_log(
    jsonl_path: str | None, resume: bool, command: str, spec: Path, options: dict[str, Any]
) -> tuple[Any, Any]:
    """The run log (None without --jsonl) and what it holds already (--resume)."""
    from verispec.runlog import EMPTY_STATE, RunLog

    if jsonl_path is None:
        if resume:
            raise click.UsageError("--resume reads the run log: give it with --jsonl PATH")
        return None, EMPTY_STATE
    if resume:
        return RunLog.resume(jsonl_path, command, str(spec), options)
    return RunLog.start(jsonl_path, command, str(spec), options), EMPTY_STATE


def _selection(sf: Any, points_text: str | None) -> tuple[int, ...] | None:
    """The indices --points names among the spec file's points (None: all)."""
    from verispec.runlog import PointsError, parse_points

    if points_text is None:
        return None
    if sf.data is None:
        raise PointsError(f"--points {points_text!r}: {sf.path} has no [data] points")
    return parse_points(points_text, len(sf.data.take(sf.limit)))


def _failure(err: Exception) -> str:
    from verispec.errors import VerispecError

    return str(err) if isinstance(err, VerispecError) else f"{type(err).__name__}: {err}"


def _finish(
    failed: list[tuple[str, str]],
    total: int,
    *,
    json_text: str | None,
    json_path: str | None,
    csv_rows: list[dict[str, Any]],
    csv_header: Sequence[str],
    csv_path: str | None,
) -> None:
    """Write the final files atomically and name the properties that failed (stderr)."""
    from verispec.runlog import atomic_write_text, csv_text

    if json_path and json_text is not None:
        atomic_write_text(json_path, json_text)
        click.echo(f"wrote {json_path}")
    if csv_path:
        atomic_write_text(csv_path, csv_text(csv_header, csv_rows))
        click.echo(f"wrote {csv_path}")
    if failed:
        names = ", ".join(repr(n) for n, _ in failed)
        click.echo(f"error: {len(failed)} of {total} properties failed: {names}", err=True)


def _tuner(seed: int | None, time_per_point: float | None) -> Callable[[str, Any], Any]:
    """``tune(engine name, config)``: the config with --seed and --time-per-point applied
    where the engine has such an option; a note on stderr (once per engine) where not."""
    import attrs

    noted: set[str] = set()

    def note(text: str) -> None:
        if text not in noted:
            noted.add(text)
            click.echo(f"note: {text}", err=True)

    def tune(name: str, config: Any) -> Any:
        fields = attrs.fields_dict(type(config)) if attrs.has(type(config)) else {}
        changes: dict[str, Any] = {}
        if seed is not None:
            if "seed" in fields:
                changes["seed"] = seed
            else:
                note(f"--seed does not apply to engine {name!r}: it has no seed option")
        if time_per_point is not None:
            field = next((f for f in TIME_PER_POINT_OPTIONS if f in fields), None)
            if field is None:
                note(
                    f"--time-per-point does not apply to engine {name!r}: it has no per-point "
                    "time limit"
                )
            else:
                changes[field] = time_per_point
        return attrs.evolve(config, **changes) if changes else config

    return tune


TIME_PER_POINT_OPTIONS = ("time_per_point", "timeout")
"""Engine options that bound the seconds spent on one point (projections: time_per_point; the
exact engines milp and smt: the solver's timeout per goal)."""


@main.command(epilog=EXIT_HELP)
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--engine",
    "engine_name",
    type=ENGINE_CHOICE,
    default=None,
    help="engine (default: the file's, else lipschitz)",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="check only the first N points"
)
@_run_options
@_cluster_options
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="seed of the engines that draw random numbers (lipschitz, projections, smoothing)",
)
@click.option(
    "--time-per-point",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="seconds per point for engines with a per-point limit (projections, milp, smt)",
)
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="draw certified accuracy against radius (PNG; needs matplotlib)",
)
@click.option("--debug", is_flag=True, help="show tracebacks")
def check(
    spec: str,
    engine_name: str | None,
    limit: int | None,
    points_text: str | None,
    json_path: str | None,
    csv_path: str | None,
    jsonl_path: str | None,
    resume: bool,
    progress: bool | None,
    seed: int | None,
    time_per_point: float | None,
    device: str | None,
    plot_path: str | None,
    debug: bool,
    workers: int | None = None,
    address: str | None = None,
    task_timeout: float | None = None,
) -> None:
    """Check every property of the spec file SPEC and print a table per property.

    A property may name its own model and engine in the file; --engine overrides every
    engine, and properties that engine does not support are skipped with the reason. A
    property that fails (an engine that does not support it, bad options) is reported as an
    error naming it; the others still run. With --workers or --address the points run on
    Ray workers, with the same results in the same order.
    """

    def run() -> int:
        from verispec.api import check as vcheck
        from verispec.errors import UnsupportedError
        from verispec.executor import is_task_failure
        from verispec.results import CSV_COLUMNS, CheckResult
        from verispec.specfile import load_specfile

        _out_paths(json=json_path, csv=csv_path, jsonl=jsonl_path, plot=plot_path)
        if device is not None:
            from verispec.options import resolve_device

            resolve_device(device)  # a bad --device is bad input (exit 2), not a failed property
        sf = load_specfile(spec, limit=limit)
        chosen = _selection(sf, points_text)
        tuned = seed is not None or time_per_point is not None
        tune = _tuner(seed, time_per_point) if tuned else None
        ensemble = _ensemble_of(sf, engine_name, device, tune)
        options = {
            "engine": engine_name,
            "limit": sf.limit,
            "points": points_text,
            "seed": seed,
            "time_per_point": time_per_point,
            "device": device,
        }
        log, state = _open_log(jsonl_path, resume, "check", sf.path, options)
        engines: dict[tuple[str, int], Any] = {}
        reports, failed, skipped = [], [], []
        stack = contextlib.ExitStack()
        try:
            cluster = Cluster(workers, address, task_timeout)
            executor = stack.enter_context(_executor(cluster, device))
            for prop in sf.properties:
                try:
                    on_ensemble = prop.network is None and ensemble is not None
                    model = ensemble if on_ensemble else sf.model_of(prop)
                    engine = (
                        None
                        if on_ensemble
                        else _engine_for(sf, prop, engine_name, device, engines, tune)
                    )
                    done = {
                        i: CheckResult.from_dict(dict(rec))
                        for i, rec in state.done(prop.name).items()
                    }
                    total = _point_count(sf, prop, chosen)

                    def record(i: int, result: Any, name: str = prop.name) -> None:
                        if log is not None:
                            lost = is_task_failure(result.detail)
                            log.point(name, i, result.to_dict(), failed=lost)

                    with _progress_bar(total, prop.name, progress) as tick:
                        report = vcheck(
                            model,
                            prop.spec,
                            sf.data,
                            engine,
                            limit=sf.limit,
                            name=prop.name,
                            radii=sf.radii if prop.radii is None else prop.radii,
                            progress=tick,
                            points=chosen,
                            done=done,
                            on_result=record,
                            executor=executor,
                        )
                except UnsupportedError as err:
                    if engine_name is None:
                        if debug:
                            raise
                        failed.append((prop.name, str(err)))
                        _report_failure(log, prop.name, str(err))
                        continue
                    skipped.append((prop.name, str(err)))
                    if log is not None:
                        log.skipped(prop.name, str(err))
                    click.echo(f"{prop.name}\n  skipped: {err}\n")
                    continue
                except Exception as err:
                    if debug:
                        raise
                    failed.append((prop.name, _failure(err)))
                    _report_failure(log, prop.name, _failure(err))
                    continue
                reports.append(report)
                click.echo(report_table(report, ensemble if on_ensemble else None) + "\n")
        finally:
            stack.close()
            if log is not None:
                log.close()
        payload = {
            "spec_file": str(sf.path),
            "reports": [r.to_dict() for r in reports],
            "errors": [{"property": n, "error": e} for n, e in failed],
            "skipped": [{"property": n, "reason": e} for n, e in skipped],
        }
        _finish(
            failed,
            len(sf.properties),
            json_text=json.dumps(payload, indent=1),
            json_path=json_path,
            csv_rows=[row for r in reports for row in r.csv_rows()],
            csv_header=CSV_COLUMNS,
            csv_path=csv_path,
        )
        if plot_path:
            from verispec.plot import plot_certified_accuracy

            plot_certified_accuracy(reports, plot_path)
            click.echo(f"wrote {plot_path}")
        return EXIT_PROPERTY_FAILED if failed else 0

    sys.exit(_guard(debug, run))


def _report_failure(log: Any, name: str, message: str) -> None:
    """A property's failure: in the output where its table would be, and in the run log."""
    click.echo(f"{name}\n  ERROR: {message}\n")
    if log is not None:
        log.error(name, message)


def _point_count(sf: Any, prop: Any, chosen: tuple[int, ...] | None) -> int:
    """How many points ``prop`` runs on (a global property: 1)."""
    from verispec.specs import SafeOrdering

    if isinstance(prop.spec, SafeOrdering):
        return 1
    if chosen is not None:
        return len(chosen)
    return 0 if sf.data is None else len(sf.data.take(sf.limit))


def _ensemble_of(
    sf: Any,
    override: str | None,
    device: str | None,
    tune: Callable[[str, Any], Any] | None = None,
) -> Any:
    """The file's ensemble (members' engines on ``device`` when given, their configs passed
    through ``tune``), or None; --engine cannot replace the engines of an ensemble's members."""
    import attrs

    from verispec.errors import SpecFileError
    from verispec.specfile import build_ensemble

    if sf.ensemble is None:
        return None
    if override is not None and any(p.network is None for p in sf.properties):
        raise SpecFileError(
            f"{sf.path}: --engine {override} cannot replace the engines of the [ensemble]'s "
            "members: set engine in each [[ensemble.members]] (or leave out --engine)"
        )
    if tune is None:
        return sf.ensemble.build(device)
    members = [
        attrs.evolve(m, engine_config=tune(m.engine_name, m.engine_config)).build(device)
        for m in sf.ensemble.members
    ]
    return build_ensemble(sf.ensemble.kind, members, sf.ensemble.options)


def _engine_for(
    sf: Any,
    prop: Any,
    override: str | None,
    device: str | None,
    cache: dict[Any, Any],
    tune: Callable[[str, Any], Any] | None = None,
) -> Any:
    """The engine a property runs on: --engine, else the property's own, else the file's
    (its config passed through ``tune`` when given)."""
    import attrs

    from verispec.engines.base import engine_class
    from verispec.errors import UnsupportedError

    if override is not None:
        name = override
        config = sf.engine_config if name == sf.engine_name else engine_class(name).Config()
    elif prop.engine_name is not None:
        name, config = prop.engine_name, prop.engine_config
    else:
        name, config = sf.engine_name, sf.engine_config
    key = (name, id(config))
    if key not in cache:
        if device is not None:
            if not hasattr(config, "device"):
                raise UnsupportedError(f"engine {name!r} has no device option")
            config = attrs.evolve(config, device=device)
        if tune is not None:
            config = tune(name, config)
        cache[key] = engine_class(name)(config)
    return cache[key]


def audit_table(report: Any) -> str:
    """The human summary of one property's audit."""
    s = report.summary()
    rows = [
        ("spec", s["spec"]),
        ("engine / solver", f"{s['engine']} / {s['solver']}"),
        ("points", str(s["points"])),
        ("engine certified", str(s["engine_certified"])),
        ("engine falsified", str(s["engine_falsified"])),
        ("solver certified", str(s["solver_certified"])),
        ("solver falsified", str(s["solver_falsified"])),
        ("solver undecided", str(s["solver_undecided"])),
        ("tightness", _fmt(s["tightness"])),
        ("engine time", f"{s['engine_time_s']:.2f} s"),
        ("solver time", f"{s['solver_time_s']:.2f} s"),
        ("VIOLATIONS", str(s["violations"])),
    ]
    lines = [_table(rows)]
    for v in report.violations:
        lines.append(
            f"  ! {v.kind.value} at point {v.index}: margin {v.point_margin:.6g} at the point, "
            f"{v.witness_margin:.6g} at the witness; {v.detail}"
        )
        lines.append(f"    witness: {np.array2string(v.witness.ravel(), precision=6)}")
    return "\n".join(lines)


ENSEMBLE_SOLVER = "milp"
"""The solver of the exact ensemble audit (``verispec.ensembles.exact``)."""


def ensemble_audit_table(audit: Any) -> str:
    """The human summary of one property's ensemble audit: the counts (timeouts as such) and
    every violation with its witness."""
    s = audit.summary()
    claimed = s["points"] - s["not_claimed"]
    rows = [
        ("spec", s["spec"]),
        ("ensemble / solver", f"{s['ensemble']} / exact {ENSEMBLE_SOLVER}"),
        ("points", str(s["points"])),
        ("claimed robust", str(claimed)),
        ("proved robust", str(s["robust"])),
        ("not claimed", str(s["not_claimed"])),
        ("timeout", str(s["timeout"])),
        ("unknown", str(s["unknown"])),
        ("time", f"{s['time_s']:.2f} s"),
        ("VIOLATIONS", str(s["violated"])),
    ]
    lines = [_table(rows)]
    for v in audit.violations:
        lines.append(
            f"  ! violated at point {v.index}: the ensemble answers {v.answer} and claims "
            f"robustness, answers {v.witness_answer} at the witness; {v.detail}"
        )
        lead = "    witness: "
        lines.append(lead + np.array2string(v.witness.ravel(), precision=6, prefix=lead))
    return "\n".join(lines)


AUDIT_EXIT_HELP = (
    "\b\nExit status: 0 no violation, every property ran; 1 a soundness violation was found\n"
    "(whatever else failed); 2 bad input (the spec file, a flag, an output path): nothing\n"
    "ran; 3 a property failed (its error is printed and recorded): the others ran."
)

AUDIT_CSV_COLUMNS = (
    "property",
    "index",
    "engine",
    "engine_verdict",
    "solver",
    "solver_verdict",
    "violation",
    "detail",
)
"""The columns of ``verispec audit --csv``: one row per point (an [ensemble]'s exact audit:
the ensemble as the engine, its status as the solver's verdict)."""


def _audit_rows(name: str, indices: Sequence[int], report: Any) -> list[dict[str, Any]]:
    """``report``'s points as AUDIT_CSV_COLUMNS rows."""
    from verispec.ensembles import AuditStatus, EnsembleAudit

    if isinstance(report, EnsembleAudit):
        return [
            {
                "property": name,
                "index": p.index,
                "engine": report.ensemble,
                "engine_verdict": f"answers {p.answer}",
                "solver": f"exact {ENSEMBLE_SOLVER}",
                "solver_verdict": p.status.value,
                "violation": "violated" if p.status is AuditStatus.VIOLATED else "",
                "detail": p.detail,
            }
            for p in report.points
        ]
    kinds: dict[int, list[str]] = {}
    for v in report.violations:
        kinds.setdefault(v.index, []).append(v.kind.value)
    return [
        {
            "property": name,
            "index": i,
            "engine": report.engine,
            "engine_verdict": e.verdict.value,
            "solver": report.solver,
            "solver_verdict": s.verdict.value,
            "violation": " ".join(kinds.get(i, [])),
            "detail": s.detail,
        }
        for i, e, s in zip(indices, report.engine_results, report.solver_results, strict=True)
    ]


@main.command(epilog=AUDIT_EXIT_HELP)
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--engine",
    "engine_name",
    type=ENGINE_CHOICE,
    default=None,
    help="engine to audit (default: the file's; an [ensemble] audits its members' engines)",
)
@click.option("--solver", type=SOLVER_CHOICE, default="milp", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="audit the first N points")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="solver seconds per point",
)
@_run_options
@_cluster_options
@click.option("--debug", is_flag=True, help="show tracebacks")
def audit(
    spec: str,
    engine_name: str | None,
    solver: str,
    limit: int | None,
    timeout: float,
    points_text: str | None,
    json_path: str | None,
    csv_path: str | None,
    jsonl_path: str | None,
    resume: bool,
    progress: bool | None,
    debug: bool,
    workers: int | None = None,
    address: str | None = None,
    task_timeout: float | None = None,
) -> None:
    """Audit an engine against an exact solver on every property of SPEC.

    Prints a summary per property and every soundness violation. On a spec file with an
    [ensemble], audits the ensemble's claims exactly (--solver milp): a violation is a point
    of the ball where its answer changes. Properties the engine or solver cannot audit (e.g.
    smoothing's probabilistic certificates) are skipped with the reason.
    """

    def run() -> int:
        from verispec.api import (
            AuditPoint,
            audit_ensemble_points,
            audit_points,
            ensemble_point_from_dict,
        )
        from verispec.ensembles import Ensemble, EnsembleAudit
        from verispec.errors import DataError, SpecFileError, UnsupportedError
        from verispec.executor import is_task_failure
        from verispec.selfcorrect import SelfCorrecting
        from verispec.solvers.base import SolverConfig, solver_class
        from verispec.specfile import load_specfile
        from verispec.specs import LocalRobustness, SafeOrdering

        _out_paths(json=json_path, csv=csv_path, jsonl=jsonl_path)
        sf = load_specfile(spec, limit=limit)
        on_ensemble = [p.network is None and sf.ensemble is not None for p in sf.properties]
        if any(on_ensemble):
            if engine_name is not None:
                raise SpecFileError(
                    f"{sf.path}: --engine {engine_name} cannot replace the engines of the "
                    "[ensemble]'s members: set engine in each [[ensemble.members]] (or leave "
                    "out --engine)"
                )
            if solver != ENSEMBLE_SOLVER:
                raise SpecFileError(
                    f"{sf.path}: the exact audit of an [ensemble] is a mixed-integer program: "
                    f"use --solver {ENSEMBLE_SOLVER} (not {solver})"
                )
        chosen = _selection(sf, points_text)
        exact = solver_class(solver)(SolverConfig(timeout=timeout))
        options = {
            "engine": engine_name,
            "solver": solver,
            "limit": sf.limit,
            "timeout": timeout,
            "points": points_text,
        }
        log, state = _open_log(jsonl_path, resume, "audit", sf.path, options)
        engines: dict[tuple[str, int], Any] = {}
        reports: list[tuple[str, Any, tuple[int, ...]]] = []
        failed: list[tuple[str, str]] = []
        skipped: list[tuple[str, str]] = []
        rows: list[dict[str, Any]] = []
        stack = contextlib.ExitStack()
        try:
            cluster = Cluster(workers, address, task_timeout)
            executor = stack.enter_context(_executor(cluster, None))
            for prop in sf.properties:
                report: Any
                name = prop.name

                def record(point: Any, name: str = name) -> None:
                    if log is not None:
                        # an ensemble point carries a detail, a plain one its two results
                        result = getattr(point, "engine_result", point)
                        lost = is_task_failure(result.detail)
                        log.point(name, point.index, point.to_dict(), failed=lost)

                try:
                    model = sf.model_of(prop)
                    if isinstance(model, SelfCorrecting):
                        raise UnsupportedError(
                            "a corrected property has no fast engine to audit: it is proved "
                            "by the exact solvers (verispec check --engine milp)"
                        )
                    if not isinstance(prop.spec, SafeOrdering) and sf.data is None:
                        raise DataError(f"property {name!r} is audited at data points: give [data]")
                    total = _point_count(sf, prop, chosen)
                    known = state.done(name)
                    with _progress_bar(total, name, progress) as tick:
                        if isinstance(model, Ensemble):
                            assert isinstance(prop.spec, LocalRobustness)  # the file checked it
                            assert sf.data is not None  # refused above
                            report = audit_ensemble_points(
                                model,
                                prop.spec,
                                sf.data,
                                sf.limit,
                                timeout,
                                points=chosen,
                                done={i: ensemble_point_from_dict(i, r) for i, r in known.items()},
                                on_point=record,
                                progress=tick,
                                executor=executor,
                            )
                            table = ensemble_audit_table(report)
                        else:
                            engine = _engine_for(sf, prop, engine_name, None, engines)
                            shape = model.input_shape
                            report = audit_points(
                                engine,
                                exact,
                                model,
                                prop.spec,
                                sf.data,
                                sf.limit,
                                timeout,
                                points=chosen,
                                done={
                                    i: AuditPoint.from_dict(i, r, shape) for i, r in known.items()
                                },
                                on_point=record,
                                progress=tick,
                                executor=executor,
                            )
                            table = audit_table(report)
                except UnsupportedError as err:
                    skipped.append((name, str(err)))
                    if log is not None:
                        log.skipped(name, str(err))
                    click.echo(f"{name}\n  skipped: {err}\n")
                    continue
                except Exception as err:
                    if debug:
                        raise
                    failed.append((name, _failure(err)))
                    _report_failure(log, name, _failure(err))
                    continue
                indices: tuple[int, ...]
                if isinstance(report, EnsembleAudit):
                    indices = tuple(p.index for p in report.points)
                elif isinstance(prop.spec, SafeOrdering):
                    indices = (0,)
                else:
                    indices = chosen or tuple(range(len(report.engine_results)))
                reports.append((name, report, indices))
                rows += _audit_rows(name, indices, report)
                click.echo(f"{name}\n{table}\n")
        finally:
            stack.close()
            if log is not None:
                log.close()
        payload = {
            "spec_file": str(sf.path),
            "audits": [{"property": n, **r.to_dict(), "indices": list(ix)} for n, r, ix in reports],
            "errors": [{"property": n, "error": e} for n, e in failed],
            "skipped": [{"property": n, "reason": e} for n, e in skipped],
        }
        _finish(
            failed,
            len(sf.properties),
            json_text=json.dumps(payload, indent=1),
            json_path=json_path,
            csv_rows=rows,
            csv_header=AUDIT_CSV_COLUMNS,
            csv_path=csv_path,
        )
        audits = [r for _, r, _ in reports]
        total = sum(len(r.violations) for r in audits)
        exact_audits = [r for r in audits if isinstance(r, EnsembleAudit)]
        timeouts = sum(r.counts["timeout"] for r in exact_audits)
        unknown = sum(r.counts["unknown"] for r in exact_audits)
        undecided = [f"{timeouts} point(s) timed out"] if timeouts else []
        undecided += [f"{unknown} point(s) undecided"] if unknown else []
        unproved = f" ({', '.join(undecided)}: not proved robust)" if undecided else ""
        click.echo(f"{total} soundness violation(s){unproved}")
        if total:
            return 1
        return EXIT_PROPERTY_FAILED if failed else 0

    sys.exit(_guard(debug, run))


@main.command()
@click.argument("network", type=click.Path(dir_okay=False), required=False)
@click.argument("prop", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--instances",
    type=click.Path(dir_okay=False),
    default=None,
    help="run every instance of a VNN-COMP instances.csv (onnx,vnnlib,timeout lines)",
)
@click.option(
    "--results",
    type=click.Path(dir_okay=False),
    default=None,
    help="with --instances: write onnx,vnnlib,answer,time_s,detail rows here as they finish",
)
@click.option("--solver", type=SOLVER_CHOICE, default="milp", show_default=True)
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=116.0, show_default=True
)
@click.option(
    "--timeout-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="with --instances: multiply the CSV's timeouts by this",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="also write the VNN-COMP result file here (error when the run fails)",
)
@click.option(
    "--jsonl",
    "jsonl_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="with --instances: stream one JSON line per instance as it is decided (a run log)",
)
@click.option(
    "--resume",
    is_flag=True,
    help="with --jsonl: keep the instances the run log holds, run only the others",
)
@_progress_options
@click.option(
    "--correct-with",
    "correct_with",
    type=click.Path(dir_okay=False),
    multiple=True,
    help="decide the network with a self-correcting layer enforcing this VNN-LIB file's "
    "safe set (orderings; repeat for several)",
)
@click.option(
    "--top",
    type=click.Choice(["max", "min"]),
    default="max",
    show_default=True,
    help="with --correct-with: the score that is the prediction (min: costs, as ACAS Xu)",
)
@click.option("--verbose", is_flag=True, help="print the solver's detail to stderr")
@click.option("--debug", is_flag=True, help="show tracebacks")
@_cluster_options
@click.pass_context
def vnnlib(
    ctx: click.Context,
    network: str | None,
    prop: str | None,
    instances: str | None,
    results: str | None,
    solver: str,
    timeout: float,
    timeout_scale: float | None,
    out: str | None,
    jsonl_path: str | None,
    resume: bool,
    progress: bool | None,
    correct_with: tuple[str, ...],
    top: str,
    verbose: bool,
    debug: bool,
    workers: int | None = None,
    address: str | None = None,
    task_timeout: float | None = None,
) -> None:
    """Decide a VNN-COMP instance: NETWORK (.onnx) with PROP (.vnnlib, the unsafe set).

    Prints unsat (the property holds), sat and the counterexample, timeout or unknown.
    With --instances CSV, decides every instance of a benchmark's instances.csv in one
    process, each within its own timeout, printing one line per instance as it finishes
    (answer, seconds, network, property) and a total; exit 1 if an instance failed.
    With --workers or --address the instances run on Ray workers, one task each; the lines
    and the results come in CSV order.
    """
    if instances is not None:
        explicit = ctx.get_parameter_source("timeout") is click.core.ParameterSource.COMMANDLINE
        if network is not None:
            _fail("give either NETWORK PROP or --instances CSV, not both")
        if correct_with:
            _fail("--correct-with decides one instance: give NETWORK PROP, not --instances")
        if out is not None:
            _fail("--out writes one instance's result file; with --instances use --results")
        if explicit:
            _fail(
                "--timeout is for one instance; --instances reads each instance's timeout "
                "from the CSV (scale them with --timeout-scale)"
            )
        batch = VnnBatch(
            instances,
            solver,
            results,
            timeout_scale,
            jsonl_path,
            resume,
            progress,
            Cluster(workers, address, task_timeout),
        )
        sys.exit(_guard(debug, lambda: _vnnlib_batch(batch, verbose)))
    if network is None:
        _fail("give NETWORK PROP (one instance) or --instances CSV (a benchmark's instances)")
    if prop is None:
        _fail(f"PROP is missing: give the VNN-LIB file to decide on {network}")
    if results is not None or timeout_scale is not None or jsonl_path is not None or resume:
        _fail("--results, --timeout-scale, --jsonl and --resume go with --instances CSV")
    if workers is not None or address is not None or task_timeout is not None:
        _fail("--workers, --address and --task-timeout go with --instances CSV")

    def run() -> None:
        from verispec.api import solve_vnnlib

        try:
            answer = solve_vnnlib(
                network, prop, solver, timeout, correct_with=correct_with, top=top
            )
        except Exception:
            if out:
                _write_error_result(out)
            raise
        text = answer.text()
        click.echo(text, nl=False)
        if verbose:
            click.echo(f"{answer.time_s:.2f} s: {answer.detail}", err=True)
        if out:
            Path(out).write_text(text)

    _guard(debug, run)


def _write_error_result(out: str) -> None:
    """Write ``error`` as the VNN-COMP result file ``out`` (a run that failed); an unwritable
    path is left to the failure already being reported."""
    import contextlib

    with contextlib.suppress(OSError):
        Path(out).write_text("error\n")


def vnnlib_line(result: Any) -> str:
    """One instance's stdout line: answer, seconds, network and property as the CSV names
    them."""
    return f"{result.answer:<7} {result.time_s:8.2f} s  {result.instance.name}"


@attrs.frozen
class VnnBatch:
    """What ``vnnlib --instances`` was asked: the CSV, the solver, the output files, the
    timeout scale, resuming, the progress mode."""

    csv_path: str
    solver: str
    results: str | None
    scale: float | None
    jsonl_path: str | None
    resume: bool
    progress: bool | None
    cluster: Cluster


def _vnnlib_batch(batch: VnnBatch, verbose: bool) -> int:
    """``vnnlib --instances``: the run's lines on stdout, the exit status (1 if an instance
    answered error)."""
    import time

    from tqdm import tqdm

    from verispec.executor import is_task_failure
    from verispec.vnnbatch import read_instances, run_instances, summary

    _out_paths(results=batch.results, jsonl=batch.jsonl_path)
    scale = 1.0 if batch.scale is None else batch.scale
    total = len(read_instances(batch.csv_path, scale))
    options = {"solver": batch.solver, "timeout_scale": scale}
    log, state = _open_log(batch.jsonl_path, batch.resume, "vnnlib", Path(batch.csv_path), options)
    start = time.perf_counter()
    try:
        with (
            _executor(batch.cluster, None) as executor,
            _progress_bar(total, "instances", batch.progress, "inst") as tick,
        ):

            def show(result: Any) -> None:
                with tqdm.external_write_mode(file=sys.stdout):
                    click.echo(vnnlib_line(result))
                    if verbose and result.detail:
                        click.echo(f"  {result.detail}", err=True)
                tick(1)

            def record(index: int, result: Any) -> None:
                if log is not None:
                    lost = is_task_failure(result.detail)
                    log.point("instances", index, result.record(), failed=lost)

            done = run_instances(
                batch.csv_path,
                batch.solver,
                batch.results,
                show,
                scale,
                done=state.done("instances"),
                on_decided=record,
                executor=executor,
            )
    finally:
        if log is not None:
            log.close()
    prior_s = sum(float(r["time_s"]) for r in state.done("instances").values())
    click.echo(summary(done, time.perf_counter() - start + prior_s))
    return 1 if any(r.answer == "error" for r in done) else 0


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--debug", is_flag=True, help="show tracebacks")
def info(model: str, debug: bool) -> None:
    """Print MODEL's layers, each layer's proven l2 Lipschitz bound, and the network's K."""

    def run() -> None:
        import numpy as np

        from verispec.engines.lipschitz import network_lipschitz
        from verispec.modelfile import load_model, load_network
        from verispec.regions import Norm

        meta: dict[str, Any] = {}
        if str(model).lower().endswith(".onnx"):
            network = load_network(model)
        else:
            network, meta = load_model(model)
        l2 = network_lipschitz(network, Norm.L2)
        linf = network_lipschitz(network, Norm.LINF)
        click.echo(f"{model}: input {network.input_shape}, {network.num_classes} classes")
        for line, bound in zip(network.describe(), linf.layers, strict=True):
            extra = "" if bound.linf_to_l2 is None else f"  linf->l2 <= {bound.linf_to_l2:.4g}"
            click.echo(f"{line:<48} l2 Lipschitz <= {bound.l2:.6g}{extra}")
        click.echo(f"K (l2, layers before the last dense layer): {l2.body:.6g}")
        click.echo(f"K (linf -> l2, same layers):               {linf.body:.6g}")
        if l2.head is not None:
            pair = l2.pairwise()
            off = pair[~np.eye(pair.shape[0], dtype=bool)]
            click.echo(f"K_ij (l2) range: {off.min():.6g} .. {off.max():.6g}")
        if meta:
            click.echo("metadata: " + json.dumps(meta, sort_keys=True))

    _guard(debug, run)


def _parse_groups(text: str | None) -> list[list[int]] | None:
    """ "1,7;3,5,8,9" -> [[1, 7], [3, 5, 8, 9]]."""
    if text is None:
        return None
    try:
        return [[int(c) for c in part.split(",")] for part in text.split(";") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"groups look like '1,7;3,5,8', got {text!r}") from None


@main.command()
@click.option(
    "--data",
    "source",
    default="sklearn:digits",
    show_default=True,
    help="data source, as in spec files (train split to fit, test split to evaluate)",
)
@click.option(
    "--arch",
    default="minmax-mlp",
    show_default=True,
    help="minmax-mlp | 2c2f | 4c3f | 6c2f | liresnet",
)
@click.option("--width", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--depth", type=click.IntRange(min=0), default=2, show_default=True)
@click.option(
    "--cholesky-head", is_flag=True, help="liresnet: add a Cholesky-orthogonal dense layer"
)
@click.option(
    "--loss",
    type=click.Choice(["gloro", "trades", "emma", "ce"]),
    default="gloro",
    show_default=True,
)
@click.option(
    "--eps",
    type=click.FloatRange(min=0),
    default=0.3,
    show_default=True,
    help="l2 radius to certify (VRA is reported at it)",
)
@click.option(
    "--train-eps",
    type=click.FloatRange(min=0),
    default=None,
    help="l2 radius the loss uses (default: --eps; a little larger often helps)",
)
@click.option("--norm", type=click.Choice(["l2"]), default="l2", show_default=True)
@click.option(
    "--eps-ramp",
    type=click.Choice(["linear", "log", "cosine", "constant"]),
    default="linear",
    show_default=True,
)
@click.option(
    "--eps-start",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="warm-up starts at this fraction of eps",
)
@click.option(
    "--eps-warmup",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="fraction of training to reach the full eps",
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--lr-warmup", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--lr-final",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="final learning rate as a fraction of --lr (cosine decay)",
)
@click.option(
    "--trades-lambda",
    type=(float, float),
    default=(1.0, 1.0),
    show_default=True,
    help="TRADES weight: start and end of a linear schedule",
)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="relaxed top-k GloRo loss")
@click.option("--groups", default=None, help="affinity GloRo loss, e.g. '1,7;3,5,8,9'")
@click.option(
    "--noise",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Gaussian noise sigma added to inputs (base classifiers for smoothing)",
)
@click.option(
    "--power-iterations",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="power iterations per step for the training-time K estimate (5 for deep convnets)",
)
@click.option(
    "--unit-init",
    is_flag=True,
    help="rescale every body layer to an estimated operator norm of 1 before training",
)
@click.option(
    "--shift",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="augment: move each training image by up to N pixels (helps with few images)",
)
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option(
    "--eval-limit",
    type=click.IntRange(min=1),
    default=None,
    help="evaluate VRA on the first N test points each epoch",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=None,
    help="train N members that differ only in seed (--seed, --seed + 1, ...): OUT_seedK.pt "
    "each, and OUT.toml, a selective ensemble spec naming them",
)
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    required=True,
    help="model file to write (a JSON training log is written beside it)",
)
@_progress_options
@click.option("--debug", is_flag=True, help="show tracebacks")
def train(**opts: Any) -> None:
    """Train a certifiably robust model and save it with its sound Lipschitz constant."""

    def run() -> None:
        import attrs

        from verispec.data import Split, load_data
        from verispec.options import resolve_device
        from verispec.regions import Norm
        from verispec.specfile import ensemble_spec_text
        from verispec.train import (
            Arch,
            ArchConfig,
            EpsSchedule,
            LambdaSchedule,
            LossKind,
            LrSchedule,
            Ramp,
            TrainConfig,
        )

        resolve_device(opts["device"])
        cfg = TrainConfig(
            arch=ArchConfig(
                Arch.parse(opts["arch"]), opts["width"], opts["depth"], opts["cholesky_head"]
            ),
            loss=LossKind(opts["loss"]),
            eps=EpsSchedule(
                opts["eps"] if opts["train_eps"] is None else opts["train_eps"],
                Ramp(opts["eps_ramp"]),
                opts["eps_start"],
                opts["eps_warmup"],
            ),
            lr=LrSchedule(opts["lr"], opts["lr_warmup"], opts["lr_final"]),
            trades_lambda=LambdaSchedule(*opts["trades_lambda"]),
            epochs=opts["epochs"],
            batch_size=opts["batch_size"],
            seed=opts["seed"],
            device=opts["device"],
            norm=Norm.parse(opts["norm"]),
            top_k=opts["top_k"],
            groups=_parse_groups(opts["groups"]),
            noise=opts["noise"],
            power_iterations=opts["power_iterations"],
            unit_init=opts["unit_init"],
            shift=opts["shift"],
            eval_limit=opts["eval_limit"],
            eval_eps=opts["eps"],
        )
        train_data = load_data(opts["source"], Split.TRAIN)
        test_data = load_data(opts["source"], Split.TEST)
        click.echo(
            f"training {opts['arch']} on {train_data.name} ({len(train_data)} points), "
            f"evaluating on {test_data.name} ({len(test_data)} points)"
        )
        out = Path(opts["out_path"])
        if opts["seeds"] is None:
            fit(cfg, out, train_data, test_data)
            return
        seeds = [opts["seed"] + k for k in range(opts["seeds"])]
        paths = [out.with_name(f"{out.stem}_seed{s}{out.suffix or '.pt'}") for s in seeds]
        for seed, path in zip(seeds, paths, strict=True):
            click.echo(f"member seed {seed}:")
            fit(attrs.evolve(cfg, seed=seed), path, train_data, test_data)
        spec_path = out.with_suffix(".toml")
        spec_path.write_text(
            ensemble_spec_text(
                "selective",
                [p.name for p in paths],
                opts["source"],
                opts["eps"],
                f"{len(paths)} members trained by verispec train --seeds {len(paths)} "
                f"(seeds {seeds[0]} to {seeds[-1]})",
            )
        )
        click.echo(f"wrote {spec_path}: a selective ensemble of {len(paths)} members")

    def fit(cfg: Any, out: Path, train_data: Any, test_data: Any) -> None:
        """Train one model as ``cfg`` says and write it, with its log, to ``out``."""
        import attrs

        from verispec.modelfile import save_model
        from verispec.network import Network
        from verispec.train import train as run_training

        click.echo(
            f"{'epoch':>5} {'loss':>8} {'eps':>6} {'clean':>6} {'VRA':>6} {'K est':>9} "
            f"{'K sound':>9} {'s':>6}"
        )

        with _progress_bar(opts["epochs"], "training", opts["progress"], "epoch") as tick:

            def show(e: Any) -> None:
                from tqdm import tqdm

                with tqdm.external_write_mode(file=sys.stdout):
                    click.echo(
                        f"{e.epoch:>5} {e.loss:>8.4f} {e.eps:>6.3f} {e.clean_accuracy:>6.3f} "
                        f"{e.vra:>6.3f} {e.k_estimate:>9.4g} {e.k_sound:>9.4g} "
                        f"{e.seconds:>6.1f}"
                    )
                tick(1)

            model, log = run_training(cfg, train_data, test_data, on_epoch=show)
        network = Network.from_torch(model.cpu(), tuple(train_data.x.shape[1:]))
        final = log[-1]
        meta = {
            "training": cfg.to_dict(),
            "data": opts["source"],
            "sound_k_l2": final.k_sound,
            "clean_accuracy": final.clean_accuracy,
            "vra": final.vra,
            "eps": opts["eps"],
        }
        save_model(network, out, meta)
        log_path = out.with_suffix(".log.json")
        log_path.write_text(
            json.dumps(
                {"config": cfg.to_dict(), "epochs": [attrs.asdict(e) for e in log]}, indent=1
            )
        )
        click.echo(
            f"wrote {out} and {log_path}: clean {final.clean_accuracy:.3f}, "
            f"VRA {final.vra:.3f} at l2 eps {opts['eps']:g} (sound K {final.k_sound:.4g})"
        )

    _guard(opts["debug"], run)


if __name__ == "__main__":
    main()
