"""Ray workers (issue 18): throughput against workers, the cost of a task, and the per-point
costs a multi-node plan starts from. Every figure is a ratio or a difference of runs in this
process; torch and BLAS use one thread in the driver and in every worker.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python bench/cluster.py [--mnistfc] [--overhead]
        [--smoothing] [--timeout-scale 0.25] [--out /tmp/cluster_bench.json]

With no section flag every section runs.

1. ``--mnistfc``: the 15 mnistfc 256x2 instances at eps 0.03 (a CPU-bound batch: MILP with
   input bounds), their timeouts scaled by ``--timeout-scale``, run in this process, then on a
   local Ray with 1 and with 2 workers (``vnnbatch.run_instances`` with each executor). The
   answers of the three runs are compared; the speed-up is the 1-worker wall time over the
   2-worker one.
2. ``--overhead``: the Lipschitz engine on 10,000 points (digits-shaped, the shipped model) in
   chunks of 10,000 / 1,000 / 100 points: in this process and on a 1-worker Ray. The cost of
   a task is the difference in wall time divided by the number of tasks; a no-op task's round
   trip is measured too.
3. ``--smoothing``: the smoothing engine's time per point at n = 10,000 on the shipped noise
   model (CPU, this process): the unit a plan for 1 million points is sized in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verispec.cluster import ray_cluster  # noqa: E402
from verispec.engines.lipschitz import LipschitzEngine  # noqa: E402
from verispec.engines.smoothing import SmoothingConfig, SmoothingEngine  # noqa: E402
from verispec.executor import LOCAL  # noqa: E402
from verispec.modelfile import load_network  # noqa: E402
from verispec.regions import Norm  # noqa: E402
from verispec.specs import LocalRobustness  # noqa: E402
from verispec.vnnbatch import run_instances  # noqa: E402

MNISTFC = ROOT.parent / "shared" / "benchmarks" / "vnncomp2021" / "mnistfc"
MODEL = ROOT / "specs" / "models" / "digits_mlp.pt"
NOISE_MODEL = ROOT / "specs" / "models" / "digits_noise.pt"


def _mnistfc_csv(folder: Path) -> Path:
    """A CSV of the 15 256x2 eps-0.03 instances with absolute paths."""
    rows = [
        line
        for line in (MNISTFC / "mnistfc_instances.csv").read_text().splitlines()
        if line.startswith("mnist-net_256x2.onnx") and "_0.03." in line
    ]
    path = folder / "mnistfc_256x2_003.csv"
    path.write_text(
        "".join(
            f"{MNISTFC}/{r.split(',')[0]},{MNISTFC}/{r.split(',')[1]},{r.split(',')[2]}\n"
            for r in rows
        )
    )
    return path


def section_mnistfc(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = _mnistfc_csv(Path(tmp))
        runs: dict[str, Any] = {}
        for name, workers in (("this process", None), ("ray 1 worker", 1), ("ray 2 workers", 2)):
            start = time.perf_counter()
            if workers is None:
                results = run_instances(csv_path, timeout_scale=args.timeout_scale, executor=LOCAL)
            else:
                with ray_cluster(workers, None) as executor:
                    ready = time.perf_counter()
                    results = run_instances(
                        csv_path, timeout_scale=args.timeout_scale, executor=executor
                    )
                    runs.setdefault("ray start s", {})[name] = ready - start
            wall = time.perf_counter() - start
            answers = [r.answer for r in results]
            runs[name] = {
                "wall_s": wall,
                "answers": answers,
                "solved": sum(a in ("sat", "unsat") for a in answers),
                "instance_s": [r.time_s for r in results],
            }
            print(f"mnistfc {name:>14}: {wall:7.1f} s wall, answers {answers}", flush=True)
    one, two = runs["ray 1 worker"], runs["ray 2 workers"]
    runs["speedup 2 vs 1 worker"] = one["wall_s"] / two["wall_s"]
    runs["speedup 2 workers vs this process"] = runs["this process"]["wall_s"] / two["wall_s"]
    runs["same answers"] = one["answers"] == two["answers"] == runs["this process"]["answers"]
    print(
        f"speed-up 2 vs 1 worker: {runs['speedup 2 vs 1 worker']:.2f}x; vs this process "
        f"{runs['speedup 2 workers vs this process']:.2f}x; same answers: {runs['same answers']}"
    )
    return runs


def _lipschitz_chunks(xs: np.ndarray, size: int) -> list[np.ndarray]:
    return [np.arange(lo, min(lo + size, len(xs))) for lo in range(0, len(xs), size)]


def section_overhead(args: argparse.Namespace) -> dict[str, Any]:
    network = load_network(MODEL)
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, (10_000, *network.input_shape))
    spec = LocalRobustness(eps=0.3, norm=Norm.L2)
    engine = LipschitzEngine()
    labels = network.forward64(xs).argmax(axis=1)

    def decide(idx: np.ndarray) -> Any:
        return engine.check(network, spec, xs[idx], labels[idx])

    out: dict[str, Any] = {}
    with ray_cluster(1, None) as executor:
        list(executor.map(decide, _lipschitz_chunks(xs, 10_000)))  # warm the worker
        start = time.perf_counter()
        list(executor.map(lambda i: i, list(range(200))))
        out["no-op task round trip ms"] = (time.perf_counter() - start) / 200 * 1e3
        for size in (10_000, 1_000, 100):
            chunks = _lipschitz_chunks(xs, size)
            start = time.perf_counter()
            list(LOCAL.map(decide, chunks))
            local = time.perf_counter() - start
            start = time.perf_counter()
            list(executor.map(decide, chunks))
            remote = time.perf_counter() - start
            per_task = (remote - local) / len(chunks) * 1e3
            out[f"chunk {size}"] = {
                "tasks": len(chunks),
                "this process s": local,
                "ray 1 worker s": remote,
                "cost per task ms": per_task,
            }
            print(
                f"lipschitz 10,000 points in chunks of {size:>6}: {local:6.2f} s here, "
                f"{remote:6.2f} s on 1 worker: {per_task:6.1f} ms per task",
                flush=True,
            )
    print(f"no-op task round trip: {out['no-op task round trip ms']:.2f} ms")
    return out


def section_smoothing(args: argparse.Namespace) -> dict[str, Any]:
    network = load_network(NOISE_MODEL)
    rng = np.random.default_rng(1)
    xs = rng.uniform(0, 1, (16, *network.input_shape))
    labels = network.forward64(xs).argmax(axis=1)
    engine = SmoothingEngine(SmoothingConfig(n=10_000))
    spec = LocalRobustness(eps=0.3, norm=Norm.L2)
    engine.numbered(0).check(network, spec, xs[:2], labels[:2])  # warm up
    start = time.perf_counter()
    engine.numbered(0).check(network, spec, xs, labels)
    per_point = (time.perf_counter() - start) / len(xs)
    print(f"smoothing n = 10,000 on the CPU: {per_point * 1e3:.1f} ms per point")
    return {"smoothing n=10000 s per point": per_point}


SECTIONS = {
    "mnistfc": section_mnistfc,
    "overhead": section_overhead,
    "smoothing": section_smoothing,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mnistfc", action="store_true", help="throughput against workers")
    p.add_argument("--overhead", action="store_true", help="the cost of a task")
    p.add_argument("--smoothing", action="store_true", help="smoothing's time per point")
    p.add_argument("--timeout-scale", type=float, default=0.25, help="mnistfc timeouts x this")
    p.add_argument("--out", default="/tmp/cluster_bench.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    chosen = [n for n in SECTIONS if getattr(args, n)] or list(SECTIONS)
    out = {"args": vars(args)}
    for name in chosen:
        out[name] = SECTIONS[name](args)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
