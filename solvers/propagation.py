"""Linear bound propagation in torch: IBP, CROWN and alpha-CROWN over a batch of input sets.
The one bounds implementation of verispec: the ``crown`` engine, the bound-guided projections,
the exact solvers' big-M constants and their branch and bound on input boxes all use it.

It works on the lowered network (``lowering.py``: affine maps separated by partial ReLU layers;
MinMax / GroupSort become compare-swaps, each one ReLU of a difference). For a batch of input
sets (a box, optionally intersected with an l2 ball):

- **IBP**: interval arithmetic, the first affine map bounded exactly over the set (its dual
  norm for an l2 ball);
- **CROWN**: every hidden layer's pre-activations bounded by back-substitution through the
  linear relaxations of the ReLUs before it (upper line through (l, 0) and (u, u); lower
  slope 1 where u >= -l, else 0), each intersected with the interval bounds, and any linear
  function C z_k + d of a layer (a spec's atoms, of the logits) bounded the same way
  *directly*, not via per-neuron bounds;
- **alpha-CROWN**: the lower slopes of the unstable ReLUs, one per atom and neuron, optimised
  in [0, 1] by projected Adam steps on the atoms' bounds (a fixed number of steps; the
  intermediate bounds stay CROWN's). Any slope in [0, 1] is a valid lower relaxation, so
  every step's bound is valid; the answer is the best of CROWN's and the steps'.

**The network bounded is the real one.** The lowering composes consecutive linear layers and
rounds the reciprocals of Normalize and AvgPool2d, so the lowered weights W_k, b_k differ from
the exact composition of the IR's layers by at most ``weight_error[k]``, ``bias_error[k]``
(elementwise, rigorous: ``lowering.py``). Every bound here adds that error, evaluated at the
magnitude bound of the layer's inputs: z_true = W h + b + delta, |delta| <= E |h| + e. The
bounds hold for the exact real-arithmetic network, whatever the lowering rounded.

**Floating point.** Everything runs in float64. Each computed bound is padded outward by
``PAD (1 + |v| + mag)``, where ``mag`` bounds the sum of the absolute values of every term
that entered it (propagated alongside the bounds). The rounding error of a float64 dot product
of n terms is at most gamma_n = n u / (1 - n u) times that sum (u = 2^-53); through L layers of
width n the accumulated error stays below L n u mag, under 1e-9 mag for L n < 9 * 10^6, which
``PAD`` covers. A bound that overflows is NaN or infinite and proves nothing (``better``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs
import numpy as np
import torch
from verispec.solvers.lowering import PiecewiseLinearNet

from verispec.regions import FloatArray

PAD = 1e-9
"""Relative and absolute outward padding of every computed bound (float64 rounding)."""


class Method(enum.Enum):
    """The bound propagation (each at least as tight as the ones before it)."""

    IBP = "ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"


@attrs.frozen(eq=False)
class Sets:
    """A batch of input sets on one device: boxes ``lo``, ``hi`` (B, d), and optionally the
    l2 balls ``||x - center[i]|| <= eps[i]`` they are intersected with (``eps`` NaN: none)."""

    lo: torch.Tensor
    hi: torch.Tensor
    center: torch.Tensor
    eps: torch.Tensor

    @classmethod
    def boxes(cls, lo: torch.Tensor, hi: torch.Tensor) -> Sets:
        """Boxes alone (float64 tensors (B, d))."""
        nan = torch.full((lo.shape[0],), torch.nan, dtype=lo.dtype, device=lo.device)
        return cls(lo, hi, (lo + hi) / 2, nan)

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


def _tensor(a: FloatArray | None, device: torch.device) -> torch.Tensor | None:
    return None if a is None else torch.tensor(np.asarray(a, dtype=np.float64), device=device)


@attrs.frozen(eq=False)
class TorchNet:
    """A lowered network as float64 tensors on one device, with the lowering's error bounds
    (None where a layer is exact)."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]
    relu: tuple[torch.Tensor, ...]
    weight_error: tuple[torch.Tensor | None, ...]
    bias_error: tuple[torch.Tensor | None, ...]

    @classmethod
    def of(cls, net: PiecewiseLinearNet, device: torch.device) -> TorchNet:
        """The network's tensors on ``device``, built once per network and device."""
        key = f"torch:{device}"
        found = net.cache.get(key)
        if not isinstance(found, TorchNet):
            found = net.cache[key] = cls._build(net, device)
        return found

    @classmethod
    def _build(cls, net: PiecewiseLinearNet, device: torch.device) -> TorchNet:
        return cls(
            tuple(_tensor(w, device) for w in net.weights),  # type: ignore[misc]
            tuple(_tensor(b, device) for b in net.biases),  # type: ignore[misc]
            tuple(torch.as_tensor(np.array(m, dtype=bool), device=device) for m in net.relu),
            tuple(_tensor(e, device) for e in net.weight_errors()),
            tuple(_tensor(e, device) for e in net.bias_errors()),
        )

    @property
    def depth(self) -> int:
        return len(self.weights)

    def error(self, k: int, size: torch.Tensor) -> torch.Tensor | None:
        """(B, n_k): a bound of |z_k(exact) - (W_k h + b_k)| when |h| <= ``size`` (B, n_in),
        or None when layer k is exact."""
        E, e = self.weight_error[k], self.bias_error[k]
        if E is None and e is None:
            return None
        out = torch.zeros_like(size[:, :1]) if E is None else size @ E.T
        if e is not None:
            out = out + e
        return out * (1 + 4 * PAD)  # the error's own rounding


