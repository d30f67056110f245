"""The ``verispec`` command line: parse, build typed objects, call the library, print."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

EXIT_BAD_INPUT = 2
PROGRESS_MIN_POINTS = 2000


def _fail(message: str) -> None:
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


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def report_table(report: Any) -> str:
    """The human summary of one property's report."""
    counts = report.counts
    if all(r.label is None for r in report.results) and report.points == 1:
        (result,) = report.results
        rows = [
            ("spec", report.spec),
            ("engine", report.engine),
            ("verdict", result.verdict.value.upper()),
            ("time", f"{result.time_s:.3f} s"),
        ]
        if result.detail:
            rows.append(("detail", result.detail))
        return f"{report.property_name}\n{_table(rows)}"
    rows = [
        ("spec", report.spec),
        ("engine", report.engine),
        ("points", str(report.points)),
        ("clean accuracy", _fmt(report.clean_accuracy)),
        ("VRA", _fmt(report.vra)),
        ("certified", str(counts["certified"])),
        ("falsified", str(counts["falsified"])),
        ("unknown", str(counts["unknown"] + counts["abstain"] + counts["timeout"])),
        ("median radius", _fmt(report.median_radius)),
        ("points/s", _fmt(report.points_per_second, 0)),
    ]
    for r, acc in report.certified_accuracy():
        rows.append((f"cert. acc @ r={r:g}", _fmt(acc)))
    return f"{report.property_name}\n{_table(rows)}"


@click.group()
def main() -> None:
    """verispec: certify properties of trained neural networks."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--engine",
    "engine_name",
    default=None,
    help="engine name (default: the file's, else lipschitz)",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="check only the first N points"
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="write the reports as JSON",
)
@click.option("--device", default=None, help="torch device, e.g. cpu or cuda")
@click.option("--debug", is_flag=True, help="show tracebacks")
def check(
    spec: str,
    engine_name: str | None,
    limit: int | None,
    json_path: str | None,
    device: str | None,
    debug: bool,
) -> None:
    """Check every property of the spec file SPEC and print a table per property."""

    def run() -> None:
        import attrs

        from verispec.api import check as vcheck
        from verispec.engines.base import engine_class
        from verispec.specfile import load_specfile

        sf = load_specfile(spec, limit=limit)
        name = engine_name or sf.engine_name
        config = sf.engine_config if name == sf.engine_name else engine_class(name).Config()
        if device is not None:
            config = attrs.evolve(config, device=device)
        engine = engine_class(name)(config)
        reports = []
        for prop in sf.properties:
            total = 0 if sf.data is None else len(sf.data.take(sf.limit))
            show = sys.stderr.isatty() and total >= PROGRESS_MIN_POINTS
            with click.progressbar(
                length=total, label=prop.name, file=sys.stderr, show_pos=True, hidden=not show
            ) as bar:
                report = vcheck(
                    sf.network,
                    prop.spec,
                    sf.data,
                    engine,
                    limit=sf.limit,
                    name=prop.name,
                    radii=sf.radii,
                    progress=bar.update,
                )
            reports.append(report)
            click.echo(report_table(report) + "\n")
        if json_path:
            payload = {"spec_file": str(sf.path), "reports": [r.to_dict() for r in reports]}
            Path(json_path).write_text(json.dumps(payload, indent=1))
            click.echo(f"wrote {json_path}")

    _guard(debug, run)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--debug", is_flag=True, help="show tracebacks")
def info(model: str, debug: bool) -> None:
    """Print MODEL's layers, each layer's proven l2 Lipschitz bound, and the network's K."""

    def run() -> None:
        import numpy as np

        from verispec.engines.lipschitz import network_lipschitz
        from verispec.modelfile import load_model
        from verispec.regions import Norm

        network, meta = load_model(model)
        l2 = network_lipschitz(network, Norm.L2)
        linf = network_lipschitz(network, Norm.LINF)
        click.echo(f"{model}: input {network.input_shape}, {network.num_classes} classes")
        for line, bound in zip(network.describe(), l2.layers, strict=True):
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


if __name__ == "__main__":
    main()
