"""Certified-accuracy curves: certified accuracy against radius, one line per report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from verispec.errors import ExtraNotInstalledError, VerispecError
from verispec.results import Report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVE_POINTS = 200
"""Radii sampled along each curve (between 0 and the largest certified radius)."""


def plot_certified_accuracy(reports: Sequence[Report], path: str | Path) -> None:
    """Draw the curves of the reports that carry radii into a PNG at ``path``."""
    fig = certified_accuracy_figure(reports)
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)


def certified_accuracy_figure(reports: Sequence[Report]) -> Figure:
    """One panel per ball norm (l2, then l_inf), the x axis labelled with the norm, one
    curve per report with radii, and a dotted mark at each report's eps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ExtraNotInstalledError(
            "--plot needs matplotlib: pip install matplotlib (or 'verispec[plot]')"
        ) from None
    with_radii = [r for r in reports if any(x.radius is not None for x in r.results)]
    if not with_radii:
        raise VerispecError(
            "no report has certified radii to plot (exact solvers and safe-ordering "
            "properties decide without a radius)"
        )
    panels = _by_norm(with_radii)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(6 * len(panels), 4), squeeze=False, sharey=True
    )
    for ax, (norm, reports_here) in zip(axes[0], panels.items(), strict=True):
        for report in reports_here:
            xy = np.array(report.curve(CURVE_POINTS))
            (line,) = ax.plot(xy[:, 0], xy[:, 1], label=f"{report.property_name} ({report.engine})")
            if report.eps is not None:
                ax.axvline(report.eps, color=line.get_color(), linestyle=":", linewidth=1)
                ax.annotate(
                    f"eps {report.eps:g}",
                    (report.eps, 0.02),
                    color=line.get_color(),
                    fontsize=7,
                    rotation=90,
                    ha="right",
                    va="bottom",
                )
        ax.set_xlabel(AXIS_LABELS.get(norm or "", "radius"))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("certified accuracy")
    fig.tight_layout()
    return fig


AXIS_LABELS = {"l2": "l2 radius", "linf": "l_inf radius"}
"""The x-axis label of each norm's panel (a report without a norm: "radius")."""


def _by_norm(reports: Sequence[Report]) -> dict[str | None, list[Report]]:
    """The reports grouped by ball norm, l2 first, in their order within a group."""
    order = {"l2": 0, "linf": 1, None: 2}
    groups: dict[str | None, list[Report]] = {}
    for report in sorted(reports, key=lambda r: order.get(r.norm, 2)):
        groups.setdefault(report.norm, []).append(report)
    return groups
