"""VNN-COMP batch runs: instances CSVs, per-instance timeouts, the network cache, results CSVs
written as the run goes, and ``verispec vnnlib --instances`` (stdout carries only results)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from verispec import vnnbatch
from verispec.cli import main
from verispec.errors import SpecFileError
from verispec.results import CheckResult, Verdict
from verispec.vnnbatch import (
    RESULT_COLUMNS,
    InstanceResult,
    NetworkCache,
    read_instances,
    run_instances,
    solve_instance,
)

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "vnncomp2021"
needs_bench = pytest.mark.skipif(
    not (BENCH / "test").is_dir(),
    reason=f"the VNN-COMP 2021 benchmarks are not present (expected {BENCH / 'test'})",
)

LINE = re.compile(r"^(sat|unsat|timeout|unknown|error) +\d+\.\d\d s  \S+ \S+$")
SUMMARY = re.compile(
    r"^total: \d+ instances, \d+ solved \(.*\)(, \d+ past their time limit,)? in \d+\.\d\d s$"
)

PROP = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 {lo0}))
(assert (<= X_0 {hi0}))
(assert (>= X_1 0))
(assert (<= X_1 0.4))
(assert (<= Y_0 Y_1))
"""


def _identity_onnx(path: Path) -> Path:
    """A 2-in 2-out ONNX network computing y = x (one Gemm)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[
            numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"),
            numpy_helper.from_array(np.zeros(2, dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A benchmark folder: net.onnx (y = x), safe.vnnlib (unsat: x0 > x1 on the box) and
    unsafe.vnnlib (sat), and instances.csv listing safe, unsafe, a missing network, safe."""
    _identity_onnx(tmp_path / "net.onnx")
    (tmp_path / "safe.vnnlib").write_text(PROP.format(lo0=0.6, hi0=1))
    (tmp_path / "unsafe.vnnlib").write_text(PROP.format(lo0=0, hi0=1))
    (tmp_path / "instances.csv").write_text(
        "net.onnx,safe.vnnlib,30\n"
        "net.onnx,unsafe.vnnlib,30\n"
        "\n"
        "missing.onnx,safe.vnnlib,30\n"
        "net.onnx,safe.vnnlib,30\n"
    )
    return tmp_path


def test_read_instances_resolves_paths_and_scales(folder: Path) -> None:
    got = read_instances(folder / "instances.csv", timeout_scale=0.5)
    assert [(i.onnx, i.vnnlib, i.timeout, i.line) for i in got] == [
        ("net.onnx", "safe.vnnlib", 15.0, 1),
        ("net.onnx", "unsafe.vnnlib", 15.0, 2),
        ("missing.onnx", "safe.vnnlib", 15.0, 4),
        ("net.onnx", "safe.vnnlib", 15.0, 5),
    ]
    assert got[0].onnx_path == folder / "net.onnx" and got[1].vnnlib_path.is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.onnx,b.vnnlib\n", "line 1: expected onnx,vnnlib,timeout"),
        ("a.onnx,b.vnnlib,60\na.onnx,b.vnnlib,soon\n", "line 2: the timeout 'soon'"),
        ("a.onnx,b.vnnlib,0\n", "line 1: the timeout must be positive"),
        ("a.onnx,b.vnnlib,inf\n", "line 1: the timeout must be positive"),
        (",b.vnnlib,60\n", "line 1: an empty network"),
        ("\n\n", "lists no instances"),
    ],
)
def test_bad_instances_csv_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SpecFileError, match=re.escape(message)) as err:
        read_instances(path)
    assert str(path) in str(err.value)


