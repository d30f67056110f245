"""Pre-activation bounds over an input set for the exact solvers: the torch propagation of
``propagation.py`` (interval arithmetic, CROWN back-substitution) on one input set, and LP
tightening.

The exact encodings take their big-M constants from these bounds and drop the binaries of
stable ReLUs, so every bound must be *valid* (a true lower / upper bound of the neuron over
the whole input set); tightness only buys speed. Each method returns bounds at least as tight
as the ones it was given (the intersection of valid bounds is valid). Floating-point error is
covered by padding every computed bound outward by ``PAD`` (relative + absolute).

The solvers encode the *lowered* network, whose composed weights may differ from the exact
network's by the lowering's error (``lowering.py``). Every ``Bounds`` here holds for both:
the propagation bounds the exact network, and ``deviation`` (a rigorous bound of how far the
two networks' pre-activations can be apart on the set) widens them to cover the lowered one.
The solvers widen their certification margin by the deviation of the outputs.

The input set is a box, optionally intersected with an l2 ball and/or a polytope
{x : A x <= b}; all methods are sound for that intersection (the l2 ball and polytope only
ever tighten, and LP tightening uses the box and the polytope, a superset of the set).
"""

from __future__ import annotations

import enum
import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch
from numpy.typing import NDArray
from verispec.solvers.lowering import PiecewiseLinearNet
from verispec.solvers.propagation import PAD, Sets, TorchNet, crown_bounds, linear_lower, relax
from verispec.solvers.propagation import deviation as propagate_deviation
from verispec.solvers.propagation import interval_bounds as propagate_intervals

from verispec.errors import SpecError, UnsupportedError
from verispec.regions import Ball, Box, FloatArray, Norm, Polytope, Region, frozen_array

LP_PAD = 1e-7
"""Outward padding of LP bounds (the LP solver's optimality tolerance, relative + absolute)."""

HIGHS_THREADS = 1
"""The ``threads`` option of every HiGHS instance verispec creates (``new_highs``). HiGHS runs
one process-wide task scheduler, started with the thread count of the first instance that
runs; a later instance asking for a different count fails (``run()`` gives kError, model status
"Not Set"). Asking the same count everywhere keeps the scheduler consistent."""


Row = tuple[NDArray[np.integer], FloatArray, float, float]
"""An LP row: column indices, coefficients, lower and upper bound."""


class BoundMethod(enum.Enum):
    """How pre-activation bounds are computed (each includes the ones before it)."""

    INTERVAL = "interval"
    LINEAR = "linear"
    LP = "lp"


def _pad(lo: FloatArray, hi: FloatArray, pad: float = PAD) -> tuple[FloatArray, FloatArray]:
    return lo - pad * (1.0 + np.abs(lo)), hi + pad * (1.0 + np.abs(hi))


def _optional_array(value: object) -> FloatArray | None:
    return None if value is None else frozen_array(value)  # type: ignore[arg-type]


@attrs.frozen(eq=False)
class InputSet:
    """A box [lo, hi] over the flattened input, optionally intersected with the l2 ball
    ``||x - center|| <= l2_eps`` and with the polytope ``A x <= b``."""

    lo: FloatArray = attrs.field(converter=frozen_array)
    hi: FloatArray = attrs.field(converter=frozen_array)
    center: FloatArray | None = attrs.field(default=None, converter=_optional_array)
    l2_eps: float | None = None
    A: FloatArray | None = attrs.field(default=None, converter=_optional_array)
    b: FloatArray | None = attrs.field(default=None, converter=_optional_array)

    @classmethod
    def of(cls, region: Region) -> InputSet:
        """The input set of a region (balls and boxes exactly; a polytope without a box gets
        its bounding box from LPs, and must be bounded)."""
        if isinstance(region, Box):
            return cls(region.lo.ravel(), region.hi.ravel())
        if isinstance(region, Ball):
            c = region.center.ravel()
            lo, hi = c - region.eps, c + region.eps
            if region.domain is not None:
                lo = np.maximum(lo, region.domain.lo.ravel())
                hi = np.minimum(hi, region.domain.hi.ravel())
            if region.norm is Norm.LINF:
                return cls(lo, hi)
            return cls(lo, hi, c, region.eps)
        if isinstance(region, Polytope):
            if region.box is not None:
                lo, hi = region.box.lo.ravel(), region.box.hi.ravel()
            else:
                lo, hi = _polytope_box(region.A, region.b)
            return cls(lo, hi, A=region.A, b=region.b)
        raise UnsupportedError(f"the exact solvers do not support region {type(region).__name__}")

    @property
    def size(self) -> int:
        return int(self.lo.size)

    @property
    def empty(self) -> bool:
        """True when the box is empty (lo > hi somewhere): the property then holds vacuously."""
        return bool(np.any(self.lo > self.hi))

    def with_box(self, lo: FloatArray, hi: FloatArray) -> InputSet:
        """The same set intersected with another box (used when splitting the input)."""
        return attrs.evolve(self, lo=np.maximum(self.lo, lo), hi=np.minimum(self.hi, hi))

    def lower(self, M: FloatArray) -> FloatArray:
        """A lower bound of each row of ``M x`` (p, d) over the set."""
        mid, rad = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
        out = M @ mid - np.abs(M) @ rad
        if self.center is not None and self.l2_eps is not None:
            out = np.maximum(out, M @ self.center - self.l2_eps * np.linalg.norm(M, axis=1))
        return np.asarray(out)


