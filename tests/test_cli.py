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
