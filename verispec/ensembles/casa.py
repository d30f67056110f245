"""CasA, the cascade attack (Mangal et al., *On the Perils of Cascading Robust Classifiers*,
ICLR 2023): points x' in the ball of a point the cascade "certified" where its answer changes.

At x the cascade answers class a with the first member f that certifies x (``Cascade``). At
x' in B(x, eps) (and the data domain) its answer is another class when, for some member j and
class t != a,

- members 0 .. j-1 do not certify at x' and member j certifies t there, or
- no member certifies at x' and the last member's prediction is t.

For a member certified by the Lipschitz engine, with float64 logits y and pairwise constants
K (``LipschitzEngine.bounds(network, norm).pairwise()``), certification of class c at x' is
(up to the float error of the engine's pass) the margin min_{l != c} (y_c - y_l - eps K_cl)
being > 0. CasA minimises hinge losses on these margins (members 0 .. j-1 below -kappa_i,
member j's margin for t above kappa_j, or the last member's t above its other logits by
kappa), by projected gradient steps in float64 torch (sign steps for l_inf, normalised
gradient steps for l2, the step length decaying) inside the ball and the domain, for every
target (j, t), from x itself and from the best of seeded uniform draws of the ball. Targets
the certificate at x rules out are skipped: the member that certified a at x certifying
another class, and, when that member is the last, the member-less answer.

**Guarantee**: every witness returned has been moved exactly into the closed ball and the
domain (``Ball.inside``) and re-checked by the cascade itself, one point at a time:
``cascade.answer(spec, x'[None], domain)`` predicts a class different from
``cascade.answer(spec, x[None], domain)``, which claims robustness. The attack is incomplete:
finding nothing proves nothing. Same inputs and config give the same witnesses.
"""

from __future__ import annotations

import math
import time
from typing import Any

import attrs
import numpy as np
import torch

from verispec.engines.base import validate_points
from verispec.engines.lipschitz import LipschitzEngine
from verispec.ensembles.members import Cascade
from verispec.errors import UnsupportedError
from verispec.options import resolve_device
from verispec.regions import Ball, Box, FloatArray, Norm
from verispec.specs import LocalRobustness

NO_MEMBER = -1
"""``CasaResult.member`` / ``CasaResult.witness_class`` where a point has no witness."""


@attrs.frozen
class CasaConfig:
    """Options of the cascade attack.

    ``steps`` gradient steps per run; ``restarts`` runs per (point, target): the first from x
    itself, the others from the lowest-loss of ``samples`` uniform draws of the ball;
    ``step_size`` the step length as a fraction of eps (cosine decay to 1/50 of it over the
    steps); ``kappa`` the overshoot of the hinges, as a fraction of eps times the member's
    largest pairwise constant; ``seed`` the random draws (one stream per point: its draws do
    not depend on the other points); ``device`` where the torch passes run; ``batch_size`` the
    most rows (point, target, restart) attacked at once.
    """

    steps: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    restarts: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    step_size: float = attrs.field(default=0.25, converter=float, validator=attrs.validators.gt(0))
    kappa: float = attrs.field(default=0.02, converter=float, validator=attrs.validators.ge(0))
    seed: int = 0
    device: str = "cpu"
    samples: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    batch_size: int = attrs.field(default=4096, validator=attrs.validators.gt(0))


@attrs.frozen(eq=False)
class CasaResult:
    """The attack on n points.

    ``witnesses`` per point: x' (input shape, float64) in the ball and domain where the cascade,
    re-checked at x' alone, answers another class than at x; None where the cascade does not
    claim robustness at x or no witness was found. ``claimed`` (n,): the cascade claimed
    robustness at x. ``predicted`` (n,): the cascade's class at x. ``member`` (n,): the member
    that answered at the witness (``NO_MEMBER`` without one); ``member_certified`` (n,): whether
    it certified there (False: no member certified and the last one answered);
    ``witness_class`` (n,): the cascade's class at the witness (``NO_MEMBER`` without one).
    ``time_s``: seconds the attack took.
    """

    witnesses: tuple[FloatArray | None, ...]
    claimed: np.ndarray
    predicted: np.ndarray
    member: np.ndarray
    member_certified: np.ndarray
    witness_class: np.ndarray
    time_s: float = 0.0

    @property
    def broken(self) -> np.ndarray:
        """(n,) bool: a witness was found."""
        return np.array([w is not None for w in self.witnesses], dtype=bool)


