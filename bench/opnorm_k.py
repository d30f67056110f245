"""Benchmark: per-layer l2 bounds (AUTO) and their product K for a random 4C3F-sized network.

Network (MNIST-sized input 1x28x28, torch default init, seed 0):

    C32k3p1 - C32k4s2p1 - C64k3p1 - C64k4s2p1 - D512 - D512 - D10
    (conv k3: stride 1, padding 1 ('same'); conv k4: stride 2, padding 1 (halves H and W))

Prints the time to compute K (all seven bounds, AUTO) and, per layer, bound / exact where the
exact norm is the largest singular value of the explicit operator (computed separately via the
smaller Gram matrix and a dense symmetric eigensolver; this takes a minute or two and is not
counted in the K time).

Run: python bench/opnorm_k.py [--seed S] [--repeat R] [--skip-exact] [--threads T]

Timings are wall-clock; on a shared 2-core machine, oversubscribed BLAS/OpenMP threads can make
them several times slower (``--threads 1`` avoids the spin-waiting).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import nn

from verispec import opnorm

INPUT_HW = (28, 28)


def build_layers(seed: int) -> list[tuple[str, nn.Module, tuple[int, int] | None]]:
    """(name, module, input_hw) per linear layer; input_hw is None for dense layers."""
    torch.manual_seed(seed)
    return [
        ("conv1 1->32 k3 s1 p1 @28", nn.Conv2d(1, 32, 3, 1, 1), (28, 28)),
        ("conv2 32->32 k4 s2 p1 @28", nn.Conv2d(32, 32, 4, 2, 1), (28, 28)),
        ("conv3 32->64 k3 s1 p1 @14", nn.Conv2d(32, 64, 3, 1, 1), (14, 14)),
        ("conv4 64->64 k4 s2 p1 @14", nn.Conv2d(64, 64, 4, 2, 1), (14, 14)),
        ("dense5 3136->512", nn.Linear(64 * 7 * 7, 512), None),
        ("dense6 512->512", nn.Linear(512, 512), None),
        ("dense7 512->10", nn.Linear(512, 10), None),
    ]


def weights(layers: list[tuple[str, nn.Module, tuple[int, int] | None]]) -> list[np.ndarray]:
    out = []
    for _, module, _ in layers:
        assert isinstance(module, (nn.Conv2d, nn.Linear))
        out.append(module.weight.detach().to(torch.float64).numpy().copy())
    return out


def layer_bound(module: nn.Module, w: np.ndarray, hw: tuple[int, int] | None) -> float:
    if hw is None:
        return opnorm.dense_l2_bound(w)
    assert isinstance(module, nn.Conv2d)
    stride, padding = _pair(module.stride), _pair(module.padding)
    return opnorm.conv2d_l2_bound(w, stride, padding, hw, method=opnorm.ConvBoundMethod.AUTO)


def _pair(value: object) -> tuple[int, int]:
    assert isinstance(value, tuple) and len(value) == 2
    return int(value[0]), int(value[1])


def exact_conv_norm(module: nn.Conv2d, w: np.ndarray, hw: tuple[int, int]) -> float:
    """Largest singular value of the explicit conv operator (via the smaller Gram matrix)."""
    k = torch.from_numpy(w)
    c_out, c_in = w.shape[0], w.shape[1]
    stride, padding = _pair(module.stride), _pair(module.padding)
    in_shape = (c_in, *hw)
    ho, wo = F.conv2d(
        torch.zeros(1, *in_shape, dtype=torch.float64), k, None, stride, padding
    ).shape[2:]
    n_in, n_out = c_in * hw[0] * hw[1], c_out * ho * wo

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.reshape(-1, *in_shape), k, None, stride, padding).reshape(x.shape[0], -1)

    def adj(y: torch.Tensor) -> torch.Tensor:
        g = torch.nn.grad.conv2d_input(
            (y.shape[0], *in_shape), k, y.reshape(-1, c_out, ho, wo), stride, padding
        )
        return g.reshape(y.shape[0], -1)

    side = min(n_in, n_out)
    gram = np.empty((side, side))
    chunk = 512
    with torch.no_grad():
        for start in range(0, side, chunk):
            stop = min(side, start + chunk)
            basis = torch.zeros(stop - start, side, dtype=torch.float64)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            cols = adj(fwd(basis)) if n_in <= n_out else fwd(adj(basis))
            gram[start:stop] = cols.numpy()
    lam = scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=[side - 1, side - 1])[0]
    return math.sqrt(lam)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions of K")
    parser.add_argument("--skip-exact", action="store_true", help="only time K")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch/BLAS threads (default: leave as is)"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=args.threads)
        except ImportError:
            pass

    layers = build_layers(args.seed)
    ws = weights(layers)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, seed {args.seed}")

    times, cpu_times, per_layer = [], [], np.zeros(len(layers))
    bounds: list[float] = []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        bounds = []
        for i, ((_, module, hw), w) in enumerate(zip(layers, ws, strict=True)):
            t1 = time.perf_counter()
            bounds.append(layer_bound(module, w, hw))
            per_layer[i] += time.perf_counter() - t1
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    per_layer /= args.repeat
    k_total = math.prod(bounds)
    print(
        f"K = {k_total:.6g}; time to compute K: first {times[0]:.3f} s, "
        f"best {min(times):.3f} s, mean {np.mean(times):.3f} s over {args.repeat} runs "
        f"(CPU time, all threads: mean {np.mean(cpu_times):.3f} s)"
    )

    header = f"{'layer':28s} {'bound':>11s} {'t_bound':>8s}"
    if not args.skip_exact:
        header += f" {'exact':>11s} {'t_exact':>8s} {'ratio':>9s}"
    print(header)
    worst = 1.0
    for i, ((name, module, hw), w) in enumerate(zip(layers, ws, strict=True)):
        line = f"{name:28s} {bounds[i]:11.6f} {per_layer[i]:8.3f}"
        if not args.skip_exact:
            t1 = time.perf_counter()
            if hw is None:
                exact = float(np.linalg.svd(w, compute_uv=False)[0])
            else:
                assert isinstance(module, nn.Conv2d)
                exact = exact_conv_norm(module, w, hw)
            ratio = bounds[i] / exact
            worst = max(worst, ratio)
            line += f" {exact:11.6f} {time.perf_counter() - t1:8.1f} {ratio:9.6f}"
            if ratio < 1.0:
                line += "  <-- UNSOUND"
        print(line, flush=True)
    if not args.skip_exact:
        print(f"worst ratio {worst:.6f} (target: >= 1 and <= 1.01)")


if __name__ == "__main__":
    main()