def _pad_down(value: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    return value - PAD * (1.0 + value.abs() + mag)


def activate(net: TorchNet, k: int, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Bounds of h_k = act(z_k) from bounds of z_k."""
    m = net.relu[k]
    return torch.where(m, lo.clamp(min=0), lo), torch.where(m, hi.clamp(min=0), hi)


def _affine_interval(
    net: TorchNet, k: int, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of z_k = W_k a + b_k over the boxes [lo, hi] (B, n), padded relative to the
    terms, with the lowering's error of layer k."""
    W, b = net.weights[k], net.biases[k]
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    centre, spread = mid @ W.T + b, rad @ W.abs().T
    size = mid.abs() + rad
    mag = size @ W.abs().T + b.abs()
    low, high = _pad_down(centre - spread, mag), -_pad_down(-(centre + spread), mag)
    err = net.error(k, size)
    return (low, high) if err is None else (low - err, high + err)


def interval_bounds(net: TorchNet, sets: Sets) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """IBP: bounds (B, n_k) of every pre-activation z_1..z_L over each set."""
    W, b = net.weights[0], net.biases[0]
    B = sets.lo.shape[0]
    A = W.expand(B, *W.shape)
    size = sets.size()
    mag = size @ W.abs().T + b.abs()
    lo, hi = _pad_down(sets.lower(A) + b, mag), -_pad_down(sets.lower(-A) - b, mag)
    err = net.error(0, size)
    los, his = ([lo], [hi]) if err is None else ([lo - err], [hi + err])
    for k in range(1, net.depth):
        a_lo, a_hi = activate(net, k - 1, los[-1], his[-1])
        lo, hi = _affine_interval(net, k, a_lo, a_hi)
        los.append(lo)
        his.append(hi)
    return los, his


def relaxation(
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


@attrs.frozen(eq=False)
class LinearLower:
    """A linear lower bound ``coef @ x + const`` (coef (B, p, d), const (B, p)) of p linear
    functions of a layer over each set, and ``value`` (B, p), its padded minimum over the set
    with the lowering's error: a valid lower bound of the functions."""

    coef: torch.Tensor
    const: torch.Tensor
    value: torch.Tensor


@attrs.frozen(eq=False)
class Relaxed:
    """Layer j's relaxation over each set (B, n_j) and what back-substitution through it
    needs: ``slack``, the weight of |coefficient| in the bound's padding and error (PAD times
    the magnitude of the terms entering z_j, plus the lowering's error of layer j), and
    ``size_out`` >= |h_j| (plus |l_j|: the relaxed upper line's magnitude)."""

    lo_slope: torch.Tensor
    up_slope: torch.Tensor
    up_icpt: torch.Tensor
    unstable: torch.Tensor
    slack: torch.Tensor
    size_out: torch.Tensor


def _slack(
    net: TorchNet, k: int, size_in: torch.Tensor, extra: torch.Tensor | None
) -> torch.Tensor:
    """PAD x (|W_k| size_in + |b_k| (+ extra)) + the lowering's error of layer k."""
    terms = size_in @ net.weights[k].abs().T + net.biases[k].abs()
    if extra is not None:
        terms = terms + extra
    err = net.error(k, size_in)
    return PAD * terms if err is None else PAD * terms + err * (1 + 4 * PAD)


def relax(
    net: TorchNet, sets: Sets, los: Sequence[torch.Tensor], his: Sequence[torch.Tensor], upto: int
) -> list[Relaxed]:
    """The relaxations of layers 0 .. upto - 1 from valid bounds of their pre-activations."""
    out: list[Relaxed] = []
    for j in range(upto):
        out += relax_one(net, sets, los, his, j, out)
    return out


def linear_lower(
    net: TorchNet,
    sets: Sets,
    layers: Sequence[Relaxed],
    C: torch.Tensor,
    d: torch.Tensor,
    k: int,
    alphas: Sequence[torch.Tensor] | None = None,
    owner: torch.Tensor | None = None,
) -> LinearLower:
    """CROWN's linear lower bound of ``C @ z_k + d`` (C (R, p, n_k), d (R, p)) over each set,
    through the relaxations ``layers`` of the layers before k (``relax``). Row r is about set
    ``owner[r]`` (by default R = B and row r about set r). ``alphas[j]`` (R, p, n_j) in
    [0, 1], when given, replace CROWN's lower slopes of the unstable neurons of layer j
    (alpha-CROWN).

    ``slack`` accumulates |coefficient| times each layer's ``Relaxed.slack``: PAD times the
    sum of |terms| of every dot product on the way, at the magnitudes the back-substituted
    quantities take over the set, plus the lowering's error; it is subtracted at the end."""

    def mine(t: torch.Tensor) -> torch.Tensor:
        return t if owner is None else t[owner]

    Wk, bk = net.weights[k], net.biases[k]
    M = C @ Wk
    const = C @ bk + d
    size_in = sets.size() if k == 0 else layers[k - 1].size_out
    slack = torch.bmm(C.abs(), mine(_slack(net, k, size_in, None))[:, :, None])[:, :, 0]
    slack = slack + PAD * d.abs()
    for j in range(k - 1, -1, -1):
        lay = layers[j]
        low = mine(lay.lo_slope)[:, None, :]
        if alphas is not None:
            low = torch.where(mine(lay.unstable)[:, None, :], alphas[j], low)
        icpt = mine(lay.up_icpt)
        const = const + torch.bmm(M.clamp(max=0.0), icpt[:, :, None])[:, :, 0]
        M = M * torch.where(M >= 0, low, mine(lay.up_slope)[:, None, :])
        const = const + M @ net.biases[j]
        slack = slack + torch.bmm(M.abs(), mine(lay.slack)[:, :, None])[:, :, 0]
        M = M @ net.weights[j]
    part = sets if owner is None else Sets(*(t[owner] for t in attrs.astuple(sets, recurse=False)))
    value = part.lower(M) + const
    slack = slack + PAD * (torch.bmm(M.abs(), part.size()[:, :, None])[:, :, 0] + const.abs())
    return LinearLower(M, const, value - PAD * (1.0 + value.abs()) - slack)


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
    """Lower bounds (B, p) of ``C @ z_k + d`` over each set, given valid bounds of the layers
    before k (``linear_lower``'s value)."""
    return linear_lower(net, sets, relax(net, sets, los, his, k), C, d, k, alphas).value


def crown_bounds(
    net: TorchNet,
    sets: Sets,
    start: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """CROWN bounds of every pre-activation, each layer intersected with IBP's (and with
    ``start``'s, valid bounds to keep) and used for the layers after it. In a hidden layer
    only the ReLUs the bounds so far leave unstable are back-substituted, each (set, neuron)
    pair as one row (no padding to the largest count): a stable neuron's relaxation is exact
    whatever its bounds, so tightening it changes nothing below."""
    los, his = interval_bounds(net, sets)
    if start is not None:
        los = [torch.maximum(a, b) for a, b in zip(los, start[0], strict=True)]
        his = [torch.minimum(a, b) for a, b in zip(his, start[1], strict=True)]
    B = sets.lo.shape[0]
    dev = sets.lo.device
    layers = relax(net, sets, los, his, min(1, net.depth - 1))
    for k in range(1, net.depth):
        n = net.weights[k].shape[0]
        if k + 1 < net.depth:
            owner, neuron = torch.nonzero(net.relu[k] & (los[k] < 0) & (his[k] > 0), as_tuple=True)
        else:
            owner = torch.arange(B, device=dev).repeat_interleave(n)
            neuron = torch.arange(n, device=dev).repeat(B)
        R = owner.shape[0]
        if R:
            C = torch.zeros(R, 2, n, dtype=torch.float64, device=dev)
            rows = torch.arange(R, device=dev)
            C[rows, 0, neuron] = 1.0
            C[rows, 1, neuron] = -1.0
            zero = torch.zeros(R, 2, dtype=C.dtype, device=dev)
            lb = linear_lower(net, sets, layers, C, zero, k, owner=owner).value
            lo_k, hi_k = los[k].clone(), his[k].clone()
            lo_k[owner, neuron] = better(los[k][owner, neuron], lb[:, 0])
            hi_k[owner, neuron] = -better(-his[k][owner, neuron], lb[:, 1])
            los[k], his[k] = lo_k, hi_k
        if k + 1 < net.depth:  # the tighter layer tightens the interval bounds after it
            a_lo, a_hi = activate(net, k, los[k], his[k])
            lo, hi = _affine_interval(net, k + 1, a_lo, a_hi)
            los[k + 1], his[k + 1] = better(los[k + 1], lo), -better(-his[k + 1], -hi)
            layers = [*layers, *relax_one(net, sets, los, his, k, layers)]
    return los, his


def gradient_bound(net: TorchNet, his: Sequence[torch.Tensor], C: torch.Tensor) -> torch.Tensor:
    """(B, p, d): an upper bound of |d (C z_L) / dx| over each set (C (B, p, n_L)), from upper
    bounds ``his`` of the pre-activations: every ReLU that may be active passes the gradient
    (ReluVal's symbolic gradient interval, in magnitudes). Only a heuristic uses it."""
    G = C.abs()
    for j in range(net.depth - 1, 0, -1):
        G = G @ net.weights[j].abs()
        G = G * torch.where(net.relu[j - 1], his[j - 1] > 0, True)[:, None, :].to(G.dtype)
    return G @ net.weights[0].abs()


def relax_one(
    net: TorchNet,
    sets: Sets,
    los: Sequence[torch.Tensor],
    his: Sequence[torch.Tensor],
    k: int,
    layers: Sequence[Relaxed],
) -> list[Relaxed]:
    """[the relaxation of layer k], given those of the layers before it."""
    size = sets.size() if k == 0 else layers[k - 1].size_out
    lo_slope, up_slope, up_icpt, unstable = relaxation(net.relu[k], los[k], his[k])
    slack = _slack(net, k, size, up_icpt.abs())
    a_lo, a_hi = activate(net, k, los[k], his[k])
    size_out = torch.maximum(a_lo.abs(), a_hi.abs()) + los[k].abs()
    return [Relaxed(lo_slope, up_slope, up_icpt, unstable, slack, size_out)]


def deviation(
    net: TorchNet,
    sets: Sets,
    los: Sequence[torch.Tensor],
    his: Sequence[torch.Tensor],
) -> list[torch.Tensor] | None:
    """Per layer (B, n_k), a bound of |z_k(exact) - z_k(lowered)| on each set, or None when
    the lowering is exact; ``los``/``his`` are valid bounds of either network. With ReLU
    1-Lipschitz, Delta_k = |W_k| Delta_{k-1} + E_k (|h_{k-1}| + Delta_{k-1}) + e_k, where
    |h_{k-1}| + Delta_{k-1} bounds the exact network's |h_{k-1}| whichever the bounds hold
    for. Solvers deciding the lowered network widen their margins by it."""
    if all(e is None for e in (*net.weight_error, *net.bias_error)):
        return None
    size = sets.size()
    prev = torch.zeros_like(size)
    out = []
    for k in range(net.depth):
        dev = prev @ net.weights[k].abs().T
        err = net.error(k, size + prev)
        if err is not None:
            dev = dev + err
        dev = dev * (1 + 4 * PAD) + (net.weights[k].shape[1] + 2) * 2.0**-1074
        out.append(dev)
        if k + 1 < net.depth:
            a_lo, a_hi = activate(net, k, los[k], his[k])
            size, prev = torch.maximum(a_lo.abs(), a_hi.abs()), dev
    return out


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
    return better(box, back_substitute(net, sets, los, his, C, d, L))


def optimise_slopes(
    net: TorchNet,
    sets: Sets,
    los: Sequence[torch.Tensor],
    his: Sequence[torch.Tensor],
    C: torch.Tensor,
    d: torch.Tensor,
    best: torch.Tensor,
    steps: int,
    lr: float,
) -> torch.Tensor:
    """alpha-CROWN: ``best`` (valid lower bounds (B, p) of ``C @ f(x) + d``) improved by
    ``steps`` projected Adam steps on the unstable ReLUs' lower slopes."""
    L = net.depth - 1
    if L == 0:
        return best
    with torch.enable_grad():
        alphas = []
        for j in range(L):
            lo_slope = relaxation(net.relu[j], los[j], his[j])[0]
            alphas.append(lo_slope[:, None, :].expand(*C.shape[:2], -1).clone().requires_grad_())
        opt = torch.optim.Adam(alphas, lr=lr)
        for _ in range(steps):
            value = back_substitute(net, sets, los, his, C, d, L, alphas)
            best = better(best, value.detach())
            opt.zero_grad()
            (-torch.nan_to_num(value, nan=0.0, neginf=0.0).sum()).backward()
            opt.step()
            with torch.no_grad():
                for a in alphas:  # back into [0, 1], where every slope is a valid relaxation
                    a.nan_to_num_(0.0).clamp_(0.0, 1.0)
        with torch.no_grad():
            return better(best, back_substitute(net, sets, los, his, C, d, L, alphas))


def atom_bounds(
    net: TorchNet,
    sets: Sets,
    C: torch.Tensor,
    d: torch.Tensor,
    method: Method,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
) -> torch.Tensor:
    """Lower bounds (B, p) of the atoms ``C @ f(x) + d`` (C (B, p, m), d (B, p)) over each
    set, by ``method`` (alpha-CROWN: ``alpha_steps`` steps of size ``alpha_lr``)."""
    los, his = layer_bounds(net, sets, method)
    best = atoms_from(net, sets, los, his, C, d, method)
    if method is not Method.ALPHA_CROWN:
        return best
    return optimise_slopes(net, sets, los, his, C, d, best, alpha_steps, alpha_lr)


def better(best: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The larger of two valid lower bounds (a NaN one, from overflow, is ignored)."""
    return torch.where(torch.isnan(value), best, torch.maximum(best, value))
