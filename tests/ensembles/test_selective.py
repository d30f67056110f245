"""Selective ensembles: the binomial test against scipy, abstention, the impossibility
warning, the certified variant against sampling and attacks, spec files, the CLI, and
members trained by seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import verispec as vs
from verispec.cli import main
from verispec.engines.lipschitz import LipschitzEngine
from verispec.ensembles import (
    Member,
    MemberDecisions,
    SelectiveEnsemble,
    audit_ensemble,
    pvalue_in,
)
from verispec.ensembles.selective import NO_CLASS
from verispec.errors import SpecError, SpecFileError, UnsupportedError
from verispec.ir import Dense, ReLU
from verispec.modelfile import save_model
from verispec.network import Network
from verispec.results import Verdict
from verispec.specfile import ensemble_spec_text, load_specfile


def _net(seed: int, inputs: int = 2, classes: int = 3, hidden: int = 0) -> Network:
    rng = np.random.default_rng(seed)
    if not hidden:
        return Network(
            (Dense(rng.normal(size=(classes, inputs)), rng.normal(size=classes)),), (inputs,)
        )
    return Network(
        (
            Dense(rng.normal(size=(hidden, inputs)), rng.normal(size=hidden) * 0.1),
            ReLU(),
            Dense(rng.normal(size=(classes, hidden)), rng.normal(size=classes) * 0.1),
        ),
        (inputs,),
    )


def _ensemble(k: int, alpha: float, classes: int = 3) -> SelectiveEnsemble:
    return SelectiveEnsemble(
        [Member(_net(i, classes=classes), LipschitzEngine()) for i in range(k)], alpha
    )


def _decide(ensemble: SelectiveEnsemble, votes, certified=None):
    predicted = np.asarray(votes, dtype=np.int64).reshape(len(ensemble.members), -1)
    cert = np.zeros_like(predicted, dtype=bool) if certified is None else np.asarray(certified)
    return ensemble._combine(MemberDecisions(predicted, cert.reshape(predicted.shape), np.zeros(1)))


# -- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("votes", "alpha", "answer", "p"),
    [
        ([3] * 9 + [5], 0.05, 3, 22 / 1024),  # 2 (1 + 10) / 2^10
        ([3] * 8 + [5] * 2, 0.05, NO_CLASS, 112 / 1024),  # 2 (1 + 10 + 45) / 2^10
        ([1] * 7 + [2] * 2 + [0], 0.05, NO_CLASS, 2 * (1 + 9 + 36) / 512),  # 7 vs 2 only
        ([1] * 7 + [2] * 2 + [0], 0.2, 1, 2 * (1 + 9 + 36) / 512),
        ([4] * 5 + [6] * 5, 0.5, NO_CLASS, 1.0),  # a tie is never significant
        ([0] * 10, 0.05, 0, 2 / 1024),
    ],
)
def test_the_decision_matches_hand_computed_binomial_tests(votes, alpha, answer, p):
    ensemble = _ensemble(len(votes), alpha, classes=10)
    got = _decide(ensemble, votes)
    assert got.predicted.tolist() == [answer]
    assert got.abstained.tolist() == [answer == NO_CLASS]
    assert pvalue_in(got.details[0]) == pytest.approx(p, rel=1e-7)
    counts = np.bincount(votes, minlength=10)
    a, b = np.sort(counts)[-1], np.sort(counts)[-2]
    assert stats.binomtest(int(a), int(a + b), 0.5).pvalue == pytest.approx(p, rel=1e-12)


@settings(deadline=None, max_examples=60)
@given(
    st.integers(1, 25).flatmap(
        lambda k: st.tuples(st.just(k), st.lists(st.integers(0, 3), min_size=k, max_size=k))
    ),
    st.sampled_from([0.01, 0.05, 0.1, 0.3]),
)
def test_it_abstains_exactly_when_the_p_value_exceeds_alpha(spec, alpha):
    k, votes = spec
    with pytest.warns(UserWarning) if 2 * 0.5**k > alpha else _no_warning():
        ensemble = _ensemble(k, alpha, classes=4)
    got = _decide(ensemble, votes)
    counts = np.bincount(votes, minlength=4)
    top = int(np.argmax(counts))
    a, b = int(counts[top]), int(np.sort(counts)[-2])
    p = stats.binomtest(a, a + b, 0.5).pvalue
    assert bool(got.abstained[0]) == (p > alpha or a == b)
    assert got.predicted[0] == (NO_CLASS if got.abstained[0] else top)
    assert pvalue_in(got.details[0]) == pytest.approx(p, rel=1e-7)


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


def test_members_that_can_never_reach_alpha_are_warned_about():
    with pytest.warns(UserWarning, match=r"4 members can never reach alpha=0.05: .* p = 0.125"):
        ensemble = _ensemble(4, 0.05)
    assert ensemble.warning
    result = ensemble.check(vs.LocalRobustness(0.1, vs.Norm.L2), np.zeros((2, 2)))
    assert (result.verdicts == Verdict.ABSTAIN.code).all()
    assert "can never reach" in result.warnings[0][0]
    with _no_warning():  # 5 members, unanimous: p = 2 / 32 = 0.0625
        assert not _ensemble(5, 0.0625).warning
    with pytest.raises(SpecError, match="alpha must be in"):
        _ensemble(5, 1.5)


def test_the_certified_variant_counts_uncertified_members_as_movable():
    # 7 members at alpha 0.13: 7 vs 0 (p 0.016) and 6 vs 1 (p 0.125) reject, 5 vs 2 does not
    ensemble = _ensemble(7, 0.13)
    votes = [0] * 7
    one_loose = [True] * 6 + [False]
    two_loose = [True] * 5 + [False] * 2
    got = _decide(ensemble, votes + votes, np.array([one_loose, two_loose]).T)
    assert got.predicted.tolist() == [0, 0]
    assert got.certified.tolist() == [True, False]
    assert "worst case on the ball 5 vs 2" in got.details[1]
    rival = _decide(ensemble, [0] * 6 + [1], np.ones(7, dtype=bool))  # a certified rival vote
    assert rival.certified.tolist() == [True]  # 6 vs 1 is significant


@settings(deadline=None, max_examples=80)
@given(
    st.integers(3, 12).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.sampled_from([0, 0, 0, 0, 1, 2]), min_size=k, max_size=k),
            st.lists(st.booleans(), min_size=k, max_size=k).filter(lambda c: sum(c) >= k - 4),
        )
    ),
    st.sampled_from([0.02, 0.05, 0.13, 0.3]),
)
def test_certified_means_no_moving_of_uncertified_votes_changes_the_answer(spec, alpha):
    """The rule itself, against every adversary: each way the uncertified members can vote
    keeps a certified answer (the certified members keep theirs, as their engines proved)."""
    import itertools
    import warnings

    k, votes, certified = spec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ensemble = _ensemble(k, alpha)
    got = _decide(ensemble, votes, np.array(certified))
    if not got.certified[0]:
        return
    loose = [i for i in range(k) if not certified[i]]
    for moved in itertools.product(range(3), repeat=len(loose)):
        now = list(votes)
        for i, c in zip(loose, moved, strict=True):
            now[i] = c
        assert _decide(ensemble, now).predicted[0] == got.predicted[0], (votes, certified, now)


def _near(base: Network, seed: int, noise: float) -> Network:
    """``base`` with every weight and bias moved by Gaussian noise of scale ``noise``."""
    rng = np.random.default_rng(seed)
    layers = []
    for layer in base.layers:
        if isinstance(layer, Dense):
            w, b = layer.weight, layer.bias
            layer = Dense(
                w + noise * rng.normal(size=w.shape), b + noise * rng.normal(size=b.shape)
            )
        layers.append(layer)
    return Network(tuple(layers), base.input_shape)


@st.composite
def _problems(draw):
    """Members that mostly agree (one network plus noise), at a point and a radius scaled to
    the base network's margin there, so that some members certify and some do not."""
    k = draw(st.sampled_from([5, 7, 9]))
    alpha = {5: 0.07, 7: 0.13, 9: 0.1}[k]  # 5: all; 7: one loose vote; 9: 8 vs 1 (p 0.039)
    base = _net(draw(st.integers(0, 10**6)), hidden=draw(st.sampled_from([0, 4])))
    noise = draw(st.sampled_from([0.01, 0.05, 0.2]))
    members = [Member(_near(base, 1000 + i, noise), LipschitzEngine()) for i in range(k)]
    x = np.array(draw(st.lists(st.floats(-2, 2), min_size=2, max_size=2)))
    y = np.sort(base.forward64(x[None])[0])
    scale = draw(st.sampled_from([0.2, 0.5, 0.8, 1.0, 1.5]))
    eps = max(float(y[-1] - y[-2]) * scale / 2.0, 1e-3)
    norm = draw(st.sampled_from([vs.Norm.L2, vs.Norm.LINF]))
    return SelectiveEnsemble(members, alpha), x, vs.LocalRobustness(eps, norm)


