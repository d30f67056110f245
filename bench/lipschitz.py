"""Benchmark of the global-Lipschitz engine (ratios against baselines run in this process).

    python bench/lipschitz.py [--points 10000] [--device cpu] [--threads 4] [--repeats 7]
                              [--digits-only] [--skip-exact]

1. ``check`` on a batch of points divided by a plain float32 forward pass of the same model at
   the same batch size, with K cached, for the digits MLP of ``specs/digits.toml`` (target
   <= 1.1) and a 4C3F-sized convnet on 28x28x1. The two are timed interleaved (plain, check,
   plain, check, ...) so both see the same machine state; the ratio is the median of the
   per-repeat ratios. ``check`` is the full final template (validation of points, labels and
   domain, decision, BatchResult); the roundoff-bounded forward pass alone is timed too, to
   show which part of the ratio is the certified forward pass and which the engine's own work.
2. Time to compute K for the 4C3F-sized net (C32k3-C32k4s2-C64k3-C64k4s2-D512-D512-D10,
   torch default init), and each layer's bound divided by its exact spectral norm where the
   exact value is computable (explicit operator, float64 SVD; timed separately).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import nn

import verispec.opnorm as opnorm
from verispec.data import Split, load_data
from verispec.engines.lipschitz import LipschitzConfig, LipschitzEngine, network_lipschitz
from verispec.modelfile import load_model
from verispec.network import Conv2d, Dense, Network
from verispec.regions import Box, Norm
from verispec.specs import LocalRobustness

ROOT = Path(__file__).resolve().parents[1]


def convnet_4c3f() -> Network:
    """C32k3-C32k4s2-C64k3-C64k4s2-D512-D512-D10 on 28x28x1 (padding 1), ReLU."""
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )
    return Network.from_torch(seq, (1, 28, 28))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@attrs.frozen
class Ratio:
    """Interleaved timings (seconds, one per repeat) of the plain forward, the engine's
    roundoff-bounded forward pass and the full ``check``."""

    plain: tuple[float, ...]
    roundoff: tuple[float, ...]
    check: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """Median over repeats of check / plain."""
        return float(np.median(np.array(self.check) / np.array(self.plain)))

    @property
    def roundoff_ratio(self) -> float:
        """Median over repeats of roundoff forward / plain."""
        return float(np.median(np.array(self.roundoff) / np.array(self.plain)))

    def line(self, label: str, unit: float = 1e3, suffix: str = "ms") -> str:
        med = {k: float(np.median(getattr(self, k))) * unit for k in ("plain", "roundoff", "check")}
        return (
            f"  {label}: forward {med['plain']:.1f} {suffix}, roundoff forward "
            f"{med['roundoff']:.1f} {suffix}, check {med['check']:.1f} {suffix}; "
            f"check/forward {self.ratio:.3f} (roundoff/forward {self.roundoff_ratio:.3f}, "
            f"min-of-repeats {min(self.check) / min(self.plain):.3f})"
        )


def check_ratio(
    net: Network,
    xs: np.ndarray,
    labels: np.ndarray,
    eps: float,
    device: str,
    repeats: int,
) -> Ratio:
    """Time ``repeats`` interleaved rounds of plain forward / roundoff forward / check."""
    engine = LipschitzEngine(LipschitzConfig(batch_size=len(xs), device=device))
    spec = LocalRobustness(eps, Norm.L2)
    domain = Box.uniform(0.0, 1.0, net.input_shape)
    engine.check(net, spec, xs[:2])  # computes and caches K and the module
    module = net.module(torch.float32, torch.device(device))
    xt = torch.as_tensor(xs, dtype=torch.float32, device=device)
    forward = engine._forward(net)

    def plain() -> None:
        with torch.no_grad():
            module(xt).cpu()

    def check() -> None:
        engine.check(net, spec, xs, labels, domain)

    for fn in (plain, lambda: forward(xs), check):  # warm-up
        fn()
    plain_t, roundoff_t, check_t = [], [], []
    for _ in range(repeats):
        plain_t.append(_timed(plain))
        roundoff_t.append(_timed(lambda: forward(xs)))
        check_t.append(_timed(check))
    return Ratio(tuple(plain_t), tuple(roundoff_t), tuple(check_t))


def exact_conv_norm(layer: Conv2d, hw: tuple[int, int]) -> float:
    return opnorm.conv2d_l2_bound(
        layer.weight, layer.stride, layer.padding, hw, method=opnorm.ConvBoundMethod.EXPLICIT
    ) / (1 + opnorm.ROUNDING_ALLOWANCE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=10000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch CPU threads"
    )
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--digits-only", action="store_true", help="skip the 4C3F convnet")
    parser.add_argument("--skip-exact", action="store_true", help="skip the slow exact SVDs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")

    digits = load_data("sklearn:digits", Split.TEST)
    net = load_model(ROOT / "specs/models/digits_mlp.pt")[0]
    idx = rng.integers(0, len(digits), args.points)
    xs = np.clip(digits.x[idx] + rng.normal(0, 0.01, digits.x[idx].shape), 0, 1)
    print(
        f"\ncheck / plain float32 forward, {args.points} points, K cached, "
        f"{args.repeats} interleaved repeats (target <= 1.1 on the digits MLP)"
    )
    result = check_ratio(net, xs, digits.y[idx], 0.3, args.device, args.repeats)
    print(result.line("digits MLP"))
    if args.digits_only:
        return

    conv = convnet_4c3f()
    xs = rng.uniform(0, 1, (args.points, 1, 28, 28))
    labels = rng.integers(0, 10, args.points)
    result = check_ratio(conv, xs, labels, 0.1, args.device, max(1, args.repeats // 2))
    print(result.line("4C3F convnet", 1.0, "s"))

    start = time.perf_counter()
    bounds = network_lipschitz(conv, Norm.L2)
    t_k = time.perf_counter() - start
    print(f"\n4C3F K (l2) = {bounds.body:.6g}, computed in {t_k:.3f} s (target < 1 s)")
    if not args.skip_exact:
        for b in bounds.layers:
            layer = conv.layers[b.index]
            if isinstance(layer, Conv2d):
                hw = conv.shapes[b.index][1:]
                t0 = time.perf_counter()
                exact = exact_conv_norm(layer, (hw[0], hw[1]))
                print(
                    f"  layer {b.index} conv2d{tuple(layer.weight.shape)} on {hw}: bound/exact = "
                    f"{b.l2 / exact:.6f}   (exact SVD took {time.perf_counter() - t0:.1f} s)"
                )
            elif isinstance(layer, Dense):
                exact = np.linalg.svd(layer.weight, compute_uv=False)[0]
                print(
                    f"  layer {b.index} dense{layer.weight.shape}: bound/exact = {b.l2 / exact:.6f}"
                )


if __name__ == "__main__":
    main()
