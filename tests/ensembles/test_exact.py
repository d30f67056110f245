"""The exact ensemble audit: a hand-built unsound cascade point is caught, every witness
re-checks (inside the ball and domain exactly, the ensemble's answer differs), whatever a dense
grid of the ball finds the audit finds too, Voting (sound) is never violated and its ROBUST
points survive sampling, a one-member cascade is never violated and its claims are its
member's certificates, time limits are TIMEOUT and foreign certifiers are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

from verispec.engines.exact import MilpEngine
from verispec.engines.lipschitz import LipschitzEngine
from verispec.engines.roundoff import RoundoffForward
from verispec.ensembles import (
    AuditStatus,
    Cascade,
    Ensemble,
    EnsembleAudit,
    Member,
    Voting,
    audit_ensemble,
    cascade_attack,
)
from verispec.ensembles.exact import ball_error_bounds, vote_gap
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.regions import Ball, Box, Norm
from verispec.results import Verdict
from verispec.specs import LocalRobustness

pytest.importorskip("cvxpy")

ENGINE = LipschitzEngine()
CERTIFIED = Verdict.CERTIFIED.code
TIMEOUT = 120.0  # generous: these nets decide in well under a second


def _net(rng: np.random.Generator, n_in: int, classes: int, hidden: int, scale: float) -> Network:
    layers: list[nn.Module] = []
    width = n_in
    if hidden:
        first = nn.Linear(n_in, hidden)
        layers += [first, nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.Linear):
                w = rng.normal(0, scale / np.sqrt(layer.in_features), layer.weight.shape)
                layer.weight.copy_(torch.from_numpy(w))
                layer.bias.copy_(torch.from_numpy(rng.normal(0, 0.5 * scale, layer.bias.shape)))
    return Network.from_torch(nn.Sequential(*layers), (n_in,))


@st.composite
def setups(draw: st.DrawFn, n_inputs: tuple[int, int] = (2, 4), members: tuple[int, int] = (2, 3)):
    """Random members on 2-4 inputs (0-6 hidden ReLUs), a spec, points and maybe a domain."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_in = draw(st.integers(*n_inputs))
    classes = draw(st.integers(2, 4))
    k = draw(st.integers(*members))
    nets = [
        _net(
            rng, n_in, classes, draw(st.sampled_from([0, 4, 6])), draw(st.sampled_from([1.0, 3.0]))
        )
        for _ in range(k)
    ]
    norm = draw(st.sampled_from([Norm.LINF, Norm.L2]))
    eps = draw(st.sampled_from([0.05, 0.1, 0.2, 0.3]))
    domain = Box.uniform(0.0, 1.0, (n_in,)) if draw(st.booleans()) else None
    lo = 0.0 if domain is not None else -1.0
    xs = rng.uniform(lo, 1.0, (4, n_in))
    return (
        [Member(n, ENGINE, f"m{i}") for i, n in enumerate(nets)],
        LocalRobustness(eps, norm),
        xs,
        domain,
    )


def _answer(ensemble: Ensemble, spec: LocalRobustness, x: np.ndarray, domain: Box | None) -> int:
    return int(ensemble.answer(spec, x[None], domain).predicted[0])


def _assert_witnesses(ensemble: Ensemble, spec, xs, domain, audit: EnsembleAudit) -> None:
    """Every VIOLATED point's witness lies in the closed ball and domain (exactly) and the
    ensemble, re-run there alone, answers the reported class, not the one at x."""
    for p in audit.violations:
        x = xs[p.index]
        assert p.witness is not None and p.witness_answer is not None
        assert Ball(x, spec.eps, spec.norm, domain).contains(p.witness)
        if domain is not None:
            assert domain.contains(p.witness)
        assert p.answer == _answer(ensemble, spec, x, domain)
        assert ensemble.answer(spec, x[None], domain).certified[0]
        got = _answer(ensemble, spec, p.witness, domain)
        assert got == p.witness_answer != p.answer


def _ball_grid(x: np.ndarray, spec: LocalRobustness, domain: Box | None, n: int = 61) -> np.ndarray:
    """A dense grid of the 2-input ball (strictly inside it and inside the domain)."""
    r = spec.eps * (1 - 1e-9)
    axes = [np.linspace(x[i] - r, x[i] + r, n) for i in range(2)]
    grid = np.stack(np.meshgrid(*axes), axis=-1).reshape(-1, 2)
    if spec.norm is Norm.L2:
        grid = grid[np.linalg.norm(grid - x, axis=1) <= r]
    if domain is not None:
        grid = grid[np.all((grid >= domain.lo) & (grid <= domain.hi), axis=1)]
    return grid


