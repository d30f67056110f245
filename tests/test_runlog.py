import json
import os

import numpy as np
import pytest

import verispec as vs
from verispec.api import check
from verispec.engines.lipschitz import LipschitzEngine
from verispec.runlog import (
    OutputPathError,
    PointsError,
    RunLog,
    RunLogError,
    atomic_write_text,
    csv_text,
    ensure_writable,
    parse_points,
    read_runlog,
)


def test_parse_points_takes_indices_and_ranges():
    assert parse_points("0:3,7", 10) == (0, 1, 2, 7)
    assert parse_points("8:, 1, 1", 10) == (1, 8, 9)
    assert parse_points(":2", 10) == (0, 1)
    assert parse_points("9", 10) == (9,)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a", "neither an index nor a range"),
        ("1 2", "neither an index nor a range"),
        ("0:3,", "neither an index nor a range"),
        ("-1", "neither an index nor a range"),
        ("5:2", "is empty"),
        ("0:11", "point 10 is out of range: there are 10 points"),
        ("3,10", "point 10 is out of range"),
    ],
)
def test_parse_points_names_the_flag_and_the_fault(text, words):
    with pytest.raises(PointsError) as err:
        parse_points(text, 10)
    assert str(err.value).startswith(f"--points {text!r}") and words in str(err.value)


def test_a_partial_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = tmp_path / "r.jsonl"
    log = RunLog.start(path, "check", "s.toml", {"limit": 3})
    log.point("p", 0, {"v": 0})
    log.point("p", 1, {"v": 1})
    log.close()
    with path.open("a") as f:
        f.write('{"kind":"point","property":"p","ind')  # killed while writing
    state = read_runlog(path)
    assert dict(state.done("p")) == {0: {"v": 0}, 1: {"v": 1}}
    log, state = RunLog.resume(path, "check", "s.toml", {"limit": 3})
    log.point("p", 2, {"v": 2})
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("index") for r in lines] == [None, 0, 1, 2]
    assert sorted(read_runlog(path).done("p")) == [0, 1, 2]


def test_resume_refuses_another_runs_log_and_broken_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    RunLog.start(path, "check", "s.toml", {"limit": 3}).close()
    with pytest.raises(RunLogError, match="written by another run"):
        RunLog.resume(path, "check", "s.toml", {"limit": 4})
    with pytest.raises(RunLogError, match="written by another run"):
        RunLog.resume(path, "audit", "s.toml", {"limit": 3})
    path.write_text(path.read_text() + "not json\n" + '{"kind":"error"}\n')
    with pytest.raises(RunLogError, match="line 2 is not JSON"):
        read_runlog(path)
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    with pytest.raises(RunLogError, match="not a verispec run log"):
        read_runlog(other)
    log, state = RunLog.resume(tmp_path / "new.jsonl", "check", "s.toml", {})
    log.close()
    assert state.header is None and read_runlog(tmp_path / "new.jsonl").header is not None


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        atomic_write_text(path, "newer")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["r.json"]


def test_ensure_writable_names_the_flag_and_path(tmp_path):
    assert ensure_writable(tmp_path / "ok.json", "--json") == tmp_path / "ok.json"
    assert os.listdir(tmp_path) == []  # creates nothing
    cases = [
        (tmp_path / "missing" / "r.json", "does not exist"),
        (tmp_path, "is a folder"),
    ]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases.append((blocker / "r.json", "does not exist"))
    for path, words in cases:
        with pytest.raises(OutputPathError) as err:
            ensure_writable(path, "--csv")
        assert str(err.value).startswith(f"--csv {path}") and words in str(err.value)


def test_csv_text_writes_the_header_and_empty_missing_values():
    text = csv_text(["a", "b"], [{"a": 1, "b": None}, {"a": "x,y"}])
    assert text == 'a,b\n1,\n"x,y",\n'


class CountingLipschitz:
    """The Lipschitz engine in chunks of 3 points, counting the points it is handed."""

    name = "lipschitz"
    chunk_points = 3

    def __init__(self):
        self.inner = LipschitzEngine()
        self.handed = []

    def supports(self, network, spec):
        self.inner.supports(network, spec)

    def check(self, network, spec, xs, labels=None, domain=None):
        self.handed.append(len(xs))
        return self.inner.check(network, spec, xs, labels, domain)


def _untimed(results):
    return [{k: v for k, v in r.to_dict().items() if k != "time_s"} for r in results]


def _digits():
    net = vs.load_model("specs/models/digits_mlp.pt")[0]
    return net, vs.load_data("sklearn:digits", vs.Split.TEST)


def test_check_skips_done_chunks_and_streams_the_others():
    net, data = _digits()
    spec = vs.LocalRobustness(0.3, vs.Norm.L2)
    seen = []
    full = check(
        net, spec, data, CountingLipschitz(), limit=10, on_result=lambda i, r: seen.append(i)
    )
    assert seen == list(range(10)) and full.point_indices == tuple(range(10))
    done = {i: r for i, r in enumerate(full.results) if i < 7}  # chunks 0-2, 3-5 done; 6-8 half
    engine = CountingLipschitz()
    seen.clear()
    again = check(
        net, spec, data, engine, limit=10, done=done, on_result=lambda i, r: seen.append(i)
    )
    assert engine.handed == [3, 1] and seen == [7, 8, 9]
    assert _untimed(again.results) == _untimed(full.results)
    some = check(net, spec, data, CountingLipschitz(), limit=10, points=[7, 2, 2])
    assert some.point_indices == (2, 7)
    assert _untimed(some.results) == _untimed([full.results[2], full.results[7]])
    assert [row["index"] for row in some.csv_rows()] == [2, 7]
    assert [r["index"] for r in some.to_dict()["results"]] == [2, 7]
    assert vs.Report.from_dict(some.to_dict()).point_indices == (2, 7)
    with pytest.raises(vs.DataError, match="index 10 is out of range"):
        check(net, spec, data, CountingLipschitz(), limit=10, points=[10])


def test_report_indices_must_match_the_results():
    res = vs.CheckResult(vs.Verdict.UNKNOWN, "x")
    with pytest.raises(ValueError, match="2 indices for 1 results"):
        vs.Report("p", "s", "x", (res,), indices=(0, 1))
    assert np.array_equal(vs.Report("p", "s", "x", (res,)).point_indices, (0,))