def _ball_samples(x: np.ndarray, spec: vs.LocalRobustness, rng, count: int) -> np.ndarray:
    """Uniform directions on the sphere (l2) or corners and faces (l_inf), at radius eps and
    inside."""
    d = rng.normal(size=(count, x.size))
    if spec.norm is vs.Norm.L2:
        d /= np.linalg.norm(d, axis=1, keepdims=True)
    else:
        d = np.sign(d) * np.where(
            rng.random((count, x.size)) < 0.7, 1.0, rng.random((count, x.size))
        )
    scale = np.where(rng.random((count, 1)) < 0.5, 1.0, rng.random((count, 1)))
    return x + spec.eps * scale * d


def _attack(ensemble: SelectiveEnsemble, x: np.ndarray, spec: vs.LocalRobustness, target: int):
    """Points of the ball that push each member away from ``target`` (signed-gradient and
    normalised-gradient steps on its margin)."""
    out = []
    for m in ensemble.members:
        module = m.network.module(torch.float64)
        z = torch.tensor(x[None], requires_grad=True)
        logits = module(z)[0]
        others = torch.cat([logits[:target], logits[target + 1 :]])
        (others.max() - logits[target]).backward()
        assert z.grad is not None
        g = z.grad[0].numpy()
        l2 = spec.norm is vs.Norm.L2
        step = g / max(float(np.linalg.norm(g)), 1e-300) if l2 else np.sign(g)
        out.append(x + spec.eps * step)
    return np.array(out)


