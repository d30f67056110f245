"""Benchmark of the global-Lipschitz engine (ratios against baselines run in this process).

    python bench/lipschitz.py [--points 10000] [--device cpu]

1. ``check`` on a batch of points divided by a plain float32 forward pass of the same model at
   the same batch size, with K cached (target <= 1.05), for a 4C3F-sized convnet on 28x28x1
   and for the embedded digits MLP.
2. Time to compute K for the 4C3F-sized net (C32k3-C32k4s2-C64k3-C64k4s2-D512-D512-D10,
   torch default init), and each layer's bound divided by its exact spectral norm where the
   exact value is computable (explicit operator, float64 SVD; timed separately).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import verispec.opnorm as opnorm
from verispec.data import Split, load_data
from verispec.engines.lipschitz import LipschitzConfig, LipschitzEngine, network_lipschitz
from verispec.modelfile import load_model
from verispec.network import Conv2d, Dense, Network
from verispec.regions import Norm
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


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def check_ratio(
    net: Network, xs: np.ndarray, eps: float, device: str, repeats: int
) -> tuple[float, float, float]:
    engine = LipschitzEngine(LipschitzConfig(batch_size=len(xs), device=device))
    spec = LocalRobustness(eps, Norm.L2)
    engine.check(net, spec, xs[:2])  # computes and caches K and the module
    module = net.module(torch.float32, torch.device(device))
    xt = torch.as_tensor(xs, dtype=torch.float32, device=device)

    def plain() -> None:
        with torch.no_grad():
            module(xt).cpu()

    plain()
    t_plain = best_of(plain, repeats)
    t_check = best_of(lambda: engine.check(net, spec, xs), repeats)
    return t_check, t_plain, t_check / t_plain


def exact_conv_norm(layer: Conv2d, hw: tuple[int, int]) -> float:
    return opnorm.conv2d_l2_bound(
        layer.weight, layer.stride, layer.padding, hw, method=opnorm.ConvBoundMethod.EXPLICIT
    ) / (1 + opnorm.ROUNDING_ALLOWANCE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=10000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-exact", action="store_true", help="skip the slow exact SVDs")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")

    conv = convnet_4c3f()
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

    print(f"\ncheck / plain forward, {args.points} points, K cached (target <= 1.05)")
    xs = rng.uniform(0, 1, (args.points, 1, 28, 28))
    t_check, t_plain, ratio = check_ratio(conv, xs, 0.1, args.device, args.repeats)
    print(f"  4C3F convnet: check {t_check:.3f} s, forward {t_plain:.3f} s, ratio {ratio:.3f}")

    digits = load_data("sklearn:digits", Split.TEST)
    net = load_model(ROOT / "specs/models/digits_mlp.pt")[0]
    idx = rng.integers(0, len(digits), args.points)
    xs = np.clip(digits.x[idx] + rng.normal(0, 0.01, digits.x[idx].shape), 0, 1)
    t_check, t_plain, ratio = check_ratio(net, xs, 0.3, args.device, max(args.repeats, 5))
    print(
        f"  digits MLP:   check {t_check * 1e3:.1f} ms, forward {t_plain * 1e3:.1f} ms, "
        f"ratio {ratio:.2f}"
        "  (a tiny model: per-point result objects dominate)"
    )


if __name__ == "__main__":
    main()