def _changes(ensemble: Ensemble, spec, x, domain, points: np.ndarray, answer: int) -> list:
    """Points whose ensemble answer, re-run one at a time, differs from ``answer`` (screened
    by one batched pass)."""
    if not len(points):
        return []
    batch = ensemble.answer(spec, points, domain).predicted
    out = []
    for i in np.flatnonzero(batch != answer)[:20].tolist():
        if _answer(ensemble, spec, points[i], domain) != answer:
            out.append(points[i])
    return out


# -- a known unsound point ----------------------------------------------------------------------


def _linear(W, b) -> Network:
    layer = nn.Linear(len(W[0]), len(W))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W, dtype=torch.float64))
        layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return Network.from_torch(nn.Sequential(layer), (len(W[0]),))


def _relu_net(W1, b1, W2, b2) -> Network:
    first, head = nn.Linear(len(W1[0]), len(W1)), nn.Linear(len(W2[0]), len(W2))
    with torch.no_grad():
        for layer, (W, b) in ((first, (W1, b1)), (head, (W2, b2))):
            layer.weight.copy_(torch.tensor(W, dtype=torch.float64))
            layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    return Network.from_torch(nn.Sequential(first, nn.ReLU(), head), (len(W1[0]),))


EDGE = ([[-1.0, 0.0], [1.0, 0.0]], [0.0, 0.0])
"""y1 - y0 = 2 x0, K_10 = 2 (both norms): class 1 certified iff x0 > eps (up to roundoff),
class 0 iff x0 < -eps."""
CONSTANT_0 = ([[0.0, 0.0], [0.0, 0.0]], [1.0, 0.0])
"""Constant logits (K = 0): class 0 certified everywhere."""


def _never(offset: float) -> Network:
    """y1 - y0 = offset + 10 x1 through [relu(x1), relu(-x1)]: K_10 = 14.1 (l2) or 20 (l_inf)
    is so loose that for eps 0.2 near x1 = 0 (|y1 - y0| <= 2.01) nothing is ever certified."""
    return _relu_net(
        [[0.0, 1.0], [0.0, -1.0]], [0.0, 0.0], [[0.0, 0.0], [10.0, -10.0]], [0.0, offset]
    )


SCENARIOS = {
    # member 0 starts to certify class 1 at x0 > 0.2, before the certifier of class 0
    "first member": (lambda: [_linear(*EDGE), _linear(*CONSTANT_0)], 0.15, 0.001, 0.3),
    # member 0 never certifies; member 1 (the edge) does at x0 > 0.2, before member 2
    "second member": (
        lambda: [_never(-0.01), _linear(*EDGE), _linear(*CONSTANT_0)],
        0.15,
        0.001,
        0.3,
    ),
    # member 0 certifies class 0 at x0 = -0.25 but not at x0 > -0.2; the last member never
    # certifies and predicts class 1 wherever x1 > -0.001: only the fallback changes
    "fallback": (lambda: [_linear(*EDGE), _never(0.01)], -0.25, -0.399, -0.1),
}
"""Per scenario: the members, x0 of a claimed point whose ball holds a change, x0 of one whose
ball reaches the change by 0.001 only (a certification or refusal by a margin of 0.002), and
x0 of a point where the answer changes."""


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_hand_built_unsound_cascade_points_are_caught(scenario, norm):
    """Cascades with a known unsound point, one per way the answer can change (an earlier
    member, a later member, the uncertified fallback): the cascade answers 0 at x and claims
    robustness, yet answers 1 at a point of the ball; the audit reports VIOLATED with a witness
    that re-checks, also where the change is reached by a hair. Far from the edge (x0 = -0.6
    for the first two) it proves ROBUST."""
    nets, x0, barely, changed = SCENARIOS[scenario]
    cascade = Cascade([Member(n, ENGINE, f"m{i}") for i, n in enumerate(nets())])
    spec = LocalRobustness(0.2, norm)
    xs = np.array([(x0, 0.0), (barely, 0.0), (-0.6, 0.0)])
    claims = cascade.answer(spec, xs[:2])
    assert claims.certified.all() and not claims.predicted.any()
    assert _answer(cascade, spec, np.array([changed, 0.0]), None) == 1
    audit = audit_ensemble(cascade, spec, xs, timeout=TIMEOUT)
    *near, far = audit.points
    for point in near:
        assert point.status is AuditStatus.VIOLATED, point
        assert point.answer == 0 and point.witness_answer == 1
    _assert_witnesses(cascade, spec, xs, None, audit)
    if scenario != "fallback":
        assert far.status is AuditStatus.ROBUST, far
        assert audit.counts["violated"] == 2 and audit.counts["robust"] == 1
    json.dumps(audit.to_dict())
    assert audit.summary()["points"] == 3


