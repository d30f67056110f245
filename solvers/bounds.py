"""Pre-activation bounds over an input set: interval arithmetic, linear bound propagation
(CROWN-style back-substitution) and LP tightening.

The exact encodings take their big-M constants from these bounds and drop the binaries of
stable ReLUs, so every bound must be *valid* (a true lower / upper bound of the neuron over
the whole input set); tightness only buys speed. Each method returns bounds at least as tight
as the ones it was given (the intersection of valid bounds is valid). Floating-point error is
covered by padding every computed bound outward by ``PAD`` (relative + absolute).

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
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray
from verispec.solvers.lowering import PiecewiseLinearNet

from verispec.errors import SpecError, UnsupportedError
from verispec.regions import Ball, Box, FloatArray, Norm, Polytope, Region, frozen_array

PAD = 1e-9
"""Relative and absolute outward padding of every computed bound (float64 rounding)."""

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


def _activate(
    net: PiecewiseLinearNet, k: int, lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, FloatArray]:
    mask = net.relu[k]
    return np.where(mask, np.maximum(lo, 0), lo), np.where(mask, np.maximum(hi, 0), hi)


def _affine_interval(
    W: FloatArray, b: FloatArray, lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Bounds of W a + b for lo <= a <= hi, padded relative to the magnitude of the terms
    summed (cancellation cannot hide their rounding)."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    centre, spread = W @ mid + b, np.abs(W) @ rad
    mag = np.abs(W) @ (np.abs(mid) + rad) + np.abs(b)
    slack = PAD * (1.0 + mag)
    return centre - spread - slack, centre + spread + slack


def interval_bounds(net: PiecewiseLinearNet, inp: InputSet) -> Bounds:
    """Interval arithmetic, layer by layer (the first layer bounded exactly over the set)."""
    W0, b0 = net.weights[0], net.biases[0]
    mag0 = np.abs(W0) @ np.maximum(np.abs(inp.lo), np.abs(inp.hi)) + np.abs(b0)
    slack = PAD * (1.0 + mag0)
    lo, hi = inp.lower(W0) + b0 - slack, -inp.lower(-W0) + b0 + slack
    later = _interval_from(net, 0, lo, hi)
    los = [lo] + [pair[0] for pair in later]
    his = [hi] + [pair[1] for pair in later]
    return Bounds(tuple(los), tuple(his), BoundMethod.INTERVAL)


def _relaxation(
    net: PiecewiseLinearNet, k: int, lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-neuron linear relaxation of h_k = act(z_k): lower slope, upper slope, upper
    intercept (lower intercept is 0): lower_slope z <= h <= upper_slope z + upper_icpt."""
    relu = net.relu[k]
    unstable = relu & (lo < 0) & (hi > 0)
    dead = relu & (hi <= 0)
    up_slope = np.where(dead, 0.0, 1.0)
    up_icpt = np.zeros_like(lo)
    lo_slope = up_slope.copy()
    if unstable.any():
        s = hi[unstable] / (hi[unstable] - lo[unstable])
        up_slope[unstable] = s
        up_icpt[unstable] = -s * lo[unstable]
        lo_slope[unstable] = (hi[unstable] >= -lo[unstable]).astype(float)
    return lo_slope, up_slope, up_icpt


@attrs.frozen(eq=False)
class LinearBound:
    """``coef @ x + const`` is a valid lower bound of a linear function of the outputs over the
    input set; ``value`` is its minimum over the set (a valid numeric lower bound)."""

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
    """CROWN lower bound of ``spec @ z_k + offset`` (spec (p, n_k)) over the input set, by
    back-substitution through the relaxations of layers < k (0-based ``k``)."""
    M = spec @ net.weights[k]
    const = spec @ net.biases[k] + offset
    # Magnitudes of everything summed so far: the rounding of M and const is bounded relative
    # to them, not to the (possibly cancelled) results.
    M_mag = np.abs(spec) @ np.abs(net.weights[k])
    const_mag = np.abs(spec) @ np.abs(net.biases[k]) + np.abs(offset)
    for j in range(k - 1, -1, -1):
        lo_slope, up_slope, up_icpt = _relaxation(net, j, bounds.lo[j], bounds.hi[j])
        pos = M >= 0
        slope = np.where(pos, lo_slope, up_slope)
        icpt = np.where(pos, 0.0, M * up_icpt)
        const = const + icpt.sum(axis=1)
        const_mag = const_mag + np.abs(icpt).sum(axis=1) + M_mag @ np.abs(up_icpt)
        M = M * slope
        M_mag = M_mag * np.maximum(np.abs(lo_slope), np.abs(up_slope))
        const = const + M @ net.biases[j]
        const_mag = const_mag + M_mag @ np.abs(net.biases[j])
        M = M @ net.weights[j]
        M_mag = M_mag @ np.abs(net.weights[j])
    value = inp.lower(M) + const
    mag = np.abs(value) + (np.abs(M) + M_mag).sum(axis=1) * _scale(inp) + const_mag
    value = value - PAD * (1.0 + mag)
    return LinearBound(M, const, value)