@attrs.frozen(eq=False)
class _Member:
    """A member as the attack sees it: its float64 torch module, K (m, m) and overshoot."""

    module: torch.nn.Module
    pair_k: torch.Tensor
    kappa: float


def _lipschitz_members(cascade: Cascade) -> None:
    """Raise UnsupportedError unless every member is certified by the Lipschitz engine."""
    for i, m in enumerate(cascade.members):
        if not isinstance(m.engine, LipschitzEngine):
            raise UnsupportedError(
                f"CasA needs members certified by the lipschitz engine: {m.label(i)} is "
                f"certified by {getattr(m.engine, 'name', type(m.engine).__name__)!r}"
            )


def _prepare(
    cascade: Cascade, spec: LocalRobustness, config: CasaConfig, device: torch.device
) -> list[_Member]:
    """The members' float64 modules on ``device``, their K and overshoots."""
    out = []
    for m in cascade.members:
        assert isinstance(m.engine, LipschitzEngine)  # _lipschitz_members checked it
        pair_k = m.engine.bounds(m.network, spec.norm).pairwise()
        module = m.network.module(torch.float64, device)
        for p in module.parameters():
            p.requires_grad_(False)
        k_max = float(np.max(pair_k, initial=0.0))
        kappa = config.kappa * spec.eps * k_max + 1e-12
        out.append(_Member(module, torch.tensor(pair_k, dtype=torch.float64, device=device), kappa))
    return out


def _targets(k: int, m: int, first: int, answer: int) -> list[tuple[int, int]]:
    """The (j, t) to try at a point where member ``first`` certified ``answer``: j < k the member
    to certify t at x', j = k no member certifying and the last one predicting t. Member
    ``first`` cannot certify t != answer inside the ball of a point it certified (its
    certificate), and with ``first`` the last member no member-less answer can change."""
    out = [(j, t) for j in range(k) if j != first for t in range(m) if t != answer]
    if first != k - 1:
        out += [(k, t) for t in range(m) if t != answer]
    return out


def _uniform(
    centre: FloatArray, spec: LocalRobustness, domain: Box | None, n: int, rng: np.random.Generator
) -> FloatArray:
    """``n`` uniform points (n, d) of the ball around ``centre``, clipped into the domain."""
    d = centre.size
    if spec.norm is Norm.LINF:
        step = rng.uniform(-spec.eps, spec.eps, size=(n, d))
    else:
        direction = rng.standard_normal((n, d))
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-300)
        step = direction * (spec.eps * rng.uniform(0.0, 1.0, size=(n, 1)) ** (1.0 / max(d, 1)))
    out = centre.reshape(1, d) + step
    if domain is not None:
        out = np.clip(out, domain.lo.reshape(1, d), domain.hi.reshape(1, d))
    return np.asarray(out)


def _margins(y: torch.Tensor, pair_k: torch.Tensor, eps: float) -> torch.Tensor:
    """(R, m): the certification margin min_{l != c} (y_c - y_l - eps K_cl) of every class c."""
    m = y.shape[1]
    diff = y[:, :, None] - y[:, None, :] - eps * pair_k[None]
    eye = torch.eye(m, dtype=torch.bool, device=y.device)
    diff = diff.masked_fill(eye[None], float("inf"))
    return diff.amin(dim=2)


