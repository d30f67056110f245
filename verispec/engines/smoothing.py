"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019), batched across points.

The smoothed classifier is g(x) = argmax_c P[f(x + d) = c] with d ~ N(0, sigma^2 I). Its
guarantees are *probabilistic* (they hold with probability >= 1 - alpha over the sampling) and
concern g, not the network f:

- CERTIFY: n0 samples choose c_A; n fresh samples count n_A = #{f(x + d) = c_A}; p_A is bounded
  below by the one-sided Clopper-Pearson bound at level 1 - alpha (a beta quantile); if that is
  < 1/2 the answer is ABSTAIN, else g is constant = c_A on the l2 ball of radius
  sigma * Phi^-1(p_A_lower). A point is CERTIFIED for a spec's eps when the radius exceeds eps.
- PREDICT: the top two counts of n samples and a two-sided binomial test; ABSTAIN when its
  p-value exceeds alpha.

Samples of many points share batches: the (point, sample) pairs of a chunk of points are
enumerated flat and cut into batches of ``batch_size`` rows, so a small model stays busy and
memory is bounded by the batch size.

Noise: every point of a run draws its own. The run's ``seed`` and the point's index in the run
key one generator stream per point and sampling phase (``Phase``: the n0 selection draws, the n
estimation draws, PREDICT's draws), ``NoiseSource.stream_seed``: an injective function of
(index, phase) for a seed, so two points of a run never share a stream (their certificates'
failure events are independent) and a point's noise is the same whatever the chunk of points
it is checked in and whatever the batch size. A stream is drawn in fixed blocks of samples
(``BLOCK_ELEMENTS``), each one call of the generator, a block cut across batches being drawn
whole and carried over. A point's index is its position in the ``check`` call's ``xs``, shifted
by ``numbered`` (``verispec.check`` numbers its chunks by their first point's index in the
data); ``certify``, ``predict`` and ``counts`` use the same numbering. The same seed gives the
same results on one device (the CPU's generator differs from a GPU's).
"""

from __future__ import annotations

import copy
import enum
import functools
import math
import time
import warnings
from collections.abc import Sequence
from typing import Self

import attrs
import numpy as np
import torch
from scipy import stats

from verispec import options
from verispec.engines.base import EngineBase, register_engine
from verispec.errors import SpecError, UnsupportedError
from verispec.network import Network
from verispec.options import resolve_device
from verispec.regions import Box, FloatArray, Norm
from verispec.results import BatchResult, GuaranteeKind, Verdict
from verispec.specs import LocalRobustness, PointSpec, Spec

NO_CLASS = -1
"""The prediction recorded when the smoothed classifier abstains."""


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided lower confidence bound (level 1 - alpha) on a binomial proportion: the alpha
    quantile of Beta(k, n - k + 1); 0 when k = 0."""
    k = np.asarray(successes, dtype=np.float64)
    safe_k = np.maximum(k, 1.0)
    out = stats.beta.ppf(alpha, safe_k, trials - safe_k + 1)
    return np.where(k > 0, out, 0.0)


def best_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with n samples (when every sample votes c_A);
    0 when even that cannot reach p_A_lower > 1/2."""
    p = float(clopper_pearson_lower(np.array([n]), n, alpha)[0])
    return sigma * float(stats.norm.ppf(p)) if p > 0.5 else 0.0


@attrs.frozen
class SmoothingConfig:
    """Options of the smoothing engine."""

    sigma: float = attrs.field(default=0.25, validator=options.number(0.0))
    n0: int = attrs.field(default=100, validator=options.integer(1))
    n: int = attrs.field(default=10_000, validator=options.integer(1))
    alpha: float = attrs.field(default=0.001, validator=options.number(0.0, 0.5))
    batch_size: int = attrs.field(default=10_000, validator=options.integer(1))
    device: str = attrs.field(default="cpu", validator=options.device)
    seed: int = attrs.field(default=0, validator=options.seed)


BLOCK_ELEMENTS = 1 << 20
"""A point's noise stream is drawn in blocks of ``max(1, BLOCK_ELEMENTS // input size)``
samples (the last block of a phase holds the rest), each one call of its generator: a sample's
noise depends on its point and its position in the stream, never on how rows are batched."""


class Phase(enum.IntEnum):
    """The sampling phases of a point, each drawing from its own stream."""

    SELECT = 0
    """CERTIFY's n0 draws choosing c_A."""
    ESTIMATE = 1
    """CERTIFY's n draws counting n_A."""
    PREDICT = 2
    """PREDICT's n draws."""


MAX_POINT_INDEX = (1 << 32) // len(Phase) - 1
"""The largest point index a run can number (streams are numbered in 32 bits: index * 3 +
phase)."""

_MASK32 = 0xFFFFFFFF


def _mix32(h: int) -> int:
    """MurmurHash3's 32-bit finalizer: a bijection of [0, 2^32) that scatters nearby inputs."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> int:
    """32 bits of a run seed, mixed (SeedSequence) so that nearby seeds are far apart."""
    return int(np.random.SeedSequence(seed % (1 << 128)).generate_state(1, np.uint32)[0])


@attrs.frozen
class NoiseSource:
    """The Gaussian noise of one sampling phase of a run with this seed: the point with index i
    draws from a generator seeded with ``stream_seed(i)`` (a CPU generator is an mt19937, a GPU's
    a Philox counter generator keyed by that seed)."""

    seed: int
    phase: Phase

    def stream_seed(self, index: int) -> int:
        """The seed of point ``index``'s stream: the stream number index * 3 + phase mixed with
        the run seed by bijections of 32-bit words (xor, ``_mix32``), hence distinct for every
        (index, phase) of a run. 32 bits because the CPU generator keeps only 32 of a seed's bits:
        a 64-bit hash truncated to them would collide within a few 10^4 points."""
        if not 0 <= index <= MAX_POINT_INDEX:
            raise SpecError(f"point index {index} out of range 0..{MAX_POINT_INDEX}")
        return _mix32(((index * len(Phase) + self.phase) ^ _seed_key(self.seed)) & _MASK32)


class PointNoise:
    """The noise rows of ``num`` samples at each point with the given indices (row r: sample
    r % num of point r // num), filled in order, batch after batch, by ``fill``."""

    def __init__(
        self,
        source: NoiseSource,
        indices: np.ndarray,
        num: int,
        shape: tuple[int, ...],
        device: torch.device,
    ) -> None:
        self.source = source
        self.indices = indices
        self.num = num
        self.shape = shape
        self.device = device
        self.block = max(1, BLOCK_ELEMENTS // max(1, math.prod(shape)))
        self.rows = len(indices) * num
        self.next_row = 0
        self._generator = torch.Generator(device=device)
        self._buffer: torch.Tensor | None = None
        self._carry: torch.Tensor | None = None  # a block drawn whole, not yet all used
        self._carry_row = 0  # the row of its first sample

    def fill(self, out: torch.Tensor) -> None:
        """Write the next ``len(out)`` rows into ``out`` (float32, contiguous, on the device)."""
        start, stop = self.next_row, self.next_row + out.shape[0]
        if stop > self.rows:
            raise ValueError(f"noise rows {start}..{stop} asked for, the points have {self.rows}")
        row = start
        while row < stop:
            if self._carry is not None:  # the rest of a block begun in an earlier fill
                carry_end = self._carry_row + self._carry.shape[0]
                hi = min(carry_end, stop)
                out[row - start : hi - start].copy_(
                    self._carry[row - self._carry_row : hi - self._carry_row]
                )
                if hi == carry_end:
                    self._carry = None
                row = hi
                continue
            point, sample = divmod(row, self.num)
            if sample == 0:
                self._generator.manual_seed(self.source.stream_seed(int(self.indices[point])))
            hi = row + min(self.block, self.num - sample)
            if hi <= stop:
                out[row - start : hi - start].normal_(generator=self._generator)
                row = hi
            else:  # cut by the end of the batch: drawn whole, the rest carried over
                if self._buffer is None:
                    self._buffer = torch.empty(
                        (self.block, *self.shape), dtype=torch.float32, device=self.device
                    )
                self._carry = self._buffer[: hi - row]
                self._carry.normal_(generator=self._generator)
                self._carry_row = row
        self.next_row = stop


@attrs.frozen(eq=False)
class Prediction:
    """PREDICT for a batch of points: the class (NO_CLASS when abstaining) and the p-value."""

    classes: np.ndarray
    p_values: FloatArray


@register_engine("smoothing")
class SmoothingEngine(EngineBase):
    """Certify the Gaussian-smoothed classifier of a network (l2 local robustness)."""

    name = "smoothing"
    Config = SmoothingConfig
    spec_kinds = (LocalRobustness,)
    unsupported_reason = (
        "it certifies local robustness only: a smoothed classifier's top-k set or group is not "
        "certified by the class-probability bound"
    )

    def __init__(self, config: SmoothingConfig | None = None) -> None:
        self.config = config or SmoothingConfig()
        self.device = resolve_device(self.config.device)
        self._modules: dict[str, torch.nn.Module] = {}
        self._first: int = 0
        self._indices: np.ndarray | None = None

    # -- numbering the points of a run ---------------------------------------------------------
    def numbered(self, indices: int | Sequence[int] | np.ndarray) -> Self:
        """This engine for points with these indices in the run: an int is the index of the first
        point of each call (the others follow it), else one distinct index per point of each
        call. A copy (sharing the module cache); each point's noise is keyed by its index."""
        other = copy.copy(self)
        if isinstance(indices, int | np.integer) and not isinstance(indices, bool):
            if not 0 <= int(indices) <= MAX_POINT_INDEX:
                raise SpecError(f"first point index {indices} out of range 0..{MAX_POINT_INDEX}")
            other._first, other._indices = int(indices), None
            return other
        arr = np.asarray(indices)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise SpecError(f"point indices must be a 1-D array of integers, got {arr!r:.80}")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > MAX_POINT_INDEX):
            raise SpecError(f"point indices must lie in 0..{MAX_POINT_INDEX}")
        if len(np.unique(arr)) != len(arr):
            raise SpecError("point indices must be distinct: points sharing one share their noise")
        other._first, other._indices = 0, arr
        return other

    def point_indices(self, count: int) -> np.ndarray:
        """The run indices of the ``count`` points of a call."""
        if self._indices is None:
            if self._first + count - 1 > MAX_POINT_INDEX:
                raise SpecError(f"point indices beyond {MAX_POINT_INDEX}: the run is too long")
            return np.arange(self._first, self._first + count, dtype=np.int64)
        if len(self._indices) != count:
            raise SpecError(
                f"the smoothing engine was numbered for {len(self._indices)} points, given {count}"
            )
        return self._indices

    # -- sampling -------------------------------------------------------------------------------
    def _module(self, network: Network) -> torch.nn.Module:
        key = network.fingerprint()
        if key not in self._modules:
            module = network.module(torch.float32, self.device)
            for p in module.parameters():
                p.requires_grad_(False)
            self._modules[key] = module
        return self._modules[key]

    def counts(self, network: Network, xs: FloatArray, num: int, source: NoiseSource) -> np.ndarray:
        """Class counts (points, classes) of f(x + d) over ``num`` draws of ``source``'s noise per
        point (the points numbered by ``point_indices``); the draws of all points share batches of
        ``batch_size`` rows."""
        module = self._module(network)
        m = network.num_classes
        points = torch.as_tensor(np.array(xs), dtype=torch.float32, device=self.device)
        noise = PointNoise(
            source, self.point_indices(points.shape[0]), num, tuple(points.shape[1:]), self.device
        )
        total = points.shape[0] * num
        counts = torch.zeros(points.shape[0] * m, dtype=torch.int64, device=self.device)
        bs = min(self.config.batch_size, max(total, 1))
        buf = torch.empty((bs, *points.shape[1:]), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for start in range(0, total, bs):
                stop = min(total, start + bs)
                idx = torch.arange(start, stop, device=self.device) // num
                batch = buf[: stop - start]
                noise.fill(batch)
                batch.mul_(self.config.sigma)
                first, last = start // num, (stop - 1) // num
                if first == last:  # one point in this batch: broadcast, no gather
                    batch.add_(points[first])
                else:
                    batch.add_(points.index_select(0, idx))
                labels = module(batch).argmax(dim=1)
                counts += torch.bincount(idx * m + labels, minlength=counts.numel())
        return counts.reshape(-1, m).cpu().numpy()

    def _generator(self, phase: Phase = Phase.ESTIMATE) -> NoiseSource:
        """The noise source of a sampling phase of this engine's run (its seed)."""
        return NoiseSource(self.config.seed, phase)

    # -- CERTIFY and PREDICT -----------------------------------------------------------------
    def certify(
        self, network: Network, xs: FloatArray
    ) -> tuple[np.ndarray, FloatArray, FloatArray]:
        """(c_A, p_A_lower, radius) per point; radius -inf when abstaining (p_A_lower < 1/2)."""
        cfg = self.config
        guess = self.counts(network, xs, cfg.n0, self._generator(Phase.SELECT)).argmax(axis=1)
        counts = self.counts(network, xs, cfg.n, self._generator(Phase.ESTIMATE))
        n_a = counts[np.arange(len(guess)), guess]
        p_lower = clopper_pearson_lower(n_a, cfg.n, cfg.alpha)
        with np.errstate(divide="ignore"):
            radius = np.where(p_lower >= 0.5, cfg.sigma * stats.norm.ppf(p_lower), -np.inf)
        return guess, p_lower, radius

    def predict(self, network: Network, xs: FloatArray) -> Prediction:
        """PREDICT: the top class of n draws, or NO_CLASS when a two-sided binomial test of the
        top two counts is not significant at level alpha."""
        counts = self.counts(network, xs, self.config.n, self._generator(Phase.PREDICT))
        order = np.argsort(-counts, axis=1, kind="stable")
        top, second = order[:, 0], order[:, 1]
        rows = np.arange(len(top))
        n_a, n_b = counts[rows, top], counts[rows, second]
        p = np.array(
            [stats.binomtest(int(a), int(a + b), 0.5).pvalue for a, b in zip(n_a, n_b, strict=True)]
        )
        return Prediction(np.where(p <= self.config.alpha, top, NO_CLASS), p)

    # -- the decision ------------------------------------------------------------------------
    def _supports(self, network: Network, spec: Spec) -> None:
        if isinstance(spec, LocalRobustness) and spec.norm is not Norm.L2:
            raise UnsupportedError("the smoothing engine certifies l2 balls only (Gaussian noise)")

    def _decide_points(
        self, network: Network, spec: PointSpec, xs: FloatArray, domain: Box | None
    ) -> BatchResult:
        """CERTIFY every point; the domain is not used (g is defined on all of R^d)."""
        cfg = self.config
        reach = best_radius(cfg.sigma, cfg.n, cfg.alpha)
        warning = ""
        if reach <= spec.eps:
            warning = (
                f"certification impossible: with n={cfg.n}, alpha={cfg.alpha:g}, "
                f"sigma={cfg.sigma:g} the largest certifiable radius is {reach:.4g} <= eps "
                f"{spec.eps:g}; raise n or sigma"
            )
            warnings.warn(warning, stacklevel=4)
        start = time.perf_counter()
        guess, p_lower, radius = self.certify(network, xs)
        per_point = (time.perf_counter() - start) / len(xs)
        base = (
            f"smoothed classifier g (sigma={cfg.sigma:g}, n0={cfg.n0}, n={cfg.n}, "
            f"alpha={cfg.alpha:g}, seed={cfg.seed})"
        )
        abstain = ~np.isfinite(radius)
        verdicts = np.where(
            abstain,
            Verdict.ABSTAIN.code,
            np.where(radius > spec.eps, Verdict.CERTIFIED.code, Verdict.UNKNOWN.code),
        )
        return BatchResult.build(
            self.name,
            verdicts,
            radii=np.where(abstain, np.nan, radius),
            time_s=per_point,
            guarantee=GuaranteeKind.PROBABILISTIC,
            confidence=1.0 - cfg.alpha,
            predicted=np.where(abstain, NO_CLASS, guess),
            details={i: f"{base}; p_A >= {p:.6f}" for i, p in enumerate(p_lower.tolist())},
            warnings={i: (warning,) for i in range(len(xs))} if warning else None,
        )