def _inside(points: np.ndarray, x: np.ndarray, spec: vs.LocalRobustness) -> np.ndarray:
    order = 2 if spec.norm is vs.Norm.L2 else np.inf
    return points[np.linalg.norm(points - x, ord=order, axis=1) <= spec.eps]


@settings(deadline=None, max_examples=60)
@given(_problems())
def test_a_certified_selective_answer_holds_on_the_whole_ball(problem):
    ensemble, x, spec = problem
    answer = ensemble.answer(spec, x[None])
    if not answer.certified[0]:
        return
    target = int(answer.predicted[0])
    rng = np.random.default_rng(0)
    probes = np.concatenate([_ball_samples(x, spec, rng, 400), _attack(ensemble, x, spec, target)])
    probes = _inside(probes, x, spec)
    votes = np.array([np.argmax(m.network.forward64(probes), axis=1) for m in ensemble.members])
    for p in range(len(probes)):
        got = _decide(ensemble, votes[:, p])
        assert got.predicted[0] == target, (probes[p], votes[:, p])


# -- spec files, the CLI and members by seed ---------------------------------------------------


def _write_members(tmp_path, k: int) -> list[str]:
    names = []
    for i in range(k):
        save_model(_net(i, inputs=64, classes=10, hidden=8), tmp_path / f"m{i}.pt")
        names.append(f"m{i}.pt")
    return names