def _loss(
    members: list[_Member],
    x: torch.Tensor,
    shape: tuple[int, ...],
    eps: float,
    target_j: torch.Tensor,
    target_t: torch.Tensor,
) -> torch.Tensor:
    """(R,) the hinge loss of each row: 0 once every condition of its target holds with the
    overshoot."""
    k = len(members)
    rows = torch.arange(x.shape[0], device=x.device)
    inputs = x.reshape((-1, *shape))
    loss = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i, mem in enumerate(members):
        y = mem.module(inputs)
        margins = _margins(y, mem.pair_k, eps)
        below = torch.relu(margins.amax(dim=1) + mem.kappa)  # member i does not certify
        loss = loss + torch.where(target_j > i, below, torch.zeros_like(below))
        here = target_j == i
        if bool(here.any()):
            certify = torch.relu(mem.kappa - margins[rows, target_t])  # member i certifies t
            loss = loss + torch.where(here, certify, torch.zeros_like(certify))
        if i == k - 1:
            none = target_j == k
            if bool(none.any()):
                others = y.clone()
                others[rows, target_t] = -float("inf")
                wins = torch.relu(others.amax(dim=1) - y[rows, target_t] + mem.kappa)
                loss = loss + torch.where(none, wins, torch.zeros_like(wins))
    return loss


def _project(
    x: torch.Tensor,
    centre: torch.Tensor,
    spec: LocalRobustness,
    lo: torch.Tensor | None,
    hi: torch.Tensor | None,
) -> torch.Tensor:
    """Rows of ``x`` onto the ball around their centres, then clipped into the domain (this
    stays in the ball: the centres lie in the domain). Exactness is left to ``Ball.inside``."""
    d = x - centre
    if spec.norm is Norm.LINF:
        d = d.clamp(-spec.eps, spec.eps)
    else:
        norms = d.norm(dim=1, keepdim=True).clamp_min(1e-300)
        d = d * torch.clamp(spec.eps / norms, max=1.0)
    out = centre + d
    if lo is not None and hi is not None:
        out = torch.maximum(torch.minimum(out, hi), lo)
    return out


@attrs.frozen(eq=False)
class _Attack:
    """What every chunk of the attack shares."""

    cascade: Cascade
    spec: LocalRobustness
    domain: Box | None
    config: CasaConfig
    device: torch.device
    members: list[_Member]


@attrs.define(eq=False)
class _Found:
    """The witnesses found so far, per point (filled in place)."""

    witnesses: list[FloatArray | None]
    member: np.ndarray
    member_certified: np.ndarray
    witness_class: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Found:
        return cls(
            [None] * n,
            np.full(n, NO_MEMBER, dtype=np.int64),
            np.zeros(n, dtype=bool),
            np.full(n, NO_MEMBER, dtype=np.int64),
        )


@attrs.frozen(eq=False)
class _Plan:
    """One point's runs: its index, targets (T, 2) as (j, t) and its random stream."""

    point: int
    targets: np.ndarray
    rng: np.random.Generator

    @property
    def rows(self) -> int:
        return len(self.targets)


def _run(
    attack: _Attack,
    starts: FloatArray,
    centres: FloatArray,
    targets: np.ndarray,
) -> tuple[FloatArray, FloatArray]:
    """PGD on the rows: each row's lowest-loss iterate (R, d) and that loss (R,)."""
    spec, config, device, domain = attack.spec, attack.config, attack.device, attack.domain
    shape = attack.cascade.input_shape
    f64 = torch.float64
    c = torch.tensor(centres, dtype=f64, device=device)
    tj = torch.tensor(targets[:, 0], dtype=torch.int64, device=device)
    tt = torch.tensor(targets[:, 1], dtype=torch.int64, device=device)
    lo = hi = None
    if domain is not None:
        lo = torch.tensor(domain.lo.reshape(1, -1), dtype=f64, device=device)
        hi = torch.tensor(domain.hi.reshape(1, -1), dtype=f64, device=device)
    x = torch.tensor(starts, dtype=f64, device=device)
    best = x.detach().clone()
    best_loss = torch.full((x.shape[0],), float("inf"), dtype=f64, device=device)
    sign_steps = spec.norm is Norm.LINF
    for step in range(config.steps + 1):
        x.requires_grad_(True)
        loss = _loss(attack.members, x, shape, spec.eps, tj, tt)
        with torch.no_grad():
            better = loss < best_loss  # never NaN: a non-finite iterate is never kept
            best = torch.where(better[:, None], x.detach(), best)
            best_loss = torch.where(better, loss.detach(), best_loss)
        if step == config.steps or bool((best_loss == 0).all()):
            break
        (grad,) = torch.autograd.grad(loss.sum(), x)
        alpha = config.step_size * spec.eps * _decay(step, config.steps)
        with torch.no_grad():
            if sign_steps:
                x = x - alpha * grad.sign()
            else:
                x = x - alpha * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            x = _project(x, c, spec, lo, hi)
    found = best.detach().cpu().numpy()
    found = np.where(np.isfinite(found), found, centres)
    if domain is not None:  # the torch clip is exact already; the screening pass needs it
        found = np.clip(found, domain.lo.reshape(1, -1), domain.hi.reshape(1, -1))
    return found, best_loss.cpu().numpy()


