"""The device half of ``bench/gpu_check.sh``: each engine and a training epoch timed on the
device against the CPU in the same run, as ratios (CPU time per unit / device time per unit).

    python bench/gpu_check.py [--device cuda] [--scale 1.0] [--out gpu_check.json]

Workloads (at ``--scale 1``; where the CPU side runs a smaller count of the same work, its
time per unit is what the ratio needs):

- ``lipschitz``: the Lipschitz engine on 10,000 MNIST-shaped points, 4C3F (l2, eps 1.58);
- ``smoothing``: smoothing CERTIFY on 100 points at n = 100,000 (n0 = 100; ``--smoothing-n``),
  4C3F, against 2 points on the CPU (its time per point does not depend on the count);
- ``projections`` and ``crown``: 100 points, a 784-256-256-10 ReLU MLP (l_inf, eps 0.01);
- ``training``: one epoch of 4C3F (GloRo loss) on 60,000 MNIST-shaped points, against 6,000
  on the CPU.

The points are uniform in [0, 1]^(1x28x28) and the networks freshly initialised: the device
machine holds no data set, and the times do not depend on the digits drawn. With
``--device cpu`` (a dry run) both sides are the CPU, at the given scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from verispec.data import Dataset
from verispec.engines.base import engine_class
from verispec.network import Network
from verispec.regions import Norm
from verispec.specs import LocalRobustness
from verispec.train.architectures import Arch, ArchConfig, build
from verispec.train.loop import TrainConfig, train
from verispec.train.schedules import EpsSchedule

SHAPE = (1, 28, 28)

WARM = {"smoothing": {"n": 100, "n0": 10}}
"""Cheaper options for an engine's warm-up call (the same kernels, fewer samples)."""


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[[], Any]) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _points(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *SHAPE))


def _4c3f() -> Network:
    torch.manual_seed(0)
    return Network.from_torch(build(ArchConfig(Arch.C4F3), SHAPE, 10).eval(), SHAPE)


def _relu_mlp(width: int = 256) -> Network:
    torch.manual_seed(0)
    layers = [torch.nn.Flatten(), torch.nn.Linear(784, width), torch.nn.ReLU()]
    layers += [torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 10)]
    return Network.from_torch(torch.nn.Sequential(*layers).eval(), SHAPE)


def _engine_ratio(
    name: str, network: Network, spec: Any, n_device: int, n_cpu: int, device: str, **options: Any
) -> dict[str, Any]:
    """Seconds per point of engine ``name`` on ``device`` and on the CPU, and the ratio."""
    cls = engine_class(name)
    out: dict[str, Any] = {}
    for where, n in (("device", n_device), ("cpu", n_cpu)):
        dev = device if where == "device" else "cpu"
        engine = cls(cls.Config(device=dev, **options))
        xs = _points(n, seed=1)
        # the kernels, and the engine's per-network constants (computed once per engine)
        warm = cls(cls.Config(device=dev, **{**options, **WARM[name]})) if name in WARM else engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a warm-up's small n cannot certify: it need not
            warm.numbered(0).check(network, spec, xs[:2])
        found = []
        start = time.perf_counter()
        found.append(engine.numbered(0).check(network, spec, xs))
        _sync(dev)
        seconds = time.perf_counter() - start
        verdicts = [r.verdict.value for r in found[0].results()]
        out[f"{where} verdicts"] = {v: verdicts.count(v) for v in sorted(set(verdicts))}
        out[f"{where} points"] = n
        out[f"{where} s"] = seconds
        out[f"{where} s per point"] = seconds / n
    out["cpu/device"] = out["cpu s per point"] / out["device s per point"]
    print(
        f"{name:>12}: {out['device s per point'] * 1e3:9.3f} ms/pt on {device}, "
        f"{out['cpu s per point'] * 1e3:9.3f} ms/pt on cpu: {out['cpu/device']:7.2f}x",
        flush=True,
    )
    return out


def _training(n_device: int, n_cpu: int, device: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for where, n in (("device", n_device), ("cpu", n_cpu)):
        dev = device if where == "device" else "cpu"
        rng = np.random.default_rng(2)
        data = Dataset(rng.uniform(0, 1, (n, *SHAPE)), rng.integers(0, 10, n))
        config = TrainConfig(ArchConfig(Arch.C4F3), epochs=1, device=dev, eps=EpsSchedule(1.58))
        small = Dataset(data.x[:2], data.y[:2])  # the epoch's evaluation: negligible
        seconds = _timed(dev, lambda c=config, d=data, s=small: train(c, d, s))
        out[f"{where} samples"] = n
        out[f"{where} s"] = seconds
        out[f"{where} s per sample"] = seconds / n
    out["device epoch s (60,000 samples)"] = out["device s per sample"] * 60_000
    out["cpu/device"] = out["cpu s per sample"] / out["device s per sample"]
    print(
        f"{'training':>12}: one 60,000-sample epoch {out['device epoch s (60,000 samples)']:.1f} s "
        f"on {device}; {out['cpu/device']:.2f}x the cpu",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device under test (cpu: a dry run)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every workload by this")
    p.add_argument("--smoothing-n", type=int, default=100_000, help="smoothing's CERTIFY n")
    p.add_argument("--out", default=None, help="JSON file (default $OUT/gpu_check.json)")
    args = p.parse_args()

    def n(count: int) -> int:
        return max(2, round(count * args.scale))

    mnist_4c3f = _4c3f()
    mlp = _relu_mlp()
    l2 = LocalRobustness(eps=1.58, norm=Norm.L2)
    l2_smooth = LocalRobustness(eps=0.5, norm=Norm.L2)  # certifiable at sigma 0.25
    linf = LocalRobustness(eps=0.01, norm=Norm.LINF)
    figures: dict[str, Any] = {
        "device": args.device,
        "device name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "cpu threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "scale": args.scale,
    }
    figures["lipschitz"] = _engine_ratio(
        "lipschitz", mnist_4c3f, l2, n(10_000), n(10_000), args.device
    )
    sn = args.smoothing_n
    figures["smoothing"] = _engine_ratio(
        "smoothing", mnist_4c3f, l2_smooth, n(100), 2, args.device, n=sn, n0=100
    )
    smoothing = figures["smoothing"]
    smoothing["n"] = sn
    smoothing[f"device points/s at n={sn}"] = 1 / smoothing["device s per point"]
    figures["projections"] = _engine_ratio(
        "projections", mlp, linf, n(100), n(100), args.device, time_per_point=5.0
    )
    figures["crown"] = _engine_ratio("crown", mlp, linf, n(100), n(100), args.device)
    figures["training"] = _training(n(60_000), n(6_000), args.device)
    out = args.out
    if out is None and "OUT" in os.environ:
        out = os.path.join(os.environ["OUT"], "gpu_check.json")
    if out:
        Path(out).write_text(json.dumps(figures, indent=1))
        print(f"figures written to {out}")


if __name__ == "__main__":
    main()
