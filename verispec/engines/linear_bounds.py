"""Linear bound propagation in torch: IBP, CROWN and alpha-CROWN, batched over points, and the
``crown`` engine that certifies with them.

The network is first lowered (``verispec.solvers.lowering.lower``, one rule per IR layer
type; a type without a rule raises) to affine maps separated by partial ReLU layers; MinMax /
GroupSort become compare-swaps, each one ReLU of a difference. On that form, for a batch of
input sets (a box, optionally intersected with an l2 ball):

- **IBP**: interval arithmetic, the first affine map bounded exactly over the set (its dual
  norm for an l2 ball);
- **CROWN**: every hidden layer's pre-activations bounded by back-substitution through the
  linear relaxations of the ReLUs before it (upper line through (l, 0) and (u, u); lower
  slope 1 where u >= -l, else 0), each intersected with the interval bounds, and the spec's
  atoms c.y + d bounded the same way *directly*, as linear functions of the logits;
- **alpha-CROWN**: the lower slopes of the unstable ReLUs, one per atom and neuron, optimised
  in [0, 1] by projected Adam steps on the atoms' bounds (a fixed number of steps; the
  intermediate bounds stay CROWN's). Any slope in [0, 1] is a valid lower relaxation, so
  every step's bound is valid; the answer is the best of CROWN's and the steps'.

**Floating point.** Everything runs in float64. Each computed bound is padded outward by
``PAD (1 + |v| + mag)``, where ``mag`` bounds the sum of the absolute values of every term
that entered it (the magnitudes are propagated alongside the bounds, as in
``verispec/solvers/bounds.py``). The rounding error of a float64 dot product of n terms is at
most gamma_n = n u / (1 - n u) times that sum (u = 2^-53); through L layers of width n the
accumulated error stays below L n u mag, under 1e-9 mag for L n < 9 * 10^6, which ``PAD``
covers. The lowering's own rounding (composing consecutive linear layers, and the rounded
reciprocals of Normalize and AvgPool2d) is the one the exact solvers share.

The engine certifies a point when, for some alternative of the spec's goal at the point,
some clause has every atom's lower bound above 0 on the input set. It falsifies a point only
with the point itself, re-checked by a float64 forward pass (``Goal.confirm``); otherwise the
point is UNKNOWN.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence

import attrs
import numpy as np
import torch

from verispec import options
from verispec.engines.base import EngineBase, batches, register_engine, resolve_device
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.properties import Goal
from verispec.regions import Box, FloatArray, Polytope
from verispec.results import BatchResult, CheckResult, Verdict
from verispec.solvers.bounds import PAD, InputSet
from verispec.solvers.lowering import PiecewiseLinearNet, lower
from verispec.specs import PointSpec, SafeOrdering


class Method(enum.Enum):
    """The bound propagation (each at least as tight as the ones before it)."""

    IBP = "ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"


@attrs.frozen
class LinearBoundsConfig:
    """Options of the ``crown`` engine."""

    method: str = attrs.field(default="crown", validator=options.one_of(*(m.value for m in Method)))
    alpha_steps: int = attrs.field(default=20, validator=options.integer(1))
    alpha_lr: float = attrs.field(default=0.1, validator=options.number(0.0))
    batch_size: int = attrs.field(default=64, validator=options.integer(1))
    device: str = attrs.field(default="cpu", validator=options.device)

    @property
    def kind(self) -> Method:
        """``method`` as the enum."""
        return Method(self.method)


@attrs.frozen(eq=False)
class Sets:
    """A batch of input sets on one device: boxes ``lo``, ``hi`` (B, d), and optionally the
    l2 balls ``||x - center[i]|| <= eps[i]`` they are intersected with (``eps`` NaN: none)."""

    lo: torch.Tensor
    hi: torch.Tensor
    center: torch.Tensor
    eps: torch.Tensor

    @classmethod
    def of(cls, sets: Sequence[InputSet], device: torch.device) -> Sets:
        def stack(values: Sequence[FloatArray]) -> torch.Tensor:
            return torch.as_tensor(np.stack(values), dtype=torch.float64, device=device)

        centers = [s.center if s.center is not None else (s.lo + s.hi) / 2 for s in sets]
        eps = [s.l2_eps if s.l2_eps is not None else np.nan for s in sets]
        return cls(
            stack([s.lo for s in sets]),
            stack([s.hi for s in sets]),
            stack(centers),
            torch.tensor(eps, dtype=torch.float64, device=device),
        )

    def size(self) -> torch.Tensor:
        """(B, d): |x| over each set is at most this."""
        return torch.maximum(self.lo.abs(), self.hi.abs())

    def lower(self, A: torch.Tensor) -> torch.Tensor:
        """(B, p): the minimum over each set of the rows of ``A`` (B, p, d) times x (the box's
        and the ball's, the larger: both are valid)."""
        mid, rad = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
        box = torch.einsum("bpd,bd->bp", A, mid) - torch.einsum("bpd,bd->bp", A.abs(), rad)
        ball = ~torch.isnan(self.eps)
        if not bool(ball.any()):
            return box
        eps = torch.where(ball, self.eps, 0.0)[:, None]
        l2 = torch.einsum("bpd,bd->bp", A, self.center) - eps * A.norm(dim=2)
        return torch.where(ball[:, None], torch.maximum(box, l2), box)


@attrs.frozen(eq=False)
class TorchNet:
    """A ``PiecewiseLinearNet`` as float64 tensors on one device."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    relu: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, net: PiecewiseLinearNet, device: torch.device) -> TorchNet:
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.array(a), device=device)

        return cls(
            tuple(t(w).double() for w in net.weights),
            tuple(t(b).double() for b in net.biases),
            tuple(t(m).bool() for m in net.relu),
        )

    @property
    def depth(self) -> int:
        return len(self.weights)


def _pad_down(value: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return value - PAD * (1.0 + value.abs() + mag)


def _activate(
    net: TorchNet, k: int, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    m = net.relu[k]
    return torch.where(m, lo.clamp(min=0), lo), torch.where(m, hi.clamp(min=0), hi)


def _affine_interval(
    W: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of W a + b over the boxes [lo, hi] (B, n), padded relative to the terms."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    centre, spread = mid @ W.T + b, rad @ W.abs().T
    mag = (mid.abs() + rad) @ W.abs().T + b.abs()
    return _pad_down(centre - spread, mag), -_pad_down(-(centre + spread), mag)


def interval_bounds(net: TorchNet, sets: Sets) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """IBP: bounds (B, n_k) of every pre-activation z_1..z_L over each set."""
    W, b = net.weights[0], net.biases[0]
    B = sets.lo.shape[0]
    A = W.expand(B, *W.shape)
    mag = sets.size() @ W.abs().T + b.abs()
    los = [_pad_down(sets.lower(A) + b, mag)]
    his = [-_pad_down(sets.lower(-A) - b, mag)]
    for k in range(1, net.depth):
        a_lo, a_hi = _activate(net, k - 1, los[-1], his[-1])
        lo, hi = _affine_interval(net.weights[k], net.biases[k], a_lo, a_hi)
        los.append(lo)
        his.append(hi)
    return los, his


def _relaxation(
    relu: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per neuron (B, n): CROWN's lower slope, the upper slope and intercept
    (lower_slope z <= h <= upper_slope z + upper_icpt), and which neurons are unstable."""
    unstable = relu & (lo < 0) & (hi > 0)
    base = torch.where(relu & (hi <= 0), 0.0, 1.0).to(lo.dtype)
    s = torch.where(unstable, hi / torch.where(unstable, hi - lo, 1.0), base)
    up_icpt = torch.where(unstable, -s * lo, 0.0)
    lo_slope = torch.where(unstable, (hi >= -lo).to(lo.dtype), base)
    return lo_slope, s, up_icpt, unstable


def back_substitute(
    net: TorchNet,
    sets: Sets,
    los: Sequence[torch.Tensor],
    his: Sequence[torch.Tensor],
    C: torch.Tensor,
    d: torch.Tensor,
    k: int,
    alphas: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Lower bounds (B, p) of ``C @ z_k + d`` (C (B, p, n_k), d (B, p)) over each set, given
    valid bounds of the layers before k. ``alphas[j]`` (B, p, n_j) in [0, 1], when given,
    replace CROWN's lower slopes of the unstable neurons of layer j (alpha-CROWN)."""
    Wk, bk = net.weights[k], net.biases[k]
    M = C @ Wk
    const = C @ bk + d
    # ``mag`` bounds the sum of |terms| of every dot product on the way, at the magnitudes the
    # back-substituted quantities take over the set (|h_j| <= size[j]), for the padding.
    size = [sets.size()]
    for j in range(k):
        a_lo, a_hi = _activate(net, j, los[j], his[j])
        size.append(torch.maximum(a_lo.abs(), a_hi.abs()) + los[j].abs())
    terms = size[k] @ Wk.abs().T + bk.abs()
    mag = torch.einsum("bpn,bn->bp", C.abs(), terms) + d.abs()
    for j in range(k - 1, -1, -1):
        lo_slope, up_slope, up_icpt, unstable = _relaxation(net.relu[j], los[j], his[j])
        low = lo_slope[:, None, :]
        if alphas is not None:
            low = torch.where(unstable[:, None, :], alphas[j], low)
        pos = M >= 0
        const = const + torch.where(pos, 0.0, M * up_icpt[:, None, :]).sum(dim=2)
        M = M * torch.where(pos, low, up_slope[:, None, :])
        const = const + M @ net.biases[j]
        terms = size[j] @ net.weights[j].abs().T + net.biases[j].abs() + up_icpt.abs()
        mag = mag + torch.einsum("bpn,bn->bp", M.abs(), terms)
        M = M @ net.weights[j]
    value = sets.lower(M) + const
    mag = mag + torch.einsum("bpd,bd->bp", M.abs(), size[0]) + const.abs()
    return _pad_down(value, mag)


def crown_bounds(net: TorchNet, sets: Sets) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """CROWN bounds of every pre-activation, each layer intersected with IBP's and used for
    the layers after it."""
    los, his = interval_bounds(net, sets)
    B = sets.lo.shape[0]
    for k in range(1, net.depth):
        n = net.weights[k].shape[0]
        eye = torch.eye(n, dtype=torch.float64, device=sets.lo.device)
        C = torch.cat([eye, -eye]).expand(B, 2 * n, n)
        lb = back_substitute(
            net, sets, los, his, C, torch.zeros(B, 2 * n, dtype=C.dtype, device=C.device), k
        )
        los[k] = torch.maximum(los[k], lb[:, :n])
        his[k] = torch.minimum(his[k], -lb[:, n:])
        if k + 1 < net.depth:  # the tighter layer tightens the interval bounds after it
            a_lo, a_hi = _activate(net, k, los[k], his[k])
            lo, hi = _affine_interval(net.weights[k + 1], net.biases[k + 1], a_lo, a_hi)
            los[k + 1], his[k + 1] = torch.maximum(los[k + 1], lo), torch.minimum(his[k + 1], hi)
    return los, his


def interval_atoms(
    lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """Lower bounds (B, p) of ``C @ y + d`` for y in the boxes [lo, hi] (B, m)."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    value = torch.einsum("bpm,bm->bp", C, mid) - torch.einsum("bpm,bm->bp", C.abs(), rad)
    mag = torch.einsum("bpm,bm->bp", C.abs(), mid.abs() + rad) + d.abs()
    return _pad_down(value + d, mag)


def layer_bounds(
    net: TorchNet, sets: Sets, method: Method
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pre-activation bounds of every layer: IBP's, or CROWN's (alpha-CROWN keeps them)."""
    return interval_bounds(net, sets) if method is Method.IBP else crown_bounds(net, sets)


def atoms_from(
    net: TorchNet,
    sets: Sets,
    los: Sequence[torch.Tensor],
    his: Sequence[torch.Tensor],
    C: torch.Tensor,
    d: torch.Tensor,
    method: Method,
) -> torch.Tensor:
    """Lower bounds (B, p) of the atoms ``C @ f(x) + d`` from the layer bounds: the output
    interval's, and with CROWN (or alpha-CROWN) the larger of that and back-substitution's."""
    L = net.depth - 1
    box = interval_atoms(los[L], his[L], C, d)
    if method is Method.IBP:
        return box
    return _better(box, back_substitute(net, sets, los, his, C, d, L))


def atom_bounds(
    net: TorchNet, sets: Sets, C: torch.Tensor, d: torch.Tensor, config: LinearBoundsConfig
) -> torch.Tensor:
    """Lower bounds (B, p) of the atoms ``C @ f(x) + d`` (C (B, p, m), d (B, p)) over each
    set, by ``config.method``."""
    L = net.depth - 1
    los, his = layer_bounds(net, sets, config.kind)
    best = atoms_from(net, sets, los, his, C, d, config.kind)
    if config.kind is not Method.ALPHA_CROWN or L == 0:
        return best
    with torch.enable_grad():
        alphas = []
        for j in range(L):
            lo_slope = _relaxation(net.relu[j], los[j], his[j])[0]
            alphas.append(lo_slope[:, None, :].expand(*C.shape[:2], -1).clone().requires_grad_())
        opt = torch.optim.Adam(alphas, lr=config.alpha_lr)
        for _ in range(config.alpha_steps):
            value = back_substitute(net, sets, los, his, C, d, L, alphas)
            best = _better(best, value.detach())
            opt.zero_grad()
            (-torch.nan_to_num(value, nan=0.0, neginf=0.0).sum()).backward()
            opt.step()
            with torch.no_grad():
                for a in alphas:  # back into [0, 1], where every slope is a valid relaxation
                    a.nan_to_num_(0.0).clamp_(0.0, 1.0)
        with torch.no_grad():
            best = _better(best, back_substitute(net, sets, los, his, C, d, L, alphas))
    return best


def _better(best: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The larger of two valid lower bounds (a NaN one, from overflow, is ignored)."""
    return torch.where(torch.isnan(value), best, torch.maximum(best, value))


@attrs.frozen(eq=False)
class _Atoms:
    """The atoms of one goal: its input set and, per atom, its clause's index, coefficients
    and offset (every alternative's clauses, numbered together)."""

    inputs: InputSet
    clause: list[int]
    C: list[FloatArray]
    d: list[float]
    trivial: bool
    """Some clause is empty (always true), or the input set is empty (holds vacuously)."""

    @classmethod
    def of(cls, goal: Goal) -> _Atoms | None:
        if not goal.alternatives:
            return None
        inputs = InputSet.of(goal.alternatives[0].region)  # the alternatives share it
        clause: list[int] = []
        C: list[FloatArray] = []
        d: list[float] = []
        trivial = inputs.empty
        number = 0
        for prop in goal.alternatives:
            for c in prop.predicate.clauses:
                trivial = trivial or c.C.shape[0] == 0
                for row in range(c.C.shape[0]):
                    clause.append(number)
                    C.append(c.C[row])
                    d.append(float(c.d[row]))
                number += 1
        return cls(inputs, clause, C, d, trivial)


@register_engine("crown")
class LinearBoundsEngine(EngineBase):
    """Certify with linear bound propagation (IBP, CROWN, alpha-CROWN; module docstring)."""

    name = "crown"
    Config = LinearBoundsConfig
    needs_bounded_precondition = True

    def __init__(self, config: LinearBoundsConfig | None = None) -> None:
        self.config = config or LinearBoundsConfig()
        self._lowered: dict[str, PiecewiseLinearNet] = {}

    def _lower(self, network: Network) -> PiecewiseLinearNet:
        """The network's lowered form (the last network's kept; the lowering raises naming
        a layer it has no rule for)."""
        key = network.fingerprint()
        if key not in self._lowered:
            self._lowered = {key: lower(network)}
        return self._lowered[key]

    def _net(self, network: Network, device: torch.device) -> TorchNet:
        return TorchNet.of(self._lower(network), device)

    def _supports(self, network: Network, spec: object) -> None:
        self._lower(network)

    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        start = time.perf_counter()
        device = resolve_device(self.config.device)
        net = self._net(network, device)
        ys = network.forward64(xs)
        method = self.config.method
        verdicts = np.full(len(xs), Verdict.UNKNOWN.code, dtype=np.int8)
        witnesses: dict[int, FloatArray] = {}
        details: dict[int, str] = {}
        for part in batches(len(xs), self.config.batch_size):
            goals = [spec.at(xs[i], ys[i], domain) for i in range(part.start, part.stop)]
            margins = self._margins(net, goals, device)
            for k, i in enumerate(range(part.start, part.stop)):
                if margins[k] > 0:
                    verdicts[i] = Verdict.CERTIFIED.code
                    details[i] = f"{method}: every atom of a clause >= {margins[k]:.6g}"
                    continue
                w = goals[k].confirm(network, xs[i])  # re-checked, exactly near zero
                if w is not None:
                    verdicts[i], witnesses[i] = Verdict.FALSIFIED.code, w
                    details[i] = "the point itself violates the spec"
                    continue
                details[i] = f"{method}: the best clause's smallest atom bound {margins[k]:.6g}"
        return BatchResult.build(
            self.name,
            verdicts,
            time_s=(time.perf_counter() - start) / len(xs),
            predicted=np.argmax(ys, axis=1),
            counterexamples=witnesses,
            details=details,
        )

    def _margins(self, net: TorchNet, goals: Sequence[Goal], device: torch.device) -> FloatArray:
        """Per goal: the best clause's smallest atom lower bound on the goal's region (inf
        when a clause is trivially true or the region empty, -inf without alternatives). A
        goal is proved where it is > 0."""
        out = np.full(len(goals), -np.inf)
        live: list[tuple[int, _Atoms]] = []  # goals with atoms to bound
        for i, goal in enumerate(goals):
            a = _Atoms.of(goal)
            if a is not None and a.trivial:
                out[i] = np.inf
            elif a is not None and a.C:
                live.append((i, a))
        if not live:
            return out
        m = net.weights[-1].shape[0]
        p = max(len(a.C) for _, a in live)
        C = np.zeros((len(live), p, m))
        d = np.zeros((len(live), p))
        for r, (_, a) in enumerate(live):
            C[r, : len(a.C)], d[r, : len(a.d)] = np.array(a.C), a.d
        sets = Sets.of([a.inputs for _, a in live], device)
        with torch.no_grad():
            value = atom_bounds(
                net,
                sets,
                torch.as_tensor(C, device=device),
                torch.as_tensor(d, device=device),
                self.config,
            )
        value = np.nan_to_num(value.cpu().numpy(), nan=-np.inf)  # NaN (overflow) proves nothing
        for r, (i, a) in enumerate(live):
            worst: dict[int, float] = {}
            for k, c in enumerate(a.clause):
                worst[c] = min(worst.get(c, np.inf), float(value[r, k]))
            out[i] = max(worst.values())
        return out

    def _decide_global(self, network: Network, spec: SafeOrdering) -> CheckResult:
        """A safe ordering on its precondition's box (a polytope's box holds it: sound)."""
        start = time.perf_counter()
        device = resolve_device(self.config.device)
        prop = spec.as_property()
        region = prop.region
        if isinstance(region, Polytope):
            if region.box is None:  # refused by supports() (needs_bounded_precondition)
                raise UnsupportedError("the crown engine needs a bounded precondition")
            region = region.box
        goal = Goal((attrs.evolve(prop, region=region),))
        margin = self._margins(self._net(network, device), [goal], device)[0]
        return CheckResult(
            Verdict.CERTIFIED if margin > 0 else Verdict.UNKNOWN,
            self.name,
            time_s=time.perf_counter() - start,
            detail=f"{self.config.method}: the best clause's smallest atom bound {margin:.6g}",
        )
