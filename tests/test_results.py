import math

import numpy as np
import pytest

from verispec.results import SCHEMA, CheckResult, GuaranteeKind, Report, Verdict


def _report() -> Report:
    results = [
        CheckResult(Verdict.CERTIFIED, "e", predicted=1, label=1, radius=0.5),
        CheckResult(Verdict.CERTIFIED, "e", predicted=2, label=1, radius=math.inf),
        CheckResult(Verdict.UNKNOWN, "e", predicted=0, label=0, radius=0.1),
        CheckResult(
            Verdict.FALSIFIED,
            "e",
            predicted=3,
            label=3,
            radius=0.0,
            counterexample=np.ones((1, 2, 2)),
            detail="pgd",
        ),
        CheckResult(
            Verdict.ABSTAIN,
            "e",
            predicted=None,
            label=2,
            guarantee=GuaranteeKind.PROBABILISTIC,
            confidence=0.999,
        ),
    ]
    return Report("p", "spec", "e", tuple(results), radii=(0.0, 0.2, 1.0), wall_time_s=2.0)


def test_metrics():
    r = _report()
    assert r.clean_accuracy == pytest.approx(3 / 4)  # the abstained point has no prediction
    assert r.vra == pytest.approx(1 / 4)  # certified and correct; a certified wrong point is not
    assert r.counts["certified"] == 2 and r.counts["abstain"] == 1
    assert r.certified_accuracy() == [(0.0, 0.75), (0.2, 0.25), (1.0, 0.0)]
    assert r.points_per_second == pytest.approx(2.5)


def test_json_round_trip():
    r = _report()
    back = Report.from_json(r.to_json())
    assert back.to_dict() == r.to_dict()
    assert back.results[1].radius == math.inf
    assert back.results[3].counterexample.shape == (1, 2, 2)
    assert r.to_dict()["schema"] == SCHEMA
    with pytest.raises(ValueError, match="schema"):
        Report.from_dict({"schema": "other"})


def test_falsified_needs_counterexample():
    with pytest.raises(ValueError):
        CheckResult(Verdict.FALSIFIED, "e")
    with pytest.raises(ValueError):
        CheckResult(Verdict.CERTIFIED, "e", counterexample=np.zeros(2))