def test_unreadable_csv_and_bad_scale(tmp_path: Path) -> None:
    with pytest.raises(SpecFileError, match=r"cannot read instances file .*none\.csv"):
        read_instances(tmp_path / "none.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecFileError, match=r"bin\.csv"):
        read_instances(tmp_path / "bin.csv")
    with pytest.raises(SpecFileError, match="timeout scale"):
        read_instances(tmp_path / "none.csv", timeout_scale=0.0)


def test_run_instances_answers_streams_and_writes_csv(folder: Path) -> None:
    seen: list[InstanceResult] = []
    results = run_instances(folder / "instances.csv", "milp", folder / "out.csv", seen.append)
    assert [r.answer for r in results] == ["unsat", "sat", "error", "unsat"]
    assert seen == results
    assert "missing.onnx" in results[2].detail and results[2].text() == "error\n"
    assert results[1].text().startswith("sat\n((X_0 ")
    rows = list(csv.reader((folder / "out.csv").read_text().splitlines()))
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [r[:3] for r in rows[1:]] == [
        ["net.onnx", "safe.vnnlib", "unsat"],
        ["net.onnx", "unsafe.vnnlib", "sat"],
        ["missing.onnx", "safe.vnnlib", "error"],
        ["net.onnx", "safe.vnnlib", "unsat"],
    ]
    assert all(float(r[3]) >= 0 for r in rows[1:])


def test_rows_already_written_survive_a_run_that_dies(folder: Path) -> None:
    def die(result: InstanceResult) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_instances(folder / "instances.csv", "milp", folder / "out.csv", die)
    rows = (folder / "out.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0] == ",".join(RESULT_COLUMNS)
    assert rows[1].startswith("net.onnx,safe.vnnlib,unsat,")


def test_unwritable_results_and_unknown_solver_fail_before_the_run(folder: Path) -> None:
    calls: list[InstanceResult] = []
    with pytest.raises(SpecFileError, match="cannot write results file"):
        run_instances(folder / "instances.csv", "milp", folder / "no" / "out.csv", calls.append)
    from verispec.errors import VerispecError

    with pytest.raises(VerispecError, match="nosuch"):
        run_instances(folder / "instances.csv", "nosuch", None, calls.append)
    assert calls == []


def test_networks_are_loaded_once_per_file_version(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import verispec.onnx

    loads: list[Path] = []
    real = verispec.onnx.load_onnx

    def counting(path):
        loads.append(Path(path))
        return real(path)

    monkeypatch.setattr(verispec.onnx, "load_onnx", counting)
    cache = NetworkCache()
    first = cache.load(folder / "net.onnx")
    assert cache.load(folder / "net.onnx") is first and len(loads) == 1
    time.sleep(0.01)
    _identity_onnx(folder / "net.onnx")  # rewritten: a new modification time
    assert cache.load(folder / "net.onnx") is not first and len(loads) == 2
    run_instances(folder / "instances.csv")
    assert [p.name for p in loads[2:]] == ["net.onnx", "missing.onnx"], loads


class _GivesUp:
    """A solver that answers TIMEOUT at once (as if its own limit were shorter)."""

    def __init__(self, config: object) -> None:
        pass

    def solve(self, network: object, prop: object, timeout: float | None = None) -> CheckResult:
        return CheckResult(Verdict.TIMEOUT, "test", detail="gave up")


def test_timeout_is_never_answered_before_the_time_has_passed(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import verispec.solvers.base

    monkeypatch.setattr(verispec.solvers.base, "solver_class", lambda name: _GivesUp)
    (inst,) = read_instances(folder / "instances.csv")[:1]
    res = solve_instance(inst)
    assert res.answer == "unknown" and "gave up" in res.detail and res.time_s < inst.timeout


class _Slow:
    """A solver that proves every box after 0.4 s, whatever its time limit."""

    def __init__(self, config: object) -> None:
        pass

    def solve(self, network: object, prop: object, timeout: float | None = None) -> CheckResult:
        time.sleep(0.4)
        return CheckResult(Verdict.CERTIFIED, "test")


def test_an_answer_past_the_time_limit_is_marked_late(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import verispec.solvers.base

    monkeypatch.setattr(verispec.solvers.base, "solver_class", lambda name: _Slow)
    (folder / "short.csv").write_text("net.onnx,safe.vnnlib,0.2\nnet.onnx,safe.vnnlib,30\n")
    late, fine = run_instances(folder / "short.csv")
    assert late.answer == "unsat" and late.late and "past the 0.2 s limit" in late.detail
    assert fine.answer == "unsat" and not fine.late and "past" not in fine.detail
    line = vnnbatch.summary([late, fine])
    assert SUMMARY.match(line) and "2 solved" in line and ", 1 past their time limit," in line
    assert "past" not in vnnbatch.summary([fine])
    stopped = InstanceResult(late.instance, "timeout", 0.25)  # a timeout comes after the limit
    assert not stopped.late and "past" not in vnnbatch.summary([stopped, fine])


def test_time_spent_parsing_counts_against_the_instance(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "short.csv").write_text("net.onnx,safe.vnnlib,0.3\nnet.onnx,safe.vnnlib,30\n")
    real = vnnbatch.parse_vnnlib_within

    def slow(path, network, deadline):
        time.sleep(0.5)
        return real(path, network, deadline)

    monkeypatch.setattr(vnnbatch, "parse_vnnlib_within", slow)
    short, long = run_instances(folder / "short.csv")
    assert short.answer == "timeout" and short.time_s >= 0.3
    assert long.answer == "unsat"


def test_a_parse_stopped_by_its_deadline_answers_timeout(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parser that gives up at the deadline (raising, as ``parse_vnnlib(deadline=...)``
    does) gives ``timeout`` in both modes; the same error before the deadline is an error."""
    import verispec.api
    from verispec.api import solve_vnnlib

    def stopped(path, network, deadline):
        time.sleep(max(0.0, deadline - time.perf_counter()))
        raise SpecFileError(f"{path}: reading took longer than its time limit")

    monkeypatch.setattr(verispec.api, "parse_vnnlib_within", stopped)
    monkeypatch.setattr(vnnbatch, "parse_vnnlib_within", stopped)
    answer = solve_vnnlib(folder / "net.onnx", folder / "safe.vnnlib", timeout=0.2)
    assert answer.answer == "timeout" and answer.time_s >= 0.2 and "time limit" in answer.detail
    (folder / "short.csv").write_text("net.onnx,safe.vnnlib,0.2\n")
    (res,) = run_instances(folder / "short.csv")
    assert res.answer == "timeout" and res.time_s >= 0.2

    def bad(path, network, deadline):
        raise SpecFileError(f"{path}: line 3: nonsense")

    monkeypatch.setattr(verispec.api, "parse_vnnlib_within", bad)
    monkeypatch.setattr(vnnbatch, "parse_vnnlib_within", bad)
    with pytest.raises(SpecFileError, match="nonsense"):
        solve_vnnlib(folder / "net.onnx", folder / "safe.vnnlib", timeout=30)
    (res,) = run_instances(folder / "short.csv")
    assert res.answer == "error" and "line 3: nonsense" in res.detail


def test_a_long_parse_is_stopped_at_the_instance_deadline(folder: Path) -> None:
    """The real parser, given the instance's deadline, stops a file that takes long to read:
    ``timeout`` after the limit, with the parse stopped part-way (the line it reached is in
    the detail; a machine's speed changes which line, not that it stops), in both modes."""
    from verispec.api import solve_vnnlib

    lines = 100_000
    big = folder / "big.vnnlib"
    big.write_text(PROP.format(lo0=0.6, hi0=1) + "(assert (<= X_0 1))\n" * lines)

    def stopped_at(detail: str) -> int:
        match = re.search(r"at line (\d+)", detail)
        assert match is not None, detail
        return int(match.group(1))

    answer = solve_vnnlib(folder / "net.onnx", big, timeout=0.3)
    assert answer.answer == "timeout" and answer.time_s >= 0.3, answer
    assert stopped_at(answer.detail) < lines
    (folder / "big.csv").write_text("net.onnx,big.vnnlib,0.3\nnet.onnx,safe.vnnlib,30\n")
    stopped, fine = run_instances(folder / "big.csv")
    assert stopped.answer == "timeout" and stopped.time_s >= 0.3, stopped
    assert stopped_at(stopped.detail) < lines
    assert "time limit" in stopped.detail and fine.answer == "unsat"


def test_cli_flag_combinations_are_errors_naming_the_flags(folder: Path) -> None:
    csv_path = str(folder / "instances.csv")
    net, prop = str(folder / "net.onnx"), str(folder / "safe.vnnlib")
    cases = [
        (["vnnlib"], "--instances"),
        (["vnnlib", net, prop, "--instances", csv_path], "not both"),
        (["vnnlib", net], "PROP is missing"),
        (["vnnlib", "--instances", csv_path, "--out", str(folder / "r.txt")], "--results"),
        (["vnnlib", "--instances", csv_path, "--timeout", "5"], "--timeout-scale"),
        (["vnnlib", net, prop, "--results", str(folder / "r.csv")], "--instances"),
        (["vnnlib", net, prop, "--timeout-scale", "2"], "--instances"),
        (["vnnlib", "--instances", str(folder / "none.csv")], "none.csv"),
    ]
    for args, message in cases:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output, (args, res.output)


def test_cli_batch_prints_lines_and_summary_and_exit_1_on_an_error(folder: Path) -> None:
    res = CliRunner().invoke(
        main,
        [
            "vnnlib",
            "--instances",
            str(folder / "instances.csv"),
            "--results",
            str(folder / "r.csv"),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 1
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["unsat", "sat", "error", "unsat"]
    assert all(LINE.match(line) for line in lines[:-1]), lines
    assert SUMMARY.match(lines[-1]) and "4 instances, 3 solved" in lines[-1]


def test_out_gets_error_when_the_single_run_fails(folder: Path) -> None:
    out = folder / "result.txt"
    for onnx, prop in [("missing.onnx", "safe.vnnlib"), ("net.onnx", "missing.vnnlib")]:
        out.write_text("stale\n")
        res = CliRunner().invoke(
            main, ["vnnlib", str(folder / onnx), str(folder / prop), "--out", str(out)]
        )
        assert res.exit_code == 2 and "missing" in res.output
        assert out.read_text() == "error\n"
    res = CliRunner().invoke(
        main,
        ["vnnlib", str(folder / "net.onnx"), str(folder / "safe.vnnlib"), "--out", str(out)],
    )
    assert res.exit_code == 0 and out.read_text() == "unsat\n" == res.stdout


@needs_bench
def test_vnncomp_test_benchmark_in_a_real_process(tmp_path: Path) -> None:
    """The VNN-COMP 2021 ``test`` instances in a real process: every stdout line is a result
    line or the summary (the HiGHS banner, printed from C++ on fd 1, is not there); the
    results CSV has a row per instance; test_sat is sat and test_unsat unsat."""
    out = tmp_path / "results.csv"
    csv_path = BENCH / "test" / "test_instances.csv"
    args = ["vnnlib", "--instances", str(csv_path), "--results", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", "from verispec.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    expected = read_instances(csv_path)
    assert len(lines) == len(expected) + 1, done.stdout
    assert all(LINE.match(line) for line in lines[:-1]), done.stdout
    assert SUMMARY.match(lines[-1]), done.stdout
    rows = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(out.read_text().splitlines())}
    assert len(rows) == len(expected)
    assert rows[("test_sat.onnx", "test_prop.vnnlib")]["answer"] == "sat"
    assert rows[("test_unsat.onnx", "test_prop.vnnlib")]["answer"] == "unsat"
    assert all(r["answer"] in ("sat", "unsat") for r in rows.values()), rows


def _batch(folder: Path, *extra: str) -> Result:
    csv_path = str(folder / "instances.csv")
    return CliRunner().invoke(main, ["vnnlib", "--instances", csv_path, *extra])


def test_a_killed_batch_resumes_from_its_run_log_to_the_same_results(folder: Path) -> None:
    whole = _batch(folder, "--results", str(folder / "whole.csv"))
    log = folder / "run.jsonl"
    first = _batch(folder, "--jsonl", str(log))
    lines = log.read_text().splitlines()
    assert len(lines) == 5 and '"command":"vnnlib"' in lines[0]
    # kill it after two instances, mid-way through the third line
    log.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    decided: list[int] = []
    original = vnnbatch.solve_instance

    def counting(instance: vnnbatch.Instance, *args: Any, **kwargs: Any) -> InstanceResult:
        decided.append(instance.line)
        return original(instance, *args, **kwargs)

    vnnbatch.solve_instance = counting
    try:
        again = _batch(folder, "--jsonl", str(log), "--resume", "--results", str(folder / "r.csv"))
    finally:
        vnnbatch.solve_instance = original
    assert decided == [4, 5]  # the CSV lines of the two instances the log lacked
    answers = [line.split()[0] for line in again.stdout.splitlines()[:-1]]
    assert answers == [line.split()[0] for line in whole.stdout.splitlines()[:-1]]
    assert again.exit_code == first.exit_code == whole.exit_code == 1
    assert len(log.read_text().splitlines()) == 5
    got = [r[:3] for r in csv.reader((folder / "r.csv").read_text().splitlines())]
    want = [r[:3] for r in csv.reader((folder / "whole.csv").read_text().splitlines())]
    assert got == want


def test_a_run_log_of_other_options_or_another_csv_is_refused(folder: Path) -> None:
    log = folder / "run.jsonl"
    _batch(folder, "--jsonl", str(log))
    res = _batch(folder, "--jsonl", str(log), "--resume", "--solver", "smt")
    assert res.exit_code == 2 and "another run" in res.output and "Traceback" not in res.output
    (folder / "instances.csv").write_text("net.onnx,unsafe.vnnlib,30\n" * 4)
    res = _batch(folder, "--jsonl", str(log), "--resume")
    assert res.exit_code == 2 and "the CSV changed" in res.output, res.output


def test_batch_only_flags_need_instances_and_resume_needs_jsonl(folder: Path) -> None:
    net, prop = str(folder / "net.onnx"), str(folder / "safe.vnnlib")
    res = CliRunner().invoke(main, ["vnnlib", net, prop, "--jsonl", str(folder / "l.jsonl")])
    assert res.exit_code == 2 and "--instances" in res.output
    res = _batch(folder, "--resume")
    assert res.exit_code == 2 and "--jsonl" in res.output
    res = _batch(folder, "--jsonl", str(folder / "no" / "l.jsonl"))
    assert res.exit_code == 2 and "--jsonl" in res.output and "does not exist" in res.output


def test_the_batch_progress_bar_is_on_stderr_only(folder: Path) -> None:
    res = _batch(folder, "--progress")
    assert "instances" in res.stderr and "inst" in res.stderr
    assert all(LINE.match(x) or SUMMARY.match(x) for x in res.stdout.splitlines()), res.stdout
