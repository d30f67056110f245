"""Benchmark of the fast geometric projections engine against the exact MILP solver (issue 7).

    OMP_NUM_THREADS=1 python bench/projections.py [--points 50] [--milp-points 10]
        [--milp-timeout 60] [--fgp-time 10] [--epochs 3] [--archs 3x20,6x20,3x100]
        [--eps 0.05,0.1,0.2] [--out /tmp/projections_bench.json]

ReLU MLPs of MNIST size (784 inputs; hidden layers 3x20, 6x20, 3x100) are trained briefly with
plain cross-entropy on verispec's MNIST protocol (verispec/data.py; train on the 5,000
training images plus the first 8,000 test-split images; points are the first images of the
last 2,000 test-split images; pixels in [0, 1]). At each l2 eps: the projections engine on
``--points`` points (batched), and the MILP solver (SCIP for the l2 ball, per-point timeout)
on the first ``--milp-points`` of them. Reported: the share of points decided (CERTIFIED or
FALSIFIED), the median time per point, and, on the points both ran, the share of MILP's
decisions the engine matches and the speed-up on the points both decided.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from verispec.solvers.base import SolverConfig  # noqa: E402
from verispec.solvers.milp import MilpSolver  # noqa: E402

from verispec.data import Split, load_data  # noqa: E402
from verispec.engines.projections import ProjectionsConfig, ProjectionsEngine  # noqa: E402
from verispec.network import Network  # noqa: E402
from verispec.regions import Box, Norm  # noqa: E402
from verispec.results import CheckResult, Verdict  # noqa: E402
from verispec.specs import LocalRobustness  # noqa: E402

MNIST = f"mnist:{ROOT.parent / 'shared' / 'data' / 'mnist'}"
DECIDED = (Verdict.CERTIFIED, Verdict.FALSIFIED)


def train_mlp(depth: int, width: int, epochs: int, seed: int = 0) -> tuple[Network, float]:
    """A 784-(width x depth)-10 ReLU MLP trained with cross-entropy; (network, test accuracy)."""
    torch.manual_seed(seed)
    train = load_data(MNIST, Split.TRAIN)
    test = load_data(MNIST, Split.TEST)
    x = torch.tensor(np.asarray(train.x).reshape(len(train), -1), dtype=torch.float32)
    y = torch.tensor(np.asarray(train.y))
    layers: list[nn.Module] = []
    n_in = 784
    for _ in range(depth):
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    layers.append(nn.Linear(n_in, 10))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        xt = torch.tensor(np.asarray(test.x).reshape(len(test), -1), dtype=torch.float32)
        acc = float((model(xt).argmax(1).numpy() == np.asarray(test.y)).mean())
    return Network.from_torch(model.double(), (784,)), acc


def _summary(results: list[CheckResult], times: list[float]) -> dict[str, Any]:
    decided = [r.verdict in DECIDED for r in results]
    return {
        "points": len(results),
        "certified": sum(r.verdict is Verdict.CERTIFIED for r in results),
        "falsified": sum(r.verdict is Verdict.FALSIFIED for r in results),
        "decided_share": float(np.mean(decided)) if results else float("nan"),
        "median_time_s": float(np.median(times)) if times else float("nan"),
    }


def run_config(
    net: Network,
    xs: np.ndarray,
    eps: float,
    milp_points: int,
    milp_timeout: float,
    fgp_time: float,
) -> dict[str, Any]:
    spec = LocalRobustness(eps, Norm.L2)
    domain = Box.uniform(0.0, 1.0, net.input_shape)
    engine = ProjectionsEngine(ProjectionsConfig(time_per_point=fgp_time))
    start = time.perf_counter()
    fgp = engine.check(net, spec, xs, domain=domain)
    fgp_wall = time.perf_counter() - start
    out: dict[str, Any] = {
        "eps": eps,
        "fgp": _summary(fgp, [r.time_s for r in fgp]) | {"wall_s": fgp_wall},
        "fgp_regions": [int(r.detail.split(";")[0].removeprefix("regions=")) for r in fgp],
    }
    solver = MilpSolver(SolverConfig(timeout=milp_timeout))
    ys = net.forward64(xs[:milp_points])
    milp: list[CheckResult] = []
    milp_times: list[float] = []
    for x, y in zip(xs[:milp_points], ys, strict=True):
        t0 = time.perf_counter()
        milp.append(solver.solve_goal(net, spec.at(x, y, domain), milp_timeout))
        milp_times.append(time.perf_counter() - t0)
    out["milp"] = _summary(milp, milp_times)
    both = [
        (f, m, mt)
        for f, m, mt in zip(fgp[:milp_points], milp, milp_times, strict=True)
        if f.verdict in DECIDED and m.verdict in DECIDED
    ]
    milp_decided = [m for m in milp if m.verdict in DECIDED]
    matched = sum(
        f.verdict is m.verdict
        for f, m in zip(fgp[:milp_points], milp, strict=True)
        if m.verdict in DECIDED
    )
    out["match_share"] = matched / len(milp_decided) if milp_decided else float("nan")
    out["disagreements"] = sum(
        f.verdict in DECIDED and m.verdict in DECIDED and f.verdict is not m.verdict
        for f, m in zip(fgp[:milp_points], milp, strict=True)
    )
    if both:
        fgp_t = np.median([f.time_s for f, _, _ in both])
        milp_t = np.median([mt for _, _, mt in both])
        out["both_decided"] = len(both)
        out["speedup_median"] = float(milp_t / fgp_t)
        out["speedup_total"] = float(sum(mt for *_, mt in both) / sum(f.time_s for f, *_ in both))
    out["milp_verdicts"] = [m.verdict.value for m in milp]
    out["fgp_verdicts"] = [f.verdict.value for f in fgp]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--milp-points", type=int, default=10)
    parser.add_argument("--milp-timeout", type=float, default=60.0)
    parser.add_argument("--fgp-time", type=float, default=10.0, help="FGP seconds per point")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--archs", default="3x20,6x20,3x100")
    parser.add_argument("--eps", default="0.05,0.1,0.2")
    parser.add_argument("--out", default="/tmp/projections_bench.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = load_data(MNIST, Split.TEST)
    xs = np.asarray(test.x[: args.points], dtype=np.float64).reshape(args.points, 784)
    report: list[dict[str, Any]] = []
    for arch in args.archs.split(","):
        depth, width = (int(v) for v in arch.split("x"))
        t0 = time.perf_counter()
        net, acc = train_mlp(depth, width, args.epochs)
        print(f"{arch}: test accuracy {acc:.3f} (trained in {time.perf_counter() - t0:.0f} s)")
        for eps in (float(e) for e in args.eps.split(",")):
            row = run_config(net, xs, eps, args.milp_points, args.milp_timeout, args.fgp_time)
            row |= {"arch": arch, "accuracy": acc}
            report.append(row)
            f, m = row["fgp"], row["milp"]
            print(
                f"  eps {eps}: FGP decided {f['decided_share']:.2f} "
                f"({f['certified']} cert, {f['falsified']} fals / {f['points']}), "
                f"median {f['median_time_s'] * 1e3:.1f} ms | MILP decided "
                f"{m['decided_share']:.2f} ({m['certified']} cert, {m['falsified']} fals / "
                f"{m['points']}), median {m['median_time_s']:.2f} s | match "
                f"{row['match_share']:.2f}, speed-up (median, both decided) "
                f"{row.get('speedup_median', float('nan')):.0f}x",
                flush=True,
            )
            Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
