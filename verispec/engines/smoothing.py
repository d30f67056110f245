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
memory is bounded by the batch size. The generator is seeded from the config: the same seed
gives the same result on the CPU.
"""

from __future__ import annotations

import time
import warnings

import attrs
import numpy as np
import torch
from scipy import stats

from verispec import options
from verispec.engines.base import EngineBase, register_engine, resolve_device
from verispec.errors import UnsupportedError
from verispec.network import Network
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

    # -- sampling -------------------------------------------------------------------------------
    def _module(self, network: Network) -> torch.nn.Module:
        key = network.fingerprint()
        if key not in self._modules:
            module = network.module(torch.float32, self.device)
            for p in module.parameters():
                p.requires_grad_(False)
            self._modules[key] = module
        return self._modules[key]

    def counts(
        self, network: Network, xs: FloatArray, num: int, generator: torch.Generator
    ) -> np.ndarray:
        """Class counts (points, classes) of f(x + d) over ``num`` noise draws per point; the
        draws of all points share batches of ``batch_size`` rows."""
        module = self._module(network)
        m = network.num_classes
        points = torch.as_tensor(np.array(xs), dtype=torch.float32, device=self.device)
        total = points.shape[0] * num
        counts = torch.zeros(points.shape[0] * m, dtype=torch.int64, device=self.device)
        bs = min(self.config.batch_size, max(total, 1))
        buf = torch.empty((bs, *points.shape[1:]), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for start in range(0, total, bs):
                stop = min(total, start + bs)
                idx = torch.arange(start, stop, device=self.device) // num
                batch = buf[: stop - start]
                torch.randn(batch.shape, generator=generator, out=batch)
                batch.mul_(self.config.sigma)
                first, last = start // num, (stop - 1) // num
                if first == last:  # one point in this batch: broadcast, no gather
                    batch.add_(points[first])
                else:
                    batch.add_(points.index_select(0, idx))
                labels = module(batch).argmax(dim=1)
                counts += torch.bincount(idx * m + labels, minlength=counts.numel())
        return counts.reshape(-1, m).cpu().numpy()

    def _generator(self) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.config.seed)
        return gen

    # -- CERTIFY and PREDICT -----------------------------------------------------------------
    def certify(
        self, network: Network, xs: FloatArray
    ) -> tuple[np.ndarray, FloatArray, FloatArray]:
        """(c_A, p_A_lower, radius) per point; radius -inf when abstaining (p_A_lower < 1/2)."""
        cfg = self.config
        gen = self._generator()
        guess = self.counts(network, xs, cfg.n0, gen).argmax(axis=1)
        counts = self.counts(network, xs, cfg.n, gen)
        n_a = counts[np.arange(len(guess)), guess]
        p_lower = clopper_pearson_lower(n_a, cfg.n, cfg.alpha)
        with np.errstate(divide="ignore"):
            radius = np.where(p_lower >= 0.5, cfg.sigma * stats.norm.ppf(p_lower), -np.inf)
        return guess, p_lower, radius

    def predict(self, network: Network, xs: FloatArray) -> Prediction:
        """PREDICT: the top class of n draws, or NO_CLASS when a two-sided binomial test of the
        top two counts is not significant at level alpha."""
        counts = self.counts(network, xs, self.config.n, self._generator())
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
