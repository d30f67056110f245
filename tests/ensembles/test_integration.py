"""Ensembles wherever a model goes: ``verispec.check``, spec files' ``[ensemble]`` table, and the
``check`` and ``audit`` commands."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import verispec as vs
import verispec.api as api
from verispec.cli import main
from verispec.data import Split, load_data
from verispec.engines.lipschitz import LipschitzEngine
from verispec.ensembles import Cascade, Member, Voting
from verispec.errors import SpecError, SpecFileError, UnsupportedError
from verispec.ir import Dense, ReLU
from verispec.modelfile import save_model
from verispec.network import Network
from verispec.results import Verdict
from verispec.specfile import load_specfile

EPS = 0.05
DATA = '[data]\nsource = "sklearn:digits"\nlimit = 12\n'
PROPERTY = f'[[property]]\nname = "robust"\nkind = "local_robustness"\neps = {EPS}\n'


def _net(seed: int, inputs: int = 64, classes: int = 10) -> Network:
    rng = np.random.default_rng(seed)
    hidden = 12
    return Network(
        (
            Dense(rng.normal(size=(hidden, inputs)) * 0.15, rng.normal(size=hidden) * 0.1),
            ReLU(),
            Dense(rng.normal(size=(classes, hidden)), rng.normal(size=classes)),
        ),
        (inputs,),
    )


@pytest.fixture
def models(tmp_path):
    """Three members' model files (64 inputs, 10 classes), one with 16 inputs, one with 3
    classes, all in tmp_path."""
    for name, net in [
        ("a", _net(1)),
        ("b", _net(2)),
        ("c", _net(3)),
        ("narrow", _net(4, inputs=16)),
        ("three", _net(5, classes=3)),
    ]:
        save_model(net, tmp_path / f"{name}.pt")
    return tmp_path


def _members(*names: str, engine: str = '"lipschitz"') -> str:
    return "".join(
        f'[[ensemble.members]]\nmodel = "{n}.pt"\nengine = {engine}\nname = "{n}"\n' for n in names
    )


def _write(directory, text: str, name: str = "s.toml"):
    path = directory / name
    path.write_text(text)
    return path


def _data(limit: int = 12):
    return load_data("sklearn:digits", Split.TEST).take(limit)


def _lipschitz_member(net: Network, name: str = "") -> Member:
    return Member(net, LipschitzEngine(), name)


# -- the library -----------------------------------------------------------------------------


def test_check_runs_an_ensemble_in_chunks_with_progress(monkeypatch):
    ensemble = Voting([_lipschitz_member(_net(s)) for s in (1, 2, 3)], weights=[2, 1, 1])
    spec = vs.LocalRobustness(EPS, vs.Norm.L2)
    whole = vs.check(ensemble, spec, _data(12))
    assert whole.engine == ensemble.name == "voting[lipschitz,lipschitz,lipschitz]"
    assert whole.points == 12 and whole.has_labels
    monkeypatch.setattr(api, "CHUNK", 5)
    seen: list[int] = []
    chunked = vs.check(ensemble, spec, _data(12), progress=seen.append)
    assert seen == [5, 5, 2]
    assert [r.verdict for r in chunked.results] == [r.verdict for r in whole.results]
    assert [r.detail for r in chunked.results] == [r.detail for r in whole.results]
    assert all(r.detail.startswith("votes ") for r in chunked.results)
    # points are shaped for the members' input ((1, 8, 8) images -> 64 features)
    direct = ensemble.check(spec, _data(12).x.reshape(12, 64), _data(12).y)
    assert np.array_equal(direct.verdicts, whole.results.verdicts)


def test_one_member_cascade_gives_its_engines_verdicts():
    net = _net(1)
    spec = vs.LocalRobustness(EPS, vs.Norm.L2)
    alone = vs.check(net, spec, _data(40), engine="lipschitz")
    cascade = vs.check(Cascade([_lipschitz_member(net)]), spec, _data(40))
    own = [r.verdict is Verdict.CERTIFIED for r in alone.results]
    assert 0 < sum(own) < len(own), "the test wants certified and uncertified points"
    assert [r.verdict is Verdict.CERTIFIED for r in cascade.results] == own
    assert all(r.verdict in (Verdict.CERTIFIED, Verdict.UNKNOWN) for r in cascade.results)
    assert [r.predicted for r in cascade.results] == [r.predicted for r in alone.results]
    assert cascade.vra == alone.vra and cascade.clean_accuracy == alone.clean_accuracy


def test_an_engine_argument_with_an_ensemble_is_an_error():
    ensemble = Cascade([_lipschitz_member(_net(1))])
    spec = vs.LocalRobustness(EPS, vs.Norm.L2)
    for engine in ("lipschitz", LipschitzEngine()):
        with pytest.raises(SpecError, match="members carry their engines"):
            vs.check(ensemble, spec, _data(), engine=engine)
    with pytest.raises(vs.DataError, match="give a data source"):
        vs.check(ensemble, spec)
    with pytest.raises(UnsupportedError, match="LocalRobustness only"):
        vs.check(ensemble, vs.RelaxedTopK(2, EPS, vs.Norm.L2), _data())


# -- spec files ------------------------------------------------------------------------------


def test_spec_file_ensembles_parse_and_build(models):
    path = _write(
        models,
        '[ensemble]\nkind = "voting"\nweights = [3, 1.5]\n'
        + _members("a")
        + '[[ensemble.members]]\nmodel = "b.pt"\n'
        + 'engine = { name = "lipschitz", batch_size = 7, precision = "float64" }\n'
        + DATA
        + PROPERTY,
    )
    sf = load_specfile(path)
    assert sf.network is None and sf.model_path is None
    assert sf.ensemble is not None and sf.ensemble.kind == "voting"
    ensemble = sf.ensemble.ensemble
    assert isinstance(ensemble, Voting) and ensemble.weights == (3.0, 1.5)
    assert [m.label(i) for i, m in enumerate(ensemble.members)] == ["a", "member 1"]
    assert sf.ensemble.members[1].engine_config.batch_size == 7
    assert sf.model_of(sf.properties[0]) is ensemble
    rebuilt = sf.ensemble.build("cpu")
    assert isinstance(rebuilt, Voting) and rebuilt.weights == ensemble.weights
    cascade = load_specfile(
        _write(models, '[ensemble]\nkind = "cascade"\n' + _members("a", "b") + DATA + PROPERTY)
    )
    assert cascade.ensemble is not None and isinstance(cascade.ensemble.ensemble, Cascade)


def test_a_property_with_its_own_model_runs_beside_the_ensemble(models):
    sf = load_specfile(
        _write(
            models,
            '[ensemble]\nkind = "cascade"\n'
            + _members("a", "b")
            + DATA
            + PROPERTY
            + '[[property]]\nkind = "relaxed_top_k"\nk = 2\neps = 0.1\nmodel = "c.pt"\n'
            + '[property.engine]\nname = "lipschitz"\n',
        )
    )
    own = sf.properties[1]
    assert own.network is not None and sf.model_of(own) is own.network


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            'model = "a.pt"\n[ensemble]\nkind = "cascade"\n' + _members("a"),
            "top level key 'model': and key 'ensemble' are both given",
        ),
        (
            '[ensemble]\nkind = "majority"\n' + _members("a"),
            "[ensemble] key 'kind': unknown ensemble kind 'majority'; known kinds: cascade, "
            "voting, selective",
        ),
        ("[ensemble]\n" + _members("a"), "[ensemble] key 'kind': is required"),
        (
            '[ensemble]\nkind = "cascade"\nweights = [1, 2]\n' + _members("a", "b"),
            "[ensemble] key 'weights': is an option of kind 'voting' only, not of 'cascade'",
        ),
        ('[ensemble]\nkind = "voting"\n', "[ensemble] key 'members': lists no member"),
        ('[ensemble]\nkind = "voting"\nmembers = []\n', "[ensemble] key 'members': lists no"),
        (
            '[ensemble]\nkind = "voting"\n[ensemble.members]\nmodel = "a.pt"\n',
            "[ensemble] key 'members': must be an array of tables",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("a", "narrow"),
            "[ensemble] key 'members': narrow takes inputs of shape (16,), a (64,)",
        ),
        (
            '[ensemble]\nkind = "cascade"\n' + _members("a", "three"),
            "[ensemble] key 'members': three has 3 classes, a 10",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("a") + "weight = 2\n",
            "[ensemble.members[0]] key 'weight': unknown key",
        ),
        (
            '[ensemble]\nkind = "voting"\nsize = 2\n' + _members("a"),
            "[ensemble] key 'size': unknown key",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("a", engine='"magic"'),
            "[ensemble.members[0]] key 'engine': unknown engine 'magic'",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("a", engine='{ name = "magic" }'),
            "[ensemble.members[0].engine] key 'name': unknown engine 'magic'",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("a", engine="{ batch_size = 2 }"),
            "[ensemble.members[0].engine] key 'name': is required",
        ),
        (
            '[ensemble]\nkind = "voting"\n'
            + _members("a", engine='{ name = "lipschitz", batch = 2 }'),
            "[ensemble.members[0].engine] key 'batch': unknown option (known: batch_size",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("a", engine="3"),
            "[ensemble.members[0]] key 'engine': expected an engine name or a table",
        ),
        (
            '[ensemble]\nkind = "voting"\n[[ensemble.members]]\nmodel = "a.pt"\n',
            "[ensemble.members[0]] key 'engine': is required",
        ),
        (
            '[ensemble]\nkind = "voting"\n[[ensemble.members]]\nengine = "lipschitz"\n',
            "[ensemble.members[0]] key 'model': is required",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("missing"),
            "[ensemble.members[0]] key 'model': model file",
        ),
        (
            '[ensemble]\nkind = "voting"\n' + _members("a", "a"),
            "[ensemble] key 'members': duplicate member name 'a'",
        ),
        (
            '[ensemble]\nkind = "voting"\nweights = [1]\n' + _members("a", "b"),
            "[ensemble] key 'weights': has 1 weights for 2 members",
        ),
        (
            '[ensemble]\nkind = "voting"\nweights = [1, 0]\n' + _members("a", "b"),
            "[ensemble] key 'weights': must be positive, found 0.0",
        ),
        (
            '[ensemble]\nkind = "voting"\nweights = [1, "x"]\n' + _members("a", "b"),
            "[ensemble] key 'weights': must hold numbers",
        ),
        (
            '[engine]\nname = "milp"\n[ensemble]\nkind = "voting"\n' + _members("a"),
            "top level key 'engine': is given with an [ensemble]",
        ),
        ("[data]\n", "top level key 'model': is required (or an [ensemble] table instead)"),
    ],
)
def test_ensemble_errors_name_the_file_table_and_key(models, text, fragment):
    path = _write(models, text + (DATA if "[data]" not in text else "") + PROPERTY)
    with pytest.raises(SpecFileError) as err:
        load_specfile(path)
    assert str(err.value).startswith(f"{path}: "), str(err.value)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "prop, fragment",
    [
        (
            '[[property]]\nkind = "relaxed_top_k"\nk = 2\neps = 0.1\n',
            "[property[0]] key 'kind': on the [ensemble]: a cascade ensemble certifies "
            "LocalRobustness only",
        ),
        (
            PROPERTY + '[property.engine]\nname = "milp"\n',
            "[property[0]] key 'engine': a property checked on the [ensemble] runs its members'",
        ),
    ],
)
def test_ensemble_property_errors_name_the_key(models, prop, fragment):
    path = _write(models, '[ensemble]\nkind = "cascade"\n' + _members("a") + DATA + prop)
    with pytest.raises(SpecFileError) as err:
        load_specfile(path)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)


# -- the command line ------------------------------------------------------------------------


def _spec(models, kind: str = "cascade", extra: str = "") -> str:
    return str(
        _write(
            models, f'[ensemble]\nkind = "{kind}"\n{extra}' + _members("a", "b") + DATA + PROPERTY
        )
    )


def test_cli_check_runs_the_ensemble_and_writes_json(models):
    out = models / "r.json"
    spec = _spec(models, "voting", "weights = [2, 1]\n")
    res = CliRunner().invoke(main, ["check", spec, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert re.search(r"^  engine +voting\[lipschitz,lipschitz\]$", res.output, re.M)
    assert "members         a (lipschitz), b (lipschitz)" in res.output
    assert re.search(r"^  point 0 +votes \d: ", res.output, re.M)
    assert "unsound" not in res.output
    (report,) = json.loads(out.read_text())["reports"]
    assert report["engine"] == "voting[lipschitz,lipschitz]"
    assert report["summary"]["points"] == 12
    assert all(r["detail"].startswith("votes ") for r in report["results"])
    direct = vs.check(
        load_specfile(spec).model_of(load_specfile(spec).properties[0]),
        vs.LocalRobustness(EPS, vs.Norm.L2),
        _data(12),
    )
    assert [r["verdict"] for r in report["results"]] == [r.verdict.value for r in direct.results]


def test_cli_check_on_a_cascade_warns_that_it_is_unsound(models):
    res = CliRunner().invoke(main, ["check", _spec(models), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.output and "unsound as published" in res.output
    assert re.search(r"^  point 0 +(a|b) certified class|no member certified", res.output, re.M)


def test_cli_check_refuses_an_engine_override_for_an_ensemble(models):
    spec = _spec(models)
    res = CliRunner().invoke(main, ["check", spec, "--engine", "milp"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{spec}: --engine milp cannot replace the engines" in res.output
    bad = _write(
        models,
        '[ensemble]\nkind = "cascade"\nweights = [1]\n' + _members("a") + DATA + PROPERTY,
        "bad.toml",
    )
    res = CliRunner().invoke(main, ["check", str(bad)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "bad.toml: [ensemble] key 'weights'" in res.output


# -- the exact audit on the command line -----------------------------------------------------

AUDIT_PROPERTY = (
    '[[property]]\nname = "robust-linf"\nkind = "local_robustness"\neps = 0.2\nnorm = "linf"\n'
)


@pytest.fixture
def edge(tmp_path):
    """A cascade spec with a known unsound point: member "edge" (y1 - y0 = 2 x0) certifies
    class 1 where x0 > 0.2 (l_inf eps 0.2), member "const" class 0 everywhere. At x = (0.15, 0)
    the cascade answers 0 ("const" certifies) but "edge" certifies 1 at (0.2+, .) in the ball;
    x = (-0.6, 0) is robust."""
    edge_net = Network((Dense(np.array([[-1.0, 0.0], [1.0, 0.0]]), np.zeros(2)),), (2,))
    const = Network((Dense(np.zeros((2, 2)), np.array([1.0, 0.0])),), (2,))
    save_model(edge_net, tmp_path / "edge.pt")
    save_model(const, tmp_path / "const.pt")
    np.savez(tmp_path / "pts.npz", x=np.array([[0.15, 0.0], [-0.6, 0.0]]), y=np.array([0, 0]))
    members = _members("edge", "const")
    data = '[data]\nsource = "npz:pts.npz"\nsplit = "all"\n'
    for kind in ("cascade", "voting"):
        _write(
            tmp_path,
            f'[ensemble]\nkind = "{kind}"\n' + members + data + AUDIT_PROPERTY,
            f"{kind}.toml",
        )
    return tmp_path


def test_cli_audit_finds_the_cascades_violation(edge):
    pytest.importorskip("cvxpy")
    out = edge / "a.json"
    res = CliRunner().invoke(main, ["audit", str(edge / "cascade.toml"), "--json", str(out)])
    assert res.exit_code == 1, res.output
    assert re.search(
        r"^  ensemble / solver +cascade\[lipschitz,lipschitz\] / exact milp$", res.output, re.M
    )
    assert re.search(r"^  proved robust +1$", res.output, re.M)
    assert re.search(r"^  VIOLATIONS +1$", res.output, re.M)
    assert (
        "! violated at point 0: the ensemble answers 0 and claims robustness, answers 1"
        in res.output
    )
    assert "edge certified class 1" in res.output and "    witness: [" in res.output
    assert res.output.rstrip().endswith("1 soundness violation(s)")
    (audit,) = json.loads(out.read_text())["audits"]
    assert audit["violated"] == 1 and audit["robust"] == 1 and audit["timeout"] == 0
    first, second = audit["results"]
    assert first["status"] == "violated" and first["witness_answer"] == 1
    assert first["witness"][0] >= 0.2 and second["status"] == "robust"


def test_cli_audit_of_voting_and_time_limits(edge):
    pytest.importorskip("cvxpy")
    res = CliRunner().invoke(main, ["audit", str(edge / "voting.toml")])
    assert res.exit_code == 0, res.output
    assert re.search(r"^  VIOLATIONS +0$", res.output, re.M)
    assert res.output.rstrip().endswith("0 soundness violation(s)")
    res = CliRunner().invoke(main, ["audit", str(edge / "cascade.toml"), "--timeout", "1e-9"])
    assert res.exit_code == 0, res.output
    assert re.search(r"^  timeout +2$", res.output, re.M)
    assert "0 soundness violation(s) (2 point(s) timed out: not proved robust)" in res.output


def test_cli_audit_refuses_other_solvers_and_engines_for_an_ensemble(edge):
    spec = str(edge / "cascade.toml")
    res = CliRunner().invoke(main, ["audit", spec, "--solver", "smt"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{spec}: the exact audit of an [ensemble] is a mixed-integer program" in res.output
    res = CliRunner().invoke(main, ["audit", spec, "--engine", "lipschitz"])
    assert res.exit_code == 2 and f"{spec}: --engine lipschitz cannot replace" in res.output
