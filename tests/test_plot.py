"""Certified-accuracy plots: one panel per norm, labelled axes, eps marks."""

from __future__ import annotations

import pytest

from verispec.errors import VerispecError
from verispec.results import CheckResult, GuaranteeKind, Report, Verdict

plot = pytest.importorskip("verispec.plot")
pytest.importorskip("matplotlib")


def _report(name: str, norm: str | None, eps: float | None) -> Report:
    results = tuple(
        CheckResult(
            verdict=Verdict.CERTIFIED if r >= 0.1 else Verdict.UNKNOWN,
            predicted=1,
            label=1,
            radius=r,
            engine="lipschitz",
            guarantee=GuaranteeKind.DETERMINISTIC,
        )
        for r in (0.05, 0.2, 0.4)
    )
    return Report(name, "spec", "lipschitz", results, norm=norm, eps=eps)


def test_each_norm_gets_its_own_labelled_panel_with_eps_marks():
    reports = [_report("a", "linf", 0.1), _report("b", "l2", 0.3), _report("c", "l2", 0.5)]
    fig = plot.certified_accuracy_figure(reports)
    assert [ax.get_xlabel() for ax in fig.axes] == ["l2 radius", "l_inf radius"]
    marks = [
        sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":")
        for ax in fig.axes
    ]
    assert marks == [[0.3, 0.5], [0.1]]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [["b (lipschitz)", "c (lipschitz)"], ["a (lipschitz)"]]


def test_a_png_is_written(tmp_path):
    png = tmp_path / "curve.png"
    plot.plot_certified_accuracy([_report("a", "l2", 0.3)], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reports_without_radii_are_refused():
    bare = Report("s", "safe", "milp", (CheckResult(verdict=Verdict.CERTIFIED, engine="milp"),))
    with pytest.raises(VerispecError, match="no report has certified radii"):
        plot.plot_certified_accuracy([bare], "unused.png")


def test_norm_and_eps_survive_json():
    back = Report.from_json(_report("a", "linf", 0.1).to_json())
    assert (back.norm, back.eps) == ("linf", 0.1)


def test_an_unknown_norm_name_is_refused():
    with pytest.raises(ValueError, match=r"Report\.norm"):
        _report("a", "l1", 0.1)