# -- random ensembles ---------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(setups())
def test_witnesses_recheck(setup):
    """Cascades of random members on 2-4 inputs: no TIMEOUT with a generous limit, every
    witness re-checks, NOT_CLAIMED exactly where the cascade claims nothing."""
    members, spec, xs, domain = setup
    cascade = Cascade(members)
    audit = audit_ensemble(cascade, spec, xs, domain, timeout=TIMEOUT)
    claims = cascade.answer(spec, xs, domain)
    for p in audit.points:
        event(f"cascade audit: {p.status.value}")
        assert p.status is not AuditStatus.TIMEOUT, p
        alone = cascade.answer(spec, xs[p.index][None], domain)
        assert (p.status is AuditStatus.NOT_CLAIMED) == (not alone.certified[0])
        assert p.answer == int(alone.predicted[0])
    assert len(audit.points) == len(claims.predicted)
    _assert_witnesses(cascade, spec, xs, domain, audit)


@settings(max_examples=15, deadline=None)
@given(setups(n_inputs=(2, 2)))
def test_dense_grid_changes_are_found(setup):
    """2-input cascades: wherever a 61 x 61 grid of the ball finds the cascade's answer
    changing at a claimed point, the audit reports VIOLATED (with a witness that re-checks);
    wherever the audit says ROBUST the grid finds no change."""
    members, spec, xs, domain = setup
    cascade = Cascade(members)
    audit = audit_ensemble(cascade, spec, xs, domain, timeout=TIMEOUT)
    _assert_witnesses(cascade, spec, xs, domain, audit)
    for p in audit.points:
        if p.status is AuditStatus.NOT_CLAIMED:
            continue
        x = xs[p.index]
        found = _changes(cascade, spec, x, domain, _ball_grid(x, spec, domain), p.answer)
        event(f"grid finds a change: {bool(found)}; audit: {p.status.value}")
        if found:
            assert p.status is AuditStatus.VIOLATED, (p, found[0])
        if p.status is AuditStatus.ROBUST:
            assert not found


@settings(max_examples=6, deadline=None)
@given(setups(members=(2, 3)))
def test_exact_audit_finds_every_casa_witness(setup):
    """Wherever the cascade attack (CasA, incomplete) finds a witness, the exact audit (complete
    up to its tolerance) reports VIOLATED; where the audit proves ROBUST, CasA finds nothing."""
    members, spec, xs, domain = setup
    cascade = Cascade(members)
    attack = cascade_attack(cascade, spec, xs, domain)
    audit = audit_ensemble(cascade, spec, xs, domain, timeout=TIMEOUT)
    _assert_witnesses(cascade, spec, xs, domain, audit)
    for p, witness in zip(audit.points, attack.witnesses, strict=True):
        event(f"CasA witness: {witness is not None}; audit: {p.status.value}")
        if witness is not None:
            assert p.status is AuditStatus.VIOLATED, p
        if p.status is AuditStatus.ROBUST:
            assert witness is None


