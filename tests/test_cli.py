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
