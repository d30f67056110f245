"""Certified-accuracy curves: certified accuracy against radius, one line per report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from verispec.errors import ExtraNotInstalledError, VerispecError
from verispec.results import Report

CURVE_POINTS = 200
"""Radii sampled along each curve (between 0 and the largest certified radius)."""


def plot_certified_accuracy(reports: Sequence[Report], path: str | Path) -> None:
    """Draw the curves of the reports that carry radii into a PNG at ``path``."""
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
    fig, ax = plt.subplots(figsize=(6, 4))
    for report in with_radii:
        xy = np.array(report.curve(CURVE_POINTS))
        ax.plot(xy[:, 0], xy[:, 1], label=f"{report.property_name} ({report.engine})")
    ax.set_xlabel("radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
