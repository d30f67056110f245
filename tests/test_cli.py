import json
from pathlib import Path

from click.testing import CliRunner

from cli import main

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
    assert len(payload["reports"]) == 5
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
