"""Randomized smoothing throughput, as ratios measured in one process.

    python bench/smoothing.py [--model specs/models/digits_noise.pt] [--batch 10000]

1. CERTIFY sampling throughput (samples/s through ``SmoothingEngine.counts``: each point's own
   noise stream drawn block by block, shared batches, classification, counting) divided by the
   raw forward throughput of the base classifier (``module(x).argmax``) at the same batch size,
   on pre-made inputs. Target >= 0.9.
2. Time for 100 points at n = 100,000 (n0 = 100), and at n = 1,000: one point at a time (the
   reference implementation's loop, at its default batch of 1,000 and at ours) against
   verispec's multi-point batching. Target >= 3x.

Each timing is the best of ``--repeats`` runs, interleaved, so background load affects both
sides alike.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from verispec.data import Split, load_data
from verispec.engines.smoothing import NoiseSource, Phase, SmoothingConfig, SmoothingEngine
from verispec.modelfile import load_model

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "specs/models/digits_noise.pt"))
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    network = load_model(args.model)[0]
    data = load_data("sklearn:digits", Split.TEST).take(args.points).shaped(network.input_shape)
    xs = data.x
    print(f"model {args.model}, device {args.device}, {torch.get_num_threads()} threads")

    # 1. throughput ratio at the same batch size
    engine = SmoothingEngine(SmoothingConfig(batch_size=args.batch, device=args.device))
    module = engine._module(network)
    samples = 20 * args.batch
    inputs = torch.rand((args.batch, *network.input_shape), device=args.device)

    def forward() -> None:
        with torch.no_grad():
            for _ in range(samples // args.batch):
                module(inputs).argmax(dim=1)

    source = NoiseSource(seed=0, phase=Phase.ESTIMATE)

    def certify_counts() -> None:
        engine.counts(network, xs[:2], samples // 2, source)

    f_times, c_times = [], []
    for _ in range(args.repeats):
        f_times.append(_best(forward, 1))
        c_times.append(_best(certify_counts, 1))
    raw, ours = samples / min(f_times), samples / min(c_times)
    print(f"raw forward   {raw:12,.0f} samples/s (batch {args.batch})")
    print(f"CERTIFY       {ours:12,.0f} samples/s (batch {args.batch})")
    print(f"ratio         {ours / raw:.3f}   (target >= 0.9)")

    # 2. 100 points: one at a time vs shared batches, at n = 100,000 and at a small n
    for n in (args.n, 1_000):

        def one_at_a_time(batch: int, n: int = n) -> None:
            e = SmoothingEngine(SmoothingConfig(n=n, batch_size=batch, device=args.device))
            for x in xs:
                e.certify(network, x[None])

        def multi_point(n: int = n) -> None:
            e = SmoothingEngine(SmoothingConfig(n=n, batch_size=args.batch, device=args.device))
            e.certify(network, xs)

        runs: dict[str, list[float]] = {"ref": [], "same": [], "multi": []}
        for _ in range(1 if n >= 100_000 else args.repeats):  # interleaved
            runs["ref"].append(_best(lambda: one_at_a_time(1000), 1))
            runs["same"].append(_best(lambda: one_at_a_time(args.batch), 1))
            runs["multi"].append(_best(multi_point, 1))
        ref, same, multi = (min(v) for v in runs.values())
        print(f"\n{len(xs)} points, n = {n:,}, n0 = 100")
        print(f"one at a time, batch 1,000      {ref:8.2f} s")
        print(f"one at a time, batch {args.batch:,}     {same:8.2f} s")
        print(f"multi-point, batch {args.batch:,}       {multi:8.2f} s")
        print(f"speed-up vs batch 1,000 loop    {ref / multi:.2f}x   (target >= 3x)")
        print(f"speed-up vs same-batch loop     {same / multi:.2f}x")
        assert np.isfinite(multi)


if __name__ == "__main__":
    main()