def _polytope_box(A: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    d = A.shape[1]
    lp = _LP(np.full(d, -np.inf), np.full(d, np.inf), A, b)
    lo, hi = np.empty(d), np.empty(d)
    for i in range(d):
        e = np.zeros(d)
        e[i] = 1.0
        lo_i, hi_i = lp.minimize(e), -lp.minimize(-e)
        if lp.failures:
            raise UnsupportedError(
                f"the LP bounding the polytope along input {i} failed ({lp.failures[-1]}): "
                "give the polytope a box"
            )
        if lo_i == np.inf:  # infeasible: the polytope is empty (an empty box: lo > hi)
            return np.ones(d), np.zeros(d)
        if not (np.isfinite(lo_i) and np.isfinite(hi_i)):
            raise SpecError(
                f"the polytope is unbounded along input {i}: give it a box (the exact solvers "
                "need a bounded region)"
            )
        lo[i], hi[i] = lo_i, hi_i
    return _pad(lo, hi, LP_PAD)


@attrs.frozen(eq=False)
class Bounds:
    """Valid bounds lo[k] <= z_k <= hi[k] of every pre-activation z_1..z_L over an input set."""

    lo: tuple[FloatArray, ...]
    hi: tuple[FloatArray, ...]
    method: BoundMethod

    def unstable(self, net: PiecewiseLinearNet, k: int) -> NDArray[np.bool_]:
        """ReLU neurons of hidden layer ``k`` whose sign is not fixed over the input set."""
        return np.asarray(net.relu[k] & (self.lo[k] < 0) & (self.hi[k] > 0))

    def num_unstable(self, net: PiecewiseLinearNet) -> int:
        return int(sum(self.unstable(net, k).sum() for k in range(len(net.relu))))

    def intersect(self, other: Bounds) -> Bounds:
        lo = tuple(np.maximum(a, b) for a, b in zip(self.lo, other.lo, strict=True))
        hi = tuple(np.minimum(a, b) for a, b in zip(self.hi, other.hi, strict=True))
        return Bounds(lo, hi, max(self.method, other.method, key=_RANK.index))


_RANK = [BoundMethod.INTERVAL, BoundMethod.LINEAR, BoundMethod.LP]


CPU = torch.device("cpu")


def to_sets(inputs: Sequence[InputSet], device: torch.device = CPU) -> Sets:
    """Input sets (their boxes and l2 balls; a polytope is left to the LP) as one batch."""

    def stack(values: Sequence[FloatArray]) -> torch.Tensor:
        return torch.as_tensor(np.stack(values), dtype=torch.float64, device=device)

    centers = [s.center if s.center is not None else (s.lo + s.hi) / 2 for s in inputs]
    eps = [s.l2_eps if s.l2_eps is not None else np.nan for s in inputs]
    return Sets(
        stack([s.lo for s in inputs]),
        stack([s.hi for s in inputs]),
        stack(centers),
        torch.tensor(eps, dtype=torch.float64, device=device),
    )


def _numpy(values: list[torch.Tensor]) -> tuple[FloatArray, ...]:
    return tuple(v[0].numpy().copy() for v in values)


def _tensors(values: tuple[FloatArray, ...]) -> list[torch.Tensor]:
    return [torch.as_tensor(v[None]) for v in values]


def _finish(net: PiecewiseLinearNet, inp: InputSet, bounds: Bounds) -> Bounds:
    """Bounds of the exact network widened by the deviation: valid for the lowered one too."""
    dev = deviation(net, inp, bounds)
    if dev is None:
        return bounds
    lo = tuple(a - d for a, d in zip(bounds.lo, dev, strict=True))
    hi = tuple(a + d for a, d in zip(bounds.hi, dev, strict=True))
    return Bounds(lo, hi, bounds.method)


def deviation(net: PiecewiseLinearNet, inp: InputSet, bounds: Bounds) -> list[FloatArray] | None:
    """Per layer, a bound of |z_k(exact) - z_k(lowered)| on the set (None when the lowering is
    exact), from the lowering's error bounds and the magnitudes ``bounds`` allow
    (``propagation.deviation``)."""
    if net.exact:
        return None
    with torch.no_grad():
        dev = propagate_deviation(
            TorchNet.of(net, CPU), to_sets([inp]), _tensors(bounds.lo), _tensors(bounds.hi)
        )
    return None if dev is None else list(_numpy(dev))


def output_deviation(net: PiecewiseLinearNet, inp: InputSet, bounds: Bounds) -> FloatArray:
    """Per output, a bound of |f(exact) - f(lowered)| on the set (zeros when the lowering is
    exact); an atom c.y + d deviates by at most |c| times it."""
    dev = deviation(net, inp, bounds)
    return np.zeros(net.num_outputs) if dev is None else np.asarray(dev[-1] * (1 + PAD))


def interval_bounds(net: PiecewiseLinearNet, inp: InputSet) -> Bounds:
    """Interval arithmetic, layer by layer (the first layer bounded exactly over the set)."""
    with torch.no_grad():
        los, his = propagate_intervals(TorchNet.of(net, CPU), to_sets([inp]))
    return _finish(net, inp, Bounds(_numpy(los), _numpy(his), BoundMethod.INTERVAL))


@attrs.frozen(eq=False)
class LinearBound:
    """``coef @ x + const`` is a linear lower bound of a linear function of the outputs over
    the input set; ``value`` is its minimum over the set (a valid numeric lower bound)."""

    coef: FloatArray
    const: FloatArray
    value: FloatArray


def back_substitute(
    net: PiecewiseLinearNet,
    inp: InputSet,
    bounds: Bounds,
    k: int,
    spec: FloatArray,
    offset: FloatArray,
) -> LinearBound:
    """CROWN lower bound of ``spec @ z_k + offset`` (spec (p, n_k)) over the input set, for
    the exact network, by back-substitution through the relaxations of layers < k (0-based
    ``k``)."""
    C = torch.as_tensor(np.array(spec, dtype=np.float64)[None])
    d = torch.as_tensor(np.array(offset, dtype=np.float64)[None])
    with torch.no_grad():
        net_t, sets = TorchNet.of(net, CPU), to_sets([inp])
        layers = relax(net_t, sets, _tensors(bounds.lo), _tensors(bounds.hi), k)
        lb = linear_lower(net_t, sets, layers, C, d, k)
    return LinearBound(lb.coef[0].numpy(), lb.const[0].numpy(), lb.value[0].numpy())


def linear_bounds(net: PiecewiseLinearNet, inp: InputSet, start: Bounds | None = None) -> Bounds:
    """Back-substitution bounds for every layer, intersected with interval bounds (and with
    ``start`` when given)."""
    given = None if start is None else (_tensors(start.lo), _tensors(start.hi))
    with torch.no_grad():
        los, his = crown_bounds(TorchNet.of(net, CPU), to_sets([inp]), given)
    return _finish(net, inp, Bounds(_numpy(los), _numpy(his), BoundMethod.LINEAR))


@functools.cache
def silence_highs_banner() -> bool:
    """Build a first ``highspy.Highs`` with the process's stdout (file descriptor 1) sent to
    /dev/null: HiGHS prints its banner from C++ on the first construction in a process, before
    any option can silence it, and verispec's stdout carries answers (``vnnlib`` prints ``sat``
    / ``unsat`` first). Later constructions print nothing. Cached: done once per process."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return True


def new_highs() -> Any:
    """A silent ``highspy.Highs`` with verispec's thread count (``HIGHS_THREADS``)."""
    import highspy

    silence_highs_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", HIGHS_THREADS)
    return h


def run_highs(h: Any) -> Any:
    """``h.run()``, its ``HighsStatus``. When the run fails before solving ("Not Set": HiGHS
    used outside verispec started the process-wide scheduler with another thread count), the
    scheduler is restarted once and the run retried."""
    import highspy

    status = h.run()
    if (
        status == highspy.HighsStatus.kError
        and h.getModelStatus() == highspy.HighsModelStatus.kNotset
    ):
        highspy.Highs.resetGlobalScheduler(True)
        status = h.run()
    return status


def highs_outcome(h: Any, status: Any) -> str:
    """The run status and model status of a HiGHS run, for a result's detail."""
    return f"HiGHS run {status.name}, model status {h.modelStatusToString(h.getModelStatus())!r}"


class _LP:
    """A HiGHS LP over fixed constraints whose objective changes between solves. ``failures``
    records every solve that ended neither optimal, infeasible nor unbounded."""

    def __init__(
        self,
        col_lo: FloatArray,
        col_hi: FloatArray,
        A: FloatArray | None = None,
        b: FloatArray | None = None,
        rows: list[Row] | None = None,
    ) -> None:
        import highspy

        self._highspy = highspy
        self.h = new_highs()
        self.failures: list[str] = []
        inf = highspy.kHighsInf
        n = col_lo.size
        self.n = n
        # largest |x_i| over the column bounds (0 where unbounded: then |value| alone pads)
        span = np.maximum(np.abs(col_lo), np.abs(col_hi))
        self.span = np.where(np.isfinite(span), span, 0.0)
        lp = highspy.HighsLp()
        lp.num_col_ = n
        lp.col_cost_ = np.zeros(n)
        lp.col_lower_ = np.where(np.isfinite(col_lo), col_lo, -inf)
        lp.col_upper_ = np.where(np.isfinite(col_hi), col_hi, inf)
        starts, indices, values, r_lo, r_hi = [0], [], [], [], []
        all_rows = list(rows or [])
        if A is not None and b is not None:
            all_rows += [
                (np.flatnonzero(a), a[a != 0], -inf, float(bi)) for a, bi in zip(A, b, strict=True)
            ]
        for idx, val, lo, hi in all_rows:
            indices.append(np.asarray(idx, dtype=np.int32))
            values.append(np.asarray(val, dtype=np.float64))
            starts.append(starts[-1] + len(idx))
            r_lo.append(lo)
            r_hi.append(hi)
        lp.num_row_ = len(all_rows)
        lp.row_lower_ = np.asarray(r_lo, dtype=np.float64)
        lp.row_upper_ = np.asarray(r_hi, dtype=np.float64)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.start_ = np.asarray(starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32)
        lp.a_matrix_.value_ = np.concatenate(values) if values else np.zeros(0)
        self.h.passModel(lp)

    def minimize(self, cost: FloatArray, time_limit: float | None = None) -> float:
        """min cost @ x over the LP (-inf when unbounded; +inf when infeasible); a lower bound
        padded for the solver's tolerance. -inf (no bound) whenever the solve did not end
        optimal, infeasible or unbounded: a failed or interrupted LP never bounds anything
        (recorded in ``failures`` unless it ran out of time)."""
        hs = self._highspy
        self.h.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), cost)
        if time_limit is not None:
            self.h.setOptionValue("time_limit", max(time_limit, 1e-3))
        run = run_highs(self.h)
        status = self.h.getModelStatus()
        if run != hs.HighsStatus.kError:
            if status == hs.HighsModelStatus.kInfeasible:
                return np.inf
            if status in (
                hs.HighsModelStatus.kUnbounded,
                hs.HighsModelStatus.kUnboundedOrInfeasible,
            ):
                return -np.inf  # no finite lower bound (or an empty set: any bound holds)
            if status == hs.HighsModelStatus.kOptimal:
                value = self.h.getInfo().objective_function_value
                return float(value - LP_PAD * (1.0 + abs(value) + float(np.abs(cost) @ self.span)))
        if status != hs.HighsModelStatus.kTimeLimit:
            self.failures.append(highs_outcome(self.h, run))
        return -np.inf


