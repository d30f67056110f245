"""Ray workers (verispec/cluster.py, verispec/executor.py): on a local Ray of 2 CPUs, ``check``
(every property of the embedded default, smoothing included) and ``vnnlib --instances`` give
the same results, in the same order and in the same run log, as one process; a worker killed
mid-run has its task retried and loses nothing; a task that keeps dying or runs past its limit
is recorded as failed for its points, and a resumed run runs them again."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.test_vnnbatch import PROP, _identity_onnx
from verispec.cli import main
from verispec.executor import LOCAL, TaskFailure, is_task_failure
from verispec.runlog import RunLog, read_runlog

ray = pytest.importorskip("ray")

from verispec.cluster import RayExecutor  # noqa: E402  (needs ray)

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "specs/digits.toml")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs, no network beyond this machine; this module's functions are
    shipped to the workers by value (the workers do not import the tests)."""
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=200 * 2**20,
        )
    except Exception as err:  # a sandbox without the sockets or processes Ray needs
        pytest.skip(f"a local Ray cannot start on this machine: {type(err).__name__}: {err}")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _points(path: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """A run log's point lines, without the seconds each took."""
    out = []
    for line in path.read_text().splitlines()[1:]:
        rec = json.loads(line)
        if rec["kind"] == "point":
            record = {k: v for k, v in rec["record"].items() if k != "time_s"}
            out.append((rec["property"], rec["index"], record))
    return out


def _run(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_check_on_two_workers_equals_one_process(local_ray, tmp_path):
    """Every property of the embedded default (lipschitz, and smoothing with its per-point
    seeds) on 30 points: the same records in the same order in the run log."""
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    _run("check", SPEC, "--limit", "30", "--jsonl", str(one))
    _run("check", SPEC, "--limit", "30", "--jsonl", str(two), "--workers", "2")
    got, want = _points(two), _points(one)
    assert len(want) >= 30 and got == want


def test_vnnlib_instances_on_two_workers_equal_one_process(local_ray, tmp_path):
    _identity_onnx(tmp_path / "net.onnx")
    (tmp_path / "safe.vnnlib").write_text(PROP.format(lo0=0.6, hi0=1))
    (tmp_path / "unsafe.vnnlib").write_text(PROP.format(lo0=0, hi0=1))
    rows = ["net.onnx,safe.vnnlib,30", "net.onnx,unsafe.vnnlib,30", "missing.onnx,safe.vnnlib,30"]
    (tmp_path / "instances.csv").write_text("\n".join(rows * 2) + "\n")
    runs = {}
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        log = tmp_path / f"{name}.jsonl"
        args = ["vnnlib", "--instances", str(tmp_path / "instances.csv"), "--jsonl", str(log)]
        _ = CliRunner().invoke(main, args + extra)  # exit 1: the missing network is an error
        runs[name] = [(p, i, r["answer"], r["detail"]) for p, i, r in _points(log)]
    assert [a for _, _, a, _ in runs["one"]] == ["unsat", "sat", "error"] * 2
    assert runs["two"] == runs["one"]


def _dies_once(marker: str, task: int) -> int:
    """Kills its worker process the first time any task runs (a marker file remembers)."""
    if not os.path.exists(marker):
        Path(marker).write_text("killed")
        os._exit(1)
    return task * task


def _kill_once(marker: str, fn: Any, task: Any) -> Any:
    """``fn(task)``, but the first call anywhere kills its worker process instead."""
    if not os.path.exists(marker):
        Path(marker).write_text("killed")
        os._exit(1)
    return fn(task)


def test_check_with_a_worker_killed_mid_run_loses_nothing(local_ray, tmp_path, monkeypatch):
    """The first chunk's worker dies inside ``check``: Ray retries the chunk, and the run log
    holds every point with the single-process records."""
    import verispec.cluster as cluster

    real = cluster.RayExecutor.map
    marker = str(tmp_path / "marker")

    def killing(self, fn, tasks):
        return real(self, lambda task: _kill_once(marker, fn, task), tasks)

    monkeypatch.setattr(cluster.RayExecutor, "map", killing)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    args = ["check", SPEC, "--limit", "20", "--engine", "crown"]
    _run(*args, "--jsonl", str(two), "--workers", "2")
    assert Path(marker).exists()
    _run(*args, "--jsonl", str(one))
    assert _points(two) == _points(one)


def _always_dies_on(bad: int, task: int) -> int:
    if task == bad:
        os._exit(1)
    return task * task


def _sleeps_on(slow: int, task: int) -> int:
    if task == slow:
        time.sleep(300)
    return task * task


def test_a_killed_worker_is_retried_and_nothing_is_lost(local_ray, tmp_path):
    marker = str(tmp_path / "marker")
    got = list(RayExecutor(2).map(lambda t: _dies_once(marker, t), list(range(6))))
    assert Path(marker).exists()  # a worker was killed
    assert got == [t * t for t in range(6)]


def test_a_task_that_keeps_dying_is_a_failure_in_its_place(local_ray):
    got = list(RayExecutor(2).map(lambda t: _always_dies_on(3, t), list(range(6))))
    assert isinstance(got[3], TaskFailure) and "died twice" in got[3].reason
    assert [g for i, g in enumerate(got) if i != 3] == [t * t for t in range(6) if t != 3]
    assert is_task_failure(got[3].detail)


def test_a_task_past_its_time_limit_is_cancelled(local_ray):
    """The limit counts from submission, a worker's start-up included: 10 s is ample for the
    quick tasks, and the 300 s one is cancelled."""
    start = time.monotonic()
    got = list(RayExecutor(2, task_timeout=10.0).map(lambda t: _sleeps_on(1, t), [0, 1, 2]))
    assert time.monotonic() - start < 120
    assert got[0] == 0 and got[2] == 4
    assert isinstance(got[1], TaskFailure) and "time limit" in got[1].reason


def test_an_exception_in_a_task_propagates_as_in_one_process(local_ray):
    def bad(task: int) -> int:
        raise ValueError(f"bad task {task}")

    with pytest.raises(ValueError, match="bad task 0"):
        list(LOCAL.map(bad, [0]))
    with pytest.raises(ValueError, match="bad task"):
        list(RayExecutor(2).map(bad, [0, 1]))


def test_check_records_a_lost_chunk_and_resume_runs_it_again(local_ray, tmp_path, monkeypatch):
    """A chunk whose task fails is UNKNOWN ("task failed") in the report and marked failed in
    the run log; --resume runs exactly those points again."""
    import verispec.cluster as cluster

    real = cluster.RayExecutor.map

    def lose_first(self, fn, tasks):
        outcomes = real(self, fn, tasks)
        for position, outcome in enumerate(outcomes):
            yield TaskFailure("a test lost it") if position == 0 else outcome

    monkeypatch.setattr(cluster.RayExecutor, "map", lose_first)
    log = tmp_path / "run.jsonl"
    args = ["check", SPEC, "--limit", "12", "--engine", "lipschitz", "--jsonl", str(log)]
    _run(*args, "--workers", "2")
    lines = [json.loads(x) for x in log.read_text().splitlines()[1:]]
    lost = [x for x in lines if x.get("failed")]
    assert lost and all(is_task_failure(x["record"]["detail"]) for x in lost)
    kept = read_runlog(log)
    assert all(not is_task_failure(r["detail"]) for p in kept.points.values() for r in p.values())
    monkeypatch.setattr(cluster.RayExecutor, "map", real)
    _run(*args, "--workers", "2", "--resume")
    again = read_runlog(log)
    fresh = tmp_path / "fresh.jsonl"
    _run("check", SPEC, "--limit", "12", "--engine", "lipschitz", "--jsonl", str(fresh))
    want = read_runlog(fresh)
    for prop, points in want.points.items():
        assert sorted(again.points[prop]) == sorted(points)
        for i, rec in points.items():
            assert again.points[prop][i]["verdict"] == rec["verdict"]


def test_a_failed_point_in_a_run_log_is_not_done(tmp_path):
    log = RunLog.start(tmp_path / "r.jsonl", "check", "s.toml", {})
    log.point("p", 0, {"verdict": "certified"})
    log.point("p", 1, {"verdict": "unknown", "detail": "task failed: x"}, failed=True)
    log.close()
    assert sorted(read_runlog(tmp_path / "r.jsonl").done("p")) == [0]


def test_without_ray_workers_name_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = CliRunner().invoke(main, ["check", SPEC, "--limit", "2", "--workers", "2"])
    assert result.exit_code == 2, result.output
    assert "pip install 'verispec[cluster]'" in result.output


def test_cluster_flags_need_workers_or_instances(tmp_path):
    got = CliRunner().invoke(main, ["check", SPEC, "--limit", "2", "--task-timeout", "5"])
    assert got.exit_code == 2 and "--task-timeout goes with --workers" in got.output
    net = _identity_onnx(tmp_path / "net.onnx")
    (tmp_path / "p.vnnlib").write_text(PROP.format(lo0=0.6, hi0=1))
    got = CliRunner().invoke(
        main, ["vnnlib", str(net), str(tmp_path / "p.vnnlib"), "--workers", "2"]
    )
    assert got.exit_code == 2 and "go with --instances" in got.output


AUDIT_SPEC = """model = "{model}"

[data]
source = "sklearn:digits"
split = "test"
domain = [0.0, 1.0]

[engine]
name = "lipschitz"

[[property]]
name = "robust-linf-0.01"
kind = "local_robustness"
eps = 0.01
norm = "linf"
"""


def test_audit_on_two_workers_equals_one_process(local_ray, tmp_path):
    """Each audited point is one task (the engine, then the MILP): the same records."""
    spec = tmp_path / "audit.toml"
    spec.write_text(AUDIT_SPEC.format(model=ROOT / "specs/models/digits_mlp.pt"))
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    args = ["audit", str(spec), "--limit", "3", "--timeout", "60"]
    _run(*args, "--jsonl", str(one))
    _run(*args, "--jsonl", str(two), "--workers", "2")

    def verdicts(path: Path) -> list[tuple[int, str, str]]:
        return [
            (i, r["engine_result"]["verdict"], r["solver_result"]["verdict"])
            for _, i, r in _points(path)
        ]

    assert verdicts(two) == verdicts(one) and len(verdicts(one)) == 3
