"""Fast geometric projections (Fromherz, Leino, Fredrikson, Parno & Pasareanu, ICLR 2021).

The network is lowered to its exact piecewise-linear normal form
(``verispec.solvers.lowering``: affine maps separated by partial ReLU layers; MinMax /
GroupSort become compare-swap ReLUs, so an activation region fixes the order inside every
group). An *activation pattern* (one bit per
ReLU of the lowered net) fixes an affine map; its region is where every pre-activation has the
pattern's sign.

For one point x, an input set S around it (an l2 ball, or per-coordinate radii r: an l_inf
ball, or a box), and a goal (alternatives of DNFs of atoms ``c . y + d > 0``):

- breadth-first over patterns, starting from x's own: in a pattern, the pre-activation of ReLU
  i is an affine function v(x') = w . x' + b; its hyperplane is *within reach* when
  ``|v(x)| <= rho(w)``, with rho(w) = eps ||w||_2 (l2) or |w| . r (boxes, l_inf: the dual
  norm), i.e. when the hyperplane (not the facet: an over-approximation) meets S. The pattern
  with bit i flipped is then queued. Every pattern realised somewhere in S is reached: along
  the segment from x to any x' in S, the true pattern changes only at points p where the
  flipped pre-activations are 0; every pattern in between (old bits, some flipped) computes
  the true values at p, so each flip's hyperplane passes through p, within reach.
- a pattern whose *closed* region provably misses S is skipped (``pruned``): its flipped
  first-layer constraints are fixed half-spaces, and a weak-duality bound on the distance from
  x to their intersection (multipliers from a few projected-gradient steps) that exceeds the
  reach proves it. Every pattern on the paths above has a closed region containing the
  crossing point p, so this keeps the search complete while cutting most of the 2^k
  combinations of k reachable first-layer hyperplanes.
- an atom is *safe* in a pattern when its affine value a(x') = w . x' + b stays > 0 on all of
  S: ``a(x) - rho(w) > 0``. An alternative holds on S if in every visited pattern one of its
  clauses has only safe atoms; the goal is CERTIFIED when the queue empties with an
  alternative still holding. Ties (a zero margin) are never safe.
- float64 throughout, with safety margins: eps (or r) is enlarged by a factor 1 + 1e-9 plus
  1e-12, and every comparison is loosened by 1e-9 times a triangle-inequality bound on the
  magnitudes involved (far above float64 round-off), always in the direction that explores
  more and certifies less. The data domain is ignored for exploration (exploring more is
  sound) but every witness is clamped into it.
- the search runs on the lowered network, whose composed weights may differ from the exact
  network's (``verispec/solvers/lowering.py``): the safe test adds |c| times a bound of the
  outputs' deviation on S (``propagation.deviation``, from interval bounds), so a safe atom
  is safe for the exact network too. The deviation is 0 when the lowering is exact.
- when no alternative can hold, each unsafe atom's hyperplane is a decision boundary within
  reach: x is projected onto it in the set's own norm (l2: along w; l_inf / box: along
  sign(w) scaled by r), pushed slightly across, clamped into S and the domain, moved into
  the closed region and re-evaluated in float64 (``Goal.confirm``): FALSIFIED with that
  witness; else a short PGD; else UNKNOWN. A region or time budget gives TIMEOUT (after the
  same PGD).

Work is batched: many patterns of many points per forward pass. The first layer's values and
reach are cached per point (they do not depend on the pattern). For l2 with more inputs than
first-layer neurons, row norms are computed through the Gram matrix of the first layer.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from typing import Any

import attrs
import numpy as np
import torch
from numpy.typing import NDArray

from verispec import options
from verispec.attacks import pgd_attack
from verispec.engines.base import EngineBase, register_engine
from verispec.errors import UnsupportedError
from verispec.network import Network
from verispec.options import resolve_device
from verispec.properties import Goal
from verispec.regions import Ball, Box, FloatArray, Norm, Polytope
from verispec.results import BatchResult, CheckResult, GuaranteeKind, Verdict
from verispec.solvers.bounds import InputSet, to_sets
from verispec.solvers.lowering import PiecewiseLinearNet, lower
from verispec.solvers.propagation import Method, TorchNet, atoms_from, deviation, layer_bounds
from verispec.specs import PointSpec, SafeOrdering, Spec

REL_MARGIN = 1e-9
"""Relative enlargement of eps / radii, and relative slack of every float comparison."""
ABS_MARGIN = 1e-12
"""Absolute enlargement of eps / radii."""
PUSH = (1e-6, 1e-3, 0.05)
"""How far past a decision hyperplane (relative to the distance) witnesses are placed."""
PRUNE_STEPS = 20
"""Projected-gradient steps for the multipliers of the pruning bound (any value is sound)."""


@attrs.frozen
class ProjectionsConfig:
    """Options of the projections engine."""

    max_regions: int = attrs.field(default=20_000, validator=options.integer(1))
    """Activation regions evaluated per point before giving up (TIMEOUT)."""
    time_per_point: float = attrs.field(default=30.0, validator=options.number(0.0))
    """Seconds of exploration per point (its share of the batched passes) before TIMEOUT."""
    batch_size: int = attrs.field(default=64, validator=options.integer(1))
    """Regions evaluated per batched pass (across points)."""
    device: str = attrs.field(default="cpu", validator=options.device)
    pgd_steps: int = attrs.field(default=30, validator=options.integer(0))
    pgd_restarts: int = attrs.field(default=2, validator=options.integer(0))
    """Short PGD before answering UNKNOWN / TIMEOUT (0 disables it)."""
    max_boundaries: int = attrs.field(default=16, validator=options.integer(1))
    """Decision hyperplanes kept per point for projection witnesses."""
    seed: int = attrs.field(default=0, validator=options.seed)
    bounds: str = attrs.field(default="crown", validator=options.one_of("none", "ibp", "crown"))
    """Pre-activation bounds over each point's set (``verispec.engines.linear_bounds``): the
    search flips only the ReLUs they leave unstable, and a goal they prove alone is
    CERTIFIED without a search ("none": flip every ReLU within reach)."""


class Outcome(enum.Enum):
    """How the exploration of one point ended."""

    CERTIFIED = "certified"
    BOUNDARY = "boundary"  # a decision boundary within reach: no alternative can be certified
    BUDGET = "budget"  # region or time budget exhausted


@attrs.frozen(eq=False)
class Boundary:
    """An unsafe atom in some region: value ``a(x) = value`` and direction ``w`` (flat input)."""

    value: float
    w: FloatArray


@attrs.frozen(eq=False)
class Exploration:
    """The exploration of one point: outcome, regions evaluated, time, boundaries found, and
    patterns skipped because their region provably misses the input set."""

    outcome: Outcome
    regions: int
    time_s: float
    boundaries: tuple[Boundary, ...] = ()
    pruned: int = 0


@attrs.frozen(eq=False)
class Target:
    """One question: the set S (centre, and l2 ``eps`` or per-coordinate ``radii``), the goal
    (with the exact region, for witnesses) and the goal's atoms ``C y + d`` grouped into
    clauses (atom indices) and alternatives (clause lists)."""

    centre: FloatArray  # (d,)
    eps: float | None
    radii: FloatArray | None  # (d,)
    goal: Goal
    C: FloatArray  # (T, m)
    d: FloatArray  # (T,)
    alternatives: tuple[tuple[tuple[int, ...], ...], ...]

    @classmethod
    def of_goal(
        cls, goal: Goal, centre: FloatArray, eps: float | None, radii: FloatArray | None, m: int
    ) -> Target:
        rows: list[FloatArray] = []
        offs: list[float] = []
        alts = []
        for prop in goal.alternatives:
            clauses = []
            for clause in prop.predicate.clauses:
                start = len(rows)
                rows.extend(clause.C)
                offs.extend(clause.d)
                clauses.append(tuple(range(start, len(rows))))
            alts.append(tuple(clauses))
        C = np.array(rows, dtype=np.float64).reshape(len(rows), m)
        return cls(centre, eps, radii, goal, C, np.array(offs, dtype=np.float64), tuple(alts))

    @property
    def trivial(self) -> bool:
        """Some alternative has an empty clause: it holds everywhere."""
        return any(any(len(c) == 0 for c in alt) for alt in self.alternatives)


class _Lowered:
    """The lowered network as float64 tensors on the device, with first-layer caches."""

    def __init__(self, net: PiecewiseLinearNet, device: torch.device) -> None:
        def t(a: FloatArray) -> torch.Tensor:
            return torch.tensor(np.asarray(a, dtype=np.float64), device=device)

        self.net = net
        self.device = device
        self.W = [t(w) for w in net.weights]
        self.b = [t(b) for b in net.biases]
        self.Wabs = [w.abs() for w in self.W]
        self.babs = [b.abs() for b in self.b]
        self.masked = [torch.as_tensor(np.flatnonzero(m), device=device) for m in net.relu]
        self.torch_net = TorchNet.of(net, device)
        """The network for the linear bounds (with the lowering's error bounds)."""
        sizes = [int(m.sum()) for m in net.relu]
        self.relu_sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.num_bits = int(self.offsets[-1])
        W1 = self.W[0]
        self.row_l2 = safe_row_norm(W1)
        # the Gram route squares first-layer weights: refuse it where products may underflow
        tiny = (W1 != 0) & (W1.abs() < 2.0**-400)
        self.gram_safe = not bool(tiny.any()) and bool(torch.isfinite(W1 @ W1.T).all())
        self._gram: tuple[torch.Tensor, float] | None = None

    @property
    def input_size(self) -> int:
        return self.net.input_size

    def gram(self) -> tuple[torch.Tensor, float]:
        """G = W1 W1^T and an upper bound of || |W1| |W1|^T ||_2 (for the round-off slack)."""
        if self._gram is None:
            W1 = self.W[0]
            G = W1 @ W1.T
            bound = float(torch.linalg.matrix_norm(self.Wabs[0] @ self.Wabs[0].T, ord="fro"))
            self._gram = (G, bound)
        return self._gram

    def pattern_of(self, x: FloatArray) -> NDArray[np.bool_]:
        """The activation pattern (flat bits, z >= 0 is active) of flat input ``x`` (d,)."""
        zs = self.net.pre_activations(x[None])
        bits = [zs[k][0][self.net.relu[k]] >= 0 for k in range(len(self.net.relu))]
        return np.concatenate(bits) if bits else np.zeros(0, dtype=bool)


def _widen(value: Any) -> Any:
    return value * (1 + REL_MARGIN) + ABS_MARGIN


class _Explorer:
    """Breadth-first exploration of the activation regions around many targets at once."""

    def __init__(
        self,
        low: _Lowered,
        targets: list[Target],
        config: ProjectionsConfig,
    ) -> None:
        self.low = low
        self.targets = targets
        self.config = config
        dev = low.device
        n = len(targets)
        d = low.input_size
        self.l2 = targets[0].eps is not None if targets else True
        n1 = low.W[0].shape[0]
        self.gram = self.l2 and d > n1 and low.gram_safe
        self.X = torch.as_tensor(np.stack([t.centre for t in targets]), device=dev)
        if self.l2:
            self.eps = torch.as_tensor([_widen(float(t.eps or 0.0)) for t in targets], device=dev)
        else:
            self.r = torch.as_tensor(
                np.stack([_widen(np.asarray(t.radii)) for t in targets]), device=dev
            )
        # first layer: values, magnitudes, reach (rho) per target
        W1, b1 = low.W[0], low.b[0]
        self.z1 = self.X @ W1.T + b1
        self.mag1 = self.X.abs() @ low.Wabs[0].T + low.babs[0]
        if self.l2:
            self.rho1 = self.eps[:, None] * low.row_l2[None, :] * (1 + REL_MARGIN)
        else:
            self.rho1 = self.r @ low.Wabs[0].T * (1 + REL_MARGIN)
        if low.num_bits:
            idx = low.masked[0]
            slack = self.rho1[:, idx] * (1 + REL_MARGIN) + REL_MARGIN * self.mag1[:, idx]
            self.reach1 = (self.z1[:, idx].abs() <= slack).cpu().numpy()
            self.own1 = (self.z1[:, idx] >= 0).cpu().numpy()
        # atoms, padded to a common count; clause and alternative incidences
        self.T = max([t.C.shape[0] for t in targets], default=0)
        m = low.net.num_outputs
        C = np.zeros((n, self.T, m))
        dd = np.ones((n, self.T))
        ncl = max([sum(len(a) for a in t.alternatives) for t in targets], default=0)
        nalt = max([len(t.alternatives) for t in targets], default=0)
        self.atom_in_clause = np.zeros((n, max(ncl, 1), max(self.T, 1)), dtype=bool)
        self.clause_in_alt = np.zeros((n, max(nalt, 1), max(ncl, 1)), dtype=bool)
        self.alive = np.zeros((n, max(nalt, 1)), dtype=bool)
        for i, t in enumerate(targets):
            C[i, : t.C.shape[0]] = t.C
            dd[i, : t.C.shape[0]] = t.d
            k = 0
            for a, alt in enumerate(t.alternatives):
                self.alive[i, a] = True
                for clause in alt:
                    self.atom_in_clause[i, k, list(clause)] = True
                    self.clause_in_alt[i, a, k] = True
                    k += 1
        self.C = torch.as_tensor(C, device=dev)
        self.d = torch.as_tensor(dd, device=dev)
        self.unstable, self.proved = self._bounds()
        self.output_dev = self._output_deviation()

    def _bounds(self) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """Per target: which ReLU bits the bounds leave unstable on its region (n, N), and
        whether they prove the goal alone (n,). Along the segment from x to any point of the
        region (convex) a stable ReLU keeps its sign, so every pattern realised there differs
        from x's only in unstable bits: flipping those alone keeps the search complete."""
        n, N = len(self.targets), self.low.num_bits
        unstable = np.ones((n, N), dtype=bool)
        proved = np.zeros(n, dtype=bool)
        if self.config.bounds == "none":
            return unstable, proved
        rows = [i for i, t in enumerate(self.targets) if t.alternatives and not t.trivial]
        if not rows:
            return unstable, proved
        dev = self.low.device
        net = self.low.torch_net
        inputs = [InputSet.of(self.targets[i].goal.alternatives[0].region) for i in rows]
        sets = to_sets(inputs, dev)
        method = Method(self.config.bounds)
        with torch.no_grad():
            los, his = layer_bounds(net, sets, method)
            for k in range(len(self.low.masked)):
                idx = self.low.masked[k]
                lo, hi = los[k][:, idx], his[k][:, idx]
                bits = ((lo <= 0) & (hi >= 0)).cpu().numpy()
                unstable[rows, self.low.offsets[k] : self.low.offsets[k + 1]] = bits
            value = atoms_from(net, sets, los, his, self.C[rows], self.d[rows], method)
            safe = np.nan_to_num(value.cpu().numpy(), nan=-np.inf) > 0
        proved[rows] = self._holding(np.array(rows, dtype=np.int64), safe).any(axis=1)
        return unstable, proved

    def _output_deviation(self) -> torch.Tensor | None:
        """(n, m): a bound of |f(exact) - f(lowered)| on each target's set (None when the
        lowering is exact), from interval bounds."""
        net = self.low.torch_net
        if self.low.net.exact or not self.targets:
            return None
        region = [t.goal.alternatives[0].region if t.alternatives else None for t in self.targets]
        inputs = [
            InputSet.of(r) if r is not None else InputSet(t.centre, t.centre)
            for r, t in zip(region, self.targets, strict=True)
        ]
        sets = to_sets(inputs, self.low.device)
        with torch.no_grad():
            los, his = layer_bounds(net, sets, Method.IBP)
            dev = deviation(net, sets, los, his)
        return None if dev is None else dev[-1]

    def _holding(self, tidx: NDArray[np.int64], safe: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """(B, alternatives): for items of targets ``tidx`` with safe atoms ``safe`` (B, T),
        the alternatives with a clause whose atoms are all safe."""
        clause_ok = ~np.any(self.atom_in_clause[tidx] & ~safe[:, None, :], axis=2)
        return np.any(self.clause_in_alt[tidx] & clause_ok[:, None, :], axis=2)

    # -- one batched pass ---------------------------------------------------------------------
    def _rho(self, J: torch.Tensor, tidx: torch.Tensor) -> torch.Tensor:
        """rho of each row of J (B, k, base): how far its linear function moves over S."""
        if self.l2:
            if self.gram:
                G, gabs = self.low.gram()
                # rows rescaled by a power of two first: J G J^T squares J's entries, and
                # squares of entries such as 1e-171 underflow to 0 (every boundary would look
                # out of reach); entries the rescaling flushes are below 2^-1022 of the row's
                # largest, covered by the absolute term
                scale = _row_scale(J)
                Js = J / scale
                q = ((Js @ G) * Js).sum(-1)
                jj = (Js * Js).sum(-1)
                floor = J.shape[-1] ** 0.5 * 2.0**-1022 * gabs**0.5
                norm = (torch.sqrt(q.clamp_min(0.0) + REL_MARGIN * jj * gabs) + floor) * scale[
                    ..., 0
                ]
            else:
                norm = safe_row_norm(J)
            return self.eps[tidx][:, None] * norm * (1 + REL_MARGIN)
        return torch.bmm(J.abs(), self.r[tidx][:, :, None]).squeeze(-1) * (1 + REL_MARGIN)

    def _to_input(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of J (k, base) as directions in input space (k, d)."""
        return rows @ self.low.W[0] if self.gram else rows

    def prune(self, tidx: NDArray[np.int64], patterns: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Items whose *closed* region provably misses S (True: skip them).

        The first-layer constraints of a pattern are fixed hyperplanes. Those the pattern flips
        relative to x's own read a_i . (x' - x) >= g_i with g_i = |z1_i(x)| and a_i = +-W1_i.
        For any lambda >= 0, every x' in the closed region satisfies
        lambda . g <= (sum lambda_i a_i) . (x' - x) <= rho(sum lambda_i a_i) on S, so
        lambda . g > rho(sum lambda_i a_i) proves the region misses S (weak duality).
        lambda comes from a few projected-gradient steps on the l2 projection's dual. Every
        pattern the search must visit has a closed region meeting S (module docstring), so
        pruning is sound."""
        low = self.low
        n0 = low.offsets[1] - low.offsets[0] if low.num_bits and len(low.relu_sizes) else 0
        out = np.zeros(len(tidx), dtype=bool)
        if n0 == 0:
            return out
        flipped = patterns[:, :n0] != self.own1[tidx]
        multi = flipped.sum(axis=1) >= 2  # one flip is within reach by construction
        if not multi.any():
            return out
        rows = np.flatnonzero(multi)
        dev = low.device
        ti = torch.as_tensor(tidx[rows], device=dev)
        idx = low.masked[0]
        n1 = low.W[0].shape[0]
        F = torch.zeros((len(rows), n1), dtype=torch.float64, device=dev)
        F[:, idx] = torch.as_tensor(flipped[rows], dtype=torch.float64, device=dev)
        z1 = self.z1[ti]
        sign = torch.where(z1 >= 0, -1.0, 1.0).to(torch.float64)  # the flipped side
        g = z1.abs() * F
        G, _ = low.gram()
        diag = torch.diagonal(G).clamp_min(1e-300)
        lam = g / diag * F / F.sum(1, keepdim=True)
        step = 1.0 / (diag[None] * F).sum(1, keepdim=True).clamp_min(1e-300)
        for _ in range(PRUNE_STEPS):
            grad = sign * ((sign * lam) @ G) - g
            lam = (lam - step * grad).clamp_min(0.0) * F
        combo = sign * lam  # (R, n1): sum lambda_i a_i in first-layer coordinates
        rows_base = combo if self.gram else combo @ low.W[0]
        rho = self._rho(rows_base[:, None, :], ti).squeeze(1)
        lhs = (lam * g).sum(1)
        slack = (
            rho * (1 + REL_MARGIN)
            + REL_MARGIN * (lam * self.mag1[ti]).sum(1)
            + REL_MARGIN * (lam * self.rho1[ti]).sum(1)
        )
        out[rows] = (lhs > slack).cpu().numpy()
        return out

    def _through(self, rows: torch.Tensor, k: int, D: torch.Tensor, J: torch.Tensor | None):
        """``rows`` (B, r, n_k) times diag(D_k) times J_k: linear functionals of layer k's
        activations as rows over the base space (J_0 is implicit: W_0, or I in Gram mode)."""
        scaled = rows * D[:, None, :]
        if k == 0:
            return scaled if self.gram else scaled @ self.low.W[0]
        if J is None:
            raise ValueError("layer k > 0 needs the Jacobian of the layers before it")
        return scaled @ J

    def evaluate(
        self, tidx: NDArray[np.int64], patterns: NDArray[np.bool_]
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_], torch.Tensor, torch.Tensor]:
        """For items (target, pattern): reach bits (B, N), safe atoms (B, T), atom values
        (B, T) and directions (B, T, base).

        Only what is needed is formed: the full Jacobians J_k of the hidden layers before the
        last, then, for the last hidden layer, just its ReLU rows and the atoms' rows."""
        low = self.low
        dev = low.device
        ti = torch.as_tensor(tidx, device=dev)
        B = len(tidx)
        L = len(low.W)
        C = self.C[ti]
        bits = torch.as_tensor(patterns, device=dev, dtype=torch.float64)
        # values, magnitudes and sigma (triangle bound of rho) of every layer; masks D_k
        z, mag, sigma = self.z1[ti], self.mag1[ti], self.rho1[ti]
        zs, mags, sigmas, Ds = [z], [mag], [sigma], []
        for k in range(L - 1):
            D = torch.ones_like(z)
            D[:, low.masked[k]] = bits[:, low.offsets[k] : low.offsets[k + 1]]
            Ds.append(D)
            z = (D * z) @ low.W[k + 1].T + low.b[k + 1]
            mag = (D * mag) @ low.Wabs[k + 1].T + low.babs[k + 1]
            sigma = (D * sigma) @ low.Wabs[k + 1].T
            zs.append(z)
            mags.append(mag)
            sigmas.append(sigma)
        # Jacobian rows: hidden ReLU rows of layers 1..L-2, atom rows of the output
        hidden_rows: list[torch.Tensor | None] = [None] * max(L - 1, 0)
        if L == 1:
            eye = torch.eye(low.W[0].shape[0], device=dev, dtype=torch.float64)
            Ja = C @ (eye if self.gram else low.W[0])
        else:
            K = L - 2  # the last hidden layer
            J: torch.Tensor | None = None
            for k in range(1, K):
                J = self._through(low.W[k][None].expand(B, -1, -1), k - 1, Ds[k - 1], J)
                hidden_rows[k] = J[:, low.masked[k], :]
            atom_rows = (C @ low.W[L - 1]) * Ds[K][:, None, :]  # (B, T, n_K)
            if K == 0:
                Ja = self._through(atom_rows, 0, torch.ones_like(Ds[0]), None)
            else:
                idx = low.masked[K]
                rows = torch.cat(
                    [low.W[K][idx][None].expand(B, -1, -1), atom_rows @ low.W[K]], dim=1
                )
                out = self._through(rows, K - 1, Ds[K - 1], J)
                hidden_rows[K] = out[:, : idx.numel(), :]
                Ja = out[:, idx.numel() :, :]
        reach = [self.reach1[tidx]] if low.num_bits else []
        for k in range(1, L - 1):
            idx = low.masked[k]
            rows_k = hidden_rows[k]
            if rows_k is None or not idx.numel():
                continue
            slack = (
                self._rho(rows_k, ti) * (1 + REL_MARGIN)
                + REL_MARGIN * sigmas[k][:, idx]
                + REL_MARGIN * mags[k][:, idx]
            )
            reach.append((zs[k][:, idx].abs() <= slack).cpu().numpy())
        u = (C @ zs[-1][:, :, None]).squeeze(-1) + self.d[ti]
        Cabs = C.abs()
        tol = (
            self._rho(Ja, ti) * (1 + REL_MARGIN)
            + REL_MARGIN * (Cabs @ sigmas[-1][:, :, None]).squeeze(-1)
            + REL_MARGIN * ((Cabs @ mags[-1][:, :, None]).squeeze(-1) + self.d[ti].abs())
        )
        if self.output_dev is not None:  # the lowering's deviation from the exact network
            tol = tol + (Cabs @ self.output_dev[ti][:, :, None]).squeeze(-1)
        safe = (u > tol).cpu().numpy()
        reach_bits = np.concatenate(reach, axis=1) if reach else np.zeros((B, 0), dtype=bool)
        return reach_bits, safe, u, Ja

    # -- the search ---------------------------------------------------------------------------
    def run(self) -> list[Exploration]:
        """Explore every target; one Exploration each."""
        cfg = self.config
        n = len(self.targets)
        N = self.low.num_bits
        queues: list[deque[NDArray[np.bool_]]] = [deque() for _ in range(n)]
        visited: list[set[bytes]] = [set() for _ in range(n)]
        regions = np.zeros(n, dtype=int)
        pruned = np.zeros(n, dtype=int)
        spent = np.zeros(n)
        outcome: list[Outcome | None] = [None] * n
        boundaries: list[list[Boundary]] = [[] for _ in range(n)]
        for i, t in enumerate(self.targets):
            if t.trivial or self.proved[i]:
                outcome[i] = Outcome.CERTIFIED
                continue
            if not t.alternatives:
                outcome[i] = Outcome.BOUNDARY
                continue
            p = self.low.pattern_of(t.centre)
            visited[i].add(np.packbits(p).tobytes())
            queues[i].append(p)
        while True:
            active = [i for i in range(n) if outcome[i] is None and queues[i]]
            for i in range(n):
                if outcome[i] is None and not queues[i]:
                    outcome[i] = Outcome.CERTIFIED
            if not active:
                break
            quota = max(1, cfg.batch_size // len(active))
            tidx_list: list[int] = []
            pats: list[NDArray[np.bool_]] = []
            for i in active:
                take = min(quota, len(queues[i]), cfg.max_regions - regions[i])
                for _ in range(take):
                    tidx_list.append(i)
                    pats.append(queues[i].popleft())
                    regions[i] += 1
                if len(tidx_list) >= cfg.batch_size:
                    break
            start = time.perf_counter()
            all_tidx = np.array(tidx_list, dtype=np.int64)
            all_patterns = np.stack(pats) if N else np.zeros((len(pats), 0), dtype=bool)
            skip = self.prune(all_tidx, all_patterns)
            np.add.at(pruned, all_tidx[skip], 1)
            np.add.at(regions, all_tidx[skip], -1)
            tidx, patterns = all_tidx[~skip], all_patterns[~skip]
            tidx_list = tidx.tolist()
            if not len(tidx):
                self._charge(spent, all_tidx, time.perf_counter() - start)
                continue
            reach, safe, u, Ja = self.evaluate(tidx, patterns)
            alt_ok = self._holding(tidx, safe)  # alternatives that fail in these regions
            for row, i in enumerate(tidx_list):
                if outcome[i] is not None:
                    continue
                failing = self.alive[i] & ~alt_ok[row]
                if failing.any():
                    self._record(i, row, failing, safe[row], u, Ja, boundaries[i])
                    self.alive[i] &= alt_ok[row]
                    if not self.alive[i].any():
                        outcome[i] = Outcome.BOUNDARY
                        queues[i].clear()
                        continue
                flips = np.flatnonzero(reach[row] & self.unstable[i])
                if flips.size:
                    new = np.repeat(patterns[row][None], flips.size, axis=0)
                    new[np.arange(flips.size), flips] ^= True
                    packed = np.packbits(new, axis=1)
                    for f in range(flips.size):
                        key = packed[f].tobytes()
                        if key not in visited[i]:
                            visited[i].add(key)
                            queues[i].append(new[f])
            self._charge(spent, all_tidx, time.perf_counter() - start)
            for i in active:
                if (
                    outcome[i] is None
                    and queues[i]
                    and (regions[i] >= cfg.max_regions or spent[i] >= cfg.time_per_point)
                ):
                    outcome[i] = Outcome.BUDGET
                    queues[i].clear()
        return [
            Exploration(o or Outcome.CERTIFIED, int(r), float(s), tuple(b), int(p))
            for o, r, s, b, p in zip(outcome, regions, spent, boundaries, pruned, strict=True)
        ]

    @staticmethod
    def _charge(spent: FloatArray, tidx: NDArray[np.int64], elapsed: float) -> None:
        """Share a pass's time among the targets by their number of items."""
        spent += elapsed * np.bincount(tidx, minlength=len(spent)) / max(1, len(tidx))

    def _record(
        self,
        i: int,
        row: int,
        failing: NDArray[np.bool_],
        safe: NDArray[np.bool_],
        u: torch.Tensor,
        Ja: torch.Tensor,
        out: list[Boundary],
    ) -> None:
        """Keep the unsafe atoms of the failing alternatives as candidate decision boundaries."""
        room = self.config.max_boundaries - len(out)
        if room <= 0:
            return
        clauses = np.any(self.clause_in_alt[i][failing], axis=0)
        atoms = np.any(self.atom_in_clause[i][clauses], axis=0) & ~safe
        picked = np.flatnonzero(atoms)[:room]
        if picked.size == 0:
            return
        sel = torch.as_tensor(picked, device=self.low.device)
        dirs = self._to_input(Ja[row, sel]).cpu().numpy()
        vals = u[row, sel].cpu().numpy()
        out.extend(Boundary(float(v), w) for v, w in zip(vals, dirs, strict=True))


def _witness_candidates(target: Target, boundaries: tuple[Boundary, ...]) -> FloatArray:
    """Projections of the centre onto each boundary, pushed across, clamped into S (flat)."""
    x = target.centre
    out = []
    for bd in boundaries:
        if not bd.value > 0 or not np.all(np.isfinite(bd.w)):
            continue
        if target.eps is not None:
            nn = float(bd.w @ bd.w)
            if nn <= 0:
                continue
            step = -(bd.value / nn) * bd.w
        else:
            r = np.asarray(target.radii)
            dual = float(np.abs(bd.w) @ r)
            if dual <= 0:
                continue
            step = -(bd.value / dual) * np.sign(bd.w) * r
        for push in PUSH:
            out.append(_into_set(target, x + step * (1 + push)))
    return np.array(out).reshape(len(out), x.size)


def _into_set(target: Target, x: FloatArray) -> FloatArray:
    """Clamp a flat point into S (ball or box); the domain is applied by the caller."""
    c = target.centre
    if target.eps is not None:
        dist = float(np.linalg.norm(x - c))
        if dist > target.eps:
            x = c + (x - c) * (target.eps / dist)
        return x
    r = np.asarray(target.radii)
    return np.clip(x, c - r, c + r)


def _domain_of(goal: Goal) -> Box | None:
    region = goal.alternatives[0].region if goal.alternatives else None
    if isinstance(region, Ball):
        return region.domain
    if isinstance(region, Polytope):
        return region.box
    return region


@register_engine("projections")
class ProjectionsEngine(EngineBase):
    """Fast geometric projections on piecewise-linear networks (see the module docstring)."""

    name = "projections"
    Config = ProjectionsConfig
    needs_bounded_precondition = True

    def __init__(self, config: ProjectionsConfig | None = None) -> None:
        self.config = config or ProjectionsConfig()
        self.device = resolve_device(self.config.device)
        self._lowered: dict[str, _Lowered] = {}

    def lowered(self, network: Network) -> _Lowered:
        """The network's lowered form on the device (cached per weights)."""
        key = network.fingerprint()
        if key not in self._lowered:
            self._lowered[key] = _Lowered(lower(network), self.device)
        return self._lowered[key]

    # -- the decision -------------------------------------------------------------------------
    def _supports(self, network: Network, spec: Spec) -> None:
        self.lowered(network)  # raises UnsupportedError for networks too large to lower

    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        m = network.num_classes
        ys = network.forward64(xs)
        targets = []
        for x, y in zip(xs, ys, strict=True):
            goal = spec.at(x, y, domain)
            flat = x.ravel()
            if spec.norm is Norm.L2:
                targets.append(Target.of_goal(goal, flat, spec.eps, None, m))
            else:
                targets.append(Target.of_goal(goal, flat, None, np.full(flat.size, spec.eps), m))
        predicted = np.argmax(ys, axis=1).tolist()
        results = self._conclude_all(network, targets, predicted)
        return BatchResult.from_results(results, engine=self.name)

    def _decide_global(self, network: Network, spec: SafeOrdering) -> CheckResult:
        prop = spec.as_property()
        region = spec.precondition
        box = region if isinstance(region, Box) else region.box
        if box is None:  # refused by supports() (needs_bounded_precondition)
            raise UnsupportedError("the projections engine needs a bounded precondition")
        centre = box.center.ravel()
        radii = ((box.hi - box.lo) / 2.0).ravel()
        target = Target.of_goal(Goal((prop,)), centre, None, radii, network.num_classes)
        return self._conclude_all(network, [target], [None])[0]

    def _conclude_all(
        self, network: Network, targets: list[Target], predicted: list[int] | list[None]
    ) -> list[CheckResult]:
        """Explore every target (batched), then look for witnesses where one is needed."""
        explorations = self.explore(network, targets)
        shape = network.input_shape
        rng = np.random.default_rng(self.config.seed)
        out = []
        for t, ex, pred in zip(targets, explorations, predicted, strict=True):
            start = time.perf_counter()
            verdict, detail, witness = self._conclude(network, t, ex, shape, rng)
            out.append(
                CheckResult(
                    verdict,
                    self.name,
                    predicted=pred,
                    guarantee=GuaranteeKind.DETERMINISTIC,
                    time_s=ex.time_s + time.perf_counter() - start,
                    detail=f"regions={ex.regions}; pruned={ex.pruned}; {detail}",
                    counterexample=witness,
                )
            )
        return out

    def explore(self, network: Network, targets: list[Target]) -> list[Exploration]:
        """Explore the activation regions around every target (batched); no witness search."""
        if not targets:
            return []
        start = time.perf_counter()
        low = self.lowered(network)
        explorer = _Explorer(low, targets, self.config)
        setup = (time.perf_counter() - start) / len(targets)
        return [attrs.evolve(e, time_s=e.time_s + setup) for e in explorer.run()]

    def _conclude(
        self,
        network: Network,
        target: Target,
        ex: Exploration,
        shape: tuple[int, ...],
        rng: np.random.Generator,
    ) -> tuple[Verdict, str, FloatArray | None]:
        if ex.outcome is Outcome.CERTIFIED:
            return Verdict.CERTIFIED, "no decision boundary within reach", None
        goal = target.goal
        if not goal.alternatives:
            x = target.centre.reshape(shape)
            return Verdict.FALSIFIED, "the point itself fails the spec", x
        if ex.boundaries:
            cands = _witness_candidates(target, ex.boundaries)
            domain = _domain_of(goal)
            if domain is not None and len(cands):
                cands = np.clip(cands, domain.lo.ravel(), domain.hi.ravel())
            if len(cands):
                w = _refutes(network, goal, cands.reshape((-1, *shape)))
                if w is not None:
                    return Verdict.FALSIFIED, "projection onto a decision boundary", w
        if self.config.pgd_restarts and self.config.pgd_steps:
            for prop in goal.alternatives:
                w = pgd_attack(network, prop, rng, self.config.pgd_steps, self.config.pgd_restarts)
                w = None if w is None else goal.confirm(network, w)
                if w is not None:
                    return Verdict.FALSIFIED, "PGD after a boundary within reach", w
        if ex.outcome is Outcome.BUDGET:
            return Verdict.TIMEOUT, "region or time budget exhausted", None
        return Verdict.UNKNOWN, "decision boundary within reach, no witness found", None


def _row_scale(rows: torch.Tensor) -> torch.Tensor:
    """A power of two per row (the last dimension kept, as 1) near its largest magnitude:
    dividing by it is exact and brings the row's entries into [0.5, 1] at the top."""
    amax = rows.abs().amax(dim=-1, keepdim=True)
    exps = torch.frexp(torch.where(amax > 0, amax, 1.0)).exponent
    return torch.ldexp(torch.ones_like(amax), exps)


def safe_row_norm(rows: torch.Tensor) -> torch.Tensor:
    """l2 norms along the last dimension, on rows rescaled by a power of two (squares of tiny
    entries such as 1e-172 would underflow to 0 and make every boundary look out of reach),
    rounded up by a relative 2^-40."""
    scale = _row_scale(rows)
    norm = (rows / scale).norm(dim=-1) * scale.squeeze(-1)
    return norm * (1 + 2.0**-40)


def _refutes(network: Network, goal: Goal, candidates: FloatArray) -> FloatArray | None:
    """The first candidate that refutes every alternative of the goal: screened by a batched
    float64 pass, then moved into the closed region (a projection may land an ulp outside)
    and confirmed by a float64 pass of that point alone (``Goal.confirm``; a batched pass may
    round differently near a tie)."""
    ys = network.forward64(candidates)
    violated = np.ones(len(candidates), dtype=bool)
    for prop in goal.alternatives:
        violated &= ~prop.predicate.holds(ys)
    for i in np.flatnonzero(violated):
        w = goal.confirm(network, candidates[i])
        if w is not None:
            return w
    return None


def regions_of(result: CheckResult) -> int:
    """The number of regions a projections result explored (parsed from its detail)."""
    head = result.detail.split(";", 1)[0]
    if not head.startswith("regions="):
        raise ValueError(f"not a projections result: {result.detail!r}")
    return int(head.removeprefix("regions="))


__all__ = [
    "Boundary",
    "Exploration",
    "Outcome",
    "ProjectionsConfig",
    "ProjectionsEngine",
    "Target",
    "regions_of",
]