def _decay(step: int, steps: int) -> float:
    """The step length's factor: cosine from 1 down to 1/50 over the run (the iterate settles
    into thin regions that constant steps jump across)."""
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * step / max(steps - 1, 1)))


def cascade_attack(
    cascade: Cascade,
    spec: LocalRobustness,
    xs: Any,
    domain: Box | None = None,
    config: CasaConfig | None = None,
) -> CasaResult:
    """CasA at each point of ``xs`` (n, *input_shape) where the cascade claims robustness for
    ``spec``: a witness x' in B(x, eps) (and ``domain``) where the cascade, re-checked by itself
    at x' alone, answers another class (module docstring). Members must be certified by the
    Lipschitz engine (UnsupportedError otherwise). Incomplete: None proves nothing."""
    start_time = time.perf_counter()
    config = config or CasaConfig()
    if not isinstance(cascade, Cascade):
        raise UnsupportedError(f"CasA attacks a Cascade, not a {type(cascade).__name__}")
    cascade.supports(spec)
    _lipschitz_members(cascade)
    points = validate_points(cascade.members[0].network, xs, domain)
    n = len(points)
    found = _Found.empty(n)
    claimed = np.zeros(n, dtype=bool)
    predicted = np.zeros(n, dtype=np.int64)
    if n:
        answer = cascade.answer(spec, points, domain)
        claimed = np.asarray(answer.certified, dtype=bool)
        predicted = np.asarray(answer.predicted, dtype=np.int64)
    todo = np.flatnonzero(claimed)
    if len(todo) and cascade.num_classes >= 2:
        device = resolve_device(config.device)
        attack = _Attack(
            cascade, spec, domain, config, device, _prepare(cascade, spec, config, device)
        )
        for chunk in _chunks(_plans(attack, points, predicted, todo), config.batch_size):
            _attack_chunk(attack, points, predicted, chunk, found)
    return CasaResult(
        tuple(found.witnesses),
        claimed,
        predicted,
        found.member,
        found.member_certified,
        found.witness_class,
        time.perf_counter() - start_time,
    )


def _plans(
    attack: _Attack, points: FloatArray, predicted: np.ndarray, todo: np.ndarray
) -> list[_Plan]:
    """The runs of every claimed point, random starts drawn point by point from the seed."""
    cascade, spec, config = attack.cascade, attack.spec, attack.config
    k, m = len(cascade.members), cascade.num_classes
    firsts = np.argmax(cascade.decisions(spec, points[todo], attack.domain).certified, axis=0)
    plans = []
    for p, first in zip(todo.tolist(), firsts.tolist(), strict=True):
        targets = _targets(k, m, int(first), int(predicted[p]))
        if targets:
            rows = np.repeat(np.array(targets, dtype=np.int64), config.restarts, axis=0)
            plans.append(_Plan(p, rows, np.random.default_rng([config.seed, p])))
    return plans


