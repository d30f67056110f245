"""Self-correcting layers in spec files and ``verispec check``: the shipped ACAS Xu example,
and the errors of a bad ``[self_correct]`` table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from verispec.cli import main
from verispec.errors import SpecFileError
from verispec.specfile import load_specfile

ROOT = Path(__file__).resolve().parents[1]
ACAS = ROOT / "specs" / "acas_selfcorrect.toml"

pytest.importorskip("onnx")
pytest.importorskip("highspy")


def test_the_acas_example_falsifies_the_plain_network_and_proves_the_corrected_one():
    res = CliRunner().invoke(main, ["check", str(ACAS), "--engine", "milp"])
    assert res.exit_code == 0, res.output
    plain, corrected = res.stdout.split("\nprop2-corrected\n", 1)
    assert "FALSIFIED" in plain and "witness  [" in plain
    assert "CERTIFIED" in corrected and "abstained on 0" in corrected
    sf = load_specfile(ACAS)
    assert sf.corrected is not None and sf.corrected.top == "min"
    witness = [float(v) for v in plain.split("witness  [")[1].split("]")[0].split(",")]
    y = sf.network.forward64(np.array([witness]))[0]
    assert y[0] >= y[1:].max()  # COC is the maximal score there: property 2 fails


def test_a_lipschitz_engine_on_the_corrected_network_is_an_error_naming_the_fix():
    res = CliRunner().invoke(main, ["check", str(ACAS), "--engine", "lipschitz"])
    assert "Traceback" not in res.output
    assert "milp or smt" in res.output


def _spec(tmp_path: Path, extra: str, prop: str = "corrected = true") -> Path:
    text = (
        ACAS.read_text()
        .split("[self_correct]")[0]
        .replace('model = "models/', f'model = "{ROOT}/specs/models/')
    )
    box = "precondition = { lo = [0.6, -0.5, -0.5, 0.45, -0.5], hi = [0.68, 0.5, 0.5, 0.5, -0.45] }"
    text += (
        extra
        + f"""
[[property]]
kind = "safe_ordering"
postcondition = [["y1 > y0"]]
{box}
{prop}
"""
    )
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


CONSTRAINT = """
[[self_correct.constraints]]
postcondition = [["y1 > y0"]]
precondition = { lo = 0.0, hi = 1.0 }
"""


@pytest.mark.parametrize(
    ("extra", "prop", "message"),
    [
        ("", "corrected = true", r"\[property\[0\]\] key 'corrected': needs a \[self_correct\]"),
        ("[self_correct]\ntop = 'mid'\n" + CONSTRAINT, "", r"\[self_correct\] key 'top'"),
        ("[self_correct]\nconstraints = []\n", "", r"key 'constraints': lists no constraint"),
        (
            "[self_correct]\n" + CONSTRAINT + "colour = 1\n",
            "",
            r"\[self_correct.constraints\[0\]\].*colour",
        ),
        (
            "[self_correct]\n" + CONSTRAINT.replace('"y1 > y0"', '"y1 > y9"'),
            "",
            r"\[self_correct.constraints\[0\]\] key 'postcondition'",
        ),
    ],
)
def test_bad_self_correct_tables_name_the_key(tmp_path, extra, prop, message):
    with pytest.raises(SpecFileError, match=message):
        load_specfile(_spec(tmp_path, extra, prop))


def test_corrected_point_properties_are_refused(tmp_path):
    path = _spec(tmp_path, "[self_correct]\n" + CONSTRAINT, "")
    text = (
        path.read_text()
        + '\n[[property]]\nkind = "local_robustness"\neps = 0.1\ncorrected = true\n'
    )
    path.write_text(text.replace("[engine]", '[data]\nsource = "sklearn:digits"\n\n[engine]'))
    with pytest.raises(SpecFileError):
        load_specfile(path)


BENCH = ROOT.parent / "shared" / "benchmarks" / "vnncomp2021" / "acasxu"
needs_acas = pytest.mark.skipif(not BENCH.is_dir(), reason=f"no ACAS Xu benchmark at {BENCH}")


@needs_acas
def test_vnnlib_decides_the_corrected_network():
    net, prop = str(BENCH / "ACASXU_run2a_2_3_batch_2000.onnx"), str(BENCH / "prop_2.vnnlib")
    plain = CliRunner().invoke(main, ["vnnlib", net, prop])
    assert plain.exit_code == 0 and plain.stdout.startswith("sat"), plain.output
    rules = ["--correct-with", prop, "--correct-with", str(BENCH / "prop_3.vnnlib")]
    fixed = CliRunner().invoke(main, ["vnnlib", net, prop, *rules, "--top", "min"])
    assert fixed.exit_code == 0 and fixed.stdout.strip() == "unsat", fixed.output


@needs_acas
def test_vnnlib_refuses_a_non_ordering_constraint_and_batches():
    net, prop = str(BENCH / "ACASXU_run2a_2_3_batch_2000.onnx"), str(BENCH / "prop_2.vnnlib")
    bound = str(BENCH / "prop_1.vnnlib")
    res = CliRunner().invoke(main, ["vnnlib", net, prop, "--correct-with", bound])
    assert res.exit_code == 2 and "prop_1.vnnlib" in res.output and "ordering" in res.output
    assert "Traceback" not in res.output
    csv_path = str(BENCH / "acasxu_instances.csv")
    res = CliRunner().invoke(main, ["vnnlib", "--instances", csv_path, "--correct-with", prop])
    assert res.exit_code == 2 and "one instance" in res.output
