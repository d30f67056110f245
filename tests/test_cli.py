import itertools
import json
import re
from pathlib import Path

from click.testing import CliRunner

from verispec.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "specs/digits.toml")
MODEL = str(ROOT / "specs/models/digits_mlp.pt")


def test_check_prints_tables_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["check", SPEC, "--limit", "40", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "robust-l2-0.3" in res.output and "VRA" in res.output
    assert "safe-ordering-zero" in res.output
    payload = json.loads(out.read_text())
    assert len(payload["reports"]) == 6
    first = payload["reports"][0]
    assert first["summary"]["points"] == 40
    assert first["schema"] == "verispec.report/1"


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'model = "{MODEL}"\n[[property]]\nkind = "local_robustness"\neps = 0\n')
    res = CliRunner().invoke(main, ["check", str(bad)])
    assert res.exit_code == 2
    assert "key 'eps'" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["check", str(tmp_path / "missing.toml")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(main, ["check", SPEC, "--engine", "nope"])
    assert res.exit_code == 2 and "unknown engine" in res.output


def test_debug_shows_the_traceback(tmp_path):
    res = CliRunner().invoke(main, ["check", str(tmp_path / "missing.toml"), "--debug"])
    assert res.exit_code != 0 and res.exception is not None


def test_info_lists_layers_and_k(tmp_path):
    res = CliRunner().invoke(main, ["info", MODEL])
    assert res.exit_code == 0, res.output
    assert "dense" in res.output and "groupsort" in res.output
    assert "K (l2" in res.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    res = CliRunner().invoke(main, ["info", str(junk)])
    assert res.exit_code == 2 and "not a verispec model" in res.output


def test_smoothing_property_uses_its_own_model_and_engine_and_plots(tmp_path):
    png = tmp_path / "curve.png"
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        main, ["check", SPEC, "--limit", "20", "--plot", str(png), "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "smoothed-l2-0.3" in res.output and "smoothing" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reports = {r["property"]: r for r in json.loads(out.read_text())["reports"]}
    smooth = reports["smoothed-l2-0.3"]
    assert smooth["engine"] == "smoothing"
    assert smooth["results"][0]["guarantee"] == "probabilistic"
    curve = smooth["summary"]["curve"]
    assert curve[0][0] == 0.0 and all(a >= b for (_, a), (_, b) in itertools.pairwise(curve))
    assert reports["robust-l2-0.3"]["engine"] == "lipschitz"


def test_engine_override_skips_unsupported_properties(tmp_path):
    out = tmp_path / "milp.json"
    args = ["check", SPEC, "--limit", "2", "--json", str(out), "--engine"]
    res = CliRunner().invoke(main, [*args, "milp"])
    assert res.exit_code == 0, res.output
    # milp decides all six properties: each report, and each table, names it as the engine
    assert [r["engine"] for r in json.loads(out.read_text())["reports"]] == ["milp"] * 6
    assert re.findall(r"^  engine +(\S+)$", res.output, re.M) == ["milp"] * 6
    res = CliRunner().invoke(main, [*args, "smoothing"])
    assert res.exit_code == 0, res.output
    reports = json.loads(out.read_text())["reports"]
    assert [(r["property"], r["engine"]) for r in reports] == [
        ("robust-l2-0.3", "smoothing"),
        ("smoothed-l2-0.3", "smoothing"),
    ]
    assert res.output.count("skipped: ") == 4 and "local robustness only" in res.output


BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp2021" / "test"


def test_vnnlib_answers_sat_and_unsat(tmp_path):
    import pytest

    if not BENCH.is_dir():
        pytest.skip("VNN-COMP benchmarks not present")
    prop = str(BENCH / "test_prop.vnnlib")
    out = tmp_path / "result.txt"
    res = CliRunner().invoke(
        main, ["vnnlib", str(BENCH / "test_sat.onnx"), prop, "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and "(Y_4 " in lines[-1]
    res = CliRunner().invoke(
        main, ["vnnlib", str(BENCH / "test_unsat.onnx"), prop, "--solver", "smt"]
    )
    assert res.exit_code == 0 and res.output.strip() == "unsat"
    res = CliRunner().invoke(main, ["vnnlib", str(tmp_path / "none.onnx"), prop])
    assert res.exit_code == 2 and "none.onnx" in res.output


def test_train_writes_a_loadable_model_and_log(tmp_path):
    from verispec.modelfile import load_model

    out = tmp_path / "m.pt"
    args = ["train", "--data", "sklearn:digits", "--arch", "minmax-mlp", "--width", "16"]
    args += ["--depth", "1", "--epochs", "2", "--power-iterations", "2", "--unit-init"]
    args += ["--shift", "1", "--eval-limit", "50", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    network, meta = load_model(out)
    assert network.num_classes == 10 and meta["training"]["unit_init"] is True
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert log["config"]["power_iterations"] == 2 and log["config"]["unit_init"] is True
    assert log["config"]["shift"] == 1
    assert len(log["epochs"]) == 2
    bad = CliRunner().invoke(main, ["train", "--data", "nope:x", "--out", str(out)])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_help_lists_the_registered_engines_and_solvers():
    from verispec.engines.base import ENGINES, EngineBase

    class HelpToy(EngineBase):
        name = "help-toy"

        def _decide_points(self, network, spec, xs, domain):
            raise NotImplementedError

    ENGINES.register("help-toy")(HelpToy)
    try:
        for command in ("check", "audit"):
            res = CliRunner().invoke(main, [command, "--help"])
            assert res.exit_code == 0, res.output
            engines = res.output.split("  --engine [", 1)[1].split("]", 1)[0].split("|")
            for name in ("lipschitz", "projections", "smoothing", "milp", "smt", "help-toy"):
                assert name in engines, (command, res.output)
        for command in ("audit", "vnnlib"):
            res = CliRunner().invoke(main, [command, "--help"])
            assert "[milp|smt]" in res.output, res.output
    finally:
        del ENGINES["help-toy"]
    res = CliRunner().invoke(main, ["check", "--help"])
    assert "help-toy" not in res.output
    res = CliRunner().invoke(main, ["audit", SPEC, "--solver", "gurobi"])
    assert res.exit_code == 2 and "unknown solver 'gurobi'; available: milp, smt" in res.output


def _batchnorm_model():
    """Conv - BatchNorm2d - ReLU - Flatten - Linear - BatchNorm1d - ReLU - Linear on digits,
    with random running statistics, in evaluation mode."""
    import torch
    from torch import nn

    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _onnx_of(model, path: Path) -> None:
    """The same network as an ONNX graph (Conv, BatchNormalization, Relu, Flatten, Gemm)."""
    from onnx import TensorProto, helper, numpy_helper

    def arr(t):
        return t.detach().numpy().astype("float32")

    conv, bn2, _, _, fc1, bn1, _, fc2 = model
    inits = {
        "cw": arr(conv.weight),
        "cb": arr(conv.bias),
        "g2": arr(bn2.weight),
        "b2": arr(bn2.bias),
        "m2": arr(bn2.running_mean),
        "v2": arr(bn2.running_var),
        "w1": arr(fc1.weight),
        "c1": arr(fc1.bias),
        "g1": arr(bn1.weight),
        "b1": arr(bn1.bias),
        "m1": arr(bn1.running_mean),
        "v1": arr(bn1.running_var),
        "w2": arr(fc2.weight),
        "c2": arr(fc2.bias),
    }
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "g2", "b2", "m2", "v2"], ["b"], epsilon=1e-5),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("Flatten", ["c"], ["d"]),
        helper.make_node("Gemm", ["d", "w1", "c1"], ["e"], transB=1),
        helper.make_node("BatchNormalization", ["e", "g1", "b1", "m1", "v1"], ["f"], epsilon=1e-5),
        helper.make_node("Relu", ["f"], ["g"]),
        helper.make_node("Gemm", ["g", "w2", "c2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx_model.ir_version = 8
    path.write_bytes(onnx_model.SerializeToString())


def test_check_runs_torch_and_onnx_models_with_batchnorm_soundly(tmp_path):
    """BatchNorm end to end: a torch model (converted with Network.from_torch, saved as a model
    file) and the same network as an ONNX file both run in `verispec check`; they agree, and
    no certified point has a counterexample that PGD can find."""
    import numpy as np

    import verispec as vs
    from verispec.attacks import pgd_attack
    from verispec.network import Network

    model = _batchnorm_model()
    net = Network.from_torch(model, (1, 8, 8))
    assert [layer.kind for layer in net.layers].count("batchnorm") == 2
    vs.save_model(net, tmp_path / "bn.pt")
    _onnx_of(model, tmp_path / "bn.onnx")
    payloads = []
    for name in ("bn.pt", "bn.onnx"):
        spec = tmp_path / f"{name}.toml"
        spec.write_text(
            f'model = "{name}"\n[data]\nsource = "sklearn:digits"\nsplit = "test"\n'
            'domain = [0.0, 1.0]\n[engine]\nname = "lipschitz"\n'
            '[[property]]\nname = "l2"\nkind = "local_robustness"\neps = 0.02\nnorm = "l2"\n'
        )
        out = tmp_path / f"{name}.json"
        res = CliRunner().invoke(main, ["check", str(spec), "--limit", "60", "--json", str(out)])
        assert res.exit_code == 0, res.output
        payloads.append(json.loads(out.read_text())["reports"][0])
    torch_report = payloads[0]
    verdicts = [[r["verdict"] for r in p["results"]] for p in payloads]
    assert verdicts[0] == verdicts[1]
    assert "certified" in verdicts[0]  # the check is not vacuous
    radii = [np.array([r["radius"] for r in p["results"]], dtype=float) for p in payloads]
    np.testing.assert_allclose(radii[0], radii[1], rtol=1e-4, atol=1e-9)
    data = vs.load_data("sklearn:digits", vs.Split.TEST)
    rng = np.random.default_rng(0)
    spec_obj = vs.LocalRobustness(0.02, vs.Norm.L2)
    for x, result in zip(data.x[:60], torch_report["results"], strict=True):
        if result["verdict"] != "certified":
            continue
        y = net.forward64(x[None])[0]
        goal = spec_obj.at(x, y, vs.Box.uniform(0.0, 1.0, x.shape))
        for prop in goal.alternatives:
            assert pgd_attack(net, prop, rng, steps=20, restarts=2) is None


def test_vnnlib_prints_the_answer_first_on_the_real_stdout():
    """HiGHS prints its banner from C++ (file descriptor 1, which CliRunner does not capture)
    on its first construction: the answer must still be the first line of a real process's
    stdout."""
    import subprocess
    import sys

    import pytest

    mnist = BENCH.parent / "mnistfc"
    if not mnist.is_dir():
        pytest.skip("VNN-COMP benchmarks not present")
    args = ["vnnlib", str(mnist / "mnist-net_256x2.onnx"), str(mnist / "prop_0_0.03.vnnlib")]
    done = subprocess.run(
        [sys.executable, "-c", "from verispec.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "unsat", done.stdout[:500]


# -- no lost results, progress and output (check, audit) -------------------------------------

DIGITS_DATA = '[data]\nsource = "sklearn:digits"\nsplit = "test"\ndomain = [0.0, 1.0]\n'


def _untimed(payload):
    """A JSON payload without the fields that measure time."""
    if isinstance(payload, dict):
        drop = ("time_s", "wall_time_s", "points_per_second", "engine_time_s", "solver_time_s")
        return {k: _untimed(v) for k, v in payload.items() if k not in drop}
    if isinstance(payload, list):
        return [_untimed(v) for v in payload]
    return payload


def test_resume_from_a_cut_run_log_gives_the_uninterrupted_report(tmp_path):
    full_json, log = tmp_path / "full.json", tmp_path / "full.jsonl"
    args = ["check", SPEC, "--limit", "12", "--no-progress"]
    res = CliRunner().invoke(main, [*args, "--jsonl", str(log), "--json", str(full_json)])
    assert res.exit_code == 0, res.output
    lines = log.read_text().splitlines()
    assert len(lines) == 1 + 5 * 12 + 1  # header, 5 point properties, 1 global
    first = json.loads(lines[1])
    assert (first["property"], first["index"]) == ("robust-l2-0.3", 0)
    for k in (1, 30, 55):
        cut = tmp_path / f"cut{k}.jsonl"
        cut.write_text("\n".join(lines[:k]) + "\n" + lines[k][: len(lines[k]) // 2])
        out = tmp_path / f"resumed{k}.json"
        res = CliRunner().invoke(main, [*args, "--jsonl", str(cut), "--json", str(out), "--resume"])
        assert res.exit_code == 0, res.output
        assert _untimed(json.loads(out.read_text())) == _untimed(json.loads(full_json.read_text()))
        resumed = cut.read_text().splitlines()
        assert len(resumed) == len(lines)
        assert [json.loads(x).get("index") for x in resumed] == [
            json.loads(x).get("index") for x in lines
        ]
    # a log of other options is refused, naming the file
    res = CliRunner().invoke(
        main, ["check", SPEC, "--limit", "11", "--jsonl", str(log), "--resume"]
    )
    assert res.exit_code == 2 and f"{log}: written by another run" in res.output
    res = CliRunner().invoke(main, ["check", SPEC, "--resume"])
    assert res.exit_code == 2 and "--resume reads the run log" in res.output


def test_killing_a_check_run_and_resuming_gives_the_same_report(tmp_path):
    """A real process killed once some points are logged; --resume finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    models = ROOT / "specs/models"
    spec = tmp_path / "slow.toml"
    spec.write_text(
        f'model = "{models / "digits_mlp.pt"}"\n'
        + DIGITS_DATA
        + '[[property]]\nname = "fast"\nkind = "local_robustness"\neps = 0.3\nnorm = "l2"\n'
        + '[[property]]\nname = "slow"\nkind = "local_robustness"\neps = 0.3\nnorm = "l2"\n'
        + f'model = "{models / "digits_noise.pt"}"\n'
        + '[property.engine]\nname = "smoothing"\nsigma = 0.25\nn0 = 100\nn = 2000\n'
    )
    command = [sys.executable, "-c", "from verispec.cli import main; main()", "check", str(spec)]
    command += ["--limit", "24", "--no-progress"]
    log, cut_json, full_json = tmp_path / "r.jsonl", tmp_path / "cut.json", tmp_path / "full.json"
    proc = subprocess.Popen([*command, "--jsonl", str(log), "--json", str(cut_json)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and '"property":"slow"' in log.read_text():
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not cut_json.exists()
    logged = log.read_text().count('"kind":"point"')
    assert 24 < logged < 48
    done = subprocess.run(
        [*command, "--jsonl", str(log), "--json", str(cut_json), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert log.read_text().count('"kind":"point"') == 48
    full = subprocess.run(
        [*command, "--json", str(full_json)], capture_output=True, text=True, timeout=300
    )
    assert full.returncode == 0, full.stderr[-2000:]
    assert _untimed(json.loads(cut_json.read_text())) == _untimed(json.loads(full_json.read_text()))


def _failing_spec(tmp_path) -> Path:
    """Three properties; the middle one asks the smoothing engine for relaxed top-k."""
    spec = tmp_path / "fails.toml"
    spec.write_text(
        f'model = "{MODEL}"\n'
        + DIGITS_DATA
        + '[[property]]\nname = "first"\nkind = "local_robustness"\neps = 0.3\nnorm = "l2"\n'
        + '[[property]]\nname = "broken"\nkind = "relaxed_top_k"\nk = 2\neps = 0.3\n'
        + 'norm = "l2"\n[property.engine]\nname = "smoothing"\n'
        + '[[property]]\nname = "last"\nkind = "local_robustness"\neps = 0.1\nnorm = "l2"\n'
    )
    return spec


def test_a_failing_property_is_an_error_and_the_others_run(tmp_path):
    out, log = tmp_path / "r.json", tmp_path / "r.jsonl"
    args = ["check", str(_failing_spec(tmp_path)), "--limit", "5", "--json", str(out)]
    res = CliRunner().invoke(main, [*args, "--jsonl", str(log)])
    assert res.exit_code == 3, res.output
    assert "broken\n  ERROR: " in res.stdout and "local robustness only" in res.stdout
    assert "first\n  spec" in res.stdout and "last\n  spec" in res.stdout
    assert "error: 1 of 3 properties failed: 'broken'" in res.stderr
    payload = json.loads(out.read_text())
    assert [r["property"] for r in payload["reports"]] == ["first", "last"]
    (err,) = payload["errors"]
    assert err["property"] == "broken" and "local robustness only" in err["error"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"kind": "error", "property": "broken", "error": err["error"]} in records
    assert (
        "Exit status: 0 every property ran" in CliRunner().invoke(main, ["check", "--help"]).output
    )
    assert "3 a property failed" in CliRunner().invoke(main, ["audit", "--help"]).output


def test_a_failing_audit_property_is_an_error_and_the_others_run(tmp_path, monkeypatch):
    from verispec.engines.base import ENGINES
    from verispec.engines.lipschitz import LipschitzEngine

    class Broken(LipschitzEngine):
        name = "broken-engine"

        def _decide_points(self, network, spec, xs, domain):
            raise RuntimeError("the engine broke")

    monkeypatch.setitem(ENGINES, "broken-engine", Broken)
    spec = tmp_path / "a.toml"
    spec.write_text(
        f'model = "{MODEL}"\n'
        + DIGITS_DATA
        + '[[property]]\nname = "bad"\nkind = "local_robustness"\neps = 0.01\nnorm = "linf"\n'
        + '[property.engine]\nname = "broken-engine"\n'
        + '[[property]]\nname = "good"\nkind = "local_robustness"\neps = 0.01\nnorm = "linf"\n'
    )
    out = tmp_path / "a.json"
    res = CliRunner().invoke(main, ["audit", str(spec), "--points", "0", "--json", str(out)])
    assert res.exit_code == 3, res.output
    assert "bad\n  ERROR: RuntimeError: the engine broke" in res.stdout
    assert "good\n  spec" in res.stdout and "0 soundness violation(s)" in res.stdout
    payload = json.loads(out.read_text())
    assert [a["property"] for a in payload["audits"]] == ["good"]
    assert payload["errors"][0]["property"] == "bad"


def test_unwritable_outputs_are_refused_before_the_run(tmp_path):
    missing = tmp_path / "no" / "r.json"
    for command in ("check", "audit"):
        for flag in ("--json", "--jsonl", "--csv"):
            res = CliRunner().invoke(main, [command, SPEC, flag, str(missing)])
            assert res.exit_code == 2, (command, flag, res.output)
            assert f"{flag} {missing}: the folder" in res.output
            assert "robust-l2-0.3" not in res.output  # nothing ran
    res = CliRunner().invoke(main, ["check", SPEC, "--csv", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output


def _linear_spec(tmp_path, hidden: int = 0) -> str:
    """A linear 2-input network (or with a random ReLU layer of ``hidden`` units), 4 points: a
    point property, a global one, a smoothing one."""
    import numpy as np

    from verispec.ir import Dense, ReLU
    from verispec.modelfile import save_model
    from verispec.network import Network

    net = Network((Dense(np.array([[1.0, -1.0], [-1.0, 1.0]]), np.zeros(2)),), (2,))
    if hidden:
        rng = np.random.default_rng(0)
        first = Dense(rng.normal(size=(hidden, 2)), rng.normal(size=hidden) * 0.1)
        net = Network((first, ReLU(), Dense(rng.normal(size=(2, hidden)), np.zeros(2))), (2,))
    save_model(net, tmp_path / "lin.pt")
    xs = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.4], [0.2, 0.9]])
    np.savez(tmp_path / "pts.npz", x=xs, y=np.array([0, 1, 0, 1]))
    spec = tmp_path / "lin.toml"
    spec.write_text(
        'model = "lin.pt"\n[data]\nsource = "npz:pts.npz"\nsplit = "all"\n'
        '[[property]]\nname = "robust-l2-0.3"\nkind = "local_robustness"\neps = 0.3\n'
        'norm = "linf"\n'
        '[[property]]\nname = "safe-ordering-zero"\nkind = "safe_ordering"\n'
        'postcondition = [["y0 > y1"]]\n[property.precondition]\ncenter = "data:0"\n'
        "radius = 0.1\n"
        '[[property]]\nname = "smoothed-l2-0.3"\nkind = "local_robustness"\neps = 0.1\n'
        'norm = "l2"\n[property.engine]\nname = "smoothing"\nn0 = 10\nn = 100\n'
    )
    return str(spec)


def test_audit_streams_and_resumes_and_writes_csv(tmp_path):
    SPEC = _linear_spec(tmp_path)
    log, out, csv_path = tmp_path / "a.jsonl", tmp_path / "a.json", tmp_path / "a.csv"
    args = ["audit", SPEC, "--limit", "4", "--timeout", "20", "--jsonl", str(log)]
    args += ["--json", str(out), "--csv", str(csv_path)]
    res = CliRunner().invoke(main, [*args, "--points", "1:3"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in log.read_text().splitlines()]
    points = [(r["property"], r["index"]) for r in records if r["kind"] == "point"]
    assert points[:2] == [("robust-l2-0.3", 1), ("robust-l2-0.3", 2)]
    assert ("safe-ordering-zero", 0) in points
    assert any(r["kind"] == "skipped" and r["property"] == "smoothed-l2-0.3" for r in records)
    first = json.loads(out.read_text())
    assert first["audits"][0]["indices"] == [1, 2]
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "property,index,engine,engine_verdict,solver,solver_verdict,violation,detail"
    assert rows[1].startswith("robust-l2-0.3,1,lipschitz,")
    # cut the log after the first point: the resumed audit matches
    log.write_text("\n".join(log.read_text().splitlines()[:2]) + "\n")
    res = CliRunner().invoke(main, [*args, "--points", "1:3", "--resume"])
    assert res.exit_code == 0, res.output
    assert _untimed(json.loads(out.read_text())) == _untimed(first)


def test_points_selects_and_csv_writes_indices(tmp_path):
    out, csv_path = tmp_path / "r.json", tmp_path / "r.csv"
    res = CliRunner().invoke(
        main,
        ["check", SPEC, "--points", "0:3,7", "--json", str(out), "--csv", str(csv_path)],
    )
    assert res.exit_code == 0, res.output
    reports = json.loads(out.read_text())["reports"]
    assert [r["index"] for r in reports[0]["results"]] == [0, 1, 2, 7]
    rows = csv_path.read_text().splitlines()
    assert rows[0] == (
        "property,index,verdict,predicted,label,radius,engine,guarantee,confidence,time_s,detail"
    )
    assert [r.split(",")[1] for r in rows[1:5]] == ["0", "1", "2", "7"]
    assert rows[1].startswith("robust-l2-0.3,0,")
    assert any(r.startswith("safe-ordering-zero,0,certified") for r in rows)
    for bad, words in (("0:x", "neither an index nor a range"), ("449:451", "out of range")):
        res = CliRunner().invoke(main, ["check", SPEC, "--points", bad])
        assert res.exit_code == 2 and f"--points {bad!r}" in res.output and words in res.output


def _smoothing_spec(tmp_path, n: int = 1000) -> str:
    spec = tmp_path / "smooth.toml"
    spec.write_text(
        f'model = "{ROOT / "specs/models/digits_noise.pt"}"\n'
        + DIGITS_DATA
        + f'[engine]\nname = "smoothing"\nsigma = 0.25\nn0 = 50\nn = {n}\n'
        + '[[property]]\nname = "s"\nkind = "local_robustness"\neps = 0.3\nnorm = "l2"\n'
    )
    return str(spec)


def test_seed_reaches_the_engines_and_time_per_point_limits_them(tmp_path):
    spec = _smoothing_spec(tmp_path)
    radii = {}
    for seed in (None, 0, 1):
        out = tmp_path / f"{seed}.json"
        args = ["check", spec, "--points", "0:4", "--json", str(out)]
        res = CliRunner().invoke(main, args + ([] if seed is None else ["--seed", str(seed)]))
        assert res.exit_code == 0, res.output
        radii[seed] = [r["radius"] for r in json.loads(out.read_text())["reports"][0]["results"]]
    assert radii[None] == radii[0] and radii[1] != radii[0]
    out = tmp_path / "p.json"
    relu = Path(_linear_spec(tmp_path, hidden=32))
    # the search alone (no bounds, which would certify these points before any search)
    text = relu.read_text().replace(
        'model = "lin.pt"\n', 'model = "lin.pt"\n[engine]\nname = "projections"\nbounds = "none"\n'
    )
    relu.write_text(text)
    args = ["check", str(relu), "--points", "0:3", "--time-per-point"]
    res = CliRunner().invoke(main, [*args, "1e-9", "--json", str(out)])
    assert res.exit_code == 0, res.output
    verdicts = [r["verdict"] for r in json.loads(out.read_text())["reports"][0]["results"]]
    assert "timeout" in verdicts and re.search(r"^  timed out +\d+$", res.stdout, re.M)
    res = CliRunner().invoke(main, ["check", SPEC, "--points", "0", "--time-per-point", "5"])
    assert "note: --time-per-point does not apply to engine 'lipschitz'" in res.stderr
    assert "note: --time-per-point does not apply to engine 'smoothing'" in res.stderr


def test_abstentions_have_their_own_row_and_rates_three_digits(tmp_path):
    from verispec.cli import _significant

    res = CliRunner().invoke(main, ["check", _smoothing_spec(tmp_path, n=5), "--points", "0:8"])
    assert res.exit_code == 0, res.output
    abstained = re.search(r"^  abstained +(\d+)$", res.stdout, re.M)
    assert abstained and int(abstained.group(1)) > 0
    unknown = int(re.search(r"^  unknown +(\d+)$", res.stdout, re.M).group(1))
    certified = int(re.search(r"^  certified +(\d+)$", res.stdout, re.M).group(1))
    assert certified + unknown + int(abstained.group(1)) == 8
    rate = re.search(r"^  points/s +(\S+)$", res.stdout, re.M).group(1)
    # three significant digits: 4.23, 713, 1430 (a rate >= 1000 keeps its integer digits)
    digits = rate.replace(".", "").lstrip("0")
    assert rate == "inf" or len(digits.rstrip("0") if "." not in rate else digits) <= 3, rate
    res = CliRunner().invoke(main, ["check", SPEC, "--points", "0:3"])
    assert "abstained" not in res.stdout
    assert [_significant(v) for v in (1259.4, 713.2, 4.2345, 0.012345, 0.0)] == [
        "1260",
        "713",
        "4.23",
        "0.0123",
        "0",
    ]


def test_progress_goes_to_stderr_only(tmp_path):
    args = ["check", SPEC, "--points", "0:5"]
    res = CliRunner().invoke(main, [*args, "--progress"])
    assert res.exit_code == 0, res.output
    assert "robust-l2-0.3:" in res.stderr and "pt" in res.stderr
    assert "pt/s" not in res.stdout and "%|" not in res.stdout
    res = CliRunner().invoke(main, [*args, "--no-progress"])
    assert res.stderr == ""
    res = CliRunner().invoke(main, args)  # a short run: no bar
    assert res.stderr == ""
    out = tmp_path / "m.pt"
    args = ["train", "--width", "8", "--depth", "1", "--epochs", "2", "--eval-limit", "20"]
    res = CliRunner().invoke(main, [*args, "--out", str(out), "--progress"])
    assert res.exit_code == 0, res.output
    assert "training:" in res.stderr and "epoch" in res.stderr
    assert "training:" not in res.stdout and res.stdout.count("\n    1 ") == 1


def test_version():
    import importlib.metadata

    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"verispec {importlib.metadata.version('verispec')}"


def test_info_reads_onnx_models():
    import pytest

    onnx_file = BENCH / "test_sat.onnx"
    if not onnx_file.is_file():
        pytest.skip("VNN-COMP benchmarks not present")
    res = CliRunner().invoke(main, ["info", str(onnx_file)])
    assert res.exit_code == 0, res.output
    assert "K (l2" in res.output and "dense" in res.output