def _layer_rows(
    net: PiecewiseLinearNet, bounds: Bounds, k: int, offsets: list[int]
) -> tuple[list[Row], FloatArray, FloatArray]:
    """LP rows and column bounds for h_k (0-based hidden layer k) from h_{k-1}: exact for stable
    and pass-through neurons, the triangle relaxation for unstable ReLUs."""
    W, b = net.weights[k], net.biases[k]
    lo, hi = bounds.lo[k], bounds.hi[k]
    relu = net.relu[k]
    prev = np.arange(offsets[k], offsets[k + 1])
    rows: list[Row] = []
    col_lo = np.where(relu, np.maximum(lo, 0), lo)
    col_hi = np.where(relu, np.maximum(hi, 0), hi)
    for i in range(W.shape[0]):
        me = offsets[k + 1] + i
        w = W[i]
        nz = np.flatnonzero(w)
        idx = np.concatenate([[me], prev[nz]])
        if relu[i] and hi[i] <= 0:
            continue  # h = 0: fixed by its column bounds
        if not relu[i] or lo[i] >= 0:
            rows.append((idx, np.concatenate([[1.0], -w[nz]]), float(b[i]), float(b[i])))
            continue
        # h >= z  <=>  h - w.h_prev >= b ;  h <= s (z - l)  <=>  h - s w.h_prev <= s (b - l)
        s = hi[i] / (hi[i] - lo[i])
        rows.append((idx, np.concatenate([[1.0], -w[nz]]), float(b[i]), np.inf))
        rows.append((idx, np.concatenate([[1.0], -s * w[nz]]), -np.inf, float(s * (b[i] - lo[i]))))
    return rows, col_lo, col_hi