def _chunks(plans: list[_Plan], rows: int) -> list[list[_Plan]]:
    """Consecutive groups of plans with at most ``rows`` rows each (one plan at least)."""
    out: list[list[_Plan]] = []
    size = 0
    for plan in plans:
        r = plan.rows
        if out and size + r <= rows:
            out[-1].append(plan)
            size += r
        else:
            out.append([plan])
            size = r
    return out


def _attack_chunk(
    attack: _Attack,
    points: FloatArray,
    predicted: np.ndarray,
    chunk: list[_Plan],
    found: _Found,
) -> None:
    """Attack the plans of one chunk, screen the results with one batched cascade pass and
    confirm the candidates one point at a time."""
    owner = np.concatenate([np.full(plan.rows, plan.point) for plan in chunk])
    targets = np.concatenate([plan.targets for plan in chunk])
    centres = points[owner].reshape(len(owner), -1)
    starts = _initial(attack, points, chunk, centres, targets)
    candidates, loss = _run(attack, starts, centres, targets)
    shape = attack.cascade.input_shape
    screen = attack.cascade.answer(attack.spec, candidates.reshape((-1, *shape)), attack.domain)
    hits = np.flatnonzero(np.asarray(screen.predicted) != predicted[owner])
    for p in np.unique(owner[hits]).tolist():
        rows = hits[owner[hits] == p]
        rows = rows[np.argsort(loss[rows], kind="stable")]
        _confirm(attack, points[p], candidates[rows], p, found)


def _initial(
    attack: _Attack,
    points: FloatArray,
    chunk: list[_Plan],
    centres: FloatArray,
    targets: np.ndarray,
) -> FloatArray:
    """The rows' starts: each run's first restart from x itself, the others from the lowest-loss
    of ``samples`` uniform draws of the ball (each point's draws from its own stream)."""
    spec, domain, config = attack.spec, attack.domain, attack.config
    first = np.concatenate([np.arange(plan.rows) % config.restarts == 0 for plan in chunk])
    if first.all():
        return centres

    def draw() -> FloatArray:
        return np.concatenate(
            [_uniform(points[plan.point], spec, domain, plan.rows, plan.rng) for plan in chunk]
        )

    device = attack.device
    tj = torch.tensor(targets[:, 0], dtype=torch.int64, device=device)
    tt = torch.tensor(targets[:, 1], dtype=torch.int64, device=device)
    shape = attack.cascade.input_shape
    best = draw()
    best_loss = np.full(len(best), np.inf)
    for s in range(config.samples):
        cand = best if s == 0 else draw()
        with torch.no_grad():
            x = torch.tensor(cand, dtype=torch.float64, device=device)
            loss = _loss(attack.members, x, shape, spec.eps, tj, tt).cpu().numpy()
        better = loss < best_loss
        best = np.where(better[:, None], cand, best)
        best_loss = np.where(better, loss, best_loss)
    return np.where(first[:, None], centres, best)


def _confirm(attack: _Attack, x: FloatArray, candidates: FloatArray, p: int, found: _Found) -> None:
    """The first candidate that, moved exactly into the ball (and domain), the cascade answers
    differently than at x, both re-checked alone; recorded at ``p``."""
    cascade, spec, domain = attack.cascade, attack.spec, attack.domain
    at_x = cascade.answer(spec, x[None], domain)
    if not bool(at_x.certified[0]):
        return
    ball = Ball(x, spec.eps, spec.norm, domain)
    for cand in candidates:
        w = ball.inside(cand.reshape(x.shape))
        if w is None or not ball.contains(w):
            continue
        at_w = cascade.answer(spec, w[None], domain)
        if int(at_w.predicted[0]) == int(at_x.predicted[0]):
            continue
        certified = np.asarray(cascade.decisions(spec, w[None], domain).certified[:, 0])
        found.witnesses[p] = w
        found.member[p] = int(np.argmax(certified)) if certified.any() else len(certified) - 1
        found.member_certified[p] = bool(certified.any())
        found.witness_class[p] = int(at_w.predicted[0])
        return