def _scale(inp: InputSet) -> float:
    return float(np.max(np.abs(np.concatenate([inp.lo, inp.hi])), initial=1.0))


def linear_bounds(net: PiecewiseLinearNet, inp: InputSet, start: Bounds | None = None) -> Bounds:
    """Back-substitution bounds for every layer, intersected with interval bounds (and with
    ``start`` when given)."""
    base = interval_bounds(net, inp) if start is None else start
    los, his = list(base.lo), list(base.hi)
    for k in range(1, net.depth):
        current = Bounds(tuple(los), tuple(his), BoundMethod.LINEAR)
        n = net.weights[k].shape[0]
        spec = np.vstack([np.eye(n), -np.eye(n)])
        lb = back_substitute(net, inp, current, k, spec, np.zeros(2 * n)).value
        lo, hi = np.maximum(los[k], lb[:n]), np.minimum(his[k], -lb[n:])
        if k < net.depth - 1:
            # Tighter bounds of layer k change the interval bounds of the layers after it.
            los[k], his[k] = lo, hi
            refreshed = _interval_from(net, k, lo, hi)
            for j, (l2, h2) in enumerate(refreshed, start=k + 1):
                los[j], his[j] = np.maximum(los[j], l2), np.minimum(his[j], h2)
        else:
            los[k], his[k] = lo, hi
    return Bounds(tuple(los), tuple(his), BoundMethod.LINEAR)


def _interval_from(
    net: PiecewiseLinearNet, k: int, lo: FloatArray, hi: FloatArray
) -> list[tuple[FloatArray, FloatArray]]:
    """Interval bounds of layers k+1.. from the bounds (lo, hi) of layer k."""
    out = []
    for j in range(k + 1, net.depth):
        a_lo, a_hi = _activate(net, j - 1, lo, hi)
        lo, hi = _affine_interval(net.weights[j], net.biases[j], a_lo, a_hi)
        out.append((lo, hi))
    return out


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
        tightened = linear_bounds(net, inp, Bounds(tuple(los), tuple(his), BoundMethod.LP))
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


# -- batched bounds over many boxes (input branch and bound) -------------------------------------