def lp_bounds(
    net: PiecewiseLinearNet,
    inp: InputSet,
    start: Bounds | None = None,
    deadline: float | None = None,
) -> Bounds:
    """Tighten the bounds of every unstable ReLU by two LPs over the triangle relaxation of the
    layers before it (after back-substitution). Stops tightening (keeping valid, looser bounds)
    when ``deadline`` (a ``time.perf_counter`` value) passes."""
    bounds = linear_bounds(net, inp, start)
    los, his = list(bounds.lo), list(bounds.hi)
    sizes = [inp.size] + [w.shape[0] for w in net.weights[:-1]]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    rows: list[Row] = []
    col_lo, col_hi = [inp.lo], [inp.hi]
    for k in range(1, net.depth - 1):
        current = Bounds(tuple(los), tuple(his), BoundMethod.LP)
        new_rows, c_lo, c_hi = _layer_rows(net, current, k - 1, offsets)
        rows += new_rows
        col_lo.append(c_lo)
        col_hi.append(c_hi)
        targets = np.flatnonzero(current.unstable(net, k))
        if targets.size == 0:
            continue
        if deadline is not None and time.perf_counter() > deadline:
            break
        lp = _LP(np.concatenate(col_lo), np.concatenate(col_hi), None, None, rows + _poly_rows(inp))
        W, b = net.weights[k], net.biases[k]
        lo, hi = los[k].copy(), his[k].copy()
        for i in targets:
            cost = np.zeros(lp.n)
            cost[offsets[k] : offsets[k + 1]] = W[i]
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                break
            lo[i] = max(lo[i], lp.minimize(cost, left) + b[i])
            if lo[i] >= 0:
                continue
            hi[i] = min(hi[i], -lp.minimize(-cost, left) + b[i])
        los[k], his[k] = lo, hi
        # The LP bounds the lowered network: widened, they hold for the exact one too.
        widened = _finish(net, inp, Bounds(tuple(los), tuple(his), BoundMethod.LP))
        tightened = linear_bounds(net, inp, widened)
        los, his = list(tightened.lo), list(tightened.hi)
    return Bounds(tuple(los), tuple(his), BoundMethod.LP)


def _poly_rows(inp: InputSet) -> list[Row]:
    if inp.A is None or inp.b is None:
        return []
    return [
        (np.flatnonzero(a), a[a != 0], -np.inf, float(bi))
        for a, bi in zip(inp.A, inp.b, strict=True)
    ]


def compute_bounds(
    net: PiecewiseLinearNet,
    inp: InputSet,
    method: BoundMethod = BoundMethod.LP,
    deadline: float | None = None,
) -> Bounds:
    """Bounds by ``method`` (each method includes the cheaper ones)."""
    if method is BoundMethod.INTERVAL:
        return interval_bounds(net, inp)
    if method is BoundMethod.LINEAR:
        return linear_bounds(net, inp)
    return lp_bounds(net, inp, deadline=deadline)