def _sample_ball(rng, x, spec: LocalRobustness, domain: Box | None, n: int = 400) -> np.ndarray:
    d = x.size
    u = rng.normal(size=(n, d))
    if spec.norm is Norm.LINF:
        pts = x + spec.eps * rng.uniform(-1, 1, (n, d))
        pts[: n // 2] = x + spec.eps * np.sign(u[: n // 2])  # corners
    else:
        radius = spec.eps * rng.uniform(0, 1, (n, 1)) ** (1 / d)
        radius[: n // 2] = spec.eps * (1 - 1e-12)  # the sphere
        pts = x + radius * u / np.linalg.norm(u, axis=1, keepdims=True)
    if domain is not None:
        pts = np.clip(pts, domain.lo, domain.hi)
    ball = Ball(x, spec.eps, spec.norm, domain)
    return np.array([p for p in (ball.inside(q) for q in pts) if p is not None])


@settings(max_examples=10, deadline=None)
@given(
    setups(members=(2, 4)),
    st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=4, max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_voting_is_never_violated(setup, weights, seed):
    """The control: Voting is sound, so the audit never finds a violation (any weights), and
    sampling the ball (and the dense grid, for 2 inputs) confirms every ROBUST point."""
    members, spec, xs, domain = setup
    voting = Voting(members, weights[: len(members)])
    audit = audit_ensemble(voting, spec, xs, domain, timeout=TIMEOUT)
    assert not audit.violations, audit.violations[0]
    rng = np.random.default_rng(seed)
    for p in audit.points:
        event(f"voting audit: {p.status.value}")
        assert p.status is not AuditStatus.TIMEOUT, p
        if p.status is not AuditStatus.ROBUST:
            continue
        x = xs[p.index]
        points = _sample_ball(rng, x, spec, domain)
        if x.size == 2:
            points = np.concatenate([points, _ball_grid(x, spec, domain, 31)])
        assert not _changes(voting, spec, x, domain, points, p.answer)


@settings(max_examples=10, deadline=None)
@given(setups(members=(1, 1)), st.integers(0, 2**32 - 1))
def test_one_member_cascade_is_its_member(setup, seed):
    """A one-member cascade is as sound as its certifier: never VIOLATED, claimed exactly where
    the member is certified, and a ROBUST point answers the member's certified class."""
    members, spec, xs, domain = setup
    cascade = Cascade(members)
    audit = audit_ensemble(cascade, spec, xs, domain, timeout=TIMEOUT)
    member = members[0]
    rng = np.random.default_rng(seed)
    for p in audit.points:
        event(f"one-member audit: {p.status.value}")
        assert p.status is not AuditStatus.VIOLATED, p
        assert p.status is not AuditStatus.TIMEOUT, p
        alone = ENGINE.check(member.network, spec, xs[p.index][None], None, domain)
        certified = bool(alone.verdicts[0] == CERTIFIED)
        if p.status is AuditStatus.ROBUST:
            assert certified
            assert p.answer == int(alone.predicted[0])
            x = xs[p.index]
            assert not _changes(
                cascade, spec, x, domain, _sample_ball(rng, x, spec, domain), p.answer
            )
        if p.status is AuditStatus.NOT_CLAIMED:
            assert not certified


# -- limits, refusals, pieces ---------------------------------------------------------------------


def test_time_limit_is_timeout_never_robust():
    first = _linear([[-1.0, 0.0], [1.0, 0.0]], [0.0, 0.0])
    second = _linear([[0.0, 0.0], [0.0, 0.0]], [1.0, 0.0])
    cascade = Cascade([Member(first, ENGINE), Member(second, ENGINE)])
    audit = audit_ensemble(
        cascade, LocalRobustness(0.2, Norm.LINF), np.array([[-0.6, 0.0]]), timeout=1e-9
    )
    assert [p.status for p in audit.points] == [AuditStatus.TIMEOUT]
    assert audit.counts["timeout"] == 1
    # the budget is checked before each member's bounds (large members overran it by minutes)
    assert "while bounding the members" in audit.points[0].detail


def test_members_of_other_engines_are_refused():
    net = _linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    cascade = Cascade([Member(net, ENGINE, "lip"), Member(net, MilpEngine(), "exact one")])
    with pytest.raises(UnsupportedError, match="exact one"):
        audit_ensemble(cascade, LocalRobustness(0.1, Norm.LINF), np.zeros((1, 2)))


def test_statuses_are_lower_case():
    assert {s.value for s in AuditStatus} == {
        "violated",
        "robust",
        "not_claimed",
        "timeout",
        "unknown",
    }


def test_vote_gap_is_the_smallest_positive_signed_sum():
    assert vote_gap([1.0, 1.0]) == pytest.approx(1.0)
    assert 0 < vote_gap([1.0, 0.7, 0.2]) <= 0.1  # 1 - 0.7 - 0.2
    assert vote_gap([2.0]) <= 2.0
    assert vote_gap([1.0] * 20) == 0.0  # beyond the exact enumeration: only >= 0 is known


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_error_bounds_cover_the_ball(norm):
    """The engine's roundoff bound and the float64 pass's, at points of the ball (its
    corners / sphere), never exceed the audit's bounds for the ball, which are not vacuous."""
    rng = np.random.default_rng(3)
    net = _net(rng, 3, 3, 6, 3.0)
    x = rng.uniform(-1, 1, 3)
    spec = LocalRobustness(0.5, norm)
    e32, e64 = ball_error_bounds(ENGINE, net, x, spec)
    pts = _sample_ball(rng, x, spec, None, 256)
    _, err = ENGINE._forward(net)(pts)
    _, err64 = RoundoffForward(
        net, [e.lip for e in ENGINE._forward(net).errors], torch.float64, torch.device("cpu")
    )(pts)
    assert np.all(err <= e32) and np.all(err64 <= e64)
    assert e32 < 10 * err.max() and e64 < 10 * err64.max()
    assert 0 < e64 < e32