def test_spec_files_name_the_kind_and_its_alpha(tmp_path):
    names = _write_members(tmp_path, 6)
    text = ensemble_spec_text("selective", names, "sklearn:digits", 0.1, "six members")
    path = tmp_path / "s.toml"
    path.write_text(text.replace('kind = "selective"', 'kind = "selective"\nalpha = 0.1'))
    sf = load_specfile(path, limit=5)
    assert isinstance(sf.ensemble.ensemble, SelectiveEnsemble)
    assert sf.ensemble.ensemble.alpha == 0.1 and len(sf.ensemble.ensemble.members) == 6
    path.write_text(text.replace('kind = "selective"', 'kind = "selective"\nalpha = 1.0'))
    with pytest.raises(SpecFileError, match=r"\[ensemble\] key 'alpha': must be in \(0, 1\)"):
        load_specfile(path)
    path.write_text(text.replace('kind = "selective"', 'kind = "voting"\nalpha = 0.1'))
    with pytest.raises(SpecFileError, match="'alpha': is an option of kind 'selective' only"):
        load_specfile(path)
    with pytest.raises(SpecError, match="unknown ensemble kind 'nope'"):
        ensemble_spec_text("nope", names, "sklearn:digits", 0.1)


def test_check_prints_abstentions_p_values_and_the_certified_share(tmp_path):
    names = _write_members(tmp_path, 6)
    path = tmp_path / "s.toml"
    path.write_text(ensemble_spec_text("selective", names, "sklearn:digits", 0.01))
    run = CliRunner().invoke(main, ["check", str(path), "--limit", "8"])
    assert run.exit_code == 0, run.output
    assert "abstentions" in run.output and "of 8" in run.output
    assert "p-values         min" in run.output
    assert "certified share" in run.output
    run = CliRunner().invoke(main, ["audit", str(path), "--solver", "milp", "--limit", "1"])
    # the exact audit encodes cascades and voting: the property is skipped, and says why
    assert "skipped: the exact audit encodes cascades and voting, not SelectiveEnsemble" in (
        run.output
    )


def test_audit_refuses_a_selective_ensemble_by_name():
    with pytest.raises(UnsupportedError, match="not SelectiveEnsemble"):
        audit_ensemble(_ensemble(5, 0.07), vs.LocalRobustness(0.1, vs.Norm.L2), np.zeros((1, 2)))


def test_members_trained_by_seed_are_identical_twice(tmp_path):
    args = [
        "train", "--data", "sklearn:digits", "--arch", "minmax-mlp", "--width", "8",
        "--depth", "1", "--epochs", "1", "--eval-limit", "20", "--seeds", "2", "--seed", "5",
        "--no-progress",
    ]  # fmt: skip
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        out = CliRunner().invoke(main, [*args, "--out", str(tmp_path / run / "e.pt")])
        assert out.exit_code == 0, out.output
    nets = {}
    for run in ("one", "two"):
        sf = load_specfile(tmp_path / run / "e.toml", limit=10)
        ensemble = sf.ensemble.ensemble
        assert [m.name for m in ensemble.members] == ["e_seed5", "e_seed6"]
        nets[run] = [m.network for m in ensemble.members]
    x = np.random.default_rng(0).random((5, 1, 8, 8))
    for a, b in zip(nets["one"], nets["two"], strict=True):
        assert np.array_equal(a.forward64(x), b.forward64(x))
    assert not np.array_equal(nets["one"][0].forward64(x), nets["one"][1].forward64(x))


def test_the_shipped_spec_prints_its_test_and_certified_share():
    from pathlib import Path

    spec = Path(__file__).resolve().parents[2] / "specs" / "selective.toml"
    run = CliRunner().invoke(main, ["check", str(spec), "--limit", "30", "--no-progress"])
    assert run.exit_code == 0, run.output
    assert "alpha            0.05 (10 members)" in run.output
    shares = [line for line in run.output.splitlines() if "certified share" in line]
    assert len(shares) == 1 and float(shares[0].split()[2]) > 0.5
    assert "abstentions" in run.output and "p-values" in run.output