def _relax_batch(
    relu: NDArray[np.bool_], lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``_relaxation`` for bounds of shape (B, n): lower slope, upper slope, upper intercept."""
    unstable = relu & (lo < 0) & (hi > 0)
    dead = relu & (hi <= 0)
    base = np.where(dead, 0.0, 1.0)
    s = np.where(unstable, hi / np.where(unstable, hi - lo, 1.0), base)
    up_icpt = np.where(unstable, -s * lo, 0.0)
    lo_slope = np.where(unstable, (hi >= -lo).astype(np.float64), base)
    return lo_slope, s, up_icpt


def _concretize(
    A: FloatArray, mid: FloatArray, rad: FloatArray, mag: FloatArray, sign: float
) -> FloatArray:
    """Min (sign -1) or max (sign +1) over each box (mid, rad (B, d)) of the linear functions
    ``x @ A[:, :d] + A[:, d]`` (A (B, d + 1, n): input coefficients, then the constant), padded
    outward by ``PAD (1 + |v| + mag)``, where ``mag`` (B, n) bounds the sum of the absolute
    values of every term that entered them (the rounding error of every dot product on the way
    is below depth x width x 2^-53 x mag, far below PAD x mag)."""
    d = mid.shape[1]
    coef = A[:, :d, :]
    v = (coef * mid[:, :, None]).sum(axis=1) + sign * (np.abs(coef) * rad[:, :, None]).sum(axis=1)
    v = v + A[:, d, :]
    return v + sign * PAD * (1.0 + np.abs(v) + mag)


def _gemm(A: FloatArray, W: FloatArray) -> FloatArray:
    """``A @ W`` for A (B, p, n) and W (n, m) as one matrix product."""
    B, p, n = A.shape
    return (A.reshape(B * p, n) @ W).reshape(B, p, W.shape[1])


def batch_bounds(
    net: PiecewiseLinearNet, lo: FloatArray, hi: FloatArray
) -> tuple[list[FloatArray], list[FloatArray]]:
    """Valid pre-activation bounds of every layer over each box [lo[i], hi[i]] ((B, d) arrays),
    by forward propagation of linear lower / upper functions of the input (the symbolic
    intervals of ReluVal / Neurify with the relaxations of ``_relaxation``), intersected with
    interval arithmetic. Much cheaper than back-substitution for each neuron (O(n^2 d) per
    layer instead of O(n^3) per pair of layers) and tight for low-dimensional inputs.
    Returns per-layer arrays of shape (B, n_k)."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    scale = np.maximum(np.abs(lo), np.abs(hi))
    B, d = lo.shape
    W, b = net.weights[0], net.biases[0]
    # Linear functions of x as (B, d + 1, n): the coefficients of x, then the constant.
    Al = np.broadcast_to(np.vstack([W.T, b]), (B, d + 1, b.size))
    Au = Al
    mag = scale @ np.abs(W).T + np.abs(b)  # sum of |terms| of z_1 = W x + b, per box
    f_lo = f_hi = lo  # the symbolic functions' own bounds (before the interval intersection)
    los: list[FloatArray] = []
    his: list[FloatArray] = []
    a_lo = a_hi = lo
    for k in range(net.depth):
        if k:
            W, b = net.weights[k], net.biases[k]
            Wp, Wn, Wa = np.maximum(W, 0.0).T, np.minimum(W, 0.0).T, np.abs(W).T
            Al, Au = _gemm(Al, Wp) + _gemm(Au, Wn), _gemm(Au, Wp) + _gemm(Al, Wn)
            Al[:, d, :] += b
            Au[:, d, :] += b
            # The previous layer's relaxed values lie in [-|l|, u + |l|] over the box (l, u its
            # symbolic bounds): |W| times that bounds the terms entering this layer.
            a_lo, a_hi = _activate(net, k - 1, los[-1], his[-1])
            mag = (np.maximum(np.abs(f_lo), np.abs(f_hi)) + np.abs(f_lo)) @ Wa + np.abs(b)
        z_lo = _concretize(Al, mid, rad, mag, -1.0)
        z_hi = _concretize(Au, mid, rad, mag, 1.0)
        f_lo, f_hi = z_lo, z_hi
        if k:
            m, r = (a_lo + a_hi) / 2, (a_hi - a_lo) / 2
            i_lo, i_hi = m @ W.T - r @ Wa + b, m @ W.T + r @ Wa + b
            i_pad = PAD * (1.0 + np.maximum(np.abs(i_lo), np.abs(i_hi)))
            i_pad = i_pad + PAD * (np.maximum(np.abs(a_lo), np.abs(a_hi)) @ Wa + np.abs(b))
            z_lo, z_hi = np.maximum(z_lo, i_lo - i_pad), np.minimum(z_hi, i_hi + i_pad)
        los.append(z_lo)
        his.append(z_hi)
        if k == net.depth - 1:
            break
        relu = net.relu[k]
        unstable = relu & (z_lo < 0) & (z_hi > 0)
        dead = relu & (z_hi <= 0)
        s = np.where(unstable, z_hi / np.where(unstable, z_hi - z_lo, 1.0), np.where(dead, 0, 1))
        alpha = np.where(unstable, (z_hi >= -z_lo).astype(np.float64), np.where(dead, 0, 1))
        # relu(z) <= s (z - l) <= s (U(x) - l) and relu(z) >= alpha z >= alpha L(x), s, alpha >= 0.
        Au = Au * s[:, None, :]
        Au[:, d, :] -= np.where(unstable, s * z_lo, 0.0)
        Al = Al * alpha[:, None, :]
    return los, his


def batch_unstable(
    net: PiecewiseLinearNet, los: list[FloatArray], his: list[FloatArray]
) -> NDArray:
    """Number of unstable ReLUs of each box (B,) (zeros for a network without ReLUs)."""
    count = np.zeros(los[0].shape[0] if los else 0, dtype=np.int64)
    for m, lo, hi in zip(net.relu, los, his, strict=False):
        count = count + (m & (lo < 0) & (hi > 0)).sum(axis=1)
    return count


def batch_back_substitute(
    net: PiecewiseLinearNet,
    lo: FloatArray,
    hi: FloatArray,
    los: list[FloatArray],
    his: list[FloatArray],
    C: FloatArray,
    d: FloatArray,
    k: int | None = None,
) -> tuple[FloatArray, FloatArray]:
    """CROWN lower bounds of ``C @ z_k + d`` (C (p, n_k), or (B, p, n_k) for one matrix per
    box; d (p,) or (B, p); the outputs f(x) = z_L by default) over each box (lo, hi (B, d))
    given valid pre-activation bounds ``los``/``his`` of the layers before it (per layer
    (B, n_j)): the bound values (B, p) and the input coefficients (B, p, d) of the linear
    lower bounds."""
    B = lo.shape[0]
    k = net.depth - 1 if k is None else k
    Wk, bk = net.weights[k], net.biases[k]
    C3 = np.broadcast_to(C, (B, *C.shape[-2:]))
    p = C3.shape[1]
    M = _gemm(C3, Wk)
    const = np.broadcast_to(C3 @ bk + d, (B, p)).copy()
    # ``mag`` bounds the sum of |terms| of every dot product on the way, evaluated at the
    # magnitudes the back-substituted quantities take over the box (|h_j| <= ``size[j]``), for
    # the padding of the rounding error.
    size = [np.maximum(np.abs(lo), np.abs(hi))]
    for j in range(k):
        a_lo, a_hi = _activate(net, j, los[j], his[j])
        size.append(np.maximum(np.abs(a_lo), np.abs(a_hi)) + np.abs(los[j]))
    terms = size[k] @ np.abs(Wk).T + np.abs(bk)
    mag = np.einsum("bpn,bn->bp", np.abs(C3), terms) + np.abs(d)
    for j in range(k - 1, -1, -1):
        lo_slope, up_slope, up_icpt = _relax_batch(net.relu[j], los[j], his[j])
        pos = M >= 0
        const = const + np.where(pos, 0.0, M * up_icpt[:, None, :]).sum(axis=2)
        M = M * np.where(pos, lo_slope[:, None, :], up_slope[:, None, :])
        const = const + M @ net.biases[j]
        absM = np.abs(M)
        terms = size[j] @ np.abs(net.weights[j]).T + np.abs(net.biases[j]) + np.abs(up_icpt)
        mag = mag + np.einsum("bpn,bn->bp", absM, terms)
        M = _gemm(M, net.weights[j])
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    absM = np.abs(M)
    value = np.einsum("bpd,bd->bp", M, mid) - np.einsum("bpd,bd->bp", absM, rad) + const
    mag = mag + np.einsum("bpd,bd->bp", absM, size[0]) + np.abs(const)
    value = value - PAD * (1.0 + np.abs(value) + mag)
    return value, M


def batch_linear_bounds(
    net: PiecewiseLinearNet, lo: FloatArray, hi: FloatArray
) -> tuple[list[FloatArray], list[FloatArray]]:
    """``batch_bounds`` tightened by CROWN back-substitution for the hidden layers after the
    first (which is exact), layer by layer, each using the tightened bounds before it; only
    the neurons not provably dead in a box are back-substituted for it."""
    los, his = batch_bounds(net, lo, hi)
    B = lo.shape[0]
    rows = np.arange(B)[:, None]
    for k in range(1, net.depth - 1):
        # Every neuron not provably dead: unstable ones for their relaxations, active and
        # pass-through ones for the interval bounds of the next layer.
        unstable = ~net.relu[k] | (his[k] > 0)
        U = int(unstable.sum(axis=1).max(initial=0))
        if U == 0:
            continue
        # One spec per box: its own unstable neurons first (padded with zero rows).
        order = np.argsort(~unstable, axis=1, kind="stable")[:, :U]
        valid = np.take_along_axis(unstable, order, axis=1)
        eye = np.zeros((B, U, unstable.shape[1]))
        eye[rows, np.arange(U)[None, :], order] = valid
        spec = np.concatenate([eye, -eye], axis=1)
        val, _ = batch_back_substitute(net, lo, hi, los, his, spec, np.zeros(2 * U), k)
        new_lo = np.where(valid, val[:, :U], -np.inf)
        new_hi = np.where(valid, -val[:, U:], np.inf)
        los[k][rows, order] = np.maximum(los[k][rows, order], new_lo)
        his[k][rows, order] = np.minimum(his[k][rows, order], new_hi)
        if k + 1 < net.depth - 1:
            # Refresh the next layer's interval bounds from the tightened ones (cheap).
            W, b, Wa = net.weights[k + 1], net.biases[k + 1], np.abs(net.weights[k + 1])
            a_lo, a_hi = _activate(net, k, los[k], his[k])
            m, r = (a_lo + a_hi) / 2, (a_hi - a_lo) / 2
            i_lo, i_hi = m @ W.T - r @ Wa.T + b, m @ W.T + r @ Wa.T + b
            pad = PAD * (1.0 + np.maximum(np.abs(i_lo), np.abs(i_hi)))
            pad = pad + PAD * (np.maximum(np.abs(a_lo), np.abs(a_hi)) @ Wa.T + np.abs(b))
            los[k + 1] = np.maximum(los[k + 1], i_lo - pad)
            his[k + 1] = np.minimum(his[k + 1], i_hi + pad)
    return los, his
