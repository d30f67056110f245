# ruff: noqa: E501
import shutil
from pathlib import Path

import pytest

from verispec.errors import SpecFileError
from verispec.regions import Box, Norm, Polytope
from verispec.specfile import load_specfile
from verispec.specs import Affinity, LocalRobustness, RelaxedTopK, SafeOrdering

ROOT = Path(__file__).resolve().parents[1]
HEADER = """model = "m.pt"
[data]
source = "sklearn:digits"
"""


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(ROOT / "specs/models/digits_mlp.pt", tmp_path / "m.pt")
    return tmp_path


def _load(workdir, text):
    path = workdir / "s.toml"
    path.write_text(text)
    return load_specfile(path)


def test_default_spec_file_parses_every_kind():
    sf = load_specfile(ROOT / "specs/digits.toml")
    kinds = {type(p.spec) for p in sf.properties}
    assert kinds == {LocalRobustness, RelaxedTopK, Affinity, SafeOrdering}
    assert sf.radii == (0.1, 0.3, 0.5, 1.0)
    lr = sf.properties[1].spec
    assert isinstance(lr, LocalRobustness)
    assert lr.norm is Norm.LINF and lr.eps == 0.02
    assert sf.properties[1].radii == (0.01, 0.02, 0.05, 0.1) and sf.properties[0].radii is None


def test_full_example(workdir):
    sf = _load(
        workdir,
        HEADER
        + """split = "train"
limit = 7
[engine]
name = "lipschitz"
batch_size = 16
precision = "float64"
[[property]]
kind = "safe_ordering"
postcondition = [["y1 > y2"], "y3 > y2"]
predicted_in = [1]
[property.precondition]
lo = 0.0
hi = 0.5
A = [[1.0, ZEROS]]
b = [3.0]
""".replace("ZEROS", ", ".join(["0.0"] * 63)),
    )
    assert sf.limit == 7 and sf.engine_config.batch_size == 16
    spec = sf.properties[0].spec
    assert isinstance(spec.precondition, Polytope) and isinstance(spec.precondition.box, Box)
    assert len(spec.postcondition.clauses) == 2 and spec.predicted_in == {1}


@pytest.mark.parametrize(
    "body, fragment",
    [
        (
            '[[property]]\nkind = "local_robustness"\neps = 0.3\nnrom = "l2"\n',
            "[property[0]] key 'nrom': unknown key",
        ),
        ('[[property]]\nkind = "local_robustness"\neps = -1\n', "key 'eps': must be > 0"),
        ('[[property]]\nkind = "local_robustness"\neps = "big"\n', "key 'eps': expected a number"),
        ('[[property]]\nkind = "local_robustness"\neps = 0.1\nnorm = "l3"\n', "key 'norm'"),
        ('[[property]]\nkind = "robustness"\neps = 0.1\n', "key 'kind': unknown kind"),
        ('[[property]]\nkind = "relaxed_top_k"\neps = 0.1\nk = 11\n', "key 'k': must be in 1..10"),
        (
            '[[property]]\nkind = "affinity"\neps = 0.1\ngroups = [[1, 12]]\n',
            "key 'groups': class 12",
        ),
        ('[[property]]\nkind = "affinity"\neps = 0.1\ngroups = [[1, 2], [2]]\n', "overlaps"),
        (
            '[[property]]\nkind = "safe_ordering"\npostcondition = [["y1 >> y2"]]\n[property.precondition]\nlo=0\nhi=1\n',
            "key 'postcondition'",
        ),
        (
            '[[property]]\nkind = "safe_ordering"\npostcondition = [["y1 > y2"]]\n[property.precondition]\nlo=[0, 1]\nhi=1\n',
            "[property[0].precondition] key 'lo': has 2 values",
        ),
        (
            '[[property]]\nkind = "safe_ordering"\npostcondition = [["y1 > y2"]]\n[property.precondition]\ncenter="data:9999"\nradius=0.1\n',
            "key 'center': index 9999",
        ),
        (
            '[engine]\nname = "magic"\n[[property]]\nkind = "local_robustness"\neps = 0.1\n',
            "[engine] key 'name': unknown engine",
        ),
        (
            '[engine]\nbatch = 3\n[[property]]\nkind = "local_robustness"\neps = 0.1\n',
            "[engine] key 'batch': unknown option",
        ),
        (
            '[engine]\nbatch_size = 0\n[[property]]\nkind = "local_robustness"\neps = 0.1\n',
            "invalid engine options",
        ),
    ],
)
def test_errors_name_the_table_and_key(workdir, body, fragment):
    with pytest.raises(SpecFileError) as err:
        _load(workdir, HEADER + body)
    assert fragment in str(err.value)
    assert "s.toml" in str(err.value)


def test_file_level_errors(workdir):
    with pytest.raises(SpecFileError, match="top level key 'extra': unknown key"):
        _load(workdir, "extra = 1\n" + HEADER + '[[property]]\nkind="local_robustness"\neps=0.1\n')
    with pytest.raises(SpecFileError, match="does not exist"):
        load_specfile(workdir / "none.toml")
    with pytest.raises(SpecFileError, match="not valid TOML"):
        _load(workdir, "model = \n")
    with pytest.raises(SpecFileError, match=r"key 'model'.*does not exist"):
        _load(workdir, 'model = "x.pt"\n[[property]]\nkind="local_robustness"\neps=0.1\n')
    with pytest.raises(SpecFileError, match=r"\[data\] key 'source'"):
        _load(workdir, 'model = "m.pt"\n[data]\nsource = "foo:bar"\n')
    with pytest.raises(SpecFileError, match="key 'data': point properties need"):
        _load(workdir, 'model = "m.pt"\n[[property]]\nkind="local_robustness"\neps=0.1\n')


def test_a_property_may_bring_its_own_model_and_engine(workdir):
    shutil.copy(ROOT / "specs/models/digits_noise.pt", workdir / "noise.pt")
    sf = _load(
        workdir,
        HEADER
        + '[[property]]\nkind = "local_robustness"\neps = 0.3\n'
        + '[[property]]\nkind = "local_robustness"\neps = 0.3\nmodel = "noise.pt"\n'
        + '[property.engine]\nname = "smoothing"\nsigma = 0.5\nn = 500\n',
    )
    first, second = sf.properties
    assert first.network is None and first.engine_name is None
    assert second.network is not None and second.network is not sf.network
    assert second.engine_name == "smoothing"
    assert second.engine_config.sigma == 0.5 and second.engine_config.n == 500


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('model = "missing.pt"\n', "[property[0]] key 'model'"),
        ('[property.engine]\nname = "nope"\n', "[property[0].engine] key 'name'"),
        (
            '[property.engine]\nname = "smoothing"\nsigma = "big"\n',
            "[property[0].engine] key 'sigma'",
        ),
        ('[property.engine]\nname = "smoothing"\nbogus = 1\n', "[property[0].engine] key 'bogus'"),
    ],
)
def test_property_model_and_engine_errors_name_the_key(workdir, body, fragment):
    text = HEADER + '[[property]]\nkind = "local_robustness"\neps = 0.3\n' + body
    with pytest.raises(SpecFileError) as err:
        _load(workdir, text)
    assert fragment in str(err.value)
